"""Plain data types shared by the search loop, the backends, the theory and the workbenches.

A response is a sequence of steps; a step is a token sequence (ALGORITHM.md §1). A ``Trace`` is a partial
response, the state ``s_h = (x, y^1..y^h)`` the search carries; a ``Candidate`` is one proposed next step.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Mode(enum.StrEnum):
    """Who writes the next step in SPECS (ALGORITHM.md §3)."""

    DRAFT = "draft"
    TARGET = "target"


@dataclass(frozen=True)
class Problem:
    """One prompt ``x``. ``answer`` is the gold answer when one exists (graded tasks); ``meta`` is free-form."""

    id: str
    prompt: str
    answer: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Candidate:
    """One proposed step.

    ``logprobs`` are the per-token log-probabilities of ``token_ids`` under the model that sampled them (the draft
    in draft mode, the target in target mode). ``finished`` is True when the step ends the response
    (end-of-sequence, the horizon of a tabular task, or the token limit).
    """

    token_ids: tuple[int, ...]
    text: str
    logprobs: tuple[float, ...]
    finished: bool

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def logprob(self) -> float:
        return float(sum(self.logprobs))


@dataclass(frozen=True)
class Trace:
    """A partial response: the problem and the steps kept so far. Immutable; ``extend`` returns a new trace."""

    problem: Problem
    steps: tuple[Candidate, ...] = ()

    def extend(self, step: Candidate) -> Trace:
        return Trace(self.problem, (*self.steps, step))

    @property
    def finished(self) -> bool:
        return bool(self.steps) and self.steps[-1].finished

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.steps)

    @property
    def token_ids(self) -> tuple[int, ...]:
        return tuple(t for s in self.steps for t in s.token_ids)


STAGES = ("draft", "target_score", "target_generate", "reward")


@dataclass
class Ledger:
    """Latency (seconds per stage) and token counts (per model) charged to one problem."""

    latency_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    tokens: dict[str, int] = field(default_factory=lambda: {"draft": 0, "target": 0})
    total_s: float = 0.0

    def charge(self, stage: str, seconds: float) -> None:
        if stage not in self.latency_s:
            raise KeyError(f"unknown stage {stage!r}; stages are {STAGES}")
        self.latency_s[stage] += seconds

    def as_record(self) -> dict[str, dict[str, float] | dict[str, int]]:
        return {"latency_s": {**self.latency_s, "total": self.total_s}, "tokens": dict(self.tokens)}


@dataclass
class StepRecord:
    """What happened at one step of one problem.

    ``source`` is who wrote the kept step. ``deferred`` is True when every draft was rejected and the target wrote
    the step instead. ``scores`` are the selection scores of the candidates the kept step was chosen from (soft
    verification scores in draft mode, rewards in target mode); ``chosen`` indexes them; ``rewards`` are the PRM
    rewards of the same candidates.
    """

    text: str
    source: Mode
    deferred: bool
    n_candidates: int
    scores: list[float]
    rewards: list[float]
    chosen: int
    latency_s: dict[str, float] = field(default_factory=dict)

    @property
    def score(self) -> float:
        return self.scores[self.chosen] if self.scores else float("nan")

    @property
    def reward(self) -> float:
        return self.rewards[self.chosen] if self.rewards else float("nan")

    def as_record(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "source": str(self.source),
            "deferred": self.deferred,
            "n_candidates": self.n_candidates,
            "score": _finite_or_none(self.score),
            "reward": _finite_or_none(self.reward),
            "scores": [_finite_or_none(s) for s in self.scores],
            "chosen": self.chosen,
        }


@dataclass
class SearchResult:
    """The outcome of one search on one problem: the kept trace, its answer, and what it cost."""

    problem: Problem
    method: str
    trace: Trace
    answer: str
    final_reward: float
    steps: list[StepRecord]
    ledger: Ledger
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def draft_step_fraction(self) -> float:
        return sum(s.source == Mode.DRAFT for s in self.steps) / max(len(self.steps), 1)

    @property
    def deferrals(self) -> int:
        return sum(s.deferred for s in self.steps)


def _finite_or_none(x: float) -> float | None:
    """JSON has no inf/nan: map them to null so records stay valid JSON."""
    return None if x != x or x in (float("inf"), float("-inf")) else float(x)
