"""Typed stubs of the Rust core (`rust/src/python/`)."""

from os import PathLike
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__version__: str

class CorruptFileError(ValueError):
    """A file exists but its content is invalid (truncated, corrupt, or disagreeing with the index)."""

class DataError(ValueError):
    """A line or record of a data file is invalid; the message names the file and line."""

def _panic_for_test(msg: str) -> None:
    """Panics inside the binding guard (raises RuntimeError); for the tests."""

# --- store (rust/src/store) -------------------------------------------------------------------

# (name, safetensors dtype name, shape, contiguous 1-D uint8 view of the little-endian bytes)
_TensorArg = tuple[str, str, list[int], npt.NDArray[np.uint8]]

class MappedFile:
    """Owner of a private (copy-on-write) file mapping; arrays returned by `Store.get` borrow it."""

# What Store.get returns: (the file's bytes, borrowing its mapping; [(name, dtype, shape, strides, start, end)]; entry)
_Got = tuple[npt.NDArray[np.uint8], list[tuple[str, str, tuple[int, ...], tuple[int, ...], int, int]], dict[str, Any]]

class GetMany(Iterator[_Got]):
    """`get`'s result per adapter, in order; the files are checked in the background meanwhile."""
    def __next__(self) -> _Got: ...
    def __len__(self) -> int: ...

class Store:
    def __init__(
        self, path: str | PathLike[str], create: bool = True, verify: Literal["always", "once"] = "always"
    ) -> None: ...
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
    def get(self, name: str, check_finite: bool = False) -> _Got: ...
    def get_many(self, names: list[str], check_finite: bool = False) -> GetMany: ...
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

# --- tokenization (rust/src/tokenize) ---------------------------------------------------------

class Template:
    """`{"prompt": str, "target": str, "eos": bool}` as JSON; `{field}` placeholders, `{{`/`}}` literal."""

    def __init__(self, spec_json: str) -> None: ...
    def fields(self) -> list[str]: ...
    def render(self, record: dict[str, Any]) -> tuple[str, str]: ...
    def to_json(self) -> str: ...

class Tokenizer:
    def __init__(self, path: str | PathLike[str], eos_token: str | None = None, pad_token: str | None = None) -> None: ...
    @property
    def eos_id(self) -> int | None: ...
    @property
    def pad_id(self) -> int: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def path(self) -> str: ...
    def encode(self, text: str) -> list[int]: ...
    def encode_texts(
        self, texts_: Iterable[str], eos: bool = False
    ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]: ...
    def encode_pairs(
        self,
        records: Iterable[dict[str, Any]],
        template: Template,
        max_length: int | None = None,
        truncation: str = "truncate",
        padded: bool = False,
        pad_to: int | None = None,
    ) -> tuple[dict[str, npt.NDArray[Any]], dict[str, Any]]: ...
    def encode_jsonl(
        self,
        path: str | PathLike[str],
        template: Template,
        max_length: int | None = None,
        truncation: str = "truncate",
        padded: bool = False,
        pad_to: int | None = None,
        cache_dir: str | PathLike[str] | None = None,
    ) -> tuple[dict[str, npt.NDArray[Any]], dict[str, Any]]: ...
    def pack(
        self, texts_: Iterable[str], block_size: int, eos: bool = True, pad_last: bool = False
    ) -> tuple[npt.NDArray[np.int32], dict[str, Any]]: ...

class JsonlReader(Iterator[Any]):
    def __init__(self, path: str | PathLike[str]) -> None: ...
    def __iter__(self) -> JsonlReader: ...
    def __next__(self) -> Any: ...
