"""Writing and reading the per-problem records of a run (``results.jsonl``) and its JSON files.

Records are appended and fsynced one by one, so a crash loses at most the problem in flight, and a rerun of the same
command skips what is there. Each problem's search has its own seed (:func:`problem_seed`), so a resumed, sharded
or reordered run draws the same samples as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from specs_rl.errors import SpecsError
from specs_rl.types import SearchResult


def result_record(result: SearchResult, grade: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The record of one problem: ``id, method, answer, text, correct, steps, latency_s{stages, total},
    tokens{draft, target_generate, target_score, target_proposed, target_accepted, target_rounds},
    acceptance_length, final_score, draft_step_fraction, deferrals`` + grade + extra."""
    ledger = result.ledger.as_record()
    rec = {
        "id": result.problem.id,
        "method": result.method,
        "answer": result.answer,
        "text": result.trace.text,
        "correct": grade.get("correct"),
        "steps": [s.as_record() for s in result.steps],
        "latency_s": ledger["latency_s"],
        "tokens": ledger["tokens"],
        "acceptance_length": result.ledger.acceptance_length,  # speculative target steps; None without
        "final_score": None if math.isnan(result.final_reward) else result.final_reward,
        "draft_step_fraction": result.draft_step_fraction,
        "deferrals": result.deferrals,
    }
    rec.update({k: v for k, v in grade.items() if k != "correct"})
    rec.update(extra)
    return rec


def record_key(r: dict[str, Any]) -> tuple[str, str, str, str]:
    """``(method, n, seed, id)`` as text: what identifies a record in a run (and across merged shards)."""
    return (str(r.get("method")), str(r.get("n")), str(r.get("seed")), str(r["id"]))


class ResultsWriter:
    """Append-only JSONL, one line per problem, flushed and fsynced, so a crash loses at most the problem in flight.

    Opening an existing file reads the records already there (``done``); a corrupt last line (a write cut by a
    crash) is dropped with a warning and the file truncated to the last good line. A complete last record that
    lacks its newline (a crash between the record and its ``\n``) is kept and its line finished, so the next record
    starts a line of its own.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.records: list[dict[str, Any]] = (
            read_results(self.path, repair=True) if self.path.exists() else []
        )
        self._fh = self.path.open("a", encoding="utf-8")
        if _lacks_final_newline(self.path):
            self._fh.write("\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())

    @property
    def done(self) -> set[tuple[str, str, str, str]]:
        return {record_key(r) for r in self.records}

    def write(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.records.append(record)

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _lacks_final_newline(path: Path) -> bool:
    """True when the file is not empty and its last byte is not ``\n``."""
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() == 0:
            return False
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) != b"\n"


def read_results(path: str | Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """Read a results JSONL. A corrupt *last* line is dropped with a warning (and cut from the file when
    ``repair``); a corrupt line anywhere else is an error naming the line."""
    p = Path(path)
    lines = p.read_bytes().split(b"\n")
    records, good_bytes = [], 0
    for i, line in enumerate(lines):
        if not line.strip():
            good_bytes += len(line) + 1
            continue
        try:
            records.append(json.loads(line))
            good_bytes += len(line) + 1
        except json.JSONDecodeError:
            if any(rest.strip() for rest in lines[i + 1 :]):
                raise SpecsError(f"{p}: line {i + 1} is not valid JSON and is not the last line") from None
            warnings.warn(f"{p}: dropping a corrupt last line (an interrupted write)", stacklevel=2)
            if repair:
                with p.open("r+b") as fh:
                    fh.truncate(good_bytes)
            break
    return records


def problem_seed(seed: int, problem_id: str) -> int:
    """The seed of one problem's search: a hash of (run seed, problem id), so a problem draws the same samples
    whatever its position, shard, batch companions or resumption."""
    return int(np.random.SeedSequence([seed, zlib.crc32(problem_id.encode())]).generate_state(1)[0])


def json_safe(x: Any) -> Any:
    """JSON has no inf/nan: map them to null (recursively)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def write_json(path: str | Path, obj: Any, *, indent: int = 2) -> None:
    """Write JSON atomically (temp file + rename), with inf/nan mapped to null."""
    p = Path(path)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(json_safe(obj), indent=indent))
    os.replace(tmp, p)
