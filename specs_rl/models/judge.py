"""SpecReason's target judge as both backends read it: the scoring prompt of a step (``get_score`` of
ruipeterpan/specreason ``spec_reason.py``) and the digit tokens whose expectation is the score. The in-process judge
is :mod:`specs_rl.hf.judge`, the served one :mod:`specs_rl.vllm.judge`."""

from __future__ import annotations

import functools
from typing import Any

from specs_rl.errors import SpecsError
from specs_rl.types import Candidate, Trace

# ruipeterpan/specreason spec_reason.py, get_score: the user turn and the start of the assistant's answer.
DEFAULT_JUDGE_PROMPT = (
    "Evaluate the last reasoning step solely based on factual correctness and logical validity. Ignore style, "
    "phrasing, or overall usefulness—only judge whether the step is objectively correct and logically follows "
    "from prior steps. Assign a score from 0 to 9."
)
DEFAULT_JUDGE_ANSWER_PREFIX = "I think the quality score is: "


def digit_token_ids(tokenizer: Any) -> list[int]:
    """The token ids of "0".."9"; a :class:`SpecsError` when a digit is not one token of its own."""
    ids = []
    for d in range(10):
        enc = tokenizer(str(d), add_special_tokens=False)["input_ids"]
        if len(enc) != 1:
            raise SpecsError(
                f"judge: target needs each digit 0-9 to be one token of the target's tokenizer; {d!r} encodes "
                f"to {enc}: use judge: prm"
            )
        ids.append(int(enc[0]))
    return ids


def judge_prompt_text(
    tokenizer: Any,
    trace: Trace,
    step: Candidate,
    *,
    prompt: str,
    answer_prefix: str,
    chat_template: bool,
    system_prompt: str | None,
) -> str:
    """The scoring prompt of ``step`` after ``trace`` (``get_score``'s turns): through the chat template when
    ``chat_template`` (the caller checks the tokenizer has one), else plain text joined by blank lines."""
    response = trace.text + step.text
    problem = trace.problem.prompt
    if not chat_template:
        return f"{problem}\n\n{response}\n\n{prompt}\n\n{answer_prefix}"
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages += [
        {"role": "user", "content": problem},
        {"role": "assistant", "content": response},
        {"role": "user", "content": prompt},
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + answer_prefix


class JudgePrompt:
    """How a target judge turns a step into token ids, as both backends read it: the scoring prompt
    (:func:`judge_prompt_text`, through ``tokenizer``'s chat template when asked for and it has one) and the digit
    tokens, read at the first judgement (a run without specreason never needs them)."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        prompt: str = DEFAULT_JUDGE_PROMPT,
        answer_prefix: str = DEFAULT_JUDGE_ANSWER_PREFIX,
        chat_template: bool = True,
        system_prompt: str | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.answer_prefix = answer_prefix
        self.chat_template = chat_template and bool(getattr(tokenizer, "chat_template", None))
        self.system_prompt = system_prompt

    @functools.cached_property
    def digits(self) -> list[int]:
        return digit_token_ids(self.tokenizer)

    def text(self, trace: Trace, step: Candidate) -> str:
        """The scoring prompt of ``step`` after ``trace``."""
        return judge_prompt_text(
            self.tokenizer,
            trace,
            step,
            prompt=self.prompt,
            answer_prefix=self.answer_prefix,
            chat_template=self.chat_template,
            system_prompt=self.system_prompt,
        )

    def ids(self, trace: Trace, step: Candidate) -> list[int]:
        return list(self.tokenizer(self.text(trace, step), add_special_tokens=False)["input_ids"])
