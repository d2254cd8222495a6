"""Soft verification, rejection, selection and the draft/target mode switch: pure functions of tensors.

The search loop, the tests and the theory workbench all call these same functions (docs/algorithm.md §3).
No model is touched here.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from specs_rl.types import Mode

ScoreForm = Literal["exact", "mean", "reward_only"]
SCORE_FORMS: tuple[str, ...] = ("exact", "mean", "reward_only")


def soft_scores(
    target_logprob: torch.Tensor,
    draft_logprob: torch.Tensor,
    rewards: torch.Tensor,
    beta: float,
    *,
    form: ScoreForm = "exact",
    target_len: torch.Tensor | None = None,
    draft_len: torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft-verification score of each of ``n`` candidate steps.

    With ``L_t = log π_t(y_i|s)`` and ``L_d = log π_d(y_i|s)`` summed over the step's tokens:

    - ``exact`` (theory form): ``score_i = L_t - L_d + β r_i``; sampling ∝ ``exp(score)`` is self-normalized
      importance sampling towards ``π_t e^{β r}``.
    - ``mean`` (authors' code form): ``score_i = L_t/|y_i|_t - L_d/|y_i|_d + β r_i``, the per-token mean of the
      log ratio (the two lengths differ only when the tokenizers differ).
    - ``reward_only`` (the "no target" ablation): ``score_i = β r_i``.

    Shapes: every input ``[n]``; returns ``[n]`` float64.

    >>> soft_scores(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([0.5]), 2.0).tolist()
    [2.0]
    """
    if form not in SCORE_FORMS:
        raise ValueError(f"score form must be one of {SCORE_FORMS}, got {form!r}")
    rewards = rewards.to(torch.float64)
    if form == "reward_only":
        return beta * rewards
    lt, ld = target_logprob.to(torch.float64), draft_logprob.to(torch.float64)
    if form == "mean":
        if target_len is None or draft_len is None:
            raise ValueError("the 'mean' score form needs target_len and draft_len")
        lt = lt / target_len.clamp(min=1).to(torch.float64)
        ld = ld / draft_len.clamp(min=1).to(torch.float64)
    return lt - ld + beta * rewards


def keep_mask(scores: torch.Tensor, tau_reject: float) -> torch.Tensor:
    """Rejection rule [code]: candidates with ``score <= tau_reject`` are dropped. ``[n] -> [n] bool``.

    ``tau_reject = -inf`` keeps every candidate of nonzero weight (never defers unless the target gives every draft
    probability 0); ``+inf`` drops everything (always defers). A score of ``-inf`` (weight ``w = 0``) is always
    dropped: there is nothing to select it by.
    """
    if math.isinf(tau_reject) and tau_reject < 0:
        return scores > -math.inf
    return scores > tau_reject


def selection_log_probs(
    scores: torch.Tensor, keep: torch.Tensor | None = None, temperature: float = 1.0
) -> torch.Tensor:
    """Log-probabilities of SUBSAMPLE: ``softmax(score / T)`` over the kept candidates, ``-inf`` elsewhere.

    ``temperature = 0`` is argmax (ties go to the lowest index). Needs at least one kept candidate.
    Shapes: ``[n] -> [n]``.

    >>> selection_log_probs(torch.tensor([0.0, 0.0]), temperature=1.0).exp().tolist()
    [0.5, 0.5]
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    scores = scores.to(torch.float64)
    if keep is None:
        keep = torch.ones_like(scores, dtype=torch.bool)
    if not bool(keep.any()):
        raise ValueError("no candidate survived rejection; the step must be deferred")
    masked = scores.masked_fill(~keep, float("-inf"))
    if temperature == 0:
        out = torch.full_like(masked, float("-inf"))
        out[int(torch.argmax(masked))] = 0.0
        return out
    z = masked / temperature
    return z - torch.logsumexp(z, dim=0)


def select(
    scores: torch.Tensor,
    generator: torch.Generator,
    keep: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> int:
    """Draw one index with probability ``softmax(score / T)`` over the kept candidates (Gumbel-max, log space)."""
    logp = selection_log_probs(scores, keep, temperature)
    if temperature == 0:
        return int(torch.argmax(logp))
    u = torch.rand(logp.shape, generator=generator, dtype=torch.float64).clamp_(min=1e-300)
    gumbel = -torch.log(-torch.log(u))
    return int(torch.argmax(logp + gumbel))


def acceptance_test(
    scores: torch.Tensor, rewards: torch.Tensor, *, on: str, tau_reject: float, rsd_delta: float
) -> torch.Tensor:
    """Select-then-test: whether each candidate would be kept if it were the chosen one. ``[n] -> [n] bool``.

    - ``on='score'``: ``score_i > tau_reject`` (GSI's ``threshold_on_tilted``, accept when ``>``; the same
      comparison as :func:`keep_mask`, so a threshold means the same in both acceptance rules);
    - ``on='reward'``: ``r_i >= rsd_delta`` (RSD's rule; GSI's "RSD adapted to best-of-n").

    A candidate of weight 0 (score ``-inf``) is never chosen, so its entry does not matter.

    >>> acceptance_test(torch.tensor([0.5, 2.0]), torch.tensor([0.8, 0.1]), on="reward", tau_reject=1.0,
    ...                 rsd_delta=0.7).tolist()
    [True, False]
    """
    if on == "score":
        return keep_mask(scores, tau_reject)
    if on == "reward":
        return rewards.to(torch.float64) >= rsd_delta
    raise ValueError(f"the acceptance test is on score or reward, got {on!r}")


def select_test_log_probs(
    scores: torch.Tensor, passes: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The law of select-then-test (GSI) given the ``n`` drafted candidates: ``(log P(i chosen and kept) [n],
    log P(defer) [])``.

    One candidate is chosen by ``softmax(score / T)`` over ALL candidates of nonzero weight (no filter before the
    choice), then kept iff it passes the test:

        P(keep i) = softmax(score / T)_i · 1[passes_i],    P(defer) = Σ_i softmax(score / T)_i · 1[not passes_i]

    (``P(defer) = 1`` when every candidate has weight 0). Compare filter-then-select (:func:`keep_mask`, then
    :func:`selection_log_probs` over the survivors), which defers only when *every* candidate fails.

    >>> acc, defer = select_test_log_probs(torch.tensor([0.0, 0.0]), torch.tensor([True, False]))
    >>> acc.exp().tolist(), round(defer.exp().item(), 12)
    ([0.5, 0.0], 0.5)
    """
    selectable = keep_mask(scores, -math.inf)  # [n]
    if not bool(selectable.any()):
        return torch.full(scores.shape, float("-inf"), dtype=torch.float64), torch.tensor(
            0.0, dtype=torch.float64
        )
    logp = selection_log_probs(scores, selectable, temperature)  # [n]
    passes = passes.to(torch.bool)
    keep = logp.masked_fill(~passes, float("-inf"))
    defer = torch.logsumexp(logp.masked_fill(passes, float("-inf")), dim=0)
    return keep, defer


def select_then_test(
    scores: torch.Tensor, passes: torch.Tensor, generator: torch.Generator, temperature: float = 1.0
) -> int | None:
    """Draw one candidate by ``softmax(score / T)`` over all candidates of nonzero weight (:func:`select`) and
    return its index if it passes the test, else ``None`` (defer). Its law is :func:`select_test_log_probs`."""
    selectable = keep_mask(scores, -math.inf)
    if not bool(selectable.any()):
        return None
    idx = select(scores, generator, selectable, temperature)
    return idx if bool(passes[idx]) else None


def next_mode(source: Mode, *, best_target_reward: float | None, tau_switch: float) -> Mode:
    """The draft/target switch, state in, state out [code].

    After a step the draft wrote (accepted), stay in draft mode. After a step the target wrote (target mode, or a
    deferred draft step), try the draft next if the best target reward exceeds ``tau_switch``, else stay in
    target mode.

    >>> next_mode(Mode.TARGET, best_target_reward=0.9, tau_switch=0.7)
    <Mode.DRAFT: 'draft'>
    """
    if source == Mode.DRAFT:
        return Mode.DRAFT
    if best_target_reward is None:
        raise ValueError("a target-written step needs its best reward to decide the next mode")
    return Mode.DRAFT if best_target_reward > tau_switch else Mode.TARGET
