"""Token text at the byte level, and the string-level step stop.

A step ends with the token whose text *completes* the step delimiter. Tokenizers merge the delimiter with
neighbouring characters (Qwen2.5 has a token ``".\\n\\n"``; a tokenizer trained without a pre-tokenizer split can
have ``".\\n\\nThe"``), so the stop is decided on the decoded text, not on token ids. The step stays a whole-token
sequence (draft and target log-probs must be over the same tokens), so **the step text is the decoded text of the
step's tokens: everything up to and including the token that completes the delimiter**. When that token carries
characters after the delimiter (``".\\n\\nThe"``), those characters belong to this step and the next step starts
after them. The delimiter must occur inside the step's own text (a delimiter split across two steps, which can only
happen after a step cut by the token limit, does not stop the second one early).

Byte-level BPE tokenizers (GPT-2 style: Qwen2.5, Llama 3, SmolLM2, the project's tiny tokenizer) map every token to
exact bytes, so the check costs O(1) per token: the last ``len(delimiter) - 1`` bytes of the step plus the new
token's bytes. Other tokenizers fall back to decoding the step's tokens at each check (exact, slower).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

_VERIFY_TEXT = "Step 1: x = 2.\n\nThen\t3 * (4 + 5) = 27;  ünïcödé 中文 ∑\n\n\nEnd."


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-character map (the alphabet of byte-level BPE vocabularies)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def special_ids(tokenizer: Any) -> set[int]:
    """Ids whose text never appears in a step (BOS/EOS/PAD, chat markers, other special added tokens)."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    for i, tok in decoder.items():
        if getattr(tok, "special", False):
            ids.add(int(i))
    return ids


class TokenText:
    """Per-token bytes of a tokenizer's first ``vocab`` ids, or a decode fallback when they are not exact."""

    def __init__(self, tokenizer: Any, vocab: int) -> None:
        self.tokenizer = tokenizer
        self.vocab = vocab
        self.special = special_ids(tokenizer)
        self.table: list[bytes] | None = self._byte_table()

    def _byte_table(self) -> list[bytes] | None:
        inverse = {c: b for b, c in bytes_to_unicode().items()}
        added = {}
        for i, tok in (getattr(self.tokenizer, "added_tokens_decoder", {}) or {}).items():
            added[int(i)] = str(getattr(tok, "content", tok))
        try:
            pieces = self.tokenizer.convert_ids_to_tokens(list(range(self.vocab)))
        except Exception:  # noqa: BLE001 - any failure means: use the decode fallback
            return None
        table: list[bytes] = []
        for i, piece in enumerate(pieces):
            if i in self.special or piece is None:
                table.append(b"")
            elif i in added:
                table.append(added[i].encode("utf-8"))
            else:
                try:
                    table.append(bytes(inverse[c] for c in piece))
                except KeyError:
                    return None
        # Trust the table only if it reproduces the tokenizer's own encoding of a mixed sample exactly.
        try:
            ids = self.tokenizer(_VERIFY_TEXT, add_special_tokens=False)["input_ids"]
        except Exception:  # noqa: BLE001
            return None
        if any(i >= self.vocab for i in ids) or b"".join(table[i] for i in ids) != _VERIFY_TEXT.encode():
            return None
        return table

    @property
    def exact(self) -> bool:
        """True when per-token bytes are exact (O(1) stop checks)."""
        return self.table is not None

    def bytes_of(self, token: int) -> bytes:
        assert self.table is not None
        return self.table[token] if token < len(self.table) else b""

    def text(self, ids: Sequence[int]) -> str:
        """The text of a step's tokens, special tokens dropped."""
        if self.table is not None:
            return b"".join(self.bytes_of(i) for i in ids).decode("utf-8", errors="replace")
        return self.tokenizer.decode(
            [i for i in ids if i not in self.special],
            skip_special_tokens=True,
            clean_up_tokenization_spaces=False,
        )


class StepStop:
    """Incremental check that a step's text contains the delimiter, one token at a time.

    ``feed(state, token) -> (stop, state)``; ``state`` is the step's last ``len(delimiter) - 1`` bytes (or, in the
    fallback, the step's token ids). The delimiter is complete at the first token for which the check fires: any
    occurrence inside ``tail + bytes(token)`` must use a byte of the new token, since ``tail`` alone is too short.
    """

    def __init__(self, delimiter: str, text: TokenText) -> None:
        if not delimiter:
            raise ValueError("the step delimiter must be non-empty")
        self.delimiter = delimiter
        self.delim = delimiter.encode("utf-8")
        self.keep = len(self.delim) - 1
        self.text = text

    def start(self) -> Any:
        return b"" if self.text.exact else []

    def feed(self, state: Any, token: int) -> tuple[bool, Any]:
        if self.text.exact:
            buf = state + self.text.bytes_of(token)
            if self.delim in buf:
                return True, b""
            return False, (buf[-self.keep :] if self.keep else b"")
        ids = [*state, token]
        return self.delimiter in self.text.text(ids), ids


def stop_index(pieces: Sequence[bytes], delimiter: str) -> int | None:
    """Index of the piece that completes ``delimiter`` in ``b"".join(pieces)`` (first occurrence), else None.

    >>> stop_index([b"a", b".\\n", b"\\nThe", b"\\n\\n"], "\\n\\n")
    2
    """
    delim = delimiter.encode("utf-8")
    seen = b""
    for i, p in enumerate(pieces):
        seen += p
        if delim in seen:
            return i
    return None
