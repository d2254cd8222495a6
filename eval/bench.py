"""``specs-rl bench``: the inference-loop benchmarks, one per backend.

    specs-rl bench out=runs/bench                      # in-process models (eval/bench_loop.py)
    specs-rl bench backend=vllm out=runs/bench-vllm    # vLLM servers against the in-process backend (eval/bench_served.py)

``backend`` (in the ``--config`` file or on the command line; default ``hf``) picks the benchmark, whose config then
parses the whole command line (``--help`` lists its keys).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import Any

from specs_rl.cli import entry_point
from specs_rl.config import peek
from specs_rl.errors import SpecsError

BENCHES = {"hf": "eval.bench_loop", "vllm": "eval.bench_served"}


def bench_module(argv: Sequence[str]) -> Any:
    """The benchmark ``backend`` picks."""
    backend = peek(argv, "backend", "hf")
    if backend not in BENCHES:
        raise SpecsError(f"backend must be one of {', '.join(BENCHES)}, got {backend!r}")
    return importlib.import_module(BENCHES[backend])


def parse(argv: Sequence[str]) -> Any:
    """The command line's config, checked, without loading a model or writing a file (what the docs test calls)."""
    return bench_module(argv).parse(argv)


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return int(bench_module(argv).main(argv) or 0)


if __name__ == "__main__":
    sys.exit(main())
