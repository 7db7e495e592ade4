"""A directory-backed library of adapters ("experts"), backed by the Rust core (`rust/src/store`).

Each adapter is one safetensors file plus its description (method, base-model fingerprint, tags,
metrics, the adapter's config and free metadata) in one index for the whole store. Writes are atomic
and serialised across processes by an advisory lock; reads map the file (copy-on-write) and hand
out numpy arrays or torch tensors that point into the mapping, after checking the content hash.

    store = AdapterStore("experts/")
    store.put("samsum", tensors, config=adapter_config, method="state_offset", tags=["summarise"])
    tensors, config, entry = store.get("samsum")
    for tensors, config, entry in store.get_many(["samsum", "spider"]):  # files checked in parallel
        ...
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np

from . import _core

__all__ = ["AdapterStore", "base_fingerprint", "CorruptFileError"]

CorruptFileError = _core.CorruptFileError

# safetensors dtype name <-> numpy dtype (little-endian); BF16 and FP8 have no numpy dtype.
_NP = {
    "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "I16": np.int16, "U16": np.uint16,
    "F16": np.float16, "I32": np.int32, "U32": np.uint32, "F32": np.float32,
    "F64": np.float64, "I64": np.int64, "U64": np.uint64,
}
_NP_NAME = {np.dtype(v): k for k, v in _NP.items()}


@functools.cache
def _torch_dtypes() -> dict[str, Any]:
    import torch

    names = {
        "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16",
        "F16": "float16", "BF16": "bfloat16", "I32": "int32", "U32": "uint32", "F32": "float32",
        "F64": "float64", "I64": "int64", "U64": "uint64",
        "F8_E5M2": "float8_e5m2", "F8_E4M3": "float8_e4m3fn",
    }
    return {k: getattr(torch, v) for k, v in names.items() if hasattr(torch, v)}


def _as_bytes(name: str, value: Any) -> tuple[str, str, list[int], np.ndarray]:
    """One tensor as (name, dtype, shape, contiguous uint8 view); copies only what is not already
    a contiguous CPU buffer."""
    if isinstance(value, np.ndarray):
        arr = np.ascontiguousarray(value)
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        dtype = _NP_NAME.get(arr.dtype.newbyteorder("="))
        if dtype is None:
            raise TypeError(f"tensor {name!r}: numpy dtype {arr.dtype} is not supported by safetensors")
        return name, dtype, list(arr.shape), arr.reshape(-1).view(np.uint8)
    import torch

    if isinstance(value, torch.Tensor):
        rev = {v: k for k, v in _torch_dtypes().items()}
        if value.dtype not in rev:
            raise TypeError(f"tensor {name!r}: torch dtype {value.dtype} is not supported by safetensors")
        t = value.detach().to("cpu").contiguous()
        flat = t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
        return name, rev[value.dtype], list(t.shape), flat.numpy()
    raise TypeError(f"tensor {name!r}: expected a torch.Tensor or numpy.ndarray, got {type(value).__name__}")


def _dumps(what: str, value: Any) -> str | None:
    if value is None:
        return None
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} must be JSON-serialisable: {e}") from None


def base_fingerprint(config: Mapping[str, Any], state_dict: Mapping[str, Any] | None = None) -> str:
    """Fingerprint of a base model: its config (volatile keys such as `_name_or_path` ignored), its
    parameter names, dtypes and shapes, and a sample of its weights, so that two checkpoints of
    the same shape differ. `config` may be a transformers config object."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    tensors = [_as_bytes(k, v) for k, v in (state_dict or {}).items()]
    return _core.base_fingerprint(json.dumps(_json_safe(config), default=str), tensors)


def _json_safe(value: Any) -> Any:
    """Non-finite floats as strings: JSON has none (Mamba-2's time_step_limit holds inf), and the store's
    fingerprint parses the config as strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _unpack(name: str, got: tuple[np.ndarray, list[tuple], dict[str, Any]], as_: str):
    """(tensors, config, entry) from what the core's `get` returns: tensors are views of the mapped file."""
    buf, locs, entry = got
    tensors: dict[str, Any] = {}
    if as_ == "torch":
        import torch

        dtypes = _torch_dtypes()
        base = torch.from_numpy(buf)
        typed: dict[str, Any] = {}
        as_strided = torch.as_strided
        for tname, dtype, shape, strides, start, end in locs:
            view = typed.get(dtype)
            if view is None:  # one typed view of the whole mapping per dtype
                td = dtypes[dtype]
                size = td.itemsize
                view = typed[dtype] = (base[: len(buf) // size * size].view(td), size)
            whole, size = view
            if start % size:  # never for files the store writes (safetensors aligns them)
                tensors[tname] = base[start:end].clone().view(whole.dtype).view(shape)
            else:
                tensors[tname] = as_strided(whole, shape, strides, start // size)
    elif as_ == "numpy":
        for tname, dtype, shape, _, start, end in locs:
            if dtype not in _NP:
                raise TypeError(f"tensor {tname!r} of adapter {name!r} has dtype {dtype}, which numpy lacks; use as_='torch'")
            tensors[tname] = buf[start:end].view(_NP[dtype]).reshape(shape)
    else:
        raise ValueError(f"as_ must be 'torch' or 'numpy', got {as_!r}")
    config = entry.pop("config", None) or {}
    return tensors, config, entry


class AdapterStore:
    """A directory of adapters. Safe to use from several processes at once.

    `verify` says when `get` checks an adapter file's content hash (a full pass over its bytes):
    `"always"` (the default) on every load; `"once"` on the first load of each file in this
    process, then again only if the file's identity changes. Store files are immutable and named
    by their content hash, so a file that hashed correctly is remembered by (device, inode, size,
    mtime, ctime, content hash); any write to it through the file system changes its ctime, which
    programs cannot set back, and makes the next load hash it again. `"once"` does not catch
    corruption that bypasses the file system after the first check (a failing disk, writes to
    the raw device). Either way every load checks the file's structure, size and tensor list
    against the index, and `verify()` always hashes every file."""

    def __init__(
        self, path: str | os.PathLike[str], create: bool = True, verify: Literal["always", "once"] = "always"
    ) -> None:
        self._store = _core.Store(os.fspath(path), create, verify)

    @property
    def root(self) -> str:
        return os.fspath(self._store.root)

    def put(
        self,
        name: str,
        tensors: Mapping[str, Any],
        config: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        *,
        method: str | None = None,
        base_config: Mapping[str, Any] | None = None,
        base_fingerprint: str | None = None,
        tags: Iterable[str] = (),
        metrics: Mapping[str, Any] | None = None,
        overwrite: bool = True,
        check_finite: bool = False,
    ) -> dict[str, Any]:
        """Stores `tensors` (a state dict, e.g. the content of `adapter_model.safetensors`) with the
        adapter's `config` (e.g. `adapter_config.json`) and free `metadata`. `method` defaults to
        the config's `peft_type`; the base-model fingerprint is `base_fingerprint`, or computed
        from `base_config`. Returns the index entry."""
        if method is None and config is not None:
            method = config.get("peft_type")
        if base_fingerprint is None and base_config is not None:
            base_fingerprint = globals()["base_fingerprint"](base_config)
        payload = [_as_bytes(k, v) for k, v in tensors.items()]
        return self._store.put(
            name,
            payload,
            method=None if method is None else str(method),
            base_fingerprint=base_fingerprint,
            tags=[str(t) for t in tags],
            metrics_json=_dumps("metrics", metrics),
            config_json=_dumps("config", config),
            metadata_json=_dumps("metadata", metadata),
            overwrite=overwrite,
            check_finite=check_finite,
        )

    def get(
        self, name: str, as_: Literal["torch", "numpy"] = "torch", check_finite: bool = False
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Returns (tensors, config, entry): `entry` is the index entry (method, base_fingerprint,
        tags, metrics, created, content_hash, and the free `metadata`) without its list of tensors, which
        the tensors themselves give (`entry(name)` has it). Tensors point into a private (copy-on-write)
        mapping of the file: no copy is made, and writing to them never changes the store."""
        return _unpack(name, self._store.get(name, check_finite), as_)

    def get_many(
        self, names: Iterable[str], as_: Literal["torch", "numpy"] = "torch", check_finite: bool = False
    ) -> list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
        """`get` for each of `names`, in order, checked alike (the content hash on every load, unless
        `verify="once"`). Faster than a loop of `get`: the index is read once, and the files are checked
        in parallel, outside the GIL. Raises for the first adapter (in `names` order) that fails to load."""
        names = list(names)
        if as_ not in ("torch", "numpy"):  # before any file is read
            raise ValueError(f"as_ must be 'torch' or 'numpy', got {as_!r}")
        return [_unpack(n, got, as_) for n, got in zip(names, self._store.get_many(names, check_finite))]

    def entry(self, name: str) -> dict[str, Any]:
        """The index entry of one adapter (no file is read)."""
        for e in self._store.list():
            if e["name"] == name:
                return e
        raise KeyError(f"no adapter named {name!r} in the store at {self.root}")

    def list(
        self, tag: str | None = None, method: str | None = None, base_fingerprint: str | None = None
    ) -> list[dict[str, Any]]:
        """Index entries, sorted by name, filtered by tag, method and base-model fingerprint."""
        return self._store.list(tag, method, base_fingerprint)

    def names(self, **filters: Any) -> list[str]:
        return [e["name"] for e in self.list(**filters)]

    def delete(self, name: str) -> bool:
        return self._store.delete(name)

    def verify(self, check_finite: bool = False) -> list[dict[str, Any]]:
        """Problems found (corrupt files, an index that disagrees with them, debris); empty if sound."""
        return self._store.verify(check_finite)

    def compact(self, rebuild: bool = False) -> dict[str, Any]:
        """Removes debris of interrupted writes; with `rebuild`, reconstructs the index from the files."""
        return self._store.compact(rebuild)

    def __contains__(self, name: str) -> bool:
        return name in self.names()

    def __len__(self) -> int:
        return len(self.list())

    def __repr__(self) -> str:
        return f"AdapterStore({self.root!r})"
