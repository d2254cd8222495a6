"""The run directory's identity: a directory holds one config's run, so a rerun resumes it and another config is
refused, touching nothing, before any model loads."""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from specs_rl.config import flat_settings, legacy_keys, save_config
from specs_rl.errors import SpecsError


def flat_dict(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat_dict(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Keys (dotted, as ``config.json`` holds them) whose values differ between two run identities."""
    return sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))


def placement_patterns() -> list[str]:
    """Dotted patterns of the keys that say where a backend's servers are and how to reach them, not what a run
    computes (a section's ``placement_keys``, prefixed by the backend's name). They are no part of a run's
    identity: a run resumes on a server restarted at another address, and shards run on k server sets merge."""
    from specs_rl.run.backends import BACKENDS

    return [
        f"{name}.{k}" for name, spec in BACKENDS.items() for k in getattr(spec.section, "placement_keys", ())
    ]


def run_identity(config: Any, ignore: Sequence[str] = ("out",)) -> dict[str, Any]:
    """What must match for two runs to share a directory: the resolved config by the keys users type
    (:func:`specs_rl.config.flat_settings`: ``beta``, ``tabular.K``, ``data.shard``) without the ``ignore`` keys
    and without the backends' placement keys."""
    flat = flat_settings(config)
    placement = placement_patterns()
    return {
        k: v
        for k, v in sorted(flat.items())
        if k not in ignore and not any(fnmatch.fnmatchcase(k, p) for p in placement)
    }


def stamp_identity(cls: type, stamp: dict[str, Any]) -> dict[str, Any]:
    """A ``config.json`` read back: a stamp written before configs were composed (``method`` for the strategy,
    compare's unused ``seed``) compares with today's."""
    return legacy_keys(cls, stamp)


def check_run_dir(out: str | Path, config: Any, *, ignore: Sequence[str] = ("out",)) -> None:
    """Refuse, touching nothing, an ``out`` holding a run of a different config, or results without a config.

    Cheap and read-only: entry points call it before loading any model."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SpecsError(f"out={out} is a file, not a directory")
    stamp = out / "config.json"
    if stamp.exists():
        try:
            previous = flat_dict(json.loads(stamp.read_text()))
        except json.JSONDecodeError:
            raise SpecsError(f"{stamp} is corrupt; move the directory away or pick another out=") from None
        current = run_identity(config, ignore)
        previous = stamp_identity(type(config), previous)
        diff = config_diff(previous, current)
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
    check_run_dir(out, config, ignore=ignore)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(run_identity(config, ignore), indent=1, sort_keys=True))
    save_config(config, out / "config.yaml")
    return out
