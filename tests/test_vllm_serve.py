"""``specs-rl serve`` and the server launcher's flags.

The serve tests run the real command in a subprocess over a stand-in engine: a ``vllm`` package of this test whose
``vllm.entrypoints.openai.api_server`` answers ``/health`` and ``/v1/models``, records the arguments it was started
with and spawns a child (as vLLM's API process spawns its engine). Starting, health-checking and stopping real vLLM
servers is what the other served-backend tests do through the same ``specs_rl.vllm.server`` code (their session
fixture); these check the command around it without the minutes a real engine takes to start.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO

SEARCH_CONFIG = str(REPO / "configs" / "search" / "toymath_vllm.yaml")

FAKE_SERVER = """
import json, os, signal, subprocess, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
argv = sys.argv[1:]
port = int(argv[argv.index("--port") + 1])
name = argv[argv.index("--served-model-name") + 1]
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # the "engine"
log = os.environ["FAKE_VLLM_LOG"]
with open(os.path.join(log, f"argv-{port}.json"), "w") as f:
    json.dump({"argv": argv, "pid": os.getpid(), "child": child.pid, "env_key": os.environ.get("VLLM_API_KEY")}, f)

class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_GET(self):
        body = json.dumps({} if self.path == "/health" else {"data": [{"id": name, "max_model_len": 192}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

def bye(*_):
    child.terminate()
    child.wait()
    sys.exit(0)

signal.signal(signal.SIGTERM, bye)
ThreadingHTTPServer((argv[argv.index("--host") + 1], port), H).serve_forever()
"""


@pytest.fixture
def fake_engine(tmp_path):
    pkg = tmp_path / "fake" / "vllm" / "entrypoints" / "openai"
    pkg.mkdir(parents=True)
    for d in (pkg.parents[1], pkg.parent, pkg):
        (d / "__init__.py").write_text("")
    (pkg / "api_server.py").write_text(FAKE_SERVER)
    (tmp_path / "log").mkdir()
    return tmp_path


def serve(fake: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, list[str]]:
    """Start ``specs-rl serve`` over the stand-in engine; return it and its output up to the overrides line."""
    env = {
        **os.environ,
        "PYTHONPATH": f"{fake / 'fake'}{os.pathsep}{REPO}",
        "FAKE_VLLM_LOG": str(fake / "log"),
        **(env or {}),
    }
    argv = [
        "serve",
        "--config",
        SEARCH_CONFIG,
        f"vllm.python={sys.executable}",
        f"vllm.log_dir={fake / 'logs'}",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "specs_rl.cli", *argv, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    done = threading.Event()

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line.rstrip("\n"))
            if line.startswith("vllm.draft.url=") or line.startswith("vllm.target.url="):
                done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(120), (lines, proc.poll(), proc.stderr.read() if proc.poll() is not None else "")
    return proc, lines


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_serve_starts_the_configs_servers_prints_their_urls_and_stops_them(fake_engine, monkeypatch):
    proc, lines = serve(fake_engine, env={"SPECS_RL_VLLM_API_KEY": "sk-serve-test"})
    try:
        overrides = dict(kv.split("=", 1) for kv in lines[-1].split())
        assert set(overrides) == {"vllm.draft.url", "vllm.target.url"}  # the toy PRM is in-process: no server
        names = {}
        for key, url in overrides.items():
            with urllib.request.urlopen(url + "/v1/models", timeout=10) as r:
                names[key] = json.loads(r.read())["data"][0]["id"]
        assert names == {
            "vllm.draft.url": "specs_rl/assets/toymath/draft",
            "vllm.target.url": "specs_rl/assets/toymath/target",
        }
        started = [json.loads(p.read_text()) for p in (fake_engine / "log").glob("argv-*.json")]
        assert len(started) == 2
        for s in started:
            a = s["argv"]
            assert a[a.index("--logprobs-mode") + 1] == "processed_logprobs"
            assert "--enable-prefix-caching" in a and a[a.index("--dtype") + 1] == "float32"
            assert not any("sk-serve-test" in x for x in a) and s["env_key"] == "sk-serve-test"
            assert _alive(s["pid"]) and _alive(s["child"])
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
    assert rc == 0 and "servers stopped" in proc.stdout.read() + "\n".join(lines)
    time.sleep(0.5)
    for s in started:  # the API process and the engine it spawned are gone
        assert not _alive(s["pid"]) and not _alive(s["child"])


def test_serve_can_start_one_part_at_a_given_port(fake_engine):
    from specs_rl.vllm.server import free_port

    port = free_port()
    proc, lines = serve(fake_engine, "parts=[target]", f"vllm.target.url=http://127.0.0.1:{port}")
    try:
        assert lines[-1] == f"vllm.target.url=http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0


def test_serve_refuses_a_part_the_config_does_not_serve_and_a_remote_url(capsys):
    from eval import serve

    assert serve.main(["--config", SEARCH_CONFIG, "parts=[prm]"]) == 2
    assert "'prm' is not served by this config" in capsys.readouterr().err
    assert serve.main(["--config", SEARCH_CONFIG, "vllm.draft.url=http://10.1.2.3:8000"]) == 2
    assert "starts servers on this machine only" in capsys.readouterr().err


def test_server_flags():
    from specs_rl.vllm.server import LaunchSpec, server_argv, server_env

    gen = LaunchSpec(
        "vllm.target", "/m/target", "tgt", dtype="bfloat16", max_model_len=4096, tensor_parallel_size=2
    )
    a = server_argv(gen, "0.0.0.0", 8000, cpu=False)
    assert a[:4] == ["--model", "/m/target", "--served-model-name", "tgt"]
    assert a[a.index("--logprobs-mode") : a.index("--logprobs-mode") + 2] == [
        "--logprobs-mode",
        "processed_logprobs",
    ]
    assert "--enable-prefix-caching" in a and "--no-enable-chunked-prefill" not in a
    assert a[a.index("--tensor-parallel-size") + 1] == "2" and a[a.index("--max-model-len") + 1] == "4096"
    prm = LaunchSpec(
        "vllm.prm", "/m/prm", "prm", kind="prm", pooler_config={"tok_pooling_type": "STEP", "step_tag_id": 7}
    )
    b = server_argv(prm, "127.0.0.1", 8001, cpu=True)
    assert "--logprobs-mode" not in b and "--no-enable-chunked-prefill" in b
    assert json.loads(b[b.index("--pooler-config") + 1]) == {"tok_pooling_type": "STEP", "step_tag_id": 7}
    env = server_env(prm, cpu=True, kv_cache_gib=2, threads_bind="0")
    assert env["VLLM_CPU_KVCACHE_SPACE"] in ("2", os.environ.get("VLLM_CPU_KVCACHE_SPACE"))
