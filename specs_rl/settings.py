"""The algorithm settings every search strategy reads (``SearchConfig``): plain data, no torch.

The exact laws (:mod:`specs_rl.exact`), the method presets and the run configs import it without the search loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

STRATEGY_NAMES = (
    "specs",
    "beam_search",
    "best_of_n",
    "dvts",
    "rsd",
    "specreason",
    "target_only",
    "draft_only",
)
METHODS = (
    STRATEGY_NAMES  # the old name of the strategies' tuple; a "method" is now a preset (specs_rl.methods)
)
JUDGES = ("target", "prm")
ACCEPTANCES = ("filter", "select_test")
ACCEPT_TESTS = ("score", "reward")


@dataclass
class SearchConfig:
    """Algorithm settings shared by every strategy (names follow docs/algorithm.md; sources in each help text)."""

    strategy: str = field(
        default="specs",
        metadata={
            "help": f"the search strategy, one of {STRATEGY_NAMES} (a method preset, specs_rl.methods, pins it)"
        },
    )
    n: int = field(
        default=4, metadata={"help": "candidates per step (paper: 'beam width'); paper uses 4, 8, 16"}
    )
    beta: float = field(
        default=1.0, metadata={"help": "reward inverse temperature (authors' rm_regularizer: 1 or 10)"}
    )
    temperature: float = field(
        default=1.0,
        metadata={"help": "selection temperature T; 1 is the exact form, authors' code uses 0.2-0.3"},
    )
    score_form: str = field(
        default="exact",
        metadata={
            "help": "exact (sum of log ratio, theory) | mean (per-token mean, authors' code) | reward_only (no-target ablation)"
        },
    )
    tau_reject: float = field(
        default=-math.inf,
        metadata={
            "help": "drop drafts with score <= tau_reject (select_test: defer when the chosen draft's score is "
            "<= tau_reject); -inf never defers (authors: 5-7 with the mean form)"
        },
    )
    tau_switch: float = field(
        default=0.7,
        metadata={
            "help": "best target reward above which SPECS returns to the draft [code]; -inf: every step starts "
            "from the draft (no mode switching, GSI)"
        },
    )
    acceptance: str = field(
        default="filter",
        metadata={
            "help": "draft-mode acceptance: filter (drop drafts scoring <= tau_reject, select among the rest, "
            "defer when none is left: docs/algorithm.md §3, authors' code) | select_test (select one of ALL drafts by "
            "softmax(score / T), keep it iff it passes accept_test, else defer: GSI, Geuter et al. 2025, "
            "j-geuter/GSI inference/speculative.py)"
        },
    )
    accept_test: str = field(
        default="score",
        metadata={
            "help": "select_test: what the chosen draft is tested on: score (its score > tau_reject: GSI's "
            "threshold_on_tilted) | reward (its reward >= rsd_delta: GSI's 'RSD adapted to best-of-n')"
        },
    )
    start_mode: str = field(
        default="target", metadata={"help": "target (authors' final code) | draft (RSD-like)"}
    )
    target_select: str = field(
        default="argmax", metadata={"help": "target mode: argmax reward [code] | soft (softmax(beta r))"}
    )
    random_switch: float | None = field(
        default=None,
        metadata={
            "help": "ablation: each step goes to the target with this probability instead of the switch rule"
        },
    )
    max_steps: int = field(
        default=20, metadata={"help": "the last allowed step is generated to the end (authors: 10-30)"}
    )
    beam_width: int = field(
        default=4, metadata={"help": "M: candidates per beam in beam_search / dvts; n // M beams survive"}
    )
    beam_refill: bool = field(
        default=True,
        metadata={
            "help": "beam_search: when beams finish, copy the active ones back up to n // M so every step "
            "expands n candidates (search-and-learn; docs/algorithm.md §4 'keep N active beams')"
        },
    )
    sampler: str = field(
        default="target",
        metadata={"help": "model that samples in beam_search / dvts / best_of_n: target | draft"},
    )
    bon_vote: str = field(
        default="naive", metadata={"help": "best_of_n answer choice: naive | weighted | majority"}
    )
    aggregate: str = field(
        default="last", metadata={"help": "how step rewards make a response score: last | min | prod"}
    )
    rsd_delta: float = field(
        default=0.7,
        metadata={
            "help": "RSD acceptance threshold on the draft step's reward (RSD code: 0.7; also GSI's RSD adapted "
            "to best-of-n, accept_test=reward)"
        },
    )
    judge: str = field(
        default="target",
        metadata={
            "help": "specreason: who scores the draft's step 0-9: target (the target reads the scoring prompt; "
            "score = expected digit at the answer position: SpecReason, Pan et al. 2025) | prm (9 x the PRM's "
            "reward, for worlds where the target cannot follow a judging prompt; chosen here)"
        },
    )
    judge_threshold: float = field(
        default=7.0,
        metadata={
            "help": "specreason: keep the draft's step iff its judge score (0-9) is >= this, else the target "
            "writes the step (SpecReason code, spec_reason.py --score_threshold: 7.0); 0 keeps every step, "
            "above 9 none"
        },
    )
    concurrent_scoring: bool = field(
        default=False,
        metadata={"help": "run target scoring and PRM scoring in two threads, as the authors' code does"},
    )
    speculative_tokens: int = field(
        default=0,
        metadata={
            "help": "k > 0: every step the target writes is exact token-level speculative sampling with the draft "
            "(k draft tokens a round; the target's own law), on backends with token-level parts (hf); 0: as the "
            "backend is set (hf.target.speculative_tokens). The target_sd preset pins 3 (chosen here: the toy "
            "world's acceptance length was 3.6 of 4 at k = 3)"
        },
    )

    def validate(self) -> None:
        """Raise ValueError naming the first invalid setting."""
        if self.strategy not in STRATEGY_NAMES:
            raise ValueError(f"strategy must be one of {STRATEGY_NAMES}, got {self.strategy!r}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.speculative_tokens < 0:
            raise ValueError(f"speculative_tokens must be >= 0, got {self.speculative_tokens}")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        choices = {
            "score_form": ("exact", "mean", "reward_only"),
            "start_mode": ("target", "draft"),
            "target_select": ("argmax", "soft"),
            "sampler": ("target", "draft"),
            "bon_vote": ("naive", "weighted", "majority"),
            "aggregate": ("last", "min", "prod"),
            "acceptance": ACCEPTANCES,
            "accept_test": ACCEPT_TESTS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.random_switch is not None and not 0.0 <= self.random_switch <= 1.0:
            raise ValueError(f"random_switch must be in [0, 1], got {self.random_switch}")
        if self.strategy in ("beam_search", "dvts") and (self.beam_width < 1 or self.n % self.beam_width):
            raise ValueError(f"beam_width must divide n (n={self.n}, beam_width={self.beam_width})")
        if self.judge not in JUDGES:
            raise ValueError(f"judge must be one of {JUDGES}, got {self.judge!r}")
        for name in ("tau_reject", "tau_switch", "rsd_delta", "judge_threshold"):
            if math.isnan(getattr(self, name)):
                raise ValueError(f"{name} must be a number, not nan")
        if self.acceptance == "filter" and self.accept_test != "score":
            raise ValueError(
                f"acceptance=filter drops drafts by their score (score <= tau_reject); accept_test="
                f"{self.accept_test} needs acceptance=select_test"
            )

    def draft_threshold(self) -> float:
        """The threshold of the draft-mode test: ``tau_reject`` on the score (filter, or select_test on the
        score), ``rsd_delta`` on the reward (select_test on the reward). ``-inf`` never defers a draft of nonzero
        weight; ``+inf`` always defers."""
        return self.rsd_delta if self.accept_test == "reward" else self.tau_reject
