"""Exact speculative sampling is lossless: the pure rule's one-position law is the target's exactly, and the HF
target sampler's law of the first tokens of a step equals the target's own (chi-square, fixed seeds).

Statistical tests use a fixed seed and reject at p < 1e-3 (each also shows it has the power to reject a wrong law).
"""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy import stats

from specs_rl.config import ConfigError, load_config
from specs_rl.errors import SpecsError
from specs_rl.hf import tiny_parts
from specs_rl.hf.sampler import HFLM, HFSampler, sample_from_logits
from specs_rl.hf.speculative import SpeculativeSampler
from specs_rl.models import ModelSpec, TinySpec
from specs_rl.models.text import StepStop
from specs_rl.run.summary import summarize
from specs_rl.search import SearchConfig, run_search
from specs_rl.speculative import (
    one_position_law,
    processed_logprobs,
    residual,
    speculative_sample,
)
from specs_rl.tiny import make_tokenizer, tiny_causal_lm
from specs_rl.types import Ledger, Problem, Trace

ALPHA = 1e-3  # the statistical tests' rejection level


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def nucleus(logits: np.ndarray, temperature: float, top_p: float) -> np.ndarray:
    """The sampled law, written independently of the library: softmax(logits / T), the smallest set of most likely
    tokens whose mass reaches top_p, renormalized."""
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    keep = np.zeros_like(p, dtype=bool)
    mass = 0.0
    for i in order:
        keep[i] = True
        mass += p[i]
        if mass >= top_p:
            break
    p = np.where(keep, p, 0.0)
    return p / p.sum()


# ------------------------------------------------------------------------------------------------------------------
# The pure rule


def laws(seed: int, rows: int, vocab: int, zeros: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``q`` and ``p`` ``[rows, vocab]`` (float64), each with ``zeros`` tokens cut (as top-p cuts them)."""
    g = gen(seed)
    out = []
    for _ in range(2):
        lg = torch.randn(rows, vocab, generator=g, dtype=torch.float64) * 1.5
        cut = torch.rand(rows, vocab, generator=g).argsort(-1)[:, :zeros]
        out.append(torch.softmax(lg.scatter(1, cut, -math.inf), -1))
    return out[0], out[1]


def test_processed_logprobs_is_the_law_sample_from_logits_draws_from():
    g = gen(0)
    logits = torch.randn(5, 40, generator=g) * 3
    u = torch.rand(5, generator=g, dtype=torch.float64)
    for t, top_p in [(1.0, 1.0), (0.6, 0.9), (1.4, 0.7), (0.0, 1.0)]:
        lp = processed_logprobs(logits, t, top_p)
        tok, lp_tok = sample_from_logits(logits, u, t, top_p)
        assert torch.equal(lp.gather(1, tok[:, None]).squeeze(1), lp_tok)
        for row in range(5):
            if t > 0:
                ref = nucleus(logits[row].numpy(), t, top_p)
                np.testing.assert_allclose(lp[row].exp().numpy(), ref, atol=1e-6)
            else:
                assert float(lp[row].exp().sum()) == 1.0 and int(lp[row].argmax()) == int(
                    logits[row].argmax()
                )


def test_one_position_law_is_the_target_law_exactly():
    """P(emit y) = q(y) min(1, p(y)/q(y)) + (1 - Σ_x min(q(x), p(x))) residual(y) = p(y), to rounding."""
    q, p = laws(1, rows=50, vocab=7)
    torch.testing.assert_close(one_position_law(q, p), p, rtol=0, atol=1e-12)
    # the same with disjoint supports (every proposal rejected) and with q = p (every proposal kept)
    q2 = torch.tensor([[0.5, 0.5, 0.0, 0.0]], dtype=torch.float64)
    p2 = torch.tensor([[0.0, 0.0, 0.3, 0.7]], dtype=torch.float64)
    torch.testing.assert_close(one_position_law(q2, p2), p2, rtol=0, atol=1e-15)
    torch.testing.assert_close(residual(p2, q2), p2, rtol=0, atol=1e-15)
    torch.testing.assert_close(one_position_law(p, p), p, rtol=0, atol=1e-15)


def test_the_rule_emits_the_target_law_integrated_over_its_uniforms():
    """The law of the first emitted token of :func:`speculative_sample` with one proposal, integrated over the draft's
    token and a midpoint grid of both uniforms (``N x N`` points): ``p`` to the grid's resolution (``2/N``)."""
    V, N = 6, 300  # noqa: N806
    q, p = laws(2, rows=1, vocab=V)
    grid = (torch.arange(N, dtype=torch.float64) + 0.5) / N
    x = torch.arange(V).repeat_interleave(N * N)  # [V·N·N] every (x, u, v)
    u = grid.repeat_interleave(N).repeat(V)
    v = grid.repeat(N * V)
    rows = x.shape[0]
    out, acc = speculative_sample(
        q.expand(rows, V)[:, None, :],
        p.expand(rows, V)[:, None, :].repeat(1, 2, 1),
        x[:, None],
        u[:, None],
        v,
    )
    weight = q[0, x] / (N * N)  # [rows] P(x) · grid cell
    law = torch.zeros(V, dtype=torch.float64).index_add_(0, out[:, 0], weight)
    assert float((law - p[0]).abs().max()) < 2.0 / N
    # the kept fraction of each proposal is min(1, p/q); a kept proposal is followed by the bonus token
    kept = torch.zeros(V, dtype=torch.float64).index_add_(0, x, acc.double()) / (N * N)
    ratio = torch.where(q[0] > 0, (p[0] / q[0]).clamp(max=1.0), torch.ones(V, dtype=torch.float64))
    assert float((kept - ratio)[q[0] > 0].abs().max()) < 1.0 / N
    assert bool((out[acc == 1, 1] >= 0).all()) and bool((out[acc == 0, 1] == -1).all())


def test_equal_laws_keep_every_proposal_and_rows_may_propose_fewer():
    q, _ = laws(3, rows=8, vocab=5)
    k = 3
    qk = q[:, None, :].expand(8, k, 5)
    pk = q[:, None, :].expand(8, k + 1, 5)
    g = gen(3)
    x = torch.multinomial(q, k, replacement=True)  # [8, k]
    u = torch.rand(8, k, generator=g, dtype=torch.float64)
    v = torch.rand(8, generator=g, dtype=torch.float64)
    out, acc = speculative_sample(qk, pk, x, u, v)
    assert acc.tolist() == [k] * 8 and torch.equal(out[:, :k], x)
    proposed = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    out, acc = speculative_sample(qk, pk, x, u, v, proposed)
    assert torch.equal(acc, proposed)  # never beyond what a row proposed
    for r in range(8):
        a = int(acc[r])
        assert out[r, :a].tolist() == x[r, :a].tolist() and int(out[r, a]) >= 0
        assert (out[r, a + 1 :] == -1).all()


# ------------------------------------------------------------------------------------------------------------------
# The HF sampler: exact law of the first tokens of a step

V = 12  # ids 0-7 are the tokenizer's specials (2 = end-of-sequence), 8-11 the bytes ! " # $
DELIM = '"'  # id 9 completes the step delimiter
STEP = 3  # tokens per step at most
PROMPT = Problem("p", "What is 2 + 3?")


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def small_lm(tok, arch: str, seed: int, hidden: int, sharpen: float) -> HFLM:
    """A tiny random LM over the tokenizer's first ``V`` ids, its head scaled so next-token laws are far from
    uniform (and far from another seed's)."""
    model = tiny_causal_lm(tok, arch, seed=seed, hidden_size=hidden)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(sharpen)
    lm = HFLM(model, tok, name=f"{arch}{seed}")
    lm.set_vocab(V)
    return lm


@pytest.fixture(scope="module")
def target_lm(tok):
    return small_lm(tok, "qwen2", seed=2, hidden=64, sharpen=8.0)


@pytest.fixture(scope="module")
def drafts(tok, target_lm):
    """``near``: the target with noise on its head (about half of the proposals kept); ``far``: another model
    (about one in ten kept)."""
    near = copy.deepcopy(target_lm.model)
    with torch.no_grad():
        w = near.get_output_embeddings().weight
        w.add_(torch.randn(w.shape, generator=gen(7)) * w.std())
    lm = HFLM(near, tok, name="near")
    lm.set_vocab(V)
    return {"near": lm, "far": small_lm(tok, "llama", seed=5, hidden=32, sharpen=8.0)}


def sampler(lm: HFLM, temperature: float, top_p: float) -> HFSampler:
    return HFSampler(
        lm, temperature=temperature, top_p=top_p, delimiter=DELIM, max_step_tokens=STEP, max_tokens=48
    )


def exact_step_law(lm: HFLM, temperature: float, top_p: float) -> dict[tuple[int, ...], float]:
    """Every step of at most ``STEP`` tokens (cut at end-of-sequence or the delimiter) with its exact probability under
    the target's sampled law, from plain forwards of prompt + tokens."""
    stop = StepStop(DELIM, lm.text)
    _, pids = lm.key(Trace(PROMPT))
    law: dict[tuple[int, ...], float] = {}
    frontier = [((), 1.0, stop.start())]
    while frontier:
        seqs = [list(pids) + list(s) for s, _, _ in frontier]
        with torch.no_grad():
            logits = lm.model(input_ids=torch.tensor(seqs)).logits[:, -1, :V].numpy()
        nxt = []
        for (seq, pr, st), lg in zip(frontier, logits):
            for t, pt in enumerate(nucleus(lg, temperature, top_p)):
                if pt == 0.0:
                    continue
                s2 = (*seq, t)
                done, st2 = stop.feed(st, t)
                if t in lm.eos_ids or done or len(s2) == STEP:
                    law[s2] = law.get(s2, 0.0) + pr * pt
                else:
                    nxt.append((s2, pr * pt, st2))
        frontier = nxt
    assert abs(sum(law.values()) - 1.0) < 1e-9
    return law


def chi_square(law: dict[tuple[int, ...], float], samples: list[tuple[int, ...]]) -> float:
    """p-value of the samples under ``law`` (categories with expected count < 5 pooled into one)."""
    n = len(samples)
    counts: dict[tuple[int, ...], int] = {}
    for s in samples:
        counts[s] = counts.get(s, 0) + 1
    obs, exp, rest_o, rest_e = [], [], 0, 0.0
    for s, pr in law.items():
        if pr * n >= 5:
            obs.append(counts.get(s, 0))
            exp.append(pr * n)
        else:
            rest_o += counts.get(s, 0)
            rest_e += pr * n
    rest_o += sum(c for s, c in counts.items() if s not in law)  # impossible sequences: fail loudly below
    if rest_e > 0 or rest_o > 0:
        obs.append(rest_o)
        exp.append(max(rest_e, 1e-12))
    return float(stats.chisquare(obs, exp).pvalue)


CASES = [
    # (draft, target T, target top-p, draft T, draft top-p, k)
    pytest.param("near", 1.0, 0.9, 1.0, 1.0, 2, id="T1-topp0.9-k2"),
    pytest.param("near", 0.7, 0.9, 1.3, 0.95, 1, id="T0.7-topp0.9-k1-draftT1.3"),
    pytest.param("far", 1.5, 0.85, 0.6, 1.0, 3, id="T1.5-topp0.85-k3-draftT0.6-other-model"),
]


@pytest.mark.parametrize("draft, t_temp, t_top_p, d_temp, d_top_p, k", CASES)
def test_speculative_steps_follow_the_targets_exact_law(
    target_lm, drafts, draft, t_temp, t_top_p, d_temp, d_top_p, k
):
    """The law of a step (up to 3 tokens, or end-of-sequence, or the delimiter) written by speculative sampling with a
    draft that differs from the target (its head perturbed, or another model) at another temperature and top-p is
    the target's exact law (enumerated: 137-387 steps); the draft's law and the target's at a wrong temperature are
    rejected by the same test."""
    draft_lm = drafts[draft]
    spec = SpeculativeSampler(sampler(draft_lm, d_temp, d_top_p), sampler(target_lm, t_temp, t_top_p), k)
    n = 6000
    cands = spec.propose([Trace(PROMPT)], n, gen(11))[0]
    samples = [c.token_ids for c in cands]
    law = exact_step_law(target_lm, t_temp, t_top_p)
    assert chi_square(law, samples) > ALPHA
    assert chi_square(exact_step_law(draft_lm, d_temp, d_top_p), samples) < ALPHA
    assert chi_square(exact_step_law(target_lm, 1.25 * t_temp, t_top_p), samples) < ALPHA
    # both paths of the rule ran: rejected proposals (residual draws) and fully kept rounds (bonus draws)
    proposed = sum(c.speculation.proposed for c in cands)
    accepted = sum(c.speculation.accepted for c in cands)
    assert 0.03 * proposed < accepted < 0.8 * proposed
    assert sum(c.speculation.accepted == c.speculation.proposed for c in cands) > 100
    # log-probs are the target's processed ones of the emitted tokens
    for c in cands[:50]:
        assert c.logprob == pytest.approx(
            math.log(law_prefix_prob(target_lm, c.token_ids, t_temp, t_top_p)), abs=1e-4
        )


def law_prefix_prob(lm: HFLM, ids: tuple[int, ...], temperature: float, top_p: float) -> float:
    _, pids = lm.key(Trace(PROMPT))
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([list(pids) + list(ids)])).logits[0, :, :V].numpy()
    pr = 1.0
    for j, t in enumerate(ids):
        pr *= nucleus(logits[len(pids) - 1 + j], temperature, top_p)[t]
    return pr


def test_a_draft_equal_to_the_target_keeps_every_proposal(target_lm):
    """Draft = target (same model, same temperature and top-p): every proposal is kept (acceptance length k + 1)."""
    spec = SpeculativeSampler(sampler(target_lm, 0.8, 0.9), sampler(target_lm, 0.8, 0.9), 3)
    cands = spec.propose([Trace(PROMPT)], 300, gen(2))[0]
    assert sum(c.speculation.proposed for c in cands) > 300
    assert all(c.speculation.accepted == c.speculation.proposed for c in cands)


def test_greedy_speculative_steps_are_the_targets_greedy_steps(target_lm, drafts):
    greedy = sampler(target_lm, 0.0, 1.0)
    spec = SpeculativeSampler(sampler(drafts["far"], 1.0, 1.0), greedy, 2)
    traces = [Trace(PROMPT), Trace(Problem("q", "Compute 7 * 6."))]
    for _ in range(3):
        ref = greedy.propose(traces, 1, gen(0))
        got = spec.propose(traces, 2, gen(1))
        for r, g in zip(ref, got):
            assert g[0].token_ids == g[1].token_ids == r[0].token_ids
            assert g[0].logprobs == r[0].logprobs == (0.0,) * r[0].num_tokens
        traces = [t.extend(r[0]) for t, r in zip(traces, ref) if not r[0].finished]
        if not traces:
            break


# ------------------------------------------------------------------------------------------------------------------
# Wiring: the option, the caches across steps, the ledger


def spec_parts(k: int = 3, **kw):
    target = ModelSpec(
        name="tiny:qwen2",
        device="cpu",
        temperature=1.0,
        tiny=TinySpec(hidden_size=64, seed=2),
        speculative_tokens=k,
    )
    return tiny_parts(seed=0, max_step_tokens=6, max_tokens=40, target=target, **kw)


@pytest.fixture(scope="module")
def sparts():
    return spec_parts(k=2)


def test_speculative_steps_continue_cached_states_and_match_the_scorer(sparts):
    """Over several steps, each starting from the states the previous one left in both caches, the target's
    log-probs of the speculatively written tokens equal the scorer's (one pass over the same tokens)."""
    parts = sparts
    assert isinstance(parts.target, SpeculativeSampler)
    traces = [Trace(PROMPT), Trace(Problem("q", "Compute 7 * 6, then explain."))]
    worst, steps = 0.0, 0
    for step in range(4):
        cands = parts.target.propose(traces, 3, gen(step))
        scored = parts.scorer.score(traces, cands)
        for cs, ss in zip(cands, scored):
            for c, s in zip(cs, ss):
                worst = max(worst, max(abs(a - b) for a, b in zip(c.logprobs, s)))
                steps += 1
        traces = [t.extend(cs[0]) for t, cs in zip(traces, cands) if not cs[0].finished]
        if not traces:
            break
    assert steps >= 12 and worst < 1e-4


def test_target_only_with_speculative_tokens_records_acceptance(sparts):
    from specs_rl.run.records import result_record

    results = run_search([PROMPT], SearchConfig(strategy="target_only", max_steps=3), sparts, gen(0))
    tok = results[0].ledger.tokens
    assert tok["target_rounds"] > 0 and tok["target_proposed"] >= tok["target_accepted"]
    assert tok["target_proposed"] <= 2 * tok["target_rounds"]
    length = results[0].ledger.acceptance_length
    assert length == pytest.approx(1 + tok["target_accepted"] / tok["target_rounds"]) and 1 <= length <= 3
    rec = result_record(results[0], {})
    assert rec["acceptance_length"] == length
    assert summarize([rec])["acceptance_length_mean"] == pytest.approx(length)
    assert Ledger().acceptance_length is None


def test_speculative_tokens_needs_a_shared_tokenizer_and_belongs_to_the_target():
    draft = ModelSpec(name="tiny:llama", device="cpu", tiny=TinySpec(hidden_size=32, tokenizer_vocab=320))
    with pytest.raises(SpecsError, match="share a tokenizer"):
        spec_parts(draft=draft)
    with pytest.raises(SpecsError, match="hf.draft.speculative_tokens must be 0"):
        tiny_parts(
            draft=dataclasses.replace(ModelSpec(name="tiny:llama", device="cpu"), speculative_tokens=2)
        )
    with pytest.raises(SpecsError, match=r"hf.target.speculative_tokens must be >= 0"):
        spec_parts(k=-1)


@pytest.mark.parametrize(
    "settings",
    [
        dict(strategy="beam_search", n=4, beam_width=2),
        dict(strategy="best_of_n", n=2),
        dict(strategy="dvts", n=4, beam_width=2),
        dict(
            strategy="specs", n=2, start_mode="target", tau_switch=2.0
        ),  # rewards <= 1: the target writes on
        dict(strategy="rsd", n=1, rsd_delta=2.0),  # no draft step passes: the target rewrites each
        dict(strategy="specreason", n=1, judge="prm", judge_threshold=10.0),  # > 9: the target writes each
    ],
    ids=lambda s: s["strategy"],
)
def test_every_method_where_the_target_writes_uses_speculative_steps(sparts, settings):
    (res,) = run_search([PROMPT], SearchConfig(max_steps=2, **settings), sparts, gen(0))
    tok = res.ledger.tokens
    assert tok["target_generate"] > 0 and tok["target_rounds"] > 0
    assert 0 <= tok["target_accepted"] <= tok["target_proposed"] <= 2 * tok["target_rounds"]


def test_each_prefix_draws_from_its_own_generator(sparts):
    """A batched call with one generator per prefix equals single-prefix calls with generators in the same state
    (a row's tokens and counts do not depend on the other rows), and two prefixes with the same prompt differ."""
    problems = [PROMPT, Problem("q", "Compute 7 * 6, then explain."), Problem("r", PROMPT.prompt)]
    traces = [Trace(p) for p in problems]
    both = sparts.target.propose(traces, 3, [gen(20 + i) for i in range(3)])
    for i, (t, row) in enumerate(zip(traces, both)):
        (single,) = sparts.target.propose([t], 3, [gen(20 + i)])
        assert [(c.token_ids, c.speculation) for c in row] == [(c.token_ids, c.speculation) for c in single]
    assert [c.token_ids for c in both[0]] != [c.token_ids for c in both[2]]


def test_the_target_sd_preset_runs_target_only_with_speculative_steps_on_the_toy_world(tmp_path) -> None:
    """target_sd = target_only with speculative_tokens 3: its records carry the acceptance counts, target_only's
    none; the same problems' answers may differ (another draw of the same law), the step sources are the target's."""
    import json

    from eval import compare, demo

    out = tmp_path / "sd"
    argv = ["methods=[target_only,target_sd]", "n_grid=[4]", "seeds=[0]", "data.limit=3", f"out={out}"]
    argv += ["wandb=false", "plot=false", "progress=false", "warmup=0"]
    assert compare.run(demo.demo_config(argv)) == 0
    recs = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    by = {m: [r for r in recs if r["method"] == m] for m in ("target_only", "target_sd")}
    assert len(by["target_only"]) == len(by["target_sd"]) == 3
    assert all(r["strategy"] == "target_only" for r in recs)
    assert all(r["tokens"]["target_proposed"] == 0 for r in by["target_only"])
    for r in by["target_sd"]:
        t = r["tokens"]
        assert (
            t["target_rounds"] > 0
            and 0 <= t["target_accepted"] <= t["target_proposed"] <= 3 * t["target_rounds"]
        )
        assert r["acceptance_length"] == pytest.approx(1 + t["target_accepted"] / t["target_rounds"])
        assert all(s["source"] == "target" for s in r["steps"])


def test_speculative_tokens_on_a_backend_without_token_level_parts_is_refused_before_loading(capsys) -> None:
    from eval import compare, search

    from .conftest import REPO

    tab = str(REPO / "configs" / "eval" / "tabular.yaml")
    assert compare.main(["--config", tab, "methods=[target_only,target_sd]", "out=/nonexistent/x"]) == 2
    err = capsys.readouterr().err
    assert "method target_sd writes target tokens by speculative sampling, which needs backend: hf" in err
    assert "step-level" in err and err.count("\n") == 1
    tab = str(REPO / "configs" / "search" / "tabular.yaml")
    assert search.main(["--config", tab, "method=target_sd", "out=/nonexistent/y"]) == 2
    assert "needs backend: hf" in capsys.readouterr().err
    with pytest.raises(ValueError, match="speculative_tokens must be >= 0"):
        SearchConfig(speculative_tokens=-1).validate()


def test_sd_variants_pin_speculative_steps_and_take_their_bases_settings() -> None:
    """<base>_sd is the base preset with the target_sd k; it runs at its base's method_settings unless it has its
    own, and its base's pinned values stay pinned."""
    from specs_rl.methods import METHOD_PRESETS, SPECULATIVE_BASES, uses_n
    from specs_rl.run.grid import CompareConfig, plan_runs

    from .conftest import REPO

    for base in SPECULATIVE_BASES:
        sd = METHOD_PRESETS[f"{base}_sd"]
        assert sd == {
            **METHOD_PRESETS[base],
            "speculative_tokens": METHOD_PRESETS["target_sd"]["speculative_tokens"],
        }
        assert uses_n(f"{base}_sd") == uses_n(base)
    assert "draft_only_sd" not in METHOD_PRESETS and "beam_search_draft_sd" not in METHOD_PRESETS
    cfg = load_config(
        CompareConfig,
        str(REPO / "configs" / "eval" / "peers_toymath.yaml"),
        [
            "methods=[specs,specs_sd,gsi_sd,specreason_sd]",
            "n_grid=[4]",
            "seeds=[0]",
            "method_settings.gsi_sd.beta=2.0",
        ],
    )
    runs = {r.method: r.config for r in plan_runs(cfg)}
    assert runs["specs_sd"].speculative_tokens == 3 and runs["specs"].speculative_tokens == 0
    assert (runs["specs_sd"].beta, runs["specs_sd"].tau_reject) == (
        runs["specs"].beta,
        runs["specs"].tau_reject,
    )
    assert (
        runs["gsi_sd"].beta == 2.0 and runs["gsi_sd"].acceptance == "select_test"
    )  # its own beats its base's
    assert runs["specreason_sd"].judge == "prm"  # specreason's fixed judge
    with pytest.raises(ConfigError, match="method specs_sd pins score_form"):
        plan_runs(
            load_config(
                CompareConfig,
                str(REPO / "configs" / "eval" / "peers_toymath.yaml"),
                ["methods=[specs_sd]", "n_grid=[4]", "seeds=[0]", "method_settings.specs_sd.score_form=mean"],
            )
        )


def test_two_chained_toy_world_steps_have_the_same_law_plain_or_speculative() -> None:
    """On the shipped toy world (steps of 8-12 tokens: several rounds of k = 3 each, the caches rolled back and
    continued), a step and the step after it, each written by the target plainly or by speculative sampling with the
    draft, have the same joint law: a two-sample chi-square on (first step, second step). The prefix stops where the
    target is unsure (21*2 is 42 only about a third of the time, 42*9 spreads over dozens of results), and the second
    call continues 2,000 different prefixes in one batch (padding, per-row rollback)."""
    from eval import demo
    from specs_rl.hf.build import build_parts

    parts = build_parts(demo.demo_config(["wandb=false"]).run.hf)
    prefix = Trace(Problem("toy", "Compute ((((9*3)-6)*2)*9).\n\n9*3=27\n\n27-6=21\n\n"))
    n = 2000
    seen = {}
    for name, target in (("plain", parts.target), ("speculative", parts.speculative_target(3))):
        first = target.propose([prefix], n, [gen(1 if name == "plain" else 2)])[0]
        second = target.propose(
            [prefix.extend(c) for c in first], 1, [gen(10_000 * (name == "plain") + i) for i in range(n)]
        )
        seen[name] = [(a.text, b[0].text) for a, b in zip(first, second)]
        # several rounds per step, some proposals rejected: both paths of the rule ran
        if name == "speculative":
            spec = [c.speculation for c in first] + [b[0].speculation for b in second]
            assert sum(x.rounds for x in spec) > 2 * len(spec)
            assert 0 < sum(x.accepted for x in spec) < sum(x.proposed for x in spec)
    counts = {name: {} for name in seen}
    for name, pairs in seen.items():
        for p in pairs:
            counts[name][p] = counts[name].get(p, 0) + 1
    keys = {p for c in counts.values() for p in c}
    big = [p for p in keys if counts["plain"].get(p, 0) + counts["speculative"].get(p, 0) >= 10]
    table = [
        [counts[name].get(p, 0) for p in big] + [n - sum(counts[name].get(p, 0) for p in big)]
        for name in seen
    ]
    table = [col for col in zip(*table) if sum(col) > 0]
    assert len(big) >= 20  # the prefix keeps the test sharp: many distinct (step, step) pairs
    assert stats.chi2_contingency(list(zip(*table))).pvalue > ALPHA
