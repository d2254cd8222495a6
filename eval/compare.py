"""``specs-rl compare``: several methods over one task, an n grid and several seeds, in one resumable run.

    specs-rl compare --config configs/eval/tiny.yaml out=runs/tiny
    specs-rl compare --config configs/eval/math500_qwen25.yaml data.shard=0/4 out=runs/math500-0of4

The task (data and models) is built once; then every method x n x seed searches every problem of the slice,
interleaved problem by problem with the method order rotating (``order: problem``, the default), so the latency
ratios are measured under the same load. Writes into ``out``:

- ``results.jsonl``: one record per (method, n, seed, problem), appended and fsynced as each problem finishes, so
  a kill loses at most the problem in flight; rerunning the same command skips what is there (a corrupt last line
  is dropped with a warning); a directory holding a run of another config is refused;
- ``summary.json``: ``{"rows": [one per method, n, seed], "aggregate": [one per method, n, over seeds, with the
  latency ratio to beam search with the target pooled and per repeat (median, range, count)], "grader", "plot"}``,
  and the same tables printed;
- ``accuracy_latency.png``: accuracy against mean latency per problem, one point per method and n, the Pareto
  front drawn;
- ``config.yaml`` / ``config.json`` (the resolved config), and a W&B run (offline unless the user logged in).

Methods whose strategy draws one sample per step (``target_only``, ``draft_only``, ``rsd``) do not depend on n:
they run once per seed and their rows have ``"n": null``. ``specs_random_switch`` runs after ``specs`` (and
``specs_paper_random_switch`` after ``specs_paper``), at the target-step fraction it measured for the same n, seed
and problems.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from eval import plan
from specs_rl.cli import entry_point
from specs_rl.config import config_from_argv
from specs_rl.interfaces import SimClock, Task
from specs_rl.run import (
    PRESENTATION_KEYS,
    CompareConfig,
    build_task,
    check_extras,
    check_run_dir,
    plan_runs,
    prepare_run_dir,
    run_grid,
    write_report,
)
from specs_rl.run.backends import threads_restored


def title(cfg: CompareConfig, task: Task) -> str:
    """The plot's title: the task and the slice of its data."""
    if cfg.run.backend == "tabular":
        return f"tabular ({len(task.problems)} problems)"
    data = cfg.run.data
    end = "" if data.limit is None else data.start + data.limit
    part = f" {data.start}:{end}" if data.start or data.limit else ""
    return f"{data.dataset}{part}" + (f" shard {data.shard}" if data.shard else "")


def parse(argv: Sequence[str]) -> CompareConfig:
    """The command line's config, checked, without loading a model or writing a file (what the docs test calls)."""
    cfg = config_from_argv(CompareConfig, argv, "specs-rl compare")
    plan_runs(cfg)  # every (method, n, seed) of the grid validated
    return cfg


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    return run(parse(sys.argv[1:] if argv is None else argv))


def run(cfg: CompareConfig) -> int:
    """Run a parsed compare config (``specs-rl compare``, ``specs-rl demo``): plan, build, search, report (torch's
    thread count restored after: a served run gives its in-process parts the core layout's)."""
    with threads_restored():
        return _run(cfg)


def _run(cfg: CompareConfig) -> int:
    runs = plan_runs(cfg)  # every (method, n, seed) validated before anything is loaded or written
    check_extras(cfg.report)
    out_dir = cfg.run.out
    check_run_dir(
        out_dir, cfg, ignore=PRESENTATION_KEYS
    )  # another config's directory: refused before loading
    plan.check(cfg)  # the models fit their devices (read from headers: nothing downloaded or loaded)
    task = build_task(cfg.run)  # data and models, once (sharded by data.shard)
    out = prepare_run_dir(out_dir, cfg, ignore=PRESENTATION_KEYS)
    records = run_grid(
        task,
        runs,
        out / "results.jsonl",
        batch_size=cfg.run.batch_size,
        progress=cfg.report.progress,
        # a simulated clock needs no warm-up
        warmup=0 if isinstance(task.parts.clock, SimClock) else cfg.grid.warmup,
        order=cfg.grid.order,
    )
    expected = len(runs) * len(task.problems)
    write_report(
        out,
        cfg,
        records,
        task.grader,
        order=[(r.method, r.n, r.seed) for r in runs],
        title=title(cfg, task),
        extra={
            "task": task.name,
            "problems_in_slice": len(task.problems),
            "records": len(records),
            "expected_records": expected,
            "complete": len(records) >= expected,
            "shard": cfg.run.data.shard,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
