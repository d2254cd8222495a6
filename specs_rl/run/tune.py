"""Tuning a method's settings on a tune split (``specs-rl tune``): the config, the search space, trials evaluated on
growing prefixes of the problems (successive halving), the Pareto front and the rules that choose a setting.

This module never imports optuna; :mod:`specs_rl.run.study` drives an Optuna study with these pieces.

**Space.** ``tune.methods.<preset>.<param>`` is ``{low, high, log, step}`` or ``{choices: [...]}``; a param is a
:class:`~specs_rl.settings.SearchConfig` key (``n``, ``beta``, ``tau_reject``, ...) or a key of the run's backend
section (``hf.draft.temperature``). A tuned search key becomes the method's own setting (as
``method_settings.<preset>`` in a compare config); a tuned backend key needs the task built for its value
(:class:`TaskCache`).

**Rungs.** A trial searches the first ``rungs[0]`` problems, then the first ``rungs[1]``, ..., then all of them,
and stops early when another trial of its method beats it at a rung (:mod:`specs_rl.run.trials`).

**Choice.** On each method's completed trials (the whole tune set): ``max_accuracy_under_latency`` (the highest
accuracy with mean latency <= ``latency_s``) or ``min_latency_within`` (the lowest mean latency with accuracy >= the
reference's - ``points``), :func:`choose`.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import types
import typing
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from specs_rl.config import (
    PART,
    ConfigError,
    RawValue,
    full_key,
    _parse_scalar,  # the override parser (inf, -inf, YAML)
    given_keys,
    to_dict,
    typed_fields,
)
from specs_rl.errors import SpecsError
from specs_rl.methods import MATCHED_FRACTION, METHOD_PRESETS, shared_clash, uses_n
from specs_rl.run.backends import BACKENDS
from specs_rl.run.config import RunConfig
from specs_rl.run.grid import PRESENTATION_KEYS, PlannedRun, plan_run
from specs_rl.run.report import ReportConfig, pareto_front
from specs_rl.settings import SearchConfig

RULES = ("max_accuracy_under_latency", "min_latency_within")
SAMPLERS = ("tpe", "nsga2", "random")
SPEC_KEYS = ("low", "high", "log", "step", "choices")
# Keys that say how long to tune and how to show it, not what a trial computes: they may change when a study is
# resumed (run 10 more trials: tune.trials=30).
TUNE_PRESENTATION_KEYS = (
    *PRESENTATION_KEYS,
    "tune.trials",
    "tune.method_trials",
    "tune.timeout_s",
    "tune.task_cache",
    "tune.heartbeat_s",
    "tune.grace_s",
    "tune.test.run",
    *(f"tune.method_trials.{m}" for m in METHOD_PRESETS),  # the mapping's keys, as config.json flattens them
)


# ------------------------------------------------------------------------------------------------------------------
# The config


@dataclass
class ReferenceSpec:
    """A method at fixed settings (its ``method_settings`` if any), measured on the tune set once."""

    method: str = field(default="beam_search_target", metadata={"help": "a method preset"})
    n: int | None = field(default=None, metadata={"help": "its n (null: the top-level n)"})


@dataclass
class ChoiceRule:
    """How a setting is chosen from a method's completed trials; fixed before any trial runs."""

    rule: str = field(default="min_latency_within", metadata={"help": f"one of {', '.join(RULES)}"})
    latency_s: float | None = field(
        default=None,
        metadata={"help": "max_accuracy_under_latency: the budget B on mean latency per problem"},
    )
    points: float | None = field(
        default=None,
        metadata={"help": "min_latency_within: accuracy may be this many points below the reference's"},
    )


@dataclass
class RetestConfig:
    """The chosen settings re-run on held-out problems in a fresh ``specs-rl compare`` run (``out/test``)."""

    run: bool = field(default=True, metadata={"help": "run it (false: only write chosen.yaml)"})
    set: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "dotted keys that make the held-out set, e.g. {data.split: test, data.limit: 100} or "
            "{tabular.tree_seed: 1000}; must not be empty"
        },
    )
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "seeds of the compare run"})


@dataclass
class TuneSection:
    """``tune:``: what to tune, how long, how to stop trials early, how to choose, how to re-test."""

    methods: dict[str, dict[str, Any]] = field(
        default_factory=dict,
        metadata={
            "help": "{preset: {param: {low, high, log, step} | {choices: [...]}}}; a param is a SearchConfig key "
            "or a backend key (hf.draft.temperature); the first method is the one the study is for"
        },
    )
    trials: int = field(
        default=20,
        metadata={
            "help": "trials per method, stopped ones included (an all-choices space: at most its grid)"
        },
    )
    method_trials: dict[str, int] = field(
        default_factory=dict, metadata={"help": "trials of some methods, e.g. {rsd: 6}"}
    )
    timeout_s: float | None = field(
        default=None,
        metadata={"help": "no trial starts once the study's trials have taken this long (over restarts)"},
    )
    rungs: list[int] = field(
        default_factory=list,
        metadata={
            "help": "problem counts at which a trial may be stopped, increasing and below the number of tune "
            "problems; a trial that passes them all searches every problem ([]: no early stopping)"
        },
    )
    prune_points: float = field(
        default=0.0,
        metadata={
            "help": "a trial is stopped by one more accurate by more than this (points) at no higher latency"
        },
    )
    prune_latency: float = field(
        default=0.1,
        metadata={"help": "... or by one faster by more than this fraction (0.1: 10%) at no lower accuracy"},
    )
    sampler: str = field(default="tpe", metadata={"help": f"one of {', '.join(SAMPLERS)}"})
    startup_trials: int = field(
        default=8, metadata={"help": "tpe: random trials before the model of good settings is used"}
    )
    reference: ReferenceSpec | None = field(
        default=None,
        metadata={
            "help": "a method at fixed settings measured on the tune set (rule min_latency_within, paired)"
        },
    )
    baselines: list[str] = field(
        default_factory=list,
        metadata={"help": "methods measured once at fixed settings, for the plot and the test"},
    )
    paired: bool = field(
        default=False,
        metadata={
            "help": "wall clock: every trial problem is searched by the trial and the reference in turn, and a "
            "trial's latency is its ratio to the reference on the same problems x the reference's latency"
        },
    )
    choose: ChoiceRule = field(default_factory=ChoiceRule)
    test: RetestConfig = field(default_factory=RetestConfig)
    storage: str | None = field(
        default=None,
        metadata={
            "help": "an Optuna RDB URL (postgresql://..., mysql+pymysql://...) shared by workers, $VARS expanded "
            "(null: out/study.db)"
        },
    )
    study_name: str | None = field(
        default=None, metadata={"help": "the studies' name prefix (null: derived from the config)"}
    )
    heartbeat_s: int = field(default=5, metadata={"help": "seconds between a running trial's heartbeats"})
    grace_s: int = field(
        default=15,
        metadata={"help": "a running trial with no heartbeat for this long is failed and re-asked"},
    )
    task_cache: int = field(
        default=2, metadata={"help": "tasks kept built (a tuned backend key builds one per value)"}
    )
    start: dict[str, list[dict[str, Any]]] = field(
        default_factory=dict,
        metadata={
            "help": "settings each method's study tries first, e.g. a hand-chosen one: {specs: [{n: 4, beta: 10, "
            "...}]} (every tuned key, inside the space); they count as trials"
        },
    )


@dataclass
class TuneConfig:
    """``specs-rl tune``: the task and shared settings (``run``, as ``specs-rl compare``'s; its keys also given at
    the top level: ``n``, ``beta``, ``backend``, ``tabular.K``, ...), how it is shown (``report``), the study's seed,
    warm-up and fixed own settings, and the ``tune:`` section."""

    run: RunConfig = field(
        default_factory=lambda: RunConfig(out="runs/tune"),
        metadata={
            "help": "the task and the settings every method shares (n: the methods' n unless tuned)",
            **PART,
        },
    )
    report: ReportConfig = field(default_factory=ReportConfig, metadata={"help": "how it is shown", **PART})
    seed: int = field(
        default=0,
        metadata={"help": "the study's seed: trial k of method m searches with a seed from (seed, m, k)"},
    )
    warmup: int = field(
        default=1,
        metadata={
            "help": "problems searched, unrecorded, by each method on each built task before it is timed"
        },
    )
    method_settings: dict[str, dict[str, Any]] = field(
        default_factory=dict,
        metadata={"help": "fixed own settings per method; a tuned key may not be set here too"},
    )
    tune: TuneSection = field(default_factory=TuneSection)

    def validate(self) -> None:
        self.run.validate()
        t = self.tune
        # key=value overrides inside the free-form mappings arrive as text (tune.methods.specs.beta.low=2)
        t.methods, t.method_trials, t.start = _parsed(t.methods), _parsed(t.method_trials), _parsed(t.start)
        t.test.set = _parsed(t.test.set)
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if not t.methods:
            raise ValueError("tune.methods must name at least one method and its parameters")
        named = [*t.methods, *self.method_settings, *t.method_trials, *t.baselines]
        for m in [*named, *([t.reference.method] if t.reference else [])]:
            if m not in METHOD_PRESETS:
                raise ValueError(f"unknown method {m!r} in tune; known: {', '.join(METHOD_PRESETS)}")
        if t.trials < 1:
            raise ValueError(f"tune.trials must be >= 1, got {t.trials}")
        for m, k in t.method_trials.items():
            if m not in t.methods:
                raise ValueError(f"tune.method_trials.{m}: {m} is not in tune.methods")
            if not isinstance(k, int) or k < 1:
                raise ValueError(f"tune.method_trials.{m} must be an integer >= 1, got {k!r}")
        if t.timeout_s is not None and not t.timeout_s > 0:
            raise ValueError(f"tune.timeout_s must be > 0 or null, got {t.timeout_s}")
        if any(r < 1 for r in t.rungs) or any(b <= a for a, b in itertools.pairwise(t.rungs)):
            raise ValueError(f"tune.rungs must be increasing problem counts >= 1, got {t.rungs}")
        for key in ("prune_points", "prune_latency"):
            if not (getattr(t, key) >= 0 and math.isfinite(getattr(t, key))):
                raise ValueError(f"tune.{key} must be a number >= 0, got {getattr(t, key)}")
        if t.sampler not in SAMPLERS:
            raise ValueError(f"tune.sampler must be one of {', '.join(SAMPLERS)}, got {t.sampler!r}")
        if t.startup_trials < 0 or t.task_cache < 1 or t.heartbeat_s < 1 or t.grace_s <= t.heartbeat_s:
            raise ValueError(
                "tune needs startup_trials >= 0, task_cache >= 1, heartbeat_s >= 1 and grace_s > heartbeat_s, got "
                f"{t.startup_trials}, {t.task_cache}, {t.heartbeat_s}, {t.grace_s}"
            )
        if len(set(t.baselines)) != len(t.baselines):
            raise ValueError(f"tune.baselines has duplicates: {t.baselines}")
        if t.reference is not None and t.reference.method in t.baselines:
            raise ValueError(f"tune.baselines: {t.reference.method} is already the reference")
        if t.paired and t.reference is None:
            raise ValueError("tune.paired needs tune.reference (the method each trial takes turns with)")
        _validate_rule(t.choose, t.reference)
        if not t.test.set:
            raise ValueError(
                "tune.test.set must say what makes the held-out problems, e.g. {data.split: test} or "
                "{tabular.tree_seed: 1000}"
            )
        if not t.test.seeds or len(set(t.test.seeds)) != len(t.test.seeds):
            raise ValueError(f"tune.test.seeds must be distinct and not empty, got {t.test.seeds}")
        self.method_settings = {
            m: typed_fields(SearchConfig, own, f"method_settings.{m}.")
            for m, own in self.method_settings.items()
        }


def _parsed(x: Any) -> Any:
    """Override text (:class:`~specs_rl.config.RawValue`) inside nested mappings and lists parsed as YAML."""
    if isinstance(x, RawValue):
        return _parse_scalar(x)
    if isinstance(x, dict):
        return {k: _parsed(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_parsed(v) for v in x]
    return x


def _validate_rule(c: ChoiceRule, reference: ReferenceSpec | None) -> None:
    if c.rule not in RULES:
        raise ValueError(f"tune.choose.rule must be one of {', '.join(RULES)}, got {c.rule!r}")
    if c.rule == "max_accuracy_under_latency":
        if c.latency_s is None or not (c.latency_s > 0 and math.isfinite(c.latency_s)):
            raise ValueError(
                f"tune.choose.latency_s must be a number of seconds > 0 for {c.rule}, got {c.latency_s}"
            )
        if c.points is not None:
            raise ValueError(f"tune.choose.points is not read by {c.rule}: remove it")
    else:
        if c.points is None or not (c.points >= 0 and math.isfinite(c.points)):
            raise ValueError(f"tune.choose.points must be a number >= 0 for {c.rule}, got {c.points}")
        if c.latency_s is not None:
            raise ValueError(f"tune.choose.latency_s is not read by {c.rule}: remove it")
        if reference is None:
            raise ValueError(
                f"tune.choose.rule {c.rule} needs tune.reference (e.g. {{method: beam_search_target, n: 4}})"
            )


# ------------------------------------------------------------------------------------------------------------------
# The search space


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
    if key in cfg.method_settings.get(method, {}):
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
    own = {**cfg.method_settings.get(method, {})}
    own.update({k: v for k, v in params.items() if "." not in k and k != "n"})
    run = plan_run(cfg.run.search, method, n, seed, own, n_free=cfg.run.search.n)
    return run, {k: v for k, v in params.items() if "." in k}


def _replace_path(obj: Any, path: Sequence[str], value: Any) -> Any:
    if len(path) == 1:
        return dataclasses.replace(obj, **{path[0]: value})
    return dataclasses.replace(obj, **{path[0]: _replace_path(getattr(obj, path[0]), path[1:], value)})


def get_path(obj: Any, path: Sequence[str]) -> Any:
    for p in path:
        obj = getattr(obj, p)
    return obj


def with_values(run: RunConfig, values: dict[str, Any]) -> RunConfig:
    """``run`` with dotted keys (``hf.draft.temperature``) replaced; the backend section validated again."""
    for key, value in sorted(values.items()):
        run = _replace_path(run, key.split("."), value)
    if values:
        try:
            getattr(run, run.backend).validate()
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return run


def _reference_run(cfg: TuneConfig, method: str, n: int | None, what: str) -> PlannedRun:
    if method in MATCHED_FRACTION:
        raise ConfigError(f"{what}: {method} runs at another method's measured fraction; it cannot run alone")
    n_default = cfg.run.search.n
    n_used = (n if n is not None else n_default) if uses_n(method) else None
    if n_used is not None and n_used < 1:
        raise ConfigError(f"{what}.n must be >= 1, got {n_used}")
    return plan_run(
        cfg.run.search, method, n_used, cfg.seed, cfg.method_settings.get(method), n_free=n_default
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
    check_test_set(cfg)
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


def test_run(cfg: TuneConfig) -> RunConfig:
    """The run of the held-out problems: the tune run with ``tune.test.set``'s keys applied (typed as the run's)."""
    run = cfg.run
    for key, value in sorted(cfg.tune.test.set.items()):
        path = full_key(RunConfig, key).split(".")
        *parents, leaf = path
        try:
            owner = type(get_path(run, parents))
            typed = typed_fields(owner, {leaf: value}, f"tune.test.set.{'.'.join(parents + [''])}")[leaf]
        except (AttributeError, TypeError):
            raise ConfigError(f"tune.test.set.{key}: not a key of the run") from None
        run = _replace_path(run, path, typed)
    return run


def _span(start: int, count: int | None) -> tuple[int, float]:
    return start, math.inf if count is None else start + count


def check_test_set(cfg: TuneConfig) -> None:
    """Tuning never sees its test set: ``tune.test.set`` must not give the tune problems again. Refused in one line,
    before anything is loaded: on a random tabular world, tree seeds shared by the two sets (or one tree file for
    both); on a dataset, the same source and split with overlapping slices. (:func:`check_test_ids` compares the
    problem ids once the tune problems are loaded.)"""
    tune, test = cfg.run, test_run(cfg)
    where = f"tune.test.set={cfg.tune.test.set}"
    if tune.backend != test.backend:
        return
    if not BACKENDS[tune.backend].uses_data:
        a, b = tune.tabular, test.tabular
        if a.tree is not None or b.tree is not None:
            if a.tree == b.tree:
                raise ConfigError(f"{where} overlaps the tune problems: both search the tree file {a.tree}")
            return
        lo, hi = max(a.tree_seed, b.tree_seed), min(a.tree_seed + a.problems, b.tree_seed + b.problems)
        if lo < hi:
            raise ConfigError(
                f"{where} overlaps the tune problems: tree seeds {lo}..{hi - 1} are in both (tune: "
                f"{a.tree_seed}..{a.tree_seed + a.problems - 1}, test: {b.tree_seed}..{b.tree_seed + b.problems - 1}); "
                "move tabular.tree_seed past the tune trees"
            )
        return
    a, b = tune.data, test.data
    source = ("dataset", "path", "subset", "split", "toymath")
    if all(getattr(a, k) == getattr(b, k) for k in source):
        (s1, e1), (s2, e2) = _span(a.start, a.limit), _span(b.start, b.limit)
        if max(s1, s2) < min(e1, e2):
            raise ConfigError(
                f"{where} overlaps the tune problems: the same {a.dataset} split {a.split!r} with overlapping "
                f"slices (tune: start {a.start}, limit {a.limit}; test: start {b.start}, limit {b.limit}); use "
                "another split or a disjoint slice"
            )


def check_test_ids(cfg: TuneConfig, tune_ids: Sequence[str]) -> None:
    """The held-out problems of a dataset share no problem id with the tune problems (read once the tune task is
    built, before any trial; ids that are only row positions say nothing across splits and are not compared)."""
    from specs_rl.datasets import load_problems

    test = test_run(cfg)
    if not BACKENDS[test.backend].uses_data:
        return
    try:
        problems = load_problems(test.data)
    except SpecsError as e:
        raise ConfigError(f"tune.test.set: the held-out problems do not load ({e})") from None
    named = {p.id for p in problems if p.id != str(p.meta.get("row"))}
    shared = sorted(named & set(tune_ids))
    if shared:
        more = f" and {len(shared) - 3} more" if len(shared) > 3 else ""
        raise ConfigError(
            f"tune.test.set={cfg.tune.test.set} overlaps the tune problems: problem ids {', '.join(shared[:3])}{more} "
            "are in both"
        )


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


# ------------------------------------------------------------------------------------------------------------------
# The front and the choice


def front(points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points no other beats in both accuracy and mean latency, by increasing latency."""
    return [points[i] for i in pareto_front([(p["latency_s"], p["accuracy"]) for p in points])]


def rule_text(rule: ChoiceRule, reference: str | None = None, reference_accuracy: float | None = None) -> str:
    """The rule in words (with the reference's measured accuracy once known)."""
    if rule.rule == "max_accuracy_under_latency":
        return f"highest accuracy with mean latency <= {rule.latency_s:g} s"
    ref = reference or "the reference"
    if reference_accuracy is not None:
        ref += f" ({reference_accuracy:.3f})"
    return f"lowest mean latency with accuracy >= {ref} - {rule.points:g} points"


def choose(
    points: Sequence[dict[str, Any]], rule: ChoiceRule, reference_accuracy: float | None = None
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """``(chosen, closest)`` among ``points`` (``{"accuracy", "latency_s", "number", ...}``): the point the rule
    picks (None if none qualifies) and, when none does, the one nearest to qualifying (the fastest for a latency
    budget; the most accurate for an accuracy floor). Ties go to the other objective, then the lower number.

    >>> pts = [{"number": 0, "accuracy": 0.9, "latency_s": 1.0}, {"number": 1, "accuracy": 0.8, "latency_s": 0.5}]
    >>> choose(pts, ChoiceRule("max_accuracy_under_latency", latency_s=0.7))[0]["number"]
    1
    >>> choose(pts, ChoiceRule("min_latency_within", points=5), reference_accuracy=0.9)[0]["number"]
    0
    """
    if not points:
        return None, None
    eps = 1e-9
    if rule.rule == "max_accuracy_under_latency":
        assert rule.latency_s is not None
        ok = [p for p in points if p["latency_s"] <= rule.latency_s + eps]
        best = max(ok, key=lambda p: (p["accuracy"], -p["latency_s"], -p["number"])) if ok else None
        nearest = min(points, key=lambda p: (p["latency_s"], -p["accuracy"], p["number"]))
    else:
        if reference_accuracy is None or rule.points is None:
            raise SpecsError(f"rule {rule.rule} needs the reference's accuracy")
        floor = reference_accuracy - rule.points / 100
        ok = [p for p in points if p["accuracy"] >= floor - eps]
        best = min(ok, key=lambda p: (p["latency_s"], -p["accuracy"], p["number"])) if ok else None
        nearest = max(points, key=lambda p: (p["accuracy"], -p["latency_s"], -p["number"]))
    return best, (None if best is not None else nearest)


# ------------------------------------------------------------------------------------------------------------------
# The test re-run: compare configs of the choice


def _set_dotted(d: dict[str, Any], dotted: dict[str, Any]) -> dict[str, Any]:
    """A copy of the nested ``d`` with dotted keys (``data.split``) set."""
    d = copy.deepcopy(d)
    for key, value in dotted.items():
        node = d
        *parents, leaf = key.split(".")
        for i, p in enumerate(parents):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(
                    f"tune.test.set.{key}: {'.'.join(parents[: i + 1])} is a setting, not a section"
                )
        node[leaf] = value
    return d


def retest_configs(
    cfg: TuneConfig, plan: StudyPlan, chosen: dict[str, tuple[dict[str, Any], dict[str, Any]]]
) -> list[dict[str, Any]]:
    """The compare configs that re-run the choice on the held-out set (``tune.test.set``), as
    ``{"config": dict, "tuned": [chosen methods it runs], "fixed": [reference and baselines it runs]}``.

    ``chosen``: ``{method: (params, own settings)}``. Methods whose chosen backend values differ from the first
    method's go to a config of their own (a compare run has one backend section and one setting per method); the
    reference and the baselines join the first method's. Each n-using method runs at every n its config's
    ``n_grid`` holds (compare's grid): the union of the chosen n's, the reference's and the baselines'. Checked by
    loading each as a compare config."""
    # written in the layout users type (flat keys), as the committed compare configs are
    run, report = to_dict(cfg.run), to_dict(cfg.report)
    base: dict[str, Any] = {k: run["search"][k] for k in sorted(given_keys(cfg, "run.search") - {"n"})}
    base["backend"] = cfg.run.backend
    base[cfg.run.backend] = run[cfg.run.backend]
    if BACKENDS[cfg.run.backend].uses_data:
        base["data"] = run["data"]
    base["batch_size"] = run["batch_size"]
    for k in ("wandb", "project", "plot", "progress"):
        base[k] = report[k]
    if "report.wandb_dir" in given_keys(cfg):
        base["wandb_dir"] = report["wandb_dir"]
    base["warmup"] = cfg.warmup
    base["order"] = "problem"

    groups: list[dict[str, Any]] = []  # {"values": {...}, "methods": {name: own}, "n": set, "tuned", "fixed"}

    def add(
        method: str, n: int | None, own: dict[str, Any], values: dict[str, Any] | None, role: str
    ) -> None:
        for g in groups:
            if (values is None or g["values"] == values) and g["methods"].get(method, own) == own:
                break
        else:
            g = {"values": values or {}, "methods": {}, "n": set(), "tuned": [], "fixed": []}
            groups.append(g)
        g["methods"][method] = own
        g[role].append(method)
        if n is not None:
            g["n"].add(n)

    for space in plan.spaces:
        if space.method in chosen:
            params, own = chosen[space.method]
            n = params.get("n", cfg.run.search.n) if uses_n(space.method) else None
            values = {k: v for k, v in params.items() if "." in k and get_path(cfg.run, k.split(".")) != v}
            add(space.method, n, own, values, "tuned")
    for run in (*([plan.reference] if plan.reference else []), *plan.baselines):
        add(run.method, run.n, dict(run.settings), None, "fixed")

    out = []
    for i, g in enumerate(groups):
        d = _set_dotted(dict(base), g["values"])
        d = _set_dotted(d, cfg.tune.test.set)
        d["methods"] = list(g["methods"])
        d["n_grid"] = sorted(g["n"]) or [cfg.run.search.n]
        d["seeds"] = list(cfg.tune.test.seeds)
        settings = {m: own for m, own in g["methods"].items() if own}
        if settings:
            d["method_settings"] = settings
        d["out"] = str(Path(cfg.run.out) / ("test" if i == 0 else f"test-{i}"))
        _check_compare(d)
        out.append({"config": d, "tuned": g["tuned"], "fixed": g["fixed"]})
    return out


def _check_compare(d: dict[str, Any]) -> None:
    """Load ``d`` as a compare config (unknown keys, types, a bad grid: a ConfigError naming tune.test)."""
    import tempfile

    import yaml

    from specs_rl.config import load_config
    from specs_rl.run.grid import CompareConfig, plan_runs

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=True) as fh:
        yaml.safe_dump(d, fh)
        fh.flush()
        try:
            plan_runs(load_config(CompareConfig, fh.name))
        except ConfigError as e:
            raise ConfigError(f"tune.test: the re-run's compare config is refused: {e}") from None


# ------------------------------------------------------------------------------------------------------------------
# Showing it


def params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def format_front(rows: Sequence[dict[str, Any]]) -> str:
    """One line per front point: method, trial, accuracy, latency, parameters (``*``: the chosen one)."""
    head = ["", "method", "trial", "problems", "accuracy", "lat mean s", "params"]
    lines = [
        [
            "*" if r.get("chosen") else "",
            r["method"],
            str(r["number"]),
            str(r["problems"]),
            f"{r['accuracy']:.3f}",
            f"{r['latency_s']:.4g}",
            params_text(r["params"]),
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" if i in (0, 1, 6) else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(
        [fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*c) for c in lines]
    )


def plot_front(
    trials: Sequence[dict[str, Any]],
    path: Path,
    *,
    chosen: Sequence[dict[str, Any]] = (),
    marks: Sequence[dict[str, Any]] = (),
    title: str = "",
) -> dict[str, Any]:
    """Accuracy against mean latency: every completed trial (small), each method's front (a step line), the chosen
    points (stars), and ``marks`` (``{"label", "latency_s", "accuracy", "marker", "method"?}``: the reference, the
    baselines, the test re-run; ``method`` colours it), the legend beside the axes. Unlike
    :func:`specs_rl.run.report.plot_accuracy_latency` (one line per method through its n grid), a tuning study is a
    cloud of trials per method with a front of its own."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5), dpi=110)
    methods = list(dict.fromkeys([*(t["method"] for t in trials), *(c["method"] for c in chosen)]))
    cmap = plt.get_cmap("tab10")
    colors = {m: cmap(i % 10) for i, m in enumerate(methods)}
    for m in methods:
        mine = [t for t in trials if t["method"] == m]
        ax.scatter(
            [t["latency_s"] for t in mine], [t["accuracy"] for t in mine], s=18, color=colors[m], alpha=0.45,
            label=f"{m}: {len(mine)} trials, front",
        )  # fmt: skip
        f = front(mine)
        ax.step(
            [t["latency_s"] for t in f], [t["accuracy"] for t in f], where="post", color=colors[m], lw=1.5
        )
        ax.scatter([t["latency_s"] for t in f], [t["accuracy"] for t in f], s=30, color=colors[m], zorder=3)
    for c in chosen:
        ax.scatter(
            [c["latency_s"]], [c["accuracy"]], marker="*", s=260, color=colors.get(c["method"], "black"),
            edgecolors="black", linewidths=1.0, zorder=5, label=f"{c['method']} chosen (trial {c['number']})",
        )  # fmt: skip
    for mark in marks:
        ax.scatter(
            [mark["latency_s"]], [mark["accuracy"]], marker=mark.get("marker", "D"), s=90, facecolors="none",
            edgecolors=colors.get(mark.get("method", ""), "dimgray"), linewidths=1.5, zorder=4, label=mark["label"],
        )  # fmt: skip
    lats = [t["latency_s"] for t in trials if t["latency_s"] > 0] + [
        m["latency_s"] for m in marks if m["latency_s"] > 0
    ]
    if lats and max(lats) / min(lats) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("mean latency per problem (s)")
    ax.set_ylabel("accuracy")
    ax.set_title(title or "tuning: accuracy vs latency")
    ax.grid(alpha=0.3)
    if trials or marks:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return {"path": path.name, "trials": len(trials), "marks": len(marks)}
