"""Weights & Biases, offline by default: start a run that never waits for a login, and read offline runs back.

``wandb`` is imported inside the functions (it is the ``track`` extra), so the inference loop never needs it.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def default_offline() -> None:
    """``WANDB_MODE=offline`` when the user set no mode and no API key, so no run ever blocks on a login prompt."""
    if "WANDB_MODE" not in os.environ and "WANDB_API_KEY" not in os.environ:
        os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")


def init_run(
    project: str,
    config: dict[str, Any],
    *,
    name: str | None = None,
    directory: str | Path | None = None,
    job_type: str | None = None,
) -> Any:
    """``wandb.init`` with offline-by-default, the resolved config attached, files under ``directory``."""
    default_offline()
    import wandb

    kwargs: dict[str, Any] = {
        "project": project,
        "config": config,
        "name": name,
        "job_type": job_type,
        "reinit": "finish_previous",
    }
    if directory is not None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        kwargs["dir"] = str(directory)
    return wandb.init(**kwargs)


def finish_run(run: Any) -> None:
    """Close the run and stop W&B's service process, so an offline run is complete on disk when this returns and the
    next ``init_run`` in the same process reads its settings (``WANDB_DIR``, mode) afresh.

    ``run.finish()`` alone returned before the history reached the ``.wandb`` file in some runs here (wandb 0.31,
    offline: a read right after it found no history rows); ``wandb.teardown()`` waits for the service to exit.
    """
    if run is None:
        return
    run.finish()
    import wandb

    wandb.teardown()


def _records(path: Path, block: int = 32768) -> Iterator[Any]:
    """Protobuf records of a ``.wandb`` file (LevelDB-log framing: 7-byte header, then crc32/len16/type8 chunks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    buf = path.read_bytes()
    if buf[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    pos, chunks = 7, []
    while pos + 7 <= len(buf):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, n, typ = struct.unpack("<IHB", buf[pos : pos + 7])
        pos += 7
        data = buf[pos : pos + n]
        pos += n
        if typ == 0 and n == 0:
            continue
        chunks = [data] if typ in (1, 2) else [*chunks, data]
        if typ in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(b"".join(chunks))
            yield rec


def _items(items: Any) -> dict[str, Any]:
    return {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items}


def read_offline_run(run_dir: str | Path) -> dict[str, Any]:
    """History rows, summary and config of an offline run directory (``.../wandb/offline-run-*``)."""
    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no run-*.wandb file in {run_dir}")
    out: dict[str, Any] = {"history": [], "summary": {}, "config": {}}
    for rec in _records(files[0]):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            out["history"].append(_items(rec.history.item))
        elif kind == "summary":
            out["summary"].update(_items(rec.summary.update))
        elif kind == "config":
            out["config"].update(_items(rec.config.update))
        elif kind == "run":
            out["config"].update(_items(rec.run.config.update))
    return out


def find_offline_runs(wandb_dir: str | Path) -> list[Path]:
    """Offline run directories under ``wandb_dir`` (the ``dir`` given to ``init_run``, or its ``wandb/``)."""
    root = Path(wandb_dir)
    return sorted(p for p in root.rglob("offline-run-*") if p.is_dir())
