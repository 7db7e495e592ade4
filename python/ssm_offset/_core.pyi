"""Typed stubs of the Rust core (`rust/src/python/`)."""

from os import PathLike
from collections.abc import Callable
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

# --- CEM search (rust/src/cem.rs) -------------------------------------------------------------

class CEM:
    """Cross-entropy method over `dim` mixing weights; ask/tell, deterministic for a seed."""

    def __init__(
        self,
        dim: int,
        population: int = 32,
        elite_fraction: float = 0.2,
        mean: float | list[float] | None = None,
        std: float | list[float] = 0.5,
        bounds: tuple[float, float] | None = (0.0, 1.0),
        std_floor: float = 0.0,
        smoothing: float = 0.0,
        seed: int = 0,
        maximize: bool = True,
        keep_best: bool = True,
        param: str = "box",
    ) -> None: ...
    def ask(self) -> npt.NDArray[np.float64]:
        """The population to evaluate, shape (population, dim); same again until `tell`."""
    def tell(self, fitness: npt.ArrayLike) -> None:
        """One score per row of the last `ask`; NaN/inf rank last."""
    def optimize(
        self, f: Callable[[npt.NDArray[np.float64]], npt.ArrayLike], iterations: int
    ) -> tuple[npt.NDArray[np.float64], float] | None: ...
    @property
    def best(self) -> tuple[npt.NDArray[np.float64], float] | None: ...
    @property
    def mean(self) -> npt.NDArray[np.float64]: ...
    @property
    def std(self) -> npt.NDArray[np.float64]: ...
    @property
    def iteration(self) -> int: ...
    @property
    def dim(self) -> int: ...
    @property
    def population(self) -> int: ...
    def state_dict(self) -> dict[str, Any]: ...
    @staticmethod
    def from_state(state: dict[str, Any]) -> CEM: ...
