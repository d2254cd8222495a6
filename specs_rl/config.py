"""Nested dataclass configs: defaults <- YAML file <- ``a.b=value`` overrides.

Unknown keys and wrong types are errors that name the key (:class:`ConfigError`), raised before anything expensive
starts. Values in overrides are parsed as YAML scalars (``n=8``, ``beta=2.0``, ``tau_reject=-inf``,
``models.draft=null``). Floats accept ``inf``/``-inf``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from specs_rl.errors import SpecsError

T = TypeVar("T")


class ConfigError(SpecsError):
    """A config file or override that cannot be applied; the message names the key."""


def _parse_scalar(text: str) -> Any:
    low = text.strip().lower()
    if low in ("inf", "+inf", "infinity"):
        return math.inf
    if low in ("-inf", "-infinity"):
        return -math.inf
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


class RawValue(str):
    """The text of a ``key=value`` override, parsed only once the field's type is known: a string field keeps the
    text as typed (``data.prompt_template={problem}`` is not a YAML mapping), any other field gets it parsed."""


def _accepts_str(tp: Any) -> bool:
    if tp is str:
        return True
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and str in typing.get_args(tp)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (converting where lossless) or raise ConfigError."""
    if isinstance(value, RawValue):
        parsed = _parse_scalar(value)
        value = str(value) if _accepts_str(tp) and isinstance(parsed, (dict, list)) else parsed
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: cannot be {value!r}")
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {allowed}, got {value!r}")
        return value
    if origin in (list, tuple, Sequence):
        (inner, *_) = typing.get_args(tp) or (Any,)
        if isinstance(value, str) and origin is not str:
            value = [_parse_scalar(v) for v in value.split(",")] if value else []
        if not isinstance(value, (list, tuple)):
            value = [value]  # a one-element list given as a scalar: n=8
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            parsed = _parse_scalar(value)
            if isinstance(parsed, (int, float)) and not isinstance(parsed, bool):
                return float(parsed)
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _lift_flat(cls: type, data: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Move top-level keys that belong to a ``flat`` section (a field whose metadata says ``flat: True``) into it:
    ``K=6`` is ``tabular.K=6``. A key given both ways is an error naming both."""
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    owners = {
        sub.name: f.name
        for f in dataclasses.fields(cls)
        if f.metadata.get("flat")
        for sub in dataclasses.fields(hints[f.name])
        if sub.name not in names
    }
    lifted = {k: v for k, v in data.items() if k not in owners}
    for k, v in data.items():
        if k in owners:
            given = lifted.get(owners[k])
            if given is not None and not isinstance(given, dict):
                raise ConfigError(f"{prefix}{owners[k]} must be a mapping of keys, got {given!r}")
            section = dict(given or {})
            if k in section:
                raise ConfigError(
                    f"{prefix}{k} is given twice: as {prefix}{k} and as {prefix}{owners[k]}.{k}"
                )
            section[k] = v
            lifted[owners[k]] = section
    return lifted


def _build(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    names = {f.name: f for f in dataclasses.fields(cls)}
    if any(f.metadata.get("flat") for f in names.values()):
        data = _lift_flat(cls, data, prefix)
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix + unknown[0]!r}; known keys: {', '.join(sorted(names))}"
        )
    hints = _hints(cls)
    kwargs = {}
    for k, v in data.items():
        f = names[k]
        if (
            isinstance(v, dict)
            and dataclasses.is_dataclass(hints[k])
            and f.default_factory is not dataclasses.MISSING
        ):
            # a partial section overrides the field's own default instance, not the class defaults
            default = f.default_factory()
            if dataclasses.is_dataclass(default):
                v = _merge(_fields_dict(default), v)
        kwargs[k] = _coerce(v, hints[k], f"{prefix}{k}")
    return cls(**kwargs)


def _fields_dict(obj: Any) -> dict[str, Any]:
    """A dataclass instance's fields as a dict, nested dataclasses as dicts (so they merge key by key)."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        out[f.name] = _fields_dict(value) if dataclasses.is_dataclass(value) else value
    return out


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-safe dict of a config (inf written as the strings 'inf' / '-inf')."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and math.isinf(x):
            return "inf" if x > 0 else "-inf"
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    return clean(dataclasses.asdict(cfg))


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> ``{"a": {"b": 1}, "c": "x"}``."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, _, text = item.partition("=")
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {p!r}")
        node[parts[-1]] = RawValue(text)
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping")
    return data


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = (), *, resolved: bool = False
) -> T:
    """Defaults of ``cls`` <- YAML at ``path`` <- ``key=value`` overrides; validated if ``cls`` has ``validate()``.

    ``validate`` may raise ValueError; it is re-raised as ConfigError so entry points need one except clause.
    ``resolved``: the file is a resolved config written beside results (:func:`save_config`, every key spelled
    out), so only the overrides count as given (:func:`given_keys`), not every key of the file.
    """
    layers = [load_yaml(path) if path is not None else {}, parse_overrides(overrides)]
    # flat keys join their section within each layer, so an override (K=6) overrides the file's tabular.K
    lifted = [_lift_flat(cls, layer, "") for layer in layers]
    data = _merge(*lifted)
    cfg = _build(cls, data)
    given = lifted[1] if resolved else data
    object.__setattr__(cfg, _GIVEN, frozenset(given))  # not a field: never saved, compared or logged
    if hasattr(cfg, "validate"):
        try:
            cfg.validate()
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return cfg


_GIVEN = "_given_keys"


def given_keys(cfg: Any) -> frozenset[str]:
    """The top-level keys a config file or the command line set (as opposed to the dataclass defaults)."""
    return getattr(cfg, _GIVEN, frozenset())


def typed_fields(cls: type, data: dict[str, Any], prefix: str) -> dict[str, Any]:
    """``data`` checked against the fields of ``cls`` (a subset of them), each value converted to its field's type;
    an unknown key or a wrong type is a :class:`ConfigError` naming ``prefix.key``."""
    names = {f.name for f in dataclasses.fields(cls)}
    hints = _hints(cls)
    out = {}
    for k, v in data.items():
        if k not in names:
            raise ConfigError(f"unknown key {prefix + k!r}; known keys: {', '.join(sorted(names))}")
        out[k] = _coerce(v, hints[k], f"{prefix}{k}")
    return out


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (JSON-safe values) beside the results."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def config_json(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), sort_keys=True)


def describe(cls: type, prefix: str = "", defaults: Any = None) -> list[str]:
    """One line per field (nested fields dotted): name, type, default, help text. A section's defaults are read from
    the instance its field's default_factory makes (``defaults`` below the top level), so a recipe's own defaults
    (theory converge's ``beta`` 2.0) are the ones shown, not the section class's."""
    lines = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        made = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(tp):
            if f.metadata.get("flat"):
                lines.append(f"  {prefix}{f.name}.* (its keys may also be given without '{f.name}.'):")
            inner = getattr(defaults, f.name) if defaults is not None else made
            lines.extend(
                describe(tp, f"{prefix}{f.name}.", inner if dataclasses.is_dataclass(inner) else None)
            )
            continue
        if defaults is not None:
            default = getattr(defaults, f.name)
        else:
            default = f.default if f.default is not dataclasses.MISSING else made
        tname = getattr(tp, "__name__", str(tp).replace("typing.", ""))
        lines.append(f"  {prefix}{f.name} ({tname}, default {default!r}): {f.metadata.get('help', '')}")
    return lines


def split_argv(argv: Sequence[str]) -> tuple[str | None, list[str], bool]:
    """The project's one command line: ``[--config PATH] [key=value | --key value | --key=value | --flag] ...``.

    Returns ``(config path, ["key=value", ...], help asked)``; ``--flag`` alone means ``flag=true`` and dashes in
    option names become underscores. A bare word is a :class:`ConfigError`."""
    argv = list(argv)
    path, items, wants_help = None, [], False
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-h", "--help"):
            wants_help = True
        elif a == "--config":
            if i + 1 >= len(argv):
                raise ConfigError("--config needs a path")
            path, i = argv[i + 1], i + 1
        elif a.startswith("--config="):
            path = a.split("=", 1)[1]
        elif a.startswith("--"):
            key, eq, val = a[2:].partition("=")
            if not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--") and "=" not in argv[i + 1]:
                val, i = argv[i + 1], i + 1
            elif not eq:
                val = "true"
            items.append(f"{key.replace('-', '_')}={val}")
        elif "=" in a:
            items.append(a)
        else:
            raise ConfigError(f"unexpected argument {a!r}: use key=value (or --config PATH)")
        i += 1
    return path, items, wants_help


def config_from_argv(cls: type[T], argv: Sequence[str], prog: str, default_config: str | None = None) -> T:
    """Parse ``[--config PATH] [key=value ...]`` (:func:`split_argv`; ``--help`` lists every key) into a validated
    ``cls``."""
    path, overrides, wants_help = split_argv(argv)
    if wants_help:
        print(f"usage: {prog} [--config PATH] [key=value ...]\n\nkeys:")
        print("\n".join(describe(cls)))
        raise SystemExit(0)
    return load_config(cls, path if path is not None else default_config, overrides)
