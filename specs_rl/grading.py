"""Trustworthy grading: the last ``\\boxed{}`` answer, compared with the gold answer by Math-Verify.

Math-Verify uses ``signal.alarm`` for its timeouts, which only works on the main thread; here its internal
timeouts are disabled and every comparison is bounded by a worker process instead (``Grader``), so grading is safe
from threads and a pathological expression cannot hang a run. The grader's name and version go with every result.
"""

from __future__ import annotations

import importlib.metadata
import multiprocessing as mp
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from specs_rl.types import SearchResult, Trace


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, nested braces respected.

    >>> extract_boxed(r"so \\boxed{\\frac{1}{2}} and then \\boxed{x^{2}}")
    'x^{2}'
    >>> extract_boxed("no box") is None
    True
    """
    for marker in ("\\boxed", "\\fbox"):
        start = text.rfind(marker)
        if start < 0:
            continue
        i = start + len(marker)
        while i < len(text) and text[i] == " ":
            i += 1
        if i >= len(text) or text[i] != "{":
            # \boxed 5  (space form)
            rest = text[i:].split("$")[0].strip()
            return rest.split()[0] if rest else None
        depth, j = 0, i
        while j < len(text):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    return text[i + 1 : j]
            j += 1
        return None
    return None


def _verify(gold: str, pred: str) -> bool:
    """Math-Verify comparison with its signal-based timeouts disabled (runs inside a worker process)."""
    import logging

    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    g = parse(f"${gold}$", parsing_timeout=None)
    p = parse(f"${pred}$", parsing_timeout=None)
    if not g or not p:
        return gold.strip() == pred.strip()
    return bool(verify(g, p, timeout_seconds=None))


def _warm() -> bool:
    """Import math-verify in a fresh worker (so the first timed call pays no import)."""
    import math_verify  # noqa: F401

    return True


def grader_info() -> dict[str, str]:
    try:
        version = importlib.metadata.version("math-verify")
    except importlib.metadata.PackageNotFoundError:
        version = "missing"
    return {"name": "math-verify", "version": version}


@dataclass
class Grade:
    correct: bool
    pred: str | None
    gold: str
    timed_out: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"correct": self.correct, "pred": self.pred, "gold": self.gold, "timed_out": self.timed_out}


class Grader:
    """Grades answers in a pool of worker processes, each call bounded by ``timeout_s``.

    Without math-verify installed it falls back to exact string comparison of the normalized answers (and says
    so in ``info``)."""

    def __init__(self, timeout_s: float = 10.0, workers: int = 1, startup_timeout_s: float = 120.0) -> None:
        self.timeout_s = timeout_s
        self.startup_timeout_s = startup_timeout_s
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self.info = grader_info()
        _LIVE.add(self)

    def _get_pool(self) -> ProcessPoolExecutor:
        """The worker pool, started and warmed (math-verify imported) before any timed call: the start-up of a
        spawned worker (seconds) must not count against ``timeout_s``."""
        with self._lock:  # several threads may grade at once: one pool
            if self._pool is None:
                pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"))
                try:
                    for f in [pool.submit(_warm) for _ in range(self.workers)]:
                        f.result(timeout=self.startup_timeout_s)
                except BaseException:
                    for p in list(getattr(pool, "_processes", {}).values()):
                        p.kill()
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
                self._pool = pool
            return self._pool

    def equal(self, gold: str, pred: str) -> tuple[bool, bool]:
        """(equal, timed_out). A call past ``timeout_s`` kills the workers (a fresh pool serves the next call)
        and counts as not equal; so does a worker that dies twice in a row."""
        if self.info["version"] == "missing":
            return _normalize(gold) == _normalize(pred), False
        for _attempt in range(2):
            try:
                fut = self._get_pool().submit(_verify, gold, pred)
                return fut.result(timeout=self.timeout_s), False
            except FutureTimeout:
                self.close(kill=True)
                return False, True
            except BrokenProcessPool:
                self.close(kill=True)
        return False, True

    def grade(self, text: str, gold: str) -> Grade:
        pred = extract_boxed(text)
        if pred is None:
            return Grade(False, None, gold)
        ok, timed_out = self.equal(gold, pred)
        return Grade(ok, pred, gold, timed_out)

    def close(self, kill: bool = False, join_s: float = 10.0) -> None:
        """Shut the pool down (``kill``: its workers killed first, for a hung call or an error path). Either way its
        manager thread is joined here (at most ``join_s`` after a kill): a pool whose thread is still closing when
        the interpreter's exit hook wakes it raced in CPython's ``_python_exit`` (the wake-up of a pipe being
        closed, not under the pool's lock) and printed a traceback after a command's one error line."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        thread = getattr(pool, "_executor_manager_thread", None)  # shutdown() lets go of it
        if kill:
            for p in list(getattr(pool, "_processes", {}).values()):
                p.kill()
        pool.shutdown(wait=not kill, cancel_futures=True)
        if thread is not None:
            thread.join(timeout=join_s)

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_LIVE: weakref.WeakSet[Grader] = weakref.WeakSet()


def close_all(kill: bool = False) -> None:
    """Shut down every live grader's worker pool (``kill``: at once, on an error path). A command calls it before
    it exits (:func:`specs_rl.cli.entry_point`): a pool left to the interpreter's exit hook is joined while the
    process is already tearing down, which under load printed a traceback after the command's one error line."""
    for grader in list(_LIVE):
        grader.close(kill=kill)


def boxed_answer(trace: Trace) -> str:
    """The last ``\\boxed{}`` of the response, or "" when there is none (the answer both model backends report)."""
    return extract_boxed(trace.text) or ""


def boxed_answer_grade(
    answer_of: Callable[[Trace], str], grader: Grader | None = None
) -> tuple[Callable[[SearchResult], dict[str, Any]], dict[str, str]]:
    """How a math task grades a result, for every backend that searches a dataset: the last ``\\boxed{}`` of the
    response against the gold answer (:class:`Grader`). Returns ``(grade, grader info)``; ``grade`` gives
    ``correct``, ``pred``, ``gold``, ``timed_out`` (``correct: None`` and the extracted answer when a problem has
    no gold answer)."""
    grader = grader or Grader()

    def grade(result: SearchResult) -> dict[str, Any]:
        gold = result.problem.answer
        if gold is None:
            return {"correct": None, "pred": answer_of(result.trace) or None, "gold": None}
        return grader.grade(result.trace.text, gold).as_dict()

    return grade, dict(grader.info)


def _normalize(s: str) -> str:
    return s.replace(" ", "").replace("\\!", "").rstrip(".").strip("$")
