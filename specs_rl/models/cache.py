"""One bounded cache policy for both model backends: keep the most recently stored entries."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


class LRU(OrderedDict):
    """A dict that keeps its ``size`` most recently put keys (the backends' memo of prompt and step token ids)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: Any, value: Any) -> Any:
        """Store ``value`` under ``key`` as the most recent entry, drop the oldest beyond ``size``; return ``value``."""
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)
        return value
