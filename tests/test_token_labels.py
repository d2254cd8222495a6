"""Token-labelled PRMs (``prefix_min``): the labels, the weighted loss and step metrics of the trainer, and the
inference reading (cached, step after step) equal to a plain forward."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

from specs_rl import toymath
from specs_rl.errors import SpecsError
from specs_rl.hf.load import load_reward_model, tiny_tokenizer
from specs_rl.hf.prm import HFRewardModel
from specs_rl.models import PrmSpec, prm_format
from specs_rl.models.prm_format import (
    IGNORE_INDEX,
    PrmFormat,
    encode_steps,
    prefix_min_rewards,
    token_labels,
)
from specs_rl.tiny import make_tokenizer, tiny_token_classifier
from specs_rl.training.prm_data import validate_stepwise
from specs_rl.types import Candidate, Problem, Trace
from tests.test_train_prm import COMMON

PREFIX_MIN = PrmFormat(step_reward="prefix_min")
PROBLEM = Problem("p", "What is 2 + 3?\n\nPlease reason step by step.", meta={"problem": "What is 2 + 3?"})
STEPS = ["Step 1: add 2 and 3.\n\n", "So x = 5.\n\n", "The answer is \\boxed{5}"]


def test_doctests() -> None:
    assert doctest.testmod(prm_format).failed == 0


def cand(tok, text: str, finished: bool = False) -> Candidate:
    ids = tuple(tok(text, add_special_tokens=False)["input_ids"])
    return Candidate(ids, text, (-1.0,) * len(ids), finished)


def plain_prefix_min(model, tok, prompt: str, steps) -> list[float]:
    """``prefix_min`` step rewards from one plain forward (no cache)."""
    ids, ends = encode_steps(tok, prompt, steps, "\n\n")
    with torch.no_grad():
        p = model(input_ids=torch.tensor([ids])).logits[0].float().softmax(-1)[:, 1].tolist()
    return prefix_min_rewards(p, len(encode_steps(tok, prompt, [], "\n\n")[0]), ends)


@pytest.mark.parametrize("aggregate", ["last", "min"])
def test_cached_prefix_min_rewards_equal_a_plain_forward(aggregate):
    tok = tiny_tokenizer()
    model = tiny_token_classifier(tok, seed=2)
    prm = HFRewardModel(model, tok, PREFIX_MIN, aggregate=aggregate)
    t = Trace(PROBLEM)
    for step in STEPS:
        options = [cand(tok, step), cand(tok, "x = 7 * 6.\n\n"), cand(tok, "Hmm.", finished=True)]
        got = prm.score([t], [options])[0]
        for c, r in zip(options, got):
            ref = plain_prefix_min(model, tok, "What is 2 + 3?", [s.text for s in t.steps] + [c.text])
            assert r == pytest.approx(ref[-1] if aggregate == "last" else min(ref), abs=1e-5)
        t = t.extend(options[0])
    # a fresh model scoring a 2-step prefix from nothing reads the prefix's steps by catching up
    fresh = HFRewardModel(model, tok, PREFIX_MIN)
    prefix = Trace(PROBLEM).extend(cand(tok, STEPS[0])).extend(cand(tok, "x = 9.\n\n"))
    got = fresh.score([prefix], [[cand(tok, STEPS[2])]])[0][0]
    ref = plain_prefix_min(model, tok, "What is 2 + 3?", [STEPS[0], "x = 9.\n\n", STEPS[2]])
    assert got == pytest.approx(ref[-1], abs=1e-5)
    assert ref == sorted(ref, reverse=True)  # a running minimum never rises


def test_token_labels_place_the_error_where_the_step_leaves_the_reference():
    tok = make_tokenizer()
    rng = np.random.default_rng(0)
    toys = [toymath.sample_problem(rng) for _ in range(40)]
    rows = toymath.prm_rows([toymath.to_problem(p, f"p{i}") for i, p in enumerate(toys)], rng, error_rate=0.7)
    seen_wrong = 0
    for p, row in zip(toys, rows):
        validate_stepwise(row, 0, "toy")  # the generator's rows carry valid error offsets
        ids, y, ends = token_labels(tok, row["prompt"], row["completions"], row["labels"], row["error_chars"])
        assert (ids, ends) == tuple(encode_steps(tok, row["prompt"], row["completions"]))
        labelled = [v for v in y if v != IGNORE_INDEX]
        if all(row["labels"]):
            assert labelled and set(labelled) == {1}
            continue
        seen_wrong += 1
        assert labelled.count(0) == 1 and labelled[-1] == 0  # one 0, after every 1, nothing labelled after it
        k = row["labels"].index(False)
        zero = y.index(0)
        start = prm_format.step_starts(len(encode_steps(tok, row["prompt"], [])[0]), ends)[k]
        # the tokens before the 0 spell the reference step's prefix up to the first wrong character
        written = tok.decode(ids[start:zero])
        assert written == p.steps()[k][: row["error_chars"][k]]
    assert seen_wrong > 10


def test_token_labels_without_offsets_label_the_wrong_steps_separator():
    tok = make_tokenizer()
    ids, y, ends = token_labels(tok, "Q", ["1+1=2", "2+2=5", "5+1=6"], [True, False, False])
    assert y[ends[1]] == 0 and y[ends[2]] == IGNORE_INDEX
    assert all(v == IGNORE_INDEX for v in y[ends[0] + 1 : ends[1]])
    assert all(v == 1 for v in y[len(encode_steps(tok, "Q", [])[0]) : ends[0] + 1])


@pytest.mark.parametrize(
    "error_chars, message",
    [
        ([None], "one entry per step"),
        ([2, None], "labelled correct"),
        ([None, 9], "outside step 1"),
        ([None, "x"], "integer offset"),
    ],
)
def test_bad_error_chars_are_one_line_errors(error_chars, message):
    row = {
        "prompt": "Q",
        "completions": ["1+1=2", "2+2=5"],
        "labels": [True, False],
        "error_chars": error_chars,
    }
    with pytest.raises(SpecsError, match=message):
        validate_stepwise(row, 3, "mine")


def test_bad_step_reward_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="step_reward must be one of"):
        PrmFormat(step_reward="mean")
    (tmp_path / "prm_config.json").write_text('{"step_reward": "mean"}')
    with pytest.raises(ValueError, match="prm_config.json: step_reward"):
        PrmFormat.load(tmp_path)
    with pytest.raises(ValueError, match="hf.prm.step_reward"):
        PrmSpec(step_reward="mean").validate()


def test_prm_config_rejects_bad_token_label_settings(tmp_path):
    from specs_rl.training.prm import PRMConfig

    with pytest.raises(ValueError, match="error_label_weight must be > 0"):
        PRMConfig(output_dir=str(tmp_path), error_label_weight=0.0, use_cpu=True)
    with pytest.raises(ValueError, match="cannot be combined"):
        PRMConfig(output_dir=str(tmp_path), token_labels=True, train_on_last_step_only=True, use_cpu=True)


def test_freeze_layers_trains_only_the_layers_above_and_the_head(tmp_path):
    from specs_rl.training.prm import PRMConfig, build_prm_trainer

    tok = make_tokenizer()
    rng = np.random.default_rng(2)
    rows = toymath.prm_rows(
        [toymath.to_problem(toymath.sample_problem(rng), f"p{i}") for i in range(24)], rng
    )
    model = tiny_token_classifier(tok, seed=0).train()
    depth = model.config.num_hidden_layers
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = PRMConfig(output_dir=str(tmp_path / "run"), **{**COMMON, "freeze_layers": depth - 1})
    trainer = build_prm_trainer(model, args, rows, tok)
    trainer.train()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved, "nothing trained"
    top = f"layers.{depth - 1}."
    assert all(top in n or n.startswith(("score.", "model.norm.")) for n in moved), sorted(moved)
    assert any(n.startswith("score.") for n in moved) and any(top in n for n in moved)
    assert not model.get_input_embeddings().weight.requires_grad


def test_bad_freeze_layers_is_a_one_line_error(tmp_path):
    from peft import LoraConfig

    from specs_rl.training.prm import PRMConfig, build_prm_trainer

    tok = make_tokenizer()
    rng = np.random.default_rng(3)
    rows = toymath.prm_rows([toymath.to_problem(toymath.sample_problem(rng), "p")], rng)
    with pytest.raises(ValueError, match="freeze_layers must be >= 0"):
        PRMConfig(output_dir=str(tmp_path), freeze_layers=-1, use_cpu=True)
    args = PRMConfig(output_dir=str(tmp_path), **{**COMMON, "freeze_layers": 99})
    with pytest.raises(SpecsError, match="freeze_layers=99 is more than the model's"):
        build_prm_trainer(tiny_token_classifier(tok, seed=0), args, rows, tok)
    args = PRMConfig(output_dir=str(tmp_path), **{**COMMON, "freeze_layers": 1})
    with pytest.raises(SpecsError, match="cannot be combined"):
        build_prm_trainer(
            tiny_token_classifier(tok, seed=0), args, rows, tok, peft_config=LoraConfig(task_type="TOKEN_CLS")
        )


def test_weighted_loss_is_the_weighted_token_cross_entropy():
    from specs_rl.training.prm import weighted_loss

    logits = torch.randn(2, 5, 2)
    labels = torch.tensor([[IGNORE_INDEX, 1, 1, 0, IGNORE_INDEX], [1, 0, IGNORE_INDEX, IGNORE_INDEX, 1]])
    got = weighted_loss(4.0)({"logits": logits}, labels)
    mask = labels != IGNORE_INDEX
    nll = -logits.log_softmax(-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    w = torch.where(labels == 0, 4.0, 1.0)
    assert float(got) == pytest.approx(float((nll * w)[mask].sum() / w[mask].sum()), rel=1e-5)


def test_token_label_training_round_trips_to_the_inference_reading(tmp_path):
    """Train 3 steps with token labels and a weighted loss; the held-out metrics read steps as prefix_min; the saved
    checkpoint's prm_config.json makes the backend read it the way score_steps does."""
    from specs_rl.training.models import save_trained
    from specs_rl.training.prm import PRMConfig, build_prm_trainer, save_prm_format, score_steps

    tok = make_tokenizer()
    rng = np.random.default_rng(1)
    problems = [toymath.to_problem(toymath.sample_problem(rng), f"p{i}") for i in range(40)]
    rows = toymath.prm_rows(problems, rng)
    rows[0] = {k: v for k, v in rows[0].items() if k != "error_chars"}  # rows without offsets mix in
    args = PRMConfig(
        output_dir=str(tmp_path / "run"), **{**COMMON, "token_labels": True, "error_label_weight": 5.0}
    )
    model = tiny_token_classifier(tok, seed=0).train()
    trainer = build_prm_trainer(model, args, rows[:32], tok, eval_dataset=rows[32:])
    assert set(trainer.train_dataset.column_names) == {"input_ids", "labels"}
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(np.isfinite(losses))
    metrics = trainer.evaluate()
    live = trainer.model.eval()
    per_p = [np.asarray(score_steps(live, tok, r["prompt"], r["completions"], PREFIX_MIN)) for r in rows[32:]]
    from specs_rl.training.prm import prm_metrics

    want = prm_metrics(per_p, [np.asarray(r["labels"], dtype=int) for r in rows[32:]])
    assert metrics["eval_step_accuracy"] == pytest.approx(want["step_accuracy"])
    assert metrics["eval_num_steps"] == want["num_steps"]

    out = tmp_path / "ckpt"
    save_trained(trainer, out, tok, save_merged=True)
    save_prm_format(out, "\n\n", args.step_reward)
    loaded, ltok, fmt = load_reward_model(PrmSpec(name=str(out), device="cpu", dtype="float32"))
    assert fmt.step_reward == "prefix_min"
    rm = HFRewardModel(loaded, ltok, fmt)
    row = rows[33]
    want_steps = score_steps(live, tok, row["prompt"], row["completions"], fmt)
    problem = Problem(id="p", prompt=row["prompt"])
    for k in range(len(row["completions"])):
        prefix = Trace(problem, tuple(Candidate((), s, (), False) for s in row["completions"][:k]))
        got = rm.score([prefix], [[Candidate((), row["completions"][k], (), False)]])[0][0]
        assert got == pytest.approx(want_steps[k], abs=1e-5)
