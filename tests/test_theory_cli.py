"""``specs-rl theory converge`` run in-process: output shape, measured rates, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from specs_rl.tabular import random_tree
from theory.converge import chi_square, fit_slope, main

GRID = [1, 2, 4, 8, 16, 32, 64, 128, 256]


def test_converge_writes_json_and_plot_with_the_measured_rates(tmp_path):
    out = tmp_path / "run"
    rc = main(
        [
            "--beta", "2.0",
            "--n", ",".join(map(str, GRID)),
            "--variants", "specs,specs_no_target,threshold",
            "--out", str(out),
            "K=3", "H=2", "tree_seed=1", "tau_reject=1.0",
            "samples=1500", "batch=1500", "empirical_n=4",
        ]
    )  # fmt: skip
    assert rc == 0
    res = json.loads((out / "converge.json").read_text())
    assert res["beta"] == 2.0 and res["n"] == GRID
    assert set(res["variants"]) == {"specs", "specs_no_target", "threshold"}
    for curve in res["variants"].values():
        for key in ("kl_star_q", "kl_q_star", "tv", "reward_gap", "defer_rate"):
            assert len(curve[key]) == len(GRID)
        assert {"slope", "tv_slope"} <= set(curve)
    exact = res["variants"]["specs"]
    # theory/README.md §2: TV ~ 1/n and KL ~ 1/n² for the exact variant (fit over n = 16..256).
    assert exact["slope"] == pytest.approx(-2.0, abs=0.15)
    assert exact["tv_slope"] == pytest.approx(-1.0, abs=0.08)
    assert exact["kl_q_star"][-1] < 1e-4 and max(exact["defer_rate"]) == 0.0
    # reward-only selection stalls at a nonzero plateau.
    nt = res["variants"]["specs_no_target"]["tv"]
    assert nt[-1] > 0.01 and nt[-1] == pytest.approx(nt[-2], rel=0.05)
    assert res["variants"]["threshold"]["defer_rate"][0] > 0.0
    # the exact law for every n on the grid, over all 9 responses, summing to 1
    assert set(res["law"]["specs"]) == {str(n) for n in GRID}
    for law in res["law"]["specs"].values():
        assert len(law) == 9 and sum(law.values()) == pytest.approx(1.0, abs=1e-12)
    assert sum(res["optimum"].values()) == pytest.approx(1.0, abs=1e-12)
    emp = res["empirical"]
    assert (emp["variant"], emp["n"], emp["samples"]) == ("specs", 4, 1500)
    assert sum(emp["freq"].values()) == pytest.approx(1.0)
    assert emp["chi2_p"] > 0.01
    png = (out / "converge.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert (out / "config.yaml").is_file()


def test_the_presets_side_by_side_with_their_limits(tmp_path, capsys):
    """`--variants specs,specs_paper,gsi`: TV and KL to π* against n for the three on the same tree, each
    with its n -> ∞ limit; specs converges to π*, specs_paper and GSI at a finite threshold do not, GSI at threshold
    -inf is the law of specs, and the real search runs GSI's rule as its law says."""
    out = tmp_path / "run"
    common = ["--n", "1,4,16,64,256", "K=3", "H=2", "tree_seed=1", "plot=false"]
    rc = main(
        [*common, "--variants", "specs,specs_paper,gsi,gsi_filter", "--out", str(out)]
        + ["empirical_variant=gsi", "empirical_n=3", "samples=3000", "batch=1500"]
    )
    assert rc == 0
    res = json.loads((out / "converge.json").read_text())
    v = res["variants"]
    assert set(v) == {"specs", "specs_paper", "gsi", "gsi_filter"}
    for curve in v.values():  # every variant approaches its own limit like 1/n (argmax parts: faster)
        assert curve["tv_to_limit"][-1] < 0.25 * curve["tv_to_limit"][-3] + 1e-12
    assert v["specs"]["limit"]["tv"] < 1e-12 and v["specs"]["tv_slope"] == pytest.approx(-1.0, abs=0.1)
    for name in ("specs_paper", "gsi", "gsi_filter"):
        assert v[name]["limit"]["tv"] > 0.01, name
        assert v[name]["tv"][-1] == pytest.approx(v[name]["limit"]["tv"], abs=0.01), name
    # select-then-test keeps deferring in the limit and keeps π*'s support; the filter neither
    assert v["gsi"]["limit"]["defer_rate"] > 0.005 and v["gsi_filter"]["limit"]["defer_rate"] == 0.0
    assert v["gsi"]["limit"]["kl_star_q"] < 1 and v["gsi_filter"]["limit"]["kl_star_q"] is None  # inf -> null
    assert res["empirical"]["variant"] == "gsi" and res["empirical"]["chi2_p"] > 0.01
    assert "limit q_inf" in capsys.readouterr().out
    # threshold -inf: GSI is SIR of the tilted target, the very law of specs
    rc = main([*common, "variants=specs,gsi", "tau_reject=-inf", "samples=0", f"out={tmp_path / 'sir'}"])
    assert rc == 0
    sir = json.loads((tmp_path / "sir" / "converge.json").read_text())
    np.testing.assert_allclose(sir["variants"]["gsi"]["tv"], sir["variants"]["specs"]["tv"], rtol=1e-12)


def test_tree_file_and_key_value_forms_agree_with_the_random_spec(tmp_path):
    path = tmp_path / "tree.json"
    random_tree(3, 2, seed=4).save(path)
    common = ["samples=0", "plot=false", "n=1,8,64"]
    assert (
        main(
            [
                "--tree",
                str(path),
                "--beta",
                "1.5",
                "--variants",
                "specs,specs_paper_form",
                "--out",
                str(tmp_path / "a"),
                *common,
            ]
        )
        == 0
    )
    assert (
        main(
            [f"tree={path}", "beta=1.5", "variants=specs,specs_paper_form", f"out={tmp_path / 'b'}", *common]
        )
        == 0
    )
    assert (
        main(
            [
                "K=3",
                "H=2",
                "tree_seed=4",
                "beta=1.5",
                "variants=specs,specs_paper_form",
                f"out={tmp_path / 'c'}",
                *common,
            ]
        )
        == 0
    )
    a, b, c = (json.loads((tmp_path / d / "converge.json").read_text()) for d in "abc")
    assert a["variants"] == b["variants"]
    for key in ("kl_star_q", "tv"):
        np.testing.assert_allclose(a["variants"]["specs"][key], c["variants"]["specs"][key], rtol=1e-9)
    assert "empirical" not in a and not (tmp_path / "a" / "converge.png").exists()


def test_runs_through_the_launcher(tmp_path):
    from specs_rl.cli import main as cli

    rc = cli(
        [
            "theory",
            "converge",
            "K=2",
            "H=2",
            "n=1,4",
            "variants=poisson,argmax",
            "samples=0",
            "plot=false",
            f"out={tmp_path}",
        ]
    )
    assert rc == 0
    res = json.loads((tmp_path / "converge.json").read_text())
    assert set(res["variants"]) == {"poisson", "argmax"}


@pytest.mark.parametrize(
    "content,needle",
    [
        (None, "tree file not found"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "top level must be a JSON object"),
        ("ROWSUM", "sums to"),
        ("UNCOVERED", "draft gives probability 0"),
        ("NOREWARD", "missing key 'reward'"),
    ],
)
def test_bad_tree_files_are_rejected_with_one_line_and_nothing_written(tmp_path, capsys, content, needle):
    path = tmp_path / "tree.json"
    if content is not None:
        obj = random_tree(2, 2, seed=0).to_json()
        if content == "ROWSUM":
            obj["target"]["a"] = [0.7, 0.7]
            content = json.dumps(obj)
        elif content == "UNCOVERED":
            obj["draft"]["b"] = [1.0, 0.0]
            content = json.dumps(obj)
        elif content == "NOREWARD":
            del obj["reward"]
            content = json.dumps(obj)
        path.write_text(content)
    out = tmp_path / "out"
    rc = main(["--tree", str(path), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("error:") and needle in err and "\n" not in err
    assert not out.exists()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["variants=specs,best"], "unknown variant 'best'"),
        (["variants=specs,argmax,specs"], "variants names 'specs' twice"),
        (["n=0,4"], "n must be"),
        (["bogus=1"], "unknown config key 'bogus'"),
        (["empirical_variant=poisson"], "fixed n"),
        (["beta=-1"], "beta must be"),
        (["K=1"], "K >= 2"),
    ],
)
def test_bad_config_is_rejected_before_anything_is_written(tmp_path, capsys, args, needle):
    out = tmp_path / "out"
    rc = main([*args, f"out={out}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and needle in err and "\n" not in err
    assert not out.exists()


def test_fit_slope_and_chi_square_helpers():
    ns = [1, 2, 4, 8, 16, 32]
    assert fit_slope(ns, [3.0 / n**2 for n in ns]) == pytest.approx(-2.0)
    # only the larger half counts: a bend at small n does not change the fit
    assert fit_slope(ns, [1.0, 1.0, 1.0, 0.5, 0.25, 0.125]) == pytest.approx(-1.0)
    assert fit_slope([1, 2], [0.0, 0.0]) is None and fit_slope([4], [1.0]) is None
    probs = np.array([0.5, 0.3, 0.15, 0.04, 0.01])
    p, cells = chi_square(np.array([500.0, 300, 150, 40, 10]), probs)
    assert p == pytest.approx(1.0) and cells == 5
    p, cells = chi_square(np.array([50.0, 30, 15, 4, 1]), probs)  # last two cells pooled (expected 4 + 1)
    assert cells == 4 and p == pytest.approx(1.0)
    assert chi_square(np.array([300.0, 500, 150, 40, 10]), probs)[0] < 1e-10
    assert math.isfinite(chi_square(np.array([0.0, 0, 0, 0, 100]), probs)[0])


def test_bench_speed_times_every_variant(tmp_path, capsys):
    """`python -m theory.bench_speed` on a small tree (it had stopped running when the tree keys moved into the
    tabular section)."""
    from theory.bench_speed import main as bench

    assert bench(["K=3", "H=2", "n=1,4", "variants=specs,gsi", f"out={tmp_path}"]) == 0
    res = json.loads((tmp_path / "bench_speed.json").read_text())
    assert set(res["seconds_per_variant"]) == {"specs", "gsi"} and res["specs_tv_at_largest_n"] > 0
    assert "gsi" in capsys.readouterr().out


def test_old_names_are_aliases_that_say_what_replaced_them(tmp_path, capsys):
    """The names used before (variants exact, code, no_target; gsi_threshold, code_temperature) still run, each
    replaced by the preset-named one with one stderr line, and give the same results under the new names."""
    common = ["K=3", "H=2", "tree_seed=1", "n=1,4,16", "samples=0", "plot=false"]
    old = ["variants=exact,code,no_target,gsi", "gsi_threshold=0.2", "code_temperature=0.4"]
    assert main([*common, *old, "empirical_variant=exact", f"out={tmp_path / 'old'}"]) == 0
    err = capsys.readouterr().err.splitlines()
    for old_name, new_name in [("exact", "specs"), ("code", "specs_paper_form"), ("no_target", "specs_no_target"),
                               ("gsi_threshold", "tau_reject"), ("code_temperature", "temperature")]:  # fmt: skip
        assert any(f"{old_name!r} is now called {new_name!r}" in e for e in err), old_name
    new = ["variants=specs,specs_paper_form,specs_no_target,gsi", "tau_reject=0.2", "temperature=0.4"]
    assert main([*common, *new, f"out={tmp_path / 'new'}"]) == 0
    assert capsys.readouterr().err == ""
    a, b = (json.loads((tmp_path / d / "converge.json").read_text()) for d in ("old", "new"))
    assert list(a["variants"]) == ["specs", "specs_paper_form", "specs_no_target", "gsi"]
    for name in a["variants"]:
        np.testing.assert_allclose(a["variants"][name]["tv"], b["variants"][name]["tv"], rtol=1e-12)
    # the old and the new name of one setting together: one line naming both
    assert main([*common, "gsi_threshold=0.2", "tau_reject=0.5", f"out={tmp_path / 'both'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "gsi_threshold is now tau_reject" in err and "\n" not in err
