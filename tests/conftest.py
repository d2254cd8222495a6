"""Test-wide settings: no hub, no W&B login, quiet tokenizers; paths."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
# Tiny models on a 2-core machine: one intra-op thread is faster than two fighting over the cores (the trainer
# suite took 38 s with one thread against 160 s with two under load). Set before anything imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The same for code that sets threads itself: tiny models gain nothing from intra-op threads here."""
    import torch

    torch.set_num_threads(1)
    yield


SERVED_TESTS = ("test_vllm_backend.py", "test_vllm_faults.py", "[vllm]")


def pytest_collection_modifyitems(config, items):
    """When tests that need real vLLM servers are selected, start the servers now, in the background: their
    one to two minutes of start-up then overlap the tests that run first."""
    if not config.option.collectonly and any(any(k in i.nodeid for k in SERVED_TESTS) for i in items):
        from tests import vllm_servers

        vllm_servers.begin()


@pytest.fixture(autouse=True, scope="session")
def _stop_vllm_servers():
    """The served-backend tests share real vLLM servers (tests/vllm_servers.py), started on first use: stop them."""
    yield
    servers = sys.modules.get("tests.vllm_servers")
    if servers is not None:
        servers.stop()


REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "specs_rl" / "assets" / "data"  # the evaluation sets shipped with the package


def cuda_tiny_parts(dtype: str, **kw):
    """The GPU tests' HF parts: tiny draft (Llama, 64), target (Qwen2, 128) and PRM (Llama, 64) on CUDA in
    ``dtype``, the other ``tiny_parts`` arguments from ``kw``."""
    from specs_rl.hf import tiny_parts
    from specs_rl.models import ModelSpec, PrmSpec, TinySpec

    def spec(name: str, hidden: int, seed: int) -> ModelSpec:
        tiny = TinySpec(hidden_size=hidden, seed=seed)
        return ModelSpec(name=name, device="cuda", dtype=dtype, temperature=1.0, tiny=tiny)

    prm = PrmSpec(name="tiny:llama", device="cuda", dtype=dtype, tiny=TinySpec(hidden_size=64, seed=3))
    return tiny_parts(draft=spec("tiny:llama", 64, 1), target=spec("tiny:qwen2", 128, 2), prm=prm, **kw)
