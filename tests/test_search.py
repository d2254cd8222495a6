"""Search strategies on the exact tabular backend: the special-case equivalences of docs/algorithm.md §3, the
fixed-n selection law, and the behaviour of every baseline."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from specs_rl.interfaces import SearchParts, SimClock
from specs_rl.search import STRATEGIES, SearchConfig, beam_search, best_of_n, dvts, rsd, run_search, specs
from specs_rl.tabular import TabularBackend, random_tree
from specs_rl.types import Candidate, Mode, Problem
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


def run(fn, problems, backend, seed=0, **cfg):
    return fn(problems, SearchConfig(**cfg), backend.parts(), torch.Generator().manual_seed(seed))


def texts(results):
    return [(r.answer, [s.text for s in r.steps]) for r in results]


def test_tau_reject_inf_starting_in_target_is_target_best_of_n_search():
    problems, backend = world()
    a = run(specs, problems, backend, n=4, beta=2.0, tau_reject=math.inf, start_mode="target", tau_switch=0.0)
    b = run(
        beam_search, problems, backend, strategy="beam_search", n=4, beam_width=4, sampler="target", beta=2.0
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
        assert r.ledger.total_s >= sequential_stages(r.ledger) - 1e-9
    # one problem at a time, scoring and PRM in turn: the total is exactly the sum of the stages it ran, and the
    # verify section is the two scoring stages of its draft steps
    one = run(specs, problems[:1], backend, n=4, beta=2.0, tau_reject=-1.0, tau_switch=0.5)[0]
    assert one.ledger.total_s == pytest.approx(sequential_stages(one.ledger))
    # start in draft mode
    res = run(specs, problems, backend, n=4, tau_reject=-math.inf, start_mode="draft")
    assert all(r.steps[0].source == Mode.DRAFT for r in res)


def sequential_stages(ledger):
    """The stages that never overlap when scoring and the PRM run in turn (``verify`` is their section)."""
    lat = ledger.latency_s
    return lat["draft"] + lat["target_score"] + lat["target_generate"] + lat["reward"]


def test_concurrent_scoring_charges_the_section_wall_time_not_the_sum():
    """Target scoring and the PRM overlap: the draft step waits for the longer of the two. On the simulated clock
    the section costs the maximum of the two calls, and no stage is added up twice."""
    problems, backend = world(problems=5, H=3)
    kw = dict(n=4, beta=2.0, tau_reject=-math.inf, start_mode="draft")
    seq = run(specs, problems[:1], backend, **kw)[0].ledger
    con = run(specs, problems[:1], backend, concurrent_scoring=True, **kw)[0].ledger
    assert seq.latency_s["verify"] == pytest.approx(seq.latency_s["target_score"] + seq.latency_s["reward"])
    # same calls, same per-stage times; the section is the longer call at every step
    for stage in ("draft", "target_score", "reward"):
        assert con.latency_s[stage] == pytest.approx(seq.latency_s[stage])
    steps = run(specs, problems[:1], backend, concurrent_scoring=True, **kw)[0].steps
    assert con.latency_s["verify"] == pytest.approx(
        sum(max(s.latency_s["target_score"], s.latency_s["reward"]) for s in steps)
    )
    assert con.latency_s["verify"] < seq.latency_s["verify"]
    assert con.total_s == pytest.approx(con.latency_s["draft"] + con.latency_s["verify"])
    assert seq.total_s == pytest.approx(seq.latency_s["draft"] + seq.latency_s["verify"])


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


def test_gsi_without_threshold_takes_the_same_path_as_specs_exact_from_the_draft():
    """Select-then-test at threshold -inf never defers and consumes the random stream as filter-then-select does:
    with the same seed, GSI (and rsd_bon at rsd_delta = -inf) write the very same responses as SPECS' exact form
    started in draft mode (rsd_bon: its reward-only score)."""
    problems, backend = world(problems=40, H=4)
    kw = dict(n=4, beta=2.0, start_mode="draft", tau_reject=-math.inf, temperature=1.0)
    gsi = run(
        specs, problems, backend, acceptance="select_test", target_select="soft", tau_switch=-math.inf, **kw
    )
    assert texts(gsi) == texts(run(specs, problems, backend, **kw))
    kw["score_form"] = "reward_only"
    rsd_bon = dict(acceptance="select_test", accept_test="reward", rsd_delta=-math.inf, target_select="soft")
    assert texts(run(specs, problems, backend, **rsd_bon, **kw)) == texts(run(specs, problems, backend, **kw))
    assert all(not s.deferred for r in gsi for s in r.steps)


def test_select_then_test_tests_the_chosen_draft_and_every_step_starts_from_the_draft():
    """GSI's rule: one draft chosen over all n, kept iff its score > tau_reject, else the target writes the step by
    soft best-of-n; tau_switch = -inf sends the next step back to the draft."""
    problems, backend = world(problems=60, H=4)
    cfg = dict(n=4, beta=2.0, start_mode="draft", acceptance="select_test", target_select="soft")
    res = run(specs, problems, backend, tau_reject=0.5, tau_switch=-math.inf, **cfg)
    deferred = [s for r in res for s in r.steps if s.deferred]
    kept = [s for r in res for s in r.steps if not s.deferred]
    assert len(deferred) > 20 and len(kept) > 20  # both branches
    assert all(s.source == Mode.DRAFT and s.score > 0.5 for s in kept)  # a kept draft passed the test
    assert all(s.source == Mode.TARGET for s in deferred)  # a deferred step is the target's, and the next ...
    for r in res:
        for prev, cur in zip(r.steps, r.steps[1:]):
            if (
                prev.deferred
            ):  # ... step is drafted again (it may be deferred in turn, never started in target mode)
                assert cur.source == Mode.DRAFT or cur.deferred
    # select-then-test defers when the chosen draft fails even if another passes; the filter only when all fail
    filt = run(
        specs, problems, backend, tau_reject=0.5, tau_switch=-math.inf, **{**cfg, "acceptance": "filter"}
    )
    assert len(deferred) > 2 * sum(r.deferrals for r in filt)


def test_a_reward_test_is_not_cut_short_by_tau_reject():
    """accept_test=reward tests r >= rsd_delta: tau_reject (the score test's threshold) plays no part, even at
    +inf, where the score test would defer without drafting."""
    problems, backend = world(problems=20)
    cfg = dict(
        n=3,
        beta=2.0,
        start_mode="draft",
        acceptance="select_test",
        accept_test="reward",
        tau_switch=-math.inf,
    )
    res = run(
        specs, problems, backend, tau_reject=math.inf, rsd_delta=-math.inf, score_form="reward_only", **cfg
    )
    assert all(s.source == Mode.DRAFT and not s.deferred for r in res for s in r.steps)
    res = run(specs, problems, backend, rsd_delta=math.inf, score_form="reward_only", **cfg)
    assert all(s.deferred for r in res for s in r.steps)


def test_random_switching_hits_the_requested_target_fraction():
    problems, backend = world(problems=200, H=4)
    res = run(specs, problems, backend, n=2, random_switch=0.3, tau_reject=-math.inf)
    frac = sum(s.source == Mode.TARGET for r in res for s in r.steps) / sum(len(r.steps) for r in res)
    assert frac == pytest.approx(0.3, abs=0.05)


def test_beam_search_keeps_the_best_beams_and_finishes():
    problems, backend = world(problems=20, H=4)
    res = run(beam_search, problems, backend, strategy="beam_search", n=8, beam_width=2, beta=2.0)
    for r in res:
        assert r.trace.finished and r.extra["completed"] >= 1
        assert r.final_reward == r.steps[-1].reward  # aggregate "last": the kept last step's reward
    # a single surviving beam (beam_width = n) keeps the best-rewarded candidate at every step
    single = run(beam_search, problems, backend, strategy="beam_search", n=4, beam_width=4, beta=2.0)
    for r in single:
        for s in r.steps:
            assert s.reward == max(s.rewards) and s.chosen == s.rewards.index(max(s.rewards))
    # a wider search finds higher-reward answers on average than target sampling
    tgt = run(STRATEGIES["target_only"], problems, backend, strategy="target_only")
    true = lambda rs: np.mean([backend.true_reward(r.problem.id, r.answer) for r in rs])  # noqa: E731
    assert true(res) > true(tgt) + 0.1


class Scripted:
    """A world written out by hand. ``steps[prefix]`` lists the candidates proposed after the prefix text, handed out
    in turn across calls; ``reward[text]`` is the PRM score of a prefix text; a candidate in ``ends`` (or the
    ``horizon``-th step) finishes the response. It records what was proposed and what the PRM scored."""

    def __init__(self, steps, reward, *, horizon=9, ends=()):
        self.steps, self.reward, self.horizon, self.ends = steps, reward, horizon, set(ends)
        self.handed = {k: 0 for k in steps}
        self.proposed, self.scored = [], []

    def propose(self, prefixes, n, generator, *, to_end=False):
        out = []
        for t in prefixes:
            seq, k = self.steps[t.text], self.handed[t.text]
            self.handed[t.text] += n
            texts = [seq[(k + j) % len(seq)] for j in range(n)]
            self.proposed += [t.text + x for x in texts]
            last = len(t.steps) + 1 >= self.horizon
            out.append([Candidate((ord(x[0]),), x, (-0.5,), last or x in self.ends) for x in texts])
        return out

    def score(self, prefixes, candidates):
        self.scored += [t.text + c.text for t, cs in zip(prefixes, candidates) for c in cs]
        return [[self.reward[t.text + c.text] for c in cs] for t, cs in zip(prefixes, candidates)]

    def parts(self):
        return SearchParts(self, self, _NoScorer(), self, SimClock(), answer_of=lambda t: t.text)


class _NoScorer:
    def score(self, prefixes, candidates):
        raise AssertionError("this strategy must not call the target scorer")


def test_dvts_subtrees_each_keep_their_own_best_candidate():
    """n = 4, beam_width 2: two subtrees, each proposing 2 of the root's candidates. DVTS keeps the best of EACH
    subtree (a from {a, b}, d from {c, d}); beam search keeps the best two overall (a, b)."""
    steps = {"": ["a", "b", "c", "d"]}
    reward = {"a": 0.9, "b": 0.8, "c": 0.1, "d": 0.2}
    cfg = dict(n=4, beam_width=2, max_steps=3)
    world_ = Scripted(steps, reward, horizon=1)
    (res,) = dvts([Problem("p", "")], SearchConfig(strategy="dvts", **cfg), world_.parts(), torch.Generator())
    assert res.extra["answers"] == ["a", "d"] and res.answer == "a"
    world_ = Scripted(steps, reward, horizon=1)
    (res,) = beam_search(
        [Problem("p", "")], SearchConfig(strategy="beam_search", **cfg), world_.parts(), torch.Generator()
    )
    assert res.extra["answers"] == ["a", "b"]


@pytest.mark.parametrize("refill, expanded", [(True, 4), (False, 2)])
def test_beam_search_refills_to_n_beams_when_beams_finish(refill, expanded):
    """Two beams survive step 1; one of them (a) finishes. With refill the other (b) is copied back to two beams,
    so step 2 still expands n = 4 candidates; without it only b's 2."""
    steps = {"": ["a", "b", "c", "d"], "b": ["e", "f", "g", "h"]}
    reward = {"a": 0.9, "b": 0.8, "c": 0.1, "d": 0.2, "be": 0.3, "bf": 0.95, "bg": 0.4, "bh": 0.5}
    world_ = Scripted(steps, reward, horizon=2, ends={"a"})
    cfg = SearchConfig(strategy="beam_search", n=4, beam_width=2, beam_refill=refill, max_steps=4)
    (res,) = beam_search([Problem("p", "")], cfg, world_.parts(), torch.Generator())
    assert sum(x.startswith("b") and len(x) == 2 for x in world_.proposed) == expanded
    # a, then the best two of b's 4 expansions (refill) or the best one of its 2
    assert res.answer == "bf" and res.extra["completed"] == (3 if refill else 2)


def test_rsd_runs_no_prm_pass_on_the_step_the_target_rewrote():
    """RSD keeps the target's rewrite unread, so the PRM never scores it and the problem is not charged for it."""
    steps = {
        "": ["x"],
        "y": ["z"],
        "yz": ["w"],
    }  # draft and target share the script: x is drafted, y rewritten
    world_ = Scripted({**steps, "": ["x", "y"]}, {"x": 0.1, "yz": 0.9, "yzw": 0.9}, horizon=3)
    (res,) = rsd(
        [Problem("p", "")], SearchConfig(strategy="rsd", rsd_delta=0.7), world_.parts(), torch.Generator()
    )
    assert res.answer == "yzw" and [s.source for s in res.steps] == [Mode.TARGET, Mode.DRAFT, Mode.DRAFT]
    assert "y" not in world_.scored and world_.scored == ["x", "yz", "yzw"]
    assert res.steps[0].rewards == [] and res.steps[0].deferred


def test_max_steps_generates_the_last_step_to_the_end():
    problems, backend = world(problems=5, H=5)
    for name in STRATEGIES:
        cfg = SearchConfig(strategy=name, n=4, beam_width=2, max_steps=2)
        res = run_search(problems, cfg, backend.parts(), torch.Generator().manual_seed(0))
        for r in res:
            assert r.trace.finished and len(r.answer.split(".")) == 5, name
            assert len(r.steps) <= 2


def test_best_of_n_votes():
    problems, backend = world(problems=15)
    for vote in ("naive", "weighted", "majority"):
        res = run(best_of_n, problems, backend, strategy="best_of_n", n=6, bon_vote=vote)
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
    res = run(rsd, problems, backend, strategy="rsd", rsd_delta=0.6)
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
        (dict(strategy="beam"), "strategy must be one of"),
        (dict(strategy="beam_search", n=6, beam_width=4), "beam_width must divide n"),
        (dict(score_form="sum"), "score_form must be one of"),
        (dict(random_switch=1.5), "random_switch"),
        (dict(acceptance="gsi"), "acceptance must be one of"),
        (dict(acceptance="select_test", accept_test="value"), "accept_test must be one of"),
        (dict(accept_test="reward"), "accept_test=reward needs acceptance=select_test"),
        (dict(rsd_delta=math.nan), "rsd_delta must be a number"),
    ],
)
def test_invalid_settings_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(SearchConfig(), **bad).validate()
