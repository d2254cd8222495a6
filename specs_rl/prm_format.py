"""How a process reward model sees a solution: one encoding shared by PRM training and PRM inference.

A solution is a prompt and a list of steps. The model input is

    ids = encode(prompt) + Σ_k [ encode(step_k) + encode(separator) ]

and the PRM's verdict on step ``k`` is read at the **last token of the k-th separator** (TRL's former PRM trainer
put its labels there too). Training places a label at those positions (-100 elsewhere); inference reads the
probability of the positive label there. Steps are given without their trailing delimiter: a trailing copy of
``separator`` is stripped, so a sampled step "x = 2\\n\\n" and a dataset step "x = 2" encode the same way.

Checkpoints carry ``prm_config.json`` (:class:`PrmFormat`) so the inference backend reads them the way they were
trained.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PRM_CONFIG_NAME = "prm_config.json"


@dataclass(frozen=True)
class PrmFormat:
    """How a PRM checkpoint reads steps.

    ``kind``: ``token_classification`` (scores at separators) or ``sequence_classification`` (one score at the last
    token). ``positive_label``: the class index meaning "this step is correct" (its softmax probability is the
    reward); for a one-logit head the reward is ``sigmoid(logit)``. ``step_separator``: ``"\\n\\n"`` for the
    project's PRMs, ``"<extra_0>"`` for Qwen2.5-Math-PRM.
    """

    kind: str = "token_classification"
    step_separator: str = "\n\n"
    positive_label: int = 1

    def save(self, directory: str | Path) -> None:
        Path(directory, PRM_CONFIG_NAME).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, directory: str | Path) -> PrmFormat | None:
        p = Path(directory, PRM_CONFIG_NAME)
        if not p.is_file():
            return None
        data: dict[str, Any] = json.loads(p.read_text())
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def strip_step(step: str, separator: str) -> str:
    """A step without its trailing separator and trailing whitespace.

    A sampled step ends with the generation delimiter ("\n\n"); before a tag separator (``<extra_0>``) that
    whitespace goes too, as Qwen2.5-Math-PRM's recipe splits a response at "\n\n" and joins the pieces with the tag.
    """
    if separator and step.endswith(separator):
        step = step[: -len(separator)]
    return step.rstrip()


def encode_steps(
    tokenizer: Any, prompt: str, steps: Sequence[str], separator: str = "\n\n"
) -> tuple[list[int], list[int]]:
    """Token ids of ``prompt + steps`` and, for each step, the position of the last token of its separator.

    >>> class Chars:  # a toy tokenizer: one id per character
    ...     def __call__(self, text, add_special_tokens=True):
    ...         return {"input_ids": [ord(c) for c in text]}
    >>> ids, ends = encode_steps(Chars(), "Q", ["a", "bc|"], separator="|")
    >>> "".join(map(chr, ids)), ends
    ('Qa|bc|', [2, 5])
    """
    ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    sep_ids = list(tokenizer(separator, add_special_tokens=False)["input_ids"])
    if not sep_ids:
        raise ValueError(f"the step separator {separator!r} encodes to no tokens")
    ends = []
    for step in steps:
        ids.extend(tokenizer(strip_step(step, separator), add_special_tokens=False)["input_ids"])
        ids.extend(sep_ids)
        ends.append(len(ids) - 1)
    return ids, ends
