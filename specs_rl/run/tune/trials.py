"""Running the trials of ``specs-rl tune``: the tasks a trial needs, a trial's search over growing prefixes of the
tune problems (successive halving's rungs), and the rule that stops a trial beaten at a rung.

A trial searches the first ``rungs[0]`` problems, then the first ``rungs[1]``, ..., then all of them, each step
searching only what it has not; its records go to its own resumable ``results.jsonl``. After each rung the study
compares it with the other trials of its method at that rung (:func:`beaten_by`) and stops it if one of them beats
it by a margin. With ``paired`` (a wall clock) every problem is searched by the trial and the reference in turn.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from specs_rl.errors import SpecsError
from specs_rl.interfaces import SimClock, Task
from specs_rl.run.backends import build_task
from specs_rl.run.grid import PlannedRun, search_task, warm_up
from specs_rl.run.records import ResultsWriter, record_key
from specs_rl.run.summary import summarize
from specs_rl.run.tune.config import TuneConfig, get_path, with_values
from specs_rl.run.tune.space import StudyPlan, trial_run


class TaskCache:
    """Tasks built for the backend values trials ask for (``{}``: the config's own section, kept for good); the
    ``size`` most recently used are kept. Each (task, method) searches ``warmup`` problems unrecorded before its
    first timed search on a wall clock."""

    def __init__(self, cfg: TuneConfig, size: int, warmup: int) -> None:
        self.cfg, self.size, self.warmup = cfg, size, warmup
        self.base = build_task(cfg.run)
        self._tasks: OrderedDict[tuple, Task] = OrderedDict()
        self._warm: set[tuple] = set()
        self.builds = 1

    def get(self, values: dict[str, Any], run: PlannedRun | None = None) -> Task:
        values = {
            k: v for k, v in values.items() if get_path(self.cfg.run, k.split(".")) != v
        }  # the base's own
        key = tuple(sorted(values.items()))
        if not key:
            task = self.base
        elif key in self._tasks:
            task = self._tasks[key]
            self._tasks.move_to_end(key)
        else:
            task = build_task(with_values(self.cfg.run, values))
            self.builds += 1
            if [p.id for p in task.problems] != [p.id for p in self.base.problems]:
                raise SpecsError(f"the task built for {values} has other problems than the base task")
            self._tasks[key] = task
            while len(self._tasks) > max(self.size - 1, 1):  # the base task is always kept
                old, _ = self._tasks.popitem(last=False)
                self._warm = {w for w in self._warm if w[0] != old}
        if run is not None and (key, run.method) not in self._warm:
            if not isinstance(task.parts.clock, SimClock):
                warm_up(task, [run], self.warmup)
            self._warm.add((key, run.method))
        return task


def search_prefix(
    pairs: Sequence[tuple[Task, PlannedRun]],
    count: int,
    writer: ResultsWriter,
    on_problem: Callable[[int], None] | None = None,
) -> None:
    """Search the first ``count`` problems with every (task, run) not yet in ``writer``, one problem at a time, the
    runs taking turns with their order rotating from problem to problem (``run_grid``'s ``order: problem``, over
    runs that may need different tasks), so a slow spell of the machine hits them alike. ``on_problem(i)`` after
    each problem."""
    done = writer.done
    for i in range(count):
        if on_problem is not None and i:
            on_problem(i)
        turn = i % len(pairs)
        for task, run in [*pairs[turn:], *pairs[:turn]]:
            problem = task.problems[i]
            if (*run.key, problem.id) in done:
                continue
            extra: dict[str, Any] = {
                "method": run.method,
                "strategy": run.config.strategy,
                "n": run.n,
                "seed": run.seed,
            }
            if run.settings:
                extra["settings"] = dict(run.settings)
            one = dataclasses.replace(task, problems=[problem])
            search_task(one, run.config, run.seed, on_result=writer.write, extra=extra)


def run_result(records: Sequence[dict[str, Any]], run: PlannedRun, ids: set[str]) -> dict[str, Any]:
    """``{problems, accuracy, latency_s}`` of ``run``'s records of the problems ``ids``."""
    mine = [r for r in records if record_key(r)[:3] == run.key and r["id"] in ids]
    s = summarize(mine)
    if s["accuracy"] is None:
        raise SpecsError(f"{run.label}: no problem was graded; tune needs graded problems")
    return {"problems": len(mine), "accuracy": s["accuracy"], "latency_s": s["latency_mean_s"]}


class TrialRunner:
    """Runs one trial rung by rung: its records go to ``out/trials/<method>/<root>/results.jsonl`` (resumable: a
    retried trial, with its root's seed, searches only what its root had not), and after each rung
    ``keep_going(rung, result)`` says whether to search the next.

    ``paired``: the reference searches the same problems, the two taking turns, and the trial's ``latency_s`` is
    its mean latency over the reference's on those problems, times the reference's mean on the whole tune set
    (``reference_latency``): a latency in the reference's seconds, measured under the same load as the reference.
    ``raw_latency_s`` is the trial's own mean."""

    def __init__(
        self,
        cfg: TuneConfig,
        plan: StudyPlan,
        out: Path,
        tasks: TaskCache,
        *,
        paired: bool = False,
        reference_latency: float | None = None,
    ) -> None:
        self.cfg, self.plan, self.out, self.tasks = cfg, plan, out, tasks
        self.paired = paired and plan.reference is not None
        self.reference_latency = reference_latency
        if self.paired and reference_latency is None:
            raise SpecsError("paired trials need the reference's latency on the tune set")
        n = len(tasks.base.problems)
        self.counts = [*cfg.tune.rungs, n]
        self.ids = [p.id for p in tasks.base.problems]
        self.on_problem: Callable[[int], None] | None = None  # progress: problems of the current trial done

    def records_path(self, method: str, root: int) -> Path:
        return self.out / "trials" / method / str(root) / "results.jsonl"

    def run(
        self,
        method: str,
        params: dict[str, Any],
        seed: int,
        root: int,
        keep_going: Callable[[int, dict[str, Any]], bool] = lambda rung, result: True,
    ) -> list[dict[str, Any]]:
        """The results of the rungs searched (the last one on every problem unless a rung stopped it)."""
        run, values = trial_run(self.cfg, method, params, seed)
        pairs = [(self.tasks.get(values, run), run)]
        ref = self.plan.reference
        if self.paired and ref is not None:
            pairs.append((self.tasks.get({}, ref), ref))
        path = self.records_path(method, root)
        path.parent.mkdir(parents=True, exist_ok=True)
        results = []
        with ResultsWriter(path) as writer:
            for rung, count in enumerate(self.counts):
                search_prefix(pairs, count, writer, self.on_problem)
                ids = set(self.ids[:count])
                result = run_result(writer.records, run, ids)
                result["raw_latency_s"] = result["latency_s"]
                if len(pairs) > 1 and ref is not None:
                    companion = run_result(writer.records, ref, ids)["latency_s"]
                    result["reference_latency_s"] = companion
                    result["ratio"] = result["raw_latency_s"] / companion if companion > 0 else math.nan
                    result["latency_s"] = result["ratio"] * self.reference_latency
                results.append(result)
                if rung < len(self.counts) - 1 and not keep_going(rung, result):
                    break
        return results


def beaten_by(
    mine: dict[str, Any], others: Sequence[dict[str, Any]], points: float, latency: float
) -> dict[str, Any] | None:
    """The first of ``others`` (results at the same rung) that beats ``mine`` by a margin, or None.

    ``q`` beats ``t`` when it is faster by more than the fraction ``latency`` at no lower accuracy,
    ``q.latency * (1 + latency) < t.latency and q.accuracy >= t.accuracy``, or more accurate by more than
    ``points`` at no higher latency, ``q.accuracy > t.accuracy + points / 100 and q.latency <= t.latency``. With both
    margins 0 this is Pareto dominance; the margins keep trials that are within noise of the rung's front.

    >>> beaten_by({"accuracy": 0.9, "latency_s": 1.0}, [{"accuracy": 0.9, "latency_s": 0.95}], 0, 0.1) is None
    True
    >>> beaten_by({"accuracy": 0.9, "latency_s": 1.0}, [{"accuracy": 0.9, "latency_s": 0.5}], 0, 0.1)
    {'accuracy': 0.9, 'latency_s': 0.5}
    """
    eps = 1e-9
    for q in others:
        faster = (
            q["latency_s"] * (1 + latency) < mine["latency_s"] and q["accuracy"] >= mine["accuracy"] - eps
        )
        better = q["accuracy"] > mine["accuracy"] + points / 100 + eps and q["latency_s"] <= mine["latency_s"]
        if faster or better:
            return q
    return None
