"""The Optuna side of ``specs-rl tune``: the store, one study per tuned method, the trial loop with successive
halving, resumption after a kill, and the trials read back.

**Store.** Optuna's RDB storage: ``sqlite:///<out>/study.db`` by default, or ``tune.storage`` (a PostgreSQL or
MySQL URL shared by workers on several machines, each running the same command). One study per tuned method, named
``<prefix>:<method>``; the prefix is ``tune.study_name`` or derived from a hash of the config, and every study
holds that hash, so a worker with another config is refused. Running trials send heartbeats; a trial whose
heartbeat stops (its process was killed) is marked FAIL by the next worker that looks, and its parameters are asked
again as a new trial (Optuna's ``RetryHeartbeatStaleTrialCallback``). The retry keeps its root's seed and records,
so it searches only the problems its root had not finished. A trial that failed otherwise (Ctrl-C, an error) is
asked again when the command is rerun, at most :data:`MAX_RETRY` times.

**Loop.** Methods take turns, one trial each, until each has its trials (finished or running) or the time is up;
then it waits for trials still running (on another worker, or killed and not yet stale) and runs their retries.

**Samplers** are made afresh for every trial with a seed from (study seed, method, trials so far), so a resumed
study does not replay its first trials' parameters. A space of choices only is run as a grid (every point once).

optuna is imported inside the functions (the ``tune`` extra).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import socket
import time
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from specs_rl.errors import SpecsError
from specs_rl.progress import progress_bar
from specs_rl.run.rundir import run_identity
from specs_rl.run.tune.config import TUNE_PRESENTATION_KEYS, TuneConfig
from specs_rl.run.tune.space import (
    MethodSpace,
    Param,
    StudyPlan,
    trial_seed,
)
from specs_rl.run.tune.trials import TrialRunner, beaten_by

MAX_RETRY = 3  # a trial's parameters are asked again at most this many times


def check_optuna() -> None:
    """optuna (the ``tune`` extra) is installed: said before any work."""
    import importlib.util

    if importlib.util.find_spec("optuna") is None:
        raise SpecsError("specs-rl tune needs the optuna package: pip install specs-rl[tune]")


def storage_url(cfg: TuneConfig, out: str | Path) -> str:
    """``tune.storage`` with environment variables expanded (``$SPECS_TUNE_DB`` keeps a password out of the config
    files), or the SQLite file in ``out``."""
    if cfg.tune.storage:
        return os.path.expandvars(cfg.tune.storage)
    return f"sqlite:///{Path(out).resolve() / 'study.db'}"


def identity_hash(cfg: TuneConfig) -> str:
    """A hash of what the trials compute (the config without ``out``, presentation and budget keys)."""
    ignore = (*TUNE_PRESENTATION_KEYS, "tune.storage", "tune.study_name")
    ident = run_identity(cfg, ignore=ignore)
    return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]


def study_names(cfg: TuneConfig, plan: StudyPlan) -> dict[str, str]:
    prefix = cfg.tune.study_name or f"specs-rl-tune-{identity_hash(cfg)}"
    return {s.method: f"{prefix}:{s.method}" for s in plan.spaces}


def check_storage(cfg: TuneConfig, plan: StudyPlan) -> None:
    """A shared database (``tune.storage``) can be opened and holds no study of these names for another config;
    checked before ``out`` is written (``out/study.db`` is covered by the directory's own identity check)."""
    if cfg.tune.storage is None:
        return
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url(cfg, ".")
    try:
        storage = optuna.storages.RDBStorage(url)
    except Exception as e:  # a bad URL, a missing driver, an unreachable host: one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SpecsError(f"tune.storage: cannot open {url.split('@')[-1]} ({first})") from None
    digest = identity_hash(cfg)
    for name in study_names(cfg, plan).values():
        try:
            held = optuna.load_study(study_name=name, storage=storage).user_attrs.get("config_hash")
        except KeyError:
            continue
        if held is not None and held != digest:
            raise SpecsError(
                f"study {name} in {url.split('@')[-1]} holds trials of another config; set another tune.study_name"
            )


def open_studies(cfg: TuneConfig, plan: StudyPlan, out: str | Path) -> dict[str, Any]:
    """The studies of ``plan``'s methods in the store (created, or loaded to resume), with heartbeats on."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url(cfg, out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = RDBStorage(
            url,
            heartbeat_interval=cfg.tune.heartbeat_s,
            grace_period=cfg.tune.grace_s,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
        )
    digest = identity_hash(cfg)
    studies = {}
    for method, name in study_names(cfg, plan).items():
        study = optuna.create_study(
            storage=storage, study_name=name, directions=["maximize", "minimize"], load_if_exists=True
        )
        held = study.user_attrs.get("config_hash")
        if held is None:
            study.set_user_attr("config_hash", digest)
            for point in plan.space(method).start:  # a new study tries these first
                study.enqueue_trial(point, skip_if_exists=True)
        elif held != digest:
            raise SpecsError(
                f"study {name} in {url.split('@')[-1]} holds trials of another config; set another tune.study_name"
            )
        studies[method] = study
    return studies


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def make_sampler(cfg: TuneConfig, space: MethodSpace, seed: int) -> Any:
    import optuna

    if space.grid is not None:  # its grid ids index a shuffle made from the seed: one seed per study
        return optuna.samplers.GridSampler(
            space.grid, seed=_seed(cfg.seed, zlib.crc32(space.method.encode()))
        )
    if cfg.tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if cfg.tune.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(cfg.tune.startup_trials, 4))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.tune.startup_trials, constant_liar=True)


def _suggest(trial: Any, p: Param) -> Any:
    if p.kind == "choice":
        return trial.suggest_categorical(p.key, list(p.choices))
    if p.kind == "int":
        return trial.suggest_int(p.key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
    return trial.suggest_float(p.key, p.low, p.high, step=p.step, log=p.log)


def _root(t: Any) -> int:
    """The number of the trial a (frozen) trial retries, or its own."""
    return int(t.system_attrs.get("failed_trial", t.number))


def rung_results(study: Any, rung: int, exclude_root: int) -> list[tuple[int, dict[str, Any]]]:
    """``(number, result)`` of the other trials that reached ``rung`` (finished, stopped or running)."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    out = []
    for t in study.get_trials(deepcopy=False, states=states):
        result = t.user_attrs.get(f"rung{rung}")
        if result is not None and _root(t) != exclude_root:
            out.append((t.number, result))
    return out


def make_objective(cfg: TuneConfig, space: MethodSpace, runner: TrialRunner) -> Callable[[Any], tuple]:
    """The objective of ``space``'s study: suggest, search rung by rung, stop when beaten at a rung
    (:func:`~specs_rl.run.tune.trials.beaten_by`), else return ``(accuracy, mean latency)`` on the whole tune set."""

    def objective(trial: Any) -> tuple[float, float]:
        import optuna
        from optuna.trial import TrialState

        frozen = next(
            t
            for t in trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.number == trial.number
        )
        root = _root(frozen)
        params = {p.key: _suggest(trial, p) for p in space.params}
        seed = trial_seed(cfg.seed, space.method, root)
        trial.set_user_attr("root", root)
        trial.set_user_attr("seed", seed)
        stopped: dict[str, int] = {}

        def keep_going(rung: int, result: dict[str, Any]) -> bool:
            trial.set_user_attr(f"rung{rung}", result)  # before comparing: other workers see it too
            others = rung_results(trial.study, rung, exclude_root=root)
            by = beaten_by(result, [r for _, r in others], cfg.tune.prune_points, cfg.tune.prune_latency)
            if by is None:
                return True
            stopped.update(rung=rung, by=next(n for n, r in others if r is by))
            return False

        results = runner.run(space.method, params, seed, root, keep_going)
        for rung, result in enumerate(results):
            trial.set_user_attr(f"rung{rung}", result)
        trial.set_user_attr("rungs", len(results))
        if stopped:
            trial.set_user_attr("stopped_at_rung", stopped["rung"])
            trial.set_user_attr("stopped_by", stopped["by"])
            raise optuna.TrialPruned(f"beaten at rung {stopped['rung']} by trial {stopped['by']}")
        return results[-1]["accuracy"], results[-1]["latency_s"]

    return objective


def _counts(study: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def reask_failed(study: Any) -> int:
    """Ask again the parameters of failed trials that no later trial retries (Ctrl-C, an error; a killed trial's
    retry is queued by the heartbeat callback already); at most :data:`MAX_RETRY` times each. Returns how many."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    asked = 0
    for t in trials:
        if t.state != TrialState.FAIL:
            continue
        if any(u.number > t.number and _root(u) == _root(t) for u in trials):
            continue
        before = len(study.get_trials(deepcopy=False))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, copy.deepcopy(t))
        asked += len(study.get_trials(deepcopy=False)) - before
    return asked


def spent_s(studies: dict[str, Any]) -> float:
    """Seconds the finished (complete or stopped) trials took, summed over every run of the command."""
    from optuna.trial import TrialState

    total = 0.0
    for study in studies.values():
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            if t.datetime_start and t.datetime_complete:
                total += (t.datetime_complete - t.datetime_start).total_seconds()
    return total


def run_trials(
    cfg: TuneConfig, plan: StudyPlan, studies: dict[str, Any], runner: TrialRunner, *, progress: bool = True
) -> dict[str, Any]:
    """Run trials until every method has its count or ``tune.timeout_s`` is spent, then wait for the trials still
    running and run their retries. Returns ``{"timed_out", "spent_s", "reasked"}``."""
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    salt = 0 if cfg.tune.storage is None else zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode())
    reasked = sum(reask_failed(s) for s in studies.values())
    done = {
        m: s.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        for m, s in studies.items()
    }
    total = sum(s.trials for s in plan.spaces)
    bar = progress_bar(
        total, unit="trial", initial=min(total, sum(len(v) for v in done.values())), enabled=progress
    )
    before, start, timed_out = spent_s(studies), time.monotonic(), False
    objectives = {s.method: make_objective(cfg, s, runner) for s in plan.spaces}
    try:
        while True:
            started = False
            for space in plan.spaces:
                limit = cfg.tune.timeout_s
                if limit is not None and before + time.monotonic() - start >= limit:
                    timed_out = True
                    break
                study = studies[space.method]
                counts = _counts(study)
                taken = counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) + counts.get("RUNNING", 0)
                if not counts.get("WAITING") and taken >= space.trials:
                    continue
                number = sum(counts.values())

                def show(i: int, method: str = space.method, number: int = number) -> None:
                    bar.set_postfix_str(f"{method} trial {number}: problem {i}/{runner.counts[-1]}")

                runner.on_problem = show
                study.sampler = make_sampler(
                    cfg, space, _seed(cfg.seed, zlib.crc32(space.method.encode()), number, salt)
                )
                bar.set_postfix_str(f"{space.method} trial {number}", refresh=False)
                with warnings.catch_warnings():
                    warnings.simplefilter(
                        "ignore", category=UserWarning
                    )  # GridSampler's notes on a full grid
                    study.optimize(objectives[space.method], n_trials=1, catch=(), gc_after_trial=False)
                bar.update(1)
                started = True
            if timed_out or started:
                if timed_out:
                    break
                continue
            running = sum(_counts(s).get("RUNNING", 0) for s in studies.values())
            if not running:
                break
            bar.set_postfix_str(
                f"waiting for {running} trial(s) running elsewhere or killed (stale after {cfg.tune.grace_s} s)"
            )
            time.sleep(cfg.tune.heartbeat_s)  # trials running elsewhere, or killed and not yet stale
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for s in studies.values():
                    fail_stale_trials(s)
                    reasked += reask_failed(s)
    finally:
        bar.close()
    return {"timed_out": timed_out, "spent_s": spent_s(studies), "reasked": reasked}


def collect_trials(studies: dict[str, Any]) -> list[dict[str, Any]]:
    """Every trial of every study as a plain dict: method, number, root, state, params, seed, the rung results, and
    accuracy / mean latency / problems of a completed trial."""
    out = []
    for method, study in studies.items():
        for t in study.get_trials(deepcopy=False):
            rungs = [t.user_attrs[f"rung{i}"] for i in range(t.user_attrs.get("rungs", 0) or _rungs_held(t))]
            row: dict[str, Any] = {
                "method": method,
                "number": t.number,
                "root": _root(t),
                "state": t.state.name,
                "params": dict(t.params),
                "seed": t.user_attrs.get("seed"),
                "rungs": rungs,
                "retry_of": t.system_attrs.get("failed_trial"),
                "duration_s": (t.datetime_complete - t.datetime_start).total_seconds()
                if t.datetime_start and t.datetime_complete
                else None,
            }
            if "stopped_at_rung" in t.user_attrs:
                row["stopped_at_rung"] = t.user_attrs["stopped_at_rung"]
                row["stopped_by"] = t.user_attrs["stopped_by"]
            if t.values is not None and rungs:
                row.update(accuracy=t.values[0], latency_s=t.values[1], problems=rungs[-1]["problems"])
                for k in ("raw_latency_s", "ratio"):
                    if k in rungs[-1]:
                        row[k] = rungs[-1][k]
            out.append(row)
    return out


def _rungs_held(t: Any) -> int:
    i = 0
    while f"rung{i}" in t.user_attrs:
        i += 1
    return i
