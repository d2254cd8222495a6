"""Draft distillation: vocabulary alignment, the sampler and the acceptance proxy, TRL's SFT and Distillation
trainers on tiny models (a padded-vocabulary target), and the entry point in both modes."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from specs_rl.errors import SpecsError
from specs_rl.tiny import make_tokenizer, tiny_causal_lm
from specs_rl.training import distill

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "train"


PROMPTS = [
    [{"role": "user", "content": "What is 2 + 3?"}],
    [{"role": "user", "content": "Compute 7 * 6."}],
    [{"role": "user", "content": "Let x = 4. Then x^2 = ?"}],
]


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def pair(tok):
    """A draft with V = len(tok) rows and a wider, peaked target with 8 padded rows (as 1.5B vs 7B)."""
    draft = tiny_causal_lm(tok, seed=1)
    target = tiny_causal_lm(tok, "qwen2", seed=2, vocab_pad=8, hidden_size=96, initializer_range=0.3)
    return draft, target


def test_padded_vocab_alignment(tok, pair) -> None:
    draft, target = pair
    assert distill.vocab_rows(draft) == len(tok) and distill.vocab_rows(target) == len(tok) + 8
    size = distill.shared_vocab_size(tok, tok, distill.vocab_rows(draft), distill.vocab_rows(target))
    assert size == len(tok)
    x = torch.tensor([distill.prompt_ids(tok, PROMPTS[0])])
    full = target(x).logits  # [1, L, V + 8]
    d, t = distill.align_logits(draft(x).logits, full, size)
    assert d.shape == t.shape == (1, x.shape[1], size)
    cut = distill.truncate_vocab(copy.deepcopy(target), size)
    assert cut.config.vocab_size == size
    assert torch.allclose(cut(x).logits, full[..., :size], atol=1e-6)
    with pytest.raises(ValueError, match="cannot grow"):
        distill.truncate_vocab(copy.deepcopy(draft), size + 1)


def test_different_tokenizers_are_a_clear_error(tok) -> None:
    other = make_tokenizer(vocab_size=280)
    with pytest.raises(SpecsError, match="tokenizers differ"):
        distill.shared_vocab_size(tok, other, len(tok), len(other))
    with pytest.raises(SpecsError, match="fewer output rows"):
        distill.shared_vocab_size(tok, tok, len(tok) - 1, len(tok))


def test_sampler_logprobs_equal_teacher_forced_logprobs_and_proxy_is_seeded(tok, pair) -> None:
    draft, target = pair
    ids = [distill.prompt_ids(tok, p) for p in PROMPTS]
    assert len({len(i) for i in ids}) > 1  # different lengths: left padding is exercised
    samples = distill.sample(
        draft,
        ids,
        max_new_tokens=10,
        generator=torch.Generator().manual_seed(0),
        vocab_size=len(tok),
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        batch_size=2,
    )
    forced = distill.token_logprobs(
        draft, ids, [s.token_ids for s in samples], vocab_size=len(tok), pad_token_id=tok.pad_token_id
    )
    for s, f in zip(samples, forced):
        assert 1 <= len(s.token_ids) <= 10 and max(s.token_ids) < len(tok)
        assert torch.allclose(torch.tensor(s.logprobs), f, atol=1e-5)

    def proxy(seed: int) -> dict:
        return distill.acceptance_proxy(
            draft, target, tok, PROMPTS, max_new_tokens=8, generator=torch.Generator().manual_seed(seed)
        )

    a, b = proxy(0), proxy(0)
    assert a == b and a["tokens"] > 0 and a["samples"] == 3
    assert a["acceptance_proxy"] < 0 and a["log_ratio"] == pytest.approx(
        a["acceptance_proxy"] - a["draft_logprob"]
    )
    # the target scored against itself: the proxy is its own mean log-prob and the log-ratio is 0
    self_proxy = distill.acceptance_proxy(
        target, target, tok, PROMPTS, max_new_tokens=8, generator=torch.Generator().manual_seed(0)
    )
    assert self_proxy["log_ratio"] == pytest.approx(0.0, abs=1e-5)


COMMON = dict(
    max_steps=3,
    per_device_train_batch_size=2,
    learning_rate=1e-3,
    logging_steps=1,
    save_strategy="no",
    use_cpu=True,
    report_to="none",
    disable_tqdm=True,
    bf16=False,
    gradient_checkpointing=False,
)


def _check_trained(trainer) -> None:
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    after = dict(trainer.model.named_parameters())
    same = [n for n, p in before.items() if torch.equal(p, after[n].detach())]
    assert before and not same, f"unchanged: {same}"


def test_sft_trainer_changes_every_parameter(tok, tmp_path) -> None:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    ds = Dataset.from_list(
        [
            {"prompt": p, "completion": [{"role": "assistant", "content": "Step 1: 5.\n\nThe answer is 5."}]}
            for p in PROMPTS
        ]
    )
    model = tiny_causal_lm(tok, seed=1).train()
    args = SFTConfig(output_dir=str(tmp_path), max_length=64, **COMMON)
    _check_trained(SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok))


def test_distillation_trainer_with_a_padded_target_changes_every_parameter(tok, pair, tmp_path) -> None:
    from datasets import Dataset
    from trl import DistillationConfig, DistillationTrainer

    student = tiny_causal_lm(tok, seed=1).train()
    teacher = copy.deepcopy(pair[1])
    size = distill.shared_vocab_size(tok, tok, distill.vocab_rows(student), distill.vocab_rows(teacher))
    args = DistillationConfig(output_dir=str(tmp_path), max_completion_length=8, **COMMON)
    ds = Dataset.from_list([{"prompt": p} for p in PROMPTS * 2])
    with pytest.raises(ValueError, match="vocab_size"):  # TRL compares whole heads: unaligned, it refuses
        DistillationTrainer(
            model=student, teacher_model=teacher, args=args, train_dataset=ds, processing_class=tok
        )
    distill.truncate_vocab(teacher, size)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=ds, processing_class=tok
    )
    _check_trained(trainer)


def test_draft_entry_point_sft_raises_the_proxy_and_logs_it(tmp_path, monkeypatch) -> None:
    from specs_rl.tracking import find_offline_runs, read_offline_run
    from train.draft import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    out = tmp_path / "sft"
    assert main(["--config", str(CONFIGS / "draft_tiny.yaml"), f"output_dir={out}"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["mode"] == "sft" and m["train_prompts"] == 32 and m["saved"] == "full"
    # The draft learns the peaked target's habits: its samples become likelier under the target.
    assert m["acceptance_proxy_after"] > m["acceptance_proxy_before"] + 0.1
    assert m["proxy_before"]["samples"] == 8 and 8 <= m["proxy_before"]["tokens"] <= 8 * 16
    run = read_offline_run(find_offline_runs(tmp_path / "wb")[0])
    losses = [h["train/loss"] for h in run["history"] if "train/loss" in h]
    assert len(losses) == 8
    logged = [h for h in run["history"] if "train/acceptance_proxy_after" in h]
    assert logged and logged[0]["train/acceptance_proxy_after"] == pytest.approx(m["acceptance_proxy_after"])
    assert run["config"]["DraftScriptArguments"]["mode"] == "sft"


def test_draft_entry_point_onpolicy_lora_saves_merged_weights(tok, tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    from train.draft import main

    out = tmp_path / "onpolicy"
    argv = [
        "--config",
        str(CONFIGS / "draft_tiny.yaml"),
        f"output_dir={out}",
        "mode=onpolicy",
        "report_to=none",
    ]
    assert main([*argv, "use_peft=true", "lora_r=4", "max_steps=3"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["mode"] == "onpolicy" and m["saved"] == "merged"
    assert all(torch.isfinite(torch.tensor([m["acceptance_proxy_before"], m["acceptance_proxy_after"]])))
    assert not (out / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert merged.config.vocab_size == len(tok)  # the draft keeps its own head; only the target was cut
    start = tiny_causal_lm(tok, seed=1)  # the draft before training (tiny:llama:seed=1)
    w0, w1 = start.state_dict(), merged.state_dict()
    assert not torch.equal(
        w0["model.layers.0.self_attn.q_proj.weight"], w1["model.layers.0.self_attn.q_proj.weight"]
    )
    assert torch.equal(
        w0["model.layers.0.self_attn.k_proj.weight"], w1["model.layers.0.self_attn.k_proj.weight"]
    )
    assert torch.equal(w0["model.embed_tokens.weight"], w1["model.embed_tokens.weight"])


def test_stop_step_ends_training_early_on_the_longer_schedule(tmp_path) -> None:
    """``stop_step``: the run stops after that step, its learning rate where the ``max_steps`` schedule has it."""
    from train.draft import main

    out = tmp_path / "stopped"
    argv = ["--config", str(CONFIGS / "draft_tiny.yaml"), f"output_dir={out}", "report_to=none"]
    assert main([*argv, "max_steps=6", "stop_step=2", "lr_scheduler_type=linear", "warmup_steps=0"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["global_step"] == 2


def test_draft_bad_input_before_anything_is_written(tmp_path, capsys, tok) -> None:
    from train.draft import load_prompts, main

    other = make_tokenizer(vocab_size=280)
    tdir = tmp_path / "other_target"
    tiny_causal_lm(other, seed=3).save_pretrained(tdir)
    other.save_pretrained(tdir)
    out = tmp_path / "never"
    argv = ["--config", str(CONFIGS / "draft_tiny.yaml"), f"output_dir={out}", "report_to=none"]
    assert main([*argv, f"target_model_name_or_path={tdir}"]) == 2
    assert "tokenizers differ" in capsys.readouterr().err
    assert main([*argv, "mode=offpolicy"]) == 2
    assert "mode must be one of" in capsys.readouterr().err
    assert (
        main([*argv, "mode=onpolicy", "max_length=64"]) == 2
    )  # an SFT key at the top level in onpolicy mode
    assert "unknown config key 'max_length' for mode onpolicy" in capsys.readouterr().err
    assert main([*argv, "max_steps=4", "stop_step=5"]) == 2
    assert "stop_step=5 is past max_steps=4" in capsys.readouterr().err
    assert main([*argv, "stop_step=0"]) == 2
    assert "stop_step must be >= 1" in capsys.readouterr().err
    assert not out.exists()

    data = tmp_path / "p.jsonl"
    data.write_text('{"prompt": "Q1", "completion": "A1"}\n{"question": "Q2"}\n{"text": "Q3"}\n')
    with pytest.raises(
        SpecsError, match="row 2: needs a non-empty string column prompt, problem or question"
    ):
        load_prompts(str(data))
    data.write_text('{"prompt": "Q1", "completion": "A1"}\n{"question": "Q2"}\n')
    assert load_prompts(str(data)) == [
        {"problem": "Q1", "completion": "A1"},
        {"problem": "Q2", "completion": None},
    ]
