"""``specs-rl theory real``: the sampled check of SPECS against π*, on any SearchParts (tested on the tabular ones)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from specs_rl.exact import optimal_log_law, sequence_log_law
from specs_rl.tabular import TabularBackend, random_tree
from specs_rl.types import Problem
from theory.converge import chi_square
from theory.real_task import bootstrap_tv, main, real_task_check, sample_optimum


def _tabular(seed: int = 21, beta: float = 2.0):
    tree = random_tree(3, 2, seed=seed)
    parts = TabularBackend({"t": tree}, beta=beta, prm="idealized").parts()
    return tree, parts, Problem(id="0", prompt="", meta={"tree": "t"})


def test_rejection_sampler_draws_the_optimum():
    """Fixed seed; tolerance: chi-square p > 0.01 against π*, and p < 1e-6 against the target (the test has power)."""
    tree, parts, problem = _tabular()
    answers, draws = sample_optimum(parts, problem, 2.0, 3000, torch.Generator().manual_seed(0))
    counts = Counter(answers)
    obs = np.array([counts.get(k, 0) for k in tree.sequences()], dtype=np.float64)
    assert obs.sum() == 3000
    assert chi_square(obs, np.exp(optimal_log_law(tree, 2.0)))[0] > 0.01
    assert chi_square(obs, np.exp(sequence_log_law(tree, tree.target)))[0] < 1e-6
    # acceptance = E_{π_t}[exp(β (r - 1))] = Z_β e^{-β}
    z = np.exp(sequence_log_law(tree, tree.target) + 2.0 * tree.reward).sum() * np.exp(-2.0)
    assert 3000 / draws == pytest.approx(z, rel=0.08)


def test_real_task_check_matches_the_exact_tv_on_tabular_parts():
    from specs_rl.exact import specs_log_law, tv
    from specs_rl.search import SearchConfig

    tree, parts, problem = _tabular()
    res = real_task_check(parts, problem, 2.0, [1, 16], 1500, torch.Generator().manual_seed(3), bootstrap=100)
    assert {
        "beta",
        "n",
        "samples",
        "optimum",
        "specs",
        "tv",
        "tv_corrected",
        "tv_lo",
        "tv_hi",
        "tv_floor",
    } <= set(res)
    assert res["n"] == [1, 16] and set(res["specs"]) == {"1", "16"}
    star = optimal_log_law(tree, 2.0)
    for i, n in enumerate(res["n"]):
        cfg = SearchConfig(n=n, beta=2.0, start_mode="draft", max_steps=tree.horizon)
        exact = tv(star, specs_log_law(tree, cfg).log_q)
        if exact > 3 * res["tv_floor"]:
            assert res["tv_lo"][i] <= exact <= res["tv_hi"][i]
        else:  # below the sampling floor the TV's bias is not linear: the interval may miss by up to the floor
            assert res["tv_lo"][i] - res["tv_floor"] <= exact <= res["tv_hi"][i] + res["tv_floor"]
        assert sum(res["specs"][str(n)]["freq"].values()) == pytest.approx(1.0)
    assert res["tv_corrected"][0] > 0.25 > 0.05 > res["tv_corrected"][1]
    assert 0 < res["tv_floor"] < 0.05


def test_bootstrap_tv_of_identical_laws_is_near_zero_and_intervals_are_ordered():
    rng = np.random.default_rng(0)
    a = np.array([500.0, 300, 200])
    t, t_bc, lo, hi = bootstrap_tv(a, a.copy(), rng)
    assert t == 0.0 and t_bc == 0.0 and lo == 0.0 and hi < 0.1
    t, t_bc, lo, hi = bootstrap_tv(np.array([600.0, 300, 100]), a, rng)
    assert t == pytest.approx(0.1) and lo <= t_bc <= hi and lo > 0.03


def test_cli_on_the_tabular_backend_writes_json_and_plot(tmp_path):
    out = tmp_path / "real"
    rc = main(["K=3", "H=2", "tree_seed=2", "n=1,4", "samples=300", "bootstrap=50", f"out={out}"])
    assert rc == 0
    res = json.loads((out / "real.json").read_text())
    assert res["backend"] == "tabular" and len(res["exact_tv"]) == 2 and len(res["tv"]) == 2
    assert res["exact_tv"][1] < res["exact_tv"][0]
    assert (out / "real.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_input_is_rejected_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["backend=magic", f"out={out}"]) == 2
    assert "backend must be one of tabular, hf" in capsys.readouterr().err
    assert main([f"tree={tmp_path / 'missing.json'}", f"out={out}"]) == 2
    assert "tree file not found" in capsys.readouterr().err
    assert main(["n=0", f"out={out}"]) == 2
    assert not out.exists()


def test_hf_backend_bad_input_is_rejected_before_models_load(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["backend=hf", "hf.draft.device=tpu", f"out={out}"]) == 2
    assert "hf.draft.device" in capsys.readouterr().err
    assert main(["backend=hf", "problem=100000", "data.limit=3", f"out={out}"]) == 2
    assert "problem=100000" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_tiny_hf_parts(tmp_path):
    """The check end to end on tiny random Hugging Face models: the core function, then the CLI."""
    hf = pytest.importorskip("specs_rl.hf")
    from specs_rl.search import SearchConfig

    parts = hf.tiny_parts(seed=0)
    problem = Problem(id="p0", prompt="Compute 2+3.\n\n")
    res = real_task_check(
        parts,
        problem,
        2.0,
        [1, 2],
        8,
        torch.Generator().manual_seed(0),
        search=SearchConfig(start_mode="draft", max_steps=2),
        bootstrap=20,
        batch=8,
    )
    assert len(res["tv"]) == 2 and all(0.0 <= t <= 1.0 for t in res["tv"])
    assert 0 < res["optimum"]["acceptance"] <= 1
    out = tmp_path / "hf"
    args = ["backend=hf", "hf.max_step_tokens=8", "hf.max_tokens=16", "samples=4", "n=[1]", "max_steps=2"]
    assert main([*args, "bootstrap=5", "batch=4", f"out={out}"]) == 0
    assert json.loads((out / "real.json").read_text())["backend"] == "hf"
