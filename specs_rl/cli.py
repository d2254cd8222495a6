"""``specs-rl``: one console command that launches the entry points of the workbenches.

Each subcommand names a module with ``main(argv) -> int`` (a recipe in ``eval/``, ``theory/`` or ``train/``) that is
imported only when that subcommand runs, so ``specs-rl search`` never pays for the trainer imports. The launcher
knows the recipes by module name only (as ``tune run`` does); the library proper imports no workbench.
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable, Sequence

from specs_rl.errors import SpecsError

COMMANDS: dict[str, tuple[str, str]] = {
    "search": ("eval.search", "run one search method over a task and write results.jsonl + summary.json"),
    "demo": (
        "eval.demo",
        "the embedded default: SPECS against beam search and baselines, no GPU, no download",
    ),
    "compare": (
        "eval.compare",
        "compare methods over a dataset slice, an n grid and seeds (W&B, plot, summary)",
    ),
    "merge": ("eval.merge", "merge the outputs of sharded compare runs into one summary"),
    "tune": (
        "eval.tune",
        "tune methods' settings on a tune split (Optuna), choose one by a fixed rule, re-test it on held-out data",
    ),
    "bench": (
        "eval.bench",
        "benchmark the inference loop (overhead, growth with prefix length); backend=vllm: the served backend",
    ),
    "prm score": (
        "eval.prm_score",
        "a PRM's reward for every step of JSONL solutions (the kind it was read as and the text on stderr)",
    ),
    "plan": (
        "eval.plan",
        "what a run will need (models, sizes, memory per device, servers, work) without loading",
    ),
    "serve": ("eval.serve", "start the vLLM servers a run config needs, print their URLs, stop them on exit"),
    "theory converge": ("theory.converge", "exact convergence of SPECS to the KL-regularized optimum"),
    "theory real": ("theory.real_task", "the convergence check with real models"),
    "train prm": ("train.prm", "train a step-level process reward model"),
    "train orm": ("train.orm", "train an outcome reward model"),
    "train draft": ("train.draft", "train a draft model by distillation"),
}


def entry_point(fn: Callable[[Sequence[str] | None], int]) -> Callable[[Sequence[str] | None], int]:
    """Wrap a recipe's ``main``: bad input (a :class:`SpecsError`) prints one line and returns 2, no traceback."""

    @functools.wraps(fn)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        ok = False
        try:
            rc = fn(argv) or 0
            ok = True
            return rc
        except SpecsError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        finally:
            _close_graders(kill=not ok)

    return wrapper


def _close_graders(kill: bool) -> None:
    """Grading worker pools end with the command that started them, not in the interpreter's exit hooks."""
    grading = sys.modules.get("specs_rl.grading")  # never imported: no pool to close
    if grading is not None:
        grading.close_all(kill=kill)


def _usage() -> str:
    width = max(len(k) for k in COMMANDS)
    rows = "\n".join(f"  {k:<{width}}  {help_}" for k, (_, help_) in COMMANDS.items())
    return f"usage: specs-rl COMMAND [--config PATH] [key=value ...]\n\ncommands:\n{rows}\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    for words in (2, 1):
        key = " ".join(argv[:words])
        if key in COMMANDS:
            module = importlib.import_module(COMMANDS[key][0])
            return int(module.main(argv[words:]) or 0)
    print(f"error: unknown command {' '.join(argv[:2])!r}\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
