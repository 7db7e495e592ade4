"""Self-adaptation: expert mixing and its search (CEM). Submodules are imported on first use."""

from __future__ import annotations

from typing import Any

__all__ = ["CEM"]


def __getattr__(name: str) -> Any:
    if name == "CEM":
        from .cem import CEM

        return CEM
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
