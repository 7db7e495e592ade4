"""Data: the JSONL reader and the tokenization pipeline (Rust core). Knows no model."""

from __future__ import annotations

from typing import Any

__all__ = ["Template", "Tokenizer", "read_jsonl"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import tokenize

        return getattr(tokenize, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
