"""The PRM of ``backend: vllm``: one served by vLLM's pooling API (:class:`VLLMRewardModel`), or an in-process one
metered as model work (:class:`MeteredRewardModel`, for the PRMs vLLM cannot serve; the run layer builds it).

A served PRM reads ``/pooling`` over the PRM's own encoding of prefix + candidate
(:class:`specs_rl.models.prm_format.PrmEncoding`, the encoding the in-process PRM and the PRM trainer use) at the step
separators (``step`` pooling: one probability pair per step tag) or at every token (``all`` pooling: what a
``prefix_min`` reading needs), and aggregates the step rewards as every PRM does
(:func:`specs_rl.models.prm_format.aggregate_rewards`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Any

from specs_rl.models.prm_format import PrmFormat, aggregate_rewards, check_aggregate, prefix_min_rewards
from specs_rl.models.prm_kinds import PrmEncoding
from specs_rl.types import Candidate, Problem, Trace
from specs_rl.vllm.client import BusyMeter, CallTimer, Endpoint, ServedClient, ServerError
from specs_rl.vllm.layout import use_threads


class VLLMRewardModel:
    """``RewardModel`` over a PRM served by vLLM's pooling API, read as the in-process PRM reads one (same encoding,
    same step rewards, same aggregation)."""

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
        check_aggregate(aggregate)
        if fmt.kind not in ("token_classification", "qwen_prm"):
            raise ValueError(
                f"a served PRM must be a token-classification PRM or kind qwen_prm, got kind {fmt.kind!r}"
            )
        self.client = client
        self.ep = ep
        self.tokenizer = tokenizer
        self.fmt = fmt
        self.aggregate = aggregate
        self.encoding = PrmEncoding(
            tokenizer, fmt, prompt_field=prompt_field, chat=chat, system_prompt=system_prompt
        )
        self.text = self.encoding.text  # how the PRM's kind writes the text (StepText)
        self.sep = fmt.step_separator
        self.sep_ids = self.encoding.sep_ids
        self.pooling = resolve_pooling(pooling, fmt, self.sep_ids)
        self.step_tag_id = self.sep_ids[-1]
        self.stats: dict[str, Any] = {"calls": 0, "call_s": 0.0}

    # -- the encoding (:class:`~specs_rl.models.prm_format.PrmEncoding`, as the in-process PRM) -------------------
    def prompt_text(self, problem: Problem) -> str:
        return self.encoding.prompt_text(problem)

    def prompt_ids(self, problem: Problem) -> tuple[int, ...]:
        return self.encoding.prompt_ids(problem)

    def step_ids(self, text: str, first: bool = False) -> tuple[int, ...]:
        """As the in-process PRM (the kind's text, :mod:`specs_rl.models.prm_kinds`)."""
        return self.encoding.step_ids(text, first)

    def encode(self, trace: Trace, extra: str | None = None) -> tuple[tuple[int, ...], list[int], int]:
        """``(ids, step ends, prompt length)`` of a partial response, extended by the step text ``extra``."""
        pids, ids, ends = self.encoding.encode(trace, extra)
        return ids, ends, len(pids)

    # -- rewards --------------------------------------------------------------------------------------------------
    def score(
        self, prefixes: Sequence[Trace], candidates: Sequence[Sequence[Candidate]]
    ) -> list[list[float]]:
        with CallTimer(self.stats):
            return self.client.map(
                [functools.partial(self._one, t, cs) for t, cs in zip(prefixes, candidates)]
            )

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
            got[text] = min(max(aggregate_rewards(steps, self.aggregate), 0.0), 1.0)
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
    """An in-process PRM whose calls count as busy (model work, not client work) on the client's meter, run with
    ``threads`` torch threads (the core layout's, :mod:`specs_rl.vllm.layout`; None: torch's own)."""

    def __init__(self, prm: Any, meter: BusyMeter, threads: int | None = None) -> None:
        self.prm = prm
        self.meter = meter
        self.threads = threads
        self.stats: dict[str, Any] = {"calls": 0, "call_s": 0.0, "cpu_s": 0.0}

    def score(
        self, prefixes: Sequence[Trace], candidates: Sequence[Sequence[Candidate]]
    ) -> list[list[float]]:
        if self.threads is not None:
            use_threads(self.threads)
        with CallTimer(self.stats):
            self.meter.enter()
            c0 = time.thread_time()
            try:
                return self.prm.score(prefixes, candidates)
            finally:
                self.stats["cpu_s"] += time.thread_time() - c0
                self.meter.exit()
