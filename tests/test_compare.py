"""``specs-rl compare`` end to end on the tiny config: results, table, plot, W&B; resume after a kill or a torn
write (nothing recomputed, nothing lost); a directory of another config refused before anything loads."""

from __future__ import annotations

import dataclasses
import doctest
import json
import math
import os
import re
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import eval.compare as compare
import specs_rl.run as run
import specs_rl.run.grid as grid
import specs_rl.run.report as report
from specs_rl.config import ConfigError, given_keys, load_config
from specs_rl.settings import SearchConfig
from specs_rl.tracking import find_offline_runs, read_offline_run

from .conftest import DATA, REPO

TINY = str(REPO / "configs" / "eval" / "tiny.yaml")  # tiny random HF models on 5 MATH-500 problems
TAB = str(
    REPO / "configs" / "eval" / "tabular.yaml"
)  # exact tabular worlds, simulated clock: fast, deterministic
SMALL = [
    "tabular.problems=8",
    "methods=[specs,beam_search_target,beam_search_draft,best_of_n,target_only,draft_only]",
    "n_grid=[2,4]",
    "seeds=[42,43]",
]
QUIET = ["wandb=false", "plot=false", "progress=false"]
ROW_KEYS = {"method", "n", "seed", "problems", "accuracy", "accuracy_ci", "latency_mean_s", "latency_p50_s"}
ROW_KEYS |= {"latency_p90_s", "draft_step_fraction", "latency_stage_mean_s", "tokens_mean"}


def _tab_cfg(*overrides: str) -> run.CompareConfig:
    return load_config(run.CompareConfig, TAB, [*SMALL, *overrides])


def _expected_records(cfg: run.CompareConfig, problems: int) -> int:
    return len(run.plan_runs(cfg)) * problems


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _key(r: dict) -> tuple:
    return (r["method"], r["n"], r["seed"], r["id"])


def _close(a, b) -> bool:
    """Equal up to float rounding (the simulated clock's running sum makes latencies differ in the last bits)."""
    if isinstance(a, float) or isinstance(b, float):
        return (
            isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, abs_tol=1e-9)
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return a == b


def _same_records(a: list[str], b: list[str]) -> bool:
    ra = {_key(r): r for r in map(json.loads, a)}
    rb = {_key(r): r for r in map(json.loads, b)}
    return len(ra) == len(a) and ra.keys() == rb.keys() and all(_close(ra[k], rb[k]) for k in ra)


@pytest.fixture
def count_searches(monkeypatch):
    """Counts the problems actually searched (run_search is what search_task calls)."""
    seen: list[str] = []
    real = grid.run_search

    def counting(problems, *args, **kwargs):
        seen.extend(p.id for p in problems)
        return real(problems, *args, **kwargs)

    monkeypatch.setattr(grid, "run_search", counting)
    return seen


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and data[-8:-4] == b"IEND"
    return struct.unpack(">II", data[16:24])


def test_end_to_end_on_tabular_worlds(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-env"))
    out = tmp_path / "run"
    assert compare.main(["--config", TAB, f"out={out}", *SMALL]) == 0
    cfg = _tab_cfg()
    problems = cfg.run.tabular.problems
    runs = run.plan_runs(cfg)
    # 4 methods x 2 n + target_only, draft_only once (they ignore n), x 2 seeds
    assert len(runs) == (4 * 2 + 2) * 2

    records = [json.loads(x) for x in _lines(out / "results.jsonl")]
    assert len(records) == len(runs) * problems == 160
    assert len({_key(r) for r in records}) == len(records)
    assert Counter((r["method"], r["n"]) for r in records)[("target_only", None)] == 2 * problems
    assert all(r["grader"] == {"name": "tabular-true-reward>=0.5", "version": "0.1.0"} for r in records)
    bs = [r for r in records if r["method"] == "beam_search_target"]
    assert {r["strategy"] for r in bs} == {"beam_search"} and all(r["draft_step_fraction"] == 0 for r in bs)
    assert all(r["draft_step_fraction"] == 1 for r in records if r["method"] == "draft_only")

    summary = json.loads((out / "summary.json").read_text())
    assert summary["grader"] == {"name": "tabular-true-reward>=0.5", "version": "0.1.0"}
    assert summary["complete"] and summary["records"] == summary["expected_records"] == 160
    assert [(r["method"], r["n"], r["seed"]) for r in summary["rows"]] == [
        (r.method, r.n, r.seed) for r in runs
    ]
    for row in summary["rows"]:
        assert set(row) >= ROW_KEYS
        mine = [
            r for r in records if (r["method"], r["n"], r["seed"]) == (row["method"], row["n"], row["seed"])
        ]
        assert row["problems"] == len(mine) == problems
        assert row["accuracy"] == pytest.approx(sum(r["correct"] for r in mine) / problems)
        lo, hi = row["accuracy_ci"]
        assert lo <= row["accuracy"] <= hi + 1e-12 and lo >= 0 and hi <= 1
        lat = sorted(r["latency_s"]["total"] for r in mine)
        assert row["latency_mean_s"] == pytest.approx(sum(lat) / problems)
        assert lat[0] <= row["latency_p50_s"] <= row["latency_p90_s"] <= lat[-1]
    agg = summary["aggregate"]
    assert len(agg) == 10 and all(a["seeds"] == [42, 43] for a in agg)
    ref = {a["n"]: a["latency_mean_s"] for a in agg if a["method"] == "beam_search_target"}
    for a in agg:
        if a["n"] is not None:
            assert a["latency_vs_beam_search_target"] == pytest.approx(a["latency_mean_s"] / ref[a["n"]])

    printed = capsys.readouterr().out
    assert (
        "accuracy [95% CI]" in printed
        and "over seeds (the repeats):" in printed
        and "vs BS(target)" in printed
    )
    assert all(m in printed for m in cfg.grid.methods)

    # the plot: a real PNG with one point per method and n (n-free methods once)
    w, h = _png_size(out / "accuracy_latency.png")
    assert (w, h) == (825, 550)
    assert summary["plot"]["points"] == 10 == len(agg)
    front = summary["plot"]["pareto"]
    pts = {report.point_label(a): (a["latency_mean_s"], a["accuracy"]) for a in agg}
    for label in front:  # nothing is both faster and more accurate than a Pareto point
        x, y = pts[label]
        assert not any(px <= x and py > y or px < x and py >= y for px, py in pts.values())

    # the W&B offline run holds the summary metrics, the config and the per-problem table
    (run_dir,) = find_offline_runs(out)
    assert summary["wandb"]["run_dir"] == str(run_dir)
    wb = read_offline_run(run_dir)
    for a in agg:
        base = f"{a['method']}/n{a['n'] if a['n'] is not None else '-'}"
        assert wb["summary"][f"{base}/accuracy"] == pytest.approx(a["accuracy"])
        assert wb["summary"][f"{base}/latency_mean_s"] == pytest.approx(a["latency_mean_s"])
    assert wb["summary"]["specs/n4/seed43/accuracy"] == pytest.approx(
        next(r["accuracy"] for r in summary["rows"] if (r["method"], r["n"], r["seed"]) == ("specs", 4, 43))
    )
    assert wb["config"]["grid"]["methods"] == cfg.grid.methods and wb["config"]["grid"]["n_grid"] == [2, 4]
    (hist,) = wb["history"]
    assert hist["problems_table/nrows"] == 160 and hist["summary_table/nrows"] == 10
    assert hist["accuracy_latency/_type"] == "image-file"


def test_resume_after_a_torn_write_recomputes_nothing_done(tmp_path, count_searches):
    out = tmp_path / "run"
    args = ["--config", TAB, f"out={out}", *SMALL, *QUIET]
    assert compare.main(args) == 0
    full = _lines(out / "results.jsonl")
    assert len(count_searches) == len(full) == 160
    # a crash: 37 records kept, the 38th cut mid-line
    (out / "results.jsonl").write_text("\n".join(full[:37]) + "\n" + full[37][:50])
    count_searches.clear()
    with pytest.warns(UserWarning, match="dropping a corrupt last line"):
        assert compare.main(args) == 0
    assert len(count_searches) == 160 - 37  # only what was missing was searched
    again = _lines(out / "results.jsonl")
    assert again[:37] == full[:37]  # untouched
    assert _same_records(again, full)  # per-problem seeds: the same records as the uninterrupted run
    count_searches.clear()
    assert compare.main(args) == 0  # a third run has nothing to do
    assert count_searches == [] and _lines(out / "results.jsonl") == again


def test_resume_after_a_cut_final_newline_keeps_every_record_once(tmp_path, count_searches):
    """A crash between a record and its newline: the complete record is kept, the next one starts its own line."""
    out = tmp_path / "run"
    args = ["--config", TAB, f"out={out}", *SMALL, *QUIET]
    assert compare.main(args) == 0
    full = _lines(out / "results.jsonl")
    (out / "results.jsonl").write_text("\n".join(full[:37]))  # 37 complete records, only the last newline cut
    count_searches.clear()
    assert compare.main(args) == 0
    assert len(count_searches) == 160 - 37  # the 37th record counted as done
    raw = (out / "results.jsonl").read_text()
    assert raw.endswith("\n") and "}{" not in raw
    again = raw.splitlines()
    assert [json.loads(line) for line in again[:37]] == [json.loads(line) for line in full[:37]]
    assert len(again) == 160 and _same_records(again, full)  # every record, once, one per line
    assert len(run.read_results(out / "results.jsonl")) == 160
    count_searches.clear()
    assert compare.main(args) == 0  # a third run reads all 160 and has nothing to do
    assert count_searches == [] and _lines(out / "results.jsonl") == again


def test_results_writer_finishes_a_cut_line(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"id": "a", "method": "m"}\n{"id": "b", "method": "m"}')  # no final newline
    with run.ResultsWriter(path) as w:
        assert [r["id"] for r in w.records] == ["a", "b"]
        w.write({"id": "c", "method": "m"})
    assert path.read_text().splitlines() == [
        '{"id": "a", "method": "m"}',
        '{"id": "b", "method": "m"}',
        '{"id": "c", "method": "m"}',
    ]
    assert [r["id"] for r in run.read_results(path)] == ["a", "b", "c"]


def test_killed_process_resumes_without_loss(tmp_path, count_searches):
    """A real SIGKILL in the middle of a run (searches slowed to 20 ms so the kill lands mid-run)."""
    out = tmp_path / "killed"
    overrides = [
        "tabular.problems=150",
        "methods=[specs,target_only]",
        "n_grid=[4]",
        "seeds=[42]",
        *QUIET,
    ]
    code = (
        "import sys, time, specs_rl.run.grid as r, eval.compare as c\n"
        "real = r.run_search\n"
        "def slow(*a, **k):\n    time.sleep(0.02)\n    return real(*a, **k)\n"
        "r.run_search = slow\n"
        "sys.exit(c.main(sys.argv[1:]))\n"
    )
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--config", TAB, f"out={out}", *SMALL, *overrides],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results = out / "results.jsonl"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if results.exists() and len(_lines(results)) >= 20:
            break
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    before = [x for x in _lines(results)]
    complete = [x for x in before if x.endswith("}")]
    assert 20 <= len(complete) < 300
    assert not (out / "summary.json").exists()  # it really died mid-run

    count_searches.clear()
    assert compare.main(["--config", TAB, f"out={out}", *SMALL, *overrides]) == 0
    after = [json.loads(x) for x in _lines(results)]
    assert len(after) == 300 and len({_key(r) for r in after}) == 300  # nothing lost, nothing twice
    assert len(count_searches) == 300 - len(complete)  # nothing recomputed
    assert [json.loads(x) for x in complete] == after[: len(complete)]

    ref = tmp_path / "uninterrupted"
    assert compare.main(["--config", TAB, f"out={ref}", *SMALL, *overrides]) == 0
    assert _same_records([json.dumps(r) for r in after], _lines(ref / "results.jsonl"))


def test_a_directory_of_another_config_is_refused_before_loading(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert compare.main(["--config", TAB, f"out={out}", *SMALL, *QUIET, "tabular.problems=3"]) == 0
    snapshot = {p.name: p.read_bytes() for p in out.iterdir()}

    def no_build(cfg):
        raise AssertionError("the task must not be built for a refused directory")

    monkeypatch.setattr(compare, "build_task", no_build)
    capsys.readouterr()
    assert (
        compare.main(["--config", TAB, f"out={out}", *SMALL, *QUIET, "tabular.problems=3", "beta=3.0"]) == 2
    )
    err = capsys.readouterr().err
    assert "holds a run of a different config (differs in: beta)" in err and err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == snapshot
    # results with no config stamp are refused too
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "results.jsonl").write_text("")
    assert compare.main(["--config", TAB, f"out={stray}", *SMALL, *QUIET]) == 2
    assert "no config.json" in capsys.readouterr().err
    # presentation keys (wandb, plot, progress) may change on a resume
    monkeypatch.undo()
    assert (
        compare.main(
            ["--config", TAB, f"out={out}", *SMALL, "tabular.problems=3", "plot=true", "wandb=false"]
        )
        == 0
    )
    assert (out / "accuracy_latency.png").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("methods=[specs,nope]", "unknown method 'nope' in methods"),
        ("n_grid=[]", "n_grid must not be empty"),
        ("seeds=[1,1]", "seeds has duplicates"),
        ("n_grid=[0]", "n_grid values must be >= 1"),
        (
            "methods=[dvts] method_settings.dvts.beam_width=4",
            "method dvts: beam_width must divide n (n=2, beam_width=4)",
        ),
        # a shared key that a listed method pins to another value would be silently ignored for it: refused
        (
            "score_form=mean",
            "score_form='mean' is set for every method, but method specs pins score_form='exact'",
        ),
        (
            "beam_width=2",
            "beam_width=2 is set for every method, but method beam_search_target pins beam_width=4",
        ),
        ("methods=[gsi] tau_switch=0.5", "tau_switch=0.5 is set for every method, but method gsi pins"),
        ("method_settings.spec.beta=1", "method_settings.spec: spec is not a method preset"),
        ("tau_switch=nan", "tau_switch must be a number"),
        ("colour=red", "unknown config key 'colour'"),
        ("tabular.problems=0", "tabular.problems must be >= 1"),
        ("order=random", "order must be one of problem, method, got 'random'"),
    ],
)
def test_config_errors_write_nothing(tmp_path, capsys, override, message):
    out = tmp_path / "never"
    assert compare.main(["--config", TAB, f"out={out}", *SMALL, *override.split()]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ") and err.count("\n") == 1
    assert not out.exists()


def test_plan_runs_per_method_n_seed():
    runs = run.plan_runs(_tab_cfg("methods=[beam_search_target,specs,rsd]", "n_grid=[2,4]", "seeds=[1,2]"))
    assert [(r.method, r.n, r.seed) for r in runs] == [
        ("beam_search_target", 2, 1),
        ("beam_search_target", 2, 2),
        ("beam_search_target", 4, 1),
        ("beam_search_target", 4, 2),
        ("specs", 2, 1),
        ("specs", 2, 2),
        ("specs", 4, 1),
        ("specs", 4, 2),
        ("rsd", None, 1),
        ("rsd", None, 2),
    ]
    bs = [r.config for r in runs if r.method == "beam_search_target"]
    assert [(c.strategy, c.sampler, c.n, c.beam_width) for c in bs[::2]] == [
        ("beam_search", "target", 2, 2),  # one surviving beam: beam_width = n
        ("beam_search", "target", 4, 4),
    ]
    assert all(type(r.config) is SearchConfig for r in runs)
    assert run.problem_seed(42, "a") == run.problem_seed(42, "a") != run.problem_seed(43, "a")
    assert run.problem_seed(42, "a") != run.problem_seed(42, "b")


def test_problem_order_interleaves_runs_and_gives_the_same_records(tmp_path):
    """order=problem: every run searches problem i before any run searches problem i+1 (a slow spell of a shared
    machine hits every method alike); the records are those of order=method (seeds are per problem), and a run
    started in one order resumes in the other."""
    by_method, by_problem = tmp_path / "method", tmp_path / "problem"
    args = ["--config", TAB, *SMALL, *QUIET, "tabular.problems=4", "seeds=[42]", "n_grid=[2]"]
    assert compare.main([*args, f"out={by_method}", "order=method"]) == 0
    assert compare.main([*args, f"out={by_problem}"]) == 0  # order=problem is the default
    first = [json.loads(x) for x in _lines(by_method / "results.jsonl")]
    second = [json.loads(x) for x in _lines(by_problem / "results.jsonl")]
    planned = [r.key[0] for r in run.plan_runs(_tab_cfg("tabular.problems=4", "seeds=[42]", "n_grid=[2]"))]
    runs = len(planned)
    assert [r["id"] for r in second] == [p for p in ("0", "1", "2", "3") for _ in range(runs)]
    assert [r["id"] for r in first][:4] == ["0", "1", "2", "3"]
    # the method order rotates from problem to problem: problem b starts with planned run b (mod the count)
    for b in range(4):
        assert [r["method"] for r in second[b * runs : (b + 1) * runs]] == planned[b:] + planned[:b]

    def strip(r: dict) -> dict:
        return {k: v for k, v in r.items() if k != "latency_s"}  # the tabular clock is simulated, but be safe

    assert {_key(r): strip(r) for r in first} == {_key(r): strip(r) for r in second}
    summary = json.loads((by_problem / "summary.json").read_text())
    ref = next(a for a in summary["aggregate"] if a["method"] == "beam_search_target")
    for a in summary["aggregate"]:
        if a["n"] is not None:
            assert a["latency_p50_vs_beam_search_target"] == pytest.approx(
                a["latency_p50_s"] / ref["latency_p50_s"]
            )
    # order is how the grid is walked, not what it computes: the other order resumes this directory
    lines = _lines(by_problem / "results.jsonl")
    (by_problem / "results.jsonl").write_text("\n".join(lines[:5]) + "\n")
    assert compare.main([*args, f"out={by_problem}", "order=method"]) == 0
    resumed = [json.loads(x) for x in _lines(by_problem / "results.jsonl")]
    assert {_key(r): strip(r) for r in resumed} == {_key(r): strip(r) for r in first}


def test_warm_up_searches_each_method_once_unrecorded(count_searches):
    cfg = _tab_cfg("tabular.problems=3")
    task = run.build_task(cfg.run)
    runs = run.plan_runs(cfg)
    run.warm_up(task, runs, 2)
    assert count_searches == ["0", "1"] * len(cfg.grid.methods)  # the first 2 problems, once per method
    count_searches.clear()
    run.warm_up(task, runs, 0)
    assert count_searches == []


def test_progress_bar_and_pareto(tmp_path, capsys):
    """The grid's progress is a tqdm bar on stderr (plain ASCII in a log), silent with progress=false."""
    out = tmp_path / "bar"
    args = ["--config", TAB, *SMALL, "wandb=false", "plot=false", "tabular.problems=3", "seeds=[42]"]
    assert compare.main([*args, f"out={out}"]) == 0
    err = capsys.readouterr().err
    total = len(run.plan_runs(_tab_cfg("tabular.problems=3", "seeds=[42]"))) * 3
    assert f"{total}/{total}" in err and "100%" in err and "problem/s" in err
    assert compare.main([*args, f"out={tmp_path / 'quiet'}", "progress=false"]) == 0
    assert capsys.readouterr().err == ""
    assert run.pareto_front([(1, 0.5), (1, 0.7), (2, 0.7), (3, 0.9)]) == [1, 3]
    assert doctest.testmod(report).failed == 0


def test_random_switch_ablation_runs_at_the_target_fraction_specs_measured(tmp_path, capsys):
    """docs/algorithm.md §4: the random-switch ablation runs at SPECS' measured target-step fraction for the same n,
    seed and problems (compare runs SPECS first and passes the fraction on), not at a fixed 0.5."""
    out = tmp_path / "switch"
    args = ["--config", TAB, *QUIET, "tabular.problems=60", "methods=[specs_random_switch,specs]"]
    assert compare.main([*args, "n_grid=[2,4]", "seeds=[1,2]", f"out={out}"]) == 0
    records = [json.loads(x) for x in _lines(out / "results.jsonl")]
    fractions = []
    for n in (2, 4):
        for seed in (1, 2):
            mine = [r for r in records if (r["n"], r["seed"]) == (n, seed)]
            spec = [r for r in mine if r["method"] == "specs"]
            ablation = [r for r in mine if r["method"] == "specs_random_switch"]
            steps = [s for r in spec for s in r["steps"]]
            fraction = sum(s["source"] == "target" for s in steps) / len(steps)
            assert 0.05 < fraction < 0.95
            fractions.append(fraction)
            assert {r["random_switch"] for r in ablation} == {fraction}
            got = [s["source"] == "target" for r in ablation for s in r["steps"]]
            assert (
                abs(sum(got) / len(got) - fraction)
                < 4 * math.sqrt(fraction * (1 - fraction) / len(got)) + 0.02
            )
    # it needs SPECS in the same run
    assert (
        compare.main(["--config", TAB, *QUIET, "methods=[specs_random_switch]", f"out={tmp_path / 'x'}"]) == 2
    )
    assert "add specs to methods" in capsys.readouterr().err


def _tiny_hf_checks(out: Path, methods: list[str], seeds: list[int]) -> dict:
    records = [json.loads(x) for x in _lines(out / "results.jsonl")]
    n_runs = len(methods) * len(seeds)  # n_grid is [2]: one run per method and seed
    assert len(records) == 5 * n_runs and len({_key(r) for r in records}) == len(records)
    ids = [json.loads(x)["unique_id"] for x in (DATA / "math500_test.jsonl").open()][:5]
    assert {r["id"] for r in records} == set(ids)
    assert all(r["grader"] == {"name": "math-verify", "version": "0.9.0"} for r in records)
    assert all(r["correct"] is False and "gold" in r and "pred" in r for r in records)  # random models
    assert all(r["draft_step_fraction"] == 1.0 for r in records if r["method"] == "draft_only")
    assert all(r["tokens"]["draft"] == 0 for r in records if r["method"] == "beam_search_target")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["grader"] == {"name": "math-verify", "version": "0.9.0"} and summary["complete"]
    assert summary["task"] == "hf:math500" and summary["problems_in_slice"] == 5
    for row in summary["rows"]:
        assert row["accuracy"] == 0.0 and row["accuracy_ci"][0] == 0.0 and 0.4 < row["accuracy_ci"][1] < 0.45
        assert row["latency_mean_s"] > 0 and row["latency_p50_s"] <= row["latency_p90_s"]
    assert summary["plot"]["points"] == len(methods)
    _png_size(out / "accuracy_latency.png")
    (run_dir,) = find_offline_runs(out)
    wb = read_offline_run(run_dir)
    for a in summary["aggregate"]:
        base = f"{a['method']}/n{a['n'] if a['n'] is not None else '-'}"
        assert wb["summary"][f"{base}/latency_mean_s"] == pytest.approx(a["latency_mean_s"])
        assert wb["summary"][f"{base}/accuracy"] == 0.0
    return summary


def test_end_to_end_tiny_hf_models_on_5_math500_problems(tmp_path, monkeypatch, count_searches, capsys):
    """The tiny config (random HF models, Math-Verify grading), cut to one seed and three methods for time."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "tiny"
    args = [
        "--config",
        TINY,
        f"out={out}",
        "seeds=[42]",
        "methods=[specs_paper,beam_search_target,draft_only]",
    ]
    assert compare.main([*args, "warmup=0"]) == 0  # warm-up: tested on the tabular backend below
    assert len(count_searches) == 15  # 3 methods x 5 problems
    _tiny_hf_checks(out, ["specs_paper", "beam_search_target", "draft_only"], [42])
    assert "specs" in capsys.readouterr().out
    count_searches.clear()
    assert compare.main([*args, "wandb=false"]) == 0  # resumed (warmup may differ): nothing to search
    assert count_searches == []


def test_hf_input_errors_come_before_any_file(tmp_path, capsys):
    out = tmp_path / "never"
    for override, message in (
        (f"data.path={tmp_path / 'missing.jsonl'}", "dataset file not found"),
        (f"hf.target.name={tmp_path / 'no-such-model'}", "hf.target"),
        ("data.shard=5/2", "shard must look like i/k"),
    ):
        assert compare.main(["--config", TINY, f"out={out}", override]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not out.exists()


@pytest.mark.slow
def test_the_tiny_config_as_written(tmp_path, monkeypatch):
    """``specs-rl compare --config configs/eval/tiny.yaml`` exactly as the YAML says (about a minute here)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = load_config(run.CompareConfig, TINY)
    assert compare.main(["--config", TINY, f"out={tmp_path / 'tiny'}"]) == 0
    _tiny_hf_checks(tmp_path / "tiny", cfg.grid.methods, cfg.grid.seeds)


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "eval").glob("*.yaml")), ids=lambda p: p.name)
def test_every_eval_config_loads_and_plans(path):
    text = path.read_text()
    assert text.startswith(f"# specs-rl compare --config configs/eval/{path.name}")
    cfg = load_config(run.CompareConfig, path)
    runs = run.plan_runs(cfg)  # every (method, n, seed) valid
    assert len(runs) >= len(cfg.grid.methods) * len(cfg.grid.seeds)
    # the paper's settings (docs/algorithm.md §6), run by the authors' form
    if path.name.endswith("_qwen25.yaml"):
        assert cfg.grid.n_grid == [4, 8, 16] and cfg.grid.seeds == [42, 43, 45]
        paper = {r.method: r.config for r in runs if (r.n, r.seed) == (4, 42)}
        spec = paper["specs_paper"]  # pinned: the authors' code form
        assert (spec.score_form, spec.start_mode, spec.target_select) == ("mean", "target", "argmax")
        assert spec.tau_switch == 0.7 and 5 <= spec.tau_reject <= 7 and spec.beta in (1.0, 10.0)
        assert 0.2 <= spec.temperature <= 0.3
        # the paper's ablations are of that form, at its settings, each with its one change
        for name, change in (
            ("specs_paper_no_target", {"score_form": "reward_only"}),
            ("specs_paper_no_deferral", {"tau_reject": -math.inf}),
            ("specs_paper_random_switch", {"random_switch": 0.5}),
        ):
            assert paper[name] == dataclasses.replace(spec, **change), name
        assert "specs" not in cfg.grid.methods  # this project's exact form is not the paper's
        assert paper["dvts"].beam_width == 4 and paper["beam_search_target"].beam_width == 4
        assert (
            10 <= cfg.run.search.max_steps <= 30
            and 512 <= cfg.run.hf.max_step_tokens <= 2048
            and cfg.run.batch_size == 1
        )
        assert (
            cfg.grid.order == "problem" and "order: problem" in text
        )  # comparable latency, said in the file
        assert cfg.run.hf.draft.name == "Qwen/Qwen2.5-Math-1.5B-Instruct"
        assert cfg.run.hf.target.name == "Qwen/Qwen2.5-Math-7B-Instruct"
        assert (
            cfg.run.hf.system_prompt
            == "Please reason step by step, and put your final answer within \\boxed{}."
        )


def test_each_method_may_run_at_its_own_settings(tmp_path, capsys):
    """method_settings gives a method its own thresholds and beta; they apply to that method only, are recorded,
    and a key set both for every method and for one method, a key its preset pins, or a shared key set to another
    value than a listed method pins, is refused in one line."""
    base = ["--config", TAB, *QUIET, "tabular.problems=3", "seeds=[42]", "n_grid=[4]", "methods=[specs,rsd]"]
    out = tmp_path / "own"
    own = ["method_settings.specs.target_select=soft", "method_settings.specs.bon_vote=majority"]
    own += ["method_settings.rsd.rsd_delta=0.4"]
    assert compare.main([*base, *own, f"out={out}"]) == 0
    cfg = load_config(run.CompareConfig, TAB, [*base[2:], *own])
    runs = {r.method: r for r in run.plan_runs(cfg)}
    assert runs["specs"].config.target_select == "soft" and runs["rsd"].config.target_select == "argmax"
    assert (
        runs["rsd"].config.rsd_delta == 0.4
        and runs["specs"].config.rsd_delta == cfg.run.search.rsd_delta == 0.7
    )
    records = [json.loads(x) for x in _lines(out / "results.jsonl")]
    from_file = {"tau_reject": -2.0, "tau_switch": 0.6, "start_mode": "target"}  # the config's own settings
    assert all(
        r["settings"] == {**from_file, "target_select": "soft", "bon_vote": "majority"}
        for r in records
        if r["method"] == "specs"
    )
    assert all(r["settings"] == {"rsd_delta": 0.4} for r in records if r["method"] == "rsd")
    # the file's settings of methods the command line left out (gsi, dvts, ...) are not used
    assert {r["method"] for r in records} == {"specs", "rsd"} and "gsi" in cfg.grid.method_settings
    for bad, message in (
        (["method_settings.specs.beta=5.0"], "beta is set for every method (beta=2.0) and for specs"),
        (["method_settings.dvtz.bon_vote=naive"], "method_settings.dvtz: dvtz is not a method preset"),
        (
            ["temperature=0.3"],
            "temperature=0.3 is set for every method, but method specs pins temperature=1.0",
        ),
        (
            ["methods=[gsi]", "method_settings.gsi.acceptance=filter"],
            "method gsi pins acceptance='select_test'",
        ),
        (
            ["methods=[best_of_n]", "method_settings.best_of_n.bon_vote=naive"],
            "method best_of_n pins bon_vote='weighted'",
        ),
        (["method_settings.specs.colour=1"], "unknown key 'method_settings.specs.colour'"),
        (["method_settings.specs.n=8"], "n is not a per-method setting"),
        (["method_settings.specs.rsd_delta=abc"], "method_settings.specs.rsd_delta must be a number"),
    ):
        never = tmp_path / "never"
        assert compare.main([*base, *bad, f"out={never}"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not never.exists()


PEERS = str(REPO / "configs" / "eval" / "peers_toymath.yaml")  # the peers' head-to-head


def test_the_peers_config_plans_the_head_to_head_and_runs_on_a_tiny_world(tmp_path):
    """configs/eval/peers_toymath.yaml as written plans the head-to-head (toy-math test split, n = 4 and 8, three
    seeds, every method at its own settings); the same config on a tabular world runs every method in seconds."""
    cfg = load_config(run.CompareConfig, PEERS)
    assert (cfg.run.data.dataset, cfg.run.data.split, cfg.grid.n_grid, len(cfg.grid.seeds)) == (
        "toymath",
        "test",
        [4, 8],
        3,
    )
    assert set(cfg.grid.methods) == {
        *("specs", "specs_paper", "gsi", "rsd", "rsd_bon", "specreason"),
        *("beam_search_target", "beam_search_draft", "best_of_n", "target_only", "target_sd"),
    }
    runs = run.plan_runs(cfg)
    assert len(runs) == (7 * 2 + 4) * 3  # rsd, specreason, target_only and target_sd do not depend on n
    # every method that has thresholds or a beta runs at its own settings, nothing of them is shared
    assert set(cfg.grid.method_settings) == {"specs", "specs_paper", "gsi", "rsd", "rsd_bon", "specreason"}
    assert not given_keys(cfg, "run.search") & {
        "beta",
        "temperature",
        "tau_reject",
        "tau_switch",
        "rsd_delta",
        "start_mode",
        "judge",
        "judge_threshold",
    }
    by = {r.method: r.config for r in runs if (r.n, r.seed) in ((4, 0), (None, 0))}
    assert (by["gsi"].acceptance, by["gsi"].tau_switch, by["gsi"].score_form) == (
        "select_test",
        -math.inf,
        "exact",
    )
    assert (by["specs_paper"].score_form, by["specs_paper"].start_mode) == ("mean", "target")
    assert (by["rsd_bon"].accept_test, by["specs"].acceptance) == ("reward", "filter")
    assert (by["specreason"].strategy, by["specreason"].judge) == ("specreason", "prm")

    out = tmp_path / "peers"
    # target_sd speculates token by token: a tabular world has no tokens (refused there), so it is left out
    step_level = [m for m in cfg.grid.methods if m != "target_sd"]
    tiny = ["backend=tabular", "tabular.problems=3", "seeds=[0]", *QUIET, f"out={out}"]
    assert compare.main(["--config", PEERS, *tiny, f"methods=[{','.join(step_level)}]"]) == 0
    records = [json.loads(x) for x in _lines(out / "results.jsonl")]
    assert len(records) == (7 * 2 + 3) * 3
    for r in records:
        assert r.get("settings", {}) == cfg.grid.method_settings.get(r["method"], {})
    assert {r["strategy"] for r in records if r["method"] in ("gsi", "rsd_bon", "specs_paper")} == {"specs"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and {a["method"] for a in summary["aggregate"]} == set(step_level)


def test_method_n_runs_a_method_at_its_own_n():
    """method_n: the short demo's SPECS at its tuned n = 8 beside beam search at n_grid's n = 4; n-free methods and
    bad values are refused in one line."""
    runs = run.plan_runs(
        _tab_cfg(
            "methods=[specs,beam_search_target,target_only]",
            "n_grid=[4]",
            "method_n.specs=[8]",
            "seeds=[0,1]",
        )
    )
    assert [(r.method, r.n, r.seed) for r in runs] == [
        ("specs", 8, 0),
        ("specs", 8, 1),
        ("beam_search_target", 4, 0),
        ("beam_search_target", 4, 1),
        ("target_only", None, 0),
        ("target_only", None, 1),
    ]
    assert [r.config.n for r in runs[:3]] == [8, 8, 4] and runs[2].config.beam_width == 4
    for override, message in [
        ("method_n.target_only=[4]", "method_n.target_only: target_only does not depend on n"),
        ("method_n.spec=[4]", "method_n.spec: spec is not a method preset"),
        ("method_n.specs=[0]", "method_n.specs must be distinct values >= 1, got [0]"),
        ("method_n.specs=[8,8]", "method_n.specs must be distinct values >= 1"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            _tab_cfg(override)
