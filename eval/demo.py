"""``specs-rl demo``: the embedded default, SPECS against beam search and the baselines, with no GPU and no download.

    specs-rl demo                      # configs/demo/tabular.yaml, writes runs/demo
    specs-rl demo out=/tmp/demo n=16   # any key of the config can be overridden

On seeded random tabular worlds (exact draft/target laws, the idealized PRM, simulated latency from a per-call cost
model where a target token costs 8x a draft token). Prints the comparison table and writes ``results.jsonl``,
``summary.json`` (``{"rows": [...], "grader": ...}``) and the resolved config into ``out``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from specs_rl.cli import entry_point
from specs_rl.config import config_from_argv
from specs_rl.methods import METHOD_PRESETS, preset
from specs_rl.runner import (
    ResultsWriter,
    RunConfig,
    build_task,
    format_table,
    prepare_run_dir,
    search_task,
    summarize,
    write_json,
)

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo" / "tabular.yaml"


@dataclass
class DemoConfig(RunConfig):
    methods: list[str] = field(
        default_factory=lambda: [
            "specs",
            "beam_search_target",
            "beam_search_draft",
            "best_of_n",
            "target_only",
            "draft_only",
        ],
        metadata={"help": f"method presets to compare: {', '.join(METHOD_PRESETS)}"},
    )
    out: str = field(default="runs/demo", metadata={"help": "output directory"})

    def validate(self) -> None:
        super().validate()
        unknown = [m for m in self.methods if m not in METHOD_PRESETS]
        if unknown:
            raise ValueError(f"unknown method {unknown[0]!r}; known: {', '.join(METHOD_PRESETS)}")


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = config_from_argv(DemoConfig, argv, "specs-rl demo", default_config=str(DEFAULT_CONFIG))
    methods = {name: preset(cfg, name) for name in cfg.methods}  # every preset validated before work starts
    task = build_task(cfg)
    out = prepare_run_dir(cfg.out, cfg)
    rows = []
    with ResultsWriter(out / "results.jsonl") as writer:
        for name, mcfg in methods.items():
            done = {r["id"] for r in writer.records if r.get("method_name") == name}
            search_task(
                task,
                mcfg,
                torch.Generator().manual_seed(cfg.seed),
                batch_size=cfg.batch_size,
                skip=done,
                on_result=writer.write,
                extra={"method_name": name, "n": cfg.n, "seed": cfg.seed},
            )
            recs = [r for r in writer.records if r.get("method_name") == name]
            rows.append({"method": name, "n": cfg.n, "seed": cfg.seed, **summarize(recs)})
    summary = {"rows": rows, "grader": {"name": f"{task.name}-reward>=0.5", "version": "exact"}}
    write_json(out / "summary.json", summary)
    print(format_table(rows))
    base = next((r for r in rows if r["method"] == "beam_search_target"), None)
    spec = next((r for r in rows if r["method"] == "specs"), None)
    if base and spec:
        print(
            f"\nSPECS / beam search (target): latency x{spec['latency_mean_s'] / base['latency_mean_s']:.2f}, "
            f"accuracy {100 * (spec['accuracy'] - base['accuracy']):+.1f} points"
        )
    print(f"\nwrote {out}/results.jsonl, summary.json, config.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
