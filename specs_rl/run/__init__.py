"""The run layer: build a task from a config, search it, write and read records, summarize and report.

Shared by every entry point that searches (``specs-rl search``, ``compare``, ``merge``, ``demo``, ``tune``, the
theory workbench). Backends register in :mod:`specs_rl.run.backends`.

| module | what |
|---|---|
| ``backends`` | the backend registry, the run configs' backend sections, ``build_task`` |
| ``config`` | ``RunConfig`` (what every recipe runs on), ``SearchRunConfig`` (``specs-rl search``) |
| ``grid`` | ``search_task``, ``CompareConfig`` / ``GridConfig``, ``plan_runs``, ``run_grid`` (interleaved, resumable) |
| ``records`` | ``results.jsonl`` records: write, read, resume; ``write_json`` |
| ``summary`` | accuracy intervals, latency statistics, ratios over repeats |
| ``report`` | the table, the plot, W&B |
| ``rundir`` | the run directory's identity check |
| ``tune`` | ``specs-rl tune``, a package: ``config``, ``space``, ``trials``, ``study`` (optuna), ``choose``, ``retest``, ``report`` |
"""

from specs_rl.run.backends import BACKENDS, Backend, build_task, with_backends
from specs_rl.run.config import RunConfig, SearchRunConfig
from specs_rl.run.grid import (
    ORDERS,
    PRESENTATION_KEYS,
    CompareConfig,
    GridConfig,
    PlannedRun,
    plan_runs,
    run_grid,
    search_task,
    warm_up,
)
from specs_rl.run.records import ResultsWriter, problem_seed, read_results, result_record, write_json
from specs_rl.run.report import (
    ReportConfig,
    check_extras,
    format_table,
    pareto_front,
    plot_accuracy_latency,
    write_report,
)
from specs_rl.run.rundir import check_run_dir, config_diff, prepare_run_dir, run_identity, stamp_identity
from specs_rl.run.summary import aggregate_rows, summarize, summary_rows, wilson_interval

__all__ = [
    "BACKENDS",
    "ORDERS",
    "PRESENTATION_KEYS",
    "Backend",
    "CompareConfig",
    "GridConfig",
    "PlannedRun",
    "ReportConfig",
    "ResultsWriter",
    "RunConfig",
    "SearchRunConfig",
    "aggregate_rows",
    "build_task",
    "check_extras",
    "check_run_dir",
    "config_diff",
    "format_table",
    "pareto_front",
    "plan_runs",
    "plot_accuracy_latency",
    "prepare_run_dir",
    "problem_seed",
    "read_results",
    "write_report",
    "result_record",
    "run_grid",
    "run_identity",
    "search_task",
    "stamp_identity",
    "summarize",
    "summary_rows",
    "warm_up",
    "wilson_interval",
    "with_backends",
    "write_json",
]
