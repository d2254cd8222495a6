"""The Hugging Face backend: draft, target, scorer and PRM over transformers models.

    parts = build_parts(HFConfig(...))     # or tiny_parts(seed=0) for tests
    results = run_search(problems, SearchConfig(strategy="specs"), parts, torch.Generator().manual_seed(0))

Pieces: :mod:`~specs_rl.hf.lm` (batched step sampling with string-level stops, one-pass target scoring),
:mod:`~specs_rl.hf.prm` (rewards at step separators), :mod:`~specs_rl.hf.engine` (prefix-state cache),
:mod:`~specs_rl.hf.cascade` (shared-prefix attention), :mod:`~specs_rl.hf.models` (loading).
transformers is imported only when a model is built.
"""

from specs_rl.hf.config import HFConfig, ModelSpec, PrmSpec, TinySpec
from specs_rl.hf.parts import boxed_answer, build_parts, forward_seconds, reset_stats, tiny_parts

__all__ = [
    "HFConfig",
    "ModelSpec",
    "PrmSpec",
    "TinySpec",
    "boxed_answer",
    "build_parts",
    "forward_seconds",
    "reset_stats",
    "tiny_parts",
]
