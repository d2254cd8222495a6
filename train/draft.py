"""``specs-rl train draft``: distil the target into the draft, so the target accepts more draft steps.

    python -m train.draft --config configs/train/draft_tiny.yaml output_dir=runs/draft_tiny
    python -m train.draft --config configs/train/draft_tiny.yaml mode=onpolicy
    accelerate launch --config_file configs/accelerate/ddp.yaml -m train.draft --config configs/train/draft_qwen25_math_1p5b.yaml

Two modes (``mode:``; each has its own block of trainer fields in the YAML, ``sft:`` or ``onpolicy:``):

- ``sft``: sequence-level distillation. The target writes solutions to the training prompts (or they are read from
  a JSONL of ``{prompt, completion}``), and TRL's ``SFTTrainer`` fits the draft to them.
- ``onpolicy``: TRL's ``DistillationTrainer``: the draft samples, the target's next-token distributions on those
  samples are the targets (generalized JSD, ``beta`` picks forward KL 0 / JSD 0.5 / reverse KL 1). Vocabularies
  must match or differ only by padding rows: the target's head is cut to the draft's rows.

Before and after training it measures the acceptance proxy (mean per-token log-prob of draft samples under the
target, on held-out prompts; :mod:`specs_rl.training.distill`), logs it, and writes into ``output_dir``: the draft
(merged, or the LoRA adapter), the tokenizer, ``metrics.json`` and ``train_config.json``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from specs_rl.cli import entry_point
from specs_rl.config import ConfigError
from specs_rl.errors import SpecsError
from specs_rl.tracking import finish_run
from specs_rl.training import args as targs
from specs_rl.training import data as tdata
from specs_rl.training.models import check_model_name, load_model, load_tokenizer, save_trained
from specs_rl.training.runs import is_main_process, start_tracking, write_metrics

PROG = "specs-rl train draft"
MODES = ("sft", "onpolicy")


@dataclass
class DraftScriptArguments:
    """Mode, target, prompts, generation and proxy settings (draft model fields: ``trl.ModelConfig``; trainer
    fields: ``trl.SFTConfig`` for sft, ``trl.DistillationConfig`` for onpolicy)."""

    mode: str = field(default="sft", metadata={"help": "sft (on target-written solutions) or onpolicy."})
    target_model_name_or_path: str | None = field(
        default=None, metadata={"help": "The target (teacher): hub id, local folder or tiny:ARCH[:k=v,...]."}
    )
    dataset_name: str = field(
        default="toy:64",
        metadata={
            "help": "Prompts: comma-separated processbench:SPLIT, data:FILE, a .jsonl/.json path (fields prompt, "
            "problem or question; with a completion field, sft trains on it instead of generating), or toy:N."
        },
    )
    system_prompt: str | None = field(
        default=None,
        metadata={"help": "System message before each problem (Qwen2.5-Math: the boxed-answer instruction)."},
    )
    use_chat_template: bool = field(
        default=True, metadata={"help": "Conversational prompts through the tokenizer's chat template."}
    )
    eval_prompts: int = field(default=8, metadata={"help": "Held-out prompts for the acceptance proxy."})
    max_train_prompts: int | None = field(
        default=None, metadata={"help": "Keep the first N training prompts."}
    )
    exclude_problems_from: list[str] | None = field(
        default=None, metadata={"help": "Evaluation sets whose problems are removed from training."}
    )
    gen_max_new_tokens: int = field(
        default=256, metadata={"help": "sft: tokens per target-written solution."}
    )
    gen_temperature: float = field(default=0.7, metadata={"help": "sft: target sampling temperature."})
    gen_seed: int = field(default=0, metadata={"help": "sft: seed of the target's sampling generator."})
    proxy_max_new_tokens: int = field(default=64, metadata={"help": "Tokens per draft sample for the proxy."})
    proxy_temperature: float = field(
        default=1.0, metadata={"help": "Draft sampling temperature for the proxy."}
    )
    proxy_seed: int = field(default=1234, metadata={"help": "Seed of the proxy's sampling generator."})
    proxy_batch_size: int = field(default=8, metadata={"help": "Batch size of proxy sampling and scoring."})
    stop_step: int | None = field(
        default=None,
        metadata={
            "help": "End training after this optimizer step while the learning-rate schedule keeps max_steps as "
            "its horizon: the model is that checkpoint of the longer run (e.g. one whose accuracy lands in a band)."
        },
    )
    save_merged: bool = field(
        default=True,
        metadata={"help": "With use_peft: merge LoRA into the weights (true) or save the adapter."},
    )

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for name in ("gen_temperature", "proxy_temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.eval_prompts < 1:
            raise ValueError(f"eval_prompts must be >= 1, got {self.eval_prompts}")
        if self.stop_step is not None and self.stop_step < 1:
            raise ValueError(f"stop_step must be >= 1, got {self.stop_step}")


def load_prompts(spec: str) -> list[dict[str, Any]]:
    """``[{"problem": str, "completion": str | None}]`` from every comma-separated dataset name."""
    out: list[dict[str, Any]] = []
    for name in (s.strip() for s in spec.split(",") if s.strip()):
        if name == "toy" or name.startswith("toy:"):
            import numpy as np

            from specs_rl.training.prm_data import toy_problem, toy_solution

            n = name.split(":", 1)[1] if ":" in name else "64"
            if not n.isdigit():
                raise SpecsError(f"dataset {name!r}: toy:N needs a prompt count, got {n!r}")
            rng = np.random.default_rng(0)
            out += [
                {"problem": toy_solution(rng, -1, toy_problem(rng))[0], "completion": None}
                for _ in range(int(n))
            ]
            continue
        for i, row in enumerate(tdata.load_rows(name)):
            text = next((row[k] for k in ("prompt", "problem", "question") if k in row), None)
            if not isinstance(text, str) or not text.strip():
                raise SpecsError(
                    f"dataset {name!r} row {i}: needs a non-empty string column prompt, problem or question"
                )
            completion = row.get("completion")
            if completion is not None and not isinstance(completion, str):
                raise SpecsError(f"dataset {name!r} row {i}: 'completion' must be a string")
            out.append({"problem": text, "completion": completion})
    if not out:
        raise SpecsError(f"dataset_name {spec!r} names no prompts")
    return out


def make_prompt(problem: str, script: DraftScriptArguments, tokenizer: Any) -> Any:
    """A message list (chat template) or the plain problem text (with the system prompt in front)."""
    if script.use_chat_template and getattr(tokenizer, "chat_template", None):
        system = [{"role": "system", "content": script.system_prompt}] if script.system_prompt else []
        return [*system, {"role": "user", "content": problem}]
    return f"{script.system_prompt}\n\n{problem}" if script.system_prompt else problem


def parse(argv: Sequence[str]) -> tuple[targs.RawConfig, DraftScriptArguments, Any, Any] | None:
    """YAML <- key=value into (raw, script, SFTConfig | DistillationConfig, trl.ModelConfig); the mode picks the
    trainer config class and the YAML block (``sft:`` / ``onpolicy:``) merged into the top level."""
    from trl import DistillationConfig, ModelConfig, SFTConfig

    raw = targs.read_argv(argv)
    mode = raw.flat(MODES).get("mode", "sft")
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    types = (DraftScriptArguments, SFTConfig if mode == "sft" else DistillationConfig, ModelConfig)
    if raw.help:
        targs.print_help(types, PROG, __doc__ or "")
        return None
    script, training_args, model_args = targs.parse_into(
        types, raw.flat(MODES, select=mode), PROG, defaults={"report_to": "wandb"}, where=f" for mode {mode}"
    )
    check_model_name(model_args.model_name_or_path)
    check_model_name(script.target_model_name_or_path, "target_model_name_or_path")
    if script.stop_step is not None and 0 < training_args.max_steps < script.stop_step:
        raise ConfigError(f"stop_step={script.stop_step} is past max_steps={training_args.max_steps}")
    return raw, script, training_args, model_args


def stop_at(step: int) -> Any:
    """A callback that ends training after optimizer step ``step`` (the schedule still spans ``max_steps``)."""
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if state.global_step >= step:
                control.should_training_stop = True
            return control

    return StopAt()


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    import torch
    from datasets import Dataset
    from trl import DistillationTrainer, SFTTrainer

    from specs_rl.training import distill

    # 1. Config (report_to defaults to wandb, offline); every input error surfaces here or in steps 2-3.
    parsed = parse(sys.argv[1:] if argv is None else argv)
    if parsed is None:
        return 0
    raw, script, training_args, model_args = parsed
    mode = script.mode

    # 2. Prompts: train / held-out (the proxy's), contaminated problems dropped.
    rows = load_prompts(script.dataset_name)
    if script.exclude_problems_from:
        banned = tdata.problem_texts(script.exclude_problems_from)
        rows = [r for r in rows if tdata.normalize_problem(r["problem"]) not in banned]
    if len(rows) <= script.eval_prompts:
        raise SpecsError(f"{len(rows)} prompts: need more than eval_prompts={script.eval_prompts}")
    eval_rows, train_rows = (
        rows[: script.eval_prompts],
        rows[script.eval_prompts :][: script.max_train_prompts],
    )

    # 3. Tokenizers must be one (padding rows aside); then the models.
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    target_tokenizer = load_tokenizer(script.target_model_name_or_path)
    distill.check_same_tokenizer(tokenizer, target_tokenizer)
    draft = load_model(model_args.model_name_or_path, "causal_lm", tokenizer, dtype=model_args.dtype)
    target = load_model(script.target_model_name_or_path, "causal_lm", tokenizer, dtype=model_args.dtype)
    target.eval().requires_grad_(False)
    size = distill.shared_vocab_size(
        tokenizer, target_tokenizer, distill.vocab_rows(draft), distill.vocab_rows(target)
    )
    if mode == "onpolicy" and distill.vocab_rows(draft) > size:
        raise SpecsError(
            f"the draft has more output rows ({distill.vocab_rows(draft)}) than the target ({size}); on-policy "
            "distillation compares whole heads, so the target needs at least the draft's rows"
        )
    device = training_args.device
    target.to(device)

    # 4. The acceptance proxy before training (same held-out prompts and seed after).
    eval_prompts = [make_prompt(r["problem"], script, tokenizer) for r in eval_rows]

    def proxy(model: Any) -> dict[str, float]:
        gen = torch.Generator(device="cpu").manual_seed(script.proxy_seed)
        return distill.acceptance_proxy(
            model.to(device),
            target,
            tokenizer,
            eval_prompts,
            max_new_tokens=script.proxy_max_new_tokens,
            generator=gen,
            temperature=script.proxy_temperature,
            batch_size=script.proxy_batch_size,
        )

    main_proc = is_main_process(training_args)
    before = proxy(draft) if main_proc else {}
    if main_proc:
        print(f"[draft] acceptance proxy before: {before['acceptance_proxy']:.4f} nats/token")

    # 5. The trainer: sft on target-written solutions, or on-policy distillation.
    peft = targs.peft_config(model_args, "CAUSAL_LM")
    train_prompts = [make_prompt(r["problem"], script, tokenizer) for r in train_rows]
    if mode == "sft":
        completions = [r["completion"] for r in train_rows]
        missing = [i for i, c in enumerate(completions) if c is None]
        if missing:  # the target writes the missing solutions
            ids = [distill.prompt_ids(tokenizer, train_prompts[i]) for i in missing]
            gen = torch.Generator(device="cpu").manual_seed(script.gen_seed)
            samples = distill.sample(
                target,
                ids,
                max_new_tokens=script.gen_max_new_tokens,
                generator=gen,
                vocab_size=len(tokenizer),
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                temperature=script.gen_temperature,
                batch_size=script.proxy_batch_size,
            )
            for i, s in zip(missing, samples):
                completions[i] = tokenizer.decode(list(s.token_ids), skip_special_tokens=True)
        conversational = isinstance(train_prompts[0], list)
        train_ds = Dataset.from_list(
            [
                {"prompt": p, "completion": [{"role": "assistant", "content": c}] if conversational else c}
                for p, c in zip(train_prompts, completions)
            ]
        )
        trainer_cls, extra = SFTTrainer, {}
    else:
        # The target's padding rows are cut to the draft's head: its logits become target_logits[..., :size].
        distill.truncate_vocab(target, size)
        train_ds = Dataset.from_list([{"prompt": p} for p in train_prompts])
        trainer_cls, extra = DistillationTrainer, {"teacher_model": target}
    trainer = trainer_cls(
        model=draft,
        args=training_args,
        train_dataset=train_ds,
        processing_class=tokenizer,
        peft_config=peft,
        callbacks=[stop_at(script.stop_step)] if script.stop_step else None,
        **extra,
    )
    config = targs.resolved(script, model_args, training_args, config_file=raw.path)
    run = start_tracking(
        training_args, config, job_type=f"train-draft-{mode}"
    )  # the trainer's W&B callback logs into it

    # 6. Train, measure the proxy again, log both.
    metrics: dict[str, Any] = {
        "mode": mode,
        "train_prompts": len(train_rows),
        "eval_prompts": len(eval_rows),
        "world_size": training_args.world_size,
    }
    metrics["train_loss"] = trainer.train().training_loss
    metrics["global_step"] = trainer.state.global_step
    if main_proc:
        after = proxy(trainer.accelerator.unwrap_model(trainer.model))
        print(f"[draft] acceptance proxy after: {after['acceptance_proxy']:.4f} nats/token")
        metrics.update(
            acceptance_proxy_before=before["acceptance_proxy"],
            acceptance_proxy_after=after["acceptance_proxy"],
            proxy_before=before,
            proxy_after=after,
        )
        trainer.log(
            {
                "acceptance_proxy_before": before["acceptance_proxy"],
                "acceptance_proxy_after": after["acceptance_proxy"],
                "log_ratio_before": before["log_ratio"],
                "log_ratio_after": after["log_ratio"],
            }
        )

    # 7. Save the draft (merged or adapter) + tokenizer + metrics + resolved config.
    out = training_args.output_dir
    metrics["saved"] = save_trained(trainer, out, tokenizer, script.save_merged)
    if main_proc:
        write_metrics(out, metrics)
        targs.write_resolved(config, out)
    finish_run(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
