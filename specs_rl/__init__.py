"""specs-rl: latency-aware test-time scaling with speculative drafts (SPECS) and its KL-regularized objective."""

from specs_rl.interfaces import (
    Clock,
    RewardModel,
    SearchParts,
    SimClock,
    StepSampler,
    TargetScorer,
    WallClock,
)
from specs_rl.search import STRATEGIES, run_search
from specs_rl.settings import METHODS, SearchConfig
from specs_rl.types import Candidate, Ledger, Mode, Problem, SearchResult, StepRecord, Trace
from specs_rl.verify import keep_mask, next_mode, select, selection_log_probs, soft_scores

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "STRATEGIES",
    "Candidate",
    "Clock",
    "Ledger",
    "Mode",
    "Problem",
    "RewardModel",
    "SearchConfig",
    "SearchParts",
    "SearchResult",
    "SimClock",
    "StepRecord",
    "StepSampler",
    "TargetScorer",
    "Trace",
    "WallClock",
    "keep_mask",
    "next_mode",
    "run_search",
    "select",
    "selection_log_probs",
    "soft_scores",
]
