"""``specs-rl search``: one method (a preset of :mod:`specs_rl.methods`) over one task.

    specs-rl search --config configs/search/tabular.yaml n=8 beta=2.0 out=runs/tab
    specs-rl search --config configs/search/tabular.yaml method=beam_search_target out=runs/tab-bs

``method`` is a preset, applied as ``specs-rl compare`` applies it: its pinned settings (strategy, score form, ...)
over the run's; a run key set to another value than the preset pins is refused, and so is a strategy name
(``beam_search``), with the presets that run it. Writes into ``out``: ``results.jsonl`` (one record per problem, appended and fsynced as each finishes; a rerun of
the same command resumes), ``summary.json`` and the resolved ``config.yaml``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from eval import plan
from specs_rl.cli import entry_point
from specs_rl.config import config_from_argv
from specs_rl.run import (
    ResultsWriter,
    SearchRunConfig,
    build_task,
    check_run_dir,
    prepare_run_dir,
    search_task,
    summarize,
    write_json,
)
from specs_rl.run.backends import threads_restored


def parse(argv: Sequence[str]) -> SearchRunConfig:
    """The command line's config, checked, without loading a model or writing a file (what the docs test calls)."""
    cfg = config_from_argv(SearchRunConfig, argv, "specs-rl search")
    cfg.search_config()  # the method preset applies to the run's settings
    return cfg


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse(sys.argv[1:] if argv is None else argv)
    with threads_restored():  # a served run sets its in-process parts' threads (the core layout)
        return _search(cfg)


def _search(cfg: SearchRunConfig) -> int:
    run = cfg.run
    search = cfg.search_config()  # the method preset applied to the run's settings
    check_run_dir(run.out, cfg)  # a directory of another config is refused before any model loads
    plan.check(cfg)  # the models fit their devices (read from headers: nothing downloaded or loaded)
    task = build_task(run)  # loads data / models: every input error surfaces before a file is written
    out = prepare_run_dir(run.out, cfg)
    with ResultsWriter(out / "results.jsonl") as writer:
        search_task(
            task,
            search,
            cfg.seed,
            batch_size=run.batch_size,
            skip={r["id"] for r in writer.records},
            on_result=writer.write,
            extra={"method": cfg.method, "strategy": search.strategy, "n": search.n, "seed": cfg.seed},
        )
        summary = {"method": cfg.method, "n": search.n, "seed": cfg.seed, "task": task.name}
        summary.update(summarize(writer.records))
    write_json(out / "summary.json", summary)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
