"""The search space of a study and its plan, checked before anything is loaded: each method's parameters
(``tune.methods.<preset>.<param>``: a range or choices over a search setting or a backend key), the reference and the
baselines at fixed settings, a trial's planned run and seed."""

from __future__ import annotations

import dataclasses
import itertools
import math
import types
import typing
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from specs_rl.config import (
    ConfigError,
    given_keys,
    typed_fields,
)
from specs_rl.methods import MATCHED_FRACTION, METHOD_PRESETS, own_settings, shared_clash, uses_n
from specs_rl.run.backends import BACKENDS
from specs_rl.run.grid import PlannedRun, plan_run
from specs_rl.run.tune.config import TuneConfig, with_values
from specs_rl.run.tune.retest import check_test_set, retest_configs
from specs_rl.settings import SearchConfig

SPEC_KEYS = ("low", "high", "log", "step", "choices")


@dataclass(frozen=True)
class Param:
    """One tuned setting: a range (``kind`` int or float, optionally on a log scale or a step grid) or choices."""

    key: str
    kind: str  # "int" | "float" | "choice"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    @property
    def backend(self) -> bool:
        """A key of the backend section (the task is built for its value), not a search setting."""
        return "." in self.key

    def probes(self) -> list[Any]:
        """The values checked before any trial: the choices, or both ends of the range."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.key} in {list(self.choices)}"
        scale = " log" if self.log else (f" step {self.step:g}" if self.step else "")
        return f"{self.key} in [{self.low:g}, {self.high:g}]{scale}"


@dataclass(frozen=True)
class MethodSpace:
    method: str
    params: tuple[Param, ...]
    trials: int
    grid: dict[str, list[Any]] | None = None  # every param a choice: the whole grid (run exhaustively)
    start: tuple[dict[str, Any], ...] = ()  # points tried first (tune.start)


@dataclass(frozen=True)
class StudyPlan:
    """What a tune config asks for, checked: the spaces (the first method first), the reference and baselines."""

    spaces: tuple[MethodSpace, ...]
    reference: PlannedRun | None
    baselines: tuple[PlannedRun, ...]

    @property
    def primary(self) -> str:
        return self.spaces[0].method

    def space(self, method: str) -> MethodSpace:
        return next(s for s in self.spaces if s.method == method)


def _leaf_type(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0] if len(args) == 1 else tp
    return tp


def _param_owner(cfg: TuneConfig, method: str, key: str) -> tuple[type, str]:
    """The dataclass that holds ``key`` and the leaf name, or a ConfigError saying what may be tuned."""
    where = f"tune.methods.{method}.{key}"
    if "." in key:
        parts = key.split(".")
        if parts[0] not in BACKENDS:
            raise ConfigError(
                f"{where}: unknown parameter; a dotted key must start with a backend: {', '.join(BACKENDS)}"
            )
        if parts[0] != cfg.run.backend:
            raise ConfigError(f"{where}: the run uses backend {cfg.run.backend}, not {parts[0]}")
        cls: Any = type(getattr(cfg.run, parts[0]))
        for i, p in enumerate(parts[1:], 1):
            names = {f.name for f in dataclasses.fields(cls)}
            if p not in names:
                raise ConfigError(
                    f"{where}: {'.'.join(parts[:i])} has no key {p!r}; its keys: {', '.join(sorted(names))}"
                )
            tp = _leaf_type(typing.get_type_hints(cls)[p])
            if i < len(parts) - 1:
                if not dataclasses.is_dataclass(tp):
                    raise ConfigError(f"{where}: {'.'.join(parts[: i + 1])} is a setting, not a section")
                cls = tp
            elif dataclasses.is_dataclass(tp):
                raise ConfigError(f"{where}: is a section; name one of its settings")
        return cls, parts[-1]
    names = {f.name for f in dataclasses.fields(SearchConfig)}
    if key not in names:
        raise ConfigError(
            f"{where}: unknown parameter; tunable: a search setting ({', '.join(sorted(names - {'strategy'}))}) or "
            f"a key of the {cfg.run.backend}: section (e.g. hf.draft.temperature)"
        )
    pinned = METHOD_PRESETS[method]
    if key == "strategy" or key in pinned:
        value = pinned.get(key, method)
        hint = " (= n): tune n instead" if value is None else ""
        raise ConfigError(f"{where}: {method} pins {key}={value!r}{hint}")
    if key == "n" and not uses_n(method):
        raise ConfigError(f"{where}: {method} draws one sample per step; n changes nothing")
    if key in given_keys(cfg, "run.search"):
        raise ConfigError(
            f"{where}: {key} is also set for every method ({key}={getattr(cfg.run.search, key)!r}); set it in one "
            "place"
        )
    if key in (own_settings(method, cfg.method_settings) or {}):
        raise ConfigError(f"{where}: {key} is also fixed in method_settings.{method}; set it in one place")
    return SearchConfig, key


def parse_param(cfg: TuneConfig, method: str, key: str, spec: Any) -> Param:
    """One ``tune.methods.<method>.<key>`` entry, checked (every message names the key and says what is allowed)."""
    where = f"tune.methods.{method}.{key}"
    owner, leaf = _param_owner(cfg, method, key)
    tp = _leaf_type(typing.get_type_hints(owner)[leaf])
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be {{low, high[, log, step]}} or {{choices: [...]}}, got {spec!r}")
    unknown = [k for k in spec if k not in SPEC_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(SPEC_KEYS)}")
    if "choices" in spec:
        if set(spec) != {"choices"}:
            raise ConfigError(f"{where}: give choices or a range (low, high), not both")
        raw = spec["choices"]
        if not isinstance(raw, list) or not raw:
            raise ConfigError(f"{where}: choices must be a non-empty list, got {raw!r}")
        values = tuple(typed_fields(owner, {leaf: v}, f"{where}.choices: ")[leaf] for v in raw)
        if len(set(values)) != len(values):
            raise ConfigError(f"{where}: choices has duplicates: {list(values)}")
        if len(values) == 1:
            home = f"the top level (n: {values[0]!r})" if key == "n" else f"method_settings.{method}"
            raise ConfigError(f"{where}: one choice leaves nothing to tune; fix it at {home}")
        return Param(key, "choice", choices=values)
    if tp not in (int, float):
        raise ConfigError(
            f"{where}: a {getattr(tp, '__name__', tp)} setting takes choices: [...], not a range"
        )
    for k in ("low", "high"):
        if k not in spec:
            raise ConfigError(f"{where}: a range needs low and high, missing {k}")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    for name, v in (("low", low), ("high", high), ("step", step)):
        if v is None and name == "step":
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{where}.{name} must be a finite number, got {v!r}")
        if tp is int and not float(v).is_integer():
            raise ConfigError(f"{where}.{name} must be an integer ({key} is an integer setting), got {v!r}")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}.log must be true or false, got {log!r}")
    if low > high:
        raise ConfigError(f"{where}: low {low} is above high {high}")
    if low == high:
        raise ConfigError(f"{where}: an empty range (low = high = {low}); fix it in method_settings.{method}")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log scale needs low > 0, got low={low}")
    if step is not None:
        if log:
            raise ConfigError(f"{where}: give log or step, not both")
        if step <= 0:
            raise ConfigError(f"{where}.step must be > 0, got {step}")
        if step > high - low:
            raise ConfigError(f"{where}: step {step} leaves one value in [{low}, {high}]")
    cast = int if tp is int else float
    return Param(
        key, "int" if tp is int else "float", cast(low), cast(high), log, None if step is None else cast(step)
    )


def trial_run(
    cfg: TuneConfig, method: str, params: dict[str, Any], seed: int
) -> tuple[PlannedRun, dict[str, Any]]:
    """The planned run of one trial (its search settings: shared <- fixed own <- tuned, then the preset's pinned
    values) and its backend values (dotted keys; ``{}`` for the run's own backend section)."""
    n = params.get("n", cfg.run.search.n) if uses_n(method) else None
    own = {**(own_settings(method, cfg.method_settings) or {})}
    own.update({k: v for k, v in params.items() if "." not in k and k != "n"})
    run = plan_run(cfg.run.search, method, n, seed, own, n_free=cfg.run.search.n)
    return run, {k: v for k, v in params.items() if "." in k}


def _reference_run(cfg: TuneConfig, method: str, n: int | None, what: str) -> PlannedRun:
    if method in MATCHED_FRACTION:
        raise ConfigError(f"{what}: {method} runs at another method's measured fraction; it cannot run alone")
    n_default = cfg.run.search.n
    n_used = (n if n is not None else n_default) if uses_n(method) else None
    if n_used is not None and n_used < 1:
        raise ConfigError(f"{what}.n must be >= 1, got {n_used}")
    return plan_run(
        cfg.run.search, method, n_used, cfg.seed, own_settings(method, cfg.method_settings), n_free=n_default
    )


def _check_shared(cfg: TuneConfig, method: str, n_values: Sequence[int]) -> None:
    """A shared (top-level) search key set to another value than ``method`` pins is refused, as ``compare`` refuses
    it (the preset would silently override it, and the test re-run's compare config would be refused after the
    whole study): ``score_form: exact`` at the top level with ``specs_paper`` tuned."""
    shared = {k: getattr(cfg.run.search, k) for k in sorted(given_keys(cfg, "run.search") - {"n"})}
    clash = shared_clash(method, shared, n_values)
    if clash:
        raise ConfigError(clash)


def plan_study(cfg: TuneConfig) -> StudyPlan:
    """Every method's space, the reference and the baselines, checked before anything is loaded or written: unknown
    methods and parameters, pinned or doubly set keys, a shared key another value than a method pins, empty or
    inverted ranges, log scales over non-positive values, and every end of every range (every point of an
    all-choices grid up to 256) as a real setting of the method (a ConfigError names the key and the value); the
    test re-run's compare config with every method at its first point."""
    ref = cfg.tune.reference
    for method, n in [*([(ref.method, ref.n)] if ref else []), *((m, None) for m in cfg.tune.baselines)]:
        _check_shared(cfg, method, [n if n is not None else cfg.run.search.n])
    spaces = []
    for method, entries in cfg.tune.methods.items():
        if method in MATCHED_FRACTION:
            raise ConfigError(
                f"tune.methods.{method}: runs at {MATCHED_FRACTION[method]}'s measured fraction; tune that"
            )
        if not isinstance(entries, dict) or not entries:
            raise ConfigError(
                f"tune.methods.{method} must map parameters to ranges or choices, got {entries!r}"
            )
        params = tuple(parse_param(cfg, method, key, spec) for key, spec in entries.items())
        _check_shared(cfg, method, next((p.probes() for p in params if p.key == "n"), [cfg.run.search.n]))
        _probe(cfg, method, params)
        trials = cfg.tune.method_trials.get(method, cfg.tune.trials)
        grid = None
        if all(p.kind == "choice" for p in params):
            grid = {p.key: list(p.choices) for p in params}
            trials = min(trials, math.prod(len(v) for v in grid.values()))
        start = tuple(
            _start_point(cfg, method, params, i, point)
            for i, point in enumerate(cfg.tune.start.get(method, []))
        )
        if start and grid is not None:
            raise ConfigError(
                f"tune.start.{method}: a space of choices runs every point; nothing to start with"
            )
        if len(start) > trials:
            raise ConfigError(f"tune.start.{method}: {len(start)} points for {trials} trials")
        spaces.append(MethodSpace(method, params, trials, grid, start))
    for method in cfg.tune.start:
        if method not in cfg.tune.methods:
            raise ConfigError(f"tune.start.{method}: {method} is not in tune.methods")
    reference = None if ref is None else _reference_run(cfg, ref.method, ref.n, "tune.reference")
    baselines = tuple(_reference_run(cfg, m, None, f"tune.baselines.{m}") for m in cfg.tune.baselines)
    plan = StudyPlan(tuple(spaces), reference, baselines)
    # the test re-run's config (tune.test.set's keys, its grid, every method's own settings) loads, shown with each
    # method's first point
    points = {}
    for space in spaces:
        point = {p.key: p.probes()[0] for p in space.params}
        points[space.method] = (point, dict(trial_run(cfg, space.method, point, cfg.seed)[0].settings))
    retest_configs(cfg, plan, points)
    check_test_set(cfg)  # the held-out set gives no tune problem again
    return plan


def _start_point(cfg: TuneConfig, method: str, params: Sequence[Param], i: int, point: Any) -> dict[str, Any]:
    """A ``tune.start`` point: every tuned key, each value inside its range or choices, a valid setting."""
    where = f"tune.start.{method}[{i}]"
    keys = [p.key for p in params]
    if not isinstance(point, dict) or sorted(point) != sorted(keys):
        raise ConfigError(f"{where} must give every tuned key of {method} ({', '.join(keys)}), got {point!r}")
    out = {}
    for p in params:
        v = point[p.key]
        if p.kind == "choice":
            ok = v in p.choices
        else:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and p.low <= v <= p.high
            v = int(v) if p.kind == "int" and ok and float(v).is_integer() else (float(v) if ok else v)
            ok = ok and (p.kind != "int" or isinstance(v, int))
        if not ok:
            raise ConfigError(f"{where}.{p.key}: {point[p.key]!r} is outside {p.describe()}")
        out[p.key] = v
    try:
        _, values = trial_run(cfg, method, out, cfg.seed)
        with_values(cfg.run, values)
    except (ConfigError, ValueError) as e:
        raise ConfigError(f"{where}: not a valid setting ({e})") from None
    return out


def _probe(cfg: TuneConfig, method: str, params: Sequence[Param]) -> None:
    """Each end of each range (others at their first value), or every point of a small all-choices grid, is a valid
    setting of ``method``."""
    first = {p.key: p.probes()[0] for p in params}
    points = [{**first, p.key: v} for p in params for v in p.probes()]
    if all(p.kind == "choice" for p in params) and math.prod(len(p.choices) for p in params) <= 256:
        points = [
            dict(zip([p.key for p in params], combo))
            for combo in itertools.product(*(p.choices for p in params))
        ]
    for point in points:
        try:
            _, values = trial_run(cfg, method, point, cfg.seed)
            with_values(cfg.run, values)
        except (ConfigError, ValueError) as e:
            shown = ", ".join(f"{k}={v}" for k, v in point.items())
            raise ConfigError(f"tune.methods.{method}: {shown} is not a valid setting ({e})") from None


def check_rungs(cfg: TuneConfig, problems: int) -> None:
    """The rungs lie below the number of tune problems (known once the task is built, before any trial)."""
    bad = [r for r in cfg.tune.rungs if r >= problems]
    if bad:
        raise ConfigError(
            f"tune.rungs must be below the number of tune problems ({problems}): {bad[0]} is not; a trial that "
            "passes every rung searches all of them"
        )


def trial_seed(seed: int, method: str, number: int) -> int:
    """The search seed of trial ``number`` of ``method``'s study: a hash of (study seed, method, number)."""
    return int(np.random.SeedSequence([seed, zlib.crc32(method.encode()), number]).generate_state(1)[0])
