"""ORM training: TRL RewardTrainer on encoded pairs moves every trainable parameter, the saved checkpoint scores
like the live one, the entry point logs to an offline W&B run, and bad rows are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from specs_rl.models.prm_format import PrmFormat
from specs_rl.tiny import make_tokenizer, tiny_seq_classifier
from specs_rl.training import pairs as tpairs

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "train"


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def _reward_trainer(tok, tmp_path, peft=None):
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    pairs = tpairs.build_pairs(tpairs.toy_graded_rows(16, seed=0))
    ds = Dataset.from_list([tpairs.tokenize_pair(p, tok) for p in pairs])
    args = RewardConfig(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        bf16=False,
        gradient_checkpointing=False,
        max_length=256,
    )
    model = tiny_seq_classifier(tok, seed=0).train()
    return RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft)


@pytest.mark.parametrize("use_lora", [False, True])
def test_reward_trainer_changes_every_trainable_parameter_and_round_trips(tok, tmp_path, use_lora) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from specs_rl.training.models import save_trained

    peft = None
    if use_lora:
        from peft import LoraConfig

        peft = LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    trainer = _reward_trainer(tok, tmp_path / "run", peft)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(0.0 < x < 10.0 for x in losses)
    after = dict(trainer.model.named_parameters())
    same = [n for n, p in before.items() if torch.equal(p, after[n].detach())]
    assert before and not same, f"unchanged: {same}"
    if use_lora:
        assert any("lora_B" in n for n in before) and not any("embed_tokens" in n for n in before)

    if use_lora:  # save_merged=false keeps the adapter only (before the merge below changes the model)
        assert save_trained(trainer, tmp_path / "adapter", tok, save_merged=False) == "adapter"
        assert (tmp_path / "adapter" / "adapter_config.json").is_file()
        assert not (tmp_path / "adapter" / "model.safetensors").exists()
    out = tmp_path / "ckpt"
    assert save_trained(trainer, out, tok, save_merged=True) == ("merged" if use_lora else "full")
    fmt = tpairs.save_orm_format(out, "\n\n")
    assert PrmFormat.load(out) == PrmFormat(kind="sequence_classification", step_separator="\n\n")
    fresh = AutoModelForSequenceClassification.from_pretrained(out).eval()
    fresh_tok = AutoTokenizer.from_pretrained(out)
    live = trainer.model.eval()
    backend = backend_solution_reward(out)
    for row in tpairs.toy_graded_rows(3, seed=9):
        want = tpairs.orm_score(live, tok, row["prompt"], row["completion"], fmt)
        got = tpairs.orm_score(fresh, fresh_tok, row["prompt"], row["completion"], fmt)
        assert 0.0 < got < 1.0
        assert got == pytest.approx(want, abs=1e-5)
        if backend is not None:  # score at the last token = the backend's reward at the last separator
            steps = tpairs.split_steps(row["completion"], "\n\n")
            assert backend(row["prompt"], steps) == pytest.approx(want, abs=1e-5)


def backend_solution_reward(path):
    """``f(prompt, steps) -> r`` through ``specs_rl.hf``'s loader and ``HFRewardModel`` (the last step's reward with
    the earlier steps as the prefix), or None where that backend is absent."""
    try:
        from specs_rl.hf.load import load_reward_model
        from specs_rl.hf.prm import HFRewardModel
        from specs_rl.models.config import PrmSpec
    except ImportError:
        return None
    from specs_rl.types import Candidate, Problem, Trace

    model, tokenizer, fmt = load_reward_model(PrmSpec(name=str(path), device="cpu", dtype="float32"))
    assert fmt.kind == "sequence_classification"  # read from the saved prm_config.json
    rm = HFRewardModel(model, tokenizer, fmt, aggregate="last")

    def step(text: str) -> Candidate:
        return Candidate(token_ids=(), text=text, logprobs=(), finished=False)

    def reward(prompt: str, steps: list[str]) -> float:
        prefix = Trace(Problem(id="p", prompt=prompt), tuple(step(s) for s in steps[:-1]))
        return rm.score([prefix], [[step(steps[-1])]])[0][0]

    return reward


def test_orm_entry_point_logs_loss_to_an_offline_wandb_run(tmp_path, monkeypatch) -> None:
    from specs_rl.tracking import find_offline_runs, read_offline_run
    from train.orm import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    out = tmp_path / "orm"
    assert main(["--config", str(CONFIGS / "orm_tiny.yaml"), f"output_dir={out}", "max_steps=3"]) == 0
    assert json.loads((out / "prm_config.json").read_text())["kind"] == "sequence_classification"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_pairs"] == 16 and metrics["eval_pairs"] > 0
    assert 0.0 <= metrics["after"]["eval_accuracy"] <= 1.0
    run = read_offline_run(find_offline_runs(tmp_path / "wb")[0])
    losses = [h["train/loss"] for h in run["history"] if "train/loss" in h]
    assert len(losses) == 3 and all(0.0 < x < 10.0 for x in losses)
    assert run["config"]["ORMScriptArguments"]["dataset_name"] == "toy:48"


def test_orm_bad_rows_are_one_line_errors_before_anything_is_written(tmp_path, capsys) -> None:
    from train.orm import main

    data = tmp_path / "graded.jsonl"
    rows = [
        {"prompt": "P", "completion": "a", "correct": True},
        {"prompt": "P", "completion": "b", "correct": "no"},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "never"
    argv = ["--config", str(CONFIGS / "orm_tiny.yaml"), f"output_dir={out}", "report_to=none"]
    assert main([*argv, f"dataset_name={data}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "row 1: 'correct' is 'no'" in err and len(err.splitlines()) == 1
    assert main([*argv, "dataset_format=xml"]) == 2
    assert "dataset_format must be one of" in capsys.readouterr().err
    assert not out.exists()
