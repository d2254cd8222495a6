"""Run a search strategy over a task and write what happened: the record of each problem, a summary, the config.

Shared by every entry point that searches (``specs-rl search``, ``compare``, ``demo``, the theory workbench).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import warnings
import zlib
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from specs_rl.datasets import DataConfig, parse_shard
from specs_rl.errors import SpecsError
from specs_rl.hf.config import HFConfig
from specs_rl.interfaces import SearchParts
from specs_rl.search import SearchConfig, run_search
from specs_rl.tabular import CostModel, TabularBackend, TabularTree, TreeError, load_tree, random_tree
from specs_rl.types import STAGES, Problem, SearchResult


@dataclass
class Task:
    """Problems, the parts that search them, and a grader: ``grade(result) -> {"correct": bool|None, ...}``."""

    name: str
    problems: list[Problem]
    parts: SearchParts
    grade: Callable[[SearchResult], dict[str, Any]]


# ------------------------------------------------------------------------------------------------------------------
# The tabular task


@dataclass
class TabularTaskConfig:
    tree: str | None = field(
        default=None, metadata={"help": "a tree JSON file; every problem is that tree (null: random trees)"}
    )
    problems: int = field(
        default=100, metadata={"help": "number of problems (random trees, or samples of the given tree)"}
    )
    K: int = field(default=4, metadata={"help": "random trees: alphabet size"})  # noqa: N815
    H: int = field(default=4, metadata={"help": "random trees: horizon (steps per response)"})  # noqa: N815
    concentration: float = field(
        default=0.5, metadata={"help": "random trees: Dirichlet concentration of target rows"}
    )
    coverage: float = field(
        default=0.3, metadata={"help": "random trees: weight of the uniform law in the draft"}
    )
    draft_noise: float = field(
        default=1.0, metadata={"help": "random trees: log-normal perturbation of the draft"}
    )
    tree_seed: int = field(default=0, metadata={"help": "random trees: problem i uses seed tree_seed + i"})
    prm: str = field(
        default="idealized", metadata={"help": "idealized (exact soft value V at beta) | table | outcome"}
    )
    cost: CostModel = field(default_factory=CostModel)

    def validate(self) -> None:
        if self.problems < 1:
            raise ValueError(f"tabular.problems must be >= 1, got {self.problems}")
        if self.prm not in ("idealized", "table", "outcome"):
            raise ValueError(f"tabular.prm must be one of idealized, table, outcome; got {self.prm!r}")


def build_tabular_task(cfg: TabularTaskConfig, beta: float) -> Task:
    """Problems over random trees (or one tree file); correct means the true reward is at least 0.5."""
    cfg.validate()
    if cfg.tree is not None:
        tree = load_tree(cfg.tree)
        trees: dict[str, TabularTree] = {"tree": tree}
        problems = [Problem(id=str(i), prompt="", meta={"tree": "tree"}) for i in range(cfg.problems)]
    else:
        trees = {
            str(i): random_tree(
                cfg.K,
                cfg.H,
                concentration=cfg.concentration,
                coverage=cfg.coverage,
                draft_noise=cfg.draft_noise,
                seed=cfg.tree_seed + i,
            )
            for i in range(cfg.problems)
        }
        problems = [Problem(id=str(i), prompt="", meta={"tree": str(i)}) for i in range(cfg.problems)]
    backend = TabularBackend(trees, beta=beta, prm=cfg.prm, cost=cfg.cost)

    def grade(result: SearchResult) -> dict[str, Any]:
        reward = backend.true_reward(result.problem.meta["tree"], result.answer)
        return {"correct": reward >= 0.5, "reward": reward}

    return Task("tabular", problems, backend.parts(), grade)


def _build_hf_task(cfg: Any) -> Task:
    from specs_rl.hf.task import build_hf_task  # torch models: imported only when asked for

    return build_hf_task(cfg)


# backend name -> builder of a Task from a RunConfig (the tabular one is built in build_task).
TASK_BUILDERS: dict[str, Callable[[Any], Task]] = {"hf": _build_hf_task}


@dataclass
class RunConfig(SearchConfig):
    """``specs-rl search``: one method over one task. Algorithm fields (``n``, ``beta``, ...) are top-level."""

    backend: str = field(default="tabular", metadata={"help": "tabular | hf"})
    tabular: TabularTaskConfig = field(default_factory=TabularTaskConfig)
    hf: HFConfig = field(default_factory=HFConfig)
    data: DataConfig = field(default_factory=DataConfig)
    out: str = field(default="runs/search", metadata={"help": "output directory"})
    seed: int = field(default=0, metadata={"help": "seed of the search's torch.Generator"})
    batch_size: int = field(
        default=1, metadata={"help": "problems searched together (1 = the paper's latency setting)"}
    )

    def validate(self) -> None:
        super().validate()
        if self.backend not in ("tabular", *TASK_BUILDERS):
            raise ValueError(f"backend must be one of {('tabular', *TASK_BUILDERS)}, got {self.backend!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        self.tabular.validate()
        if self.backend == "hf":
            self.hf.validate()
            self.data.validate()


def build_task(cfg: RunConfig) -> Task:
    """The configured task; ``data.shard`` slices the problems of every backend (the hf task's loader does it
    while reading; the tabular problems are sliced here)."""
    if cfg.backend == "tabular":
        task = build_tabular_task(cfg.tabular, cfg.beta)
        if cfg.data.shard is not None:
            i, k = parse_shard(cfg.data.shard)
            task.problems = task.problems[i::k]
        return task
    return TASK_BUILDERS[cfg.backend](cfg)


# ------------------------------------------------------------------------------------------------------------------
# Records and summaries


def result_record(result: SearchResult, grade: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The per-problem record of ``results.jsonl`` (the foundation issue's schema, plus a few fields)."""
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
        "final_score": None if math.isnan(result.final_reward) else result.final_reward,
        "draft_step_fraction": result.draft_step_fraction,
        "deferrals": result.deferrals,
    }
    rec.update({k: v for k, v in grade.items() if k != "correct"})
    rec.update(extra)
    return rec


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``k / n``."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _quantile(xs: Sequence[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy (with a 95% Wilson interval) where graded, latency mean / p50 / p90 and per stage, draft-step
    fraction, deferrals, tokens, and the mean true reward on tabular tasks."""
    recs = list(records)
    graded = [r for r in recs if r.get("correct") is not None]
    totals = [r["latency_s"]["total"] for r in recs]
    out: dict[str, Any] = {"problems": len(recs)}
    if graded:
        k = sum(bool(r["correct"]) for r in graded)
        out["accuracy"] = k / len(graded)
        out["accuracy_ci"] = list(wilson_interval(k, len(graded)))
    else:
        out["accuracy"], out["accuracy_ci"] = None, None
    out["latency_mean_s"] = statistics.fmean(totals) if totals else float("nan")
    out["latency_p50_s"] = _quantile(totals, 0.5)
    out["latency_p90_s"] = _quantile(totals, 0.9)
    out["latency_stage_mean_s"] = {
        s: statistics.fmean(r["latency_s"][s] for r in recs) if recs else 0.0 for s in STAGES
    }
    steps = sum(len(r["steps"]) for r in recs)
    draft_steps = sum(s["source"] == "draft" for r in recs for s in r["steps"])
    out["draft_step_fraction"] = draft_steps / steps if steps else 0.0
    out["deferrals_per_problem"] = sum(r.get("deferrals", 0) for r in recs) / max(len(recs), 1)
    out["tokens_mean"] = {
        m: statistics.fmean(r["tokens"][m] for r in recs) if recs else 0.0 for m in ("draft", "target")
    }
    rewards = [r["reward"] for r in recs if isinstance(r.get("reward"), (int, float))]
    if rewards:
        out["reward_mean"] = statistics.fmean(rewards)
    return out


class ResultsWriter:
    """Append-only JSONL, one line per problem, flushed and fsynced, so a crash loses at most the problem in flight.

    Opening an existing file reads the records already there (``done``); a corrupt last line (a write cut by a
    crash) is dropped with a warning and the file truncated to the last good line.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.records: list[dict[str, Any]] = (
            read_results(self.path, repair=True) if self.path.exists() else []
        )
        self._fh = self.path.open("a", encoding="utf-8")

    @property
    def done(self) -> set[tuple[str, ...]]:
        return {_record_key(r) for r in self.records}

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


def _record_key(r: dict[str, Any]) -> tuple[str, ...]:
    return (str(r.get("method")), str(r.get("n", "")), str(r.get("seed", "")), str(r["id"]))


def read_results(path: str | Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """Read a results JSONL. A corrupt *last* line is dropped with a warning (and cut from the file when
    ``repair``); a corrupt line anywhere else is an error naming the line."""
    p = Path(path)
    raw = p.read_bytes()
    lines = raw.split(b"\n")
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


def search_task(
    task: Task,
    config: SearchConfig,
    seed: int,
    *,
    batch_size: int = 1,
    skip: Container[str] = frozenset(),
    on_result: Callable[[dict[str, Any]], None] | None = None,
    extra: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Search every problem not in ``skip`` in batches; grade each result and hand its record to ``on_result``.

    Each batch gets its own ``torch.Generator`` seeded by :func:`problem_seed` of its first problem, so with
    ``batch_size=1`` every problem's result is independent of the others (resume and shards reproduce it)."""
    todo = [p for p in task.problems if p.id not in skip]
    out = []
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        generator = torch.Generator().manual_seed(problem_seed(seed, batch[0].id))
        for res in run_search(batch, config, task.parts, generator):
            rec = result_record(res, task.grade(res), **(extra or {}))
            out.append(rec)
            if on_result is not None:
                on_result(rec)
    return out


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (temp file + rename), with inf/nan mapped to null."""
    p = Path(path)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(_json_safe(obj), indent=2))
    os.replace(tmp, p)


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


__all__ = [
    "RunConfig",
    "ResultsWriter",
    "TabularTaskConfig",
    "Task",
    "TreeError",
    "build_task",
    "check_run_dir",
    "config_diff",
    "prepare_run_dir",
    "problem_seed",
    "run_identity",
    "read_results",
    "result_record",
    "search_task",
    "summarize",
    "wilson_interval",
    "write_json",
]


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Keys (dotted, as ``config.json`` holds them) whose values differ between two run identities."""
    return sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))


def run_identity(config: Any, ignore: Sequence[str] = ("out",)) -> dict[str, Any]:
    """What must match for two runs to share a directory: the resolved config without the ``ignore`` keys
    (dotted keys such as ``data.shard`` reach into sections)."""
    from specs_rl.config import to_dict

    flat = _flat(to_dict(config))
    return {k: v for k, v in sorted(flat.items()) if k not in ignore}


def check_run_dir(out: str | Path, config: Any, *, ignore: Sequence[str] = ("out",)) -> None:
    """Refuse, touching nothing, an ``out`` holding a run of a different config, or results without a config.

    Cheap and read-only: entry points call it before loading any model."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SpecsError(f"out={out} is a file, not a directory")
    stamp = out / "config.json"
    if stamp.exists():
        try:
            previous = _flat(json.loads(stamp.read_text()))
        except json.JSONDecodeError:
            raise SpecsError(f"{stamp} is corrupt; move the directory away or pick another out=") from None
        diff = config_diff(previous, run_identity(config, ignore))
        if diff:
            more = f" and {len(diff) - 5} more" if len(diff) > 5 else ""
            raise SpecsError(
                f"{out} holds a run of a different config (differs in: {', '.join(diff[:5])}{more}); "
                "pick another out= or remove it"
            )
    elif (out / "results.jsonl").exists():
        raise SpecsError(f"{out} holds a results.jsonl but no config.json; pick another out= or remove it")


def prepare_run_dir(out: str | Path, config: Any, *, ignore: Sequence[str] = ("out",)) -> Path:
    """Create ``out`` (or reuse it for a resumed run) after :func:`check_run_dir`, and write ``config.json`` (the
    run's identity) and ``config.yaml`` (the full resolved config) there."""
    from specs_rl.config import save_config

    check_run_dir(out, config, ignore=ignore)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(run_identity(config, ignore), indent=1, sort_keys=True))
    save_config(config, out / "config.yaml")
    return out
