"""How a problem becomes what a model reads: one rule for every backend (in-process and served), so the same
config gives the same token ids whichever backend runs it."""

from __future__ import annotations

from typing import Any

from specs_rl.errors import SpecsError
from specs_rl.models.cache import LRU
from specs_rl.types import Problem


def chat_text(tokenizer: Any, text: str, system_prompt: str | None) -> str:
    """``text`` as the user turn of the tokenizer's chat template (after an optional system turn), with the
    generation prompt."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": text})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def generator_prompt_ids(
    tokenizer: Any, problem: Problem, *, chat_template: bool, system_prompt: str | None
) -> tuple[int, ...]:
    """A draft's or target's prompt ids: the chat template (no special tokens added on top) or the plain prompt
    (with the tokenizer's special tokens). Empty when the prompt encodes to nothing (the caller says so)."""
    if chat_template:
        text = chat_text(tokenizer, problem.prompt, system_prompt)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(problem.prompt, add_special_tokens=True)["input_ids"]
    return tuple(int(i) for i in ids)


def prm_prompt_text(
    tokenizer: Any, problem: Problem, *, prompt_field: str, chat: bool, system_prompt: str | None
) -> str:
    """The PRM's prompt text: the raw problem (``prompt_field: problem``) or the generators' prompt, through the chat
    template when the PRM uses one."""
    text = problem.meta.get("problem", problem.prompt) if prompt_field == "problem" else problem.prompt
    return chat_text(tokenizer, text, system_prompt) if chat else text


class GeneratorPrompts:
    """A generator's prompt ids per problem (:func:`generator_prompt_ids`), memoized (the 1024 most recent prompts).

    ``chat_template`` is on only when asked for and the tokenizer has one."""

    def __init__(
        self, tokenizer: Any, *, chat_template: bool = True, system_prompt: str | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.chat_template = chat_template and bool(getattr(tokenizer, "chat_template", None))
        self.system_prompt = system_prompt
        self._ids = LRU(1024)

    def ids(self, problem: Problem) -> tuple[int, ...]:
        """The prompt as the generators see it; a prompt that encodes to nothing is a SpecsError naming the problem."""
        hit = self._ids.get(problem.prompt)
        if hit is not None:
            return hit
        ids = generator_prompt_ids(
            self.tokenizer, problem, chat_template=self.chat_template, system_prompt=self.system_prompt
        )
        if not ids:
            raise SpecsError(f"problem {problem.id!r}: the prompt encodes to no tokens")
        return self._ids.put(problem.prompt, ids)
