"""PRM training rows: adapters to TRL's stepwise format, with validation that names the dataset row.

The common format is TRL's stepwise-supervision format, one solution a row::

    {"prompt": str, "completions": [step, ...], "labels": [bool, ...]}   # labels[k]: step k is correct

with an optional ``error_chars: [int | null, ...]``: for a wrong step, the offset (in the step without its trailing
separator) of its first wrong character, which token labels (``token_labels: true``) use to place the error
inside the step; null elsewhere.

Adapters:

- ``stepwise``: rows already in that format (validated as they are).
- ``processbench``: ``{"problem", "steps", "label"}`` with ``label`` the 0-based index of the first wrong step or
  -1. Steps before ``label`` are correct, the step at ``label`` is wrong, steps after it are **dropped** (they are
  unlabelled). So a row yields ``label + 1`` labelled steps, or ``len(steps)`` when ``label == -1``.
- ``toy_math``: the toy-math generator's rows (a later issue). The generator emits the stepwise format, so the
  adapter is the stepwise one; the name is kept so configs say where their data came from.

Every problem is reported as ``SpecsError("dataset 'NAME' row I: PROBLEM")`` before any model is built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from specs_rl.errors import SpecsError

STEPWISE_COLUMNS = ("prompt", "completions", "labels")
PROCESSBENCH_COLUMNS = ("problem", "steps", "label")


def _fail(dataset: str, index: int, problem: str) -> SpecsError:
    return SpecsError(f"dataset {dataset!r} row {index}: {problem}")


def _require(row: Any, columns: Sequence[str], dataset: str, index: int) -> None:
    if not isinstance(row, dict):
        raise _fail(dataset, index, f"expected an object with columns {', '.join(columns)}")
    for col in columns:
        if col not in row:
            raise _fail(dataset, index, f"missing column {col!r} (expected {', '.join(columns)})")


def _steps(value: Any, column: str, dataset: str, index: int) -> list[str]:
    if not isinstance(value, list):
        raise _fail(dataset, index, f"{column!r} must be a list of strings, got {type(value).__name__}")
    if not value:
        raise _fail(dataset, index, f"empty step list in {column!r}")
    for k, step in enumerate(value):
        if not isinstance(step, str):
            raise _fail(dataset, index, f"{column}[{k}] must be a string, got {type(step).__name__}")
    return list(value)


def _prompt(value: Any, column: str, dataset: str, index: int) -> str:
    if not isinstance(value, str):
        raise _fail(dataset, index, f"{column!r} must be a string, got {type(value).__name__}")
    return value


def validate_stepwise(row: Any, index: int, dataset: str) -> dict[str, Any]:
    """One stepwise row, checked: prompt a string, a non-empty step list, one bool label per step, and optional
    ``error_chars`` (one per step: null, or for a wrong step an offset within the step)."""
    _require(row, STEPWISE_COLUMNS, dataset, index)
    prompt = _prompt(row["prompt"], "prompt", dataset, index)
    steps = _steps(row["completions"], "completions", dataset, index)
    labels = row["labels"]
    if not isinstance(labels, list):
        raise _fail(dataset, index, f"'labels' must be a list of true/false, got {type(labels).__name__}")
    if len(labels) != len(steps):
        raise _fail(dataset, index, f"{len(steps)} steps but {len(labels)} labels (one label per step)")
    for k, lab in enumerate(labels):
        if not isinstance(lab, bool):
            raise _fail(
                dataset, index, f"labels[{k}] is {lab!r} ({type(lab).__name__}); labels must be true/false"
            )
    out = {"prompt": prompt, "completions": steps, "labels": list(labels)}
    if row.get("error_chars") is not None:
        out["error_chars"] = _error_chars(row["error_chars"], steps, labels, dataset, index)
    return out


def _error_chars(
    value: Any, steps: list[str], labels: list[bool], dataset: str, index: int
) -> list[int | None]:
    from specs_rl.models.prm_format import strip_step

    if not isinstance(value, list) or len(value) != len(steps):
        raise _fail(dataset, index, f"'error_chars' must be a list with one entry per step ({len(steps)})")
    for k, (off, step, ok) in enumerate(zip(value, steps, labels)):
        if off is None:
            continue
        if isinstance(off, bool) or not isinstance(off, int):
            raise _fail(dataset, index, f"error_chars[{k}] must be an integer offset or null, got {off!r}")
        if ok:
            raise _fail(dataset, index, f"error_chars[{k}] = {off} but step {k} is labelled correct")
        n = len(strip_step(step, "\n\n"))
        if not 0 <= off <= n:
            raise _fail(dataset, index, f"error_chars[{k}] = {off} is outside step {k} (0..{n})")
    return list(value)


def from_stepwise(rows: Sequence[Any], dataset: str = "stepwise") -> list[dict[str, Any]]:
    """TRL stepwise rows, validated (extra columns are dropped)."""
    return [validate_stepwise(row, i, dataset) for i, row in enumerate(rows)]


def from_processbench(rows: Sequence[Any], dataset: str = "processbench") -> list[dict[str, Any]]:
    """ProcessBench rows -> stepwise rows: ``label`` correct steps then one wrong step, later steps dropped.

    >>> from_processbench([{"problem": "Q", "steps": ["a", "b", "c"], "label": 1}])
    [{'prompt': 'Q', 'completions': ['a', 'b'], 'labels': [True, False]}]
    >>> from_processbench([{"problem": "Q", "steps": ["a", "b"], "label": -1}])[0]["labels"]
    [True, True]
    """
    out = []
    for i, row in enumerate(rows):
        _require(row, PROCESSBENCH_COLUMNS, dataset, i)
        prompt = _prompt(row["problem"], "problem", dataset, i)
        steps = _steps(row["steps"], "steps", dataset, i)
        label = row["label"]
        if isinstance(label, bool) or not isinstance(label, int):
            raise _fail(dataset, i, f"'label' must be an integer step index or -1, got {label!r}")
        if not -1 <= label < len(steps):
            raise _fail(
                dataset, i, f"'label' {label} is outside [-1, {len(steps) - 1}] for {len(steps)} steps"
            )
        if label == -1:
            kept, labels = steps, [True] * len(steps)
        else:
            kept, labels = steps[: label + 1], [True] * label + [False]
        out.append({"prompt": prompt, "completions": kept, "labels": labels})
    return out


def from_toy_math(rows: Sequence[Any], dataset: str = "toy_math") -> list[dict[str, Any]]:
    """The toy-math generator's step labels: it writes TRL's stepwise format, so this validates that format."""
    return from_stepwise(rows, dataset)


ADAPTERS: dict[str, Callable[[Sequence[Any], str], list[dict[str, Any]]]] = {
    "stepwise": from_stepwise,
    "processbench": from_processbench,
    "toy_math": from_toy_math,
}


def detect_format(row: Any) -> str:
    """``processbench`` if the row has ProcessBench's columns, else ``stepwise`` (validation names what is missing)."""
    if isinstance(row, dict) and all(c in row for c in PROCESSBENCH_COLUMNS):
        return "processbench"
    return "stepwise"


def adapt(rows: Sequence[Any], fmt: str, dataset: str) -> list[dict[str, Any]]:
    """Rows in format ``fmt`` (``auto`` detects from the first row) -> validated stepwise rows."""
    if not rows:
        raise SpecsError(f"dataset {dataset!r} has no rows")
    if fmt == "auto":
        fmt = detect_format(rows[0])
    if fmt not in ADAPTERS:
        raise SpecsError(f"dataset_format must be one of auto, {', '.join(ADAPTERS)}; got {fmt!r}")
    return ADAPTERS[fmt](rows, dataset)


def label_count(rows: Sequence[dict[str, Any]]) -> tuple[int, int]:
    """``(correct, wrong)`` labelled steps over stepwise rows."""
    pos = sum(sum(r["labels"]) for r in rows)
    total = sum(len(r["labels"]) for r in rows)
    return pos, total - pos


_TOY_OPS = (("+", lambda a, b: a + b), ("-", lambda a, b: a - b), ("*", lambda a, b: a * b))


def toy_solution(
    rng: Any, wrong_at: int = -1, problem: tuple[int, ...] | None = None
) -> tuple[str, list[str]]:
    r"""A generated arithmetic problem ``(a op b) op c`` and its 3-step solution, slipping by one at step
    ``wrong_at`` (-1: no slip); every later step inherits the error. ``problem`` fixes ``(a, b, c, op1, op2)``.

    >>> import numpy as np
    >>> toy_solution(np.random.default_rng(0), problem=(2, 3, 4, 0, 2))
    ('What is (2 + 3) * 4?', ['Step 1: 2 + 3 = 5.', 'Step 2: 5 * 4 = 20.', 'The answer is \\boxed{20}.'])
    """
    if problem is None:
        a, b, c = (int(x) for x in rng.integers(1, 10, size=3))
        o1, o2 = (int(x) for x in rng.integers(0, len(_TOY_OPS), size=2))
    else:
        a, b, c, o1, o2 = problem
    (s1, f1), (s2, f2) = _TOY_OPS[o1], _TOY_OPS[o2]
    x = f1(a, b) + (1 if wrong_at == 0 else 0)
    y = f2(x, c) + (1 if wrong_at == 1 else 0)
    ans = y + (1 if wrong_at == 2 else 0)
    steps = [
        f"Step 1: {a} {s1} {b} = {x}.",
        f"Step 2: {x} {s2} {c} = {y}.",
        f"The answer is \\boxed{{{ans}}}.",
    ]
    return f"What is ({a} {s1} {b}) {s2} {c}?", steps


def toy_problem(rng: Any) -> tuple[int, ...]:
    """Random ``(a, b, c, op1, op2)`` for :func:`toy_solution`."""
    a, b, c = (int(x) for x in rng.integers(1, 10, size=3))
    o1, o2 = (int(x) for x in rng.integers(0, len(_TOY_OPS), size=2))
    return a, b, c, o1, o2


def toy_stepwise_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` generated arithmetic solutions in stepwise format, about half with one wrong step.

    Labels follow ProcessBench's rule (steps after the first wrong one are dropped), so the rows look like
    converted ProcessBench rows. For tests and tiny configs.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        problem = toy_problem(rng)
        wrong_at = int(rng.integers(0, 3)) if rng.random() < 0.5 else -1
        prompt, steps = toy_solution(rng, wrong_at, problem)
        kept = steps if wrong_at == -1 else steps[: wrong_at + 1]
        labels = [True] * len(kept) if wrong_at == -1 else [True] * wrong_at + [False]
        rows.append({"prompt": prompt, "completions": kept, "labels": labels})
    return rows
