"""Real vLLM servers for the tests, started once per test session on free loopback ports and shared.

Three servers start together on first use (their start-ups overlap): the toy-math draft and target
(``specs_rl/assets/toymath``, float32 so that sampled and scored log-probs agree to float precision) and a tiny random
``Qwen2ForProcessRewardModel`` (hidden 64, 2 heads of dim 32: vLLM's CPU attention rejects head dim 16) saved to a
temporary directory with the toy tokenizer, served with step pooling at the toy step tag ``"\\n\\n"``. The conftest
stops them at the end of the session (and :mod:`specs_rl.vllm.server` stops them if the interpreter exits early).

Without the vLLM venv (``scripts/vllm-venv``) the tests that need servers are skipped with the reason, unless
``SPECS_RL_REQUIRE_VLLM=1`` (CI sets it): then they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

REQUIRE_ENV = "SPECS_RL_REQUIRE_VLLM"
TOY = REPO / "specs_rl" / "assets" / "toymath"
NAMES = {"draft": "toy-draft", "target": "toy-target", "prm": "tiny-qwen2-prm"}
MAX_MODEL_LEN = 192  # the toy models' context
_LOCK = threading.Lock()


def vllm_python() -> str | None:
    """The python of the vLLM venv when it exists, else None."""
    from specs_rl.vllm.config import default_python

    py = default_python()
    return py if Path(py).is_file() else None


def need_vllm() -> str:
    """The vLLM python, or skip the test (fail it when ``SPECS_RL_REQUIRE_VLLM=1``)."""
    py = vllm_python()
    if py is None:
        from specs_rl.vllm.config import default_python

        why = f"no vLLM venv at {default_python()} (build it with scripts/vllm-venv)"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{why}, and {REQUIRE_ENV}=1 requires the served-backend tests to run")
        pytest.skip(why)
    return py


def make_tiny_prm(out: Path, seed: int = 0) -> Path:
    """A random ``Qwen2ForProcessRewardModel`` checkpoint (Qwen2 body ``model.*`` and the two-layer head
    ``score.0`` ``[h, h]`` / ReLU / ``score.2`` ``[2, h]``, as Qwen2.5-Math-PRM) over the toy tokenizer."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, Qwen2Config, Qwen2Model

    tok = AutoTokenizer.from_pretrained(TOY / "target")
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=1,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        body = Qwen2Model(cfg)
        h = cfg.hidden_size
        head = {
            "score.0.weight": torch.randn(h, h) / h**0.5,
            "score.0.bias": torch.randn(h) * 0.1,
            "score.2.weight": torch.randn(2, h),
            "score.2.bias": torch.zeros(2),
        }
    state = {f"model.{k}": v.contiguous() for k, v in body.state_dict().items()} | head
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = cfg.to_dict() | {
        "architectures": ["Qwen2ForProcessRewardModel"],
        "num_labels": 2,
        "dtype": "float32",
    }
    (out / "config.json").write_text(json.dumps(config, indent=1))
    tok.save_pretrained(out)
    # read the project's way (steps + "\n\n", the plain prompt): the architecture alone would make it a qwen_prm,
    # whose chat format the toy tokenizer (no chat template) cannot write
    from specs_rl.models.prm_format import PrmFormat

    PrmFormat(kind="token_classification").save(out)
    return out


@dataclass
class Servers:
    servers: dict[str, Any]
    prm_dir: Path
    tmp: Path
    restarted: list[Any] = field(default_factory=list)

    def url(self, part: str) -> str:
        return self.servers[part].url

    def stop(self) -> None:
        for s in [*self.servers.values(), *self.restarted]:
            s.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


_SERVERS: Servers | None = None
_PENDING: Servers | None = None  # started by begin(), not yet known to answer


def launch_spec(part: str, checkpoint: Path, port: int | None = None) -> Any:
    from specs_rl.vllm.build import pooler_config
    from specs_rl.vllm.server import LaunchSpec

    return LaunchSpec(
        part=f"vllm.{part}",
        checkpoint=str(checkpoint),
        served_name=NAMES[part],
        kind="prm" if part == "prm" else "generate",
        port=port,
        dtype="float32",
        max_model_len=MAX_MODEL_LEN,
        pooler_config=pooler_config("step", 259) if part == "prm" else None,
    )


def _start(python: str) -> Servers:
    """Start the three servers without waiting for them."""
    from specs_rl.vllm.layout import core_layout, usable_cores
    from specs_rl.vllm.server import start

    tmp = Path(tempfile.mkdtemp(prefix="specs-rl-vllm-test-"))
    prm_dir = make_tiny_prm(tmp / "prm")
    parts = {"draft": TOY / "draft", "target": TOY / "target", "prm": prm_dir}
    binds = core_layout(usable_cores(), len(parts)).binds  # where a run starting the three would pin them
    started = {
        p: start(launch_spec(p, ck), python=python, log_dir=tmp / "logs", threads_bind=b)
        for (p, ck), b in zip(parts.items(), binds)
    }
    return Servers(started, prm_dir, tmp)


def begin() -> None:
    """Start the servers now and return at once (the conftest calls it after collection when served tests are
    selected, so their start-up overlaps the tests that run before them). Must run on the main thread: a started
    server dies with the thread that started it."""
    global _PENDING
    py = vllm_python()
    with _LOCK:
        if py is not None and _SERVERS is None and _PENDING is None:
            _PENDING = _start(py)


def servers() -> Servers:
    """The session's servers, started on first use (a server a test killed is started again at its port)."""
    global _SERVERS, _PENDING
    py = need_vllm()
    with _LOCK:
        if _SERVERS is not None:
            for part in [p for p, s in _SERVERS.servers.items() if not s.alive()]:
                _restart(_SERVERS, part, py)
        if _SERVERS is None:
            from specs_rl.vllm.server import wait_ready

            pending, _PENDING = _PENDING or _start(py), None
            try:
                wait_ready(list(pending.servers.values()), timeout_s=900)
            except BaseException:
                pending.stop()
                raise
            _SERVERS = pending
        return _SERVERS


def _restart(s: Servers, part: str, python: str) -> Any:
    """Start ``part``'s server again at its old port (after a test killed it); waits until it answers."""
    from specs_rl.vllm.server import start_all

    old = s.servers[part]
    old.stop()
    ck = {"draft": TOY / "draft", "target": TOY / "target", "prm": s.prm_dir}[part]
    spec = launch_spec(part, ck, port=old.port)
    s.servers[part] = start_all([spec], timeout_s=900, python=python, log_dir=s.tmp / "logs")[0]
    return s.servers[part]


def stop() -> None:
    global _SERVERS, _PENDING
    with _LOCK:
        for s in (_SERVERS, _PENDING):
            if s is not None:
                s.stop()
        _SERVERS = _PENDING = None


def toy_hf_config(**kw: Any) -> Any:
    """The toy world's ``hf:`` section as the demo sets it (float32), with ``kw`` overriding fields."""
    from specs_rl.models.config import ModelsConfig, ModelSpec, PrmSpec

    cfg = ModelsConfig(
        draft=ModelSpec(name=str(TOY / "draft"), device="cpu", dtype="float32", temperature=1.0),
        target=ModelSpec(name=str(TOY / "target"), device="cpu", dtype="float32", temperature=1.0),
        prm=PrmSpec(name=str(TOY / "prm"), device="cpu", dtype="float32", prompt_field="prompt"),
        chat_template=False,
        max_step_tokens=40,
        max_tokens=160,
    )
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def vllm_config(prm: str = "vllm", **kw: Any) -> Any:
    """The ``vllm:`` section pointing at the session's servers; ``prm``: ``vllm`` (the tiny served PRM) or ``hf``."""
    from specs_rl.vllm.config import ServedPart, ServedPrm, VLLMConfig

    s = servers()
    cfg = VLLMConfig(
        draft=ServedPart(url=s.url("draft"), model=NAMES["draft"]),
        target=ServedPart(url=s.url("target"), model=NAMES["target"]),
        prm=ServedPrm(url=s.url("prm"), model=NAMES["prm"]) if prm == "vllm" else ServedPrm(backend="hf"),
        retries=1,
        backoff_s=0.2,
    )
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def served_parts(prm: str = "vllm", hf: Any = None, **kw: Any) -> tuple[Any, Any]:
    """``(SearchParts, ServedParts)`` over the session's servers; the served PRM reads the tiny PRM's
    defaults (separator "\\n\\n", label 1, last step)."""
    from specs_rl.hf.build import build_prm
    from specs_rl.vllm.build import build_parts

    hf = hf or toy_hf_config()
    if prm == "vllm":
        hf.prm.name = str(servers().prm_dir)
        hf.prm.prompt_field = "prompt"
    return build_parts(vllm_config(prm, **kw), hf, prm_factory=build_prm)


def contract_parts() -> tuple[Any, list[Any]]:
    """The contract suite's factory: served draft and target sampling at temperature 1, the served tiny PRM."""
    from specs_rl.types import Problem

    parts, _ = served_parts()
    return parts, [Problem("p0", "Compute ((8*1)+7).\n\n"), Problem("p1", "Compute (3+4).\n\n")]
