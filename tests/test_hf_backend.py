"""The Hugging Face backend's draft/target: cached log-probs, string-level stops, RNG design, padded vocabularies."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from specs_rl.errors import SpecsError
from specs_rl.hf import build_parts, tiny_parts
from specs_rl.hf.load import tiny_tokenizer
from specs_rl.hf.sampler import HFLM, HFSampler, sample_from_logits
from specs_rl.hf.scorer import HFScorer
from specs_rl.models import ModelsConfig, ModelSpec, PrmSpec, TinySpec
from specs_rl.models.text import StepStop, TokenText, stop_index
from specs_rl.tiny import CHAT_TEMPLATE, SPECIALS, tiny_causal_lm
from specs_rl.types import Candidate, Problem, Trace

from .conftest import cuda_tiny_parts


@pytest.fixture(scope="module")
def parts():
    return tiny_parts(seed=0, max_step_tokens=10, max_tokens=120)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


PA = Problem("a", "What is 2 + 3?")
PB = Problem("b", "Compute 7 * 6, then explain every step carefully.")


def full_logprobs(lm: HFLM, trace: Trace, cand: Candidate) -> list[float]:
    """Log-probs of ``cand`` after ``trace`` by one plain forward of the whole sequence (no cache, SDPA)."""
    _, ids = lm.key(trace)
    seq = list(ids) + list(cand.token_ids)
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([seq], device=lm.stack.device)).logits[0].float()
    ls = torch.log_softmax(logits[:, : lm.vocab], dim=-1).cpu()
    return [float(ls[len(ids) - 1 + k, t]) for k, t in enumerate(cand.token_ids)]


# ------------------------------------------------------------------------------------------------------------------
# Cached path == full recompute


def test_cached_log_probs_equal_a_full_recompute_over_several_steps(parts):
    """Draft samples, target scores and target samples, each step starting from caches kept across steps (prefix
    states, candidates left by the previous pass), agree with a plain recompute to 1e-4 in float32."""
    traces = [Trace(PA), Trace(PB)]
    worst = 0.0
    checked = 0
    for step in range(4):
        cands = parts.drafter.propose(traces, 3, gen(step))
        scored = parts.scorer.score(traces, cands)
        for t, cs, ss in zip(traces, cands, scored):
            for c, s in zip(cs, ss):
                worst = max(
                    worst, max(abs(a - b) for a, b in zip(full_logprobs(parts.drafter.lm, t, c), c.logprobs))
                )
                worst = max(worst, max(abs(a - b) for a, b in zip(full_logprobs(parts.scorer.lm, t, c), s)))
                checked += len(c.token_ids)
        if step % 2:  # a target-mode step: the target samples from its cache, the draft must catch up later
            tc = parts.target.propose(traces, 2, gen(10 + step))
            for t, cs in zip(traces, tc):
                for c in cs:
                    ref = full_logprobs(parts.target.lm, t, c)
                    worst = max(worst, max(abs(a - b) for a, b in zip(ref, c.logprobs)))
            cands = tc
        traces = [t.extend(next((c for c in cs if not c.finished), cs[0])) for t, cs in zip(traces, cands)]
        traces = [t for t in traces if not t.finished] or [Trace(PA)]
    assert checked > 100
    assert worst <= 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-4), ("bfloat16", 0.15)])
def test_cached_path_on_cuda_matches_a_full_recompute(dtype, tol):
    """On CUDA the split attention runs PyTorch's memory-efficient kernel (with its log-sum-exp): it must stay in use
    and agree with a plain recompute (bfloat16: rounding of both paths)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from specs_rl.hf import cascade

    p = cuda_tiny_parts(dtype, max_step_tokens=10, max_tokens=80)
    traces = [Trace(PA), Trace(PB)]
    worst = 0.0
    for step in range(3):
        cands = p.drafter.propose(traces, 4, gen(step))
        for t, cs, ss in zip(traces, cands, p.scorer.score(traces, cands)):
            for c, s in zip(cs, ss):
                worst = max(worst, max(abs(a - b) for a, b in zip(full_logprobs(p.scorer.lm, t, c), s)))
        p.prm.score(traces, cands)
        traces = [t.extend(cs[0]) for t, cs in zip(traces, cands) if not cs[0].finished] or [Trace(PA)]
    assert cascade._KERNELS["cuda"], "the fused CUDA kernel failed and the eager fallback took over"
    assert worst <= tol


def test_scoring_reuses_the_cache_left_by_the_previous_pass(parts):
    """After scoring, the next step's prefix (a scored candidate) needs no new prefill: the target's next pass
    forwards exactly the new candidates' tokens."""
    lm = parts.scorer.lm
    t0 = Trace(Problem("reuse", "Let x = 4. What is x^2?"))
    c1 = parts.drafter.propose([t0], 3, gen(1))
    parts.scorer.score([t0], c1)
    t1 = t0.extend(next(c for c in c1[0] if not c.finished))
    c2 = parts.drafter.propose([t1], 3, gen(2))
    before = dict(lm.stack.stats)
    parts.scorer.score([t1], c2)
    assert lm.stack.stats["forward_calls"] - before["forward_calls"] == 1  # one pass, no catch-up
    width = max(c.num_tokens for c in c2[0])
    assert lm.stack.stats["forward_tokens"] - before["forward_tokens"] == 3 * width
    # the store keeps only this problem's prefix and the candidates just scored (dead prefixes evicted)
    pids = lm.prompt_ids(t1.problem)
    assert len(lm.stack.store[pids]) == 1 + sum(not c.finished for c in c2[0])


def test_cache_is_bounded_across_problems():
    p = tiny_parts(seed=1, max_step_tokens=3, max_tokens=20, cache_prompts=2)
    for i in range(5):
        p.drafter.propose([Trace(Problem(str(i), f"Problem {i}: add {i} and 1."))], 2, gen(i))
    assert len(p.drafter.lm.stack.store) == 2


# ------------------------------------------------------------------------------------------------------------------
# String-level stops


def gluing_tokenizer():
    """A byte-level BPE trained without the pre-tokenizer's split, so merges glue "\\n\\n" to neighbours."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    words = ["one", "two", "three", "four", "five", "six", "seven"]
    corpus = [f"Step {a} is done.\n\nThe {b} follows.\n\nThen {a} and {b}." for a in words for b in words]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=360, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


@pytest.fixture(scope="module")
def glue():
    return gluing_tokenizer()


def test_the_gluing_tokenizer_merges_the_delimiter_with_neighbours(glue):
    glued = [t for t in glue.get_vocab() if "ĊĊ" in t and not t.endswith("ĊĊ")]
    assert glued, "the test tokenizer should have tokens that carry text after the delimiter"
    assert TokenText(glue, len(glue)).exact


@pytest.mark.parametrize("exact", [True, False])
def test_delimiter_stop_on_hand_built_cases(glue, exact):
    """The stop fires at the first token whose text completes the delimiter; the step text is the decoded text of
    the tokens up to and including it (so it can carry characters past the delimiter)."""
    text = TokenText(glue, len(glue))
    if not exact:
        text.table = None  # the decode fallback must give the same answers
    stopper = StepStop("\n\n", text)

    def run(ids):
        state = stopper.start()
        for k, t in enumerate(ids):
            hit, state = stopper.feed(state, t)
            if hit:
                return k
        return None

    vocab = glue.get_vocab()
    nl, a, b = vocab["Ċ"], vocab["a"], vocab["b"]
    # (1) a glued token: ".\n\nThe" style — the step ends with it and holds the text after the delimiter
    ids = glue("Step two is done.\n\nThe five follows.", add_special_tokens=False)["input_ids"]
    pieces = [glue.convert_tokens_to_string([glue.convert_ids_to_tokens(i)]).encode() for i in ids]
    k = run(ids)
    assert k is not None and k == stop_index(pieces, "\n\n")
    assert "\n\n" in text.text(ids[: k + 1]) and "\n\n" not in text.text(ids[:k])
    step = text.text(ids[: k + 1])
    assert step.startswith("Step two is done.\n\n") and not step.endswith("\n\n")  # carries text past "\n\n"
    assert step + text.text(ids[k + 1 :]) == "Step two is done.\n\nThe five follows."
    # (2) the delimiter split over two tokens: stop at the second newline
    assert run([a, nl, nl, b]) == 2
    # (3) a newline then a token starting with a newline: still the token that completes it
    assert run([a, nl, vocab.get("ĊThe", nl), b]) == 2
    # (4) no delimiter, or a lone newline: no stop
    assert run([a, nl, b, nl, a]) is None
    # (5) a token holding the delimiter twice stops once, at that token
    double = [t for t in vocab if t.count("ĊĊ") >= 2]
    if double:
        assert run([a, vocab[double[0]], b]) == 1


def test_sampled_steps_stop_right_after_the_delimiter(glue):
    """Sampling a random model over the gluing tokenizer: every step that is not cut by the limit or EOS contains
    the delimiter and its last token completes it; none contains it earlier."""
    model = tiny_causal_lm(glue, seed=4, hidden_size=32)
    lm = HFLM(model, glue, chat_template=False)
    sampler = HFSampler(lm, temperature=1.5, delimiter="\n\n", max_step_tokens=24, max_tokens=500)
    stopped = 0
    for seed in range(3):
        out = sampler.propose([Trace(Problem(f"s{seed}", "Step one is done."))], 16, gen(seed))
        for c in out[0]:
            assert c.text == lm.text.text(c.token_ids) == glue.decode(c.token_ids, skip_special_tokens=True)
            assert "\n\n" not in lm.text.text(c.token_ids[:-1])
            if c.finished or c.num_tokens == 24:
                continue
            assert "\n\n" in c.text
            stopped += 1
    assert stopped >= 5


# ------------------------------------------------------------------------------------------------------------------
# Sampling law, RNG design


def test_sampled_tokens_follow_the_tempered_nucleus_law():
    """Inverse-CDF sampling with temperature 0.7 and top-p 0.8: empirical frequencies match the law (TV <= 0.03 with
    20000 draws, seed fixed) and the returned log-probs are the law's."""
    g = gen(0)
    logits = torch.randn(1, 12, generator=g) * 2
    u = torch.rand(20000, generator=g, dtype=torch.float64)
    tok, lp = sample_from_logits(logits.expand(20000, 12).contiguous(), u, 0.7, 0.8)
    p = torch.softmax(logits[0] / 0.7, -1)
    order = p.argsort(descending=True)
    keep = (p[order].cumsum(0) - p[order]) < 0.8
    law = torch.zeros(12)
    law[order[keep]] = p[order[keep]]
    law /= law.sum()
    freq = torch.bincount(tok, minlength=12).double() / 20000
    assert 0.5 * (freq - law.double()).abs().sum() <= 0.03
    assert torch.allclose(lp, law[tok].log(), atol=1e-5)
    assert set(tok.tolist()) <= set(order[keep].tolist())
    greedy, glp = sample_from_logits(logits, u[:1], 0.0, 1.0)
    assert int(greedy) == int(logits.argmax()) and float(glp) == 0.0


def test_batch_and_single_prompt_calls_agree(parts):
    """A prefix's candidates depend on the generator state and the prefix only: a batched call equals
    single-prefix calls made with generators in the same state (tokens equal, log-probs to 1e-5)."""
    both = parts.drafter.propose([Trace(PA), Trace(PB)], 3, gen(7))
    alone_a = parts.drafter.propose([Trace(PA)], 3, gen(7))
    alone_b = parts.drafter.propose([Trace(PB)], 3, gen(7))
    for row, single in zip(both, (alone_a[0], alone_b[0])):
        assert [c.token_ids for c in row] == [c.token_ids for c in single]
        for c, d in zip(row, single):
            assert max(abs(x - y) for x, y in zip(c.logprobs, d.logprobs)) <= 1e-5
    # the scorer and the PRM too
    s_both = parts.scorer.score([Trace(PA), Trace(PB)], both)
    s_b = parts.scorer.score([Trace(PB)], [both[1]])
    assert all(max(abs(x - y) for x, y in zip(u, v)) <= 1e-5 for u, v in zip(s_both[1], s_b[0]))
    r_both = parts.prm.score([Trace(PA), Trace(PB)], both)
    assert r_both[1] == pytest.approx(parts.prm.score([Trace(PB)], [both[1]])[0], abs=1e-6)


def test_repeated_prefixes_in_one_call_get_different_samples(parts):
    """best_of_n passes n copies of the same prefix with n=1: each copy needs its own random stream."""
    out = parts.drafter.propose([Trace(PA)] * 4, 1, gen(3))
    assert len({row[0].token_ids for row in out}) > 1


def test_limits_and_end_of_sequence():
    p = tiny_parts(seed=2, max_step_tokens=5, max_tokens=12)
    lm = p.target.lm
    t = Trace(PA)
    for c in p.target.propose([t], 8, gen(0))[0]:
        assert 1 <= c.num_tokens <= 5
        if c.finished:  # only end-of-sequence finishes a short step here
            assert c.token_ids[-1] in lm.eos_ids
        else:
            assert c.num_tokens == 5 or "\n\n" in c.text
    assert all(c.finished and c.num_tokens <= 12 for c in p.target.propose([t], 6, gen(1), to_end=True)[0])
    # a response that reaches max_tokens is finished whatever stopped the step
    ids = tuple(lm.tokenizer("Let x = 4. Then x^2 = 16", add_special_tokens=False)["input_ids"][:10])
    long = t.extend(Candidate(ids, lm.text.text(ids), (-1.0,) * len(ids), False))
    assert len(long.token_ids) == 10
    assert all(c.finished and c.num_tokens <= 2 for c in p.target.propose([long], 4, gen(2))[0])
    # end-of-sequence is kept in the tokens (the target scores it) and dropped from the text
    eos = min(lm.eos_ids)
    c = Candidate((5, 6, eos), lm.text.text((5, 6, eos)), (-1.0, -1.0, -1.0), True)
    assert c.text == lm.text.text((5, 6)) and len(p.scorer.score([t], [[c]])[0][0]) == 3


def test_ignore_eos_never_samples_it():
    p = tiny_parts(seed=0, max_step_tokens=30, max_tokens=60)
    sampler = HFSampler(p.target.lm, temperature=3.0, max_step_tokens=30, max_tokens=60, ignore_eos=True)
    out = sampler.propose([Trace(PA)], 8, gen(0))
    assert all(c.num_tokens == 30 or "\n\n" in c.text for c in out[0])
    assert not any(t in p.target.lm.eos_ids for c in out[0] for t in c.token_ids)


# ------------------------------------------------------------------------------------------------------------------
# Vocabularies: padded rows, different tokenizers


def test_padded_vocabulary_scores_identically():
    """A target with 64 extra embedding rows (Qwen2.5-7B over 1.5B's tokenizer), its shared rows copied from an
    unpadded model, gives the same log-probs and the same samples; the padding rows do change a full softmax."""
    tok = tiny_tokenizer()
    small = tiny_causal_lm(tok, seed=2)
    padded = tiny_causal_lm(tok, seed=5, vocab_pad=64)
    state = padded.state_dict()
    for k, v in small.state_dict().items():
        if v.shape == state[k].shape:
            state[k] = v.clone()
        else:
            state[k][: v.shape[0]] = v
    padded.load_state_dict(state)
    assert padded.get_output_embeddings().weight.shape[0] == len(tok) + 64
    lm_a, lm_b = HFLM(small, tok), HFLM(padded, tok)
    assert lm_a.vocab == lm_b.vocab == len(tok)
    s_a, s_b = (
        HFSampler(lm_a, temperature=1.0, max_step_tokens=8),
        HFSampler(lm_b, temperature=1.0, max_step_tokens=8),
    )
    ca = s_a.propose([Trace(PA), Trace(PB)], 3, gen(1))
    cb = s_b.propose([Trace(PA), Trace(PB)], 3, gen(1))
    assert [[c.token_ids for c in r] for r in ca] == [[c.token_ids for c in r] for r in cb]
    sa = HFScorer(lm_a).score([Trace(PA), Trace(PB)], ca)
    sb = HFScorer(lm_b).score([Trace(PA), Trace(PB)], ca)
    diff = max(abs(x - y) for ra, rb in zip(sa, sb) for u, v in zip(ra, rb) for x, y in zip(u, v))
    assert diff <= 1e-5
    with torch.no_grad():
        full = padded(input_ids=torch.tensor([lm_b.key(Trace(PA))[1]])).logits[0, -1]
    assert (
        torch.log_softmax(full, -1)[: len(tok)] - torch.log_softmax(full[: len(tok)], -1)
    ).abs().max() > 1e-3


def test_different_tokenizers_fall_back_to_retokenizing():
    """Draft and target with different tokenizers: the scorer returns the target's log-probs of the re-tokenized
    step text (the documented approximation), equal to a plain recompute over the target's tokens."""
    cfg = ModelsConfig(
        draft=ModelSpec(name="tiny", device="cpu", temperature=1.0, tiny=TinySpec(hidden_size=32, seed=1)),
        target=ModelSpec(
            name="tiny",
            device="cpu",
            temperature=1.0,
            tiny=TinySpec(hidden_size=32, seed=2, tokenizer_vocab=420),
        ),
        prm=PrmSpec(name="tiny", device="cpu", tiny=TinySpec(hidden_size=32, seed=3)),
        max_step_tokens=8,
        max_tokens=40,
    )
    p = build_parts(cfg)
    assert not p.scorer.lm.native and not p.drafter.lm.native
    t = Trace(PA)
    cands = p.drafter.propose([t], 3, gen(0))
    scored = p.scorer.score([t], cands)
    lm = p.scorer.lm
    for c, s in zip(cands[0], scored[0]):
        ids = lm.encode_step(c.text)
        if c.token_ids[-1] in p.drafter.lm.eos_ids:
            ids = (*ids, min(lm.eos_ids))
        assert len(s) == len(ids)
        ref = full_logprobs(lm, t, Candidate(ids, c.text, (0.0,) * len(ids), c.finished))
        assert max(abs(a - b) for a, b in zip(ref, s)) <= 1e-4
    # one step deeper: the target's prefix is the re-tokenized text of the kept step
    t2 = t.extend(cands[0][0])
    if not t2.finished:
        c2 = p.drafter.propose([t2], 2, gen(1))
        for c, s in zip(c2[0], p.scorer.score([t2], c2)[0]):
            ref = full_logprobs(lm, t2, Candidate(lm.encode_step(c.text), c.text, (), c.finished))
            assert len(s) >= len(ref) and max(abs(a - b) for a, b in zip(ref, s)) <= 1e-4


# ------------------------------------------------------------------------------------------------------------------
# Config and input errors


def test_config_validation_names_the_key():
    with pytest.raises(ValueError, match="hf.draft.top_p"):
        ModelsConfig(draft=ModelSpec(top_p=0.0)).validate()
    with pytest.raises(ValueError, match="hf.prm.aggregate"):
        ModelsConfig(prm=PrmSpec(aggregate="mean")).validate()
    with pytest.raises(ValueError, match="hf.target.device"):
        ModelsConfig(target=ModelSpec(device="tpu")).validate()
    with pytest.raises(ValueError, match="hf.draft.tiny.hidden_size"):
        ModelsConfig(draft=ModelSpec(tiny=TinySpec(hidden_size=30, num_attention_heads=4))).validate()
    with pytest.raises(ValueError, match="hf.max_step_tokens"):
        ModelsConfig(max_step_tokens=0).validate()
    ModelsConfig().validate()
    for cls in (ModelsConfig, ModelSpec, PrmSpec, TinySpec):
        assert all(f.metadata.get("help") for f in dataclasses.fields(cls)), cls.__name__


def test_missing_model_files_are_one_line_errors(tmp_path):
    with pytest.raises(SpecsError, match="GGUF file not found"):
        build_parts(ModelsConfig(draft=ModelSpec(name=str(tmp_path / "missing.gguf"))))
    with pytest.raises(SpecsError, match="model path not found"):
        build_parts(ModelsConfig(target=ModelSpec(name=str(tmp_path / "no" / "such" / "dir"))))
    with pytest.raises(SpecsError, match="top_p"):
        build_parts(ModelsConfig(draft=ModelSpec(top_p=2.0)))


def test_log_probs_are_finite_and_non_positive(parts):
    out = parts.drafter.propose([Trace(PA)], 4, gen(11))
    assert all(math.isfinite(x) and x <= 0 for c in out[0] for x in c.logprobs)


def test_the_suffix_mask_is_built_once_per_forward_and_shared_by_every_layer(parts, monkeypatch):
    """Scoring candidates runs several query positions per row, so the suffix is masked: every layer of one forward
    gets the very same mask tensor (built once, not expanded again per layer)."""
    from specs_rl.hf import cascade

    seen: list[
        torch.Tensor
    ] = []  # the tensors themselves: a freed tensor's id could be reused by the next one
    real = cascade.attention_lse

    def spy(q, k, v, mask, scale):
        if mask is not None:
            seen.append(mask)
        return real(q, k, v, mask, scale)

    monkeypatch.setattr(cascade, "attention_lse", spy)
    traces = [Trace(PA), Trace(PB)]
    cands = parts.drafter.propose(traces, 3, gen(0))
    seen.clear()
    parts.scorer.score(traces, cands)
    layers = parts.scorer.lm.stack.num_layers
    assert len(seen) >= layers and len({id(m) for m in seen}) <= len(seen) // layers
