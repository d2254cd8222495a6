"""Where a model comes from (hub id, local directory, ``.gguf`` file, ``tiny:``), checked before anything loads, and
how a PRM checkpoint asks to be read (its ``prm_config.json`` merged with the ``hf.prm`` overrides)."""

from __future__ import annotations

from pathlib import Path

from specs_rl.errors import SpecsError
from specs_rl.models.config import ModelSpec, PrmSpec
from specs_rl.models.prm_format import PrmFormat


def split_source(name: str, gguf_file: str | None, key: str) -> tuple[str, str | None]:
    """``(source, gguf_file)``: a ``.gguf`` path is split into its directory and file name.

    Raises SpecsError for a local path that does not exist (a name that is not a path is taken as a hub id).
    """
    if gguf_file is None and name.endswith(".gguf"):
        p = Path(name).expanduser()
        if not p.is_file():
            raise SpecsError(f"{key}: GGUF file not found: {name}")
        return str(p.parent), p.name
    looks_local = name.startswith(("/", "./", "../", "~")) or name.count("/") > 1
    p = Path(name).expanduser()
    if looks_local and not p.exists():
        raise SpecsError(f"{key}: model path not found: {name}")
    if gguf_file is not None and p.is_dir() and not (p / gguf_file).is_file():
        raise SpecsError(f"{key}: GGUF file not found: {p / gguf_file}")
    return (str(p) if p.exists() else name), gguf_file


def check_sources(specs: dict[str, ModelSpec | PrmSpec]) -> None:
    """Cheap checks of every source before any model is loaded."""
    for key, spec in specs.items():
        if not spec.name.startswith("tiny"):
            split_source(spec.name, getattr(spec, "gguf_file", None), key)


def prm_format(spec: PrmSpec, key: str = "hf.prm") -> PrmFormat:
    """How ``spec``'s checkpoint reads steps: ``prm_config.json`` next to a local checkpoint (if any), each field
    overridden by ``spec`` where it is set."""
    saved = None
    if not spec.name.startswith("tiny"):
        source, _ = split_source(spec.name, None, key)
        if Path(source).is_dir():
            saved = PrmFormat.load(source)
    base = saved or PrmFormat()
    return PrmFormat(
        kind=spec.kind if spec.kind != "auto" else base.kind,
        step_separator=spec.step_separator if spec.step_separator is not None else base.step_separator,
        positive_label=spec.positive_label if spec.positive_label is not None else base.positive_label,
        step_reward=spec.step_reward if spec.step_reward is not None else base.step_reward,
    )
