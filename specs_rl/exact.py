"""Exact laws of SPECS on a tabular tree, and of the KL-regularized optimum it approximates (docs/algorithm.md §2, theory/README.md §2).

Everything is numpy/scipy, in log space, vectorized over the rows (prefixes) of a tree level. Besides numpy and scipy
this module imports only plain data: the settings a search reads (:class:`specs_rl.settings.SearchConfig`, so a law
is asked for with the very config the search runs) and the tree (:class:`specs_rl.tree.TabularTree`); no torch, no
backend. The tree's level
arrays are used as they are: ``tree.target[h]``, ``tree.draft[h]`` are ``[K**h, K]`` and ``tree.reward`` is
``[K**H]``, prefixes in lexicographic order (:class:`specs_rl.tabular.TabularTree`).

The one-step laws describe exactly the process :func:`specs_rl.search.specs` runs: ``n`` candidates drawn i.i.d.
(duplicates are separate candidates), scored by :func:`specs_rl.verify.soft_scores`, dropped by
:func:`specs_rl.verify.keep_mask`, one kept by ``softmax(score / T)`` (:func:`specs_rl.verify.selection_log_probs`),
the step deferred to the target when every draft is dropped, and the mode moved by
:func:`specs_rl.verify.next_mode`. With ``w(y) = exp(score(y) / T)`` (``w = 0`` for a dropped candidate) and
``1/a = ∫_0^∞ e^{-ta} dt``:

- fixed n:   ``P_n(y) = n p(y) w(y) ∫_0^∞ e^{-t w(y)} M(t)^{n-1} dt``,  ``M(t) = Σ_z p(z) e^{-t w(z)}``;
- Poisson n: ``P_n(y) = n p(y) w(y) ∫_0^∞ e^{-t w(y)} exp(n Σ_z p(z) (e^{-t w(z)} - 1)) dt``;
- argmax (T = 0): ``P_n(y) = (G(y)^n - G⁻(y)^n) p(y) / p(ties of y)``, ``G`` the CDF of the score under ``p``
  (dropped candidates count below every kept one); ties go to the first drawn, as ``torch.argmax`` does.

Select-then-test (``acceptance='select_test'``, GSI): one draft is chosen among ALL ``n`` by the selection law
``P_n^sel`` above (``w = 0`` only for drafts of target probability 0), then kept iff it passes a test that is a
function of the chosen candidate alone; so ``P(accept, y) = P_n^sel(y) 1[pass(y)]`` and ``P(defer) = 1 - Σ_y
P(accept, y)`` (:func:`draft_step_law`). The n -> ∞ laws of every variant are :func:`limit_log_law`.

The integrals are computed on ``v = log(t w(y))`` with the trapezoidal rule (``P_n(y) = n p(y) ∫ e^{v - e^v}
M(e^v / w(y))^{n-1} dv``): the integrand is analytic and decays doubly-exponentially on the right and like ``e^v``
on the left, so a uniform grid of step 0.2 is accurate to ~1e-13 relative; the range is cut per ``y`` from the
bounds ``1/(w(y) + (n-1) E_p[w]) <= ∫ e^{-t w(y)} M^{n-1} dt`` and ``M <= 1``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

from specs_rl.settings import SearchConfig
from specs_rl.tree import TabularTree

QUAD_STEP = 0.2  # trapezoid step in v = log(t w(y)); error ~ exp(-2π·1.2/step) relative
QUAD_TAIL = 36.0  # each tail cut below e^-36 of the integral (bounds in the module docstring)
_CHUNK_ELEMENTS = 1_500_000  # rows are processed in chunks of at most this many [rows, K, nodes, K] elements
ROW_ROUNDING = 1e-13  # a row of p whose sum is this close to 1 is a probability row
DRAWS = ("fixed", "poisson")

NEG_INF = -np.inf


# ------------------------------------------------------------------------------------------------------------------
# One step: the selection laws


def selection_log_law(
    log_p: np.ndarray,
    log_w: np.ndarray,
    n: int,
    *,
    draws: str = "fixed",
    step: float = QUAD_STEP,
) -> np.ndarray:
    """``log P(the kept candidate is y)`` when ``n`` candidates are drawn from ``p`` and one is kept ∝ ``w``.

    ``P_n(y) = n p(y) w(y) ∫_0^∞ e^{-t w(y)} M(t)^{n-1} dt`` with ``M(t) = Σ_z p(z) e^{-t w(z)}`` (fixed n), or
    ``exp(n Σ_z p(z)(e^{-t w(z)} - 1))`` in place of ``M^{n-1}`` (Poisson(n) candidates).

    ``log_p`` may be a sub-probability (row sums < 1 - 1e-13): the law is then the joint probability that the kept
    candidate is ``y`` and every draw fell in the support of ``p`` (fixed n only); ``log_w = -inf`` marks a dropped
    candidate (it is drawn but never kept). The rows sum to ``1 - P(every draw dropped)`` (fixed n, full ``p``) or
    ``1 - exp(-n P(kept))`` (Poisson).

    Shapes: ``log_p``, ``log_w`` ``[R, K]`` -> ``[R, K]``. ``w`` is scale-free: each row is shifted to max 0.

    >>> np.exp(selection_log_law(np.log([[0.5, 0.5]]), np.log([[1.0, 3.0]]), 2)).round(6).tolist()
    [[0.375, 0.625]]
    """
    if draws not in DRAWS:
        raise ValueError(f"draws must be one of {DRAWS}, got {draws!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    log_p = np.asarray(log_p, dtype=np.float64)
    log_w = np.asarray(log_w, dtype=np.float64)
    if log_p.shape != log_w.shape or log_p.ndim != 2:
        raise ValueError(f"log_p and log_w must both be [R, K], got {log_p.shape} and {log_w.shape}")
    p = np.exp(log_p)  # [R, K]
    kept = np.isfinite(log_w) & (p > 0)  # [R, K]
    out = np.full(log_p.shape, NEG_INF)
    if n == 1 and draws == "fixed":
        return np.where(kept, log_p, NEG_INF)
    any_kept = kept.any(axis=1)  # [R]
    shift = np.where(any_kept, np.max(np.where(kept, log_w, NEG_INF), axis=1), 0.0)  # [R]
    lw = np.where(kept, log_w - shift[:, None], NEG_INF)  # [R, K], max 0 per row
    mass = np.where(any_kept, p.sum(axis=1), 1.0)  # [R]
    # Rows within rounding of 1 are probability rows: else (n-1)(Σp - 1) would leak into the law as (Σp)^(n-1).
    defect = np.where(np.abs(mass - 1.0) <= ROW_ROUNDING, 0.0, mass - 1.0)  # [R]
    m = n - 1 if draws == "fixed" else n  # the power of M / the Poisson rate in the integrand
    with np.errstate(divide="ignore"):
        # log(E_p[w] / |p|): Jensen gives M(t) >= |p| exp(-t E_p[w] / |p|), hence the lower bound of the integral.
        log_ew = logsumexp(np.where(kept, log_p + lw, NEG_INF), axis=1) - np.log(mass)  # [R]
        lw_y = np.where(kept, lw, 0.0)  # [R, K] placeholder 0 where y is never kept
        # L_y = log(1 + m E[w] / w(y)): how far left of v = 0 the integral still matters.
        big_l = np.logaddexp(0.0, math.log(m) + log_ew[:, None] - lw_y)  # [R, K]
    v_lo = -QUAD_TAIL - big_l  # [R, K]
    v_hi = np.log(QUAD_TAIL + big_l) + 0.5  # [R, K]
    width = float(np.max(np.where(kept, v_hi - v_lo, 0.0), initial=0.0))
    nodes = int(math.ceil(width / step)) + 1
    grid = np.arange(nodes) * step  # [N]
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // (nodes * log_p.shape[1] ** 2))
    for start in range(0, log_p.shape[0], rows_per_chunk):
        sl = slice(start, start + rows_per_chunk)
        v = v_lo[sl, :, None] + grid  # [r, K(y), N]
        # t w(z) = exp(v - lw(y) + lw(z)); dropped z (lw = -inf) give 0.
        tw = np.exp(v[..., None] - lw_y[sl, :, None, None] + lw[sl, None, None, :])  # [r, K, N, K(z)]
        s = np.einsum("rynz,rz->ryn", np.expm1(-tw), p[sl])  # [r, K, N]  Σ_z p(z)(e^{-t w(z)} - 1)
        if draws == "fixed":
            with np.errstate(divide="ignore", invalid="ignore"):
                expo = m * np.log1p(np.clip(s + defect[sl, None, None], -1.0, 0.0))  # (n-1) log M(t)
        else:
            expo = m * s
        g = v - np.exp(v) + expo  # [r, K, N] log of the integrand in v
        log_int = logsumexp(g, axis=2) + math.log(step)  # [r, K]
        out[sl] = np.where(kept[sl], math.log(n) + log_p[sl] + log_int, NEG_INF)
    return out


def argmax_log_law(log_p: np.ndarray, scores: np.ndarray, n: int) -> np.ndarray:
    """``log P(the highest-scored of n draws from p is y)``; ties go to the first drawn (``torch.argmax``).

    ``P_n(y) = (G(y)^n - G⁻(y)^n) p(y) / Σ_{z: s(z) = s(y)} p(z)`` with ``G(y) = P_p(s(Z) <= s(y))`` and
    ``G⁻(y) = P_p(s(Z) < s(y))``; a score of ``-inf`` marks a dropped candidate, counted below every kept one and
    never selected. This is also the best-of-n law of Beirami et al. (``s`` = reward).

    Shapes: ``[R, K] -> [R, K]``.

    >>> np.exp(argmax_log_law(np.log([[0.5, 0.5]]), np.array([[0.0, 1.0]]), 2)).round(12).tolist()
    [[0.25, 0.75]]
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    log_p = np.asarray(log_p, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    p = np.exp(log_p)  # [R, K]
    kept = np.isfinite(scores) & (p > 0)  # [R, K]
    s = np.where(kept, scores, NEG_INF)
    below_eq = (s[:, None, :] <= s[:, :, None]) | ~kept[:, None, :]  # [R, K(y), K(z)]
    below = (s[:, None, :] < s[:, :, None]) | ~kept[:, None, :]
    ties = (s[:, None, :] == s[:, :, None]) & kept[:, None, :]
    g = np.einsum("ryz,rz->ry", below_eq, p)  # [R, K]
    g_minus = np.einsum("ryz,rz->ry", below, p)
    tie_mass = np.einsum("ryz,rz->ry", ties, p)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_g, log_gm = np.log(g), np.log(g_minus)
        # log(G^n - G⁻^n) = n log G + log(1 - (G⁻/G)^n)
        log_top = n * log_g + np.log(-np.expm1(n * (log_gm - log_g)))
        out = log_top + log_p - np.log(tie_mass)
    return np.where(kept, out, NEG_INF)


def best_of_n_log_law(log_p: np.ndarray, rewards: np.ndarray, n: int) -> np.ndarray:
    """Exact law of best-of-n (keep the highest reward of ``n`` draws from ``p``): ``F(y)^n - F⁻(y)^n``.

    ``F`` is the reward CDF under ``p``; equal rewards share their mass in proportion to ``p``. Shapes ``[K]`` or
    ``[R, K]``, returned in the same shape.
    """
    lp = np.asarray(log_p, dtype=np.float64)
    flat = lp.ndim == 1
    out = argmax_log_law(np.atleast_2d(lp), np.atleast_2d(np.asarray(rewards, dtype=np.float64)), n)
    return out[0] if flat else out


def best_of_n_kl_bound(n: int) -> float:
    """``KL(π_bon || π_ref) <= log n - (n-1)/n`` (Beirami et al., arXiv 2401.01879)."""
    return math.log(n) - (n - 1) / n


# ------------------------------------------------------------------------------------------------------------------
# One step of SPECS from every prefix of a level


@dataclass(frozen=True)
class StepLaw:
    """One SPECS step from every prefix of a level, in log space (``R = K**h`` rows, ``K`` next symbols).

    ``accept[r, y]``: in draft mode, some draft survives and ``y`` is kept (the next mode is DRAFT).
    ``defer[r]``: in draft mode, every draft is dropped (the step is written in target mode).
    ``to_draft[r, y]`` / ``to_target[r, y]``: in target mode, ``y`` is written and the next mode is DRAFT / TARGET.
    """

    accept: np.ndarray  # [R, K]
    defer: np.ndarray  # [R]
    to_draft: np.ndarray  # [R, K]
    to_target: np.ndarray  # [R, K]


def step_scores(
    log_pt: np.ndarray, log_pd: np.ndarray, rewards: np.ndarray, beta: float, form: str
) -> np.ndarray:
    """:func:`specs_rl.verify.soft_scores` on a tabular level, where a step is one token (so ``mean`` = ``exact``).

    ``exact``/``mean``: ``log π_t(y|s) - log π_d(y|s) + β r(s∘y)``; ``reward_only``: ``β r(s∘y)``. ``[R, K]``.
    """
    if form == "reward_only":
        return beta * rewards
    if form in ("exact", "mean"):
        with np.errstate(invalid="ignore"):
            return log_pt - log_pd + beta * rewards
    raise ValueError(f"score form must be one of exact, mean, reward_only; got {form!r}")


def stays_in_draft(config: SearchConfig) -> bool:
    """Whether the search never leaves draft mode: it starts there and its draft test never fails a draft of
    nonzero weight (``tau_reject = -inf`` on the score, ``rsd_delta = -inf`` on the reward)."""
    return config.start_mode == "draft" and config.draft_threshold() == -math.inf


def _passes(scores: np.ndarray, rewards: np.ndarray, config: SearchConfig) -> np.ndarray:
    """:func:`specs_rl.verify.acceptance_test` on a tabular level: ``score > τ_reject`` or ``r >= rsd_delta``."""
    return rewards >= config.rsd_delta if config.accept_test == "reward" else scores > config.tau_reject


def draft_step_law(
    log_pt: np.ndarray,
    log_pd: np.ndarray,
    rewards: np.ndarray,
    config: SearchConfig,
    *,
    draws: str = "fixed",
) -> tuple[np.ndarray, np.ndarray]:
    """Draft mode: ``(log P(accept, y) [R, K], log P(defer) [R])`` for the scores, threshold, temperature and
    acceptance rule of ``config``.

    A draft symbol with ``π_t = 0`` scores ``-inf`` (weight 0): it is never kept, whatever the threshold, and the
    search defers when every draw is such a draft. With ``D`` the symbols that can be kept and
    ``P_n^sel`` the selection law over ``D`` (:func:`selection_log_law`, or :func:`argmax_log_law` at ``T = 0``):

    - ``filter`` (docs/algorithm.md §3): ``D = {z: score(z) > τ_reject, w(z) > 0}``; ``P(accept, y) = P_n^sel(y)``,
      ``P(defer) = (Σ_{z ∉ D} π_d(z))^n``.
    - ``select_test`` (GSI): ``D = {z: w(z) > 0}``: the choice is over ALL drafts, then the chosen one is tested
      (``score > τ_reject`` or ``r >= rsd_delta``). The test of candidate ``i`` is a function of its symbol ``y_i``
      alone (same prefix, same step: same score and reward), so with ``C`` the chosen index,
      ``{kept = y} = {y_C = y} ∩ {pass(y_C)}``, which is ``{y_C = y}`` when ``pass(y)`` and empty otherwise:

          P(accept, y) = P_n^sel(y) 1[pass(y)],
          P(defer) = Σ_y P_n^sel(y) 1[not pass(y)] + (Σ_{z ∉ D} π_d(z))^n,

      the last term being "every draw has weight 0" (the rows of ``P_n^sel`` sum to one minus it). Unlike the
      filter, which defers only when all ``n`` drafts fail (probability ``→ 0`` as ``n`` grows), select-then-test
      defers with probability ``→ P_∞^sel(fail) > 0`` whenever a failing symbol has limit mass.

    Poisson draws (draft mode that never defers): with no draft at all (probability ``e^{-n}``) the step is drawn
    from the tilted target conditional ``π_t(y|s) e^{β r(s∘y)} / Σ`` (= ``π*(y|s)`` under the idealized PRM)."""
    n, temperature = config.n, config.temperature
    if draws == "poisson" and config.draft_threshold() > -math.inf:
        raise ValueError("Poisson draws are implemented for a draft step that never defers (threshold -inf)")
    scores = step_scores(log_pt, log_pd, rewards, config.beta, config.score_form)  # [R, K]
    with np.errstate(divide="ignore", invalid="ignore"):
        selectable = (log_pd > NEG_INF) & (
            scores > NEG_INF
        )  # [R, K] a weight-0 draft (π_t = 0) is never kept
        keep = selectable & (scores > config.tau_reject) if config.acceptance == "filter" else selectable
        log_drop = np.log(np.where(keep, 0.0, np.exp(log_pd)).sum(axis=1))  # [R] log P_d(not in D)
    if temperature == 0:
        if draws != "fixed":
            raise ValueError("argmax selection (temperature 0) is only implemented for fixed n")
        accept = argmax_log_law(log_pd, np.where(keep, scores, NEG_INF), n)
    else:
        accept = selection_log_law(log_pd, np.where(keep, scores / temperature, NEG_INF), n, draws=draws)
    defer = n * log_drop  # [R]
    if config.acceptance == "select_test":
        passes = _passes(scores, rewards, config)  # [R, K]
        with np.errstate(divide="ignore"):
            defer = np.logaddexp(defer, logsumexp(np.where(passes, NEG_INF, accept), axis=1))
        accept = np.where(passes, accept, NEG_INF)
    if draws == "poisson":
        tilt = log_pt + config.beta * rewards
        tilt = tilt - logsumexp(tilt, axis=1, keepdims=True)
        return np.logaddexp(accept, -n + tilt), np.full(log_pt.shape[0], NEG_INF)
    return accept, defer


def target_step_law(
    log_pt: np.ndarray, rewards: np.ndarray, config: SearchConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Target mode: ``(log P(y, next DRAFT), log P(y, next TARGET))``, both ``[R, K]``.

    ``n`` target samples, the kept one the argmax reward (``target_select='argmax'``) or drawn by
    ``softmax(β r)`` (``'soft'``); the next mode is DRAFT iff the best of the ``n`` rewards exceeds ``tau_switch``.
    With ``L = {z: r(z) <= τ_switch}``, ``P(y, next TARGET) = P(y kept and all n samples in L)``: the selection law
    with ``p`` restricted to ``L``.
    """
    n, tau = config.n, config.tau_switch
    high = rewards > tau  # [R, K]
    if config.target_select == "argmax":
        law = argmax_log_law(log_pt, rewards, n)
        return np.where(high, law, NEG_INF), np.where(high, NEG_INF, law)
    if config.target_select != "soft":
        raise ValueError(f"target_select must be argmax or soft, got {config.target_select!r}")
    log_w = config.beta * rewards
    law = selection_log_law(log_pt, log_w, n)
    low_only = selection_log_law(np.where(high, NEG_INF, log_pt), log_w, n)  # kept y, every sample in L
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = law + np.log(-np.expm1(np.minimum(low_only - law, 0.0)))  # log(P(y) - P(y, all in L))
    to_draft = np.where(np.isfinite(law), np.where(np.isfinite(low_only), diff, law), NEG_INF)
    return to_draft, low_only


# ------------------------------------------------------------------------------------------------------------------
# Sequence laws


def _log(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(x)


def sequence_log_law(tree: TabularTree, levels: list[np.ndarray]) -> np.ndarray:
    """``log Π_h p(a_{h+1} | a_1..a_h)`` for next-step laws ``levels[h]`` ``[K**h, K]``; returns ``[K**H]``."""
    logq = np.zeros(1)
    for h in range(tree.horizon):
        logq = (logq[:, None] + _log(levels[h])).reshape(-1)
    return logq


def optimal_conditionals(tree: TabularTree, beta: float) -> list[np.ndarray]:
    """``π*(a | s) = π_t(a|s) exp(β (V(s∘a) - V(s)))`` per level, ``[K**h, K]`` (docs/algorithm.md §2)."""
    values = tree.soft_values(beta)
    out = []
    for h in range(tree.horizon):
        nxt = values[h + 1].reshape(tree.K**h, tree.K)
        with np.errstate(divide="ignore"):
            out.append(np.exp(_log(tree.target[h]) + beta * (nxt - values[h][:, None])))
    return out


def optimal_log_law(tree: TabularTree, beta: float) -> np.ndarray:
    """``log π*(y) = log π_t(y) + β r(y) - log Z_β``: the optimum of ``E_π[r] - KL(π || π_t) / β``. ``[K**H]``."""
    z = sequence_log_law(tree, tree.target) + beta * tree.reward
    return z - logsumexp(z)


@dataclass(frozen=True)
class SpecsLaw:
    """The exact law of the response SPECS returns, and how often it used the target.

    ``log_q`` ``[K**H]`` (sequence order of ``tree.sequences()``); ``defer_rate`` = E[deferred steps] / H;
    ``target_fraction`` = E[target-written steps] / H.
    """

    log_q: np.ndarray
    defer_rate: float
    target_fraction: float


def specs_log_law(
    tree: TabularTree,
    config: SearchConfig,
    *,
    prm: str = "idealized",
    prm_beta: float | None = None,
    draws: str = "fixed",
) -> SpecsLaw:
    """Exact law of :func:`specs_rl.search.specs` with ``config`` on ``tree`` (one problem).

    Dynamic programming over (prefix, mode): with ``D_h(s)``, ``T_h(s)`` the probabilities of reaching prefix
    ``s`` in draft / target mode and the step laws of :class:`StepLaw`,

        D_{h+1}(s∘y) = D_h(s) [accept(s,y) + defer(s) to_draft(s,y)] + T_h(s) to_draft(s,y)
        T_{h+1}(s∘y) = D_h(s) defer(s) to_target(s,y) + T_h(s) to_target(s,y)

    and ``q(y) = D_H(y) + T_H(y)``. The PRM is ``tree.prm_levels(prm, prm_beta or config.beta)`` (the backend's).
    Needs ``config.max_steps >= H`` and no ``random_switch``. Poisson draws need draft mode throughout
    (``start_mode='draft'`` and a draft test that never fails, :func:`stays_in_draft`).
    """
    if draws not in DRAWS:
        raise ValueError(f"draws must be one of {DRAWS}, got {draws!r}")
    _check_law_config(tree, config)
    if draws == "poisson" and not stays_in_draft(config):
        raise ValueError(
            "Poisson draws are implemented for draft mode only (start_mode=draft, a threshold of -inf)"
        )
    return _mode_dp(
        tree,
        config,
        tree.prm_levels(prm, config.beta if prm_beta is None else prm_beta),
        lambda lt, ld, r: draft_step_law(lt, ld, r, config, draws=draws),
        lambda lt, r: target_step_law(lt, r, config),
    )


def _check_law_config(tree: TabularTree, config: SearchConfig) -> None:
    config.validate()
    if config.random_switch is not None:
        raise ValueError("the exact law does not cover random_switch")
    if config.max_steps < tree.horizon:
        raise ValueError(f"the exact law needs max_steps >= horizon ({tree.horizon}), got {config.max_steps}")


def _mode_dp(
    tree: TabularTree,
    config: SearchConfig,
    prm_levels: list[np.ndarray],
    draft_law: Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    target_law: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
) -> SpecsLaw:
    """The (prefix, mode) recursion of :func:`specs_log_law` with given one-step laws ``draft_law(log_pt, log_pd,
    r) -> (accept [R, K], defer [R])`` and ``target_law(log_pt, r) -> (to_draft [R, K], to_target [R, K])``."""
    K, H = tree.K, tree.horizon  # noqa: N806
    log_d = np.zeros(1) if config.start_mode == "draft" else np.full(1, NEG_INF)  # [K**h]
    log_t = np.full(1, NEG_INF) if config.start_mode == "draft" else np.zeros(1)
    deferred = target_steps = 0.0
    for h in range(H):
        log_pt, log_pd = _log(tree.target[h]), _log(tree.draft[h])  # [K**h, K]
        rewards = prm_levels[h].reshape(K**h, K)  # [K**h, K] r(s∘y)
        if np.isfinite(log_d).any():
            accept, defer = draft_law(log_pt, log_pd, rewards)
        else:
            accept, defer = np.full((K**h, K), NEG_INF), np.full(K**h, NEG_INF)
        if (
            np.isfinite(log_t).any() or np.isfinite(defer).any()
        ):  # target mode is reached (a deferral included)
            to_draft, to_target = target_law(log_pt, rewards)
        else:
            to_draft = to_target = np.full((K**h, K), NEG_INF)
        ld, lt, df = log_d[:, None], log_t[:, None], defer[:, None]
        with np.errstate(invalid="ignore"):
            new_d = np.logaddexp(ld + np.logaddexp(accept, df + to_draft), lt + to_draft)
            new_t = np.logaddexp(ld + df + to_target, lt + to_target)
        deferred += float(np.exp(logsumexp(log_d + defer)))
        target_steps += float(np.exp(logsumexp(np.logaddexp(log_d + defer, log_t))))
        log_d, log_t = new_d.reshape(-1), new_t.reshape(-1)
    return SpecsLaw(np.logaddexp(log_d, log_t), deferred / H, target_steps / H)


# ------------------------------------------------------------------------------------------------------------------
# One draft step, tested alone: RSD and SpecReason


def _tested_draft_dp(tree: TabularTree, passes: list[np.ndarray]) -> SpecsLaw:
    """The law of "the draft writes one step ``y``, kept iff ``passes[h][s∘y]``, else the target writes the step":

        q(y | s) = π_d(y|s) 1[pass(s∘y)] + P_d(fail | s) π_t(y|s),   P_d(fail | s) = Σ_z π_d(z|s) 1[not pass(s∘z)]

    ``passes[h]`` ``[K**(h+1)]`` (index ``h`` for prefixes of length ``h + 1``). ``defer_rate`` =
    ``target_fraction`` = E[target-written steps] / H."""
    K, H = tree.K, tree.horizon  # noqa: N806
    log_q, deferred = np.zeros(1), 0.0  # [K**h]
    for h in range(H):
        log_pt, log_pd = _log(tree.target[h]), _log(tree.draft[h])  # [K**h, K]
        ok = passes[h].reshape(K**h, K)  # [K**h, K]
        with np.errstate(divide="ignore"):
            fail = logsumexp(np.where(ok, NEG_INF, log_pd), axis=1)  # [K**h] log P_d(fail | s)
        step = np.logaddexp(np.where(ok, log_pd, NEG_INF), fail[:, None] + log_pt)  # [K**h, K]
        deferred += float(np.exp(logsumexp(log_q + fail)))
        log_q = (log_q[:, None] + step).reshape(-1)
    return SpecsLaw(log_q, deferred / H, deferred / H)


def rsd_log_law(
    tree: TabularTree, config: SearchConfig, *, prm: str = "idealized", prm_beta: float | None = None
) -> SpecsLaw:
    """Exact law of :func:`specs_rl.search.rsd`: the draft's step is kept iff its reward ``r(s∘y) >= rsd_delta``
    (:func:`_tested_draft_dp`). The PRM is the backend's, ``tree.prm_levels(prm, prm_beta or config.beta)``."""
    _check_law_config(tree, config)
    levels = tree.prm_levels(prm, config.beta if prm_beta is None else prm_beta)
    return _tested_draft_dp(tree, [r >= config.rsd_delta for r in levels])


def specreason_log_law(
    tree: TabularTree,
    config: SearchConfig,
    *,
    judge_levels: list[np.ndarray] | None = None,
    prm: str = "idealized",
    prm_beta: float | None = None,
) -> SpecsLaw:
    """Exact law of :func:`specs_rl.search.specreason` (SpecReason, Pan et al. 2025): per step, the draft's step
    ``y`` is kept with the probability its judge passes it, ``1[J(s∘y) >= judge_threshold]`` for a judge whose
    score ``J`` is a function of the prefix and step, else the target's step:

        q(y | s) = π_d(y|s) 1[J(s∘y) >= t] + P_d(J < t | s) π_t(y|s)

    ``J`` is ``judge_levels`` when given (the tabular backend's ``judge_levels``), else the judge ``config.judge``
    names: ``target`` -> :meth:`TabularTree.judge_levels` (``9 · E_{π_t}[R | s∘y]``), ``prm`` -> ``9 · r(s∘y)``
    with the backend's PRM (:class:`specs_rl.interfaces.PrmJudge`). ``t = 0`` keeps every draft step (the draft's
    law); ``t > 9`` none (the target's law)."""
    _check_law_config(tree, config)
    if judge_levels is None:
        if config.judge == "prm":
            prm_levels = tree.prm_levels(prm, config.beta if prm_beta is None else prm_beta)
            judge_levels = [9.0 * r for r in prm_levels]  # the PRM judge's scale, as PrmJudge computes it
        else:
            judge_levels = tree.judge_levels()
    return _tested_draft_dp(tree, [j >= config.judge_threshold for j in judge_levels])


# ------------------------------------------------------------------------------------------------------------------
# n -> ∞: the limit laws


def _limit_selection(log_p: np.ndarray, scores: np.ndarray, temperature: float) -> np.ndarray:
    """``lim_n P_n^sel``: ``∝ p e^{score / T}`` over the symbols with a finite score (``T > 0``), or the
    top-scored ones in proportion to ``p`` (``T = 0``: ties go to the first drawn). A row with no such symbol
    is all ``-inf``. ``[R, K] -> [R, K]``."""
    kept = np.isfinite(scores) & (log_p > NEG_INF)  # [R, K]
    if temperature == 0:
        top = np.max(np.where(kept, scores, NEG_INF), axis=1, keepdims=True)  # [R, 1]
        z = np.where(kept & (scores == top), log_p, NEG_INF)
    else:
        z = np.where(kept, log_p + np.where(kept, scores, 0.0) / temperature, NEG_INF)
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = logsumexp(z, axis=1, keepdims=True)  # [R, 1]
        return np.where(np.isfinite(norm), z - norm, NEG_INF)


def draft_step_limit(
    log_pt: np.ndarray, log_pd: np.ndarray, rewards: np.ndarray, config: SearchConfig
) -> tuple[np.ndarray, np.ndarray]:
    """``n -> ∞`` of :func:`draft_step_law`. With ``D`` the symbols that can be kept and ``P_∞^sel ∝ π_d
    e^{score/T}`` on ``D`` (the top-scored ones at ``T = 0``):

    - ``filter``: ``(P_∞^sel, 0)`` when ``π_d(D) > 0`` (``P(defer) = π_d(not D)^n -> 0``), else ``(0, 1)``:
      the target's tilt truncated to ``D``;
    - ``select_test``: ``(P_∞^sel 1[pass], Σ P_∞^sel 1[not pass])``: the deferral rate does not vanish."""
    scores = step_scores(log_pt, log_pd, rewards, config.beta, config.score_form)  # [R, K]
    with np.errstate(invalid="ignore"):
        selectable = (log_pd > NEG_INF) & (scores > NEG_INF)
    keep = selectable & (scores > config.tau_reject) if config.acceptance == "filter" else selectable
    sel = _limit_selection(log_pd, np.where(keep, scores, NEG_INF), config.temperature)  # [R, K]
    defer = np.where(keep.any(axis=1), NEG_INF, 0.0)  # [R]
    if config.acceptance == "select_test":
        passes = _passes(scores, rewards, config)  # [R, K]
        with np.errstate(divide="ignore"):
            defer = np.logaddexp(defer, logsumexp(np.where(passes, NEG_INF, sel), axis=1))
        sel = np.where(passes, sel, NEG_INF)
    return sel, defer


def target_step_limit(
    log_pt: np.ndarray, rewards: np.ndarray, config: SearchConfig
) -> tuple[np.ndarray, np.ndarray]:
    """``n -> ∞`` of :func:`target_step_law`: the kept step is the top reward of the target's support (argmax,
    ties in proportion to ``π_t``) or ``∝ π_t e^{β r}`` (soft); the best of the ``n`` rewards tends to the
    support's maximum, so the next mode is DRAFT iff ``max_{π_t(z) > 0} r(z) > τ_switch``."""
    support = log_pt > NEG_INF  # [R, K]
    if config.target_select == "argmax":
        law = _limit_selection(log_pt, np.where(support, rewards, NEG_INF), 0.0)
    else:
        law = _limit_selection(log_pt, np.where(support, config.beta * rewards, NEG_INF), 1.0)
    high = (np.max(np.where(support, rewards, NEG_INF), axis=1) > config.tau_switch)[:, None]  # [R, 1]
    return np.where(high, law, NEG_INF), np.where(high, NEG_INF, law)


def limit_log_law(
    tree: TabularTree, config: SearchConfig, *, prm: str = "idealized", prm_beta: float | None = None
) -> SpecsLaw:
    """The ``n -> ∞`` law of :func:`specs_rl.search.specs` with ``config`` (``config.n`` is ignored): the DP of
    :func:`specs_log_law` with the limit step laws :func:`draft_step_limit` and :func:`target_step_limit`.

    The same for fixed and Poisson draws. Under the idealized PRM (``r = V`` at ``β``, writing ``π*(.|s)`` for the
    step conditional of the optimum and ``F(s)`` for the symbols failing the draft test):

    - exact form, ``T = 1``, filter: ``π*`` truncated to the kept set at every step (``π*`` itself at
      ``τ_reject = -inf``);
    - exact form, ``T = 1``, select-then-test with a soft target fallback: ``q_∞(y|s) = π*(y|s) (1[pass(y)] +
      π*(F(s)|s))`` — the draft's kept step is ``π*`` restricted to the passing set, the deferred one is
      ``π*`` again (soft best-of-n of the target under ``r = V``), so ``TV(q_∞(.|s), π*(.|s)) = π*(F)(1 -
      π*(F))`` per step, against ``π*(F)`` for the filter's truncation.

    Checked against :func:`specs_log_law` at large ``n`` in ``tests/test_exact.py``."""
    _check_law_config(tree, config)
    return _mode_dp(
        tree,
        config,
        tree.prm_levels(prm, config.beta if prm_beta is None else prm_beta),
        lambda lt, ld, r: draft_step_limit(lt, ld, r, config),
        lambda lt, r: target_step_limit(lt, r, config),
    )


def bias_coefficients(log_p: np.ndarray, log_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The large-n expansion of the selection law: ``P_n(y) = P_∞(y) (1 + c(y)/n + O(1/n²))``.

    ``P_∞(y) = p(y) w(y) / E_p[w]`` and ``c(y) = E_p[w²] / E_p[w]² - w(y) / E_p[w]``, the same for fixed and for
    Poisson n [derived: ``P_n(y) = n p(y) w(y) E[1/(w(y) + S)]`` with ``S`` the other draws' total weight,
    ``E S = (n-1) μ`` (or ``n μ``), ``Var S = (n-1) σ²`` (or ``n E[w²]``); expand ``1/(nμ + (w(y) - μ) + δ)`` to
    second order in ``δ``]. For the exact form, ``E_p[w²]/E_p[w]² = 1 + χ²(π*(.|s) || π_d(.|s))``.
    Returns ``(log P_∞ [R, K], c [R, K])``; no rejection (every ``w > 0``).
    """
    lw = log_w - np.max(log_w, axis=1, keepdims=True)  # [R, K]
    log_mu = logsumexp(log_p + lw, axis=1, keepdims=True)  # [R, 1]
    log_m2 = logsumexp(log_p + 2 * lw, axis=1, keepdims=True)  # [R, 1]
    return log_p + lw - log_mu, np.exp(log_m2 - 2 * log_mu) - np.exp(lw - log_mu)


def asymptotic_law(
    tree: TabularTree, config: SearchConfig, *, prm: str = "idealized", prm_beta: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Draft mode throughout, no rejection, ``T > 0``: the n -> ∞ sequence law and its 1/n coefficient.

    ``q_n(y) = q_∞(y) (1 + c(y)/n + O(1/n²))`` with ``c(y) = Σ_h c_h(y^h | y^{<h})`` (:func:`bias_coefficients`
    per step). Hence ``TV(q_n, q_∞) ≈ E_{q_∞}|c| / (2n)`` and ``KL`` (either way) ``≈ E_{q_∞}[c²] / (2n²)``
    (``E_{q_∞}[c] = 0``). Returns ``(log q_∞ [K**H], c [K**H])``; for the ``exact`` form under the idealized PRM,
    ``q_∞ = π*``.
    """
    if not stays_in_draft(config) or config.temperature == 0:
        raise ValueError("the expansion covers draft mode only, without rejection, with temperature > 0")
    prm_levels = tree.prm_levels(prm, config.beta if prm_beta is None else prm_beta)
    K = tree.K  # noqa: N806
    log_lim, coef = np.zeros(1), np.zeros(1)
    for h in range(tree.horizon):
        log_pt, log_pd = _log(tree.target[h]), _log(tree.draft[h])
        scores = step_scores(log_pt, log_pd, prm_levels[h].reshape(K**h, K), config.beta, config.score_form)
        lim, c = bias_coefficients(log_pd, scores / config.temperature)
        log_lim = (log_lim[:, None] + lim).reshape(-1)
        coef = (coef[:, None] + c).reshape(-1)
    return log_lim, coef


# ------------------------------------------------------------------------------------------------------------------
# Divergences


def kl(log_p: np.ndarray, log_q: np.ndarray) -> float:
    """``KL(p || q) = Σ p (log p - log q)``; ``inf`` when ``q = 0`` somewhere ``p > 0``; rounding below 0 -> 0."""
    p = np.exp(log_p)
    mask = p > 0
    if np.any(~np.isfinite(log_q[mask])):
        return math.inf
    return max(float(np.sum(p[mask] * (log_p[mask] - log_q[mask]))), 0.0)


def tv(log_p: np.ndarray, log_q: np.ndarray) -> float:
    """Total variation ``½ Σ |p - q|``."""
    return 0.5 * float(np.abs(np.exp(log_p) - np.exp(log_q)).sum())


def expected(log_p: np.ndarray, values: np.ndarray) -> float:
    """``E_p[values]``."""
    return float(np.exp(log_p) @ values)


def regularized_objective(log_q: np.ndarray, tree: TabularTree, beta: float) -> float:
    """``J(q) = E_q[r] - KL(q || π_t) / β``; ``J(π*) - J(q) = KL(q || π*) / β`` (so it is maximized by ``π*``)."""
    return expected(log_q, tree.reward) - kl(log_q, sequence_log_law(tree, tree.target)) / beta
