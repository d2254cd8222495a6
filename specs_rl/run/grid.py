"""Searching a task: one method over its problems (:func:`search_task`), and a grid of methods x n x seeds in one
resumable, interleaved run (:func:`run_grid`), as ``specs-rl compare`` / ``demo`` run it.

Timing is comparable across methods because the grid interleaves them: with ``order: problem`` (the default) every
planned run searches problem ``i`` before any searches ``i + 1``, and the order of the runs rotates from problem to
problem, so a slow spell of a shared machine, or whatever the previous method left in the caches, hits every method
alike. Runs that depend on another run's result (the random-switch ablation runs at the target-step fraction SPECS
measured for the same n, seed and problems) go after the runs they depend on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from specs_rl.config import PART, ConfigError, given_keys, typed_fields
from specs_rl.errors import SpecsError
from specs_rl.interfaces import Task
from specs_rl.methods import MATCHED_FRACTION, METHOD_PRESETS, own_settings, preset, shared_clash, uses_n
from specs_rl.progress import progress_bar
from specs_rl.run.config import RunConfig, speculative_refusal
from specs_rl.run.records import ResultsWriter, problem_seed, record_key, result_record
from specs_rl.run.report import REPORT_KEYS, ReportConfig
from specs_rl.run.summary import target_step_fraction
from specs_rl.search import run_search
from specs_rl.settings import SearchConfig

ORDERS = ("problem", "method")
# Keys that change how a run is shown, warmed up or ordered in time, not what it computes: they may differ when a
# run is resumed or merged (records are the same in any order: seeds are per problem).
PRESENTATION_KEYS = (*REPORT_KEYS, "warmup", "order")


def search_task(
    task: Task,
    config: SearchConfig,
    seed: int,
    *,
    batch_size: int = 1,
    skip: Container[str] = frozenset(),
    on_result: Callable[[dict[str, Any]], None] | None = None,
    extra: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Search every problem not in ``skip`` in batches; grade each result and hand its record to ``on_result``.

    Each problem gets its own ``torch.Generator`` seeded by :func:`problem_seed` (run seed, problem id), and draws
    only from it, so a problem's result is independent of the others at any ``batch_size`` (resume, shards and
    rebatching reproduce it; latencies aside)."""
    todo = [p for p in task.problems if p.id not in skip]
    out = []
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        generators = [torch.Generator().manual_seed(problem_seed(seed, p.id)) for p in batch]
        for res in run_search(batch, config, task.parts, generators):
            rec = result_record(res, task.grade(res), grader=dict(task.grader), **(extra or {}))
            out.append(rec)
            if on_result is not None:
                on_result(rec)
    return out


@dataclass
class GridConfig:
    """The grid a compare run searches: methods x n x seeds, each method at its own settings."""

    methods: list[str] = field(
        default_factory=lambda: [
            "specs",
            "beam_search_target",
            "beam_search_draft",
            "target_only",
            "draft_only",
        ],
        metadata={"help": f"method presets to run, from: {', '.join(METHOD_PRESETS)}"},
    )
    n_grid: list[int] = field(
        default_factory=lambda: [4, 8, 16], metadata={"help": "values of n (paper: 4, 8, 16)"}
    )
    seeds: list[int] = field(
        default_factory=lambda: [42, 43, 45],
        metadata={"help": "seeds (authors: 42, 43, 45); they are also the latency repeats"},
    )
    warmup: int = field(
        default=1,
        metadata={
            "help": "problems each method searches, unrecorded, before the timed grid, so the first method does "
            "not pay the models' warm-up (not on the tabular backend, whose clock is simulated)"
        },
    )
    method_n: dict[str, list[int]] = field(
        default_factory=dict,
        metadata={
            "help": "the n values of some methods in place of n_grid, e.g. {specs: [8], beam_search_target: [4]} "
            "(a tuned setting against the reference its tuning rule named); the methods not named run at each n "
            "of n_grid; names of methods not in methods are not used"
        },
    )
    method_settings: dict[str, dict[str, Any]] = field(
        default_factory=dict,
        metadata={
            "help": "each method's own settings, e.g. {gsi: {beta: 3.0, tau_reject: 1.2}} (what specs-rl tune "
            "chooses); a key set here and at the top level is refused, as is a key the method's preset pins and "
            "a top-level key set to another value than a listed method pins; settings of a method not in "
            "methods are not used"
        },
    )
    order: str = field(
        default="problem",
        metadata={
            "help": "problem: every run searches a batch of problems before the next batch, the runs' order "
            "rotating from batch to batch, so load changes hit every method alike; method: each run searches all "
            "its problems in turn (results are the same either way: seeds are per problem)"
        },
    )

    def validate(self) -> None:
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {self.order!r}")
        for name, values in (("methods", self.methods), ("n_grid", self.n_grid), ("seeds", self.seeds)):
            if not values:
                raise ValueError(f"{name} must not be empty")
            if len(set(values)) != len(values):
                raise ValueError(f"{name} has duplicates: {values}")
        unknown = [m for m in self.methods if m not in METHOD_PRESETS]
        if unknown:
            raise ValueError(f"unknown method {unknown[0]!r} in methods; known: {', '.join(METHOD_PRESETS)}")
        for m in self.methods:
            if m in MATCHED_FRACTION and MATCHED_FRACTION[m] not in self.methods:
                raise ValueError(
                    f"{m} runs at the target-step fraction {MATCHED_FRACTION[m]} measures for the same n, seed "
                    f"and problems: add {MATCHED_FRACTION[m]} to methods"
                )
        for m, own in self.method_settings.items():
            # A config may hold the settings of methods a command line leaves out (methods=[...] narrows the
            # list): those are not used. A name that is no preset at all is a typo.
            if m not in METHOD_PRESETS:
                raise ValueError(
                    f"method_settings.{m}: {m} is not a method preset; known: {', '.join(METHOD_PRESETS)}"
                )
            if not isinstance(own, dict):
                raise ValueError(f"method_settings.{m} must be a mapping of settings, got {own!r}")
        self.method_settings = {
            m: typed_fields(SearchConfig, own, f"method_settings.{m}.")
            for m, own in self.method_settings.items()
        }
        for m, ns in self.method_n.items():
            if m not in METHOD_PRESETS:
                raise ValueError(
                    f"method_n.{m}: {m} is not a method preset; known: {', '.join(METHOD_PRESETS)}"
                )
            if not uses_n(m):
                raise ValueError(f"method_n.{m}: {m} does not depend on n (it runs once per seed)")
            ns = (
                yaml.safe_load(ns) if isinstance(ns, str) else ns
            )  # from the command line: method_n.specs=[8]
            ns = [ns] if isinstance(ns, int) else ns  # one value given as a scalar: {specs: 8}
            ints = isinstance(ns, list) and all(isinstance(n, int) and not isinstance(n, bool) for n in ns)
            if not ints or not ns or len(set(ns)) != len(ns) or min(ns) < 1:
                raise ValueError(f"method_n.{m} must be distinct values >= 1, got {ns}")
            self.method_n[m] = ns
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        bad = [n for n in self.n_grid if n < 1]
        if bad:
            raise ValueError(f"n_grid values must be >= 1, got {bad[0]}")

    def n_values(self, method: str) -> list[int | None]:
        """The n values ``method`` runs at: its ``method_n`` entry, else ``n_grid``; ``[None]`` for a method that
        does not depend on n."""
        if not uses_n(method):
            return [None]
        return list(self.method_n.get(method, self.n_grid))


@dataclass
class CompareConfig:
    """``specs-rl compare``: the task and shared settings (``run``), the grid of methods x n x seeds (``grid``) and
    how it is shown (``report``). Every key of the three may be given at the top level (``beta``, ``K``,
    ``methods``, ``wandb``, ...); ``n`` and ``seed`` are the grid's (``n_grid``, ``seeds``)."""

    run: RunConfig = field(
        default_factory=lambda: RunConfig(out="runs/compare"),
        metadata={"help": "the task and the settings every method shares", **PART},
    )
    grid: GridConfig = field(default_factory=GridConfig, metadata={"help": "what is compared", **PART})
    report: ReportConfig = field(default_factory=ReportConfig, metadata={"help": "how it is shown", **PART})

    def validate(self) -> None:
        self.run.validate()
        self.grid.validate()
        if "run.search.n" in given_keys(self):
            raise ValueError(
                f"n is not a compare key: every method runs at each n of n_grid (n_grid={self.grid.n_grid})"
            )


@dataclass(frozen=True)
class PlannedRun:
    """One (method, n, seed) of the grid with its resolved search settings; ``n`` is None for n-free methods.
    ``matches``: the method whose measured target-step fraction this run's ``random_switch`` takes."""

    method: str
    n: int | None
    seed: int
    config: SearchConfig
    matches: str | None = None
    settings: dict[str, Any] = field(
        default_factory=dict
    )  # the method's own settings (method_settings.<name>)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.method, str(self.n), str(self.seed))  # as record_key spells it

    @property
    def label(self) -> str:
        return f"{self.method}" + (f" n={self.n}" if self.n is not None else "") + f" seed={self.seed}"


def plan_runs(cfg: CompareConfig) -> list[PlannedRun]:
    """Every (method, n, seed) with its validated settings, before anything is loaded (a bad combination, such as
    a beam width that does not divide n, a key set both for every method and in a method's own settings, or a
    shared key set to another value than a listed method pins, is a ConfigError here)."""
    shared = given_keys(cfg, "run.search") - {"n"}
    search = cfg.run.search
    grid = cfg.grid
    shared_values = {k: getattr(search, k) for k in sorted(shared)}
    for name in grid.methods:
        clash = shared_clash(
            name, shared_values, [n for n in grid.n_values(name) if n is not None] or grid.n_grid
        )
        if clash:
            raise ConfigError(clash)
    for name in grid.methods:
        own = own_settings(name, grid.method_settings) or {}
        both = sorted(k for k in own if k in shared)
        if both:
            k = both[0]
            raise ConfigError(
                f"{k} is set for every method ({k}={getattr(search, k)!r}) and for {name} "
                f"(method_settings.{name}.{k}={own[k]!r}): set it in one place"
            )
    runs = []
    for name in grid.methods:
        for n in grid.n_values(name):
            for seed in grid.seeds:
                runs.append(
                    plan_run(
                        search,
                        name,
                        n,
                        seed,
                        own_settings(name, grid.method_settings),
                        n_free=min(grid.n_grid),
                    )
                )
    token_level = sorted({r.method for r in runs if r.config.speculative_tokens})
    if token_level and cfg.run.backend != "hf":
        raise ConfigError(speculative_refusal(token_level[0], cfg.run.backend))
    return runs


def plan_run(
    shared: SearchConfig, name: str, n: int | None, seed: int, own: dict[str, Any] | None, *, n_free: int
) -> PlannedRun:
    """One method at one n and seed: the ``shared`` settings with the method's ``own`` settings and its preset's
    pinned values applied, validated (a :class:`ConfigError` naming the method). ``n`` is None for n-free methods,
    which search with ``n_free`` (unused by them)."""
    # n goes into the base first: presets derive settings (beam_width = n) from the base's n
    base = dataclasses.replace(shared, n=n if n is not None else n_free)
    try:
        search_cfg = preset(base, name, own)
    except SpecsError as e:
        raise ConfigError(str(e)) from None
    return PlannedRun(name, n, seed, search_cfg, MATCHED_FRACTION.get(name), dict(own or {}))


def warm_up(task: Task, runs: Sequence[PlannedRun], problems: int) -> None:
    """Search the first ``problems`` problems once with each method (its first planned n and seed) and drop the
    results: first calls pay one-off costs (kernel selection, allocator growth, lazy imports, the grader's
    worker start) that would otherwise be charged to whichever method runs first."""
    if problems < 1:
        return
    first: dict[str, PlannedRun] = {}
    for run in runs:
        first.setdefault(run.method, run)
    sub = dataclasses.replace(task, problems=task.problems[:problems])
    for run in first.values():
        search_task(sub, run.config, run.seed)


def run_grid(
    task: Task,
    runs: Sequence[PlannedRun],
    results_path: Path,
    *,
    batch_size: int = 1,
    progress: bool = True,
    warmup: int = 0,
    order: str = "problem",
) -> list[dict[str, Any]]:
    """Search every problem of every planned run not yet in ``results_path``; returns every record of the file.

    ``order``: ``problem`` takes the problems ``batch_size`` at a time through every run (rotating the runs' order
    from batch to batch) before the next batch; ``method`` runs each planned run over all its problems in turn.
    The same records either way. Runs with ``matches`` go last, each at the target-step fraction its matched run
    measured on the same problems (recorded as ``random_switch`` in its records)."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    with ResultsWriter(results_path) as writer:
        done = writer.done
        pending = {run.key: [p for p in task.problems if (*run.key, p.id) not in done] for run in runs}
        if any(pending.values()):
            warm_up(task, runs, warmup)
        total = len(runs) * len(task.problems)
        bar = progress_bar(
            total, unit="problem", initial=total - sum(len(v) for v in pending.values()), enabled=progress
        )

        def search(run: PlannedRun, config: SearchConfig, batch: list[Any], **more: Any) -> None:
            extra = {"method": run.method, "strategy": config.strategy, "n": run.n, "seed": run.seed, **more}
            if run.settings:
                extra["settings"] = dict(run.settings)
            sub = dataclasses.replace(task, problems=batch)
            search_task(sub, config, run.seed, batch_size=len(batch), on_result=writer.write, extra=extra)
            bar.set_postfix_str(run.label, refresh=False)
            bar.update(len(batch))

        def phase(group: Sequence[PlannedRun], configs: dict, more: dict) -> None:
            """Search ``group`` with ``configs[key]``, adding ``more[key]`` to its records."""
            if order == "method":
                for run in group:
                    todo = pending[run.key]
                    for start in range(0, len(todo), batch_size):
                        search(
                            run, configs[run.key], todo[start : start + batch_size], **more.get(run.key, {})
                        )
                return
            for b, start in enumerate(range(0, len(task.problems), batch_size)):
                ids = {p.id for p in task.problems[start : start + batch_size]}
                turn = b % len(group)
                for run in [*group[turn:], *group[:turn]]:
                    batch = [p for p in pending[run.key] if p.id in ids]
                    if batch:
                        search(run, configs[run.key], batch, **more.get(run.key, {}))

        try:
            first = [r for r in runs if r.matches is None]
            if first:
                phase(first, {r.key: r.config for r in first}, {})
            second = [r for r in runs if r.matches is not None]
            if second:
                ids = {p.id for p in task.problems}
                fractions = {}
                for run in second:
                    ref = (run.matches, str(run.n), str(run.seed))
                    measured = [r for r in writer.records if record_key(r)[:3] == ref and r["id"] in ids]
                    fractions[run.key] = target_step_fraction(measured)
                configs = {
                    r.key: dataclasses.replace(r.config, random_switch=fractions[r.key]) for r in second
                }
                phase(second, configs, {k: {"random_switch": f} for k, f in fractions.items()})
        finally:
            bar.close()
        return list(writer.records)
