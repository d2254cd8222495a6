"""Nested dataclass configs: defaults <- YAML file <- ``a.b=value`` overrides.

Unknown keys and wrong types are errors that name the key (:class:`ConfigError`; an unknown key gets the closest
known one: ``unknown config key 'bta'; did you mean 'beta'?``), raised before anything expensive starts. Values in
overrides are parsed as YAML scalars (``n=8``, ``beta=2.0``, ``tau_reject=-inf``, ``models.draft=null``). Floats
accept ``inf``/``-inf``.

**Configs by composition.** A recipe's config holds its parts as sections (``CompareConfig{run, grid, report}``,
``RunConfig{search, backend, tabular, hf, vllm, data, ...}``); no config class inherits another. Every setting has
its full dotted path (``run.search.beta``, ``run.tabular.K``, ``grid.methods``) and may be typed so.

**The alias table (flat sections).** A section field marked ``flat`` (``field(metadata={"flat": True})``, or
:data:`PART` for a part of a recipe's config, whose name messages leave out) lends its keys to the level above,
recursively, so the short keys users type keep working: in a compare config ``beta`` is
``run.search.beta``, ``K`` is ``run.tabular.K``, ``search.beta`` is ``run.search.beta``, ``hf.draft.temperature``
is ``run.hf.draft.temperature``, ``methods`` is ``grid.methods``, ``wandb`` is ``report.wandb``. The table of a
class is :func:`flat_aliases` (``--help`` prints each key as typed with its full path in brackets). Rules:

- a key the level holds itself wins over a flat section's key of the same name (that one is reached by its path);
- a name two flat sections of one level would both claim is a :class:`ConfigError` raised when the class is first
  used (a config class with an ambiguous table never loads);
- a key given both ways in one file (``beta`` and ``run.search.beta``) is an error naming both; a command-line
  override replaces the file's value whichever way either is spelled.

A resolved config written beside results (:func:`save_config`) is nested by full paths and loads back; resolved
files of the flat layout written before configs were composed load too (:func:`load_config` ``resolved``).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import types
import typing
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from specs_rl.errors import SpecsError

T = TypeVar("T")


class ConfigError(SpecsError):
    """A config file or override that cannot be applied; the message names the key."""


# The metadata of a section that is a part of a recipe's config (``run``, ``search``, ``grid``, ``report``): flat, and
# left out of the key names messages show (``beta must be >= 0``, not ``run.search.beta ...``). A flat section that
# is not a part (``tabular``) keeps its name in messages (``tabular.K must be an integer``).
PART = {"flat": True, "part": True}


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


def _section_type(tp: Any) -> type | None:
    """The dataclass of a section field (``X`` or ``X | None``), else None."""
    if dataclasses.is_dataclass(tp):
        return tp  # type: ignore[return-value]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1 and dataclasses.is_dataclass(inner[0]):
            return inner[0]
    return None


@functools.cache
def flat_aliases(cls: type) -> dict[str, str]:
    """The alias table of ``cls``: every key that may be given at this level through a ``flat`` section (a field
    whose metadata says ``flat: True``), mapped to its full dotted path below ``cls`` (``beta`` ->
    ``run.search.beta``). Recursive: a flat section's own flat sections lift their keys two levels up. A key this
    level holds itself is not an alias (the section's key of that name is reached by its full path). A name two
    flat sections both claim is a :class:`ConfigError`, raised when the class is first used."""
    own = {f.name for f in dataclasses.fields(cls)}
    hints = _hints(cls)
    out: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        sub = _section_type(hints[f.name]) if f.metadata.get("flat") else None
        if sub is None:
            continue
        claims = {g.name: g.name for g in dataclasses.fields(sub)}
        claims.update(flat_aliases(sub))
        for name, path in claims.items():
            if name in own:
                continue
            full = f"{f.name}.{path}"
            if name in out:
                raise ConfigError(
                    f"{cls.__name__}: key {name!r} is claimed by two flat sections ({out[name]} and {full}); "
                    "rename one or unmark a section flat"
                )
            out[name] = full
    return out


def _unknown(key: str, prefix: str, known: Sequence[str], what: str = "config key") -> ConfigError:
    """``unknown config key 'bta'; did you mean 'beta'?`` (else the known keys)."""
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    if close:
        return ConfigError(f"unknown {what} {prefix + key!r}; did you mean {prefix + close[0]!r}?")
    return ConfigError(f"unknown {what} {prefix + key!r}; known keys: {', '.join(sorted(known))}")


def _lift_flat(cls: type, data: dict[str, Any], prefix: str) -> dict[str, Any]:
    """``data`` with every key spelled by its full path below ``cls``, recursively: a key of a ``flat`` section
    given at this level (:func:`flat_aliases`: ``K=6`` is ``tabular.K=6``) moves into its section, and each
    section's mapping is lifted in turn. A key given both ways is an error naming both; unknown keys are left for
    :func:`_build` to refuse."""
    aliases = flat_aliases(cls)
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    lifted: dict[str, Any] = {k: v for k, v in data.items() if k not in aliases}
    for k, v in data.items():
        if k not in aliases:
            continue
        section = aliases[k].split(".")[0]
        given = lifted.get(section)
        if given is not None and not isinstance(given, dict):
            raise ConfigError(f"{prefix}{section} must be a mapping of keys, got {given!r}")
        inner = dict(given or {})
        if k in inner:
            raise ConfigError(f"{prefix}{k} is given twice: as {prefix}{k} and as {prefix}{section}.{k}")
        inner[k] = v
        lifted[section] = inner
    parts = {f.name for f in dataclasses.fields(cls) if f.metadata.get("part")}
    for k, v in list(lifted.items()):
        sub = _section_type(hints[k]) if k in names else None
        if sub is not None and isinstance(v, dict):
            # messages spell keys as users type them: a part's name is left out
            lifted[k] = _lift_flat(sub, v, prefix if k in parts else f"{prefix}{k}.")
    return lifted


def _build(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    names = {f.name: f for f in dataclasses.fields(cls)}
    data = _lift_flat(cls, data, prefix)
    unknown = [k for k in data if k not in names]
    if unknown:
        raise _unknown(unknown[0], prefix, [*names, *flat_aliases(cls)])
    hints = _hints(cls)
    kwargs = {}
    for k, v in data.items():
        f = names[k]
        if (
            isinstance(v, dict)
            and _section_type(hints[k]) is not None
            and f.default_factory is not dataclasses.MISSING
        ):
            # a partial section overrides the field's own default instance, not the class defaults
            default = f.default_factory()
            if dataclasses.is_dataclass(default):
                v = _merge(_fields_dict(default), v)
        sub = _section_type(hints[k])
        if f.metadata.get("part") and sub is not None and isinstance(v, dict):
            kwargs[k] = _build(
                sub, v, prefix
            )  # messages spell keys as users type them: a part's name left out
        else:
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


def full_key(cls: type, key: str) -> str:
    """A key as a user may type it at the top of ``cls`` (``beta``, ``tabular.K``, ``run.search.beta``) spelled by
    its full dotted path (``run.search.beta``, ``run.tabular.K``); a key with no alias is returned as it is."""
    head, dot, rest = key.partition(".")
    alias = flat_aliases(cls).get(head)
    if alias is None:
        return key
    sub: Any = cls
    for part in alias.split(".")[:-1]:
        sub = _section_type(_hints(sub)[part])
    leaf = _section_type(_hints(sub)[alias.split(".")[-1]])
    return alias + (dot + (full_key(leaf, rest) if leaf is not None else rest) if dot else "")


def user_key(cls: type, key: str) -> str:
    """A key of ``cls`` in the spelling :func:`flat_settings` uses (a part's name left out): ``K`` and
    ``run.tabular.K`` are ``tabular.K``, ``search.beta`` is ``beta``."""
    out, sub = [], cls
    for part in full_key(cls, key).split("."):
        f = next((f for f in dataclasses.fields(sub) if f.name == part), None) if sub is not None else None
        if f is None or not f.metadata.get("part"):
            out.append(part)
        sub = _section_type(_hints(sub)[part]) if f is not None else None
    return ".".join(out)


def _leaf_paths(cls: type, data: dict[str, Any], prefix: str = "") -> set[str]:
    """The full dotted paths of the settings ``data`` (already lifted) gives."""
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    out = set()
    for k, v in data.items():
        sub = _section_type(hints[k]) if k in names else None
        if sub is not None and isinstance(v, dict):
            out |= _leaf_paths(sub, v, f"{prefix}{k}.")
        else:
            out.add(f"{prefix}{k}")
    return out


# Keys of resolved configs written before configs were composed: they were "not used" by compare and tune (the
# strategy field was named ``method``); loading such a file drops them, or renames method to strategy.
_LEGACY_KEYS = ("method", "seed", "n")


def legacy_keys(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    known = {f.name for f in dataclasses.fields(cls)} | set(flat_aliases(cls))
    data = dict(data)
    if "method" in data and "strategy" in known and "strategy" not in data:
        data["strategy"] = data["method"]
    return {k: v for k, v in data.items() if k in known or k not in _LEGACY_KEYS}


def top_keys(cls: type) -> frozenset[str]:
    """The keys ``cls`` takes at its top level: its fields and its alias table."""
    return frozenset({f.name for f in dataclasses.fields(cls)} | set(flat_aliases(cls)))


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    resolved: bool = False,
    other_keys: Collection[str] = (),
) -> T:
    """Defaults of ``cls`` <- YAML at ``path`` <- ``key=value`` overrides; validated if ``cls`` has ``validate()``.

    ``validate`` may raise ValueError; it is re-raised as ConfigError so entry points need one except clause.
    ``resolved``: the file is a resolved config written beside results (:func:`save_config`, every key spelled
    out), so only the overrides count as given (:func:`given_keys`), not every key of the file; a resolved file of
    the flat layout written before configs were composed loads too. ``other_keys``: top-level keys of the file
    that belong to other recipes' configs and are skipped (``specs-rl serve`` reads the run of any recipe's file).
    """
    layers = [load_yaml(path) if path is not None else {}, parse_overrides(overrides)]
    if other_keys:
        layers[0] = {k: v for k, v in layers[0].items() if k in top_keys(cls) or k not in other_keys}
    if resolved:
        layers[0] = legacy_keys(cls, layers[0])
    # each layer is spelled by full paths first, so an override (K=6) overrides the file's tabular.K
    lifted = [_lift_flat(cls, layer, "") for layer in layers]
    data = _merge(*lifted)
    cfg = _build(cls, data)
    given = _leaf_paths(cls, lifted[1] if resolved else data)
    object.__setattr__(cfg, _GIVEN, frozenset(given))  # not a field: never saved, compared or logged
    if hasattr(cfg, "validate"):
        try:
            cfg.validate()
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return cfg


_GIVEN = "_given_keys"


def given_keys(cfg: Any, section: str = "") -> frozenset[str]:
    """The settings a config file or the command line set (as opposed to the dataclass defaults), by full dotted
    path (``run.search.beta``); with ``section`` (``run.search``), the names set directly inside it (``beta``)."""
    given = getattr(cfg, _GIVEN, frozenset())
    if not section:
        return given
    prefix = section + "."
    return frozenset(k[len(prefix) :].split(".")[0] for k in given if k.startswith(prefix))


def typed_fields(cls: type, data: dict[str, Any], prefix: str) -> dict[str, Any]:
    """``data`` checked against the fields of ``cls`` (a subset of them), each value converted to its field's type;
    an unknown key or a wrong type is a :class:`ConfigError` naming ``prefix.key``."""
    names = {f.name for f in dataclasses.fields(cls)}
    hints = _hints(cls)
    out = {}
    for k, v in data.items():
        if k not in names:
            raise _unknown(k, prefix, sorted(names), what="key")
        out[k] = _coerce(v, hints[k], f"{prefix}{k}")
    return out


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (JSON-safe values) beside the results."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def flat_settings(cfg: Any) -> dict[str, Any]:
    """Every setting of a config by the dotted key users type: a part's name (:data:`PART`) is left out
    (``beta``, ``tabular.K``, ``methods``, ``data.shard``), other sections keep theirs. JSON-safe values
    (:func:`to_dict`); what a run directory's ``config.json`` holds."""

    def walk(obj: Any, d: dict[str, Any], prefix: str, out: dict[str, Any]) -> None:
        for f in dataclasses.fields(obj):
            value, raw = d[f.name], getattr(obj, f.name)
            if dataclasses.is_dataclass(raw):
                walk(raw, value, prefix if f.metadata.get("part") else f"{prefix}{f.name}.", out)
            elif isinstance(value, dict):
                for k, v in _flat_dict(value, f"{prefix}{f.name}.").items():
                    out[k] = v
            else:
                if f"{prefix}{f.name}" in out:
                    raise ConfigError(f"{type(cfg).__name__}: two settings are both spelled {prefix}{f.name}")
                out[f"{prefix}{f.name}"] = value

    out: dict[str, Any] = {}
    walk(cfg, to_dict(cfg), "", out)
    return out


def _flat_dict(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_dict(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_json(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), sort_keys=True)


def describe(cls: type, prefix: str = "", default: Any = None, *, _root: type | None = None) -> list[str]:
    """One line per setting, by the key a user types (a flat alias, :func:`flat_aliases`) and, where that differs,
    its full dotted path in brackets: name, type, default, help text."""
    root = _root or cls
    inverse = {v: k for k, v in flat_aliases(root).items()}
    if default is None:
        try:
            default = cls()
        except TypeError:
            default = None
    lines = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        value = getattr(default, f.name, None) if default is not None else None
        sub = _section_type(tp)
        if sub is not None and (dataclasses.is_dataclass(value) or value is None and tp is sub):
            lines.extend(describe(sub, f"{prefix}{f.name}.", value, _root=root))
            continue
        full = f"{prefix}{f.name}"
        parts = full.split(".")
        shown = full
        for i in range(len(parts), 0, -1):
            head = ".".join(parts[:i])
            if head in inverse:
                shown = ".".join([inverse[head], *parts[i:]])
                break
        where = f" [{full}]" if shown != full else ""
        if default is None:
            value = (
                f.default
                if f.default is not dataclasses.MISSING
                else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            )
        tname = getattr(tp, "__name__", str(tp).replace("typing.", ""))
        lines.append(f"  {shown}{where} ({tname}, default {value!r}): {f.metadata.get('help', '')}")
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


def peek(argv: Sequence[str], key: str, default: Any = None) -> Any:
    """The value a top-level ``key`` takes in the command line's layered config (the ``--config`` file, then the
    overrides), before the config class is known: what a recipe that runs one of several configs dispatches on
    (``specs-rl bench backend=vllm``). The chosen class then parses the whole command line."""
    path, overrides, _ = split_argv(argv)
    layers = [load_yaml(path) if path is not None else {}, parse_overrides(overrides)]
    value = _merge(*layers).get(key, default)
    return _parse_scalar(value) if isinstance(value, RawValue) else value


def config_from_argv(cls: type[T], argv: Sequence[str], prog: str, default_config: str | None = None) -> T:
    """Parse ``[--config PATH] [key=value ...]`` (:func:`split_argv`; ``--help`` lists every key) into a validated
    ``cls``."""
    path, overrides, wants_help = split_argv(argv)
    if wants_help:
        print(f"usage: {prog} [--config PATH] [key=value ...]\n\nkeys:")
        print("\n".join(describe(cls)))
        raise SystemExit(0)
    return load_config(cls, path if path is not None else default_config, overrides)
