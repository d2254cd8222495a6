"""``backend: hf``: draft, target, scorer and PRM over transformers models in this process.

    parts = build_parts(ModelsConfig(...))     # or tiny_parts(seed=0) for tests
    results = run_search(problems, SearchConfig(strategy="specs"), parts, torch.Generator().manual_seed(0))

| module | what |
|---|---|
| ``build`` | ``build_parts`` / ``build_task`` / ``build_prm``: the parts of a :class:`~specs_rl.models.ModelsConfig` |
| ``sampler`` | ``HFLM`` (a model, its tokenizer and its prefix cache) and ``HFSampler``: batched step sampling with string-level stops |
| ``scorer`` | ``HFScorer``: target log-probs of candidate steps in one pass |
| ``prm`` | ``HFRewardModel``: rewards at step separators |
| ``load`` | loading models (hub id, local directory, GGUF, ``tiny:``) |
| ``engine`` | the prefix-state cache; ``cascade``: shared-prefix attention |

The served backend (:mod:`specs_rl.vllm`) has the same ``build``, ``sampler``, ``scorer`` and ``prm`` modules; what the
two share (the model config, prompts, the PRM's reading, token text, seeds) is :mod:`specs_rl.models`.
transformers is imported only when a model is built.
"""

from specs_rl.hf.build import build_parts, forward_seconds, reset_stats, tiny_parts

__all__ = ["build_parts", "forward_seconds", "reset_stats", "tiny_parts"]
