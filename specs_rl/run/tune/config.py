"""``specs-rl tune``'s config: the run it tunes on, the ``tune:`` section (what to tune, how long, how to stop
trials early, how to choose, how to re-test), and the helpers that change a run's dotted keys."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from specs_rl.config import (
    PART,
    ConfigError,
    RawValue,
    _parse_scalar,  # the override parser (inf, -inf, YAML)
    typed_fields,
)
from specs_rl.methods import METHOD_PRESETS
from specs_rl.run.config import RunConfig
from specs_rl.run.grid import PRESENTATION_KEYS
from specs_rl.run.report import ReportConfig
from specs_rl.settings import SearchConfig

RULES = ("max_accuracy_under_latency", "min_latency_within")


SAMPLERS = ("tpe", "nsga2", "random")


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
