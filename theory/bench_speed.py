"""Speed of the exact curves : every variant, an n grid, one random tree.

    python -m theory.bench_speed                      # K=6, H=4, n = 1, 2, 4, ..., 1024, all variants
    python -m theory.bench_speed K=8 H=4 out=runs/theory/bench

Times :func:`theory.converge.convergence_curves` (the exact law of each variant at each n, and its KL both ways,
TV and reward gap to π*) per variant, best of ``repeats``; prints a table and writes ``bench_speed.json``.
The target is under 30 s in all on a 2-core machine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from specs_rl.cli import entry_point
from specs_rl.config import config_from_argv
from specs_rl.settings import SearchConfig
from theory.converge import (
    DEFAULT_N,
    DEFAULT_VARIANTS,
    VARIANTS,
    ConvergeConfig,
    build_tree,
    convergence_curves,
    write_json,
)
from theory.names import renamed_argv, variant_names


@dataclass
class BenchConfig:
    K: int = field(default=6, metadata={"help": "alphabet size"})  # noqa: N815
    H: int = field(default=4, metadata={"help": "horizon"})  # noqa: N815
    seed: int = field(default=0, metadata={"help": "random tree seed"})
    search: SearchConfig = field(
        default_factory=lambda: ConvergeConfig().search,
        metadata={"help": "the search settings, as in `theory converge` (beta: the tilt β)", "flat": True},
    )
    n: list[int] = field(default_factory=lambda: list(DEFAULT_N), metadata={"help": "grid of n"})
    variants: list[str] = field(
        default_factory=lambda: list(DEFAULT_VARIANTS), metadata={"help": f"of {VARIANTS}"}
    )
    repeats: int = field(default=1, metadata={"help": "timed repetitions (best is reported)"})
    out: str | None = field(
        default=None, metadata={"help": "directory for bench_speed.json (null: print only)"}
    )

    def __post_init__(self) -> None:
        self.variants = variant_names(self.variants, "theory bench_speed")

    def validate(self) -> None:
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        ConvergeConfig(search=self.search, n=self.n, variants=self.variants).validate()


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    argv = renamed_argv(sys.argv[1:] if argv is None else argv, "theory bench_speed")
    cfg = config_from_argv(BenchConfig, argv, "python -m theory.bench_speed")
    # the random tree of `theory converge K=.. H=.. tree_seed=..` (its tree defaults, this bench's K, H and seed)
    tabular = dataclasses.replace(ConvergeConfig().tabular, K=cfg.K, H=cfg.H, tree_seed=cfg.seed)
    conv = ConvergeConfig(tabular=tabular, search=cfg.search, n=cfg.n, samples=0, plot=False)
    tree = build_tree(conv)
    per_variant: dict[str, float] = {}
    for name in cfg.variants:
        one = dataclasses.replace(conv, variants=[name])
        best = float("inf")
        for _ in range(cfg.repeats):
            t0 = time.perf_counter()
            convergence_curves(tree, one)
            best = min(best, time.perf_counter() - t0)
        per_variant[name] = best
    t0 = time.perf_counter()
    curves = convergence_curves(tree, dataclasses.replace(conv, variants=list(cfg.variants)))
    total = time.perf_counter() - t0
    result = {
        "K": cfg.K,
        "H": cfg.H,
        "n": cfg.n,
        "variants": list(cfg.variants),
        "seconds_per_variant": {k: round(v, 3) for k, v in per_variant.items()},
        "seconds_total": round(total, 3),
        "specs_tv_at_largest_n": curves["variants"].get("specs", {}).get("tv", [None])[-1],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    print(f"exact curves: K={cfg.K} H={cfg.H} ({cfg.K**cfg.H} responses), {len(cfg.n)} values of n")
    print(f"{'variant':<16} {'seconds':>8}")
    for k, v in per_variant.items():
        print(f"{k:<16} {v:>8.3f}")
    print(f"{'all':<16} {total:>8.3f}")
    if cfg.out is not None:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "bench_speed.json", result)
    else:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
