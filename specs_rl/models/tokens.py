"""What both backends ask of a generator tokenizer: its end-of-sequence ids, and whether two tokenizers agree."""

from __future__ import annotations

from typing import Any


def eos_ids(tokenizer: Any, generation_eos: Any, vocab: int) -> frozenset[int]:
    """End-of-sequence ids: the tokenizer's and the generation config's (``eos_token_id``: an id, a list, or None),
    those below ``vocab``."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if isinstance(generation_eos, int):
        ids.add(generation_eos)
    elif isinstance(generation_eos, (list, tuple)):
        ids.update(int(e) for e in generation_eos)
    return frozenset(i for i in ids if 0 <= i < vocab)


def same_tokenizer(a: Any, b: Any) -> bool:
    """Token ids mean the same text in both (same vocabulary and special tokens)."""
    if a is b:
        return True
    return a.get_vocab() == b.get_vocab() and list(a.all_special_tokens) == list(b.all_special_tokens)
