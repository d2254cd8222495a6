"""PRM training: the trainer moves every trainable parameter, a checkpoint round-trips, the entry point logs to an
offline W&B run, bad input is one line before any file is written, and the argument parser's rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from specs_rl.errors import SpecsError
from specs_rl.models.prm_format import PrmFormat
from specs_rl.tiny import make_tokenizer, tiny_token_classifier
from specs_rl.training.prm_data import toy_stepwise_rows

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "train"


COMMON = dict(
    max_steps=3,
    per_device_train_batch_size=4,
    learning_rate=1e-3,
    logging_steps=1,
    save_strategy="no",
    use_cpu=True,
    report_to="none",
    disable_tqdm=True,
    max_length=128,
)


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _train(tok, tmp_path, peft=None, **kw):
    from specs_rl.training.prm import PRMConfig, build_prm_trainer

    model = tiny_token_classifier(tok, seed=0).train()
    rows = toy_stepwise_rows(40, seed=0)
    args = PRMConfig(output_dir=str(tmp_path), **{**COMMON, **kw})
    trainer = build_prm_trainer(model, args, rows[:32], tok, eval_dataset=rows[32:], peft_config=peft)
    before = _snapshot(trainer.model)
    trainer.train()
    return trainer, before


def _assert_all_changed(trainer, before) -> None:
    after = dict(trainer.model.named_parameters())
    assert before, "no trainable parameters"
    same = [n for n, p in before.items() if torch.equal(p, after[n].detach())]
    assert not same, f"parameters that did not change: {same}"


def _losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def _assert_round_trip(trainer, tok, out) -> None:
    """Save as the recipe does, load fresh, and compare step scores read by the inference encoding."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from specs_rl.training.models import save_trained
    from specs_rl.training.prm import save_prm_format, score_steps

    kind = save_trained(trainer, out, tok, save_merged=True)
    save_prm_format(out, "\n\n")
    fmt = PrmFormat.load(out)
    assert fmt == PrmFormat(kind="token_classification", step_separator="\n\n", positive_label=1)
    fresh = AutoModelForTokenClassification.from_pretrained(out).eval()
    fresh_tok = AutoTokenizer.from_pretrained(out)
    live = trainer.model.eval()
    for row in toy_stepwise_rows(6, seed=5):
        want = score_steps(live, tok, row["prompt"], row["completions"], fmt)
        got = score_steps(fresh, fresh_tok, row["prompt"], row["completions"], fmt)
        assert len(got) == len(row["completions"])
        assert got == pytest.approx(want, abs=1e-5)
    assert kind in ("full", "merged")
    backend = backend_step_rewards(out)
    if backend is not None:  # the Hugging Face inference backend's PRM (specs_rl.hf), when it is importable
        for row in toy_stepwise_rows(6, seed=5):
            want = score_steps(live, tok, row["prompt"], row["completions"], fmt)
            assert backend(row["prompt"], row["completions"]) == pytest.approx(want, abs=1e-5)


def backend_step_rewards(path):
    """``f(prompt, steps) -> [r_1..r_K]`` through ``specs_rl.hf``'s loader and ``HFRewardModel`` (reward of each
    step when it is the newest one, ``aggregate="last"``), or None where that backend is absent."""
    try:
        from specs_rl.hf.load import load_reward_model
        from specs_rl.hf.prm import HFRewardModel
        from specs_rl.models.config import PrmSpec
    except ImportError:
        return None
    from specs_rl.types import Candidate, Problem, Trace

    model, tokenizer, fmt = load_reward_model(PrmSpec(name=str(path), device="cpu", dtype="float32"))
    rm = HFRewardModel(model, tokenizer, fmt, aggregate="last")

    def step(text: str) -> Candidate:
        return Candidate(token_ids=(), text=text, logprobs=(), finished=False)

    def rewards(prompt: str, steps: list[str]) -> list[float]:
        problem = Problem(id="p", prompt=prompt)
        out = []
        for k in range(len(steps)):
            prefix = Trace(problem, tuple(step(s) for s in steps[:k]))
            out.append(rm.score([prefix], [[step(steps[k])]])[0][0])
        return out

    return rewards


def test_prm_trainer_full_finetune_changes_every_parameter_and_round_trips(tok, tmp_path) -> None:
    trainer, before = _train(tok, tmp_path / "run")
    losses = _losses(trainer)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert trainer.state.global_step == 3
    _assert_all_changed(trainer, before)
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_step_accuracy"] <= 1.0
    assert metrics["eval_num_solutions"] == 8  # all held-out rows fit in max_length
    assert {"eval_error_f1", "eval_first_error_accuracy", "eval_processbench_f1"} <= set(metrics)
    _assert_round_trip(trainer, tok, tmp_path / "ckpt")


def test_prm_trainer_lora_changes_every_trainable_parameter_and_merged_round_trips(tok, tmp_path) -> None:
    from peft import LoraConfig

    peft = LoraConfig(task_type="TOKEN_CLS", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    trainer, before = _train(tok, tmp_path / "run", peft=peft)
    names = list(before)
    assert len(_losses(trainer)) == 3
    assert any("lora_A" in n for n in names) and any("lora_B" in n for n in names)
    assert any("score" in n for n in names)  # the new classification head is trained too (modules_to_save)
    assert not any("embed_tokens" in n for n in names)  # the base stays frozen
    _assert_all_changed(trainer, before)
    _assert_round_trip(trainer, tok, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt" / "adapter_config.json").exists()  # merged: a plain checkpoint


def test_prm_entry_point_logs_loss_to_an_offline_wandb_run(tmp_path, monkeypatch, capsys) -> None:
    from specs_rl.tracking import find_offline_runs, read_offline_run
    from train.prm import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    out = tmp_path / "prm"
    rc = main(
        [
            "--config",
            str(CONFIGS / "prm_tiny.yaml"),
            "dataset_name=toy:48",
            f"output_dir={out}",
            "max_steps=3",
        ]
    )
    assert rc == 0
    for name in ("model.safetensors", "config.json", "tokenizer.json", "prm_config.json", "metrics.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["saved"] == "full" and metrics["world_size"] == 1
    assert metrics["before"]["eval_before_num_solutions"] == metrics["after"]["eval_num_solutions"] > 0
    assert 0.0 <= metrics["after"]["eval_first_error_accuracy"] <= 1.0
    resolved = json.loads((out / "train_config.json").read_text())
    assert resolved["PRMScriptArguments"]["dataset_name"] == "toy:48"

    runs = find_offline_runs(tmp_path / "wb")
    assert len(runs) == 1
    run = read_offline_run(runs[0])
    losses = [h["train/loss"] for h in run["history"] if "train/loss" in h]
    assert len(losses) == 3 and all(0.0 < x < 10.0 for x in losses)
    assert "eval/first_error_accuracy" in run["summary"]
    assert run["config"]["PRMScriptArguments"]["dataset_name"] == "toy:48"
    assert run["config"]["ModelConfig"]["model_name_or_path"] == "tiny:llama"


def _bad_jsonl(tmp_path):
    p = tmp_path / "bad.jsonl"
    rows = [
        {"prompt": "Q", "completions": ["a"], "labels": [True]},
        {"prompt": "Q", "completions": ["a", "b"], "labels": [True, False]},
        {"prompt": "Q", "completions": ["a", "b", "c"], "labels": [True, False]},
    ]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


@pytest.mark.parametrize(
    "override, message",
    [
        ("dataset_name={bad}", "row 2: 3 steps but 2 labels"),
        ("no_such_key=1", "unknown config key 'no_such_key'"),
        ("max_steps=abc", "invalid int value: 'abc'"),
        ("dataset_format=csv", "dataset_format must be one of"),
        ("model_name_or_path=tiny:gpt2", "arch must be one of"),
        ("dataset_name=toy:x", "toy:N needs a row count"),
        ("eval_fraction=1.5", "eval_fraction must be in [0, 1)"),
    ],
)
def test_prm_bad_input_is_one_line_before_anything_is_written(tmp_path, capsys, override, message) -> None:
    from train.prm import main

    out = tmp_path / "never"
    argv = ["--config", str(CONFIGS / "prm_tiny.yaml"), f"output_dir={out}", "report_to=none"]
    rc = main([*argv, override.format(bad=_bad_jsonl(tmp_path))])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert message in err
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert not out.exists()


# --- the argument parser -----------------------------------------------------------------------------------------


def test_parser_precedence_lists_sections_and_wandb_default(tmp_path) -> None:
    from trl import ModelConfig, SFTConfig

    from specs_rl.training import args as targs

    cfg = tmp_path / "c.yaml"
    cfg.write_text("output_dir: a\nmax_steps: 5\nlearning_rate: 1.0e-3\nsft:\n  max_length: 77\n")
    raw = targs.read_argv(["--config", str(cfg), "max_steps=7", "--lora_target_modules", "q_proj,v_proj"])
    flat = raw.flat(("sft", "onpolicy"), select="sft")
    assert flat["max_length"] == 77 and flat["max_steps"] == "7"  # override text; the parser converts it
    (training, model) = targs.parse_into(
        (SFTConfig, ModelConfig), {**flat, "use_cpu": True}, "t", defaults={"report_to": "wandb"}
    )
    assert training.max_steps == 7 and training.max_length == 77 and training.learning_rate == 1e-3
    nulled = targs.parse_into((SFTConfig,), {"use_cpu": True, "max_length": "null"}, "t")[0]
    assert nulled.max_length is None
    assert training.report_to == ["wandb"]
    assert targs.peft_config(model, "CAUSAL_LM") is None
    model.use_peft = True
    assert targs.peft_config(model, "TOKEN_CLS").task_type == "TOKEN_CLS"
    assert model.lora_target_modules == ["q_proj", "v_proj"]

    one = targs.parse_into((ModelConfig,), {"lora_target_modules": ["q_proj"], "use_peft": True}, "t")[0]
    targs.fix_lora_targets(one)
    assert one.lora_target_modules == ["q_proj"]  # trl turns a one-item list into a regex string; undone

    with pytest.raises(SpecsError, match=r"unknown config key 'max_lenght' \(did you mean 'max_length'\?\)"):
        targs.parse_into((SFTConfig,), {"max_lenght": 3}, "t")
    with pytest.raises(SpecsError, match="unexpected argument"):
        targs.read_argv(["stray"])
