"""Where a model comes from (hub id, local directory, ``.gguf`` file, ``tiny:``), checked before anything loads."""

from __future__ import annotations

from pathlib import Path

from specs_rl.errors import SpecsError


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
