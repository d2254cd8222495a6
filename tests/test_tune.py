"""``specs-rl tune``: a tiny tabular study end to end (front, choice, chosen.yaml, the test re-run, W&B), early
stopping that really stops trials, the choice rules on a hand-made front, resumption after a real SIGKILL with no
trial lost or run twice, and bad search spaces refused with one line before anything is written."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

pytest.importorskip("optuna")

import eval.tune as tune_cmd  # noqa: E402
import specs_rl.run.grid as grid  # noqa: E402
from specs_rl.config import ConfigError, load_config  # noqa: E402
from specs_rl.methods import METHOD_PRESETS  # noqa: E402
from specs_rl.run import CompareConfig, plan_runs, read_results  # noqa: E402
from specs_rl.run.tune import (  # noqa: E402
    ChoiceRule,
    TuneConfig,
    check_test_ids,
    check_test_set,
    choose,
    front,
    plan_study,
    retest_configs,
    trial_run,
    trial_seed,
)
from specs_rl.run.tune.trials import TaskCache, TrialRunner, beaten_by  # noqa: E402
from specs_rl.tracking import find_offline_runs, read_offline_run  # noqa: E402

from .conftest import REPO  # noqa: E402

TUNE_TAB = str(REPO / "configs" / "tune" / "tabular.yaml")
# 12 trees; rungs at 4 problems; 5 trials per method (beam search: its grid of 3)
SMALL = ["tabular.problems=12", "tune.rungs=[4]", "tune.trials=5", "tune.method_trials={}"]
QUIET = ["wandb=false", "plot=false", "progress=false"]


@pytest.fixture
def fast_dir(tmp_path):
    """A directory in memory when there is one: the study's SQLite commits and the records' fsyncs cost ~12 ms each
    on this shared disk, 30x more than the searches of a tabular trial."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        d = shm / f"specs-tune-{os.getpid()}-{time.monotonic_ns()}"
        d.mkdir()
        yield d
        shutil.rmtree(d, ignore_errors=True)
    else:
        yield tmp_path


@pytest.fixture
def count_searches(monkeypatch):
    """Every problem searched (one call per problem at batch size 1), as (method, seed, problem id)."""
    seen: list[tuple] = []
    real = grid.run_search

    def counting(problems, config, parts, generator):
        seen.extend((config.strategy, p.id) for p in problems)
        return real(problems, config, parts, generator)

    monkeypatch.setattr(grid, "run_search", counting)
    return seen


def _cfg(*overrides: str) -> TuneConfig:
    return load_config(TuneConfig, TUNE_TAB, [*SMALL, *overrides])


def _summary(out: Path) -> dict:
    return json.loads((out / "tune.json").read_text())


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# ------------------------------------------------------------------------------------------------------------------
# End to end


def test_tiny_tabular_study_end_to_end(fast_dir, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = fast_dir / "study"
    # 12 problems: SPECS' trials spread far; a 20-point floor makes the choice land on a real trade-off
    args = ["--config", TUNE_TAB, f"out={out}", *SMALL, "progress=false", "tune.choose.points=20"]
    args += ["tune.method_trials={rsd: 3}"]
    assert tune_cmd.main(args) == 0
    s = _summary(out)
    trials = s["trials"]
    by_method = Counter(t["method"] for t in trials)
    assert by_method == {"specs": 5, "beam_search_target": 3, "rsd": 3}
    assert {t["state"] for t in trials} <= {"COMPLETE", "PRUNED"}
    bs = sorted(t["params"]["n"] for t in trials if t["method"] == "beam_search_target")
    assert bs == [2, 4, 8]  # an all-choices space runs as a grid: every point once
    for t in trials:  # each trial's seed comes from (study seed, method, its number), and its records say so
        assert t["seed"] == trial_seed(0, t["method"], t["number"])
        recs = read_results(out / "trials" / t["method"] / str(t["root"]) / "results.jsonl")
        assert {r["seed"] for r in recs} == {t["seed"]}
        assert len(recs) == t["rungs"][-1]["problems"] == (12 if t["state"] == "COMPLETE" else 4)
    # the reference and baselines, measured once on the tune set
    base = read_results(out / "baselines" / "results.jsonl")
    assert Counter(r["method"] for r in base) == {
        "beam_search_target": 12,
        "target_only": 12,
        "draft_only": 12,
    }
    ref = s["reference"]
    assert ref["accuracy"] == pytest.approx(
        sum(r["correct"] for r in base if r["method"] == "beam_search_target") / 12
    )
    # the choice: the rule applied to the completed trials, a point of the front
    rule = ChoiceRule("min_latency_within", points=20.0)
    for method, c in s["choices"].items():
        done = [t for t in trials if t["method"] == method and t["state"] == "COMPLETE"]
        best, _ = choose(done, rule, ref["accuracy"])
        assert (c["chosen"] or {}).get("number") == (best or {}).get("number")
        assert c["front"] == [t["number"] for t in front(done)]
        if best is not None:
            assert best["number"] in c["front"]
    chosen = s["choices"]["specs"]["chosen"]
    assert chosen is not None and chosen["accuracy"] >= ref["accuracy"] - 0.20 - 1e-9

    # chosen.yaml: a compare config of the held-out trees with the choice as SPECS' own settings
    text = (out / "chosen.yaml").read_text()
    assert text.startswith(f"# specs-rl compare --config {out / 'chosen.yaml'}")
    ccfg = load_config(CompareConfig, out / "chosen.yaml")
    assert ccfg.run.tabular.tree_seed == 1000 and ccfg.run.tabular.problems == 12 and ccfg.grid.seeds == [0]
    own = {k: v for k, v in chosen["params"].items() if k != "n"}
    assert ccfg.grid.method_settings["specs"] == pytest.approx(own)
    assert chosen["params"]["n"] in ccfg.grid.n_grid and 4 in ccfg.grid.n_grid  # the reference's n
    assert {"specs", "beam_search_target", "target_only", "draft_only"} <= set(ccfg.grid.methods)
    plan_runs(ccfg)
    # the test re-run: a fresh compare run in out/test, its figures in tune.json and printed
    agg = json.loads((out / "test" / "summary.json").read_text())["aggregate"]
    row = next(a for a in agg if a["method"] == "specs" and a["n"] == chosen["params"]["n"])
    point = next(p for p in s["test_points"] if p["method"] == "specs" and p["kind"] == "chosen")
    assert point["accuracy"] == row["accuracy"] and point["latency_s"] == row["latency_mean_s"]
    printed = capsys.readouterr().out
    assert f"chosen specs: trial {chosen['number']}" in printed and "| test accuracy" in printed
    assert "fronts on the tune set (12 problems)" in printed
    # the plot and the W&B run (trials, front, choice)
    assert (out / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert s["plot"]["trials"] == sum(t["state"] == "COMPLETE" for t in trials)
    (run_dir,) = find_offline_runs(out / "wandb")
    wb = read_offline_run(run_dir)
    assert wb["summary"]["choice/specs/number"] == chosen["number"]
    assert wb["summary"]["choice/specs/latency_s"] == pytest.approx(chosen["latency_s"])
    (hist,) = wb["history"]
    assert hist["trials/nrows"] == len(trials) and hist["front/nrows"] >= 1
    assert hist["accuracy_latency/_type"] == "image-file"
    assert wb["config"]["tune"]["choose"]["rule"] == "min_latency_within"


def test_a_tuned_backend_key_builds_its_task_and_reaches_chosen_yaml(fast_dir):
    out = fast_dir / "backend-key"
    overrides = [
        "tune.methods={specs: {n: {choices: [2, 4]}, tabular.draft_noise: {choices: [0.5, 2.0]}}}",
        "tune.baselines=[]",
        "tune.choose.points=100",  # anything within 100 points: the fastest trial is chosen
    ]
    assert tune_cmd.main(["--config", TUNE_TAB, f"out={out}", *SMALL, *QUIET, *overrides]) == 0
    s = _summary(out)
    assert len(s["trials"]) == 4  # the grid of 2 x 2
    chosen = s["choices"]["specs"]["chosen"]
    ccfg = load_config(CompareConfig, out / "chosen.yaml")
    assert ccfg.run.tabular.draft_noise == chosen["params"]["tabular.draft_noise"]
    assert "draft_noise" not in ccfg.grid.method_settings.get("specs", {})
    # a draft twice as noisy is another world: the trials with it differ from those without
    by_noise = {}
    for t in s["trials"]:
        by_noise.setdefault(t["params"]["tabular.draft_noise"], []).append(t["rungs"][-1]["accuracy"])
    assert set(by_noise) == {0.5, 2.0}


def test_start_points_are_tried_first(fast_dir):
    out = fast_dir / "start"
    hand = {"n": 4, "beta": 2.0, "tau_reject": -2.0, "tau_switch": 0.6}
    more = [f"tune.start={{specs: [{json.dumps(hand)}]}}", "tune.baselines=[]", "tune.test.run=false"]
    more += ["tune.methods={specs: {n: {choices: [2, 4]}, beta: {low: 0.5, high: 30.0, log: true}, "
             "tau_reject: {low: -6.0, high: 2.0}, tau_switch: {low: 0.3, high: 0.95}}}", "tune.trials=2"]  # fmt: skip
    assert tune_cmd.main(["--config", TUNE_TAB, f"out={out}", *SMALL, *QUIET, *more]) in (0, 3)
    trials = _summary(out)["trials"]
    assert len(trials) == 2 and trials[0]["params"] == hand and trials[1]["params"] != hand


# The peer methods tuned together, each over its own settings: the tabular study without its shared
# score_form/start_mode (specs_paper pins the mean form and the target start, gsi the draft start)
PEERS = {
    "gsi": {"beta": {"low": 1.0, "high": 30.0, "log": True}, "tau_reject": {"low": -2.0, "high": 6.0}},
    "specs_paper": {
        "beta": {"choices": [1.0, 10.0]},
        "temperature": {"choices": [0.2, 0.3]},
        "tau_reject": {"low": 0.0, "high": 8.0},
        "tau_switch": {"low": 0.5, "high": 0.95},
    },
    "rsd_bon": {"beta": {"low": 1.0, "high": 30.0, "log": True}, "rsd_delta": {"low": 0.3, "high": 0.95}},
}


def _peers_yaml(tmp: Path) -> Path:
    d = yaml.safe_load(Path(TUNE_TAB).read_text())
    for k in ("score_form", "start_mode"):
        del d[k]
    d["tune"].update(methods=PEERS, method_trials={m: 3 for m in PEERS}, baselines=[])
    path = tmp / "peers_tabular.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def test_peer_presets_tuned_together_reach_chosen_yaml_as_method_settings(fast_dir):
    """gsi, specs_paper and rsd_bon each tuned over its own keys with the same budget; the test re-run and
    chosen.yaml carry each choice as method_settings.<method>, which pasted into configs/eval/peers_toymath.yaml
    makes a valid compare config; each preset's pinned values hold in every trial."""
    out, path = fast_dir / "peers", _peers_yaml(fast_dir)
    args = ["--config", str(path), f"out={out}", *SMALL, *QUIET]
    assert tune_cmd.main([*args, "tune.method_trials={gsi: 3, specs_paper: 3, rsd_bon: 3}"]) == 0
    s = _summary(out)
    assert Counter(t["method"] for t in s["trials"]) == {"gsi": 3, "specs_paper": 3, "rsd_bon": 3}
    for t in s["trials"]:
        assert sorted(t["params"]) == sorted(PEERS[t["method"]])  # each method over its own keys, no more
    cfg = load_config(TuneConfig, path, SMALL)
    for t in s["trials"]:  # the preset's pinned values hold whatever the tuned ones are
        run, _ = trial_run(cfg, t["method"], t["params"], t["seed"])
        pinned = METHOD_PRESETS[t["method"]]
        assert {k: getattr(run.config, k) for k in pinned} == pinned
        assert run.settings == t["params"]
    # chosen.yaml: each chosen method's own settings, as a compare config takes them
    chosen = {m: c["chosen"] for m, c in s["choices"].items() if c["chosen"] is not None}
    assert "gsi" in chosen  # the first method: the test re-run ran
    ccfg = load_config(CompareConfig, out / "chosen.yaml")
    assert set(ccfg.grid.method_settings) == set(chosen) and ccfg.grid.n_grid == [4]
    for m, c in chosen.items():
        assert ccfg.grid.method_settings[m] == pytest.approx(c["params"])
    runs = {r.method: r.config for r in plan_runs(ccfg)}
    assert runs["specs_paper"].score_form == "mean" and runs["gsi"].start_mode == "draft"
    agg = json.loads((out / "test" / "summary.json").read_text())["aggregate"]
    assert {a["method"] for a in agg} == {*chosen, "beam_search_target"}
    # pasted into the peers compare config (the toy-math world), they are its methods' own settings
    peers = load_config(
        CompareConfig,
        REPO / "configs" / "eval" / "peers_toymath.yaml",
        [f"method_settings={json.dumps(ccfg.grid.method_settings)}"],
    )
    planned = {r.method: r for r in plan_runs(peers)}
    for m, own in ccfg.grid.method_settings.items():
        assert planned[m].settings == own


def test_methods_without_a_choice_are_named_in_chosen_yaml(fast_dir):
    """A method none of whose trials meets the rule is left out of chosen.yaml's method_settings and named in its
    header with its closest trial; the other methods' choices are written even when the first method has none
    (exit 3, nothing re-tested)."""
    out = fast_dir / "unchosen"
    budget = "tune.choose={rule: max_accuracy_under_latency, latency_s: 0.1}"  # simulated s: rsd_bon ~0.05, gsi ~0.2
    args = ["--config", str(_peers_yaml(fast_dir)), f"out={out}", *SMALL, *QUIET, budget]
    args += [
        "tune.methods={gsi: {tau_reject: {low: 6.0, high: 8.0}}, rsd_bon: {rsd_delta: {low: 0.0, high: 0.1}}}"
    ]
    args += ["tune.method_trials={gsi: 2, rsd_bon: 2}"]
    assert tune_cmd.main(args) == tune_cmd.NO_CHOICE
    s = _summary(out)
    assert s["choices"]["gsi"]["chosen"] is None and s["choices"]["rsd_bon"]["chosen"] is not None
    text = (out / "chosen.yaml").read_text()
    closest = s["choices"]["gsi"]["closest"]["number"]
    assert f"# no gsi trial meets the rule; the closest is trial {closest}" in text.splitlines()[2]
    ccfg = load_config(CompareConfig, out / "chosen.yaml")
    assert set(ccfg.grid.method_settings) == {"rsd_bon"} and "gsi" not in ccfg.grid.methods
    assert not (out / "test").exists()


# ------------------------------------------------------------------------------------------------------------------
# Early stopping


def test_early_stopping_stops_trials(fast_dir, count_searches):
    out = fast_dir / "pruned"
    more = ["tune.methods={specs: {n: {choices: [2, 4]}, tau_reject: {low: -6.0, high: 2.0}}}"]
    more += ["tune.trials=8", "tune.baselines=[]", "tune.test.run=false", "tune.sampler=random"]
    assert tune_cmd.main(["--config", TUNE_TAB, f"out={out}", *SMALL, *QUIET, *more]) == 0
    trials = _summary(out)["trials"]
    stopped = [t for t in trials if t["state"] == "PRUNED"]
    assert stopped, "no trial was stopped"
    for t in stopped:  # a stopped trial searched the rung's 4 problems, not 12, and was beaten there
        recs = read_results(out / "trials" / "specs" / str(t["root"]) / "results.jsonl")
        assert len(recs) == 4 == t["rungs"][-1]["problems"] and t["stopped_at_rung"] == 0
        by = next(u for u in trials if u["number"] == t["stopped_by"])
        assert by["number"] < t["number"] and beaten_by(t["rungs"][0], [by["rungs"][0]], 0.0, 0.1) is not None
    for t in trials:
        if t["state"] == "COMPLETE":
            assert t["problems"] == 12
    # what was searched is exactly what the trials' records hold (+ the reference): a stopped trial stops searching
    searched = sum(len(t["rungs"]) and t["rungs"][-1]["problems"] for t in trials) + 12
    assert len(count_searches) == searched < 12 * len(trials) + 12


def test_no_rungs_no_stopping(fast_dir):
    out = fast_dir / "full"
    more = ["tune.rungs=[]", "tune.methods={specs: {tau_reject: {low: -6.0, high: 2.0}}}", "tune.trials=4"]
    more += ["tune.baselines=[]", "tune.test.run=false"]
    assert tune_cmd.main(["--config", TUNE_TAB, f"out={out}", *SMALL, *QUIET, *more]) in (0, 3)
    trials = _summary(out)["trials"]
    assert [t["state"] for t in trials] == ["COMPLETE"] * 4 and all(t["problems"] == 12 for t in trials)


def test_beaten_by_margins():
    t = {"accuracy": 0.8, "latency_s": 1.0}
    assert (
        beaten_by(t, [{"accuracy": 0.8, "latency_s": 0.85}], 0, 0.1) is not None
    )  # > 10% faster, as accurate
    assert beaten_by(t, [{"accuracy": 0.8, "latency_s": 0.95}], 0, 0.1) is None  # within the latency margin
    assert beaten_by(t, [{"accuracy": 0.75, "latency_s": 0.1}], 0, 0.1) is None  # faster but less accurate
    assert beaten_by(t, [{"accuracy": 0.9, "latency_s": 1.0}], 5, 0.1) is not None  # 10 points, no slower
    assert beaten_by(t, [{"accuracy": 0.84, "latency_s": 1.0}], 5, 0.1) is None  # within the accuracy margin
    assert beaten_by(t, [{"accuracy": 0.9, "latency_s": 1.01}], 0, 0.1) is None  # more accurate but slower
    assert beaten_by(t, [dict(t)], 0, 0) is None  # a tie beats nothing


# ------------------------------------------------------------------------------------------------------------------
# Choosing


FRONT = [  # a hand-made study: (number, accuracy, latency)
    (0, 0.70, 0.10),
    (1, 0.80, 0.20),
    (2, 0.78, 0.25),  # dominated by 1
    (3, 0.90, 0.40),
    (4, 0.95, 0.80),
    (5, 0.95, 0.90),  # dominated by 4
    (6, 0.60, 0.15),  # dominated by 0
]
POINTS = [{"number": k, "accuracy": a, "latency_s": lat} for k, a, lat in FRONT]


def test_front_of_a_hand_made_study():
    assert [p["number"] for p in front(POINTS)] == [0, 1, 3, 4]


@pytest.mark.parametrize(
    "rule, ref, expected",
    [
        (ChoiceRule("max_accuracy_under_latency", latency_s=0.5), None, 3),
        (ChoiceRule("max_accuracy_under_latency", latency_s=0.2), None, 1),  # a bound is inclusive
        (ChoiceRule("max_accuracy_under_latency", latency_s=10.0), None, 4),  # a tie in accuracy: the faster
        (ChoiceRule("min_latency_within", points=1.0), 0.95, 4),
        (ChoiceRule("min_latency_within", points=5.0), 0.95, 3),  # 0.90 >= 0.95 - 0.05
        (ChoiceRule("min_latency_within", points=20.0), 0.95, 1),  # 0.80 >= 0.75; not 0, 6
        (ChoiceRule("min_latency_within", points=0.0), 0.80, 1),
    ],
)
def test_choice_rule_picks_the_right_point(rule, ref, expected):
    chosen, closest = choose(POINTS, rule, ref)
    assert chosen["number"] == expected and closest is None
    assert expected in [p["number"] for p in front(POINTS)]


def test_no_point_meets_the_rule_gives_the_closest():
    chosen, closest = choose(POINTS, ChoiceRule("max_accuracy_under_latency", latency_s=0.05))
    assert chosen is None and closest["number"] == 0  # the fastest
    chosen, closest = choose(POINTS, ChoiceRule("min_latency_within", points=1.0), 0.99)
    assert chosen is None and closest["number"] == 4  # the most accurate (then the faster of 4 and 5)


def test_a_budget_no_trial_meets_is_said_at_the_end(fast_dir, capsys):
    out = fast_dir / "budget"
    rule = ["tune.choose={rule: max_accuracy_under_latency, latency_s: 0.001}", "tune.baselines=[]"]
    rule += ["tune.methods={specs: {n: {choices: [2, 4]}}}"]
    code = tune_cmd.main(["--config", TUNE_TAB, f"out={out}", *SMALL, *QUIET, *rule])
    assert code == tune_cmd.NO_CHOICE == 3
    printed = capsys.readouterr().out
    done = [t for t in _summary(out)["trials"] if t["state"] == "COMPLETE"]
    fastest = min(done, key=lambda t: (t["latency_s"], t["number"]))
    assert f"no specs trial meets the rule; the closest is trial {fastest['number']}" in printed
    assert not (out / "chosen.yaml").exists() and not (out / "test").exists()


def test_retest_configs_group_by_backend_values():
    cfg = _cfg(
        "tune.methods={specs: {tabular.draft_noise: {choices: [0.5, 2.0]}}, rsd: {rsd_delta: {low: 0.3, high: 0.9}}}"
    )
    plan = plan_study(cfg)
    chosen = {
        "specs": ({"tabular.draft_noise": 2.0}, {}),
        "rsd": ({"rsd_delta": 0.5}, {"rsd_delta": 0.5}),
    }
    runs = retest_configs(cfg, plan, chosen)
    assert [(r["tuned"], r["fixed"]) for r in runs] == [
        (["specs"], ["beam_search_target", "target_only", "draft_only"]),
        (["rsd"], []),
    ]
    first, second = (r["config"] for r in runs)
    # SPECS with its draft, the reference and the baselines; RSD on the config's own draft in a run of its own
    assert first["methods"] == ["specs", "beam_search_target", "target_only", "draft_only"]
    assert first["tabular"]["draft_noise"] == 2.0 and first["tabular"]["tree_seed"] == 1000
    assert second["methods"] == ["rsd"] and second["tabular"]["draft_noise"] == 1.0
    assert second["method_settings"] == {"rsd": {"rsd_delta": 0.5}}
    assert first["out"].endswith("/test") and second["out"].endswith("/test-1")


def test_paired_trials_take_turns_with_the_reference(fast_dir):
    """On a wall clock a trial's problems alternate with the reference's; its latency is the ratio to the
    reference on the same problems times the reference's tune-set latency (run here on the simulated clock)."""
    cfg = _cfg()
    plan = plan_study(cfg)
    tasks = TaskCache(cfg, 2, 0)
    runner = TrialRunner(cfg, plan, fast_dir, tasks, paired=True, reference_latency=2.0)
    results = runner.run("rsd", {"rsd_delta": 0.5}, seed=7, root=0)
    recs = read_results(runner.records_path("rsd", 0))
    order = [(r["method"], r["id"]) for r in recs]
    assert order[:4] == [("rsd", "0"), ("beam_search_target", "0"), ("beam_search_target", "1"), ("rsd", "1")]
    assert len(recs) == 24 and [r["problems"] for r in results] == [4, 12]
    last = results[-1]
    mine = [r["latency_s"]["total"] for r in recs if r["method"] == "rsd"]
    ref = [r["latency_s"]["total"] for r in recs if r["method"] == "beam_search_target"]
    assert last["ratio"] == pytest.approx(sum(mine) / sum(ref))
    assert last["latency_s"] == pytest.approx(2.0 * last["ratio"]) and last["raw_latency_s"] == pytest.approx(
        sum(mine) / 12
    )
    run, _ = trial_run(cfg, "rsd", {"rsd_delta": 0.5}, 7)
    assert {r["seed"] for r in recs if r["method"] == "rsd"} == {7} and run.config.rsd_delta == 0.5


# ------------------------------------------------------------------------------------------------------------------
# The store: resume after a kill, the directory's identity


def _db_states(db: Path) -> list[tuple[int, int, str]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute("select study_id, number, state from trials order by trial_id").fetchall()
    finally:
        con.close()


def test_killed_study_resumes_without_loss(fast_dir, count_searches):
    """A real SIGKILL in the middle of a trial (searches slowed to 40 ms so it lands there): the rerun marks that
    trial failed, asks its parameters again (the retry keeps its seed and its records), keeps every finished trial
    and searches no problem twice."""
    out = fast_dir / "killed"
    args = ["--config", TUNE_TAB, f"out={out}", *SMALL, *QUIET, "tune.test.run=false", "tune.baselines=[]"]
    args += ["tune.heartbeat_s=1", "tune.grace_s=2", "tune.choose.points=100"]
    code = (
        "import sys, time, specs_rl.run.grid as g, eval.tune as t\n"
        "real = g.run_search\n"
        "def slow(*a, **k):\n    time.sleep(0.04)\n    return real(*a, **k)\n"
        "g.run_search = slow\n"
        "sys.exit(t.main(sys.argv[1:]))\n"
    )
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    db = out / "study.db"
    deadline, victim = time.monotonic() + 120, None
    while time.monotonic() < deadline and victim is None:
        assert proc.poll() is None, "the study ended before it could be killed"
        time.sleep(0.02)
        try:
            states = _db_states(db) if db.exists() else []
        except sqlite3.OperationalError:
            continue
        # a trial past its first rung (4 problems), after at least one trial finished (the first trial of each
        # method has nothing to be compared with at its rung, so it always gets there)
        if not any(state in ("COMPLETE", "PRUNED") for *_, state in states):
            continue
        for study_id, number, state in states:
            method = {1: "specs", 2: "beam_search_target", 3: "rsd"}[study_id]
            if (
                state == "RUNNING"
                and len(_lines(out / "trials" / method / str(number) / "results.jsonl")) >= 6
            ):
                victim = (method, number)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert victim is not None, "no trial was caught mid-run"
    method, number = victim
    records = {p: _lines(p) for p in (out / "trials").rglob("results.jsonl")}
    before = [(s, k, state) for s, k, state in _db_states(db)]
    assert ("RUNNING" in {state for *_, state in before}) and not (out / "tune.json").exists()

    count_searches.clear()
    assert tune_cmd.main(args) == 0
    s = _summary(out)
    trials = [t for t in s["trials"]]
    for m, want in (("specs", 5), ("beam_search_target", 3), ("rsd", 5)):
        mine = [t for t in trials if t["method"] == m]
        assert sorted(t["number"] for t in mine) == list(range(len(mine)))  # no number twice, none skipped
        assert sum(t["state"] in ("COMPLETE", "PRUNED") for t in mine) == want  # no trial lost
    failed = [t for t in trials if t["state"] == "FAIL"]
    assert [(t["method"], t["number"]) for t in failed] == [victim]
    (retry,) = [t for t in trials if t["retry_of"] == number and t["method"] == method]
    assert retry["state"] in ("COMPLETE", "PRUNED") and retry["root"] == number
    assert retry["params"] == failed[0]["params"] and retry["seed"] == failed[0]["seed"]
    # every trial finished before the kill is kept as it was
    finished = {(s_, k) for s_, k, state in before if state in ("COMPLETE", "PRUNED")}
    assert len(finished) >= 1
    # no problem searched twice: the rerun searched exactly what the records lacked, the retry resumed its root's
    after = {p: _lines(p) for p in (out / "trials").rglob("results.jsonl")}
    for p, lines in records.items():
        assert after[p][: len(lines)] == lines
    keys = [(p, json.loads(x)["id"]) for p, lines in after.items() for x in lines]
    assert len(keys) == len(set(keys))
    assert len(count_searches) == sum(len(v) for v in after.values()) - sum(len(v) for v in records.values())


def test_another_config_in_the_same_directory_is_refused(fast_dir, capsys):
    out = fast_dir / "dir"
    args = ["--config", TUNE_TAB, f"out={out}", *SMALL, *QUIET, "tune.test.run=false", "tune.baselines=[]"]
    args += ["tune.choose.points=100"]
    small = ["tune.methods={specs: {n: {choices: [2, 4]}}}"]
    assert tune_cmd.main([*args, *small]) == 0
    snapshot = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert tune_cmd.main([*args, "tune.methods={specs: {n: {choices: [2, 8]}}}"]) == 2
    err = capsys.readouterr().err
    assert "holds a run of a different config (differs in: tune.methods.specs.n.choices" in err
    assert err.count("\n") == 1
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == snapshot
    # more trials (a budget key) resume the same study
    assert (
        tune_cmd.main([*args, "tune.methods={specs: {n: {choices: [2, 4]}, beta: {low: 1, high: 5}}}"]) == 2
    )
    assert tune_cmd.main([*args, *small, "tune.trials=9"]) == 0  # a grid of 2: nothing more to run
    assert len(_summary(out)["trials"]) == 2
    assert tune_cmd.main([*args, *small, "tune.method_trials={specs: 1}", "progress=true"]) == 0


# ------------------------------------------------------------------------------------------------------------------
# Bad input: one line, before any trial, nothing written


BAD = [
    ("tune.methods={specs: {beta: {low: 3.0, high: 3.0}}}", "tune.methods.specs.beta: an empty range"),
    (
        "tune.methods={specs: {beta: {low: 5.0, high: 1.0}}}",
        "tune.methods.specs.beta: low 5.0 is above high 1.0",
    ),
    ("tune.methods={specs: {bta: {low: 1.0, high: 5.0}}}", "tune.methods.specs.bta: unknown parameter"),
    ("tune.methods={specs: {beta: {low: 0.0, high: 5.0, log: true}}}", "a log scale needs low > 0"),
    ("tune.methods={specs: {tau_reject: {low: -1.0, high: 5.0, log: true}}}", "a log scale needs low > 0"),
    ("tune.methods={specs: {beta: {choices: []}}}", "choices must be a non-empty list"),
    ("tune.methods={specs: {beta: {low: 1.0}}}", "a range needs low and high, missing high"),
    ("tune.methods={specs: {beta: {low: 1.0, high: 2.0, lo: 3}}}", "unknown key 'lo'"),
    ("tune.methods={specs: {n: {low: 1.5, high: 4}}}", "tune.methods.specs.n.low must be an integer"),
    (
        "tune.methods={specs: {beta: {low: -2.0, high: 5.0}}}",
        "beta=-2.0 is not a valid setting (method specs: beta must be >= 0",
    ),
    ("tune.methods={spex: {beta: {low: 1.0, high: 5.0}}}", "unknown method 'spex'"),
    (
        "tune.methods={beam_search_target: {beam_width: {choices: [2, 4]}}}",
        "beam_search_target pins beam_width",
    ),
    ("tune.methods={rsd: {n: {choices: [2, 4]}}}", "rsd draws one sample per step; n changes nothing"),
    (
        "tune.methods={specs: {hf.draft.temperature: {low: 0.5, high: 1.0}}}",
        "the run uses backend tabular, not hf",
    ),
    ("tune.methods={specs: {tabular.nope: {low: 0.5, high: 1.0}}}", "tabular has no key 'nope'"),
    ("tune.methods={specs: {target_select: {low: 0, high: 1}}}", "a str setting takes choices"),
    ("tune.methods={}", "tune.methods must name at least one method"),
    ("tune.rungs=[8, 4]", "tune.rungs must be increasing"),
    ("tune.rungs=[4, 12]", "tune.rungs must be below the number of tune problems (12): 12 is not"),
    ("tune.choose={rule: fastest}", "tune.choose.rule must be one of"),
    (
        "tune.choose={rule: max_accuracy_under_latency}",
        "tune.choose.latency_s must be a number of seconds > 0",
    ),
    (
        "tune.choose={rule: max_accuracy_under_latency, latency_s: -1}",
        "latency_s must be a number of seconds > 0",
    ),
    ("tune.reference=null", "needs tune.reference"),
    ("tune.test.set={}", "tune.test.set must say what makes the held-out problems"),
    ("tune.test.set={tabular.treeseed: 5}", "tune.test: the re-run's compare config is refused"),
    ("tune.sampler=cmaes", "tune.sampler must be one of"),
    ("tune.start={specs: [{n: 4}]}", "tune.start.specs[0] must give every tuned key of specs"),
    (
        "tune.start={specs: [{n: 4, beta: 50.0, tau_reject: 0.0, tau_switch: 0.5}]}",
        "tune.start.specs[0].beta: 50.0 is outside beta in [0.5, 30] log",
    ),
    ("tune.start={beam_search_target: [{n: 4}]}", "a space of choices runs every point"),
    (
        "tune.methods={gsi: {temperature: {choices: [0.5, 1.0]}}}",
        "tune.methods.gsi.temperature: gsi pins temperature=1.0",
    ),
    (
        "tune.methods={gsi: {score_form: {choices: [exact, mean]}}}",
        "tune.methods.gsi.score_form: gsi pins score_form='exact'",
    ),
    (
        "tune.methods={gsi: {start_mode: {choices: [draft, target]}}}",
        "tune.methods.gsi.start_mode: gsi pins start_mode='draft'",
    ),
    (
        "tune.methods={gsi: {tau_switch: {low: 0.5, high: 0.9}}}",
        "tune.methods.gsi.tau_switch: gsi pins tau_switch=-inf",
    ),
    (
        "tune.methods={rsd_bon: {accept_test: {choices: [score, reward]}}}",
        "rsd_bon pins accept_test='reward'",
    ),
    (
        "tune.methods={specs_paper: {score_form: {choices: [exact, mean]}}}",
        "specs_paper pins score_form='mean'",
    ),
    (  # a shared key another value than a tuned method pins: refused before the study, not at its re-test
        "tune.methods={specs_paper: {beta: {choices: [1.0, 10.0]}}}",
        "score_form='exact' is set for every method, but method specs_paper pins score_form='mean'",
    ),
    (
        "tune.methods={specs: {n: {choices: [4]}}}",
        "one choice leaves nothing to tune; fix it at the top level (n: 4)",
    ),
    ("beta=2.0", "tune.methods.specs.beta: beta is also set for every method"),
    ("method_settings={specs: {tau_switch: 0.5}}", "tau_switch is also fixed in method_settings.specs"),
]


@pytest.mark.parametrize("override, message", BAD, ids=[m for _, m in BAD])
def test_bad_input_is_refused_with_one_line(fast_dir, monkeypatch, capsys, override, message):
    out = fast_dir / "bad"
    if "rungs=[4, 12]" not in override:  # that one needs the problems counted: the task may be built, no more

        def no_build(cfg):
            raise AssertionError("the task must not be built for a refused config")

        monkeypatch.setattr(tune_cmd, "TaskCache", no_build)
    code = tune_cmd.main(["--config", TUNE_TAB, f"out={out}", *SMALL, *QUIET, override])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_the_tune_yamls_plan():
    for path in sorted((REPO / "configs" / "tune").glob("*.yaml")):
        cfg = load_config(TuneConfig, path)
        plan = plan_study(cfg)
        assert plan.primary == "specs" and plan.reference is not None
        assert yaml.safe_load(path.read_text())["tune"]["test"]["set"]


def test_the_peers_study_runs_on_the_tabular_backend(fast_dir):
    """configs/tune/peers_toymath.yaml as it stands, on a simulated tabular world (seconds): every method gets the
    same number of trials, its first one its start point, and chosen.yaml its choice as method_settings."""
    out = fast_dir / "peers-tabular"
    peers = yaml.safe_load((REPO / "configs" / "tune" / "peers_toymath.yaml").read_text())["tune"]
    budget = peers["method_trials"]  # one procedure, the same budget for every method
    assert set(budget) == set(peers["methods"]) == set(peers["start"]) and len(set(budget.values())) == 1
    args = ["--config", str(REPO / "configs" / "tune" / "peers_toymath.yaml"), f"out={out}", *QUIET]
    args += ["backend=tabular", "tabular.problems=12", "tabular.prm=idealized", "tune.rungs=[4]"]
    args += [f"tune.method_trials={{{', '.join(f'{m}: 2' for m in peers['methods'])}}}"]
    args += ["tune.test.set={tabular.tree_seed: 1000}", "tune.test.run=false", "tune.choose.points=100"]
    assert tune_cmd.main(args) == 0
    s = _summary(out)
    assert Counter(t["method"] for t in s["trials"]) == {m: 2 for m in peers["methods"]}
    for m, (point,) in peers["start"].items():
        assert next(t for t in s["trials"] if t["method"] == m and t["number"] == 0)["params"] == point
    ccfg = load_config(CompareConfig, out / "chosen.yaml")
    assert set(ccfg.grid.method_settings) == set(peers["methods"]) and ccfg.grid.n_grid == [4]
    assert (
        ccfg.grid.method_settings["specs"]["start_mode"] == "draft"
    )  # its fixed own setting travels with the choice


def test_workers_share_one_storage(fast_dir, capsys):
    """Several workers (here one after another) with their own out and one database join the same studies; a
    worker with another config is refused by the hash the studies hold."""
    db = f"sqlite:///{fast_dir / 'shared.db'}"
    common = ["--config", TUNE_TAB, *SMALL, *QUIET, "tune.test.run=false", "tune.baselines=[]"]
    common += ["tune.methods={specs: {tau_reject: {low: -6.0, high: 2.0}}}", "tune.choose.points=100"]
    assert tune_cmd.main([*common, f"out={fast_dir / 'a'}", f"tune.storage={db}", "tune.trials=2"]) == 0
    assert tune_cmd.main([*common, f"out={fast_dir / 'b'}", f"tune.storage={db}", "tune.trials=4"]) == 0
    a, b = _summary(fast_dir / "a"), _summary(fast_dir / "b")
    assert [t["number"] for t in a["trials"]] == [0, 1] and [t["number"] for t in b["trials"]] == [0, 1, 2, 3]
    assert b["trials"][:2] == a["trials"]  # worker b sees worker a's trials as they were
    assert not (fast_dir / "b" / "trials" / "specs" / "0").exists()  # their records stay with worker a
    capsys.readouterr()
    other = [*common, f"out={fast_dir / 'c'}", f"tune.storage={db}", "tune.rungs=[6]"]
    study = a["study"]["names"]["specs"].split(":")[0]
    assert tune_cmd.main([*other, f"tune.study_name={study}"]) == 2
    err = capsys.readouterr().err
    assert "holds trials of another config; set another tune.study_name" in err and err.count("\n") == 1
    assert not (fast_dir / "c").exists()  # refused before anything was written
    assert tune_cmd.main([*other, "tune.storage=postgresql://nobody@127.0.0.1:1/none"]) == 2
    assert "tune.storage: cannot open 127.0.0.1:1/none (" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("test_set", "message"),
    [
        (
            "{tabular.tree_seed: 5}",
            "tree seeds 5..11 are in both",
        ),  # trees 5..16 against the tune trees 0..11
        ("{tabular.problems: 3}", "tree seeds 0..2 are in both"),  # the first tune trees again
        ("{K: 4}", "tree seeds 0..11 are in both"),  # a flat key: the same world, the same trees
    ],
)
def test_a_test_set_that_overlaps_the_tune_problems_is_refused_before_any_trial(
    tmp_path, capsys, test_set, message
):
    """Tuning never sees its test set: a tune.test.set that gives tune problems again is refused in one line,
    before anything is loaded or written."""
    out = tmp_path / "never"
    args = ["--config", TUNE_TAB, f"out={out}", *SMALL, *QUIET, f"tune.test.set={test_set}"]
    assert tune_cmd.main(args) == 2
    err = capsys.readouterr().err
    assert "overlaps the tune problems" in err and message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_a_test_set_of_the_tune_split_is_refused_and_another_split_is_not():
    base = ["backend=hf", "data.dataset=toymath", "data.split=tune", "data.limit=20", "hf.draft.name=d"]
    base += ["hf.target.name=t", "hf.prm.name=p"]
    with pytest.raises(ConfigError, match="the same toymath split 'tune' with overlapping slices"):
        check_test_set(load_config(TuneConfig, TUNE_TAB, [*base, "tune.test.set={data.start: 10}"]))
    check_test_set(load_config(TuneConfig, TUNE_TAB, [*base, "tune.test.set={data.start: 20}"]))  # disjoint
    check_test_set(load_config(TuneConfig, TUNE_TAB, [*base, "tune.test.set={data.split: test}"]))
    cfg = load_config(TuneConfig, TUNE_TAB, [*base, "tune.test.set={data.split: test}"])
    with pytest.raises(ConfigError, match="problem ids toymath-test-0"):  # ids shared by the two sets
        check_test_ids(cfg, ["toymath-test-0", "toymath-tune-1"])
    check_test_ids(cfg, ["toymath-tune-0", "toymath-tune-1"])
