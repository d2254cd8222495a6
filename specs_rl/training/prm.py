"""Step-level process reward model (PRM) training, in TRL's style on transformers building blocks.

TRL 1.16 has no PRM trainer (its experimental one was removed in 1.14), so this module gives the same parts on
``transformers.Trainer`` + ``AutoModelForTokenClassification(num_labels=2)``:

- :class:`PRMConfig`: ``TrainingArguments`` plus the PRM fields (help text, defaults stated);
- :func:`tokenize_row`: THE encoding (:func:`specs_rl.models.prm_format.encode_steps`): a label at the last token of each
  step's separator (1 = correct, 0 = wrong), -100 elsewhere; optionally only at the last step; or, with
  ``token_labels``, a label at every token up to the first error (:func:`specs_rl.models.prm_format.token_labels`);
- :class:`PRMDataCollator`: right-pads ``input_ids`` with the pad id and ``labels`` with -100;
- :func:`prm_metrics`: step accuracy, F1 on erroneous steps, ProcessBench first-error accuracy;
- :func:`build_prm_trainer`: tokenizes stepwise rows, applies LoRA if asked, returns a ready ``Trainer``;
- :func:`score_steps` and :func:`save_prm_format`: how the inference backend reads the checkpoint.

The loss is the model's own token-classification cross-entropy over the labelled positions,

    L = - (1/|S|) Σ_{(i,k) ∈ S} log softmax(logits[i, end_k])[y_{i,k}],

with ``S`` the labelled step ends in the batch. The reward of step ``k`` at inference is
``softmax(logits[end_k])[positive_label]`` (``positive_label = 1``).

With ``token_labels`` the labelled positions are every token of the response up to its first error (labelled 0)
and the reward of step ``k`` is ``min_{t <= end_k} softmax(logits[t])[1]`` over the response's tokens (the
``prefix_min`` reading, saved in ``prm_config.json``). Wrong labels are then rare (one per wrong solution against
every token of the correct prefix); ``error_label_weight`` w weights them in the cross-entropy,
``L = Σ_S w_y · CE / Σ_S w_y`` with ``w_0 = w``, ``w_1 = 1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainingArguments

from specs_rl.errors import SpecsError
from specs_rl.models.prm_format import IGNORE_INDEX, PrmFormat, encode_steps, prefix_min_rewards, token_labels

POSITIVE_LABEL = 1  # class index meaning "this step is correct"; its softmax probability is the step reward


@dataclass
class PRMConfig(TrainingArguments):
    r"""Configuration of PRM training: ``transformers.TrainingArguments`` plus the fields below.

    Parameters:
        max_length (`int` or `None`, defaults to `1024`): longest tokenized solution (prompt + steps); longer ones
            are cut, keeping the labels of the steps that end inside the window (a row with none left is dropped).
        step_separator (`str`, defaults to `"\n\n"`): text appended after every step; its last token carries the
            step's label. The project's step delimiter (docs/algorithm.md §1); TRL's removed trainer used `"\n"`.
        train_on_last_step_only (`bool`, defaults to `False`): label only the last step of each training solution
            (held-out metrics still use every step).
        token_labels (`bool`, defaults to `False`): label every token up to the first error and read a step as the
            least probability over the response's tokens up to its separator (``prefix_min``); rows may carry
            ``error_chars`` (per step, the offset of the first wrong character of the first wrong step).
        error_label_weight (`float`, defaults to `1.0`): weight of the wrong label in the cross-entropy.
        freeze_layers (`int`, defaults to `0`): freeze the input embeddings and the first N decoder layers (with a
            PRM initialized from a policy plus new layers on top: train the new layers and the head only).
        disable_dropout (`bool`, defaults to `True`): set dropout to 0 in the model (TRL's PRM default).
        dataset_num_proc (`int` or `None`): processes for tokenization.

    Defaults that differ from ``TrainingArguments``: ``learning_rate`` 1e-5 (TRL's PRM trainer), ``logging_steps``
    10 (TRL), ``report_to`` "wandb" (offline unless the user chose a W&B mode; transformers 5 defaults to "none"),
    ``average_tokens_across_devices`` false (measured here: with true, 2 CPU processes reported an eval loss of
    1.343 for a model whose single-process eval loss is 0.672).
    """

    learning_rate: float = field(
        default=1e-5,
        metadata={"help": "Initial AdamW learning rate (default 1e-5, TRL's former PRM trainer)."},
    )
    logging_steps: float = field(
        default=10,
        metadata={
            "help": "Log every X update steps (an integer, or a ratio of total steps if < 1); TRL's 10."
        },
    )
    report_to: None | str | list[str] = field(
        default="wandb",
        metadata={"help": "Integrations to report to (default wandb, offline unless WANDB_MODE is set)."},
    )
    average_tokens_across_devices: bool = field(
        default=False,
        metadata={
            "help": "Normalize the loss by the token count summed over processes (default false: each process "
            "averages its own labels and DDP averages the gradients; with true, transformers 5.24 reports train "
            "and eval losses multiplied by the number of processes)."
        },
    )
    max_length: int | None = field(
        default=1024,
        metadata={"help": "Longest tokenized solution; longer ones are cut at this length (default 1024)."},
    )
    step_separator: str = field(
        default="\n\n",
        metadata={
            "help": "Text after each step; its last token carries the step label (default a blank line)."
        },
    )
    train_on_last_step_only: bool = field(
        default=False,
        metadata={"help": "Label only the last step of each training solution (default false)."},
    )
    token_labels: bool = field(
        default=False,
        metadata={
            "help": "Label every token up to the first error (0 there) and read a step as the least probability "
            "over the response's tokens up to its separator (prm_config.json step_reward: prefix_min). Rows may "
            "carry error_chars: per step, the offset of the first wrong character (default false)."
        },
    )
    error_label_weight: float = field(
        default=1.0,
        metadata={
            "help": "Weight of the wrong label in the cross-entropy (token labels make it rare; default 1)."
        },
    )
    freeze_layers: int = field(
        default=0,
        metadata={
            "help": "Freeze the input embeddings and the first N decoder layers; the layers above and the head "
            "train (default 0: everything trains)."
        },
    )
    disable_dropout: bool = field(
        default=True, metadata={"help": "Set dropout to 0 in the model (default true)."}
    )
    dataset_num_proc: int | None = field(
        default=None, metadata={"help": "Number of processes for tokenizing the dataset (default: one)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.error_label_weight <= 0:
            raise ValueError(f"error_label_weight must be > 0, got {self.error_label_weight}")
        if self.freeze_layers < 0:
            raise ValueError(f"freeze_layers must be >= 0, got {self.freeze_layers}")
        if self.token_labels and self.train_on_last_step_only:
            raise ValueError("token_labels and train_on_last_step_only cannot be combined")

    @property
    def step_reward(self) -> str:
        """How the trained PRM's steps are read (``prm_config.json``)."""
        return "prefix_min" if self.token_labels else "separator"


def tokenize_row(
    row: dict[str, Any],
    tokenizer: Any,
    separator: str = "\n\n",
    max_length: int | None = None,
    train_on_last_step_only: bool = False,
    token_level: bool = False,
) -> dict[str, list[int]]:
    """``{"input_ids", "labels"}`` of one stepwise row: ``labels[end_k] = int(labels_k)``, -100 elsewhere.

    Positions come from :func:`encode_steps` (the inference encoding). With ``max_length`` the sequence is cut and
    steps ending beyond it lose their label; with ``train_on_last_step_only`` only the last kept step keeps one.
    With ``token_level`` the labels are :func:`specs_rl.models.prm_format.token_labels` (cut at ``max_length`` too).
    """
    ids, labels, _ = _encode_row(row, tokenizer, separator, max_length, train_on_last_step_only, token_level)
    return {"input_ids": ids, "labels": labels}


def _encode_row(
    row: dict[str, Any],
    tokenizer: Any,
    separator: str,
    max_length: int | None,
    train_on_last_step_only: bool,
    token_level: bool,
) -> tuple[list[int], list[int], list[int]]:
    """:func:`tokenize_row`'s ids and labels, and the ends of the steps that lie inside the cut window."""
    if token_level:
        ids, labels, ends = token_labels(
            tokenizer, row["prompt"], row["completions"], row["labels"], row.get("error_chars"), separator
        )
        ids, labels = ids[:max_length], labels[:max_length]
        return ids, labels, [e for e in ends if e < len(ids)]
    ids, ends = encode_steps(tokenizer, row["prompt"], row["completions"], separator)
    if max_length is not None and len(ids) > max_length:
        ids = ids[:max_length]
        ends = [e for e in ends if e < max_length]
    kept = list(zip(ends, [int(bool(b)) for b in row["labels"]]))
    if train_on_last_step_only:
        kept = kept[-1:]
    labels = [IGNORE_INDEX] * len(ids)
    for end, y in kept:
        labels[end] = y
    return ids, labels, ends


@dataclass
class PRMDataCollator:
    """Right-pads a batch: ``input_ids`` with ``pad_token_id``, ``labels`` with -100, ``attention_mask`` 1/0."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = len(features)
        input_ids = torch.full((batch, length), self.pad_token_id, dtype=torch.long)  # [B, L]
        attention_mask = torch.zeros((batch, length), dtype=torch.long)  # [B, L]
        labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)  # [B, L]
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[i, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            attention_mask[i, :n] = 1
            if "labels" in f:
                labels[i, :n] = torch.as_tensor(f["labels"], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def first_error(p_correct: np.ndarray, threshold: float = 0.5) -> int:
    """Index of the first step with ``p(correct) < threshold``, or -1 (ProcessBench's prediction rule)."""
    wrong = np.flatnonzero(np.asarray(p_correct) < threshold)
    return int(wrong[0]) if wrong.size else -1


def prm_metrics(
    p_correct: Sequence[np.ndarray], labels: Sequence[np.ndarray], threshold: float = 0.5
) -> dict[str, float]:
    """Held-out PRM metrics over solutions (``p_correct[i][k]``, ``labels[i][k]`` in {0, 1} for step k).

    - ``step_accuracy``: fraction of labelled steps with ``(p >= threshold) == label``;
    - ``error_precision`` / ``error_recall`` / ``error_f1``: erroneous steps (label 0) as the positive class,
      predicted when ``p < threshold``;
    - ``first_error_accuracy``: fraction of solutions whose predicted first wrong step (:func:`first_error`) equals
      the true one (-1 when every step is correct). ProcessBench rows converted by
      :func:`~specs_rl.training.prm_data.from_processbench` keep steps up to the first error only; that does not
      change this number: a prediction equals the label ``k`` exactly when steps ``< k`` pass and step ``k`` fails;
    - ``processbench_f1``: the harmonic mean of first-error accuracy on erroneous and on correct solutions
      (ProcessBench's headline score).

    >>> m = prm_metrics([np.array([0.9, 0.2]), np.array([0.8, 0.7])], [np.array([1, 0]), np.array([1, 0])])
    >>> m["step_accuracy"], m["first_error_accuracy"], m["error_recall"]
    (0.75, 0.5, 0.5)
    """
    p = np.concatenate([np.asarray(x, dtype=float) for x in p_correct]) if p_correct else np.zeros(0)
    y = np.concatenate([np.asarray(x, dtype=int) for x in labels]) if labels else np.zeros(0, dtype=int)
    pred_ok = p >= threshold
    tp = float(np.sum(~pred_ok & (y == 0)))
    fp = float(np.sum(~pred_ok & (y == 1)))
    fn = float(np.sum(pred_ok & (y == 0)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    truth = [first_error(np.asarray(lab, dtype=float), 0.5) for lab in labels]
    hits = [first_error(pc, threshold) == t for pc, t in zip(p_correct, truth)]
    err = [h for h, t in zip(hits, truth) if t != -1]
    cor = [h for h, t in zip(hits, truth) if t == -1]
    acc_err = float(np.mean(err)) if err else 0.0
    acc_cor = float(np.mean(cor)) if cor else 0.0
    pb_f1 = 2 * acc_err * acc_cor / (acc_err + acc_cor) if acc_err + acc_cor else 0.0
    return {
        "step_accuracy": float(np.mean(pred_ok == (y == 1))) if y.size else 0.0,
        "error_precision": precision,
        "error_recall": recall,
        "error_f1": f1,
        "first_error_accuracy": float(np.mean(hits)) if hits else 0.0,
        "first_error_accuracy_erroneous": acc_err,
        "first_error_accuracy_correct": acc_cor,
        "processbench_f1": pb_f1,
        "num_solutions": float(len(hits)),
        "num_steps": float(y.size),
    }


def positive_probability(logits: Any, labels: Any = None) -> torch.Tensor:
    """``preprocess_logits_for_metrics``: keep only ``softmax(logits)[..., positive]`` ([B, L]) for the metrics."""
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return logits.float().softmax(-1)[..., POSITIVE_LABEL]  # [B, L]


def compute_prm_metrics(eval_pred: Any) -> dict[str, float]:
    """``compute_metrics`` for the Trainer: per-solution step probabilities read at the labelled positions."""
    probs, label_ids = (
        eval_pred.predictions,
        eval_pred.label_ids,
    )  # [N, L], [N, L] (-100 = no label / padding)
    if isinstance(probs, (tuple, list)):
        probs = probs[0]
    per_p, per_y = [], []
    for p_row, y_row in zip(np.asarray(probs), np.asarray(label_ids)):
        mask = y_row != IGNORE_INDEX
        if mask.any():
            per_p.append(p_row[mask])
            per_y.append(y_row[mask])
    return prm_metrics(per_p, per_y)


@dataclass
class StepMetrics:
    """``compute_metrics`` reading every held-out step the way inference reads it (``prefix_min``): the eval rows'
    prompt lengths, step ends and step labels, in the eval dataset's order."""

    prompt_lengths: Sequence[int]
    step_ends: Sequence[Sequence[int]]
    step_labels: Sequence[Sequence[int]]

    def __call__(self, eval_pred: Any) -> dict[str, float]:
        probs = eval_pred.predictions  # [N, L] p(correct), padded
        if isinstance(probs, (tuple, list)):
            probs = probs[0]
        per_p, per_y = [], []
        for p_row, n, ends, ys in zip(
            np.asarray(probs), self.prompt_lengths, self.step_ends, self.step_labels
        ):
            if len(ends):
                per_p.append(np.asarray(prefix_min_rewards(p_row.tolist(), n, ends)))
                per_y.append(np.asarray(ys[: len(ends)]))
        return prm_metrics(per_p, per_y)


def weighted_loss(error_label_weight: float) -> Any:
    """``compute_loss_func``: token cross-entropy with the wrong label weighted by ``error_label_weight``."""

    def loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]  # [B, L, 2]
        weight = torch.ones(logits.shape[-1], device=logits.device)
        weight[1 - POSITIVE_LABEL] = error_label_weight
        return torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            labels.reshape(-1).to(logits.device),
            weight=weight,
            ignore_index=IGNORE_INDEX,
        )

    return loss


def prepare_prm_dataset(
    rows: Any, tokenizer: Any, args: PRMConfig, *, last_step_only: bool | None = None
) -> Any:
    """Stepwise rows (a list or a ``datasets.Dataset``) -> a tokenized ``datasets.Dataset`` (rows with no label left
    after cutting at ``max_length`` are dropped). ``last_step_only`` defaults to ``args.train_on_last_step_only``."""
    import datasets

    if isinstance(rows, datasets.Dataset) and "input_ids" in rows.column_names:
        return rows
    if not isinstance(rows, datasets.Dataset):
        rows = list(rows)
        if any("error_chars" in r for r in rows):  # one schema for rows with and without error offsets
            rows = [{**r, "error_chars": r.get("error_chars")} for r in rows]
    ds = rows if isinstance(rows, datasets.Dataset) else datasets.Dataset.from_list(rows)
    last = args.train_on_last_step_only if last_step_only is None else last_step_only
    ds = ds.map(
        _tokenize_for_map,
        fn_kwargs={
            "tokenizer": tokenizer,
            "separator": args.step_separator,
            "max_length": args.max_length,
            "train_on_last_step_only": last,
            "token_level": args.token_labels,
        },
        remove_columns=ds.column_names,
        num_proc=args.dataset_num_proc,
    )
    # A new column name, then a rename: mapping onto the input's "labels" column would keep its bool schema and
    # turn -100 into True.
    ds = ds.rename_column("token_labels", "labels")
    return ds.filter(lambda r: any(y != IGNORE_INDEX for y in r["labels"]), num_proc=args.dataset_num_proc)


def _tokenize_for_map(
    row: dict[str, Any],
    tokenizer: Any,
    separator: str,
    max_length: int | None,
    train_on_last_step_only: bool,
    token_level: bool,
) -> dict[str, Any]:
    """The tokenized row, plus what the step metrics need (prompt length, step ends inside the window, labels)."""
    ids, labels, ends = _encode_row(
        row, tokenizer, separator, max_length, train_on_last_step_only, token_level
    )
    prompt_length = len(encode_steps(tokenizer, row["prompt"], [], separator)[0])
    return {
        "input_ids": ids,
        "token_labels": labels,
        "prompt_length": prompt_length,
        "step_ends": ends,
        "step_labels": [int(bool(y)) for y in row["labels"][: len(ends)]],
    }


def build_prm_trainer(
    model: Any,
    args: PRMConfig,
    train_dataset: Any,
    processing_class: Any,
    *,
    eval_dataset: Any = None,
    peft_config: Any = None,
    callbacks: Sequence[Any] | None = None,
) -> Any:
    """A ``transformers.Trainer`` for a token-classification PRM, with the PRM collator and metrics.

    ``train_dataset`` / ``eval_dataset``: stepwise rows or already-tokenized datasets. The eval set is always
    labelled at every step (the metrics need them). ``peft_config``: a ``peft.LoraConfig`` (task type TOKEN_CLS)
    or None.
    """
    from transformers import Trainer

    if args.disable_dropout:
        from specs_rl.training.models import disable_dropout

        disable_dropout(model)
    if args.freeze_layers:
        if peft_config is not None:
            raise SpecsError(
                "freeze_layers and use_peft cannot be combined (LoRA already freezes the base model)"
            )
        from specs_rl.training.models import freeze_bottom

        freeze_bottom(model, args.freeze_layers)
    if peft_config is not None:
        from peft import get_peft_model

        model = get_peft_model(model, peft_config)
    meta = ("prompt_length", "step_ends", "step_labels")
    train = _drop(prepare_prm_dataset(train_dataset, processing_class, args), meta)
    evald = (
        prepare_prm_dataset(eval_dataset, processing_class, args, last_step_only=False)
        if eval_dataset is not None
        else None
    )
    metrics: Any = compute_prm_metrics  # separator labels: read the labelled positions
    if evald is not None and args.token_labels and set(meta) <= set(evald.column_names):
        metrics = StepMetrics(evald["prompt_length"], evald["step_ends"], evald["step_labels"])
    evald = _drop(evald, meta) if evald is not None else None
    return Trainer(
        model=model,
        args=args,
        data_collator=PRMDataCollator(processing_class.pad_token_id),
        train_dataset=train,
        eval_dataset=evald,
        processing_class=processing_class,
        compute_metrics=metrics if evald is not None else None,
        preprocess_logits_for_metrics=positive_probability if evald is not None else None,
        compute_loss_func=weighted_loss(args.error_label_weight) if args.error_label_weight != 1.0 else None,
        callbacks=list(callbacks) if callbacks else None,
    )


def _drop(ds: Any, columns: Sequence[str]) -> Any:
    return ds.remove_columns([c for c in columns if c in ds.column_names])


@torch.no_grad()
def score_steps(
    model: Any, tokenizer: Any, prompt: str, steps: Sequence[str], fmt: PrmFormat | None = None
) -> list[float]:
    """Step rewards the way the inference backend reads a token-classification PRM:
    ``r_k = softmax(logits[end_k])[positive_label]`` over :func:`encode_steps` positions (``separator``), or the
    least of those probabilities over the response's tokens up to ``end_k`` (``prefix_min``)."""
    fmt = fmt or PrmFormat()
    ids, ends = encode_steps(tokenizer, prompt, steps, fmt.step_separator)
    device = next(model.parameters()).device
    logits = model(input_ids=torch.tensor([ids], device=device)).logits[0]  # [L, num_labels]
    p = logits.float().softmax(-1)[:, fmt.positive_label]  # [L]
    if fmt.step_reward == "prefix_min":
        n = len(encode_steps(tokenizer, prompt, [], fmt.step_separator)[0])
        return prefix_min_rewards(p.tolist(), n, ends)
    return p[ends].tolist()


def save_prm_format(output_dir: str | Path, separator: str, step_reward: str = "separator") -> PrmFormat:
    """Write ``prm_config.json`` (token classification, the separator, positive label 1, how steps are read)."""
    fmt = PrmFormat(
        kind="token_classification",
        step_separator=separator,
        positive_label=POSITIVE_LABEL,
        step_reward=step_reward,
    )
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    fmt.save(output_dir)
    return fmt
