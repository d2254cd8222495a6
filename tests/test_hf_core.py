"""The Hugging Face backend's batching core: the attention kernel's per-call fallback, prefix grouping, the LRU."""

from __future__ import annotations

import logging

import pytest
import torch

from specs_rl.hf import cascade
from specs_rl.hf.engine import State, group_by_state
from specs_rl.models.cache import LRU


def _qkv(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 2, 3, 8, generator=g)  # [N, H, L, D]
    k = torch.randn(2, 2, 5, 8, generator=g)  # [N, H, S, D]
    v = torch.randn(2, 2, 5, 8, generator=g)
    mask = torch.zeros(2, 1, 3, 5).masked_fill(torch.rand(2, 1, 3, 5, generator=g) < 0.3, cascade.NEG)
    mask[..., 0] = 0.0  # every query sees at least one key
    return q, k, v, mask


def test_a_kernel_failure_falls_back_for_that_call_only_and_is_logged_once(monkeypatch, caplog):
    """A failing fused kernel gives the eager result for that call, a warning naming the exception (once per
    distinct failure, not once per call), and the next call runs the kernel again."""
    q, k, v, mask = _qkv()
    op = "_scaled_dot_product_flash_attention_for_cpu"
    fused = getattr(torch.ops.aten, op)
    errors = [RuntimeError("boom"), RuntimeError("boom"), None, RuntimeError("other"), None]
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        err = errors[len(calls) - 1]
        if err is not None:
            raise err
        return fused(*args, **kwargs)

    monkeypatch.setattr(torch.ops.aten, op, flaky)
    monkeypatch.setattr(cascade, "_KERNELS", {"cpu": True, "cuda": True})
    monkeypatch.setattr(cascade, "_LOGGED", set(), raising=False)
    eager = cascade.attention_lse_eager(q, k, v, mask, 0.3)
    kernel = fused(q, k, v, 0.0, False, attn_mask=mask, scale=0.3)
    with caplog.at_level(logging.WARNING, logger=cascade.__name__):
        got = [cascade.attention_lse(q, k, v, mask, 0.3) for _ in errors]
    assert len(calls) == len(errors)  # every call tried the kernel, failures included
    for (out, lse), err in zip(got, errors):
        want = eager if err is not None else kernel
        assert torch.equal(out, want[0]) and torch.equal(lse, want[1])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # "boom" twice is logged once; "other" once
    assert "RuntimeError: boom" in warnings[0] and "RuntimeError: other" in warnings[1]
    assert cascade._KERNELS == {"cpu": False, "cuda": True}  # the record of a failure on the CPU


def test_the_kernel_and_the_eager_reference_agree():
    q, k, v, mask = _qkv(1)
    for m in (mask, None):
        out, lse = cascade._flash_cpu(q, k, v, m, 0.3)
        ref_out, ref_lse = cascade.attention_lse_eager(q, k, v, m, 0.3)
        assert torch.allclose(out, ref_out, atol=1e-5) and torch.allclose(lse, ref_lse, atol=1e-5)


def test_the_lru_keeps_the_most_recently_put_keys():
    memo = LRU(2)
    assert memo.put("a", 1) == 1
    memo.put("b", 2)
    memo.put("a", 3)  # "a" is now the most recent
    memo.put("c", 4)
    assert dict(memo) == {"a": 3, "c": 4}


def test_group_by_state_groups_by_identity_in_order_of_first_appearance():
    a, b, c = State((1,)), State((1,)), State((2,))  # a and b hold equal ids but are two cached states
    groups, row_group = group_by_state([b, a, b, c, a])
    assert [id(g) for g in groups] == [id(b), id(a), id(c)]
    assert row_group == [0, 1, 0, 2, 1]
    assert group_by_state([]) == ([], [])


def test_cuda_n_devices_are_accepted_and_checked_against_the_visible_gpus(monkeypatch) -> None:
    import torch

    from specs_rl.errors import SpecsError
    from specs_rl.hf.load import resolve_device
    from specs_rl.models import ModelSpec

    ModelSpec(device="cuda:1").validate("hf.target")
    with pytest.raises(ValueError, match=r"hf.target.device must be one of .* or cuda:N, got 'cuda1'"):
        ModelSpec(device="cuda1").validate("hf.target")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(SpecsError, match=r"device cuda:2 was asked for but only 2 CUDA device"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SpecsError, match="device cuda:0 was asked for but CUDA is not available"):
        resolve_device("cuda:0")
