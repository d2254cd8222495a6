"""``specs-rl tune``: find the accuracy-latency front of a method's settings on a tune split, choose one setting by a
rule fixed beforehand, and re-run the choice on held-out problems.

    specs-rl tune --config configs/tune/tabular.yaml out=runs/tune-tabular
    specs-rl tune --config configs/tune/toymath.yaml out=runs/tune

An Optuna multi-objective study per tuned method (accuracy up, mean latency per problem down) over the space in
``tune.methods``; every trial searches the same tune problems through the run layer that ``compare`` uses, first a
few (``tune.rungs``), stopping when another trial at the same rung beats it by a margin (successive halving), else
all of them. Then, in ``out``:

- ``study.db``: the study (Optuna's RDB storage). Rerunning the same command resumes it: finished trials are kept,
  a trial killed mid-run is marked failed and its parameters asked again (the retry resumes its records); another
  config in the same ``out`` is refused;
- ``baselines/results.jsonl``: the reference (``tune.reference``) and baselines at fixed settings on the tune set;
  ``trials/<method>/<trial>/results.jsonl``: each trial's records;
- ``tune.json``: every trial (parameters, seed, rung results, state), the fronts, the rule, the choice, the test
  re-run's figures; ``front.png``: accuracy against latency of every completed trial, each method's front, the
  choice, the reference, the baselines and the test re-run marked; a W&B run (trials, fronts, choice);
- ``chosen.yaml``: a ``compare`` config with the choice on the held-out set (``tune.test.set``): each chosen method's
  own settings in ``method_settings.<method>`` (what a compare config such as configs/eval/peers_toymath.yaml takes),
  the methods without a choice named in its header; and ``test/``: that compare run (with the reference and the
  baselines beside the choice, taking turns problem by problem).

Exit status: 0 when the first method of ``tune.methods`` has a choice, 3 when none of its completed trials meets the
rule (said at the end, with the closest trial; nothing is re-tested, chosen.yaml holds the other methods' choices),
2 for bad input (one line, nothing written).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from eval import compare
from specs_rl.cli import entry_point
from specs_rl.config import config_from_argv, to_dict
from specs_rl.interfaces import SimClock
from specs_rl.methods import uses_n
from specs_rl.run import check_extras, check_run_dir, prepare_run_dir, read_results, run_grid, write_json
from specs_rl.run.backends import threads_restored
from specs_rl.run.report import log_wandb
from specs_rl.run.summary import aggregate_rows, summary_rows
from specs_rl.run.tune import (
    TUNE_PRESENTATION_KEYS,
    TuneConfig,
    check_rungs,
    check_test_ids,
    choose,
    format_front,
    front,
    params_text,
    plan_study,
    plot_front,
    retest_configs,
    rule_text,
    trial_run,
)
from specs_rl.run.tune.study import (
    check_optuna,
    check_storage,
    collect_trials,
    open_studies,
    run_trials,
    storage_url,
    study_names,
)
from specs_rl.run.tune.trials import TaskCache, TrialRunner, run_result

NO_CHOICE = 3  # exit status: the study ran, but no completed trial of the first method meets the rule


def parse(argv: Sequence[str]) -> TuneConfig:
    """The command line's config, checked, without loading a model or writing a file (what the docs test calls)."""
    cfg = config_from_argv(TuneConfig, argv, "specs-rl tune")
    plan_study(cfg)
    return cfg


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse(sys.argv[1:] if argv is None else argv)
    with threads_restored():  # a served run sets its in-process parts' threads (the core layout)
        return run(cfg)


def run(cfg: TuneConfig) -> int:
    """Run a parsed tune config: plan, build, the fixed runs, the trials, the choice, the test re-run."""
    # spaces, rule, reference, the test re-run's config: all checked before anything is loaded or written
    plan = plan_study(cfg)
    check_optuna()
    check_extras(cfg.report)
    check_run_dir(
        cfg.run.out, cfg, ignore=TUNE_PRESENTATION_KEYS
    )  # another config's directory: refused first
    check_storage(cfg, plan)  # a shared database: reachable, and no study there of another config
    tasks = TaskCache(cfg, cfg.tune.task_cache, cfg.warmup)  # the tune problems and models, built once
    problems = len(tasks.base.problems)
    check_rungs(cfg, problems)
    check_test_ids(
        cfg, [p.id for p in tasks.base.problems]
    )  # the held-out set shares no problem: before any trial
    out = prepare_run_dir(cfg.run.out, cfg, ignore=TUNE_PRESENTATION_KEYS)
    simulated = isinstance(tasks.base.parts.clock, SimClock)
    started = time.monotonic()

    # 1. The reference and the baselines at their fixed settings, once, taking turns problem by problem.
    fixed = [r for r in (plan.reference, *plan.baselines) if r is not None]
    base_records = []
    if fixed:
        (out / "baselines").mkdir(exist_ok=True)
        base_records = run_grid(
            tasks.base,
            fixed,
            out / "baselines" / "results.jsonl",
            progress=cfg.report.progress,
            warmup=0 if simulated else cfg.warmup,
        )
    ids = {p.id for p in tasks.base.problems}
    measured = {r.method: {**run_result(base_records, r, ids), "label": _label(r.method, r.n)} for r in fixed}
    reference = measured[plan.reference.method] if plan.reference is not None else None

    # 2. The study: trials on growing prefixes of the tune problems, stopped early when beaten at a rung.
    studies = open_studies(cfg, plan, out)
    runner = TrialRunner(
        cfg,
        plan,
        out,
        tasks,
        paired=cfg.tune.paired and not simulated,  # a simulated clock has no load to pair against
        reference_latency=reference["latency_s"] if reference else None,
    )
    status = run_trials(cfg, plan, studies, runner, progress=cfg.report.progress)
    trials = collect_trials(studies)
    tune_s = time.monotonic() - started

    # 3. Each method's front and the setting its rule chooses (the rule was fixed in the config).
    ref_label = reference["label"] if reference else None
    rule = rule_text(cfg.tune.choose, ref_label, reference["accuracy"] if reference else None)
    choices: dict[str, dict[str, Any]] = {}
    for space in plan.spaces:
        done = [t for t in trials if t["method"] == space.method and t["state"] == "COMPLETE"]
        best, closest = choose(done, cfg.tune.choose, reference["accuracy"] if reference else None)
        choices[space.method] = {
            "chosen": best,
            "closest": closest,
            "front": [t["number"] for t in front(done)],
        }

    # 4. The choice re-run on the held-out problems in a fresh compare run (chosen.yaml -> out/test).
    chosen = {
        m: (c["chosen"]["params"], dict(trial_run(cfg, m, c["chosen"]["params"], cfg.seed)[0].settings))
        for m, c in choices.items()
        if c["chosen"] is not None
    }
    test: list[dict[str, Any]] = []
    # methods with no choice, said in the header of chosen.yaml (which holds the chosen ones only)
    unchosen = _choice_lines({m: c for m, c in choices.items() if c["chosen"] is None}, [], None)
    if chosen:  # every method's choice is written; re-run only when the study's first method has one
        for i, run in enumerate(retest_configs(cfg, plan, chosen)):
            d = run["config"]
            path = out / ("chosen.yaml" if i == 0 else f"chosen-{i}.yaml")
            head = f"# specs-rl compare --config {path}\n# written by specs-rl tune: {rule}; methods {d['methods']}\n"
            head += "".join(f"# {line}\n" for line in unchosen)
            path.write_text(head + yaml.safe_dump(d, sort_keys=False))
            entry: dict[str, Any] = {
                "config": path.name,
                "out": d["out"],
                "tuned": run["tuned"],
                "fixed": run["fixed"],
            }
            if cfg.tune.test.run and plan.primary in chosen:
                code = compare.main(["--config", str(path)])
                if code != 0:
                    return code  # compare said why, in one line
                entry["aggregate"] = json.loads((Path(d["out"]) / "summary.json").read_text())["aggregate"]
            test.append(entry)
    test_points = _test_points(plan, chosen, test, cfg)

    # 5. tune.json, front.png, W&B; the front and the choice printed.
    completed = [t for t in trials if t["state"] == "COMPLETE"]
    ref_method = plan.reference.method if plan.reference else None
    marks = [  # the fixed settings on the tune set (grey diamonds), the test re-run (crosses, chosen in colour)
        {"label": f"{m['label']} (tune)", "latency_s": m["latency_s"], "accuracy": m["accuracy"],
         "marker": "D" if name == ref_method else "s"}
        for name, m in measured.items()
    ]  # fmt: skip
    marks += [
        {"label": f"{p['label']} (test)", "latency_s": p["latency_s"], "accuracy": p["accuracy"],
         "marker": "X" if p["kind"] == "chosen" else "P", "method": p["method"] if p["kind"] == "chosen" else ""}
        for p in test_points
    ]  # fmt: skip
    picked = [{**c["chosen"], "method": m} for m, c in choices.items() if c["chosen"] is not None]
    summary: dict[str, Any] = {
        "task": tasks.base.name,
        "tune_problems": problems,
        "study": {"storage": storage_url(cfg, out).split("@")[-1], "names": study_names(cfg, plan), **status},
        "rule": {**to_dict(cfg.tune.choose), "text": rule},
        "reference": reference,
        "baselines": measured,
        "trials": trials,
        "choices": choices,
        "test": test,
        "test_points": test_points,
        "tune_wall_s": tune_s,
    }
    write_json(out / "tune.json", summary)
    title = f"tune: {tasks.base.name}, {problems} problems"
    if cfg.report.plot:
        summary["plot"] = plot_front(completed, out / "front.png", chosen=picked, marks=marks, title=title)
    rows = []
    for space in plan.spaces:
        c = choices[space.method]
        for number in c["front"]:
            t = next(t for t in completed if t["method"] == space.method and t["number"] == number)
            rows.append({**t, "chosen": c["chosen"] is not None and c["chosen"]["number"] == number})
    print(f"\nfronts on the tune set ({problems} problems), rule: {rule}")
    print(format_front(rows))
    for space in plan.spaces:
        mine = [t for t in trials if t["method"] == space.method]
        stopped = sorted({t["rungs"][-1]["problems"] for t in mine if t["state"] == "PRUNED" and t["rungs"]})
        line = (
            f"{space.method}: {len(mine)} trials, {sum(t['state'] == 'PRUNED' for t in mine)} stopped early"
        )
        print(line + (f" (after {stopped} problems)" if stopped else ""))
    for line in _choice_lines(choices, test_points, reference):
        print(line)
    timed_out = ", timed out" if status["timed_out"] else ""
    print(f"study: {summary['study']['storage']} ({status['spent_s']:.0f} s of trials{timed_out})")
    if cfg.report.wandb:
        records = list(base_records)
        for t in completed:  # the trial's own records (not the reference's beside them when paired)
            path = runner.records_path(t["method"], t["root"])
            if path.exists():  # a trial of another worker (shared storage) has its records there
                records += [r for r in read_results(path) if r.get("seed") == t["seed"]]
        tables = _wandb_tables(trials, rows)
        choice_summary = {"rule": rule}
        for m, c in choices.items():
            if c["chosen"] is not None:
                choice_summary.update(
                    {f"choice/{m}/{k}": c["chosen"][k] for k in ("number", "accuracy", "latency_s")}
                )
        for p in test_points:
            choice_summary.update({f"test/{p['label']}/{k}": p[k] for k in ("accuracy", "latency_s")})
        run_rows = summary_rows(records)
        plot = out / "front.png" if cfg.report.plot else None
        summary["wandb"] = log_wandb(
            cfg, records, run_rows, aggregate_rows(records, run_rows), plot, job_type="tune", tables=tables,
            summary=choice_summary,
        )  # fmt: skip
    write_json(out / "tune.json", summary)
    print(f"summary: {out / 'tune.json'}")
    return 0 if plan.primary in chosen else NO_CHOICE


def _wandb_tables(
    trials: list[dict[str, Any]], front_rows: list[dict[str, Any]]
) -> dict[str, tuple[list, list]]:
    """The trials (every state, the last rung searched) and the fronts, as W&B tables."""

    def last(t: dict[str, Any], key: str) -> Any:
        return t["rungs"][-1][key] if t["rungs"] else None

    trial_rows = [
        [t["method"], t["number"], t["state"], t["seed"], json.dumps(t["params"]), last(t, "problems"),
         last(t, "accuracy"), last(t, "latency_s")]
        for t in trials
    ]  # fmt: skip
    front = [
        [r["method"], r["number"], r["accuracy"], r["latency_s"], json.dumps(r["params"]), r["chosen"]]
        for r in front_rows
    ]
    return {
        "trials": (
            ["method", "number", "state", "seed", "params", "problems", "accuracy", "latency_s"],
            trial_rows,
        ),
        "front": (["method", "number", "accuracy", "latency_s", "params", "chosen"], front),
    }


def _label(method: str, n: int | None) -> str:
    return method + ("" if n is None else f" n={n}")


def _test_points(
    plan: Any, chosen: dict[str, Any], test: list[dict[str, Any]], cfg: TuneConfig
) -> list[dict[str, Any]]:
    """The test re-run's rows of the chosen settings, with their latency ratio to the reference where both ran in
    the same compare run, and of the reference and the baselines."""
    points = []
    for entry in test:
        agg = entry.get("aggregate") or []

        def row(method: str, n: Any, agg: list[dict[str, Any]] = agg) -> dict[str, Any] | None:
            return next((a for a in agg if a["method"] == method and a["n"] == n), None)

        fixed = {
            r.method: r
            for r in (plan.reference, *plan.baselines)
            if r is not None and r.method in entry["fixed"]
        }
        ref = plan.reference
        ref_row = row(ref.method, ref.n) if ref is not None and ref.method in fixed else None
        for m in entry["tuned"]:
            n = chosen[m][0].get("n", cfg.run.search.n) if uses_n(m) else None
            r = row(m, n)
            if r is not None:
                p = {"method": m, "kind": "chosen", "label": f"{_label(m, n)} chosen", "accuracy": r["accuracy"],
                     "latency_s": r["latency_mean_s"]}  # fmt: skip
                if ref_row is not None and ref_row["latency_mean_s"]:
                    p["ratio_to_reference"] = r["latency_mean_s"] / ref_row["latency_mean_s"]
                points.append(p)
        for m, run in fixed.items():
            r = row(m, run.n)
            if r is not None:
                kind = "reference" if ref is not None and m == ref.method else "baseline"
                points.append({"method": m, "kind": kind, "label": f"{_label(m, run.n)}", "accuracy": r["accuracy"],
                               "latency_s": r["latency_mean_s"]})  # fmt: skip
    return points


def _choice_lines(
    choices: dict[str, Any], test_points: list[dict[str, Any]], reference: dict[str, Any] | None
) -> list[str]:
    lines = []
    for m, c in choices.items():
        best = c["chosen"]
        if best is None:
            near = c["closest"]
            if near is None:
                lines.append(f"no {m} trial completed: nothing to choose")
            else:
                lines.append(
                    f"no {m} trial meets the rule; the closest is trial {near['number']} ({params_text(near['params'])}): "
                    f"accuracy {near['accuracy']:.3f}, {near['latency_s']:.4g} s"
                )
            continue
        line = (
            f"chosen {m}: trial {best['number']} ({params_text(best['params'])}): tune accuracy {best['accuracy']:.3f}, "
            f"{best['latency_s']:.4g} s"
        )
        if reference:
            line += f" ({best['latency_s'] / reference['latency_s']:.2f}x {reference['label']})"
        t = next((p for p in test_points if p["method"] == m and p["kind"] == "chosen"), None)
        if t is not None:
            line += f" | test accuracy {t['accuracy']:.3f}, {t['latency_s']:.4g} s"
            if "ratio_to_reference" in t:
                line += f" ({t['ratio_to_reference']:.2f}x the reference)"
        lines.append(line)
    return lines


if __name__ == "__main__":
    sys.exit(main())
