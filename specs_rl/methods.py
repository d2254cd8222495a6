"""Named method presets: a baseline or ablation is a strategy plus a few settings over a shared ``SearchConfig``.

``compare`` and ``demo`` list methods by these names. A method's settings come from three places:

- the preset's **pinned** values (:data:`METHOD_PRESETS`): what makes the method that method (its strategy, sampler,
  score form); they always apply, and a method's own settings may not change them;
- the method's **own** settings (``method_settings.<name>`` in a compare config, what ``specs-rl tune`` chooses):
  its thresholds, beta, temperatures, so each method runs at its own tuned setting;
- the run's **shared** settings (the top-level keys), for everything neither of the above sets.

A key set both as a shared key and in a method's own settings is refused (one of the two would be silently
ignored); so is an own setting of a pinned key, or of ``n`` (``n_grid`` sets it), and a shared key set to a value
other than the one a listed method pins (:func:`shared_clash`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from specs_rl.errors import SpecsError
from specs_rl.settings import SearchConfig

C = TypeVar("C", bound=SearchConfig)

# The forms of speculative soft verification compared head to head (configs/eval/peers_toymath.yaml). Each pins
# what makes it that method; its thresholds, beta and temperatures are its own settings (method_settings.<name>), so
# each runs at its own tuned values.
#
# specs: this project's exact form (docs/algorithm.md §3 "exact (theory) form"): summed log ratio + beta r, T = 1,
# filter-then-select (drop drafts scoring <= tau_reject, select among the rest by softmax(score), defer when none
# survives). Its n -> inf law is the tilted target pi* (theory/README.md §3). Own: beta, tau_reject, tau_switch,
# start_mode, target_select.
SPECS: dict[str, Any] = {
    "strategy": "specs",
    "score_form": "exact",
    "temperature": 1.0,
    "acceptance": "filter",
}
# specs_paper: the authors' code (docs/algorithm.md §3 [code], §6): per-token mean of the log ratio + beta r, selection
# temperature T (their recipes: 0.2-0.3), start in target mode, the target keeps its best-reward step, back to the
# draft above tau_switch (0.7). Own: beta (1 or 10), temperature, tau_reject (5-7), tau_switch (0.7).
SPECS_PAPER: dict[str, Any] = {
    "strategy": "specs",
    "score_form": "mean",
    "start_mode": "target",
    "target_select": "argmax",
    "acceptance": "filter",
}
# gsi: GSI (Geuter, Mroueh, Alvarez-Melis 2025; code j-geuter/GSI, inference/speculative.py, as read here):
# score = beta r + log pi_t - log pi_d summed over the step's tokens, one draft chosen by softmax(score) (T = 1) over
# all n drafts, kept iff its tilted score is > the threshold (threshold_on_tilted; here tau_reject), else the target
# draws n samples and keeps one by soft best-of-n on beta r (softmax(beta r)); every step starts from the draft:
# tau_switch = -inf sends the mode back to DRAFT after any target step (next_mode: best reward > -inf), so no new
# option is needed. Its code defaults: 16 drafts and 16 target samples (the same n, so no separate field), sampling
# temperature 0.7 (the backend's draft/target temperature, not a preset value). Not checked here: GSI's own
# threshold default and whether its tested score is divided by beta (a rescaled threshold, so only the tuned value
# would differ). Own: beta, tau_reject.
GSI: dict[str, Any] = {
    "strategy": "specs",
    "score_form": "exact",
    "temperature": 1.0,
    "acceptance": "select_test",
    "accept_test": "score",
    "start_mode": "draft",
    "target_select": "soft",
    "tau_switch": -math.inf,
}
# rsd_bon: GSI's "RSD adapted to best-of-n" (same file): soft best-of-n on beta r over n drafts (reward-only score,
# T = 1), the chosen draft kept iff its reward is >= rsd_delta (0.7 in that code), else soft best-of-n over n target
# samples; no mode switching. Own: beta, rsd_delta.
RSD_BON: dict[str, Any] = {**GSI, "score_form": "reward_only", "accept_test": "reward"}


# specreason: SpecReason (Pan et al. 2025, "SpecReason: Fast and Accurate Inference-Time Compute via Speculative
# Reasoning"; code ruipeterpan/specreason, spec_reason.py): the draft writes one step (n = 1), a judge scores it 0-9
# and it is kept at or above the threshold, else the target writes the step. Pinned: the strategy. Own: judge
# (target: the target reads the paper's scoring prompt, get_score, expected digit as in process_logprobs'
# "average"; prm: 9 x the PRM's reward, for the toy world) and judge_threshold (the paper's 7.0).
SPECREASON: dict[str, Any] = {"strategy": "specreason"}


def _ablation(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """An ablation of ``base`` (docs/algorithm.md §4): the base's pinned values with one thing changed."""
    return {**base, **changes}


# beam_width None means "= n": the paper's single-surviving-beam form.
METHOD_PRESETS: dict[str, dict[str, Any]] = {
    "specs": SPECS,
    "specs_paper": SPECS_PAPER,
    "gsi": GSI,
    "rsd_bon": RSD_BON,
    "beam_search_target": {"strategy": "beam_search", "sampler": "target", "beam_width": None},
    "beam_search_draft": {"strategy": "beam_search", "sampler": "draft", "beam_width": None},
    "dvts": {"strategy": "dvts", "sampler": "target"},
    "best_of_n": {"strategy": "best_of_n", "sampler": "target", "bon_vote": "weighted"},
    "rsd": {"strategy": "rsd"},
    "specreason": SPECREASON,
    "target_only": {"strategy": "target_only"},
    # target_sd: the target alone, its tokens written by exact speculative sampling with the draft (Leviathan et al.
    # 2023, Chen et al. 2023): lossless, so its law is target_only's; the baseline every serving stack offers
    "target_sd": {"strategy": "target_only", "speculative_tokens": 3},
    "draft_only": {"strategy": "draft_only"},
    # ablations of the exact form, and of the authors' form (the paper's ablations, configs/eval/*_qwen25.yaml)
    "specs_no_target": _ablation(SPECS, score_form="reward_only"),
    "specs_no_deferral": _ablation(SPECS, tau_reject=-math.inf),
    # random_switch is set by compare to the target-step fraction its base measured (MATCHED_FRACTION); 0.5 alone
    "specs_random_switch": _ablation(SPECS, random_switch=0.5),
    "specs_paper_no_target": _ablation(SPECS_PAPER, score_form="reward_only"),
    "specs_paper_no_deferral": _ablation(SPECS_PAPER, tau_reject=-math.inf),
    "specs_paper_random_switch": _ablation(SPECS_PAPER, random_switch=0.5),
}

# <method>_sd: the method with every step the target writes (its samples, deferred and target-mode steps, rewrites)
# written by exact speculative sampling with the draft, k = 3 draft tokens a round (target_sd's k). Lossless: each
# target step has the target's law, so a variant searches as its base does, only the target's generation costs
# less. A variant takes its base's own settings (method_settings.<base>) unless it has its own.
SPECULATIVE_TOKENS = METHOD_PRESETS["target_sd"]["speculative_tokens"]
SPECULATIVE_BASES = (
    "specs",
    "specs_paper",
    "gsi",
    "rsd_bon",
    "rsd",
    "specreason",
    "dvts",
    "beam_search_target",
    "best_of_n",
)
for _base in SPECULATIVE_BASES:
    METHOD_PRESETS[f"{_base}_sd"] = {**METHOD_PRESETS[_base], "speculative_tokens": SPECULATIVE_TOKENS}


def speculative_base(name: str) -> str | None:
    """The method a speculative variant writes the target's steps of without speculation (``target_sd`` ->
    ``target_only``, ``<base>_sd`` -> ``<base>``), else None."""
    if name == "target_sd":
        return "target_only"
    base = name.removesuffix("_sd")
    return base if base != name and base in SPECULATIVE_BASES else None


def own_settings(name: str, settings: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The own settings method ``name`` runs with, from a ``method_settings`` mapping: its entry, else (a
    ``<base>_sd`` variant) its base's, else None."""
    if name in settings:
        return settings[name]
    base = speculative_base(name)
    return settings.get(base) if base is not None else None


# Presets whose ``random_switch`` is the target-step fraction another method measured for the same n, seed and
# problems (docs/algorithm.md §4: "random switching at the same target-step fraction"): ``compare`` runs that method
# first, reads the fraction from its records and runs the ablation at it.
MATCHED_FRACTION: dict[str, str] = {
    "specs_random_switch": "specs",
    "specs_paper_random_switch": "specs_paper",
}


# Strategies that draw one sample per step: n changes nothing, so a grid runs them once per seed.
N_FREE_STRATEGIES = ("target_only", "draft_only", "rsd", "specreason")


def uses_n(name: str) -> bool:
    """Whether the preset's result depends on ``n``."""
    return METHOD_PRESETS[name]["strategy"] not in N_FREE_STRATEGIES


def pinned_value(name: str, key: str, n: int) -> Any:
    """The value preset ``name`` pins for ``key`` at ``n`` (``beam_width`` None means ``n``)."""
    value = METHOD_PRESETS[name][key]
    return n if key == "beam_width" and value is None else value


def shared_clash(name: str, shared: Mapping[str, Any], n_values: Sequence[int]) -> str | None:
    """The one-line refusal when a shared (top-level) setting differs from a value preset ``name`` pins, else None.

    Pinned values always win, so such a shared key would be silently ignored for this method (``score_form: mean``
    at the top level with ``specs`` listed): the run is refused instead, and the key belongs in
    ``method_settings`` of the methods it is meant for. A shared value equal to the pinned one is allowed."""
    for key, value in shared.items():
        if key not in METHOD_PRESETS[name]:
            continue
        for n in n_values:
            pin = pinned_value(name, key, n)
            if value != pin:
                return (
                    f"{key}={value!r} is set for every method, but method {name} pins {key}={pin!r}: "
                    f"remove {key} from the top level and set it in method_settings.<name> of the methods it "
                    f"is meant for"
                )
    return None


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
        if key in ("n", "strategy"):
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


def presets_of_strategy(strategy: str) -> list[str]:
    """The presets that pin ``strategy`` (``beam_search`` -> ``beam_search_target``, ``beam_search_draft``)."""
    return [name for name, pinned in METHOD_PRESETS.items() if pinned["strategy"] == strategy]


def check_method(name: str, where: str = "method") -> None:
    """``name`` is a method preset, else a one-line :class:`SpecsError`: a strategy name (``beam_search``, what
    ``method`` meant in configs before presets) names the presets that run it."""
    if name in METHOD_PRESETS:
        return
    meant = presets_of_strategy(name)
    if meant:
        raise SpecsError(
            f"{where}={name!r} is a search strategy, not a method preset; {where} names a preset: "
            f"{' or '.join(meant)} (see specs_rl/methods.py)"
        )
    raise SpecsError(f"unknown {where} {name!r}; known: {', '.join(METHOD_PRESETS)}")
