"""The target scorer as a client of a vLLM server (``TargetScorer`` of :mod:`specs_rl.interfaces`, as
:class:`specs_rl.hf.scorer.HFScorer` is in process).

One request per prefix holds all its distinct candidates as token-id prompts (``prefix + candidate``) with
``prompt_logprobs``; only the candidate's positions are read. Prompt log-probs are the model's raw
``log softmax(logits)`` whatever the request's temperature. (vLLM 0.32 does not read the prefix cache for a request
that asks for prompt log-probs, so each candidate's prefix is recomputed on the server.)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from specs_rl.types import Candidate, Trace
from specs_rl.vllm.client import CallTimer, Endpoint, ServedClient, ServerError, choices_of, logprob_of
from specs_rl.vllm.sampler import PromptFormat


class VLLMScorer:
    """``TargetScorer``: target log-probs of given steps, one request per prefix over all its distinct candidates."""

    def __init__(self, client: ServedClient, ep: Endpoint, fmt: PromptFormat) -> None:
        self.client = client
        self.ep = ep
        self.fmt = fmt
        self.stats: dict[str, Any] = {"calls": 0, "call_s": 0.0}

    def score(
        self, prefixes: Sequence[Trace], candidates: Sequence[Sequence[Candidate]]
    ) -> list[list[tuple[float, ...]]]:
        with CallTimer(self.stats):
            jobs = [
                functools.partial(self._one, self.fmt.ids(t)[1], cs) for t, cs in zip(prefixes, candidates)
            ]
            return self.client.map(jobs)

    def _one(self, ids: tuple[int, ...], cands: Sequence[Candidate]) -> list[tuple[float, ...]]:
        uniq = list(dict.fromkeys(c.token_ids for c in cands if c.token_ids))
        if not uniq:
            return [() for _ in cands]
        body = {
            "model": self.ep.model,
            "prompt": [list(ids) + list(u) for u in uniq],
            "max_tokens": 1,
            "temperature": 0.0,
            "prompt_logprobs": 0,
        }
        data = self.client.request(self.ep, "POST", "/v1/completions", body)
        got: dict[tuple[int, ...], tuple[float, ...]] = {}
        for k, (u, ch) in enumerate(zip(uniq, choices_of(self.ep, data, len(uniq)))):
            plp = ch.get("prompt_logprobs")
            if not isinstance(plp, list) or len(plp) != len(ids) + len(u):
                raise ServerError(
                    f"{self.ep.part}: the server at {self.ep.url} returned no prompt log-probs for candidate {k} "
                    f"(got {type(plp).__name__} of {len(plp) if isinstance(plp, list) else 0} entries, expected "
                    f"{len(ids) + len(u)})"
                )
            lps = []
            for t, tok in enumerate(u):
                entry = plp[len(ids) + t]
                item = entry.get(str(tok)) if isinstance(entry, dict) else None
                x = logprob_of(item.get("logprob") if isinstance(item, dict) else None)
                if x is None:
                    raise ServerError(
                        f"{self.ep.part}: the server at {self.ep.url} returned a missing or malformed prompt "
                        f"log-prob for token {tok} at position {len(ids) + t} of candidate {k}: {str(entry)[:80]}"
                    )
                lps.append(x)
            got[u] = tuple(lps)
        return [got[c.token_ids] if c.token_ids else () for c in cands]
