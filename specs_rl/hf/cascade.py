"""Shared-prefix ("cascade") attention over a KV cache split into a prefix part and a per-row suffix part.

Every batched forward of the backend has the same shape: ``G`` prefixes whose keys/values are already cached
(the accepted partial responses), and ``B`` rows, each continuing one of them (the ``n`` candidate steps of a
prefix, or a catch-up of a prefix's missing tokens). A row's keys are ``prefix(g) ∘ suffix(r)``. Instead of copying
the prefix into every row (``n`` copies per step, and ``n`` reads of it per generated token), attention is split:

    (o_A, l_A) = attention of the row's queries over the prefix K_g, V_g   (all rows of group g in one call)
    (o_B, l_B) = attention over the row's own suffix K_r, V_r              (causal inside the suffix)
    out = o_A · exp(l_A - l) + o_B · exp(l_B - l),   l = logaddexp(l_A, l_B)   (l_*: log-sum-exp of the scores)

which is exactly softmax attention over the concatenated keys. The prefix is read once per group per forward, so
a step's memory traffic no longer scales with ``n × prefix length``, and no per-step copies of the prefix are made.

The attention function is registered with transformers as ``"specs_cascade"``; outside an active
:class:`CascadeContext` (a plain ``model(input_ids)`` call) it is ordinary SDPA, so a model set to it behaves as
before everywhere else. The context is thread-local, so two models may run in two threads (target scoring and
PRM scoring run concurrently when ``concurrent_scoring`` is on).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import torch

ATTN_NAME = "specs_cascade"
NEG = -1.0e30  # additive mask value: finite in float32 so an all-masked part yields weight 0, never NaN
MAX_SCORE_ELEMENTS = 1 << 25  # chunk the query axis above this many score entries (bounded temporary memory)

log = logging.getLogger(__name__)
_LOCAL = threading.local()
_REGISTERED = False


def cascade_calls() -> int:
    """How many times this thread's attention went through an active cascade context (a routing check)."""
    return getattr(_LOCAL, "calls", 0)


def register() -> None:
    """Register the cascade attention (and SDPA's mask builder) under ``ATTN_NAME``; idempotent."""
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_NAME, cascade_attention)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)
    _REGISTERED = True


def use_cascade(model: torch.nn.Module) -> None:
    """Switch ``model`` to the cascade attention (SDPA outside a cascade context)."""
    register()
    try:
        model.set_attn_implementation(ATTN_NAME)
    except (AttributeError, ValueError, KeyError):  # older transformers: set the config field directly
        model.config._attn_implementation = ATTN_NAME
    if model.config._attn_implementation != ATTN_NAME:
        model.config._attn_implementation = ATTN_NAME


# ------------------------------------------------------------------------------------------------------------------
# The suffix cache: a growable per-row buffer that transformers' layers write into


def _layer_base():
    from transformers.cache_utils import CacheLayerMixin

    return CacheLayerMixin


def make_suffix_cache(num_layers: int, capacity: int):
    """A transformers ``Cache`` whose layers keep ``[B, H_kv, capacity, D]`` buffers and grow by doubling.

    ``update`` writes the new keys/values in place at ``[length, length + q)`` and returns views of
    ``[0, length + q)``: no per-token concatenation of the whole cache.
    """
    from transformers.cache_utils import Cache

    base = _layer_base()

    class SuffixLayer(base):
        is_sliding = False
        is_croppable = False
        is_compileable = False

        def __init__(self, cap: int) -> None:
            super().__init__()
            self.capacity = max(int(cap), 1)
            self.length = 0

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            b, h, _, d = key_states.shape
            self.device = key_states.device
            self.keys = key_states.new_zeros(b, h, self.capacity, d)
            self.values = value_states.new_zeros(b, h, self.capacity, value_states.shape[-1])
            self.is_initialized = True

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            q = key_states.shape[-2]
            need = self.length + q
            if need > self.keys.shape[-2]:
                cap = max(2 * self.keys.shape[-2], need)
                for name in ("keys", "values"):
                    old = getattr(self, name)
                    new = old.new_zeros(old.shape[0], old.shape[1], cap, old.shape[3])
                    new[:, :, : self.length] = old[:, :, : self.length]
                    setattr(self, name, new)
            self.keys[:, :, self.length : need] = key_states
            self.values[:, :, self.length : need] = value_states
            self.length = need
            return self.keys[:, :, :need], self.values[:, :, :need]

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.length + query_length, 0

        def get_seq_length(self) -> int:
            return self.length

        def get_max_length(self) -> int:
            return -1

        def select_rows(self, index: torch.Tensor) -> None:
            if self.is_initialized:
                self.keys = self.keys.index_select(0, index)
                self.values = self.values.index_select(0, index)

        def row(self, r: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
            """Views ``[H_kv, length, D]`` of row ``r``'s first ``length`` entries."""
            return self.keys[r, :, :length], self.values[r, :, :length]

    class SuffixCache(Cache):
        def __init__(self) -> None:
            super().__init__(layers=[SuffixLayer(capacity) for _ in range(num_layers)])

        @property
        def length(self) -> int:
            return self.layers[0].length

        def select_rows(self, index: torch.Tensor) -> None:
            for layer in self.layers:
                layer.select_rows(index)

        def row_kv(self, r: int, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
            return [layer.row(r, length) for layer in self.layers]

    return SuffixCache()


# ------------------------------------------------------------------------------------------------------------------
# The context: prefixes of the groups and the row -> group map


class CascadeContext:
    """What the attention needs besides the suffix keys: each group's prefix KV and which rows continue it.

    ``prefix_kv[g]``: per layer ``(K, V)`` of shape ``[H_kv, m_g, D]`` (``None`` for an empty prefix);
    ``row_group[r]``: the group row ``r`` continues; ``suffix_bias``: ``[B, 1, 1, q, s]`` additive mask of the suffix
    part, or ``None`` when every query sees every suffix key (one decoding query per row).
    """

    def __init__(
        self,
        prefix_kv: Sequence[list[tuple[torch.Tensor, torch.Tensor]] | None],
        row_group: Sequence[int],
        device: torch.device,
    ) -> None:
        self.prefix_kv = [
            None
            if kv is None or kv[0][0].shape[1] == 0
            else [(k.unsqueeze(0), v.unsqueeze(0)) for k, v in kv]
            for kv in prefix_kv
        ]
        self.device = device
        self._bias: torch.Tensor | None = None
        self._masks: dict[tuple, torch.Tensor] = {}
        self._index(list(row_group))

    @property
    def suffix_bias(self) -> torch.Tensor | None:
        return self._bias

    @suffix_bias.setter
    def suffix_bias(self, bias: torch.Tensor | None) -> None:
        self._bias = bias
        self._masks = {}  # one forward's masks: rebuilt for the next forward's bias

    def query_mask(self, rep: int, dtype: torch.dtype, kind: str) -> torch.Tensor | None:
        """The suffix mask as the attention kernel takes it, built once per forward (not in every layer):
        ``[B, 1, rep * q, s]``, each of a key head's ``rep`` query heads reading the same rows; on CUDA padded to
        16-aligned rows, clamped to ``dtype``'s range and cast to it, as the memory-efficient kernel wants it."""
        if self._bias is None:
            return None
        key = (rep, dtype, kind)
        mask = self._masks.get(key)
        if mask is None:
            B, _, _, q, s = self._bias.shape  # noqa: N806
            mask = self._bias.expand(B, 1, rep, q, s).reshape(B, 1, rep * q, s)
            if kind == "cuda":
                mask = cuda_bias(mask, dtype)
            self._masks[key] = mask
        return mask

    @classmethod
    def build(
        cls,
        prefix_kv: Sequence[list[tuple[torch.Tensor, torch.Tensor]] | None],
        row_group: Sequence[int],
        device: torch.device,
    ) -> CascadeContext:
        return cls(prefix_kv, row_group, device)

    def _index(self, row_group: list[int]) -> None:
        self.row_group = row_group
        rows: dict[int, list[int]] = {}
        for r, g in enumerate(row_group):
            rows.setdefault(g, []).append(r)
        self.groups: list[tuple[int, slice | torch.Tensor]] = []
        for g, rs in rows.items():
            if self.prefix_kv[g] is None:
                continue
            if rs == list(range(rs[0], rs[-1] + 1)):
                sel: slice | torch.Tensor = slice(rs[0], rs[-1] + 1)
            else:
                sel = torch.tensor(rs, dtype=torch.long, device=self.device)
            self.groups.append((g, sel))

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep only the rows in ``index`` (batch compaction)."""
        self._index([self.row_group[i] for i in index.tolist()])
        self._masks = {}


def suffix_bias(valid: torch.Tensor, start: int, q: int) -> torch.Tensor:
    """Additive mask ``[B, 1, 1, q, s]`` for queries at suffix positions ``start..start+q-1`` over keys ``0..s-1``.

    A query sees valid keys at or before its own position, and always itself (so padding rows stay finite).
    ``valid``: ``[B, s]`` bool.
    """
    B, s = valid.shape  # noqa: N806
    k = torch.arange(s, device=valid.device)
    qi = start + torch.arange(q, device=valid.device)
    allowed = valid[:, None, :] & (k[None, None, :] <= qi[None, :, None])
    allowed = allowed | (k[None, None, :] == qi[None, :, None])
    return torch.where(allowed, 0.0, NEG).to(torch.float32).view(B, 1, 1, q, s)


class active:
    """``with active(ctx): base_model(...)``: route this thread's attention through ``ctx``."""

    def __init__(self, ctx: CascadeContext) -> None:
        self.ctx = ctx

    def __enter__(self) -> CascadeContext:
        self.prev = getattr(_LOCAL, "ctx", None)
        _LOCAL.ctx = self.ctx
        return self.ctx

    def __exit__(self, *exc: object) -> None:
        _LOCAL.ctx = self.prev


# ------------------------------------------------------------------------------------------------------------------
# Attention with its log-sum-exp


# False once that device kind's fused kernel has failed: a record for tests and diagnostics (every call retries it)
_KERNELS = {"cpu": True, "cuda": True}
_LOGGED: set[tuple[str, str, str]] = set()  # (device kind, exception type, message) already warned about


def attention_lse(
    q: torch.Tensor,  # [N, H, L, D]
    k: torch.Tensor,  # [N, H, S, D]
    v: torch.Tensor,  # [N, H, S, Dv]
    mask: torch.Tensor | None,  # [N, 1, L, S] additive float, or None
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # [N, H, L, Dv] (q's dtype), [N, H, L] float32
    """``softmax(q k^T · scale + mask) v`` and ``logsumexp(q k^T · scale + mask)`` over the key axis.

    Uses PyTorch's fused kernels that return the log-sum-exp (the CPU flash kernel; the memory-efficient kernel on
    CUDA). When the kernel fails, this call falls back to :func:`attention_lse_eager` and the failure is logged (a
    warning, once per distinct failure); the next call tries the kernel again.
    """
    kind = q.device.type
    if kind in ("cpu", "cuda"):
        fused = _flash_cpu if kind == "cpu" else _efficient_cuda
        try:
            return fused(q, k, v, mask, scale)
        except (RuntimeError, AttributeError, TypeError) as exc:  # NotImplementedError is a RuntimeError
            _kernel_failed(kind, exc)
    return attention_lse_eager(q, k, v, mask, scale)


def _kernel_failed(kind: str, exc: Exception) -> None:
    """Record a failed kernel call; warn once per distinct (device kind, exception type, message)."""
    _KERNELS[kind] = False
    key = (kind, type(exc).__name__, str(exc))
    if key not in _LOGGED:
        _LOGGED.add(key)
        log.warning(
            "the fused %s attention kernel failed (%s: %s); that call used the eager implementation",
            kind,
            type(exc).__name__,
            exc,
        )


def _flash_cpu(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`attention_lse` by the CPU flash kernel."""
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, 0.0, False, attn_mask=mask, scale=scale
    )
    return out, lse


def cuda_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An additive float mask ``[N, 1, L, S]`` as the CUDA memory-efficient kernel takes it: rows padded to a
    multiple of 16 (then viewed back to ``S``), clamped to ``dtype``'s range, in ``dtype``."""
    n, _, length, s = mask.shape
    width = -(-s // 16) * 16
    padded = torch.full((n, 1, length, width), torch.finfo(dtype).min, dtype=dtype, device=mask.device)
    padded[..., :s] = mask.clamp(min=torch.finfo(dtype).min)
    return padded[..., :s]


def _efficient_cuda(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`attention_lse` by the CUDA memory-efficient kernel (its bias in q's dtype, 16-aligned rows: a mask
    from :meth:`CascadeContext.query_mask` arrives so; any other is converted here)."""
    bias = None
    if mask is not None:
        if mask.dtype != q.dtype or mask.stride(-2) % 16:
            mask = cuda_bias(mask, q.dtype)
        n, _, length, s = mask.shape
        bias = mask.expand(n, q.shape[1], length, s)
    out, lse, *_ = torch.ops.aten._scaled_dot_product_efficient_attention(
        q, k, v, bias, True, 0.0, False, scale=scale
    )
    return out, lse[..., : q.shape[2]].float()


def attention_lse_eager(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference implementation of :func:`attention_lse` (float32 scores, chunked over queries)."""
    n, h, length, _ = q.shape
    step = max(1, MAX_SCORE_ELEMENTS // max(n * h * k.shape[2], 1))
    outs, lses = [], []
    for a in range(0, length, step):
        s = torch.matmul(q[:, :, a : a + step], k.transpose(-1, -2)).float() * scale
        if mask is not None:
            s = s + mask[:, :, a : a + step]
        lse = torch.logsumexp(s, dim=-1)
        outs.append(torch.matmul(torch.exp(s - lse.unsqueeze(-1)).to(v.dtype), v))
        lses.append(lse)
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


# ------------------------------------------------------------------------------------------------------------------
# The attention function


def cascade_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention of ``query`` ``[B, H, q, D]`` over ``prefix(group(row)) ∘ key`` (``key``: the suffix, ``[B, H_kv, s, D]``).

    Returns ``([B, q, H, D_v], None)`` as transformers' attention functions do. Without an active context this is
    transformers' SDPA attention. The two parts are merged with their log-sum-exps ``l_A``, ``l_B``:
    ``out = out_A · exp(l_A - l) + out_B · exp(l_B - l)``, ``l = logaddexp(l_A, l_B)``.
    """
    ctx: CascadeContext | None = getattr(_LOCAL, "ctx", None)
    if ctx is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if kwargs.get("sliding_window") is not None:
        raise NotImplementedError("the cascade KV cache does not support sliding-window attention layers")
    _LOCAL.calls = getattr(_LOCAL, "calls", 0) + 1
    B, H, q, D = query.shape  # noqa: N806
    hkv, dv = key.shape[1], value.shape[-1]
    rep = H // hkv
    scale = scaling if scaling is not None else D**-0.5
    layer = module.layer_idx
    # Query head h reads key head h // rep (transformers' repeat_kv order): fold a key head's rep query heads into
    # the query axis, so each part is plain multi-head attention over H_kv heads, with no copies of keys.
    qr = query.reshape(B, hkv, rep * q, D)
    mask = ctx.query_mask(rep, query.dtype, query.device.type)  # built once per forward, shared by the layers
    out, lse = attention_lse(qr, key, value, mask, scale)  # [B, Hkv, rep*q, Dv], [B, Hkv, rep*q]
    if ctx.groups:
        out = out.float()
        for g, rows in ctx.groups:
            pk, pv = ctx.prefix_kv[g][layer]  # [1, Hkv, m, D]
            qg = qr[rows]  # [S, Hkv, rep*q, D]
            n_rows = qg.shape[0]
            qg = qg.transpose(0, 1).reshape(
                1, hkv, n_rows * rep * q, D
            )  # every query of the group, one batch
            oa, la = attention_lse(qg, pk, pv, None, scale)
            oa = oa.reshape(hkv, n_rows, rep * q, dv).transpose(0, 1).float()  # [S, Hkv, rep*q, Dv]
            la = la.reshape(hkv, n_rows, rep * q).transpose(0, 1)
            lb, ob = lse[rows], out[rows]
            tot = torch.logaddexp(la, lb)
            merged = oa * torch.exp(la - tot).unsqueeze(-1) + ob * torch.exp(lb - tot).unsqueeze(-1)
            if isinstance(rows, slice) and rows == slice(0, B):
                out = merged
            else:
                out[rows] = merged
    return out.to(query.dtype).reshape(B, H, q, dv).transpose(1, 2).contiguous(), None
