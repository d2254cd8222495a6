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

from specs_rl.cli import entry_point
from specs_rl.config import peek
from specs_rl.errors import SpecsError

BENCHES = {"hf": "eval.bench_loop", "vllm": "eval.bench_served"}


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    backend = peek(argv, "backend", "hf")
    if backend not in BENCHES:
        raise SpecsError(f"backend must be one of {', '.join(BENCHES)}, got {backend!r}")
    return int(importlib.import_module(BENCHES[backend]).main(argv) or 0)


if __name__ == "__main__":
    sys.exit(main())
