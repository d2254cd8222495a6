"""Search strategies on the exact tabular backend: the special-case equivalences of ALGORITHM.md §3, the
fixed-n selection law, and the behaviour of every baseline."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from specs_rl.search import STRATEGIES, SearchConfig, beam_search, best_of_n, rsd, run_search, specs
from specs_rl.tabular import TabularBackend, random_tree
from specs_rl.types import Mode, Problem
from specs_rl.verify import selection_log_probs, soft_scores


def world(K=3, H=3, problems=40, seed=0, beta=2.0, same_draft=False, **kw):
    trees = {}
    for i in range(problems):
        t = random_tree(K, H, seed=seed + i, **kw)
        if same_draft:
            t.draft = [x.copy() for x in t.target]
        trees[str(i)] = t
    backend = TabularBackend(trees, beta=beta)
    return [Problem(str(i), "", meta={"tree": str(i)}) for i in range(problems)], backend


def run(strategy, problems, backend, seed=0, **cfg):
    return strategy(problems, SearchConfig(**cfg), backend.parts(), torch.Generator().manual_seed(seed))


def texts(results):
    return [(r.answer, [s.text for s in r.steps]) for r in results]


def test_tau_reject_inf_starting_in_target_is_target_best_of_n_search():
    problems, backend = world()
    a = run(specs, problems, backend, n=4, beta=2.0, tau_reject=math.inf, start_mode="target", tau_switch=0.0)
    b = run(
        beam_search, problems, backend, method="beam_search", n=4, beam_width=4, sampler="target", beta=2.0
    )
    assert texts(a) == texts(b)
    assert all(s.source == Mode.TARGET for r in a for s in r.steps)


def test_tau_reject_minus_inf_never_defers():
    problems, backend = world(problems=60)
    res = run(specs, problems, backend, n=4, tau_reject=-math.inf, start_mode="draft")
    assert all(not s.deferred and s.source == Mode.DRAFT for r in res for s in r.steps)
    # ... while a finite threshold does defer on the same worlds
    res = run(specs, problems, backend, n=4, tau_reject=0.5, start_mode="draft", beta=2.0)
    assert sum(r.deferrals for r in res) > 0


def test_draft_equal_to_target_makes_a_draft_step_soft_best_of_n_over_target_samples():
    problems, backend = world(same_draft=True)
    drafted = run(specs, problems, backend, n=4, beta=3.0, tau_reject=-math.inf, start_mode="draft")
    soft = run(
        specs,
        problems,
        backend,
        n=4,
        beta=3.0,
        tau_reject=math.inf,
        start_mode="target",
        target_select="soft",
    )
    assert texts(drafted) == texts(soft)
    # and the log ratio is exactly zero: every score is beta * reward
    for r in drafted:
        for s in r.steps:
            assert s.scores == pytest.approx([3.0 * x for x in s.rewards], abs=0)


def exact_fixed_n_law(pd, pt, r, beta, n, tau=-math.inf, temperature=1.0):
    """P(select symbol y) for one step by brute force over all K**n ordered draws; also P(defer)."""
    K = len(pd)
    law, defer = np.zeros(K), 0.0
    for draws in itertools.product(range(K), repeat=n):
        p_draws = math.prod(pd[d] for d in draws)
        idx = torch.tensor(draws)
        s = soft_scores(
            torch.log(torch.tensor(pt))[idx], torch.log(torch.tensor(pd))[idx], torch.tensor(r)[idx], beta
        )
        keep = s > tau
        if not keep.any():
            defer += p_draws
            continue
        sel = selection_log_probs(s, keep, temperature).exp().numpy()
        for j, d in enumerate(draws):
            law[d] += p_draws * sel[j]
    return law, defer


def test_specs_step_frequencies_match_the_exact_fixed_n_law():
    """Statistical test: 12,000 SPECS first steps on one tabular state vs the exact law (chi-square, seed 7).

    Tolerance: reject only if p < 1e-3 (a correct sampler fails this 1 time in 1000 seeds; this seed is fixed)."""
    tree = random_tree(4, 2, seed=11, coverage=0.3, concentration=0.7)
    beta, n = 2.0, 3
    backend = TabularBackend({"t": tree}, beta=beta)
    problems = [Problem(str(i), "", meta={"tree": "t"}) for i in range(12_000)]
    cfg = SearchConfig(n=n, beta=beta, tau_reject=-math.inf, start_mode="draft", max_steps=2)
    res = specs(problems, cfg, backend.parts(), torch.Generator().manual_seed(7))
    first = np.bincount([tree.alphabet.index(r.steps[0].text) for r in res], minlength=4)
    V1 = tree.soft_values(beta)[1]
    law, defer = exact_fixed_n_law(tree.draft[0][0], tree.target[0][0], V1, beta, n)
    assert law.sum() == pytest.approx(1.0) and defer == 0
    _, p = stats.chisquare(first, law * len(problems))
    assert p > 1e-3, (first, law * len(problems))
    # the same law is NOT the limit pi*(y|s) at n = 3 (the O(1/n) bias is visible) ...
    star = tree.target[0][0] * np.exp(beta * V1)
    star /= star.sum()
    assert np.abs(law - star).sum() > 1e-3
    # ... and at n = 6 it is closer (one more brute-force law, 4**6 draws)
    law6, _ = exact_fixed_n_law(tree.draft[0][0], tree.target[0][0], V1, beta, 6)
    assert np.abs(law6 - star).sum() < np.abs(law - star).sum()


def test_deferral_rate_matches_the_exact_law():
    tree = random_tree(3, 1, seed=3, coverage=0.5)
    beta, n, tau = 1.0, 2, 0.3
    backend = TabularBackend({"t": tree}, beta=beta)
    problems = [Problem(str(i), "", meta={"tree": "t"}) for i in range(6000)]
    cfg = SearchConfig(n=n, beta=beta, tau_reject=tau, start_mode="draft", max_steps=1)
    res = specs(problems, cfg, backend.parts(), torch.Generator().manual_seed(0))
    _, defer = exact_fixed_n_law(tree.draft[0][0], tree.target[0][0], tree.reward, beta, n, tau)
    observed = sum(r.deferrals for r in res) / len(res)
    assert 0.02 < defer < 0.98
    assert observed == pytest.approx(defer, abs=4 * math.sqrt(defer * (1 - defer) / len(res)))


def test_specs_records_modes_and_switching():
    problems, backend = world(problems=30, H=4)
    res = run(specs, problems, backend, n=4, beta=2.0, tau_reject=-1.0, tau_switch=0.5, start_mode="target")
    for r in res:
        assert r.trace.finished and len(r.steps) == 4
        assert r.steps[0].source == Mode.TARGET  # start mode
        for prev, cur in zip(r.steps, r.steps[1:]):
            if prev.source == Mode.TARGET:
                expect_draft = max(prev.rewards) > 0.5
                assert (cur.source == Mode.DRAFT or cur.deferred) == expect_draft
        assert r.answer == ".".join(s.text for s in r.steps)
        # batched: each problem waits for the whole batch, so its total covers at least its own stages
        assert r.ledger.total_s >= sum(r.ledger.latency_s.values()) - 1e-9
    # one problem at a time: the total is exactly the sum of the stages it ran
    one = run(specs, problems[:1], backend, n=4, beta=2.0, tau_reject=-1.0, tau_switch=0.5)[0]
    assert one.ledger.total_s == pytest.approx(sum(one.ledger.latency_s.values()))
    # start in draft mode
    res = run(specs, problems, backend, n=4, tau_reject=-math.inf, start_mode="draft")
    assert all(r.steps[0].source == Mode.DRAFT for r in res)


def test_no_target_ablation_skips_the_target_and_scores_by_reward():
    problems, backend = world(problems=10)
    res = run(
        specs,
        problems,
        backend,
        n=4,
        beta=2.0,
        score_form="reward_only",
        start_mode="draft",
        tau_reject=-math.inf,
    )
    for r in res:
        assert r.ledger.latency_s["target_score"] == 0.0
        for s in r.steps:
            assert s.scores == pytest.approx([2.0 * x for x in s.rewards])


def test_random_switching_hits_the_requested_target_fraction():
    problems, backend = world(problems=200, H=4)
    res = run(specs, problems, backend, n=2, random_switch=0.3, tau_reject=-math.inf)
    frac = sum(s.source == Mode.TARGET for r in res for s in r.steps) / sum(len(r.steps) for r in res)
    assert frac == pytest.approx(0.3, abs=0.05)


def test_beam_search_keeps_the_best_beams_and_finishes():
    problems, backend = world(problems=20, H=4)
    res = run(beam_search, problems, backend, method="beam_search", n=8, beam_width=2, beta=2.0)
    for r in res:
        assert r.trace.finished and r.extra["completed"] >= 1
        assert r.final_reward == max(r.steps[-1].rewards) or r.final_reward in r.steps[-1].rewards
    # a wider search finds higher-reward answers on average than target sampling
    tgt = run(STRATEGIES["target_only"], problems, backend, method="target_only")
    true = lambda rs: np.mean([backend.true_reward(r.problem.id, r.answer) for r in rs])  # noqa: E731
    assert true(res) > true(tgt) + 0.1


def test_max_steps_generates_the_last_step_to_the_end():
    problems, backend = world(problems=5, H=5)
    for name in STRATEGIES:
        cfg = SearchConfig(method=name, n=4, beam_width=2, max_steps=2)
        res = run_search(problems, cfg, backend.parts(), torch.Generator().manual_seed(0))
        for r in res:
            assert r.trace.finished and len(r.answer.split(".")) == 5, name
            assert len(r.steps) <= 2


def test_best_of_n_votes():
    problems, backend = world(problems=15)
    for vote in ("naive", "weighted", "majority"):
        res = run(best_of_n, problems, backend, method="best_of_n", n=6, bon_vote=vote)
        for r in res:
            answers, scores = r.extra["answers"], r.extra["scores"]
            if vote == "naive":
                assert r.final_reward == max(scores)
            elif vote == "majority":
                assert answers.count(r.answer) == max(answers.count(a) for a in answers)
            else:
                total = {a: sum(s for x, s in zip(answers, scores) if x == a) for a in answers}
                assert total[r.answer] == pytest.approx(max(total.values()))


def test_rsd_accepts_drafts_above_delta_only():
    problems, backend = world(problems=30)
    res = run(rsd, problems, backend, method="rsd", rsd_delta=0.6)
    kinds = set()
    for r in res:
        for s in r.steps:
            kinds.add(s.source)
            if s.source == Mode.DRAFT:
                assert s.reward >= 0.6
    assert kinds == {Mode.DRAFT, Mode.TARGET}


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(n=0), "n must be >= 1"),
        (dict(beta=-1.0), "beta must be >= 0"),
        (dict(method="beam"), "method must be one of"),
        (dict(method="beam_search", n=6, beam_width=4), "beam_width must divide n"),
        (dict(score_form="sum"), "score_form must be one of"),
        (dict(random_switch=1.5), "random_switch"),
    ],
)
def test_invalid_settings_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(SearchConfig(), **bad).validate()
