"""Process reward models of the Hugging Face backend: the shared step encoding, cached rewards, the conventions."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from specs_rl.hf import tiny_parts
from specs_rl.hf.load import load_reward_model, tiny_tokenizer
from specs_rl.hf.prm import HFRewardModel
from specs_rl.models import PrmSpec, TinySpec
from specs_rl.models.prm_format import PrmFormat, encode_steps
from specs_rl.tiny import make_tokenizer, tiny_seq_classifier, tiny_token_classifier
from specs_rl.types import Candidate, Problem, Trace

PROBLEM = Problem("p", "What is 2 + 3?\n\nPlease reason step by step.", meta={"problem": "What is 2 + 3?"})
STEPS = ["Step 1: add 2 and 3.\n\n", "So x = 5.\n\n", "The answer is \\boxed{5}"]


def cand(tok, text: str, finished: bool = False) -> Candidate:
    ids = tuple(tok(text, add_special_tokens=False)["input_ids"])
    return Candidate(ids, text, (-1.0,) * len(ids), finished)


def trace_of(tok, steps) -> Trace:
    t = Trace(PROBLEM)
    for s in steps:
        t = t.extend(cand(tok, s))
    return t


def reference(model, tok, prompt: str, steps, sep: str, positive: int = 1) -> list[float]:
    """Step rewards from one plain forward over ``encode_steps`` (no cache)."""
    ids, ends = encode_steps(tok, prompt, steps, sep)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    if logits.shape[-1] == 1:
        return torch.sigmoid(logits[ends, 0]).tolist()
    return torch.softmax(logits[ends], -1)[:, positive].tolist()


def test_the_encoding_is_encode_steps():
    tok = tiny_tokenizer()
    prm = HFRewardModel(tiny_token_classifier(tok, seed=1), tok)
    pids, ids, ends = prm.encode(trace_of(tok, STEPS))
    ref_ids, ref_ends = encode_steps(tok, "What is 2 + 3?", STEPS, "\n\n")
    assert list(ids) == ref_ids and ends == ref_ends
    assert list(pids) == encode_steps(tok, "What is 2 + 3?", [], "\n\n")[0]
    prm_prompt = HFRewardModel(tiny_token_classifier(tok, seed=1), tok, prompt_field="prompt")
    assert (
        list(prm_prompt.encode(trace_of(tok, STEPS))[1])
        == encode_steps(tok, PROBLEM.prompt, STEPS, "\n\n")[0]
    )


@pytest.mark.parametrize("aggregate", ["last", "min", "prod"])
def test_cached_rewards_equal_a_full_recompute(aggregate):
    """Scoring step after step (prefix KV and prefix step rewards reused) gives the plain forward's rewards."""
    tok = tiny_tokenizer()
    model = tiny_token_classifier(tok, seed=2)
    prm = HFRewardModel(model, tok, aggregate=aggregate)
    agg = {"last": lambda r: r[-1], "min": min, "prod": math.prod}[aggregate]
    t = Trace(PROBLEM)
    for k, step in enumerate(STEPS):
        options = [cand(tok, step), cand(tok, "x = 7 * 6.\n\n"), cand(tok, "Hmm.", finished=True)]
        got = prm.score([t], [options])[0]
        for c, r in zip(options, got):
            ref = reference(model, tok, "What is 2 + 3?", [s.text for s in t.steps] + [c.text], "\n\n")
            assert r == pytest.approx(agg(ref), abs=1e-5)
            assert 0.0 <= r <= 1.0
        before = prm.stack.stats["forward_calls"]
        assert prm.score([t], [options])[0] == pytest.approx(got, abs=1e-6)  # deterministic, prefix cached:
        assert prm.stack.stats["forward_calls"] - before == 1  # one pass over the candidates only
        t = t.extend(options[0])
        assert k == len(t.steps) - 1


def test_qwen_math_prm_step_tag_convention():
    """Qwen2.5-Math-PRM: chat-formatted prompt with a system message, steps separated by the special token
    <extra_0>, reward = softmax(logits)[1] at each tag. Same ids and rewards as the model card's recipe
    (the whole conversation as one string, rewards read at the tag tokens)."""
    tok = make_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<extra_0>"]})
    model = tiny_token_classifier(tok, seed=3)
    system = "Please reason step by step, and put your final answer within \\boxed{}."
    prm = HFRewardModel(
        model, tok, PrmFormat(step_separator="<extra_0>"), chat=True, system_prompt=system, aggregate="min"
    )
    steps = ["Step 1: add 2 and 3.", "So the answer is \\boxed{5}."]
    t = Trace(PROBLEM).extend(cand(tok, steps[0] + "\n\n"))
    got = prm.score([t], [[cand(tok, steps[1])]])[0][0]
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"},
    ]
    conversation = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    ids = tok(conversation, add_special_tokens=False)["input_ids"]
    tag = tok.convert_tokens_to_ids("<extra_0>")
    ends = [i for i, x in enumerate(ids) if x == tag]
    assert len(ends) == 2
    ours = prm.encode(t.extend(cand(tok, steps[1])))[1]
    assert list(ours) == ids[: len(ours)] and ours[-1] == tag
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=torch.tensor([ids])).logits[0, ends].float(), -1)[:, 1]
    assert got == pytest.approx(float(probs.min()), abs=1e-5)


def test_sequence_classification_reward_is_the_sigmoid_at_the_last_token():
    tok = tiny_tokenizer()
    model = tiny_seq_classifier(tok, seed=4)
    rm = HFRewardModel(model, tok, PrmFormat(kind="sequence_classification"))
    t = trace_of(tok, STEPS[:1])
    c = cand(tok, STEPS[1])
    got = rm.score([t], [[c]])[0][0]
    ids, _ = encode_steps(tok, "What is 2 + 3?", STEPS[:2], "\n\n")
    with torch.no_grad():
        score = model(input_ids=torch.tensor([ids])).logits[0, 0]
    assert got == pytest.approx(float(torch.sigmoid(score)), abs=1e-5)


def test_prm_config_json_sets_the_format(tmp_path):
    """A checkpoint directory with prm_config.json (as the project's PRM trainer writes it) is read that way."""
    tok = tiny_tokenizer()
    model = tiny_token_classifier(tok, seed=5, num_labels=3)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    PrmFormat(step_separator="\n", positive_label=2).save(tmp_path)
    loaded, ltok, fmt = load_reward_model(PrmSpec(name=str(tmp_path), device="cpu"))
    assert fmt == PrmFormat(kind="token_classification", step_separator="\n", positive_label=2)
    prm = HFRewardModel(loaded, ltok, fmt)
    t = trace_of(tok, ["a = 1\n"])
    got = prm.score([t], [[cand(tok, "b = 2\n")]])[0][0]
    ref = reference(model, tok, "What is 2 + 3?", ["a = 1\n", "b = 2\n"], "\n", positive=2)
    assert got == pytest.approx(ref[-1], abs=1e-5)
    # a spec override wins over the file
    _, _, fmt2 = load_reward_model(
        PrmSpec(name=str(tmp_path), device="cpu", positive_label=1, tiny=TinySpec())
    )
    assert fmt2.positive_label == 1 and fmt2.step_separator == "\n"


def test_target_scoring_and_prm_scoring_are_thread_safe():
    """The search runs target scoring and PRM scoring in two threads: results equal the sequential ones."""
    parts = tiny_parts(seed=6, max_step_tokens=6, max_tokens=60)
    prefixes = [Trace(Problem("a", "What is 2 + 3?")), Trace(Problem("b", "Compute 7 * 6."))]
    cands = parts.drafter.propose(prefixes, 4, torch.Generator().manual_seed(0))
    seq = (parts.scorer.score(prefixes, cands), parts.prm.score(prefixes, cands))
    with ThreadPoolExecutor(max_workers=2) as pool:
        for _ in range(5):
            f_t = pool.submit(parts.scorer.score, prefixes, cands)
            f_r = pool.submit(parts.prm.score, prefixes, cands)
            lp, rw = f_t.result(), f_r.result()
            flat = [v for row in lp for x in row for v in x]
            assert flat == pytest.approx([v for row in seq[0] for x in row for v in x], abs=1e-6)
            assert [v for row in rw for v in row] == pytest.approx(
                [v for row in seq[1] for v in row], abs=1e-6
            )


def test_models_that_bypass_the_attention_interface_fall_back_to_plain_recompute(monkeypatch):
    """A model whose attention does not go through transformers' AttentionInterface (some remote-code PRMs) is
    detected at load; rewards are then recomputed from scratch each call and still equal the reference."""
    import specs_rl.hf.engine as engine
    from specs_rl.hf.sampler import HFLM, HFSampler

    monkeypatch.setattr(engine, "use_cascade", lambda model: None)  # the model keeps plain SDPA
    tok = tiny_tokenizer()
    model = tiny_token_classifier(tok, seed=7)
    model.set_attn_implementation("sdpa")
    prm = HFRewardModel(model, tok, aggregate="min")
    assert prm.stack.cascade is False
    t = trace_of(tok, STEPS[:2])
    got = prm.score([t, t], [[cand(tok, STEPS[2])], [cand(tok, "x = 1.")]])
    for c, r in zip([STEPS[2], "x = 1."], [got[0][0], got[1][0]]):
        ref = reference(model, tok, "What is 2 + 3?", [*STEPS[:2], c], "\n\n")
        assert r == pytest.approx(min(ref), abs=1e-5)
    from specs_rl.tiny import tiny_causal_lm

    lm_model = tiny_causal_lm(tok, seed=7)
    lm_model.set_attn_implementation("sdpa")
    with pytest.raises(ValueError, match="AttentionInterface"):
        HFSampler(HFLM(lm_model, tok))
