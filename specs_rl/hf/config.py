"""Configuration of the Hugging Face backend. PLACEHOLDER: the HF-backend engineer replaces this file.

Contract: ``HFConfig`` is a dataclass whose fields all have defaults, with ``validate()`` raising ValueError;
this module imports nothing heavy (no torch, no transformers) because ``specs_rl.runner`` imports it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class HFConfig:
    def validate(self) -> None:
        return None
