"""Benchmark problems, mapped to ``Problem``: MATH-500, AMC23 and GSM8K from the copies shipped with the package
(``specs_rl/assets/data``), OlympiadBench by hub id, any JSONL file or hub id, and the generated toy-math task.

A ``DataConfig`` names a dataset (a known name, a ``.jsonl`` path, or a hub id) and the slice to run. Rows are
validated while loading: a missing column, an empty problem or a missing gold answer is a :class:`SpecsError`
naming the file and the line (row). The slice is ``start``/``limit`` first, then ``shard=i/k`` keeps every k-th
problem of the slice from position i, so the k shards partition the slice.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specs_rl.errors import SpecsError
from specs_rl.toymath import SPLITS as TOYMATH_SPLITS
from specs_rl.toymath import ToyMathConfig
from specs_rl.toymath import generate as generate_toymath
from specs_rl.types import Problem

PAPER_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."

# Column mappings of the known datasets: problem text, gold answer, id (None: the row index).
KNOWN: dict[str, dict[str, Any]] = {
    "math500": {
        "file": "math500_test.jsonl",
        "hub": "HuggingFaceH4/MATH-500",
        "problem": "problem",
        "answer": "answer",
        "id": "unique_id",
        "gold": "plain",
    },
    "amc23": {
        "file": "amc23_test.jsonl",
        "hub": None,
        "problem": "problem",
        "answer": "answer",
        "id": "id",
        "gold": "plain",
    },
    "gsm8k": {
        "file": "gsm8k_test.jsonl",
        "hub": "openai/gsm8k",
        "problem": "question",
        "answer": "answer",
        "id": None,
        "gold": "gsm8k",
    },
    "olympiadbench": {
        "file": None,
        "hub": "Hothan/OlympiadBench",
        # text-only, open-ended, English competition maths (674 problems): the set math papers report
        "subset": "OE_TO_maths_en_COMP",
        "splits": {"test": "train"},  # the hub publishes the benchmark as its only split, "train"
        "problem": "question",
        "answer": "final_answer",
        "id": "id",
        "gold": "list",
    },
}
HUB_TO_KNOWN = {v["hub"]: k for k, v in KNOWN.items() if v["hub"]}


def packaged_data_dir() -> Path:
    """The evaluation sets shipped with the package (``specs_rl/assets/data``; sources and licenses in its
    README.md)."""
    return Path(__file__).resolve().parent / "assets" / "data"


@dataclass
class DataConfig:
    dataset: str = field(
        default="math500",
        metadata={"help": "math500 | amc23 | gsm8k | olympiadbench | toymath | a .jsonl path | a hub id"},
    )
    path: str | None = field(
        default=None, metadata={"help": "file to read instead of the copy shipped with the package"}
    )
    split: str = field(
        default="test",
        metadata={
            "help": "split (OlympiadBench's test set is the hub's 'train'); toymath: train | tune | test"
        },
    )
    subset: str | None = field(
        default=None,
        metadata={"help": "hub config name (default per dataset: OlympiadBench OE_TO_maths_en_COMP)"},
    )
    problem_column: str | None = field(
        default=None, metadata={"help": "column with the problem text (default per dataset)"}
    )
    answer_column: str | None = field(
        default=None, metadata={"help": "column with the gold answer (default per dataset)"}
    )
    id_column: str | None = field(
        default=None, metadata={"help": "column with a unique id (default per dataset; row index if none)"}
    )
    start: int = field(default=0, metadata={"help": "first problem of the slice"})
    limit: int | None = field(default=None, metadata={"help": "number of problems (null: all)"})
    shard: str | None = field(default=None, metadata={"help": "i/k: keep problems whose position % k == i"})
    prompt_template: str = field(
        default="{problem}\n\n" + PAPER_PROMPT,
        metadata={
            "help": "how a problem becomes the user message (paper's instruction; toy models use '{problem}\\n\\n')"
        },
    )
    toymath: ToyMathConfig = field(
        default_factory=ToyMathConfig, metadata={"help": "generator settings of dataset: toymath"}
    )

    def validate(self) -> None:
        if self.start < 0:
            raise ValueError(f"data.start must be >= 0, got {self.start}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"data.limit must be >= 1 or null, got {self.limit}")
        if self.shard is not None:
            parse_shard(self.shard)
        if "{problem}" not in self.prompt_template:
            raise ValueError("data.prompt_template must contain {problem}")
        if self.dataset == "toymath":
            self.toymath.validate()
            if self.split not in TOYMATH_SPLITS:
                raise ValueError(
                    f"data.split must be one of {TOYMATH_SPLITS} for toymath, got {self.split!r}"
                )


def parse_shard(shard: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", shard)
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise SpecsError(f"shard must look like i/k with 0 <= i < k, got {shard!r}")
    return int(m.group(1)), int(m.group(2))


def gsm8k_gold(answer: str) -> str:
    """The number after ``####`` in a GSM8K solution, without thousands separators."""
    m = re.search(r"####\s*(.+?)\s*$", answer.strip())
    if not m:
        raise ValueError("no '#### <answer>' line")
    return m.group(1).replace(",", "").strip()


def _gold(value: Any, kind: str) -> str:
    if kind == "gsm8k":
        return gsm8k_gold(str(value))
    if kind == "list" and isinstance(value, list):
        if not value:
            raise ValueError("empty answer list")
        return ", ".join(
            str(v).strip().strip("$").strip() for v in value
        )  # ["$\\frac{1}{2}$"] -> \frac{1}{2}
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _toymath_rows(cfg: DataConfig) -> list[dict[str, Any]]:
    # problem i does not depend on how many are generated: generate no more than the slice needs
    count = cfg.toymath.problems if cfg.limit is None else min(cfg.toymath.problems, cfg.start + cfg.limit)
    gen = dataclasses.replace(cfg.toymath, problems=max(count, 1))
    return [
        {"problem": p.text, "answer": str(p.answer), "id": f"toymath-{cfg.split}-{i}"}
        for i, p in enumerate(generate_toymath(gen, cfg.split))
    ]


def _read_rows(cfg: DataConfig) -> tuple[list[dict[str, Any]], list[str], str, dict[str, Any]]:
    """Rows, where each row is (``line N`` of a file, ``row N`` of a hub split), the source, the column spec."""
    name = cfg.dataset
    if name == "toymath" and cfg.path is None:
        rows = _toymath_rows(cfg)
        spec = {"problem": "problem", "answer": "answer", "id": "id", "gold": "plain"}
        return rows, [f"problem {i}" for i in range(len(rows))], f"toymath:{cfg.split}", spec
    spec = (
        KNOWN.get(name)
        or KNOWN.get(HUB_TO_KNOWN.get(name, ""))
        or {"problem": "problem", "answer": "answer", "id": None, "gold": "plain", "file": None, "hub": None}
    )
    path: Path | None = None
    if cfg.path is not None:
        path = Path(cfg.path)
    elif name.endswith(".jsonl"):
        path = Path(name)
    elif name in KNOWN and spec["file"]:
        path = packaged_data_dir() / spec["file"]
        if not path.is_file():
            raise SpecsError(f"dataset {name}: the packaged copy {path} is missing (reinstall specs-rl)")
    elif name in HUB_TO_KNOWN and spec["file"] and cfg.split == "test":
        # a known hub id whose test split has a verified offline copy (same bytes): read the copy
        local = packaged_data_dir() / spec["file"]
        path = local if local.is_file() else None
    if path is not None:
        if not path.is_file():
            raise SpecsError(f"dataset file not found: {path}")
        rows, where = [], []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise SpecsError(f"{path}: line {i + 1} is not valid JSON") from None
            if not isinstance(row, dict):
                raise SpecsError(f"{path}: line {i + 1} is not a JSON object")
            rows.append(row)
            where.append(f"line {i + 1}")
        return rows, where, str(path), spec
    hub = spec.get("hub") or name
    try:
        import datasets
    except ImportError:
        raise SpecsError(
            f"loading {hub!r} from the hub needs the 'datasets' package (pip install specs-rl[train])"
        ) from None
    subset = cfg.subset if cfg.subset is not None else spec.get("subset")
    split = spec.get("splits", {}).get(cfg.split, cfg.split)
    try:
        ds = datasets.load_dataset(hub, subset, split=split)
    except Exception as e:  # noqa: BLE001 - any hub failure becomes one line
        raise SpecsError(
            f"could not load dataset {hub!r} subset {subset!r} split {split!r}: {str(e).splitlines()[0]}"
        ) from None
    rows = [dict(r) for r in ds]
    return rows, [f"row {i}" for i in range(len(rows))], hub, spec


def select_positions(
    n_rows: int, start: int = 0, limit: int | None = None, shard: str | None = None
) -> list[int]:
    """Row positions of the slice ``[start, start + limit)`` and, with ``shard="i/k"``, of its shard i: the
    slice positions ``p`` with ``p % k == i`` (so the k shards partition the slice).

    >>> select_positions(10, start=2, limit=5, shard="1/2")
    [3, 5]
    """
    end = n_rows if limit is None else min(n_rows, start + limit)
    positions = list(range(min(start, n_rows), end))
    if shard is not None:
        i, k = parse_shard(shard)
        positions = positions[i::k]
    return positions


def load_problems(cfg: DataConfig) -> list[Problem]:
    """The configured slice as ``Problem``s (``prompt`` already templated; ``meta["problem"]`` the raw text).

    Raises :class:`SpecsError` naming the line (row) of the first bad row of the slice, or when the slice is
    empty."""
    try:
        cfg.validate()
    except SpecsError:
        raise
    except ValueError as e:
        raise SpecsError(str(e)) from None
    rows, where, source, spec = _read_rows(cfg)
    pcol = cfg.problem_column or spec["problem"]
    acol = cfg.answer_column or spec["answer"]
    icol = cfg.id_column if cfg.id_column is not None else spec["id"]
    positions = select_positions(len(rows), cfg.start, cfg.limit, cfg.shard)
    if not positions:
        raise SpecsError(
            f"{source}: the slice is empty ({len(rows)} rows, start={cfg.start}, limit={cfg.limit}, "
            f"shard={cfg.shard})"
        )
    problems = []
    for j in positions:
        row, at = rows[j], where[j]
        for col in (pcol, acol) + ((icol,) if icol else ()):
            if col not in row:
                raise SpecsError(f"{source}: {at} has no column {col!r} (columns: {', '.join(sorted(row))})")
        text = row[pcol]
        if not isinstance(text, str) or not text.strip():
            raise SpecsError(f"{source}: {at} has an empty problem in column {pcol!r}")
        if row[acol] is None or (isinstance(row[acol], str) and not row[acol].strip()):
            raise SpecsError(f"{source}: {at} has no gold answer in column {acol!r}")
        try:
            gold = _gold(row[acol], spec["gold"])
        except ValueError as e:
            raise SpecsError(f"{source}: {at}: bad gold answer in column {acol!r} ({e})") from None
        pid = str(row[icol]) if icol else str(j)
        if icol and (row[icol] is None or not pid.strip()):
            raise SpecsError(f"{source}: {at} has an empty id in column {icol!r}")
        problems.append(
            Problem(
                id=pid,
                prompt=cfg.prompt_template.replace("{problem}", text),
                answer=gold,
                meta={"problem": text, "source": source, "row": j},
            )
        )
    seen: dict[str, str] = {}
    for p in problems:
        at = where[p.meta["row"]]
        if p.id in seen:
            raise SpecsError(
                f"{source}: id {p.id!r} appears twice ({seen[p.id]} and {at}) in column {icol!r}"
            )
        seen[p.id] = at
    return problems
