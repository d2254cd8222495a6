"""SpecReason's target judge over a vLLM server: one ``/v1/completions`` request per prefix holding the scoring
prompts of its steps (:func:`specs_rl.models.judge.judge_prompt_text`, the Hugging Face judge's text), each asking for
one token restricted to the ten digits (``allowed_token_ids``) with their log-probs (``logprobs: 10``).

The target server runs with ``--logprobs-mode processed_logprobs`` (:mod:`specs_rl.vllm.server`): the returned
log-probs are those of the distribution sampled from, after the digit mask, at temperature 1: ``log softmax`` over
the digits, the Hugging Face judge's renormalized digit law. The score is ``Σ_d d · p(d)`` over the digits returned,
renormalized (a server started with raw log-probs returns the unmasked top 10: the digits among them are
renormalized, as the authors' ``process_logprobs`` does; none among them is a :class:`ServerError`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

from specs_rl.models.judge import JudgePrompt
from specs_rl.types import Candidate, Trace
from specs_rl.vllm.client import Endpoint, ServedClient, ServerError


class VLLMJudge:
    """``StepJudge`` over the target's vLLM server."""

    def __init__(
        self,
        client: ServedClient,
        ep: Endpoint,
        tokenizer: Any,
        *,
        prompt: str,
        answer_prefix: str,
        chat_template: bool = True,
        system_prompt: str | None = None,
    ) -> None:
        self.client = client
        self.ep = ep
        self.format = JudgePrompt(
            tokenizer,
            prompt=prompt,
            answer_prefix=answer_prefix,
            chat_template=chat_template,
            system_prompt=system_prompt,
        )

    def judge(
        self, prefixes: Sequence[Trace], candidates: Sequence[Sequence[Candidate]]
    ) -> list[list[float]]:
        jobs = [functools.partial(self._one, t, cs) for t, cs in zip(prefixes, candidates)]
        return self.client.map(jobs)

    def _one(self, trace: Trace, cands: Sequence[Candidate]) -> list[float]:
        if not cands:
            return []
        body = {
            "model": self.ep.model,
            "prompt": [self.format.ids(trace, c) for c in cands],
            "max_tokens": 1,
            "temperature": 1.0,
            "top_p": 1.0,
            "top_k": -1,
            "min_p": 0.0,
            "repetition_penalty": 1.0,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "logprobs": 10,
            "allowed_token_ids": self.format.digits,
            "return_tokens_as_token_ids": True,
            "skip_special_tokens": False,
        }
        data = self.client.request(self.ep, "POST", "/v1/completions", body)
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or len(choices) != len(cands):
            got = len(choices) if isinstance(choices, list) else "no"
            raise ServerError(
                f"{self.ep.part}: the judge request to {self.ep.url} got {got} choices, expected {len(cands)}"
            )
        out = []
        for k, ch in enumerate(sorted(choices, key=lambda c: int(c.get("index", 0)))):
            tops = (
                (ch.get("logprobs") or {}).get("top_logprobs")
                if isinstance(ch.get("logprobs"), dict)
                else None
            )
            top = tops[0] if isinstance(tops, list) and tops and isinstance(tops[0], dict) else {}
            lps = {}
            for d, tok in enumerate(self.format.digits):
                x = top.get(f"token_id:{tok}")
                if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x):
                    lps[d] = float(x)
            if not lps:
                raise ServerError(
                    f"{self.ep.part}: the judge request to {self.ep.url} returned no digit log-probs for step {k} "
                    f"({str(top)[:80]}); start the target with --logprobs-mode processed_logprobs"
                )
            m = max(lps.values())
            w = {d: math.exp(x - m) for d, x in lps.items()}
            out.append(sum(d * p for d, p in w.items()) / sum(w.values()))
        return out
