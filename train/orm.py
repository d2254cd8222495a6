"""``specs-rl train orm``: train an outcome reward model (Bradley-Terry on chosen/rejected solution pairs).

    python -m train.orm --config configs/train/orm_tiny.yaml output_dir=runs/orm_tiny
    accelerate launch --config_file configs/accelerate/ddp.yaml -m train.orm --config configs/train/orm_qwen25_math_7b.yaml

Reads solutions graded correct / incorrect (``{prompt, completion, correct}``, or ProcessBench rows graded by
``final_answer_correct``, or ready pairs ``{prompt, chosen, rejected}``), pairs each correct solution with each
incorrect one of the same problem, holds out a split by problem, and trains TRL's ``RewardTrainer`` on a
one-logit ``AutoModelForSequenceClassification``. Solutions are encoded exactly as the inference backend reads a
sequence-classification reward model (``encode_steps``, score at the last token). Writes into ``output_dir``: the
model (merged, or the LoRA adapter), the tokenizer, ``prm_config.json`` (kind ``sequence_classification``),
``metrics.json`` (held-out pair accuracy before / after) and ``train_config.json``. Logs go to W&B (offline).
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
from specs_rl.training import pairs as tpairs
from specs_rl.training.models import check_model_name, load_model, load_tokenizer, save_trained
from specs_rl.training.runs import is_main_process, start_tracking, write_metrics

PROG = "specs-rl train orm"
FORMATS = ("auto", "graded", "processbench", "pairs")


@dataclass
class ORMScriptArguments:
    """Data, pairing and output of the ORM recipe (model fields: ``trl.ModelConfig``; training: ``trl.RewardConfig``)."""

    dataset_name: str = field(
        default="processbench:olympiadbench",
        metadata={
            "help": "Comma-separated names: processbench:SPLIT, data:FILE, a .jsonl/.json path, or toy:N (N toy "
            "problems, one correct and one wrong solution each)."
        },
    )
    dataset_format: str = field(
        default="auto",
        metadata={
            "help": "auto, graded ({prompt, completion, correct}), processbench, or pairs (chosen/rejected)."
        },
    )
    eval_fraction: float = field(default=0.1, metadata={"help": "Fraction of problems held out."})
    split_seed: int = field(
        default=0, metadata={"help": "Seed of the held-out split (hash of seed:problem)."}
    )
    max_pairs_per_prompt: int | None = field(
        default=4, metadata={"help": "Cap on pairs per problem (drawn with pair_seed); null = all pairs."}
    )
    pair_seed: int = field(default=0, metadata={"help": "Seed of the pair subsampling generator."})
    max_train_pairs: int | None = field(default=None, metadata={"help": "Keep the first N training pairs."})
    max_eval_pairs: int | None = field(default=None, metadata={"help": "Keep the first N held-out pairs."})
    exclude_problems_from: list[str] | None = field(
        default=None, metadata={"help": "Evaluation sets whose problems are removed from training."}
    )
    step_separator: str = field(
        default="\n\n", metadata={"help": "Step delimiter: solutions are encoded step by step with it."}
    )
    save_merged: bool = field(
        default=True,
        metadata={"help": "With use_peft: merge LoRA into the weights (true) or save the adapter."},
    )

    def __post_init__(self) -> None:
        if self.dataset_format not in FORMATS:
            raise ValueError(
                f"dataset_format must be one of {', '.join(FORMATS)}, got {self.dataset_format!r}"
            )
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")


def load_pairs(script: ORMScriptArguments) -> list[dict]:
    """Pairs from every comma-separated dataset (graded rows are validated and paired per problem)."""
    import numpy as np

    rng = np.random.default_rng(script.pair_seed)
    graded: list[dict] = []
    ready: list[dict] = []
    for name in (s.strip() for s in script.dataset_name.split(",") if s.strip()):
        if name == "toy" or name.startswith("toy:"):
            n = name.split(":", 1)[1] if ":" in name else "32"
            if not n.isdigit():
                raise SpecsError(f"dataset {name!r}: toy:N needs a problem count, got {n!r}")
            graded += tpairs.toy_graded_rows(int(n), seed=0, separator=script.step_separator)
            continue
        rows = tdata.load_rows(name)
        fmt = script.dataset_format
        if fmt == "auto":
            first = rows[0] if rows else {}
            fmt = "pairs" if "chosen" in first else "processbench" if "steps" in first else "graded"
        if fmt == "pairs":
            ready += [_check_pair(r, i, name) for i, r in enumerate(rows)]
        elif fmt == "processbench":
            graded += tpairs.from_processbench(rows, name, script.step_separator)
        else:
            graded += tpairs.from_graded(rows, name)
    out = ready + tpairs.build_pairs(graded, max_pairs_per_prompt=script.max_pairs_per_prompt, rng=rng)
    if script.exclude_problems_from:
        banned = tdata.problem_texts(script.exclude_problems_from)
        out = [p for p in out if tdata.normalize_problem(p["prompt"]) not in banned]
    if not out:
        raise SpecsError(f"dataset_name {script.dataset_name!r} gives no (correct, incorrect) pair")
    return out


def _check_pair(row: dict, index: int, dataset: str) -> dict:
    for col in ("prompt", "chosen", "rejected"):
        if not isinstance(row.get(col), str):
            raise SpecsError(
                f"dataset {dataset!r} row {index}: column {col!r} must be a string (prompt, chosen, rejected)"
            )
    return {"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"]}


def parse(argv: Sequence[str]) -> tuple[targs.RawConfig, ORMScriptArguments, Any, Any] | None:
    """YAML <- key=value through TRL's parser into (raw, script, trl.RewardConfig, trl.ModelConfig)."""
    from trl import ModelConfig, RewardConfig

    raw = targs.read_argv(argv)
    types = (ORMScriptArguments, RewardConfig, ModelConfig)
    if raw.help:
        targs.print_help(types, PROG, __doc__ or "")
        return None
    script, training_args, model_args = targs.parse_into(
        types, raw.flat(), PROG, defaults={"report_to": "wandb"}
    )
    check_model_name(model_args.model_name_or_path)
    return raw, script, training_args, model_args


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    from datasets import Dataset
    from trl import RewardTrainer

    # 1. Config (report_to defaults to wandb, offline); every input error surfaces here or in step 2.
    parsed = parse(sys.argv[1:] if argv is None else argv)
    if parsed is None:
        return 0
    raw, script, training_args, model_args = parsed

    # 2. Data: graded solutions -> pairs, held out by problem.
    pairs = load_pairs(script)
    warning = tdata.contamination_warning(script.dataset_name, script.exclude_problems_from)
    if warning:
        print(f"[orm] {warning}")
    train_pairs, eval_pairs = tdata.split_by_problem(pairs, script.eval_fraction, script.split_seed)
    train_pairs, eval_pairs = train_pairs[: script.max_train_pairs], eval_pairs[: script.max_eval_pairs]
    if not train_pairs:
        raise SpecsError(f"no training pairs left from {script.dataset_name!r}")
    print(f"[orm] {len(train_pairs)} train pairs, {len(eval_pairs)} held-out pairs")

    # 3. Model + tokenizer; pairs encoded as the inference backend reads them (pre-tokenized: no EOS appended).
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    tokenizer.padding_side = "right"
    model = load_model(
        model_args.model_name_or_path,
        "sequence_classification",
        tokenizer,
        dtype=model_args.dtype,
        attn_implementation=model_args.attn_implementation,
    )

    def encode(ps: list[dict]) -> Dataset:
        return Dataset.from_list([tpairs.tokenize_pair(p, tokenizer, script.step_separator) for p in ps])

    train_ds, eval_ds = encode(train_pairs), (encode(eval_pairs) if eval_pairs else None)
    trainer = RewardTrainer(
        model=model,
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=targs.peft_config(model_args, "SEQ_CLS"),
    )
    n_train, n_eval = len(trainer.train_dataset), len(trainer.eval_dataset or [])
    print(f"[orm] within max_length={training_args.max_length}: {n_train} train / {n_eval} held-out pairs")
    if n_train == 0:
        raise SpecsError(f"every training pair is longer than max_length={training_args.max_length}")
    config = targs.resolved(script, model_args, training_args, config_file=raw.path)
    run = start_tracking(
        training_args, config, job_type="train-orm"
    )  # the trainer's W&B callback logs into it

    # 4. Evaluate (pair accuracy: r_chosen > r_rejected), train, evaluate.
    metrics: dict = {"train_pairs": n_train, "eval_pairs": n_eval, "world_size": training_args.world_size}
    if n_eval:
        metrics["before"] = trainer.evaluate(metric_key_prefix="eval_before")
    metrics["train_loss"] = trainer.train().training_loss
    if n_eval:
        metrics["after"] = trainer.evaluate()

    # 5. Save weights + tokenizer + prm_config.json (sequence classification) + metrics + resolved config.
    out = training_args.output_dir
    metrics["saved"] = save_trained(trainer, out, tokenizer, script.save_merged)
    if is_main_process(training_args):
        tpairs.save_orm_format(out, script.step_separator)
        write_metrics(out, metrics)
        targs.write_resolved(config, out)
    finish_run(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
