"""``specs-rl train prm``: train a step-level process reward model (token classification, one label per step).

    python -m train.prm --config configs/train/prm_tiny.yaml output_dir=runs/prm_tiny
    accelerate launch --config_file configs/accelerate/ddp.yaml -m train.prm --config configs/train/prm_qwen25_math_7b.yaml

Reads stepwise rows (TRL's ``{prompt, completions, labels}``, ProcessBench, or the toy-math generator's rows),
holds out a split by problem, trains ``AutoModelForTokenClassification(num_labels=2)`` with labels at each step's
separator, evaluates step accuracy / error-step F1 / ProcessBench first-error accuracy before and after, and writes
into ``output_dir``: the model (merged, or the LoRA adapter), the tokenizer, ``prm_config.json`` (how the inference
backend reads it), ``metrics.json`` and ``train_config.json``. Losses and metrics go to W&B (offline by default).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from specs_rl.cli import entry_point
from specs_rl.errors import SpecsError
from specs_rl.tracking import finish_run
from specs_rl.training import args as targs
from specs_rl.training import data as tdata
from specs_rl.training import prm_data
from specs_rl.training.models import check_model_name, load_model, load_tokenizer, save_trained
from specs_rl.training.runs import is_main_process, start_tracking, write_metrics

PROG = "specs-rl train prm"


@dataclass
class PRMScriptArguments:
    """Data and output of the PRM recipe (model fields are ``trl.ModelConfig``'s, training fields ``PRMConfig``'s)."""

    dataset_name: str = field(
        default="processbench:olympiadbench",
        metadata={
            "help": "Training data: comma-separated names, each processbench:SPLIT, data:FILE, a .jsonl/.json path, "
            "or toy:N (N generated arithmetic solutions). Default: ProcessBench olympiadbench (no overlap with "
            "MATH-500 / GSM8K / AMC23)."
        },
    )
    dataset_format: str = field(
        default="auto",
        metadata={"help": "auto, stepwise (TRL {prompt, completions, labels}), processbench, or toy_math."},
    )
    eval_dataset_name: str | None = field(
        default=None, metadata={"help": "Held-out data (same forms); default: a split of the training data."}
    )
    eval_fraction: float = field(
        default=0.1, metadata={"help": "Fraction of problems held out when eval_dataset_name is unset."}
    )
    split_seed: int = field(
        default=0, metadata={"help": "Seed of the held-out split (hash of seed:problem)."}
    )
    max_train_rows: int | None = field(default=None, metadata={"help": "Keep the first N training rows."})
    max_eval_rows: int | None = field(default=None, metadata={"help": "Keep the first N held-out rows."})
    exclude_problems_from: list[str] | None = field(
        default=None,
        metadata={
            "help": "Evaluation sets whose problems are removed from training (e.g. data:math500_test.jsonl "
            "data:gsm8k_test.jsonl): ProcessBench's gsm8k/math splits overlap them."
        },
    )
    save_merged: bool = field(
        default=True,
        metadata={"help": "With use_peft: merge LoRA into the weights (true) or save the adapter."},
    )

    def __post_init__(self) -> None:
        formats = ("auto", *prm_data.ADAPTERS)
        if self.dataset_format not in formats:
            raise ValueError(
                f"dataset_format must be one of {', '.join(formats)}, got {self.dataset_format!r}"
            )
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")


def load_rows(spec: str, fmt: str) -> list[dict]:
    """Stepwise rows of every comma-separated dataset name (validated, one-line errors naming the row)."""
    rows: list[dict] = []
    for name in (s.strip() for s in spec.split(",") if s.strip()):
        if name == "toy" or name.startswith("toy:"):
            n = name.split(":", 1)[1] if ":" in name else "64"
            if not n.isdigit():
                raise SpecsError(f"dataset {name!r}: toy:N needs a row count, got {n!r}")
            rows += prm_data.from_toy_math(prm_data.toy_stepwise_rows(int(n), seed=0), name)
        else:
            rows += prm_data.adapt(tdata.load_rows(name), fmt, name)
    if not rows:
        raise SpecsError(f"dataset_name {spec!r} names no data")
    return rows


def parse(argv: Sequence[str]) -> tuple[targs.RawConfig, PRMScriptArguments, Any, Any] | None:
    """YAML <- key=value through TRL's parser into (raw, script, PRMConfig, trl.ModelConfig); None after --help."""
    from trl import ModelConfig

    from specs_rl.training.prm import PRMConfig

    raw = targs.read_argv(argv)
    types = (PRMScriptArguments, PRMConfig, ModelConfig)
    if raw.help:
        targs.print_help(types, PROG, __doc__ or "")
        return None
    script, training_args, model_args = targs.parse_into(types, raw.flat(), PROG)
    check_model_name(model_args.model_name_or_path)
    return raw, script, training_args, model_args


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    from specs_rl.training.prm import build_prm_trainer, save_prm_format

    # 1. Config (report_to defaults to wandb, offline); every input error surfaces here or in step 2.
    parsed = parse(sys.argv[1:] if argv is None else argv)
    if parsed is None:
        return 0
    raw, script, training_args, model_args = parsed

    # 2. Data: adapt + validate every row, drop contaminated problems, hold out a split by problem.
    rows = load_rows(script.dataset_name, script.dataset_format)
    warning = tdata.contamination_warning(script.dataset_name, script.exclude_problems_from)
    if warning:
        print(f"[prm] {warning}")
    if script.exclude_problems_from:
        banned = tdata.problem_texts(script.exclude_problems_from)
        rows = [r for r in rows if tdata.normalize_problem(r["prompt"]) not in banned]
    if script.eval_dataset_name:
        train_rows, eval_rows = rows, load_rows(script.eval_dataset_name, script.dataset_format)
    else:
        train_rows, eval_rows = tdata.split_by_problem(rows, script.eval_fraction, script.split_seed)
    train_rows = train_rows[: script.max_train_rows]
    eval_rows = eval_rows[: script.max_eval_rows]
    if not train_rows:
        raise SpecsError(f"no training rows left from {script.dataset_name!r}")
    pos, neg = prm_data.label_count(train_rows)
    print(
        f"[prm] {len(train_rows)} train rows ({pos} correct / {neg} wrong steps), {len(eval_rows)} held out"
    )

    # 3. Model, LoRA, trainer; then the W&B run (offline unless the user chose a mode).
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    tokenizer.padding_side = "right"
    model = load_model(
        model_args.model_name_or_path,
        "token_classification",
        tokenizer,
        dtype=model_args.dtype,
        num_labels=2,
        attn_implementation=model_args.attn_implementation,
    )
    trainer = build_prm_trainer(
        model,
        training_args,
        train_rows,
        tokenizer,
        eval_dataset=eval_rows or None,
        peft_config=targs.peft_config(model_args, "TOKEN_CLS"),
    )

    # 4. Evaluate, train, evaluate. (Rows whose first step ends past max_length carry no label and were dropped.)
    n_train, n_eval = len(trainer.train_dataset), len(trainer.eval_dataset or [])
    print(
        f"[prm] after cutting at max_length={training_args.max_length}: {n_train} train / {n_eval} held-out rows"
    )
    if n_train == 0:
        raise SpecsError(f"no training row has a step ending within max_length={training_args.max_length}")
    config = targs.resolved(script, model_args, training_args, config_file=raw.path)
    run = start_tracking(
        training_args, config, job_type="train-prm"
    )  # the trainer's W&B callback logs into it
    metrics: dict = {"train_rows": n_train, "eval_rows": n_eval, "world_size": training_args.world_size}
    if n_eval:
        metrics["before"] = trainer.evaluate(metric_key_prefix="eval_before")
    result = trainer.train()
    metrics["train_loss"] = result.training_loss
    if n_eval:
        metrics["after"] = trainer.evaluate()

    # 5. Save: weights (merged or adapter) + tokenizer + prm_config.json + metrics + resolved config.
    out = training_args.output_dir
    metrics["saved"] = save_trained(trainer, out, tokenizer, script.save_merged)
    if is_main_process(training_args):
        save_prm_format(out, training_args.step_separator, training_args.step_reward)
        write_metrics(out, metrics)
        targs.write_resolved(config, out)
    finish_run(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
