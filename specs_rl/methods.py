"""Named method presets: a baseline or ablation is a strategy plus a few settings over a shared ``SearchConfig``.

``compare`` and ``demo`` list methods by these names. A method's settings come from three places:

- the preset's **pinned** values (:data:`METHOD_PRESETS`): what makes the method that method (its strategy, sampler,
  score form); they always apply, and a method's own settings may not change them;
- the method's **own** settings (``method_settings.<name>`` in a compare config, what ``specs-rl tune`` chooses):
  its thresholds, beta, temperatures, so each method runs at its own tuned setting;
- the run's **shared** settings (the top-level keys), for everything neither of the above sets.

A key set both as a shared key and in a method's own settings is refused (one of the two would be silently
ignored); so is an own setting of a pinned key, or of ``n`` (``n_grid`` sets it).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
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


def preset(base: C, name: str, own: Mapping[str, Any] | None = None) -> C:
    """``base`` (the shared settings) with the method's ``own`` settings and then the preset's pinned values applied,
    validated. An own setting of a pinned key or of ``n`` is a :class:`SpecsError`."""
    if name not in METHOD_PRESETS:
        raise SpecsError(f"unknown method {name!r}; known: {', '.join(METHOD_PRESETS)}")
    own = dict(own or {})
    pinned = METHOD_PRESETS[name]
    for key in own:
        if key in pinned:
            raise SpecsError(f"method {name} pins {key}={pinned[key]!r}; remove {key} from its own settings")
        if key in ("n", "method"):
            raise SpecsError(f"method {name}: {key} is not a per-method setting (n comes from n_grid)")
    values = {**own, **pinned}
    if "beam_width" in values and values["beam_width"] is None:
        values["beam_width"] = values.get("n", base.n)
    cfg = dataclasses.replace(base, **values)
    try:
        cfg.validate()
    except ValueError as e:
        raise SpecsError(f"method {name}: {e}") from None
    return cfg
