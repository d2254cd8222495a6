"""Method presets (specs_rl.methods): what each one pins, and the refusals that keep a comparison unambiguous."""

from __future__ import annotations

import math

import pytest

from specs_rl.errors import SpecsError
from specs_rl.methods import MATCHED_FRACTION, METHOD_PRESETS, preset, shared_clash, uses_n
from specs_rl.settings import SearchConfig


def test_the_three_forms_and_gsi_pin_what_makes_them_that_method():
    base = SearchConfig(n=16)
    spec = preset(base, "specs")  # this project's exact form (docs/algorithm.md §3; theory/README.md §2)
    assert (spec.score_form, spec.temperature, spec.acceptance) == ("exact", 1.0, "filter")
    paper = preset(base, "specs_paper")  # the authors' code (docs/algorithm.md §3 [code], §6)
    assert (paper.score_form, paper.start_mode, paper.target_select, paper.acceptance) == (
        "mean",
        "target",
        "argmax",
        "filter",
    )
    gsi = preset(base, "gsi")  # GSI: exact score, T = 1, select-then-test, soft fallback, never switching
    assert (gsi.score_form, gsi.temperature, gsi.acceptance, gsi.accept_test) == (
        "exact",
        1.0,
        "select_test",
        "score",
    )
    assert (gsi.start_mode, gsi.target_select, gsi.tau_switch) == ("draft", "soft", -math.inf)
    bon = preset(base, "rsd_bon")  # GSI's "RSD adapted to best-of-n": softmax(beta r), reward >= delta
    assert (bon.score_form, bon.temperature, bon.acceptance, bon.accept_test) == (
        "reward_only",
        1.0,
        "select_test",
        "reward",
    )
    assert (bon.start_mode, bon.target_select, bon.tau_switch) == ("draft", "soft", -math.inf)
    assert all(c.strategy == "specs" and c.n == 16 for c in (spec, paper, gsi, bon))  # 16 drafts = 16 samples
    assert all(uses_n(name) for name in ("specs", "specs_paper", "gsi", "rsd_bon"))


def test_a_preset_takes_its_own_thresholds_and_beta():
    gsi = preset(SearchConfig(beta=1.0), "gsi", {"beta": 3.0, "tau_reject": 1.2})
    assert (gsi.beta, gsi.tau_reject) == (3.0, 1.2)
    paper = preset(SearchConfig(), "specs_paper", {"temperature": 0.3, "tau_reject": 6.0, "tau_switch": 0.7})
    assert (paper.temperature, paper.tau_reject, paper.tau_switch) == (0.3, 6.0, 0.7)
    with pytest.raises(SpecsError, match="method gsi pins tau_switch=-inf"):
        preset(SearchConfig(), "gsi", {"tau_switch": 0.7})
    with pytest.raises(SpecsError, match="method specs pins temperature=1.0"):
        preset(SearchConfig(), "specs", {"temperature": 0.3})


@pytest.mark.parametrize("name", list(METHOD_PRESETS))
def test_every_preset_is_a_valid_config_and_its_ablations_change_one_thing(name):
    cfg = preset(SearchConfig(n=4), name)
    cfg.validate()
    for base in ("specs_paper", "specs"):
        if name.startswith(base + "_") and name.endswith(("_no_target", "_no_deferral", "_random_switch")):
            changed = {
                k for k, v in METHOD_PRESETS[name].items() if METHOD_PRESETS[base].get(k, object()) != v
            }
            assert len(changed) == 1 and METHOD_PRESETS[base].keys() <= METHOD_PRESETS[name].keys(), name
            break
    for ablation, base in MATCHED_FRACTION.items():
        assert ablation.startswith(base) and base in METHOD_PRESETS


def test_a_shared_key_that_a_preset_pins_otherwise_is_named_in_one_line():
    assert shared_clash("specs", {"score_form": "mean"}, [4]) == (
        "score_form='mean' is set for every method, but method specs pins score_form='exact': remove score_form "
        "from the top level and set it in method_settings.<name> of the methods it is meant for"
    )
    assert shared_clash("specs", {"score_form": "exact", "temperature": 1, "beta": 5.0}, [4]) is None  # equal
    assert shared_clash("specs_paper", {"temperature": 0.3}, [4]) is None  # not pinned: its own setting
    assert "pins tau_switch=-inf" in shared_clash("gsi", {"tau_switch": 0.7}, [4])
    # beam_width None is "= n": a shared beam width equal to every n is no clash, another one is
    assert shared_clash("beam_search_target", {"beam_width": 4}, [4]) is None
    assert "pins beam_width=8" in shared_clash("beam_search_target", {"beam_width": 4}, [4, 8])
