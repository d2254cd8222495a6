"""Exact laws of SPECS (specs_rl.exact) against brute-force enumeration, scipy quadrature, π*, and the real search."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import Counter

import numpy as np
import pytest
import torch
from scipy import integrate

from specs_rl.exact import (
    argmax_log_law,
    asymptotic_law,
    best_of_n_kl_bound,
    best_of_n_log_law,
    bias_coefficients,
    draft_step_law,
    kl,
    limit_log_law,
    optimal_conditionals,
    optimal_log_law,
    regularized_objective,
    selection_log_law,
    sequence_log_law,
    specs_log_law,
    target_step_law,
    tv,
)
from specs_rl.methods import preset
from specs_rl.search import SearchConfig, specs
from specs_rl.tabular import TabularBackend, TabularTree, random_tree
from specs_rl.types import Mode, Problem
from specs_rl.verify import (
    acceptance_test,
    keep_mask,
    next_mode,
    select_test_log_probs,
    selection_log_probs,
    soft_scores,
)

NEG = -math.inf


def cfg(**kw) -> SearchConfig:
    base = dict(strategy="specs", n=4, beta=2.0, start_mode="draft", tau_reject=-math.inf, max_steps=10)
    base.update(kw)
    return SearchConfig(**base)


VARIANTS = {
    "exact": cfg(),
    "code": cfg(score_form="mean", temperature=0.3),
    "no_target": cfg(score_form="reward_only"),
    "argmax": cfg(temperature=0.0),
    "threshold": cfg(tau_reject=1.0),
    "threshold_soft_target_start": cfg(
        tau_reject=1.2, target_select="soft", start_mode="target", tau_switch=0.5
    ),
    # the method presets (specs_rl.methods) at own settings that make every branch of their laws happen
    "specs": preset(cfg(), "specs", {"tau_reject": 1.0, "start_mode": "target", "tau_switch": 0.5}),
    "specs_paper": preset(cfg(), "specs_paper", {"temperature": 0.3, "tau_reject": 0.5, "tau_switch": 0.3}),
    "gsi": preset(cfg(), "gsi", {"tau_reject": 1.0}),
    "rsd_bon": preset(cfg(), "rsd_bon", {"rsd_delta": 0.5}),
}


# ------------------------------------------------------------------------------------------------------------------
# brute force: enumerate every n-draw outcome and apply the search's own verification functions


def brute_draft_step(pt, pd, r, config: SearchConfig):
    """P(accept, y) [K] and P(defer) for one prefix, by enumerating K**n draft draws."""
    K, n = len(pt), config.n  # noqa: N806
    accept, defer = np.zeros(K), 0.0
    for draw in itertools.product(range(K), repeat=n):
        prob = float(np.prod(pd[list(draw)]))
        if prob == 0:
            continue
        lt = torch.tensor(np.log(pt[list(draw)]))
        ld = torch.tensor(np.log(pd[list(draw)]))
        ones = torch.ones(n, dtype=torch.float64)
        scores = soft_scores(
            lt,
            ld,
            torch.tensor(r[list(draw)]),
            config.beta,
            form=config.score_form,
            target_len=ones,
            draft_len=ones,
        )
        if config.acceptance == "select_test":
            passes = acceptance_test(
                scores,
                torch.tensor(r[list(draw)]),
                on=config.accept_test,
                tau_reject=config.tau_reject,
                rsd_delta=config.rsd_delta,
            )
            keep_lp, defer_lp = select_test_log_probs(scores, passes, config.temperature)
            defer += prob * float(defer_lp.exp())
            for i, y in enumerate(draw):
                accept[y] += prob * float(keep_lp[i].exp())
            continue
        keep = keep_mask(scores, config.tau_reject)
        if not keep.any():
            defer += prob
            continue
        sel = selection_log_probs(scores, keep, config.temperature).exp().numpy()
        for i, y in enumerate(draw):
            accept[y] += prob * sel[i]
    return accept, defer


def brute_target_step(pt, r, config: SearchConfig):
    """P(y, next mode) for one prefix in target mode: {Mode.DRAFT: [K], Mode.TARGET: [K]}."""
    K, n = len(pt), config.n  # noqa: N806
    out = {Mode.DRAFT: np.zeros(K), Mode.TARGET: np.zeros(K)}
    for draw in itertools.product(range(K), repeat=n):
        prob = float(np.prod(pt[list(draw)]))
        rs = torch.tensor(r[list(draw)])
        if config.target_select == "argmax":
            sel = np.zeros(n)
            sel[int(torch.argmax(rs))] = 1.0
        else:
            sel = selection_log_probs(config.beta * rs, temperature=1.0).exp().numpy()
        mode = next_mode(Mode.TARGET, best_target_reward=float(rs.max()), tau_switch=config.tau_switch)
        for i, y in enumerate(draw):
            out[mode][y] += prob * sel[i]
    return out


def brute_sequence_law(tree: TabularTree, config: SearchConfig) -> np.ndarray:
    """q(y) by recursion over (prefix, mode) with brute-force step laws (independent of the DP in exact.py)."""
    prm = tree.prm_levels("idealized", config.beta)
    q = np.zeros(tree.K**tree.horizon)

    def rec(prefix: tuple[int, ...], mode: Mode, prob: float) -> None:
        h = len(prefix)
        if h == tree.horizon:
            q[tree.index(prefix)] += prob
            return
        i = tree.index(prefix)
        pt, pd = tree.target[h][i], tree.draft[h][i]
        r = np.array([prm[h][tree.index((*prefix, a))] for a in range(tree.K)])
        target = None
        if mode == Mode.DRAFT:
            accept, defer = brute_draft_step(pt, pd, r, config)
            for a in range(tree.K):
                if accept[a] > 0:
                    rec((*prefix, a), Mode.DRAFT, prob * accept[a])
            if defer > 0:
                target = (brute_target_step(pt, r, config), prob * defer)
        else:
            target = (brute_target_step(pt, r, config), prob)
        if target is not None:
            laws, mass = target
            for m, law in laws.items():
                for a in range(tree.K):
                    if law[a] > 0:
                        rec((*prefix, a), m, mass * law[a])

    rec((), Mode(config.start_mode), 1.0)
    return q


def _level(tree: TabularTree, h: int, beta: float):
    prm = tree.prm_levels("idealized", beta)
    return np.log(tree.target[h]), np.log(tree.draft[h]), prm[h].reshape(tree.K**h, tree.K)


# ------------------------------------------------------------------------------------------------------------------
# one-step laws


@pytest.mark.parametrize("name", ["exact", "code", "no_target", "argmax", "threshold", "gsi", "rsd_bon"])
@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_draft_step_law_equals_enumeration(name, n):
    tree = random_tree(3, 2, seed=11)
    config = dataclasses.replace(VARIANTS[name], n=n)
    log_pt, log_pd, r = _level(tree, 1, config.beta)  # 3 prefixes
    accept, defer = draft_step_law(log_pt, log_pd, r, config)
    for i in range(3):
        want_a, want_d = brute_draft_step(np.exp(log_pt[i]), np.exp(log_pd[i]), r[i], config)
        np.testing.assert_allclose(np.exp(accept[i]), want_a, atol=1e-13, rtol=0)
        assert math.exp(defer[i]) == pytest.approx(want_d, abs=1e-14)
        assert np.exp(accept[i]).sum() + math.exp(defer[i]) == pytest.approx(1.0, abs=1e-13)


def test_rejection_branch_is_exercised():
    """The threshold used in these tests really does defer sometimes (else the deferral tests prove nothing)."""
    tree = random_tree(3, 2, seed=11)
    log_pt, log_pd, r = _level(tree, 1, 2.0)
    _, defer = draft_step_law(log_pt, log_pd, r, dataclasses.replace(VARIANTS["threshold"], n=2))
    assert np.exp(defer).max() > 0.01


@pytest.mark.parametrize("select", ["argmax", "soft"])
@pytest.mark.parametrize("n", [1, 2, 4])
def test_target_step_law_with_mode_switch_equals_enumeration(select, n):
    tree = random_tree(3, 2, seed=5)
    config = cfg(n=n, target_select=select, tau_switch=0.65)
    log_pt, _, r = _level(tree, 1, config.beta)
    to_draft, to_target = target_step_law(log_pt, r, config)
    modes_seen = set()
    for i in range(3):
        want = brute_target_step(np.exp(log_pt[i]), r[i], config)
        np.testing.assert_allclose(np.exp(to_draft[i]), want[Mode.DRAFT], atol=1e-13, rtol=0)
        np.testing.assert_allclose(np.exp(to_target[i]), want[Mode.TARGET], atol=1e-13, rtol=0)
        modes_seen |= {m for m, v in want.items() if v.sum() > 1e-3}
        assert np.exp(to_draft[i]).sum() + np.exp(to_target[i]).sum() == pytest.approx(1.0, abs=1e-13)
    assert modes_seen == {Mode.DRAFT, Mode.TARGET}  # tau_switch splits the outcomes


def test_selection_law_matches_scipy_quad_over_wide_weights_and_large_n():
    rng = np.random.default_rng(3)
    K = 6  # noqa: N806
    for n in (2, 37, 1024, 20000):
        p = rng.dirichlet(np.ones(K))
        log_w = rng.normal(size=K) * 12  # weights over ~1e20: the per-row rescaling and per-y range matter
        mine = np.exp(selection_log_law(np.log(p)[None], log_w[None], n))[0]
        w = np.exp(log_w - log_w.max())
        for y in range(K):

            def g(x, y=y, w=w, p=p, n=n):  # integrand in x = log t
                t = math.exp(x)
                return t * math.exp(-t * w[y]) * float(np.sum(p * np.exp(-t * w))) ** (n - 1)

            val, _ = integrate.quad(g, -70, 80, limit=4000, epsabs=0, epsrel=1e-12, points=sorted(-np.log(w)))
            assert mine[y] == pytest.approx(n * p[y] * w[y] * val, rel=1e-9)
        assert mine.sum() == pytest.approx(1.0, abs=1e-12)


def test_poisson_selection_law_against_direct_sum_over_counts():
    """Poisson(n) drafts: P(y) = Σ_m Pois(m; n) P_m(y) + e^{-n}·(no draft), with the fixed-m law."""
    p = np.array([0.5, 0.3, 0.2])
    log_w = np.log([1.0, 4.0, 0.5])
    n = 3.0
    want = np.zeros(3)
    for m in range(1, 60):
        weight = math.exp(-n + m * math.log(n) - math.lgamma(m + 1))
        want += weight * np.exp(selection_log_law(np.log(p)[None], log_w[None], m))[0]
    got = np.exp(selection_log_law(np.log(p)[None], log_w[None], 3, draws="poisson"))[0]
    np.testing.assert_allclose(got, want, atol=1e-13)
    assert got.sum() == pytest.approx(1 - math.exp(-n), abs=1e-13)


# ------------------------------------------------------------------------------------------------------------------
# sequence laws


@pytest.mark.parametrize("name", list(VARIANTS))
def test_sequence_law_equals_brute_force_recursion(name):
    tree = random_tree(2, 3, seed=2)
    config = dataclasses.replace(VARIANTS[name], n=3)
    law = specs_log_law(tree, config)
    np.testing.assert_allclose(np.exp(law.log_q), brute_sequence_law(tree, config), atol=1e-13, rtol=0)


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("n", [1, 7, 256])
def test_sequence_laws_sum_to_one(name, n):
    tree = random_tree(4, 3, seed=1)
    law = specs_log_law(tree, dataclasses.replace(VARIANTS[name], n=n))
    assert np.exp(law.log_q).sum() == pytest.approx(1.0, abs=1e-12)
    assert 0.0 <= law.defer_rate <= law.target_fraction <= 1.0
    if name.startswith("threshold") and n == 1:
        assert law.defer_rate > 0


def test_poisson_law_sums_to_one():
    tree = random_tree(4, 3, seed=1)
    for n in (1, 5, 300):
        q = np.exp(specs_log_law(tree, cfg(n=n), draws="poisson").log_q)
        assert q.sum() == pytest.approx(1.0, abs=1e-12)


def test_optimum_two_ways_and_objective():
    tree = random_tree(3, 3, seed=4)
    beta = 2.0
    star = optimal_log_law(tree, beta)
    np.testing.assert_allclose(sequence_log_law(tree, optimal_conditionals(tree, beta)), star, atol=1e-12)
    # π* maximizes E[r] - KL(q||π_t)/β, and J(π*) - J(q) = KL(q||π*)/β.
    q = specs_log_law(tree, cfg(n=4, beta=beta)).log_q
    gap = regularized_objective(star, tree, beta) - regularized_objective(q, tree, beta)
    assert gap == pytest.approx(kl(q, star) / beta, rel=1e-9)
    assert gap > 0


def test_large_n_limit_is_the_optimum_under_the_idealized_prm():
    tree = random_tree(4, 3, seed=7)
    star = optimal_log_law(tree, 2.0)
    tvs = {}
    for n in (256, 4096, 65536):
        tvs[n] = tv(star, specs_log_law(tree, cfg(n=n)).log_q)
    assert tvs[65536] < 2e-5
    # O(1/n) bias: 16x more drafts, ~16x smaller TV.
    assert tvs[256] / tvs[4096] == pytest.approx(16, rel=0.05)
    assert tvs[4096] / tvs[65536] == pytest.approx(16, rel=0.05)


def test_limits_of_the_variants_that_do_not_converge():
    """n -> ∞ limits (theory/README.md §2), per step: no_target ∝ π_d e^{βV}; code (T = 0.3) ∝ π_d w^{1/T} with
    w = π_t/π_d e^{βV}; argmax -> the top-scored symbol; threshold -> π*(.|s) truncated to the kept set."""
    tree = random_tree(3, 2, seed=9)
    beta, temp = 2.0, 0.3
    prm = tree.prm_levels("idealized", beta)
    star_c = optimal_conditionals(tree, beta)
    n = 1 << 17
    limits: dict[str, list[np.ndarray]] = {"no_target": [], "code": [], "argmax": [], "threshold": []}
    threshold = cfg(n=n, tau_reject=0.5)
    for h in range(tree.horizon):
        r = prm[h].reshape(tree.K**h, tree.K)
        score = np.log(tree.target[h]) - np.log(tree.draft[h]) + beta * r
        for name, lim in (
            ("no_target", tree.draft[h] * np.exp(beta * r)),
            ("code", tree.draft[h] * np.exp((score - score.max(axis=1, keepdims=True)) / temp)),
            ("argmax", (score == score.max(axis=1, keepdims=True)).astype(float)),
        ):
            limits[name].append(lim / lim.sum(axis=1, keepdims=True))
        keep = score > threshold.tau_reject
        assert keep.any(axis=1).all()
        t = np.where(keep, star_c[h], 0.0)
        limits["threshold"].append(t / t.sum(axis=1, keepdims=True))
    configs = {
        "no_target": cfg(n=n, score_form="reward_only"),
        "code": cfg(n=n, score_form="mean", temperature=temp),
        "argmax": cfg(n=n, temperature=0.0),
        "threshold": threshold,
    }
    star = optimal_log_law(tree, beta)
    for name, config in configs.items():
        got = specs_log_law(tree, config).log_q
        assert tv(sequence_log_law(tree, limits[name]), got) < 1e-4, name
        assert tv(star, got) > 0.05, name


@pytest.mark.parametrize("name", list(VARIANTS))
def test_limit_law_is_the_law_at_large_n(name):
    """limit_log_law (the n -> ∞ step laws, derived in its docstring) is what specs_log_law tends to, measured:
    TV(q_n, q_∞) falls with n (like 1/n: 16x from n = 2^12 to 2^16; or exponentially for argmax) and is < 2e-5 at
    n = 2^16."""
    tree = random_tree(3, 2, seed=9)
    config = dataclasses.replace(VARIANTS[name], max_steps=tree.horizon)
    limit = limit_log_law(tree, config).log_q
    assert np.exp(limit).sum() == pytest.approx(1.0, abs=1e-12)
    gaps = [
        tv(specs_log_law(tree, dataclasses.replace(config, n=n)).log_q, limit) for n in (1 << 12, 1 << 16)
    ]
    assert gaps[1] < 2e-5
    assert gaps[0] < 1e-10 or gaps[0] > 14 * gaps[1]


def _gsi_and_filter(tau: float, beta: float = 2.0) -> tuple[SearchConfig, SearchConfig]:
    """GSI at threshold ``tau``, and this project's filter-then-select with GSI's fallback at the same threshold."""
    gsi = preset(cfg(beta=beta), "gsi", {"tau_reject": tau})
    own = {"tau_reject": tau, "start_mode": "draft", "target_select": "soft", "tau_switch": -math.inf}
    return gsi, preset(cfg(beta=beta), "specs", own)


def test_gsi_limit_is_the_optimum_reweighted_towards_the_passing_steps():
    """n -> ∞ under the idealized PRM, with F(s) the steps whose score fails the threshold: GSI (select-then-test,
    soft best-of-n fallback) tends to q(y|s) = π*(y|s) (1[pass(y)] + π*(F|s)), at per-step TV π*(F)(1 - π*(F));
    filter-then-select tends to π*(.|s) truncated to the passing steps, at per-step TV π*(F)."""
    beta, tau = 2.0, 0.5
    gsi, filt = _gsi_and_filter(tau, beta)
    for tree in (random_tree(5, 1, seed=4), random_tree(3, 3, seed=5)):
        prm = tree.prm_levels("idealized", beta)
        star_c = optimal_conditionals(tree, beta)
        gsi_c, filt_c, fails = [], [], []
        for h in range(tree.horizon):
            r = prm[h].reshape(tree.K**h, tree.K)
            passes = np.log(tree.target[h]) - np.log(tree.draft[h]) + beta * r > tau  # [R, K]
            f = np.where(passes, 0.0, star_c[h]).sum(axis=1, keepdims=True)  # [R, 1] π*(F|s)
            assert passes.any(axis=1).all()
            gsi_c.append(star_c[h] * (passes + f))
            filt_c.append(np.where(passes, star_c[h], 0.0) / (1 - f))
            fails.append(f[:, 0])
        assert max(f.max() for f in fails) > 0.01  # the test fails some steps: both branches happen
        assert tv(sequence_log_law(tree, gsi_c), limit_log_law(tree, gsi).log_q) < 1e-12
        assert tv(sequence_log_law(tree, filt_c), limit_log_law(tree, filt).log_q) < 1e-12
        if tree.horizon == 1:
            star = optimal_log_law(tree, beta)
            f = float(fails[0][0])
            assert tv(star, limit_log_law(tree, gsi).log_q) == pytest.approx(f * (1 - f), abs=1e-12)
            assert tv(star, limit_log_law(tree, filt).log_q) == pytest.approx(f, abs=1e-12)
            assert kl(star, limit_log_law(tree, filt).log_q) == math.inf  # truncation: π* mass lost
            assert kl(star, limit_log_law(tree, gsi).log_q) < math.inf  # full support


def sir_sequence_law(tree: TabularTree, beta: float, n: int) -> np.ndarray:
    """Sampling-importance-resampling of the target tilted by e^{β r}, step by step, by enumeration and written
    from its definition (no project code): draw y_1..y_n ~ π_d, keep y_i with probability w_i / Σ_j w_j where
    w = π_t e^{β r} / π_d."""
    prm = tree.prm_levels("idealized", beta)
    levels = []
    for h in range(tree.horizon):
        pt, pd = tree.target[h], tree.draft[h]
        r = prm[h].reshape(tree.K**h, tree.K)
        law = np.zeros_like(pt)
        for row in range(pt.shape[0]):
            w = pt[row] * np.exp(beta * r[row]) / pd[row]
            for draw in itertools.product(range(tree.K), repeat=n):
                idx = list(draw)
                prob = np.prod(pd[row][idx])
                for y in draw:
                    law[row, y] += prob * w[y] / w[idx].sum()
        levels.append(law)
    return sequence_log_law(tree, levels)


@pytest.mark.parametrize("n", [1, 2, 4])
def test_gsi_without_threshold_is_sir_of_the_tilted_target_and_equals_specs(n):
    """Threshold -inf: GSI never tests a draft away, so it is SIR of π_t e^{β r}; that is also SPECS' exact form
    started in draft mode with tau_reject = -inf and T = 1 (theory/README.md §2)."""
    tree = random_tree(3, 2, seed=13)
    gsi, filt = _gsi_and_filter(-math.inf)
    gsi = dataclasses.replace(gsi, n=n)
    specs_exact = preset(cfg(n=n), "specs", {"start_mode": "draft", "tau_reject": -math.inf})
    want = sir_sequence_law(tree, gsi.beta, n)
    for config in (gsi, specs_exact, dataclasses.replace(filt, n=n)):
        law = specs_log_law(tree, config)
        np.testing.assert_allclose(law.log_q, want, atol=1e-12, rtol=0)
        assert law.defer_rate == 0.0


def test_gsi_and_filter_then_select_differ_at_a_finite_threshold():
    """The two acceptance rules at the same threshold and fallback: GSI defers whenever the chosen draft fails,
    the filter only when all fail, so GSI defers more and its law is another one."""
    tree = random_tree(3, 2, seed=21)
    gsi, filt = (dataclasses.replace(c, n=3) for c in _gsi_and_filter(1.0))
    a, b = specs_log_law(tree, gsi), specs_log_law(tree, filt)
    assert a.defer_rate > b.defer_rate + 0.1
    assert tv(a.log_q, b.log_q) > 0.05


def test_fixed_and_poisson_laws_agree_as_n_grows():
    tree = random_tree(4, 3, seed=3)
    gaps = [
        tv(specs_log_law(tree, cfg(n=n)).log_q, specs_log_law(tree, cfg(n=n), draws="poisson").log_q)
        for n in (16, 128, 1024)
    ]
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 1e-5
    assert gaps[1] / gaps[2] > 30  # the two O(1/n) biases share their leading term: the gap is O(1/n²)


def test_exact_rates_one_over_n_for_tv_and_one_over_n_squared_for_kl():
    tree = random_tree(5, 3, seed=0)
    star = optimal_log_law(tree, 3.0)
    q = {n: specs_log_law(tree, cfg(n=n, beta=3.0)).log_q for n in (256, 1024)}
    assert tv(star, q[256]) / tv(star, q[1024]) == pytest.approx(4.0, rel=0.05)
    assert kl(star, q[256]) / kl(star, q[1024]) == pytest.approx(16.0, rel=0.1)
    assert kl(q[256], star) / kl(q[1024], star) == pytest.approx(16.0, rel=0.1)


@pytest.mark.parametrize("form,temperature", [("exact", 1.0), ("reward_only", 1.0), ("mean", 0.3)])
def test_first_order_expansion_predicts_the_measured_constants(form, temperature):
    """q_n = q_∞ (1 + c/n + O(1/n²)): n·TV -> E|c|/2 and n²·KL -> E[c²]/2, both ways, for fixed and Poisson n."""
    tree = random_tree(4, 3, seed=0)
    config = cfg(score_form=form, temperature=temperature)
    log_lim, c = asymptotic_law(tree, config)
    lim = np.exp(log_lim)
    assert float(lim @ c) == pytest.approx(0.0, abs=1e-12)
    if form == "exact":  # under the idealized PRM the limit IS the optimum
        np.testing.assert_allclose(log_lim, optimal_log_law(tree, config.beta), atol=1e-12)
    n = 8192
    for draws in ("fixed", "poisson"):
        q = specs_log_law(tree, dataclasses.replace(config, n=n), draws=draws).log_q
        assert n * tv(log_lim, q) == pytest.approx(0.5 * float(lim @ np.abs(c)), rel=2e-3)
        assert n * n * kl(log_lim, q) == pytest.approx(0.5 * float(lim @ c**2), rel=5e-3)
        assert n * n * kl(q, log_lim) == pytest.approx(0.5 * float(lim @ c**2), rel=5e-3)


def test_bias_coefficients_of_one_step_match_the_exact_law():
    rng = np.random.default_rng(4)
    log_p = np.log(rng.dirichlet(np.ones(5), size=3))
    log_w = rng.normal(size=(3, 5))
    log_lim, c = bias_coefficients(log_p, log_w)
    n = 4096
    got = np.exp(selection_log_law(log_p, log_w, n))
    np.testing.assert_allclose(n * (got / np.exp(log_lim) - 1), c, rtol=0, atol=2e-2 * np.abs(c).max())


# ------------------------------------------------------------------------------------------------------------------
# best-of-n


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_best_of_n_law_equals_enumeration_and_respects_the_kl_bound(n):
    rng = np.random.default_rng(n)
    p = rng.dirichlet(np.ones(4))
    r = np.array([0.3, 0.9, 0.1, 0.9])  # a tie: the first drawn of the two wins
    want = np.zeros(4)
    for draw in itertools.product(range(4), repeat=n):
        want[draw[int(np.argmax(r[list(draw)]))]] += np.prod(p[list(draw)])
    log_got = best_of_n_log_law(np.log(p), r, n)
    np.testing.assert_allclose(np.exp(log_got), want, atol=1e-14)
    assert kl(log_got, np.log(p)) <= best_of_n_kl_bound(n) + 1e-12


def test_best_of_n_closed_form_and_bound_over_many_n():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(50))
    r = rng.uniform(size=50)
    order = np.argsort(r)
    cdf = np.cumsum(p[order])
    for n in (1, 2, 8, 64, 1024):
        log_law = best_of_n_log_law(np.log(p), r, n)
        law = np.exp(log_law)
        closed = np.empty(50)
        closed[order] = cdf**n - np.concatenate([[0.0], cdf[:-1]]) ** n  # F(y)^n - F⁻(y)^n
        np.testing.assert_allclose(law, closed, atol=1e-14)
        assert kl(log_law, np.log(p)) <= best_of_n_kl_bound(n) + 1e-12
    assert best_of_n_kl_bound(1) == 0.0


def test_argmax_law_rows_with_rejections():
    log_p = np.log([[0.2, 0.3, 0.5]])
    got = np.exp(argmax_log_law(log_p, np.array([[NEG, 1.0, 0.0]]), 2))[0]
    # y=1 wins if drawn at least once; y=2 wins if drawn with no y=1; y=0 never
    np.testing.assert_allclose(got, [0.0, 1 - 0.7**2, 0.7**2 - 0.2**2], atol=1e-15)


# ------------------------------------------------------------------------------------------------------------------
# the real search against the exact law


def _search_counts(
    tree: TabularTree, config: SearchConfig, samples: int, seed: int
) -> tuple[np.ndarray, int]:
    """Answer counts (sequence order) and the number of deferred steps of ``samples`` runs of the real search."""
    backend = TabularBackend({"t": tree}, beta=config.beta, prm="idealized")
    gen = torch.Generator().manual_seed(seed)
    problems = [Problem(id=str(i), prompt="", meta={"tree": "t"}) for i in range(samples)]
    results = specs(problems, config, backend.parts(), gen)
    counts = Counter(r.answer for r in results)
    deferrals = sum(r.deferrals for r in results)
    return np.array([counts.get(k, 0) for k in tree.sequences()], dtype=np.float64), deferrals


@pytest.mark.parametrize(
    "name,n",
    [
        ("exact", 4),
        ("code", 3),
        ("threshold", 3),
        ("threshold_soft_target_start", 3),
        ("specs", 3),
        ("specs_paper", 3),
        ("gsi", 3),
        ("rsd_bon", 3),
    ],
)
def test_real_search_frequencies_pass_chi_square_against_the_exact_law(name, n):
    """Each preset and variant: the real search against its exact law. Fixed seed; tolerance: chi-square p-value
    > 0.01 (cells with expected count < 5 merged), and the deferral count within 4 binomial standard deviations of
    the exact expectation."""
    from theory.converge import chi_square

    tree = random_tree(3, 2, seed=21)
    samples = 3000
    config = dataclasses.replace(VARIANTS[name], n=n, max_steps=tree.horizon)
    law = specs_log_law(tree, config)
    q = np.exp(law.log_q)
    counts, deferrals = _search_counts(tree, config, samples, seed=1)
    p_value, cells = chi_square(counts, q)
    assert cells >= 5
    assert p_value > 0.01
    steps = samples * tree.horizon
    expected_deferrals = law.defer_rate * steps
    assert abs(deferrals - expected_deferrals) <= 4 * math.sqrt(expected_deferrals + 1)
    if name not in ("exact", "code"):  # the deferral branch is really exercised
        assert law.defer_rate > (0.02 if name == "specs_paper" else 0.05)
    # and the test has power: the same frequencies are far from the law at n = 1
    other = np.exp(specs_log_law(tree, dataclasses.replace(config, n=1)).log_q)
    assert chi_square(counts, other)[0] < 1e-6
    if name == "specs_paper":  # ... and from the same at T = 1: the selection temperature is exercised
        t1 = np.exp(specs_log_law(tree, dataclasses.replace(config, temperature=1.0)).log_q)
        assert chi_square(counts, t1)[0] < 1e-6
    if name == "gsi":  # ... and from filter-then-select at the same threshold and fallback
        filt = _gsi_and_filter(config.tau_reject, config.beta)[1]
        filt_law = np.exp(specs_log_law(tree, dataclasses.replace(filt, n=n, max_steps=tree.horizon)).log_q)
        assert chi_square(counts, filt_law)[0] < 1e-6


def _zero_target_tree() -> TabularTree:
    """K = 2, H = 2: the target never writes symbol b after the root (row [1, 0]) while the draft proposes it half
    the time, so a draft of b has weight w = 0 (score -inf)."""
    from specs_rl.tree import tree_from_json

    return tree_from_json(
        {
            "alphabet": ["a", "b"],
            "horizon": 2,
            "target": {"": [1.0, 0.0], "a": [0.6, 0.4], "b": [0.5, 0.5]},
            "draft": {"": [0.5, 0.5], "a": [0.5, 0.5], "b": [0.5, 0.5]},
            "reward": {"a.a": 0.2, "a.b": 0.9, "b.a": 0.5, "b.b": 0.1},
        }
    )


@pytest.mark.parametrize("tau_reject", [-math.inf, 0.5])
@pytest.mark.parametrize("start_mode", ["draft", "target"])
def test_a_zero_target_probability_is_a_dropped_draft_in_the_search_and_in_the_law(tau_reject, start_mode):
    """A draft the target gives probability 0 scores -inf: the search drops it (and defers when every draft is
    dropped) and the exact law counts it the same way, so the law is a probability law (it used to leave the event
    'every draft scores -inf' without an outcome) and the real search passes a chi-square test against it."""
    from theory.converge import chi_square

    tree = _zero_target_tree()
    config = cfg(n=2, tau_reject=tau_reject, start_mode=start_mode, max_steps=2)
    law = specs_log_law(tree, config)
    q = np.exp(law.log_q)
    assert q.sum() == pytest.approx(1.0, abs=1e-12)
    assert q[tree.sequences().index("b.a")] == 0 and q[tree.sequences().index("b.b")] == 0
    counts, deferrals = _search_counts(tree, config, 4000, seed=3)
    assert counts[2:].sum() == 0  # the search never keeps b after the root
    p_value, _ = chi_square(counts, q)
    assert p_value > 0.01
    assert abs(deferrals - law.defer_rate * 4000 * 2) <= 4 * math.sqrt(law.defer_rate * 8000 + 1)
    if start_mode == "draft":
        assert law.defer_rate > 0.1  # both drafts are b a quarter of the time: the step is deferred
