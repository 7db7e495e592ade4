"""Typed stubs of the Rust core (`rust/src/python/`)."""

from os import PathLike
from typing import Any

import numpy as np
import numpy.typing as npt

__version__: str

class CorruptFileError(ValueError):
    """A file exists but its content is invalid (truncated, corrupt, or disagreeing with the index)."""

class DataError(ValueError):
    """A line or record of a data file is invalid; the message names the file and line."""

# --- store (rust/src/store) -------------------------------------------------------------------

# (name, safetensors dtype name, shape, contiguous 1-D uint8 view of the little-endian bytes)
_TensorArg = tuple[str, str, list[int], npt.NDArray[np.uint8]]

class MappedFile:
    """Owner of a private (copy-on-write) file mapping; arrays returned by `Store.get` borrow it."""

class Store:
    def __init__(self, path: str | PathLike[str], create: bool = True) -> None: ...
    @property
    def root(self) -> str: ...
    def put(
        self,
        name: str,
        tensors: list[_TensorArg],
        *,
        method: str | None = None,
        base_fingerprint: str | None = None,
        tags: list[str] = ...,
        metrics_json: str | None = None,
        config_json: str | None = None,
        metadata_json: str | None = None,
        overwrite: bool = True,
        check_finite: bool = False,
    ) -> dict[str, Any]: ...
    def get(
        self, name: str, check_finite: bool = False
    ) -> tuple[npt.NDArray[np.uint8], list[tuple[str, str, list[int], int, int]], dict[str, Any]]: ...
    def list(
        self, tag: str | None = None, method: str | None = None, base_fingerprint: str | None = None
    ) -> list[dict[str, Any]]: ...
    def delete(self, name: str) -> bool: ...
    def verify(self, check_finite: bool = False) -> list[dict[str, Any]]: ...
    def compact(self, rebuild: bool = False) -> dict[str, Any]: ...

def base_fingerprint(config_json: str, tensors: list[_TensorArg] = ...) -> str: ...
