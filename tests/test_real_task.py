"""``specs-rl theory real``: the sampled check of SPECS against π*, on any SearchParts (tested on the tabular ones)."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import numpy as np
import pytest
import torch

from specs_rl.exact import optimal_log_law, sequence_log_law
from specs_rl.search import SearchConfig
from specs_rl.tabular import TabularBackend, random_tree
from specs_rl.types import Problem
from theory.converge import chi_square
from theory.real_sample import sample_optimum, variant_config
from theory.real_stats import bootstrap_tv
from theory.real_task import main, real_task_check


def _tabular(seed: int = 21, beta: float = 2.0):
    tree = random_tree(3, 2, seed=seed)
    parts = TabularBackend({"t": tree}, beta=beta, prm="idealized").parts()
    return tree, parts, Problem(id="0", prompt="", meta={"tree": "t"})


def test_rejection_sampler_draws_the_optimum_and_its_first_draws_are_the_target():
    """Fixed seed; tolerance: chi-square p > 0.01 against π*, and p < 1e-6 against the target (the test has power);
    the first ``samples`` draws (accepted or not): p > 0.01 against the target, p < 1e-6 against π*."""
    tree, parts, problem = _tabular()
    answers, target, draws = sample_optimum(parts, problem, 2.0, 3000, torch.Generator().manual_seed(0))
    star, pt = np.exp(optimal_log_law(tree, 2.0)), np.exp(sequence_log_law(tree, tree.target))
    obs, obs_t = (
        np.array([Counter(a).get(k, 0) for k in tree.sequences()], float) for a in (answers, target)
    )
    assert obs.sum() == obs_t.sum() == 3000
    assert chi_square(obs, star)[0] > 0.01
    assert chi_square(obs, pt)[0] < 1e-6
    assert chi_square(obs_t, pt)[0] > 0.01
    assert chi_square(obs_t, star)[0] < 1e-6
    # acceptance = E_{π_t}[exp(β (r - 1))] = Z_β e^{-β}
    z = np.exp(sequence_log_law(tree, tree.target) + 2.0 * tree.reward).sum() * np.exp(-2.0)
    assert 3000 / draws == pytest.approx(z, rel=0.08)


def _within(value: float, rec: dict, floor: float) -> bool:
    """``value`` in the basic interval; near 0 the TV's bias is not linear and the interval may miss by the floor."""
    lo, hi = rec["tv_ci"]
    return lo <= value <= hi if value > 3 * floor else lo - floor <= value <= hi + floor


def test_real_task_check_matches_the_exact_tv_on_tabular_parts():
    """The sampled TVs (SPECS vs π*, and π_target vs π*) against the exact ones, within their 95% intervals."""
    from specs_rl.exact import specs_log_law, tv

    tree, parts, problem = _tabular()
    res = real_task_check(parts, problem, 2.0, [1, 16], 1500, torch.Generator().manual_seed(3), bootstrap=100)
    assert {"n", "samples", "target", "optimum", "tv_target_opt", "tv_floor", "specs"} <= set(res)
    assert (
        res["n"] == [1, 16] and set(res["specs"]) == {"specs"} and set(res["specs"]["specs"]) == {"1", "16"}
    )
    star = optimal_log_law(tree, 2.0)
    floor = res["tv_floor"]
    exact_t = tv(sequence_log_law(tree, tree.target), star)  # 0.119
    assert _within(exact_t, res["tv_target_opt"], floor)
    assert sum(res["target"]["freq"].values()) == pytest.approx(1.0)
    rows = res["specs"]["specs"]
    for n in res["n"]:
        cfg = SearchConfig(n=n, beta=2.0, start_mode="draft", max_steps=tree.horizon)
        assert _within(tv(star, specs_log_law(tree, cfg).log_q), rows[str(n)], floor)
        assert sum(rows[str(n)]["freq"].values()) == pytest.approx(1.0)
        assert rows[str(n)]["majority"]["share"] == max(rows[str(n)]["freq"].values())
    assert rows["1"]["tv_corrected"] > 0.25 > 0.05 > rows["16"]["tv_corrected"]
    assert 0 < floor < 0.05


def test_no_target_and_paper_form_do_not_converge_where_specs_does():
    """At n = 32 on a 3x2 tree the exact form is at the sampling floor (exact TV 0.008) while the reward-only
    (exact TV 0.379) and the mean form at T = 0.3 (0.268) stay far from π*; each sampled TV brackets its exact
    value."""
    from specs_rl.exact import specs_log_law, tv

    tree, parts, problem = _tabular()
    base = SearchConfig(start_mode="draft", max_steps=tree.horizon)
    variants = {v: variant_config(base, v, 0.3) for v in ("specs", "specs_no_target", "specs_paper_form")}
    assert (variants["specs_paper_form"].score_form, variants["specs_paper_form"].temperature) == (
        "mean",
        0.3,
    )
    assert (variants["specs_no_target"].score_form, variants["specs_no_target"].temperature) == (
        "reward_only",
        1.0,
    )
    res = real_task_check(
        parts, problem, 2.0, [32], 1000, torch.Generator().manual_seed(5), variants=variants, bootstrap=100
    )
    star = optimal_log_law(tree, 2.0)
    got = {v: res["specs"][v]["32"] for v in variants}
    for v, rec in got.items():
        exact = tv(star, specs_log_law(tree, dataclasses.replace(variants[v], n=32, beta=2.0)).log_q)
        assert _within(exact, rec, res["tv_floor"])
    assert (
        got["specs"]["tv_ci"][0] < res["tv_floor"] and got["specs"]["tv_corrected"] < res["tv_floor"] + 0.02
    )
    assert got["specs_no_target"]["tv_ci"][0] > 0.3 and got["specs_paper_form"]["tv_ci"][0] > 0.2
    assert all(rec["defer_rate"] == 0.0 for rec in got.values())  # tau_reject = -inf never defers


def test_bootstrap_tv_of_identical_laws_is_near_zero_and_intervals_are_ordered():
    rng = np.random.default_rng(0)
    a = np.array([500.0, 300, 200])
    t, t_bc, lo, hi = bootstrap_tv(a, a.copy(), rng)
    assert t == 0.0 and t_bc == 0.0 and lo == 0.0 and hi < 0.1
    t, t_bc, lo, hi = bootstrap_tv(np.array([600.0, 300, 100]), a, rng)
    assert t == pytest.approx(0.1) and lo <= t_bc <= hi and lo > 0.03


def test_cli_on_the_tabular_backend_writes_json_and_plot(tmp_path):
    """Two problems, three variants: per problem the target and optimum laws, TV(π_target, π*), per variant per n
    the TV, its interval, deferrals, majority share and time, the exact TVs; the pooled mean over problems."""
    out = tmp_path / "real"
    args = [
        "K=3",
        "H=2",
        "tree_seed=2",
        "problems=0,2",
        "variants=specs,specs_no_target,specs_paper_form",
        "n=1,4",
    ]
    assert main([*args, "samples=200", "bootstrap=30", f"out={out}"]) == 0
    res = json.loads((out / "real.json").read_text())
    assert res["backend"] == "tabular" and res["variants"] == ["specs", "specs_no_target", "specs_paper_form"]
    assert [p["index"] for p in res["problems"]] == [0, 2] and [p["id"] for p in res["problems"]] == [
        "0",
        "2",
    ]
    for p in res["problems"]:
        assert sum(p["target"]["freq"].values()) == pytest.approx(1.0) and 0 < p["optimum"]["acceptance"] <= 1
        assert set(p["tv_target_opt"]) == {"tv", "tv_corrected", "tv_ci"}
        assert set(p["specs"]) == set(p["exact"]["specs"]) == {"specs", "specs_no_target", "specs_paper_form"}
        for rows in p["specs"].values():
            assert set(rows) == {"1", "4"}
            assert {"tv", "tv_corrected", "tv_ci", "defer_rate", "majority", "seconds", "freq"} <= set(
                rows["4"]
            )
        ex = p["exact"]["specs"]
        assert (
            ex["specs"][0]
            == pytest.approx(ex["specs_no_target"][0])
            == pytest.approx(ex["specs_paper_form"][0])
        )  # n = 1: draft
        assert ex["specs"][1] < ex["specs"][0]
    pooled = res["pooled"]
    assert pooled["problems"] == 2
    for name in ("specs", "specs_no_target", "specs_paper_form"):
        for i, n in enumerate(("1", "4")):
            assert pooled["specs"][name][n]["tv"] == pytest.approx(
                np.mean([p["specs"][name][n]["tv"] for p in res["problems"]])
            )
            lo, hi = pooled["specs"][name][n]["tv_ci"]
            assert lo <= pooled["specs"][name][n]["tv_corrected"] <= hi
            assert pooled["exact"]["specs"][name][i] == pytest.approx(
                np.mean([p["exact"]["specs"][name][i] for p in res["problems"]])
            )
    assert (out / "real.png").read_bytes()[:4] == b"\x89PNG"


def test_scan_reports_the_target_optimum_tv_of_the_first_problems(tmp_path, capsys):
    """``scan=K``: no SPECS, the first K problems' TV(π_target, π*), close to the exact value (0.1 at 400 samples)."""
    from specs_rl.exact import tv
    from specs_rl.tabular import TabularTaskConfig

    out = tmp_path / "scan"
    assert main(["K=3", "H=2", "tree_seed=2", "scan=3", "samples=400", "bootstrap=50", f"out={out}"]) == 0
    rows = json.loads((out / "scan.json").read_text())["problems"]
    assert [r["index"] for r in rows] == [0, 1, 2] and not (out / "real.json").exists()
    for r in rows:
        tree = TabularTaskConfig(K=3, H=2, tree_seed=2, concentration=1.0).build(r["index"])  # the recipe's
        exact = tv(sequence_log_law(tree, tree.target), optimal_log_law(tree, 2.0))
        assert abs(r["tv_target_opt"]["tv_corrected"] - exact) < 0.1
    assert "interval lies above 0.2" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["backend=magic"], "backend must be one of tabular, hf"),
        (["tree=MISSING"], "tree file not found"),
        (["n=0"], "n must be a non-empty list"),
        (
            ["variants=specs,magic"],
            "variants must be a non-empty list of distinct names from specs, specs_no_target, specs_paper_form",
        ),
        (["variants=[]"], "variants must be a non-empty list"),
        (["problems=[]"], "problems must be a non-empty list"),
        (["problems=0,0"], "problems must be a non-empty list of distinct positions"),
        (
            ["tabular.problems=3", "problems=0,3"],
            "position 3 is out of range, the tabular task has 3 problems",
        ),
        (["temperature=0"], "temperature must be a finite number > 0, got 0.0"),
        (["temperature=-1"], "temperature must be a finite number > 0"),
        (["scan=-1"], "scan must be >= 0"),
    ],
)
def test_bad_input_is_rejected_in_one_line_before_anything_is_written(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    args = [a.replace("MISSING", str(tmp_path / "missing.json")) for a in args]
    assert main([*args, f"out={out}"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_hf_backend_bad_input_is_rejected_before_models_load(tmp_path, capsys, monkeypatch):
    import specs_rl.hf.build

    def no_models(cfg):
        raise AssertionError("models were built")

    monkeypatch.setattr(specs_rl.hf.build, "build_parts", no_models)
    out = tmp_path / "o"
    assert main(["backend=hf", "hf.draft.device=tpu", f"out={out}"]) == 2
    assert "hf.draft.device" in capsys.readouterr().err
    assert main(["backend=hf", "problems=1,100000", "data.limit=3", f"out={out}"]) == 2
    assert "position 100000 is out of range, the toymath slice has 3 problems" in capsys.readouterr().err
    assert main(["backend=hf", "scan=2", "temperature=0", f"out={out}"]) == 2
    assert "temperature" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_tiny_hf_parts(tmp_path):
    """The check end to end on tiny random Hugging Face models: the core function, then the CLI."""
    hf = pytest.importorskip("specs_rl.hf")

    parts = hf.tiny_parts(seed=0)
    problem = Problem(id="p0", prompt="Compute 2+3.\n\n")
    base = SearchConfig(start_mode="draft", max_steps=2)
    res = real_task_check(
        parts,
        problem,
        2.0,
        [1, 2],
        8,
        torch.Generator().manual_seed(0),
        variants={v: variant_config(base, v, 0.3) for v in ("specs", "specs_paper_form")},
        bootstrap=20,
        batch=8,
    )
    assert all(
        0.0 <= res["specs"][v][n]["tv"] <= 1.0 for v in ("specs", "specs_paper_form") for n in ("1", "2")
    )
    assert 0 < res["optimum"]["acceptance"] <= 1
    out = tmp_path / "hf"
    args = ["backend=hf", "hf.max_step_tokens=8", "hf.max_tokens=16", "samples=4", "n=[1]", "max_steps=2"]
    assert main([*args, "variants=specs,specs_no_target", "bootstrap=5", "batch=4", f"out={out}"]) == 0
    assert json.loads((out / "real.json").read_text())["backend"] == "hf"


def test_old_names_are_aliases_that_say_what_replaced_them(tmp_path, capsys):
    """``exact,reward_only,mean`` and ``mean_temperature`` still run, each name replaced by its preset-named one
    (one stderr line each), and the results carry the new names; the same run with the new names gives the same
    numbers."""
    common = ["K=3", "H=2", "tree_seed=2", "n=1,4", "samples=100", "bootstrap=10", "plot=false"]
    old = ["variants=exact,reward_only,mean", "mean_temperature=0.5"]
    assert main([*common, *old, f"out={tmp_path / 'old'}"]) == 0
    err = capsys.readouterr().err.splitlines()
    for line in ("'exact' is now called 'specs'", "'reward_only' is now called 'specs_no_target'",
                 "'mean' is now called 'specs_paper_form'", "'mean_temperature' is now called 'temperature'"):  # fmt: skip
        assert sum(line in e for e in err) == 1, line
    new = ["variants=specs,specs_no_target,specs_paper_form", "temperature=0.5"]
    assert main([*common, *new, f"out={tmp_path / 'new'}"]) == 0
    assert "is now called" not in capsys.readouterr().err
    a, b = (json.loads((tmp_path / d / "real.json").read_text()) for d in ("old", "new"))
    assert a["variants"] == b["variants"] == ["specs", "specs_no_target", "specs_paper_form"]
    assert a["temperature"] == b["temperature"] == 0.5
    for pa, pb in zip(a["problems"], b["problems"]):  # the same seed: the same draws (seconds aside)
        for name in a["variants"]:
            for n in ("1", "4"):
                assert pa["specs"][name][n]["freq"] == pb["specs"][name][n]["freq"]
                assert pa["specs"][name][n]["tv"] == pb["specs"][name][n]["tv"]
    assert main([*common, "mean_temperature=0.5", "temperature=0.5", f"out={tmp_path / 'both'}"]) == 2
    assert "mean_temperature is now temperature" in capsys.readouterr().err
