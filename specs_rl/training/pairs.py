"""Outcome reward model (ORM) data: chosen/rejected pairs from solutions graded correct and incorrect.

A graded solution is ``{"prompt": str, "completion": str, "correct": bool}`` (the completion's steps joined by the
step separator). :func:`build_pairs` pairs, for every prompt, each correct solution with each incorrect one (TRL's
preference format ``{"prompt", "chosen", "rejected"}``), optionally capped per prompt with a passed-in generator.

The ORM reads a solution the way the inference backend reads a sequence-classification reward model: the tokens of
:func:`specs_rl.models.prm_format.encode_steps` (prompt, then each step followed by the separator) and one score at the last
token, ``r = sigmoid(logit)``. :func:`tokenize_pair` encodes pairs that way (so TRL's ``RewardTrainer`` gets
``chosen_ids`` / ``rejected_ids`` and skips its own tokenization, which would append EOS). Its loss is
Bradley-Terry: ``L = -log σ(r_chosen - r_rejected)`` on the logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from specs_rl.errors import SpecsError
from specs_rl.models.prm_format import PrmFormat, encode_steps

GRADED_COLUMNS = ("prompt", "completion", "correct")


def _fail(dataset: str, index: int, problem: str) -> SpecsError:
    return SpecsError(f"dataset {dataset!r} row {index}: {problem}")


def validate_graded(row: Any, index: int, dataset: str) -> dict[str, Any]:
    """One graded solution, checked: prompt and completion strings, ``correct`` a bool."""
    if not isinstance(row, dict):
        raise _fail(dataset, index, f"expected an object with columns {', '.join(GRADED_COLUMNS)}")
    for col in GRADED_COLUMNS:
        if col not in row:
            raise _fail(dataset, index, f"missing column {col!r} (expected {', '.join(GRADED_COLUMNS)})")
    for col in ("prompt", "completion"):
        if not isinstance(row[col], str):
            raise _fail(dataset, index, f"{col!r} must be a string, got {type(row[col]).__name__}")
    if not row["completion"].strip():
        raise _fail(dataset, index, "empty completion")
    if not isinstance(row["correct"], bool):
        raise _fail(dataset, index, f"'correct' is {row['correct']!r}; it must be true/false")
    return {"prompt": row["prompt"], "completion": row["completion"], "correct": row["correct"]}


def from_graded(rows: Sequence[Any], dataset: str = "graded") -> list[dict[str, Any]]:
    return [validate_graded(r, i, dataset) for i, r in enumerate(rows)]


def from_processbench(
    rows: Sequence[Any], dataset: str = "processbench", separator: str = "\n\n"
) -> list[dict]:
    """ProcessBench rows -> graded solutions: all steps joined by ``separator``, graded by ``final_answer_correct``.

    >>> from_processbench([{"problem": "Q", "steps": ["a", "b"], "final_answer_correct": False}])
    [{'prompt': 'Q', 'completion': 'a\\n\\nb', 'correct': False}]
    """
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise _fail(dataset, i, "expected an object with columns problem, steps, final_answer_correct")
        for col in ("problem", "steps", "final_answer_correct"):
            if col not in row:
                raise _fail(
                    dataset, i, f"missing column {col!r} (expected problem, steps, final_answer_correct)"
                )
        steps = row["steps"]
        if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
            raise _fail(dataset, i, "'steps' must be a non-empty list of strings")
        out.append(
            validate_graded(
                {
                    "prompt": row["problem"],
                    "completion": separator.join(steps),
                    "correct": row["final_answer_correct"],
                },
                i,
                dataset,
            )
        )
    return out


def build_pairs(
    solutions: Sequence[dict[str, Any]], *, max_pairs_per_prompt: int | None = None, rng: Any = None
) -> list[dict[str, str]]:
    """Every (correct, incorrect) pair of solutions to the same prompt, prompts in first-seen order.

    With ``max_pairs_per_prompt``, that many pairs per prompt are drawn without replacement using ``rng`` (a
    ``numpy.random.Generator``; required then). Prompts with only correct or only incorrect solutions give none.

    >>> sols = [{"prompt": "Q", "completion": c, "correct": ok} for c, ok in [("a", True), ("b", False), ("c", False)]]
    >>> [(p["chosen"], p["rejected"]) for p in build_pairs(sols)]
    [('a', 'b'), ('a', 'c')]
    """
    groups: dict[str, tuple[list[str], list[str]]] = {}
    for s in solutions:
        good, bad = groups.setdefault(s["prompt"], ([], []))
        (good if s["correct"] else bad).append(s["completion"])
    pairs = []
    for prompt, (good, bad) in groups.items():
        combos = [(c, r) for c in good for r in bad]
        if max_pairs_per_prompt is not None and len(combos) > max_pairs_per_prompt:
            if rng is None:
                raise ValueError("max_pairs_per_prompt needs an rng (numpy.random.Generator)")
            idx = sorted(rng.choice(len(combos), size=max_pairs_per_prompt, replace=False).tolist())
            combos = [combos[i] for i in idx]
        pairs += [{"prompt": prompt, "chosen": c, "rejected": r} for c, r in combos]
    return pairs


def split_steps(completion: str, separator: str) -> list[str]:
    """A completion cut into steps at ``separator`` (empty pieces dropped)."""
    return [s for s in completion.split(separator) if s.strip()] or [completion]


def encode_solution(tokenizer: Any, prompt: str, completion: str, separator: str = "\n\n") -> list[int]:
    """Token ids of a whole solution, as the inference backend encodes it (:func:`encode_steps`)."""
    return encode_steps(tokenizer, prompt, split_steps(completion, separator), separator)[0]


def tokenize_pair(pair: dict[str, str], tokenizer: Any, separator: str = "\n\n") -> dict[str, list[int]]:
    """``{"chosen_ids", "rejected_ids"}`` for TRL's RewardTrainer (pre-tokenized, so it adds no EOS)."""
    return {
        "chosen_ids": encode_solution(tokenizer, pair["prompt"], pair["chosen"], separator),
        "rejected_ids": encode_solution(tokenizer, pair["prompt"], pair["rejected"], separator),
    }


def toy_graded_rows(n_problems: int, seed: int = 0, separator: str = "\n\n") -> list[dict[str, Any]]:
    """Two generated solutions per toy arithmetic problem: one correct, one slipping at a random step."""
    import numpy as np

    from specs_rl.training.prm_data import toy_problem, toy_solution

    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_problems):
        problem = toy_problem(rng)
        for wrong_at in (-1, int(rng.integers(0, 3))):
            prompt, steps = toy_solution(rng, wrong_at, problem)
            rows.append({"prompt": prompt, "completion": separator.join(steps), "correct": wrong_at == -1})
    return rows


def orm_score(
    model: Any, tokenizer: Any, prompt: str, completion: str, fmt: PrmFormat | None = None
) -> float:
    """The reward of a whole solution as the inference backend reads a sequence-classification model:
    ``sigmoid(logit)`` at the last token of :func:`encode_solution` (softmax[positive] for a 2-logit head)."""
    import torch

    fmt = fmt or PrmFormat(kind="sequence_classification")
    ids = encode_solution(tokenizer, prompt, completion, fmt.step_separator)
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids], device=device)).logits[0].float()  # [num_labels]
    if logits.numel() == 1:
        return float(torch.sigmoid(logits[0]))
    return float(logits.softmax(-1)[fmt.positive_label])


def save_orm_format(output_dir: str | Path, separator: str) -> PrmFormat:
    """Write ``prm_config.json`` (sequence classification, score at the last token) beside the checkpoint."""
    fmt = PrmFormat(kind="sequence_classification", step_separator=separator, positive_label=1)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    fmt.save(output_dir)
    return fmt
