"""Models for the training recipes: ``tiny:`` specs (built in-process, no download) or hub ids / local folders.

A model name is either a hub id / local checkpoint folder, or a tiny spec::

    tiny:llama                                   # specs_rl.tiny defaults (hidden 64, 2 layers), seed 0
    tiny:qwen2:hidden_size=96,vocab_pad=8,seed=2 # a wider Qwen2 with 8 unused embedding rows (a "padded" vocab)
    tiny:qwen2:initializer_range=0.3             # larger random weights: peaked next-token laws

Tiny models share :func:`specs_rl.tiny.make_tokenizer` (trained in-process, deterministic), so a tiny draft and a
tiny target always share one tokenizer. Saving writes the tokenizer beside the weights, so a saved tiny checkpoint
loads with plain ``AutoModelFor*.from_pretrained`` / ``AutoTokenizer.from_pretrained``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from specs_rl.errors import SpecsError

TINY_KEYS = {
    "seed": int,
    "vocab_pad": int,
    "hidden_size": int,
    "intermediate_size": int,
    "num_hidden_layers": int,
    "num_attention_heads": int,
    "num_key_value_heads": int,
    "initializer_range": float,  # larger = a more peaked random model (a target with "opinions")
}
TINY_ARCHS = ("llama", "qwen2")
HEADS = ("causal_lm", "token_classification", "sequence_classification")


def is_tiny(name: str | None) -> bool:
    return bool(name) and str(name).startswith("tiny:")


def parse_tiny(name: str) -> tuple[str, dict[str, Any]]:
    """``"tiny:qwen2:hidden_size=96,seed=2"`` -> ``("qwen2", {"hidden_size": 96, "seed": 2})``.

    >>> parse_tiny("tiny:llama")
    ('llama', {})
    >>> parse_tiny("tiny:qwen2:vocab_pad=8,seed=1")
    ('qwen2', {'vocab_pad': 8, 'seed': 1})
    """
    parts = name.split(":", 2)
    if len(parts) < 2 or parts[0] != "tiny":
        raise SpecsError(f"not a tiny model spec: {name!r} (expected tiny:ARCH[:key=value,...])")
    arch = parts[1]
    if arch not in TINY_ARCHS:
        raise SpecsError(f"tiny model {name!r}: arch must be one of {', '.join(TINY_ARCHS)}, got {arch!r}")
    opts: dict[str, Any] = {}
    if len(parts) == 3 and parts[2]:
        for item in parts[2].split(","):
            key, eq, value = item.partition("=")
            if key not in TINY_KEYS or not eq:
                raise SpecsError(
                    f"tiny model {name!r}: unknown option {item!r}; known: {', '.join(sorted(TINY_KEYS))}"
                )
            try:
                opts[key] = TINY_KEYS[key](value)
            except ValueError:
                raise SpecsError(
                    f"tiny model {name!r}: {key} must be a {TINY_KEYS[key].__name__}, got {value!r}"
                ) from None
    return arch, opts


def check_model_name(name: str | None, what: str = "model_name_or_path") -> None:
    """Fail early on a missing name or a malformed tiny spec (hub ids cannot be checked offline)."""
    if not name:
        raise SpecsError(f"{what} is required (a hub id, a local folder, or tiny:llama / tiny:qwen2)")
    if is_tiny(name):
        parse_tiny(name)


def _load_error(name: str, e: Exception) -> SpecsError:
    lines = str(e).strip().splitlines() or [type(e).__name__]
    return SpecsError(f"cannot load {name!r}: {lines[0]}")


def load_tokenizer(name: str, trust_remote_code: bool = False) -> Any:
    """The tokenizer of a model name (tiny specs share the in-process one), with a pad token (EOS if it had none)."""
    if is_tiny(name):
        from specs_rl.tiny import make_tokenizer

        tok = make_tokenizer()
    else:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise _load_error(name, e) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    name: str,
    head: str,
    tokenizer: Any,
    *,
    dtype: str | None = "float32",
    num_labels: int | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> Any:
    """A model with the given head: ``causal_lm``, ``token_classification`` (2 labels) or ``sequence_classification``
    (1 label). Tiny specs are built from a config with a local seed; others load with ``from_pretrained``."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if is_tiny(name):
        from specs_rl import tiny

        arch, opts = parse_tiny(name)
        seed = opts.pop("seed", 0)
        if head == "causal_lm":
            return tiny.tiny_causal_lm(tokenizer, arch, seed=seed, **opts).train()
        if head == "token_classification":
            return tiny.tiny_token_classifier(
                tokenizer, arch, seed=seed, num_labels=num_labels or 2, **opts
            ).train()
        return tiny.tiny_seq_classifier(tokenizer, arch, seed=seed, **opts).train()

    import transformers

    cls = {
        "causal_lm": transformers.AutoModelForCausalLM,
        "token_classification": transformers.AutoModelForTokenClassification,
        "sequence_classification": transformers.AutoModelForSequenceClassification,
    }[head]
    import torch

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if dtype is not None:  # trl.ModelConfig's choices: auto, bfloat16, float16, float32
        kwargs["dtype"] = dtype if dtype == "auto" else getattr(torch, dtype)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if head != "causal_lm":
        kwargs["num_labels"] = num_labels or (2 if head == "token_classification" else 1)
    try:
        model = cls.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as e:
        raise _load_error(name, e) from None
    if head != "causal_lm" and model.config.pad_token_id is None:
        model.config.pad_token_id = (
            tokenizer.pad_token_id
        )  # sequence classification finds the last token by it
    return model


def disable_dropout(model: Any) -> None:
    """Set every dropout probability to 0 (TRL's ``disable_dropout_in_model``)."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def freeze_bottom(model: Any, layers: int) -> None:
    """Freeze the input embeddings and the first ``layers`` decoder layers of ``model`` (the rest and the head keep
    training); ``layers <= 0`` freezes nothing. The decoder stack is the model's ``ModuleList`` of
    ``config.num_hidden_layers`` layers (Llama, Qwen2, Mistral, ...)."""
    import torch

    if layers <= 0:
        return
    depth = getattr(model.config, "num_hidden_layers", None)
    stacks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == depth]
    if not stacks:
        raise SpecsError(f"freeze_layers: no stack of {depth} decoder layers found in {type(model).__name__}")
    if layers > depth:
        raise SpecsError(f"freeze_layers={layers} is more than the model's {depth} layers")
    frozen = [model.get_input_embeddings(), *stacks[0][:layers]]
    for module in frozen:
        for p in module.parameters():
            p.requires_grad = False


def save_trained(trainer: Any, output_dir: str | Path, tokenizer: Any, save_merged: bool) -> str:
    """Save the trained model to ``output_dir`` on the main process; returns what was written.

    ``"merged"``: LoRA adapters merged into the base weights (a plain checkpoint, what inference backends load);
    ``"adapter"``: the PEFT adapter only (``adapter_config.json`` names the base model); ``"full"``: a model trained
    without PEFT. The tokenizer is saved beside it in every case.
    """
    model = trainer.accelerator.unwrap_model(trainer.model)
    is_peft = hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")
    output_dir = Path(output_dir)
    kind = "full"
    if is_peft and save_merged:
        kind = "merged"
        if trainer.is_world_process_zero():
            merged = model.merge_and_unload()
            merged.save_pretrained(output_dir)
    else:
        kind = "adapter" if is_peft else "full"
        trainer.save_model(str(output_dir))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(output_dir)
    return kind
