"""A transformer body with a store of cached prefix states, run in batches through the cascade attention.

A **state** is the KV cache of a token sequence ``ids`` (the prompt and the accepted steps) plus what the caller
reads there: the next-token logits (causal LMs) or the rewards at the step ends (PRMs). States are kept per problem
(keyed by the prompt's ids) and found again by the token ids of the next request: an exact hit is free, otherwise
the longest stored state whose ids are a prefix of the request is extended by the missing tokens only, all
requests of a call in one batched forward ("catch-up"). States created from a batched pass keep *views* of that
pass's suffix buffer (no copy) until they are used as a prefix, when their KV is concatenated once into a
contiguous tensor (``materialize``, O(prefix) per used prefix per call, not per candidate or per token).

Eviction: after each call, a problem's entries are replaced by the prefixes of that call plus the new candidate
states of that call; problems beyond ``cache_prompts`` are dropped least-recently-used first. Memory is therefore
bounded by (prefixes + candidates per call) per cached problem.

Thread safety: every public operation of a model holds that model's lock; the attention context is thread-local,
so two models can run in two threads.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from specs_rl.hf.cascade import (
    CascadeContext,
    active,
    cascade_calls,
    make_suffix_cache,
    suffix_bias,
    use_cascade,
)


@dataclass(eq=False)
class State:
    """KV cache of ``ids`` (own storage ``kv``, or a ``parent`` plus a segment ``seg`` of views) and readouts."""

    ids: tuple[int, ...]
    parent: State | None = None
    seg: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer [H_kv, k, D]
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer [H_kv, len(ids), D]
    logits: torch.Tensor | None = None  # [V_rows] next-token logits after ids (causal LMs)
    rewards: tuple[float, ...] = ()  # reward at each step end inside ids (PRMs)
    extra: dict = field(default_factory=dict)

    def materialize(self) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Contiguous per-layer KV of ``ids`` (``None`` for the empty sequence); computed once, then cached."""
        if self.kv is None and self.seg is not None:
            base = self.parent.materialize() if self.parent is not None else None
            if base is None:
                self.kv = [(k.clone(), v.clone()) for k, v in self.seg]
            else:
                self.kv = [
                    (torch.cat([bk, k], dim=1), torch.cat([bv, v], dim=1))
                    for (bk, bv), (k, v) in zip(base, self.seg)
                ]
            self.parent, self.seg = None, None
        return self.kv


EMPTY = ()
ROOT = State(EMPTY)  # the empty sequence: no KV, never mutated, shared by every problem


def row_state(prefix: State, tokens: Sequence[int], suffix: Any, row: int) -> State:
    """The state of ``prefix.ids + tokens`` left by row ``row`` of a batched pass over ``prefix``.

    Its KV is ``prefix``'s followed by that row's first ``len(tokens)`` entries of the ``suffix`` cache (views,
    concatenated on first use as a prefix). With ``suffix=None`` (a pass without cascade) it holds no KV.
    """
    seg = suffix.row_kv(row, len(tokens)) if suffix is not None else None
    return State(prefix.ids + tuple(tokens), parent=prefix if seg is not None else None, seg=seg)


def group_by_state(states: Sequence[State]) -> tuple[list[State], list[int]]:
    """``(groups, row_group)``: the distinct states (by identity, in order of first appearance) and the index in
    ``groups`` of each of ``states``, so that ``states[r] is groups[row_group[r]]``."""
    groups: list[State] = []
    index: dict[int, int] = {}
    row_group = []
    for st in states:
        if id(st) not in index:
            index[id(st)] = len(groups)
            groups.append(st)
        row_group.append(index[id(st)])
    return groups, row_group


class CachedStack:
    """``model``'s body (``base_model``) driven with cached prefixes; counts the time spent in forward passes."""

    def __init__(self, model: torch.nn.Module, *, cache_prompts: int = 16, self_check: bool = True) -> None:
        self.model = model
        self.base = getattr(model, model.base_model_prefix, None) or model
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.num_layers = int(model.config.get_text_config().num_hidden_layers)
        params = inspect.signature(self.base.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.cache_prompts = cache_prompts
        self.lock = threading.RLock()
        self.store: OrderedDict[Hashable, dict[tuple[int, ...], State]] = OrderedDict()
        self.stats = {"forward_s": 0.0, "forward_calls": 0, "forward_tokens": 0}
        self._dummy_mask = torch.zeros(1, 1, 1, 1, device=self.device, dtype=self.dtype)
        use_cascade(model)
        self.cascade = True
        if self_check:
            self.cascade = self._self_check()

    # -- timing -----------------------------------------------------------------------------------------------
    def _now(self) -> float:
        # This thread's current stream only: inside a concurrent scoring section (specs_rl.hf.streams) the other
        # thread's stream keeps running, and a device-wide synchronize would serialize the two.
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        return time.perf_counter()

    def timed(self) -> _Timer:
        """``with stack.timed(): ...`` adds the elapsed time to ``stats['forward_s']`` (head matmuls count too)."""
        return _Timer(self)

    # -- forward passes ---------------------------------------------------------------------------------------
    def forward(
        self,
        ctx: CascadeContext,
        suffix,
        input_ids: torch.Tensor,  # [B, q]
        positions: torch.Tensor,  # [B, q]
        valid: torch.Tensor | None,  # [B, s0 + q] bool, None = every suffix entry valid
    ) -> torch.Tensor:  # [B, q, hidden]
        q = input_ids.shape[1]
        if valid is None and q == 1:
            ctx.suffix_bias = None  # one query at the end of every row sees the whole suffix
        else:
            if valid is None:
                valid = torch.ones(
                    input_ids.shape[0], suffix.length + q, dtype=torch.bool, device=self.device
                )
            ctx.suffix_bias = suffix_bias(valid, suffix.length, q)
        with self.timed(), active(ctx):
            out = self.base(
                input_ids=input_ids,
                attention_mask=self._dummy_mask,
                position_ids=positions,
                use_cache=True,
                **{self.cache_kw: suffix},
            )
        self.stats["forward_calls"] += 1
        self.stats["forward_tokens"] += int(input_ids.numel())
        return out.last_hidden_state

    def plain_hidden(self, rows: Sequence[Sequence[int]]) -> torch.Tensor:
        """Hidden states of whole sequences, no cache (right-padded batch, 2D mask): ``[B, L, hidden]``."""
        L = max(len(r) for r in rows)  # noqa: N806
        ids = torch.tensor([list(r) + [0] * (L - len(r)) for r in rows], dtype=torch.long, device=self.device)
        mask = torch.tensor(
            [[1] * len(r) + [0] * (L - len(r)) for r in rows], dtype=torch.long, device=self.device
        )
        with self.timed():
            out = self.base(input_ids=ids, attention_mask=mask, use_cache=False)
        self.stats["forward_calls"] += 1
        self.stats["forward_tokens"] += int(ids.numel())
        return out.last_hidden_state

    def context(self, prefixes: Sequence[State]) -> CascadeContext:
        """The cascade context of a batch whose row ``r`` continues ``prefixes[r]``: each distinct prefix is one
        group, its KV materialized once however many rows continue it."""
        groups, row_group = group_by_state(prefixes)
        return CascadeContext.build([g.materialize() for g in groups], row_group, self.device)

    def run_rows(
        self, prefixes: Sequence[State], row_tokens: Sequence[Sequence[int]]
    ) -> tuple[torch.Tensor, Any]:
        """One batched pass: row ``r`` continues ``prefixes[r]`` with ``row_tokens[r]`` (right-padded).

        Returns ``(hidden [B, q, hidden], suffix cache or None)``; ``hidden[r, j]`` is the state after
        ``row_tokens[r][j]``, and :func:`row_state` makes a row's state from the suffix cache. Without cascade
        support the rows are recomputed from scratch (and there is no suffix cache).
        """
        B = len(row_tokens)  # noqa: N806
        q = max(len(t) for t in row_tokens)
        start = torch.tensor([len(p.ids) for p in prefixes], device=self.device)  # [B]
        if not self.cascade:
            h = self.plain_hidden([tuple(p.ids) + tuple(t) for p, t in zip(prefixes, row_tokens)])
            idx = (start[:, None] + torch.arange(q, device=self.device)[None, :]).clamp_(max=h.shape[1] - 1)
            return h.gather(1, idx[:, :, None].expand(B, q, h.shape[2])), None
        ctx = self.context(prefixes)
        suffix = make_suffix_cache(self.num_layers, q)
        ids = torch.tensor(
            [list(t) + [0] * (q - len(t)) for t in row_tokens], dtype=torch.long, device=self.device
        )  # [B, q]
        positions = start[:, None] + torch.arange(q, device=self.device)[None, :]  # [B, q]
        lengths = torch.tensor([len(t) for t in row_tokens], device=self.device)  # [B]
        valid = torch.arange(q, device=self.device)[None, :] < lengths[:, None]  # [B, q]
        return self.forward(ctx, suffix, ids, positions, valid), suffix

    # -- the store ----------------------------------------------------------------------------------------------
    def find(
        self, pkey: Hashable, ids: tuple[int, ...], usable: Callable[[State, bool], bool]
    ) -> tuple[State | None, State]:
        """``(exact, best)``: the stored state of exactly ``ids`` if ``usable(state, exact=True)``, and the longest
        usable stored state whose ids are a proper prefix of ``ids`` (or the empty state)."""
        if not ids:
            return ROOT, ROOT  # the empty sequence (nothing to read there)
        entries = self.store.get(pkey) or {}
        exact = entries.get(ids)
        if exact is not None and usable(exact, True):
            return exact, exact
        best = None
        for key, st in entries.items():
            n = len(key)
            if n < len(ids) and (best is None or n > len(best.ids)) and ids[:n] == key and usable(st, False):
                best = st
        return None, best if best is not None else ROOT

    def catch_up(
        self, requests: Sequence[tuple[Hashable, tuple[int, ...]]], usable: Callable[[State, bool], bool]
    ) -> tuple[list[State], list[tuple[State, State, torch.Tensor]]]:
        """States for every ``(pkey, ids)``: exact hits, else the best stored prefix extended by the missing tokens
        (all in one batched pass).

        Returns ``(states, made)``: ``made`` lists ``(new, best, hidden [k, hidden])`` for each state this pass
        created (``best``: the prefix it extends by ``k`` tokens), whose readouts the caller fills.
        """
        out: list[State | None] = [None] * len(requests)
        todo: dict[tuple[Hashable, tuple[int, ...]], tuple[State, list[int]]] = {}
        for i, (pkey, ids) in enumerate(requests):
            exact, best = self.find(pkey, ids, usable)
            if exact is not None:
                out[i] = exact
            else:
                todo.setdefault((pkey, ids), (best, []))[1].append(i)
        made = []
        if todo:
            bests = [best for best, _ in todo.values()]
            missing = [ids[len(best.ids) :] for (_, ids), best in zip(todo, bests)]
            hidden, suffix = self.run_rows(bests, missing)
            for r, (best, idx) in enumerate(todo.values()):
                new = row_state(best, missing[r], suffix, r)
                made.append((new, best, hidden[r, : len(missing[r])]))
                for i in idx:
                    out[i] = new
        return out, made  # type: ignore[return-value]

    def retain(self, kept: Iterable[tuple[Hashable, State]]) -> None:
        """Replace the entries of each problem named in ``kept`` by the states paired with it (in order); evict
        least recently used problems."""
        keep: dict[Hashable, list[State]] = {}
        for pkey, st in kept:
            keep.setdefault(pkey, []).append(st)
        for pkey, states in keep.items():
            self.store[pkey] = {st.ids: st for st in states}
            self.store.move_to_end(pkey)
        while len(self.store) > max(self.cache_prompts, len(keep)):
            oldest = next(iter(self.store))
            if oldest in keep:
                break
            del self.store[oldest]

    def clear(self) -> None:
        with self.lock:
            self.store.clear()

    # -- the self check ---------------------------------------------------------------------------------------
    def _self_check(self) -> bool:
        """True when the model routes attention through the cascade: every layer calls it (counted), and a split
        forward (4 cached tokens, then 3 and 2 more in two rows) matches a plain one (float32: to 1e-3 of the
        largest activation; lower precisions: only gross errors, as rounding grows with depth)."""
        vocab = int(self.model.get_input_embeddings().weight.shape[0])
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, min(vocab, 200), (7,), generator=g).tolist()
        before = cascade_calls()
        with torch.inference_mode():
            ref = self.plain_hidden([ids])[0].float()  # [7, hidden]
            hid, suffix = self.run_rows([ROOT], [ids[:4]])
            first = row_state(ROOT, ids[:4], suffix, 0)
            hid2, _ = self.run_rows([first, first], [ids[4:], ids[4:6]])
        routed = cascade_calls() - before == 2 * self.num_layers
        got = torch.cat([hid[0].float(), hid2[0].float()])
        tol = 1e-3 if self.dtype == torch.float32 else 0.25
        scale = ref.abs().max().clamp_min(1.0)
        err = max(float((got - ref).abs().max()), float((hid2[1, :2].float() - ref[4:6]).abs().max()))
        self.stats.update(forward_s=0.0, forward_calls=0, forward_tokens=0)
        return routed and err / float(scale) < tol


class _Timer:
    def __init__(self, stack: CachedStack) -> None:
        self.stack = stack

    def __enter__(self) -> None:
        self.t0 = self.stack._now()

    def __exit__(self, *exc: object) -> None:
        self.stack.stats["forward_s"] += self.stack._now() - self.t0
