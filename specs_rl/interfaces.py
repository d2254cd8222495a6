"""The parts a search is built from, as small one-method protocols (propose / score / reward / clock).

Every backend (the exact tabular one, the Hugging Face one, a served one) implements these; the search
strategies in :mod:`specs_rl.search` see nothing else. The backend contract suite in ``tests/`` checks any
implementation against the same assertions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from specs_rl.types import Candidate, Trace


@runtime_checkable
class StepSampler(Protocol):
    """Samples candidate next steps from one model (the draft, or the target in target mode)."""

    def propose(
        self,
        prefixes: Sequence[Trace],
        n: int,
        generator: torch.Generator,
        *,
        to_end: bool = False,
    ) -> list[list[Candidate]]:
        """Return ``n`` sampled steps for every prefix, ``out[i][j]`` the j-th step after ``prefixes[i]``.

        Each candidate carries its per-token log-probs under this model. ``to_end=True`` asks for the rest of the
        response in one candidate (used for the last allowed step).
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
class Clock(Protocol):
    """Where stage latencies come from: wall time (synchronized on CUDA) or a simulated cost model."""

    def now(self) -> float: ...


class WallClock:
    """``time.perf_counter``, synchronizing CUDA first so queued kernels are counted in the stage that queued them."""

    def __init__(self, sync_cuda: bool | None = None) -> None:
        self.sync_cuda = torch.cuda.is_available() if sync_cuda is None else sync_cuda

    def now(self) -> float:
        if self.sync_cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


class SimClock:
    """A simulated clock that only moves when a backend charges it (tabular backend, theory)."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def _identity_answer(trace: Trace) -> str:
    return trace.text


@dataclass
class SearchParts:
    """Everything a search strategy needs from the outside world.

    ``answer_of`` maps a finished trace to its final answer (the boxed expression for math; the sequence itself for a
    tabular task), used for voting and grading.
    """

    drafter: StepSampler
    target: StepSampler
    scorer: TargetScorer
    prm: RewardModel
    clock: Clock
    answer_of: Callable[[Trace], str] = _identity_answer
