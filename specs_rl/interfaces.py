"""The parts a search is built from, as small one-method protocols (propose / score / reward / clock).

Every backend (the exact tabular one, the Hugging Face one, a served one) implements these; the search
strategies in :mod:`specs_rl.search` see nothing else. The backend contract suite in ``tests/`` checks any
implementation against the same assertions.

Randomness is passed in, one ``torch.Generator`` per problem (:data:`Generators`): a search hands each prefix the
generator of its problem, and a part draws a prefix's randomness from that generator alone, so a problem's draws
depend on its generator and never on the other problems of the batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch

from specs_rl.types import Candidate, Problem, SearchResult, Trace

R = TypeVar("R")

Generators = torch.Generator | Sequence[torch.Generator]
"""One generator per item (problem or prefix), aligned with the items; a single generator is shared by all."""


def generator_list(generators: Generators, count: int) -> list[torch.Generator]:
    """One generator per item: ``generators`` itself when it is a sequence of ``count`` generators, or a single
    generator repeated ``count`` times (shared: then the items' draws depend on one another, as one stream)."""
    if isinstance(generators, torch.Generator):
        return [generators] * count
    gens = list(generators)
    if len(gens) != count:
        raise ValueError(f"expected one generator per item ({count} items), got {len(gens)} generators")
    for g in gens:
        if not isinstance(g, torch.Generator):
            raise TypeError(f"expected torch.Generator, got {type(g).__name__}")
    return gens


def prefix_seeds(generators: Generators, keys: Sequence[Any]) -> list[tuple[int, int]]:
    """``(call seed, occurrence)`` of each prefix of one sampling call, for backends that seed per prefix.

    Each distinct generator (by identity) draws one 62-bit call seed, at its first prefix, and its prefixes share
    it; ``occurrence`` counts the earlier prefixes of the call with the same generator and the same ``key`` (the
    prefix's token ids), so identical prefixes of one problem get different streams. A prefix's pair depends only
    on its generator's state and on the prefixes that share its generator, never on the others.

    >>> g = torch.Generator().manual_seed(0)
    >>> (a, i), (b, j) = prefix_seeds(g, [(1, 2), (1, 2)])
    >>> a == b, (i, j)
    (True, (0, 1))
    """
    gens = generator_list(generators, len(keys))
    drawn: dict[int, int] = {}
    seen: dict[tuple[int, Any], int] = {}
    out = []
    for g, key in zip(gens, keys):
        if id(g) not in drawn:
            drawn[id(g)] = int(torch.randint(0, 2**62, (1,), generator=g))
        occ = seen.get((id(g), key), 0)
        seen[(id(g), key)] = occ + 1
        out.append((drawn[id(g)], occ))
    return out


@runtime_checkable
class StepSampler(Protocol):
    """Samples candidate next steps from one model (the draft, or the target in target mode)."""

    def propose(
        self,
        prefixes: Sequence[Trace],
        n: int,
        generators: Generators,
        *,
        to_end: bool = False,
    ) -> list[list[Candidate]]:
        """Return ``n`` sampled steps for every prefix, ``out[i][j]`` the j-th step after ``prefixes[i]``.

        Each candidate carries its per-token log-probs under this model. ``to_end=True`` asks for the rest of the
        response in one candidate (used for the last allowed step). ``generators``: one per prefix (the prefix's
        problem's; see :func:`generator_list`); a prefix's steps are drawn from its own generator only.
        """
        ...


Drafter = StepSampler
TargetGenerator = StepSampler


@runtime_checkable
class TargetScorer(Protocol):
    """Log-probabilities of given steps under the target, in one forward pass, with no generation."""

    def score(
        self, prefixes: Sequence[Trace], candidates: Sequence[Sequence[Candidate]]
    ) -> list[list[tuple[float, ...]]]:
        """Per-token target log-probs of every candidate: ``out[i][j]`` for ``candidates[i][j]`` after
        ``prefixes[i]``. When draft and target tokenize differently the tuple is in the target's tokens."""
        ...


@runtime_checkable
class RewardModel(Protocol):
    """A process reward model: the reward ``r(s ∘ y)`` of a prefix extended by a step, in [0, 1]."""

    def score(
        self, prefixes: Sequence[Trace], candidates: Sequence[Sequence[Candidate]]
    ) -> list[list[float]]: ...


@runtime_checkable
class StepJudge(Protocol):
    """A judge of written steps (SpecReason, Pan et al. 2025): a score in [0, 9] of a prefix extended by a step."""

    def judge(
        self, prefixes: Sequence[Trace], candidates: Sequence[Sequence[Candidate]]
    ) -> list[list[float]]:
        """The score of every candidate, ``out[i][j]`` for ``candidates[i][j]`` after ``prefixes[i]``: the
        expected value of a 0-9 grade (the target judge: ``Σ_d d · p(d)`` over the digit tokens at the answer
        position of its scoring prompt, renormalized over the digits)."""
        ...


JUDGE_SCALE = 9.0  # the top of SpecReason's 0-9 scale


@dataclass
class PrmJudge:
    """``StepJudge`` from a process reward model, on any backend: ``score = 9 · r(s ∘ y)`` (``r`` in [0, 1]), so a
    threshold ``t`` on the judge's scale is the reward threshold ``t / 9`` (chosen here: the PRM stands in for the
    target's judgement where the target cannot follow a judging prompt, the toy world)."""

    prm: RewardModel

    def judge(
        self, prefixes: Sequence[Trace], candidates: Sequence[Sequence[Candidate]]
    ) -> list[list[float]]:
        return [[JUDGE_SCALE * float(r) for r in row] for row in self.prm.score(prefixes, candidates)]


@runtime_checkable
class Clock(Protocol):
    """Where stage latencies come from: wall time (synchronized on CUDA) or a simulated cost model."""

    def now(self) -> float: ...

    def concurrently(self, *calls: Callable[[], Any]) -> tuple[list[Any], list[float], float]:
        """Run ``calls`` at the same time: ``(results, each call's seconds, wall seconds of the whole section)``.
        The calls overlap, so the section's wall time is what a problem waits, never the sum of the calls."""
        ...


def _timed_call(clock: Clock, call: Callable[[], R]) -> tuple[R, float]:
    t0 = clock.now()
    out = call()
    return out, clock.now() - t0


class WallClock:
    """``time.perf_counter``, synchronizing CUDA first so queued kernels are counted in the stage that queued them."""

    def __init__(self, sync_cuda: bool | None = None) -> None:
        self.sync_cuda = torch.cuda.is_available() if sync_cuda is None else sync_cuda

    def now(self) -> float:
        if self.sync_cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def concurrently(self, *calls: Callable[[], Any]) -> tuple[list[Any], list[float], float]:
        """One thread per call (models release the GIL in their kernels; served backends wait on the network)."""
        t0 = self.now()
        with ThreadPoolExecutor(max_workers=len(calls)) as pool:
            done = [f.result() for f in [pool.submit(_timed_call, self, c) for c in calls]]
        return [r for r, _ in done], [dt for _, dt in done], self.now() - t0


class SimClock:
    """A simulated clock that only moves when a backend charges it (tabular backend, theory)."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds

    def concurrently(self, *calls: Callable[[], Any]) -> tuple[list[Any], list[float], float]:
        """Simulated overlap: each call runs in turn from the same start time, then the clock stands at the start
        plus the longest call (threads would race on the shared clock and add the calls up)."""
        t0 = self.t
        results, durations = [], []
        for call in calls:
            self.t = t0
            out, dt = _timed_call(self, call)
            results.append(out)
            durations.append(dt)
        self.t = t0 + max(durations, default=0.0)
        return results, durations, self.t - t0


def _identity_answer(trace: Trace) -> str:
    return trace.text


@dataclass
class SearchParts:
    """Everything a search strategy needs from the outside world.

    ``answer_of`` maps a finished trace to its final answer (the boxed expression for math; the sequence itself for a
    tabular task), used for voting and grading. ``judge`` is the target reading a scoring prompt (``specreason``
    with ``judge: target``), on the backends that implement one.
    """

    drafter: StepSampler
    target: StepSampler
    scorer: TargetScorer
    prm: RewardModel
    clock: Clock
    answer_of: Callable[[Trace], str] = _identity_answer
    # the target judge (SpecReason's judge: target); None where the backend has none
    judge: StepJudge | None = None
    # k -> a target sampler that writes by exact speculative sampling with the drafter (SearchConfig
    # .speculative_tokens); None where the backend has no token-level parts
    speculative_target: Callable[[int], StepSampler] | None = None


@dataclass
class Task:
    """Problems, the parts that search them, and how a result is graded.

    ``grade(result) -> {"correct": bool | None, ...}`` (extra keys go into the result's record); ``grader`` names
    what decides ``correct`` (``{"name", "version"}``), recorded with every result so runs graded differently are
    never merged. Each backend builds one from a run config (:mod:`specs_rl.run.backends`). ``served``: what serves
    the parts when they are clients of servers (``backend: vllm``'s ``ServedParts``: the servers, the client and its
    meters, the core layout), else None.
    """

    name: str
    problems: list[Problem]
    parts: SearchParts
    grade: Callable[[SearchResult], dict[str, Any]]
    grader: dict[str, str] = field(default_factory=lambda: {"name": "none", "version": "-"})
    served: Any = None
