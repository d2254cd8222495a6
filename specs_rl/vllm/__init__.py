"""``backend: vllm``: SPECS and every baseline with the draft, the target and the PRM served by vLLM.

| module | what |
|---|---|
| ``config`` | ``VLLMConfig``, the ``vllm:`` section (where the servers are; the models are the ``hf:`` section) |
| ``client`` | the httpx client: concurrent requests, retries with backoff, errors naming the server, busy-time meters |
| ``parts`` | sampler, scorer and PRM implementing :mod:`specs_rl.interfaces` over HTTP |
| ``server`` | starting, health-checking and stopping local vLLM servers with the flags the client relies on |
| ``task`` | ``build_parts`` / ``build_task``: every check before a run writes anything |

Importing this package imports only the config (no httpx, torch or transformers).
"""

from specs_rl.vllm.config import VLLMConfig

__all__ = ["VLLMConfig"]
