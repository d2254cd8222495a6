"""The backend contract: every backend (tabular, Hugging Face, any later one) passes these same tests unchanged.

A backend enters by a factory below returning ``(parts, problems)``; its target sampler must sample at
temperature 1 without truncation, so the scorer can be checked against the sampler's own log-probs.
"""

from __future__ import annotations

import math

import pytest
import torch

from specs_rl.interfaces import Clock, RewardModel, SearchParts, StepSampler, TargetScorer
from specs_rl.search import SearchConfig, beam_search, specs
from specs_rl.tabular import TabularBackend, random_tree
from specs_rl.types import Candidate, Problem, Trace


def tabular_backend():
    backend = TabularBackend({"t": random_tree(3, 3, seed=0)}, beta=1.0)
    return backend.parts(), [Problem(f"p{i}", "", meta={"tree": "t"}) for i in range(2)]


def hf_backend():
    # a core backend (torch + transformers are core dependencies): a failed import is a failure, never a skip
    from specs_rl.hf import tiny_parts

    return tiny_parts(seed=0), [Problem("p0", "What is 2 + 3?"), Problem("p1", "Compute 7 * 6.")]


def vllm_backend():
    from tests.vllm_servers import contract_parts

    # real vLLM servers (skipped without the vLLM venv unless SPECS_RL_REQUIRE_VLLM=1)
    return contract_parts()


BACKENDS = {"tabular": tabular_backend, "hf": hf_backend, "vllm": vllm_backend}


@pytest.fixture(params=list(BACKENDS), scope="module")
def backend(request):
    return BACKENDS[request.param]()


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def check_candidate(c):
    assert isinstance(c, Candidate)
    assert len(c.token_ids) >= 1 and len(c.logprobs) == len(c.token_ids)
    assert all(math.isfinite(x) and x <= 1e-6 for x in c.logprobs)
    assert isinstance(c.text, str) and isinstance(c.finished, bool)


def test_parts_implement_the_protocols(backend):
    parts, _ = backend
    assert isinstance(parts, SearchParts)
    assert isinstance(parts.drafter, StepSampler) and isinstance(parts.target, StepSampler)
    assert isinstance(parts.scorer, TargetScorer) and isinstance(parts.prm, RewardModel)
    assert isinstance(parts.clock, Clock)


@pytest.mark.parametrize("which", ["drafter", "target"])
def test_propose_shapes_and_log_probs(backend, which):
    parts, problems = backend
    prefixes = [Trace(p) for p in problems]
    out = getattr(parts, which).propose(prefixes, 3, gen())
    assert len(out) == len(prefixes) and all(len(row) == 3 for row in out)
    for row in out:
        for c in row:
            check_candidate(c)


def test_same_seed_same_candidates(backend):
    parts, problems = backend
    prefixes = [Trace(p) for p in problems]
    a = parts.drafter.propose(prefixes, 2, gen(5))
    b = parts.drafter.propose(prefixes, 2, gen(5))
    assert [[c.token_ids for c in row] for row in a] == [[c.token_ids for c in row] for row in b]


def test_to_end_finishes_every_candidate(backend):
    parts, problems = backend
    out = parts.target.propose([Trace(p) for p in problems], 2, gen(), to_end=True)
    assert all(c.finished for row in out for c in row)


def test_scorer_reproduces_the_target_samplers_log_probs(backend):
    parts, problems = backend
    prefixes = [Trace(p) for p in problems]
    cands = parts.target.propose(prefixes, 2, gen(1))
    scored = parts.scorer.score(prefixes, cands)
    for row, srow in zip(cands, scored):
        for c, lp in zip(row, srow):
            assert len(lp) == len(c.logprobs)
            assert max(abs(a - b) for a, b in zip(lp, c.logprobs)) <= 1e-4
    # and again one step deeper (the prefix now holds a sampled step)
    deeper = [t.extend(row[0]) for t, row in zip(prefixes, cands) if not row[0].finished]
    if deeper:
        cands2 = parts.target.propose(deeper, 2, gen(2))
        for row, srow in zip(cands2, parts.scorer.score(deeper, cands2)):
            for c, lp in zip(row, srow):
                assert max(abs(a - b) for a, b in zip(lp, c.logprobs)) <= 1e-4


def test_prm_rewards_are_probabilities_and_deterministic(backend):
    parts, problems = backend
    prefixes = [Trace(p) for p in problems]
    cands = parts.drafter.propose(prefixes, 3, gen(3))
    r1 = parts.prm.score(prefixes, cands)
    r2 = parts.prm.score(prefixes, cands)
    assert [x for row in r1 for x in row] == pytest.approx([x for row in r2 for x in row], abs=1e-6)
    assert all(0.0 <= x <= 1.0 for row in r1 for x in row) and all(len(row) == 3 for row in r1)


def test_clock_is_monotonic(backend):
    parts, problems = backend
    t0 = parts.clock.now()
    parts.drafter.propose([Trace(problems[0])], 1, gen())
    assert parts.clock.now() >= t0


def test_specs_and_beam_search_run_end_to_end(backend):
    parts, problems = backend
    for strategy, cfg in [
        (specs, SearchConfig(n=2, max_steps=3, tau_reject=-1.0, start_mode="draft")),
        (beam_search, SearchConfig(strategy="beam_search", n=2, beam_width=1, max_steps=3)),
    ]:
        res = strategy(problems, cfg, parts, gen(0))
        assert [r.problem.id for r in res] == [p.id for p in problems]
        for r in res:
            assert r.trace.finished and 1 <= len(r.steps) <= 3
            assert r.answer == parts.answer_of(r.trace)
            assert r.trace.text == "".join(s.text for s in r.steps) or r.trace.text.startswith(
                r.steps[0].text
            )
            assert all(v >= 0 for v in r.ledger.latency_s.values()) and r.ledger.total_s >= 0
            assert sum(r.ledger.tokens.values()) > 0
