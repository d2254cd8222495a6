"""What every training recipe does around its trainer: the W&B run, metrics files, main-process checks.

The W&B run is started here (offline unless the user chose a mode, see :func:`specs_rl.tracking.default_offline`)
with the resolved config attached; transformers' ``WandbCallback`` finds it and logs the losses into it. Only the
main process of a distributed run starts a run or writes files.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from specs_rl.training.args import wants_wandb

DEFAULT_PROJECT = "specs-rl"


def is_main_process(training_args: Any) -> bool:
    """Process 0 of the run (``accelerate launch`` sets the rank; a plain run is process 0)."""
    return int(getattr(training_args, "process_index", 0)) == 0


def start_tracking(training_args: Any, config: Mapping[str, Any], job_type: str) -> Any:
    """Start the W&B run on the main process when ``report_to`` includes wandb; else ``None``.

    ``WANDB_MODE=offline`` when the user set no mode (no login prompt, ever); ``WANDB_PROJECT`` defaults to
    ``specs-rl``; files go under ``$WANDB_DIR`` (wandb's default: ``./wandb``).
    """
    if not wants_wandb(training_args):
        return None
    from specs_rl.tracking import default_offline, init_run

    default_offline()
    os.environ.setdefault("WANDB_PROJECT", DEFAULT_PROJECT)
    if not is_main_process(training_args):
        return None
    return init_run(
        os.environ["WANDB_PROJECT"],
        dict(config),
        name=getattr(training_args, "run_name", None),
        job_type=job_type,
    )


def clean_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-safe metrics: floats (NaN/inf as strings), ints, strings, nested dicts."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, Mapping):
            out[k] = clean_metrics(v)
        elif v is None or isinstance(v, (bool, str, int)):
            out[k] = v
        else:
            try:
                f = float(v)
            except (TypeError, ValueError):
                out[k] = str(v)
                continue
            out[k] = f if math.isfinite(f) else str(f)
    return out


def write_metrics(output_dir: str | Path, metrics: Mapping[str, Any], name: str = "metrics.json") -> Path:
    path = Path(output_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean_metrics(metrics), indent=1, sort_keys=True))
    return path
