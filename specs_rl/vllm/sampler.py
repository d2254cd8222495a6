"""Draft and target samplers as clients of vLLM servers (``StepSampler`` of :mod:`specs_rl.interfaces`, exactly as
:class:`specs_rl.hf.sampler.HFSampler` is in process); the scorer and the PRM are :mod:`specs_rl.vllm.scorer` and
:mod:`specs_rl.vllm.prm`.

Prompts and steps are token ids throughout. A prompt is tokenized here with the model's own tokenizer by the rule both
backends share (:class:`specs_rl.models.prompts.GeneratorPrompts`: the chat template with a generation prompt when
``chat_template`` is on and the tokenizer has one, else the plain encoding with special tokens), and a prefix is sent
as ``prompt ids + the response's token ids``: the server never re-tokenizes text, so a prefix never drifts, and the
in-process and served backends see the same ids. Draft and target must share the tokenizer.

**Sampling** (:class:`VLLMSampler`): one ``/v1/completions`` request per prefix with ``n`` choices; every sampling
parameter is sent explicitly (temperature, top-p, top-k off, no penalties), so a server's generation-config defaults
do not change the law. A step stops at the step delimiter (``stop``, the delimiter kept) or at an end-of-sequence
token (``stop_token_ids``: the tokenizer's and the generation config's, as in the HF backend; the token is kept in
``token_ids`` so the target scores it). The step text is decoded here from the token ids (the shared
:class:`~specs_rl.models.text.TokenText`), so it holds the whole last token as the HF backend's does. ``logprobs`` are
the server's **processed** log-probabilities (``--logprobs-mode processed_logprobs``): those of the distribution
actually sampled from, ``log softmax(logits / T)`` cut to the top-p nucleus and renormalized; at ``T = 0`` (greedy)
they are 0, as in the HF backend. ``finished``: end-of-sequence, ``to_end``, or the response limit
(``max_tokens``, or the server's context ``max_model_len`` less one position, kept free so the scorer can read the
step), as the HF sampler says.

**Seeds**: each call draws one integer from each prefix's generator (one per distinct generator, as the HF backend
does: :func:`specs_rl.interfaces.prefix_seeds`); the request of a prefix carries ``seed = hash(call seed, prefix ids,
occurrence of the prefix among its generator's prefixes)`` (:func:`specs_rl.models.seeds.request_seed`), and vLLM
gives choice ``j`` the seed ``seed + j``. A prefix's steps therefore depend only on its generator's state and the
prefix, never on the other problems in flight.

Every answer is checked: a missing, non-numeric, positive or non-finite log-probability, a wrong number of choices,
is a :class:`~specs_rl.vllm.client.ServerError` naming the part and the server, never a silent NaN.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from specs_rl.interfaces import Generators, prefix_seeds
from specs_rl.models.prompts import GeneratorPrompts
from specs_rl.models.seeds import request_seed
from specs_rl.models.text import TokenText
from specs_rl.types import Candidate, Problem, Trace
from specs_rl.vllm.client import CallTimer, Endpoint, ServedClient, ServerError, choices_of, logprob_of

SEED_BITS = 62  # vLLM seeds are int64 and choice j gets seed + j: stay well inside


class PromptFormat:
    """The generators' tokenizer, its token text, and their prompts (:class:`specs_rl.models.prompts.GeneratorPrompts`,
    the rule the in-process backend follows too)."""

    def __init__(
        self, tokenizer: Any, *, chat_template: bool = True, system_prompt: str | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.prompts = GeneratorPrompts(tokenizer, chat_template=chat_template, system_prompt=system_prompt)
        self.text = TokenText(tokenizer, len(tokenizer))

    def prompt_ids(self, problem: Problem) -> tuple[int, ...]:
        return self.prompts.ids(problem)

    def ids(self, trace: Trace) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(prompt ids, prompt ids + response ids)``."""
        pids = self.prompt_ids(trace.problem)
        return pids, pids + trace.token_ids


class VLLMSampler:
    """``StepSampler`` over a vLLM server (the drafter, or the target in target mode)."""

    def __init__(
        self,
        client: ServedClient,
        ep: Endpoint,
        fmt: PromptFormat,
        *,
        eos_ids: frozenset[int],
        max_model_len: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        delimiter: str = "\n\n",
        max_step_tokens: int = 512,
        max_tokens: int = 2048,
        ignore_eos: bool = False,
        seed: bool = True,
    ) -> None:
        if not delimiter:
            raise ValueError("the step delimiter must be non-empty")
        self.client = client
        self.ep = ep
        self.fmt = fmt
        self.eos_ids = eos_ids
        self.max_model_len = max_model_len
        self.temperature = temperature
        self.top_p = top_p
        self.delimiter = delimiter
        self.max_step_tokens = max_step_tokens
        self.max_tokens = max_tokens
        self.ignore_eos = ignore_eos
        self.seed = seed
        self.stats: dict[str, Any] = {"calls": 0, "call_s": 0.0}

    def propose(
        self, prefixes: Sequence[Trace], n: int, generators: Generators, *, to_end: bool = False
    ) -> list[list[Candidate]]:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not prefixes:
            return []
        with CallTimer(self.stats):
            keys = [self.fmt.ids(trace) for trace in prefixes]
            seeds = prefix_seeds(generators, [ids for _, ids in keys])  # (call seed, occurrence) per prefix
            jobs = []
            for (pids, ids), (call_seed, occ) in zip(keys, seeds):
                left = min(self.max_tokens - (len(ids) - len(pids)), self.max_model_len - 1 - len(ids))
                hard = max(left, 1)
                limit = hard if to_end else min(hard, self.max_step_tokens)
                seed = request_seed(call_seed, ids, occ, bits=SEED_BITS)
                jobs.append(functools.partial(self._one, ids, n, seed, hard, limit, to_end))
            return self.client.map(jobs)

    def body(self, ids: Sequence[int], n: int, seed: int, limit: int, to_end: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.ep.model,
            "prompt": list(ids),
            "n": n,
            "max_tokens": limit,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": -1,
            "min_p": 0.0,
            "repetition_penalty": 1.0,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "logprobs": 0,
            "return_token_ids": True,
            "ignore_eos": self.ignore_eos,
            "stop_token_ids": [] if self.ignore_eos else sorted(self.eos_ids),
            "stop": [] if to_end else [self.delimiter],
            "include_stop_str_in_output": True,
            "skip_special_tokens": False,
        }
        if self.seed:
            body["seed"] = seed
        return body

    def _one(
        self, ids: tuple[int, ...], n: int, seed: int, hard: int, limit: int, to_end: bool
    ) -> list[Candidate]:
        data = self.client.request(self.ep, "POST", "/v1/completions", self.body(ids, n, seed, limit, to_end))
        out = []
        for k, ch in enumerate(choices_of(self.ep, data, n)):
            toks = ch.get("token_ids")
            if not isinstance(toks, list) or not toks or not all(isinstance(t, int) for t in toks):
                raise ServerError(
                    f"{self.ep.part}: the server at {self.ep.url} returned no token ids for choice {k} "
                    "(a vLLM server answers them to return_token_ids: true)"
                )
            raw = (
                (ch.get("logprobs") or {}).get("token_logprobs")
                if isinstance(ch.get("logprobs"), dict)
                else None
            )
            lps = [logprob_of(x) for x in raw] if isinstance(raw, list) else []
            if len(lps) != len(toks) or any(x is None for x in lps):
                raise ServerError(
                    f"{self.ep.part}: the server at {self.ep.url} returned missing or malformed log-probs for choice "
                    f"{k} ({len(toks)} tokens, log-probs {str(raw)[:80]}); expected one finite log-probability <= 0 "
                    "per token"
                )
            if ch.get("finish_reason") not in ("stop", "length"):
                raise ServerError(
                    f"{self.ep.part}: the server at {self.ep.url} ended choice {k} with finish_reason "
                    f"{ch.get('finish_reason')!r}"
                )
            if self.temperature == 0:
                lps = [0.0] * len(toks)  # greedy: a point mass, as the HF backend reports it
            finished = (toks[-1] in self.eos_ids and not self.ignore_eos) or to_end or len(toks) >= hard
            out.append(Candidate(tuple(toks), self.fmt.text.text(toks), tuple(lps), finished))  # type: ignore[arg-type]
        return out
