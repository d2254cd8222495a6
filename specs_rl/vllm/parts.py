"""Draft, target sampler, target scorer and PRM as clients of vLLM servers, implementing :mod:`specs_rl.interfaces`
exactly as the Hugging Face backend's parts do.

Prompts and steps are token ids throughout. A prompt is tokenized here with the model's own tokenizer by the rule of
the Hugging Face backend (:meth:`specs_rl.hf.lm.HFLM.prompt_ids`: the chat template with a generation prompt when
``chat_template`` is on and the tokenizer has one, else the plain encoding with special tokens), and a prefix is sent
as ``prompt ids + the response's token ids``: the server never re-tokenizes text, so a prefix never drifts, and the
in-process and served backends see the same ids. Draft and target must share the tokenizer.

**Sampling** (:class:`VLLMSampler`): one ``/v1/completions`` request per prefix with ``n`` choices; every sampling
parameter is sent explicitly (temperature, top-p, top-k off, no penalties), so a server's generation-config defaults
do not change the law. A step stops at the step delimiter (``stop``, the delimiter kept) or at an end-of-sequence
token (``stop_token_ids``: the tokenizer's and the generation config's, as in the HF backend; the token is kept in
``token_ids`` so the target scores it). The step text is decoded here from the token ids (the HF backend's
:class:`~specs_rl.hf.text.TokenText`), so it holds the whole last token as the HF backend's does. ``logprobs`` are
the server's **processed** log-probabilities (``--logprobs-mode processed_logprobs``): those of the distribution
actually sampled from, ``log softmax(logits / T)`` cut to the top-p nucleus and renormalized; at ``T = 0`` (greedy)
they are 0, as in the HF backend. ``finished``: end-of-sequence, ``to_end``, or the response limit
(``max_tokens``, or the server's context ``max_model_len`` less one position, kept free so the scorer can read the
step), as :class:`~specs_rl.hf.lm.HFSampler` says.

**Seeds**: each call draws one integer from each prefix's generator (one per distinct generator, as the HF backend
does: :func:`specs_rl.interfaces.prefix_seeds`); the request of a prefix carries ``seed = hash(call seed, prefix ids,
occurrence of the prefix among its generator's prefixes)``, and vLLM gives choice ``j`` the seed ``seed + j``. A
prefix's steps therefore depend only on its generator's state and the prefix, never on the other problems in
flight.

**Scoring** (:class:`VLLMScorer`): one request per prefix holding all its distinct candidates as token-id prompts
(``prefix + candidate``) with ``prompt_logprobs``; only the candidate's positions are read. Prompt log-probs are the
model's raw ``log softmax(logits)`` whatever the request's temperature. (vLLM 0.32 does not read the prefix cache
for a request that asks for prompt log-probs, so each candidate's prefix is recomputed on the server.)

**PRM** (:class:`VLLMRewardModel`): ``/pooling`` over the PRM's own encoding of prefix + candidate (the encoding of
:mod:`specs_rl.prm_format`, built as :class:`specs_rl.hf.prm.HFRewardModel` builds it), read at the step
separators (``step`` pooling: one probability pair per step tag) or at every token (``all`` pooling: what a
``prefix_min`` reading needs).

Every answer is checked: a missing, non-numeric, positive or non-finite log-probability, a wrong number of choices or
probability pairs, is a :class:`~specs_rl.vllm.client.ServerError` naming the part and the server, never a silent
NaN.
"""

from __future__ import annotations

import functools
import hashlib
import math
import time
from array import array
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from specs_rl.interfaces import Generators, WallClock, prefix_seeds
from specs_rl.prm_format import PrmFormat, prefix_min_rewards
from specs_rl.prm_kinds import StepText, prompt_ids, step_ids
from specs_rl.prompts import generator_prompt_ids
from specs_rl.types import Candidate, Problem, Trace
from specs_rl.vllm.client import BusyMeter, Endpoint, ServedClient, ServerError

SEED_MASK = (1 << 62) - 1  # vLLM seeds are int64 and choice j gets seed + j: stay well inside


class CallTimer:
    """Wall seconds and calls of a part's public methods (``stats["call_s"]``, ``stats["calls"]``)."""

    def __init__(self, stats: dict[str, Any]) -> None:
        self.stats = stats

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.stats["call_s"] += time.perf_counter() - self.t0
        self.stats["calls"] += 1


class PromptFormat:
    """A generator tokenizer and the prompt rule of :meth:`specs_rl.hf.lm.HFLM.prompt_ids`."""

    def __init__(
        self, tokenizer: Any, *, chat_template: bool = True, system_prompt: str | None = None
    ) -> None:
        from specs_rl.hf.text import TokenText

        self.tokenizer = tokenizer
        self.chat_template = chat_template and bool(getattr(tokenizer, "chat_template", None))
        self.system_prompt = system_prompt
        self.text = TokenText(tokenizer, len(tokenizer))
        self._prompts: dict[str, tuple[int, ...]] = {}

    def prompt_ids(self, problem: Problem) -> tuple[int, ...]:
        hit = self._prompts.get(problem.prompt)
        if hit is not None:
            return hit
        ids = generator_prompt_ids(
            self.tokenizer, problem, chat_template=self.chat_template, system_prompt=self.system_prompt
        )
        if not ids:
            raise ServerError(f"problem {problem.id!r}: the prompt encodes to no tokens")
        if len(self._prompts) > 4096:
            self._prompts.clear()
        self._prompts[problem.prompt] = ids
        return ids

    def ids(self, trace: Trace) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(prompt ids, prompt ids + response ids)``."""
        pids = self.prompt_ids(trace.problem)
        return pids, pids + trace.token_ids


def request_seed(call_seed: int, ids: Sequence[int], occurrence: int) -> int:
    """The seed of one prefix's sampling request (choice ``j`` gets ``seed + j`` on the server)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(call_seed.to_bytes(8, "little"))
    h.update(array("q", ids).tobytes())
    h.update(occurrence.to_bytes(4, "little"))
    return int.from_bytes(h.digest(), "little") & SEED_MASK


def _logprob(x: Any) -> float | None:
    """A usable log-probability, or None: a finite number <= 0 (1e-6 of rounding above 0 is allowed)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    if not math.isfinite(x) or x > 1e-6:
        return None
    return min(x, 0.0)


def _choices(ep: Endpoint, data: Any, expected: int) -> list[dict[str, Any]]:
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or len(choices) != expected:
        got = len(choices) if isinstance(choices, list) else "no"
        raise ServerError(f"{ep.part}: the server at {ep.url} returned {got} choices, expected {expected}")
    try:
        return sorted(choices, key=lambda c: int(c["index"]))
    except (KeyError, TypeError, ValueError):
        raise ServerError(f"{ep.part}: the server at {ep.url} returned choices without an index") from None


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
                jobs.append(
                    functools.partial(
                        self._one, ids, n, request_seed(call_seed, ids, occ), hard, limit, to_end
                    )
                )
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
        for k, ch in enumerate(_choices(self.ep, data, n)):
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
            lps = [_logprob(x) for x in raw] if isinstance(raw, list) else []
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
        for k, (u, ch) in enumerate(zip(uniq, _choices(self.ep, data, len(uniq)))):
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
                x = _logprob(item.get("logprob") if isinstance(item, dict) else None)
                if x is None:
                    raise ServerError(
                        f"{self.ep.part}: the server at {self.ep.url} returned a missing or malformed prompt "
                        f"log-prob for token {tok} at position {len(ids) + t} of candidate {k}: {str(entry)[:80]}"
                    )
                lps.append(x)
            got[u] = tuple(lps)
        return [got[c.token_ids] if c.token_ids else () for c in cands]


class VLLMRewardModel:
    """``RewardModel`` over a PRM served by vLLM's pooling API, read as :class:`specs_rl.hf.prm.HFRewardModel` reads
    an in-process one (same encoding, same step rewards, same aggregation)."""

    def __init__(
        self,
        client: ServedClient,
        ep: Endpoint,
        tokenizer: Any,
        fmt: PrmFormat,
        *,
        pooling: str,
        aggregate: str = "last",
        prompt_field: str = "problem",
        chat: bool = False,
        system_prompt: str | None = None,
    ) -> None:
        if aggregate not in ("last", "min", "prod"):
            raise ValueError(f"aggregate must be one of last, min, prod; got {aggregate!r}")
        if fmt.kind not in ("token_classification", "qwen_prm"):
            raise ValueError(
                f"a served PRM must be a token-classification PRM or kind qwen_prm, got kind {fmt.kind!r}"
            )
        self.text = StepText(fmt, chat=chat, system_prompt=system_prompt, prompt_field=prompt_field)
        self.text.check(tokenizer)
        self.client = client
        self.ep = ep
        self.tokenizer = tokenizer
        self.fmt = fmt
        self.aggregate = aggregate
        self.prompt_field = prompt_field
        self.chat = chat
        self.system_prompt = system_prompt
        self.sep = fmt.step_separator
        self.sep_ids = tuple(tokenizer(self.sep, add_special_tokens=False)["input_ids"])
        self.pooling = resolve_pooling(pooling, fmt, self.sep_ids)
        self.step_tag_id = self.sep_ids[-1]
        self.stats: dict[str, Any] = {"calls": 0, "call_s": 0.0}
        self._prompts: dict[tuple[str, Any], tuple[int, ...]] = {}
        self._steps: dict[str, tuple[int, ...]] = {}

    # -- the encoding (as HFRewardModel) -------------------------------------------------------------------------
    def prompt_text(self, problem: Problem) -> str:
        return self.text.prompt_text(self.tokenizer, problem)

    def prompt_ids(self, problem: Problem) -> tuple[int, ...]:
        key = (problem.prompt, problem.meta.get("problem"))
        hit = self._prompts.get(key)
        if hit is None:
            hit = self._prompts[key] = prompt_ids(self.text, self.tokenizer, problem)
        return hit

    def step_ids(self, text: str, first: bool = False) -> tuple[int, ...]:
        """As :meth:`specs_rl.hf.prm.HFRewardModel.step_ids` (the kind's text, :mod:`specs_rl.prm_kinds`)."""
        hit = self._steps.get(text)
        if hit is None:
            hit = self._steps[text] = step_ids(self.text, self.tokenizer, text, first)
        if len(self._steps) > 16384:
            self._steps.clear()
        return hit

    def encode(self, trace: Trace, extra: str | None = None) -> tuple[tuple[int, ...], list[int], int]:
        """``(ids, step ends, prompt length)`` of a partial response, extended by the step text ``extra``."""
        pids = self.prompt_ids(trace.problem)
        ids = list(pids)
        ends = []
        for text in [*(s.text for s in trace.steps), *([extra] if extra is not None else [])]:
            ids.extend(self.step_ids(text))
            ends.append(len(ids) - 1)
        return tuple(ids), ends, len(pids)

    # -- rewards --------------------------------------------------------------------------------------------------
    def score(
        self, prefixes: Sequence[Trace], candidates: Sequence[Sequence[Candidate]]
    ) -> list[list[float]]:
        with CallTimer(self.stats):
            return self.client.map(
                [functools.partial(self._one, t, cs) for t, cs in zip(prefixes, candidates)]
            )

    def _agg(self, rewards: Sequence[float]) -> float:
        if self.aggregate == "last":
            return float(rewards[-1])
        if self.aggregate == "min":
            return float(min(rewards))
        return float(math.prod(rewards))

    def _one(self, trace: Trace, cands: Sequence[Candidate]) -> list[float]:
        texts = list(dict.fromkeys(c.text for c in cands))
        if not texts:
            return []
        encoded = [self.encode(trace, t) for t in texts]
        body = {"model": self.ep.model, "input": [list(ids) for ids, _, _ in encoded]}
        data = self.client.request(self.ep, "POST", "/pooling", body)
        rows = data.get("data") if isinstance(data, dict) else None
        if not isinstance(rows, list) or len(rows) != len(encoded):
            got = len(rows) if isinstance(rows, list) else "no"
            raise ServerError(
                f"{self.ep.part}: the server at {self.ep.url} returned {got} pooling results, expected {len(encoded)}"
            )
        rows = sorted(rows, key=lambda r: r.get("index", 0) if isinstance(r, dict) else 0)
        got = {}
        for k, (text, (ids, ends, plen), row) in enumerate(zip(texts, encoded, rows)):
            p = self._probabilities(k, ids, row)
            if self.fmt.step_reward == "prefix_min":
                steps = prefix_min_rewards([p[i] for i in range(len(ids))], plen, ends)
            else:
                steps = [p[e] for e in ends]
            got[text] = min(max(self._agg(steps), 0.0), 1.0)
        return [got[c.text] for c in cands]

    def step_rewards(self, trace: Trace) -> list[float]:
        """The reward of every step of ``trace`` (``specs-rl prm score``), from one pooling request."""
        ids, ends, plen = self.encode(trace)
        data = self.client.request(
            self.ep, "POST", "/pooling", {"model": self.ep.model, "input": [list(ids)]}
        )
        rows = data.get("data") if isinstance(data, dict) else None
        if not isinstance(rows, list) or len(rows) != 1:
            got = len(rows) if isinstance(rows, list) else "no"
            raise ServerError(
                f"{self.ep.part}: the server at {self.ep.url} returned {got} pooling results, expected 1"
            )
        p = self._probabilities(0, ids, rows[0])
        if self.fmt.step_reward == "prefix_min":
            return prefix_min_rewards([p[i] for i in range(len(ids))], plen, ends)
        return [p[e] for e in ends]

    def _probabilities(self, k: int, ids: Sequence[int], row: Any) -> dict[int, float]:
        """``{position: p(positive label)}`` at the positions the server pooled."""
        pairs = row.get("data") if isinstance(row, dict) else None
        if self.pooling == "step":
            positions = [i for i, t in enumerate(ids) if t == self.step_tag_id]
            hint = f'--pooler-config \'{{"tok_pooling_type": "STEP", "step_tag_id": {self.step_tag_id}}}\''
        else:
            positions = list(range(len(ids)))
            hint = '--pooler-config \'{"tok_pooling_type": "ALL"}\''
        if not isinstance(pairs, list) or len(pairs) != len(positions):
            got = len(pairs) if isinstance(pairs, list) else "no"
            raise ServerError(
                f"{self.ep.part}: the server at {self.ep.url} returned {got} probability pairs for input {k} of "
                f"{len(ids)} tokens; {self.pooling} pooling expects {len(positions)} (start it with {hint})"
            )
        out = {}
        label = self.fmt.positive_label
        for pos, pair in zip(positions, pairs):
            x = pair[label] if isinstance(pair, list) and len(pair) > label else None
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0.0 <= float(x) <= 1.0:
                raise ServerError(
                    f"{self.ep.part}: the server at {self.ep.url} returned a malformed probability pair {pair!r} "
                    f"at position {pos} of input {k} (expected probabilities in [0, 1], label {label} present)"
                )
            out[pos] = float(x)
        return out


def resolve_pooling(pooling: str, fmt: PrmFormat, sep_ids: Sequence[int]) -> str:
    """``step`` when the PRM is read at one-token separators, ``all`` otherwise (``auto``); an explicit ``step``
    that cannot hold is an error."""
    can_step = fmt.step_reward == "separator" and len(sep_ids) == 1
    if pooling == "auto":
        return "step" if can_step else "all"
    if pooling == "step" and not can_step:
        why = (
            f"step_reward is {fmt.step_reward}"
            if fmt.step_reward != "separator"
            else f"the separator {fmt.step_separator!r} is {len(sep_ids)} tokens"
        )
        raise ValueError(f"step pooling reads one token per step, but {why}: use pooling all or auto")
    return pooling


class MeteredRewardModel:
    """An in-process PRM whose calls count as busy (model work, not client work) on the client's meter."""

    def __init__(self, prm: Any, meter: BusyMeter) -> None:
        self.prm = prm
        self.meter = meter
        self.stats: dict[str, Any] = {"calls": 0, "call_s": 0.0, "cpu_s": 0.0}

    def score(
        self, prefixes: Sequence[Trace], candidates: Sequence[Sequence[Candidate]]
    ) -> list[list[float]]:
        with CallTimer(self.stats):
            self.meter.enter()
            c0 = time.thread_time()
            try:
                return self.prm.score(prefixes, candidates)
            finally:
                self.stats["cpu_s"] += time.thread_time() - c0
                self.meter.exit()


class PooledWallClock(WallClock):
    """:class:`~specs_rl.interfaces.WallClock` whose concurrent sections (target scoring beside the PRM) run the first
    call in the calling thread and the others on long-lived threads. ``WallClock`` starts a fresh thread pool per
    section; starting a thread cost 34 ms on average here with the 2-core machine loaded (158 sections of 20 toy
    problems: 5.3 s of 26.8 s), which a served run, whose own work is small, would count as the client's."""

    def __init__(self, sync_cuda: bool | None = None, threads: int = 2) -> None:
        super().__init__(sync_cuda)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="specs-rl-section")

    def concurrently(self, *calls: Callable[[], Any]) -> tuple[list[Any], list[float], float]:
        def timed(call: Callable[[], Any]) -> tuple[Any, float]:
            t0 = self.now()
            out = call()
            return out, self.now() - t0

        t0 = self.now()
        rest = [self._pool.submit(timed, c) for c in calls[1:]]
        done = [timed(calls[0])] if calls else []
        done += [f.result() for f in rest]
        return [r for r, _ in done], [dt for _, dt in done], self.now() - t0
