"""How a process reward model sees a solution: one encoding shared by PRM training and PRM inference.

A solution is a prompt and a list of steps. The model input is

    ids = encode(prompt) + Σ_k [ encode(step_k) + encode(separator) ]

and the PRM's verdict on step ``k`` is read, by the checkpoint's ``step_reward``, either

- ``separator``: at the **last token of the k-th separator** (TRL's former PRM trainer put its labels there too);
  training places one label per step there (-100 elsewhere); or
- ``prefix_min``: as the least positive probability over **every response token up to that separator**; training
  labels tokens (:func:`token_labels`): 1 while the response is still on a correct path, 0 at the first token that
  leaves it, nothing after. Checking ``12-1=8`` needs the written digit compared with the expected one, which a
  model sees at that digit, not at the separator after it; and a step after an error reads as wrong because the
  error's token is in its prefix.

Steps are given without their trailing delimiter: a trailing copy of ``separator`` is stripped, so a sampled step
"x = 2\\n\\n" and a dataset step "x = 2" encode the same way.

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
IGNORE_INDEX = -100  # positions without a label (the cross-entropy ignores them)
STEP_REWARDS = ("separator", "prefix_min")


@dataclass(frozen=True)
class PrmFormat:
    """How a PRM checkpoint reads steps.

    ``kind``: ``token_classification`` (scores at separators), ``sequence_classification`` (one score at the last
    token), or one of the published PRM kinds of :mod:`specs_rl.prm_kinds` (``qwen_prm``, ``skywork_prm``,
    ``shepherd_prm``). ``positive_label``: the class index meaning "this step is correct" (its softmax probability is the
    reward); for a one-logit head the reward is ``sigmoid(logit)``. ``step_separator``: ``"\\n\\n"`` for the
    project's PRMs, ``"<extra_0>"`` for Qwen2.5-Math-PRM. ``step_reward``: ``separator`` (the probability at the
    step's last separator token) or ``prefix_min`` (the least over the response's tokens up to there; PRMs trained
    with token labels). ``good_token`` / ``bad_token``: the tokens a ``shepherd_prm`` is read at (its
    ``step_separator`` is its step tag).
    """

    kind: str = "token_classification"
    step_separator: str = "\n\n"
    positive_label: int = 1
    step_reward: str = "separator"
    good_token: str = "+"
    bad_token: str = "-"

    def __post_init__(self) -> None:
        if self.step_reward not in STEP_REWARDS:
            raise ValueError(
                f"step_reward must be one of {', '.join(STEP_REWARDS)}, got {self.step_reward!r}"
            )

    def save(self, directory: str | Path) -> None:
        Path(directory, PRM_CONFIG_NAME).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, directory: str | Path) -> PrmFormat | None:
        p = Path(directory, PRM_CONFIG_NAME)
        if not p.is_file():
            return None
        data: dict[str, Any] = json.loads(p.read_text())
        try:
            return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        except (TypeError, ValueError) as e:
            raise ValueError(f"{p}: {e}") from None


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


def step_starts(prompt_length: int, ends: Sequence[int]) -> list[int]:
    """The first position of each step (its first token, or its separator for an empty step).

    >>> step_starts(1, [2, 5])
    [1, 3]
    """
    return [prompt_length, *(e + 1 for e in ends[:-1])] if ends else []


def prefix_min_rewards(
    p_correct: Sequence[float], prompt_length: int, ends: Sequence[int], initial: float = 1.0
) -> list[float]:
    """``prefix_min`` step rewards from per-position probabilities: ``r_k = min(initial, p[prompt_length :
    ends[k] + 1])`` (``initial``: the reward of the steps before ``prompt_length``, when continuing from them).

    >>> prefix_min_rewards([0.1, 0.9, 0.8, 0.95, 0.3, 0.9], 1, [2, 5])
    [0.8, 0.3]
    """
    out, low = [], initial
    for start, end in zip(step_starts(prompt_length, ends), ends):
        low = min(low, *p_correct[start : end + 1])
        out.append(float(low))
    return out


def token_labels(
    tokenizer: Any,
    prompt: str,
    steps: Sequence[str],
    labels: Sequence[bool],
    error_chars: Sequence[int | None] | None = None,
    separator: str = "\n\n",
) -> tuple[list[int], list[int], list[int]]:
    """``(ids, token labels, step ends)`` for a ``prefix_min`` PRM (ids and ends as :func:`encode_steps`).

    Every token (step tokens and separators) of the steps before the first wrong one is labelled 1. In the first
    wrong step, with ``error_chars[k]`` the offset in the stripped step of its first wrong character, the tokens
    that end at or before that offset are labelled 1 and the token containing it 0 (an offset equal to the step's
    length: the step stopped short, its first separator token gets the 0); with no offset, only the last token of
    its separator gets the 0. Everything after the 0 is unlabelled (-100): ``prefix_min`` reads it as wrong.
    Offsets need a tokenizer with offset mappings (transformers' fast tokenizers).

    >>> class Chars:  # a toy tokenizer: one id per character, with offsets
    ...     def __call__(self, text, add_special_tokens=True, return_offsets_mapping=False):
    ...         out = {"input_ids": [ord(c) for c in text]}
    ...         if return_offsets_mapping:
    ...             out["offset_mapping"] = [(i, i + 1) for i in range(len(text))]
    ...         return out
    >>> ids, y, ends = token_labels(Chars(), "Q", ["1+1=2", "2*3=7", "7+1=8"], [True, False, False], [None, 4, 0], "|")
    >>> "".join(map(chr, ids)), y, ends
    ('Q1+1=2|2*3=7|7+1=8|', [-100, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, -100, -100, -100, -100, -100, -100, -100], [6, 12, 18])
    """
    ids, ends = encode_steps(tokenizer, prompt, steps, separator)
    y = [IGNORE_INDEX] * len(ids)
    prompt_length = len(encode_steps(tokenizer, prompt, [], separator)[0])
    for k, (first, end) in enumerate(zip(step_starts(prompt_length, ends), ends)):
        if labels[k]:
            y[first : end + 1] = [1] * (end + 1 - first)
            continue
        offset = error_chars[k] if error_chars is not None and k < len(error_chars) else None
        if offset is None:
            y[end] = 0
            break
        enc = tokenizer(
            strip_step(steps[k], separator), add_special_tokens=False, return_offsets_mapping=True
        )
        if "offset_mapping" not in enc:
            raise ValueError(
                "token labels with error offsets need a tokenizer with offset mappings (a fast one)"
            )
        zero = first + sum(1 for _, stop in enc["offset_mapping"] if stop <= offset)  # all: the separator's
        y[first:zero] = [1] * (zero - first)
        y[zero] = 0
        break
    return ids, y, ends
