"""The seed of one sampling request, from the call's seed and the prefix alone (both backends hash it alike)."""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence


def request_seed(
    call_seed: int, ids: Sequence[int], occurrence: int, *, choice: int | None = None, bits: int = 63
) -> int:
    """``blake2b(call seed, prefix ids[, choice], occurrence of the prefix in the call)`` cut to ``bits`` bits.

    The in-process sampler seeds each candidate (``choice`` ``j``) with its own value; the served one seeds a
    prefix's request (``choice`` None) and the server gives choice ``j`` ``seed + j`` (``bits=62`` keeps that
    inside int64). So a prefix's draws depend on the call's seed and the prefix, never on the other prefixes.

    >>> request_seed(1, [5, 6], 0) == request_seed(1, (5, 6), 0) != request_seed(1, [5, 6], 1)
    True
    """
    h = hashlib.blake2b(digest_size=8)
    h.update(call_seed.to_bytes(8, "little"))
    h.update(array("q", ids).tobytes())
    if choice is not None:
        h.update(choice.to_bytes(4, "little"))
    h.update(occurrence.to_bytes(4, "little"))
    return int.from_bytes(h.digest(), "little") & ((1 << bits) - 1)
