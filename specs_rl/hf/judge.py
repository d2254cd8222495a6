"""SpecReason's target judge on a causal LM: the target reads a scoring prompt after the step, and the score is the
expected digit at the answer position, in one forward pass (Pan et al. 2025; code ruipeterpan/specreason,
``spec_reason.py``: ``get_score`` builds the prompt, ``process_logprobs(method="average")`` takes the expectation;
the script's default ``--score_method greedy`` reads the top token instead).

The prompt follows ``get_score``: the problem as the generators see it, the response so far with the judged step as
the assistant's turn, then a user turn with the scoring instruction (``hf.judge_prompt``, the paper's by default)
and the assistant's answer prefix (``hf.judge_answer_prefix``, "I think the quality score is: "). Through the
target tokenizer's chat template when the run uses one, else as plain text joined by blank lines. The score is
``Σ_d d · p(d)`` with ``p`` the target's next-token distribution renormalized over the ten digit tokens (the code
renormalizes over the digits among its top-10 log-probs; every digit is read here, so no digit is lost when some
other token outranks it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from specs_rl.errors import SpecsError
from specs_rl.models.judge import DEFAULT_JUDGE_ANSWER_PREFIX, DEFAULT_JUDGE_PROMPT, JudgePrompt
from specs_rl.types import Candidate, Trace


def expected_digit_score(logits: torch.Tensor, digit_ids: Sequence[int]) -> torch.Tensor:
    """``Σ_d d · softmax(logits[digits])_d``: ``[B, V] -> [B]``, in [0, 9].

    >>> round(float(expected_digit_score(torch.tensor([[0.0] * 10]), list(range(10)))[0]), 6)
    4.5
    """
    lp = torch.log_softmax(logits[:, list(digit_ids)].double(), dim=-1)  # [B, 10]
    return (lp.exp() * torch.arange(10, dtype=torch.float64, device=lp.device)).sum(-1)


class HFJudge:
    """``StepJudge``: one batched forward of the target over the scoring prompts of every (prefix, step)."""

    def __init__(
        self,
        lm: Any,
        *,
        prompt: str = DEFAULT_JUDGE_PROMPT,
        answer_prefix: str = DEFAULT_JUDGE_ANSWER_PREFIX,
        chat_template: bool = True,
        system_prompt: str | None = None,
    ) -> None:
        self.lm = lm  # specs_rl.hf.sampler.HFLM: model, tokenizer, cache lock
        self.format = JudgePrompt(
            lm.tokenizer,
            prompt=prompt,
            answer_prefix=answer_prefix,
            chat_template=chat_template,
            system_prompt=system_prompt,
        )

    def text(self, trace: Trace, step: Candidate) -> str:
        """The scoring prompt of ``step`` after ``trace``."""
        return self.format.text(trace, step)

    def judge(
        self, prefixes: Sequence[Trace], candidates: Sequence[Sequence[Candidate]]
    ) -> list[list[float]]:
        lm = self.lm
        digits = self.format.digits
        rows = [self.format.ids(t, c) for t, cs in zip(prefixes, candidates) for c in cs]
        if not rows:
            return [[] for _ in candidates]
        width = max(len(r) for r in rows)
        if width > lm.max_positions:
            raise SpecsError(
                f"judge: the scoring prompt is {width} tokens and the target reads at most {lm.max_positions}: "
                "shorten hf.judge_prompt or use judge: prm"
            )
        dev = next(lm.model.parameters()).device
        ids = torch.zeros(len(rows), width, dtype=torch.long, device=dev)  # [B, L], left-padded
        mask = torch.zeros_like(ids)
        for k, r in enumerate(rows):
            ids[k, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[k, width - len(r) :] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, L] positions from each row's first real token
        with torch.inference_mode(), lm.stack.lock, lm.stack.timed():
            out = lm.model(
                input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1, use_cache=False
            )
            logits = out.logits[:, -1].float()  # [B, rows] at the answer position
        scores = expected_digit_score(logits, digits).tolist()
        out, k = [], 0
        for cs in candidates:
            out.append(scores[k : k + len(cs)])
            k += len(cs)
        return out
