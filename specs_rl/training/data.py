"""Data files for training: JSONL reading with one-line errors, where the named datasets live, held-out splits by
problem.

Dataset names accepted by the recipes (:func:`load_rows`):

- ``processbench:<split>`` (gsm8k, math, olympiadbench, omnimath): ProcessBench, from the folder named by
  ``$SPECS_RL_PROCESSBENCH`` (``<split>.jsonl`` or the release's ``<split>.json``) when it is set, else from the hub
  id ``Qwen/ProcessBench`` (the ``datasets`` package; cached by it after the first download);
- ``data:<file>``: an evaluation set shipped with the package (``specs_rl/assets/data``, e.g.
  ``data:math500_test.jsonl``), for contamination guards;
- anything else: a path to a ``.jsonl`` (one object a line) or ``.json`` (an array of objects) file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from specs_rl.errors import SpecsError

PROCESSBENCH_SPLITS = ("gsm8k", "math", "olympiadbench", "omnimath")
PROCESSBENCH_HUB = "Qwen/ProcessBench"
PROCESSBENCH_ENV = "SPECS_RL_PROCESSBENCH"
# ProcessBench splits that share problems with the packaged evaluation sets (specs_rl/assets/data/README.md).
OVERLAPS = {"processbench:gsm8k": "the GSM8K test set", "processbench:math": "MATH-500 (108 problems)"}


def packaged_data_dir() -> Path:
    """The evaluation sets shipped with the package: ``specs_rl/assets/data``."""
    return Path(__file__).resolve().parents[1] / "assets" / "data"


def _processbench_split(spec: str) -> str:
    split = spec.split(":", 1)[1]
    if split not in PROCESSBENCH_SPLITS:
        raise SpecsError(f"unknown ProcessBench split {split!r}; known: {', '.join(PROCESSBENCH_SPLITS)}")
    return split


def resolve_data_path(spec: str) -> Path | None:
    """The local file a dataset name points to (see the module docstring), or None for a ProcessBench split that is
    read from the hub (``$SPECS_RL_PROCESSBENCH`` unset). Raises SpecsError when a named file does not exist."""
    if spec.startswith("processbench:"):
        split = _processbench_split(spec)
        folder = os.environ.get(PROCESSBENCH_ENV)
        if not folder:
            return None
        for suffix in (".jsonl", ".json"):
            path = Path(folder).expanduser() / f"{split}{suffix}"
            if path.is_file():
                return path
        raise SpecsError(
            f"dataset {spec!r}: ${PROCESSBENCH_ENV} is {folder!r}, which has no {split}.jsonl or {split}.json"
        )
    if spec.startswith("data:"):
        path = packaged_data_dir() / spec.split(":", 1)[1]
    else:
        path = Path(spec).expanduser()
    if not path.is_file():
        raise SpecsError(f"dataset {spec!r}: file not found: {path}")
    return path


def load_rows(spec: str) -> list[dict[str, Any]]:
    """The rows of a named dataset (module docstring): a local file's rows (:func:`read_rows`), or a ProcessBench
    split from the hub when ``$SPECS_RL_PROCESSBENCH`` is unset."""
    path = resolve_data_path(spec)
    if path is not None:
        return read_rows(path, spec)
    split = _processbench_split(spec)
    try:
        import datasets
    except ImportError:
        raise SpecsError(
            f"dataset {spec!r}: reading {PROCESSBENCH_HUB} from the hub needs the 'datasets' package "
            f"(pip install specs-rl[train]), or set ${PROCESSBENCH_ENV} to a local copy"
        ) from None
    try:
        ds = datasets.load_dataset(PROCESSBENCH_HUB, split=split)
    except Exception as e:  # noqa: BLE001 - any hub failure becomes one line
        raise SpecsError(
            f"dataset {spec!r}: could not load {PROCESSBENCH_HUB} split {split!r} ({str(e).splitlines()[0]}); "
            f"offline, set ${PROCESSBENCH_ENV} to a folder with {split}.jsonl"
        ) from None
    return [dict(r) for r in ds]


def read_rows(path: str | Path, name: str | None = None) -> list[dict[str, Any]]:
    """Rows of a JSONL file (or a JSON array); every row must be a JSON object. Errors name the file and line."""
    path = Path(path)
    name = name or str(path)
    if not path.is_file():
        raise SpecsError(f"dataset {name!r}: file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecsError(f"dataset {name!r}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(data, list):
            raise SpecsError(f"dataset {name!r}: a .json dataset must be an array of objects")
        rows = data
    else:
        rows = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SpecsError(f"dataset {name!r} line {lineno}: not valid JSON ({e.msg})") from None
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise SpecsError(f"dataset {name!r} row {i}: expected a JSON object, got {type(row).__name__}")
    return rows


def normalize_problem(text: str) -> str:
    """Whitespace-collapsed, lower-cased problem text (for matching the same problem across datasets)."""
    return re.sub(r"\s+", " ", text).strip().lower()


def problem_texts(specs: Iterable[str]) -> set[str]:
    """Normalized problem texts of evaluation sets (fields ``problem`` or ``question``), for contamination guards."""
    out: set[str] = set()
    for spec in specs:
        for row in load_rows(spec):
            text = row.get("problem", row.get("question"))
            if isinstance(text, str):
                out.add(normalize_problem(text))
    return out


def contamination_warning(dataset_names: str, exclude: Sequence[str] | None) -> str | None:
    """A warning line when training data overlaps an evaluation set and nothing is excluded, else None.

    >>> contamination_warning("processbench:math,toy:8", None)
    'warning: processbench:math shares problems with MATH-500 (108 problems); set exclude_problems_from (e.g. data:math500_test.jsonl) before evaluating there'
    """
    if exclude:
        return None
    hits = [
        f"{n} shares problems with {OVERLAPS[n]}" for n in dataset_names.split(",") if n.strip() in OVERLAPS
    ]
    if not hits:
        return None
    return f"warning: {'; '.join(hits)}; set exclude_problems_from (e.g. data:math500_test.jsonl) before evaluating there"


def held_out(problem: str, fraction: float, seed: int) -> bool:
    """Whether a problem falls in the held-out split: ``sha256(seed:problem)`` as a number in [0, 1) < fraction.

    A hash (not Python's salted ``hash``) so every process of a distributed run, and every rerun, agrees; keyed on
    the problem so all solutions of one problem land on the same side.
    """
    digest = hashlib.sha256(f"{seed}:{normalize_problem(problem)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split_by_problem(
    rows: Sequence[dict[str, Any]], fraction: float, seed: int, key: str = "prompt"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(train, held_out)``: rows whose ``key`` text hashes below ``fraction`` go to the held-out split."""
    if not 0.0 <= fraction < 1.0:
        raise SpecsError(f"eval_fraction must be in [0, 1), got {fraction}")
    train, heldout = [], []
    for row in rows:
        (heldout if held_out(str(row[key]), fraction, seed) else train).append(row)
    return train, heldout
