"""Named method presets: a baseline or ablation is a strategy plus a few settings over a shared ``SearchConfig``.

``compare`` and ``demo`` list methods by these names. Each preset is applied on top of the run's own settings,
so ``n``, ``beta`` and the thresholds stay shared unless the preset pins them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, TypeVar

from specs_rl.errors import SpecsError
from specs_rl.settings import SearchConfig

C = TypeVar("C", bound=SearchConfig)

# beam_width None means "= n": the paper's single-surviving-beam form.
METHOD_PRESETS: dict[str, dict[str, Any]] = {
    "specs": {"method": "specs"},
    "beam_search_target": {"method": "beam_search", "sampler": "target", "beam_width": None},
    "beam_search_draft": {"method": "beam_search", "sampler": "draft", "beam_width": None},
    "dvts": {"method": "dvts", "sampler": "target"},
    "best_of_n": {"method": "best_of_n", "sampler": "target", "bon_vote": "weighted"},
    "rsd": {"method": "rsd"},
    "target_only": {"method": "target_only"},
    "draft_only": {"method": "draft_only"},
    "specs_no_target": {"method": "specs", "score_form": "reward_only"},
    "specs_no_deferral": {"method": "specs", "tau_reject": -math.inf},
    # random_switch is set by compare to the target-step fraction SPECS measured (MATCHED_FRACTION); 0.5 alone
    "specs_random_switch": {"method": "specs", "random_switch": 0.5},
}

# Presets whose ``random_switch`` is the target-step fraction another method measured for the same n, seed and
# problems (ALGORITHM.md §4: "random switching at the same target-step fraction"): ``compare`` runs that method
# first, reads the fraction from its records and runs the ablation at it.
MATCHED_FRACTION: dict[str, str] = {"specs_random_switch": "specs"}


# Strategies that draw one sample per step: n changes nothing, so a grid runs them once per seed.
N_FREE_STRATEGIES = ("target_only", "draft_only", "rsd")


def uses_n(name: str) -> bool:
    """Whether the preset's result depends on ``n``."""
    return METHOD_PRESETS[name]["method"] not in N_FREE_STRATEGIES


def preset(base: C, name: str, **overrides: Any) -> C:
    """``base`` with the preset ``name`` applied (then ``overrides``), validated."""
    if name not in METHOD_PRESETS:
        raise SpecsError(f"unknown method {name!r}; known: {', '.join(METHOD_PRESETS)}")
    values = {**METHOD_PRESETS[name], **overrides}
    if "beam_width" in values and values["beam_width"] is None:
        values["beam_width"] = values.get("n", base.n)
    cfg = dataclasses.replace(base, **values)
    try:
        cfg.validate()
    except ValueError as e:
        raise SpecsError(f"method {name}: {e}") from None
    return cfg
