"""What both model backends (in-process :mod:`specs_rl.hf`, served :mod:`specs_rl.vllm`) share, below both of them.

| module | what |
|---|---|
| ``config`` | ``ModelsConfig`` (the ``hf:`` section: draft, target, PRM and the step format), ``ModelSpec``, ``PrmSpec``, ``TinySpec`` |
| ``prompts`` | how a problem becomes the generators' and the PRM's prompt (``GeneratorPrompts``: memoized ids) |
| ``prm_format`` | how a PRM checkpoint reads steps (``PrmFormat``, ``encode_steps``) and aggregates step rewards (``aggregate_rewards``) |
| ``prm_kinds`` | how each PRM kind writes a problem and its steps; ``PrmEncoding``, both backends' PRM inputs |
| ``judge`` | SpecReason's target judge: the scoring prompt of a step, the digit tokens |
| ``text`` | token text at the byte level and the string-level step stop |
| ``tokens`` | end-of-sequence ids, whether two tokenizers agree |
| ``seeds`` | the seed of one sampling request |
| ``cache`` | ``LRU``, the one bounded cache policy |
| ``sources`` | model sources (``split_source``: a hub id, a local directory, a ``.gguf`` file) |

Nothing here imports torch or transformers at import time (the runner imports the config on every run).
"""

from specs_rl.models.config import ModelsConfig, ModelSpec, PrmSpec, TinySpec

__all__ = ["ModelSpec", "ModelsConfig", "PrmSpec", "TinySpec"]
