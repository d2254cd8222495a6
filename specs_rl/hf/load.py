"""Loading draft, target and reward models (hub id, local directory, GGUF file, or a ``tiny:`` random model).

Every input problem (a missing file, a bad source) raises :class:`~specs_rl.errors.SpecsError` with one line; a load
failure inside transformers is reported the same way, with its first line.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from specs_rl.errors import SpecsError
from specs_rl.models.config import ModelSpec, PrmSpec, tiny_arch
from specs_rl.models.prm_format import PrmFormat
from specs_rl.models.sources import split_source


def resolve_device(device: str) -> torch.device:
    """``auto`` = cuda, then mps, then cpu; an explicit device that is not available is an error."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SpecsError(f"device {device} was asked for but CUDA is not available (use device: auto or cpu)")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise SpecsError(
            f"device {device} was asked for but only {torch.cuda.device_count()} CUDA device(s) are visible "
            "(cuda:0 .. cuda:N-1 of CUDA_VISIBLE_DEVICES)"
        )
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise SpecsError("device mps was asked for but MPS is not available (use device: auto or cpu)")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` = bfloat16 on a CUDA device that supports it, float32 elsewhere."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


@functools.lru_cache(maxsize=4)
def tiny_tokenizer(vocab: int = 300) -> Any:
    """The project's in-process BPE tokenizer (built once per vocabulary size)."""
    from specs_rl.tiny import make_tokenizer

    return make_tokenizer(vocab_size=vocab)


def check_sources(specs: dict[str, ModelSpec | PrmSpec]) -> None:
    """Cheap checks of every source before any model is loaded."""
    for key, spec in specs.items():
        if not spec.name.startswith("tiny"):
            source, _ = split_source(spec.name, getattr(spec, "gguf_file", None), key)
            # a local PRM's weight names are checked here too: a read of its safetensors headers
            if isinstance(spec, PrmSpec) and Path(source).is_dir():
                from specs_rl.hf.prm_arch import check_checkpoint

                check_checkpoint(spec, source, key)


def _wrap_load_error(key: str, name: str, e: Exception) -> SpecsError:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return SpecsError(f"could not load {key} {name!r}: {first[:300]}")


def load_causal_lm(spec: ModelSpec, key: str) -> tuple[torch.nn.Module, Any]:
    """``(model, tokenizer)`` for a draft or target, on ``spec.device`` in ``spec.dtype``, in eval mode."""
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    if spec.name.startswith("tiny"):
        from specs_rl.tiny import tiny_causal_lm

        tok = tiny_tokenizer(spec.tiny.tokenizer_vocab)
        model = tiny_causal_lm(
            tok,
            tiny_arch(spec.name),
            seed=spec.tiny.seed,
            vocab_pad=spec.tiny.vocab_pad,
            **spec.tiny.model_kwargs(),
        )
        return model.to(device=device, dtype=dtype).eval(), tok
    source, gguf = split_source(spec.name, spec.gguf_file, key)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
    if spec.revision is not None:
        kw["revision"] = spec.revision
    if gguf is not None:
        kw["gguf_file"] = gguf
    try:
        tok = AutoTokenizer.from_pretrained(spec.tokenizer or source, **kw)
        model_kw = dict(kw, dtype=dtype)
        if device.type == "cuda":
            model_kw["device_map"] = str(device)
        model = AutoModelForCausalLM.from_pretrained(source, **model_kw)
    except (OSError, ValueError, ImportError, RuntimeError, KeyError) as e:
        raise _wrap_load_error(key, spec.name, e) from None
    if device.type != "cuda":
        model = model.to(device=device, dtype=dtype)
    return model.eval(), tok


def load_reward_model(spec: PrmSpec, key: str = "hf.prm") -> tuple[torch.nn.Module, Any, PrmFormat]:
    """``(model, tokenizer, format)``: the format merges ``prm_config.json`` (if any), the checkpoint's kind
    (:mod:`specs_rl.models.prm_kinds`) and the spec's overrides; the weights load natively by name
    (:func:`specs_rl.hf.prm_arch.load_native_prm`)."""
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    if not spec.name.startswith("tiny"):
        from specs_rl.hf.prm_arch import load_native_prm

        source, _ = split_source(spec.name, None, key)
        return load_native_prm(spec, source, device, dtype, key)
    from specs_rl.models.prm_kinds import resolve_format
    from specs_rl.tiny import tiny_seq_classifier, tiny_token_classifier

    fmt = resolve_format(
        kind=spec.kind,
        step_separator=spec.step_separator,
        positive_label=spec.positive_label,
        step_reward=spec.step_reward,
    )
    tok = tiny_tokenizer(spec.tiny.tokenizer_vocab)
    build = tiny_seq_classifier if fmt.kind == "sequence_classification" else tiny_token_classifier
    model = build(tok, tiny_arch(spec.name), seed=spec.tiny.seed, **spec.tiny.model_kwargs())
    return model.to(device=device, dtype=dtype).eval(), tok, fmt
