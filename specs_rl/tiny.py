"""Tiny random models and an in-process tokenizer: smoke runs, tests and the CPU configs, with no download.

    tok = make_tokenizer()
    draft = tiny_causal_lm(tok, hidden_size=32, seed=1)
    target = tiny_causal_lm(tok, hidden_size=64, seed=2)
    prm = tiny_token_classifier(tok)

Models are built with ``from_config`` from a Llama or Qwen2 config, so every code path is the one a real
checkpoint takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
CORPUS = [
    "What is 2 + 3? Step 1: add 2 and 3.\n\nThe answer is 5.\n\n",
    "Compute 7 * 6.\n\nStep 1: 7 * 6 = 42.\n\nFinal answer: \\boxed{42}",
    "Let x = 4. Then x^2 = 16 and sqrt(16) = 4.\n\nSo the answer is \\boxed{4}.",
    "The quick brown fox jumps over the lazy dog 0123456789 + - * / = ( ) { } \\frac\n\n",
    "Please reason step by step, and put your final answer within \\boxed{}.",
]


def make_tokenizer(
    vocab_size: int = 300, corpus: Sequence[str] = CORPUS, model_max_length: int = 2048
) -> Any:
    """A byte-level BPE tokenizer trained in-process (merges like "\\n\\n" with neighbours happen, as in real ones)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


def tiny_config(tok: Any, arch: str = "llama", vocab_pad: int = 0, **overrides: Any) -> Any:
    """A small Llama/Qwen2 config over ``tok``; ``vocab_pad`` adds unused embedding rows (as Qwen2.5-7B has)."""
    from transformers import LlamaConfig, Qwen2Config

    cfg = dict(
        vocab_size=len(tok) + vocab_pad,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    cfg.update(overrides)
    if "intermediate_size" not in overrides:
        cfg["intermediate_size"] = 2 * cfg["hidden_size"]
    classes = {"llama": LlamaConfig, "qwen2": Qwen2Config}
    if arch not in classes:
        raise ValueError(f"arch must be one of {sorted(classes)}, got {arch!r}")
    return classes[arch](**cfg)


def tiny_causal_lm(tok: Any, arch: str = "llama", seed: int = 0, vocab_pad: int = 0, **overrides: Any) -> Any:
    """A random causal LM; the global RNG is restored afterwards (randomness stays local to the build)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(tiny_config(tok, arch, vocab_pad, **overrides))
    return model.eval()


def tiny_token_classifier(
    tok: Any, arch: str = "llama", seed: int = 0, num_labels: int = 2, **overrides: Any
) -> Any:
    """A random token-classification PRM head (label 1 = the step is correct)."""
    import torch
    from transformers import AutoModelForTokenClassification

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForTokenClassification.from_config(
            tiny_config(tok, arch, num_labels=num_labels, **overrides)
        )
    return model.eval()


def tiny_seq_classifier(tok: Any, arch: str = "llama", seed: int = 0, **overrides: Any) -> Any:
    """A random sequence-classification reward model (one score at the last token)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_config(
            tiny_config(tok, arch, num_labels=1, **overrides)
        )
    return model.eval()
