"""Benchmark problems: MATH-500, AMC23, GSM8K from JSONL files or Hugging Face dataset ids, mapped to ``Problem``.

A ``DataConfig`` names a dataset (a known name, a ``.jsonl`` path, or a hub id) and the slice to run. Rows are
validated while loading: a missing column or an empty problem is a :class:`SpecsError` naming the file and the row.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specs_rl.errors import SpecsError
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
        "problem": "question",
        "answer": "final_answer",
        "id": "id",
        "gold": "list",
    },
}
HUB_TO_KNOWN = {v["hub"]: k for k, v in KNOWN.items() if v["hub"]}


def shared_data_dir() -> Path:
    """``../shared/data`` beside the repository (where the project's offline copies live)."""
    return Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass
class DataConfig:
    dataset: str = field(
        default="math500",
        metadata={"help": "math500 | amc23 | gsm8k | olympiadbench | a .jsonl path | a hub id"},
    )
    path: str | None = field(
        default=None, metadata={"help": "file to read instead of the known copy in ../shared/data"}
    )
    split: str = field(default="test", metadata={"help": "hub split"})
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
        metadata={"help": "how a problem becomes the user message (paper's instruction)"},
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
        return ", ".join(str(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _read_rows(cfg: DataConfig) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
    name = cfg.dataset
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
        path = shared_data_dir() / spec["file"]
        if not path.is_file() and spec["hub"] is None:
            raise SpecsError(f"dataset {name}: {path} not found and there is no hub id for it")
        if not path.is_file():
            path = None
    if path is not None:
        if not path.is_file():
            raise SpecsError(f"dataset file not found: {path}")
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise SpecsError(f"{path}: line {i + 1} is not valid JSON") from None
        return rows, str(path), spec
    hub = spec.get("hub") or name
    try:
        import datasets
    except ImportError:
        raise SpecsError(
            f"loading {hub!r} from the hub needs the 'datasets' package (pip install specs-rl[train])"
        ) from None
    try:
        ds = datasets.load_dataset(hub, split=cfg.split)
    except Exception as e:  # noqa: BLE001 - any hub failure becomes one line
        raise SpecsError(
            f"could not load dataset {hub!r} split {cfg.split!r}: {str(e).splitlines()[0]}"
        ) from None
    return [dict(r) for r in ds], hub, spec


def load_problems(cfg: DataConfig) -> list[Problem]:
    """The configured slice as ``Problem``s (``prompt`` already templated; ``meta["problem"]`` the raw text)."""
    cfg.validate()
    rows, source, spec = _read_rows(cfg)
    pcol = cfg.problem_column or spec["problem"]
    acol = cfg.answer_column or spec["answer"]
    icol = cfg.id_column if cfg.id_column is not None else spec["id"]
    end = None if cfg.limit is None else cfg.start + cfg.limit
    chosen = list(enumerate(rows))[cfg.start : end]
    if cfg.shard is not None:
        i, k = parse_shard(cfg.shard)
        chosen = [(j, r) for pos, (j, r) in enumerate(chosen) if pos % k == i]
    problems = []
    for j, row in chosen:
        for col in (pcol, acol) + ((icol,) if icol else ()):
            if col not in row:
                raise SpecsError(
                    f"{source}: row {j} has no column {col!r} (columns: {', '.join(sorted(row))})"
                )
        text = row[pcol]
        if not isinstance(text, str) or not text.strip():
            raise SpecsError(f"{source}: row {j} has an empty problem")
        try:
            gold = _gold(row[acol], spec["gold"])
        except ValueError as e:
            raise SpecsError(f"{source}: row {j}: bad gold answer ({e})") from None
        pid = str(row[icol]) if icol else str(j)
        problems.append(
            Problem(
                id=pid,
                prompt=cfg.prompt_template.replace("{problem}", text),
                answer=gold,
                meta={"problem": text, "source": source, "row": j},
            )
        )
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        raise SpecsError(f"{source}: ids are not unique in column {icol!r}")
    return problems
