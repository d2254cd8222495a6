"""``backend: vllm``: SPECS and every baseline with the draft, the target and the PRM served by vLLM.

| module | what |
|---|---|
| ``config`` | ``VLLMConfig``, the ``vllm:`` section (where the servers are; the models are the ``hf:`` section, :mod:`specs_rl.models`) |
| ``build`` | ``build_parts`` / ``build_task`` / ``start_servers``: every check before a run writes anything |
| ``sampler`` | ``VLLMSampler``: draft and target steps over ``/v1/completions`` |
| ``scorer`` | ``VLLMScorer``: target log-probs of candidate steps (prompt log-probs) |
| ``prm`` | ``VLLMRewardModel`` over ``/pooling``; ``MeteredRewardModel`` around an in-process PRM |
| ``probe`` | checks of a running server: it serves the configured model, it returns processed log-probs |
| ``client`` | the HTTP client: concurrent requests on a thread pool, retries with backoff, errors naming the server, busy-time meters |
| ``server`` | starting, health-checking and stopping local vLLM servers with the flags the client relies on |

The in-process backend (:mod:`specs_rl.hf`) has the same ``build``, ``sampler``, ``scorer`` and ``prm`` modules; the
two import nothing from each other. Importing this package imports only the config (no httpx, torch or transformers).
"""

from __future__ import annotations

from typing import Any

from specs_rl.vllm.config import VLLMConfig

__all__ = ["VLLMConfig", "start_servers"]


def start_servers(vc: VLLMConfig, models: Any, parts: Any = (), **kw: Any) -> dict[str, Any]:
    """The running servers of a config, ``{part: Server}``: :func:`specs_rl.vllm.build.start_servers` (imported when
    called, so importing this package stays light)."""
    from specs_rl.vllm.build import start_servers as start

    return start(vc, models, parts, **kw)
