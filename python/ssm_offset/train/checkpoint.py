"""Checkpoints written atomically: everything goes into a fresh temporary directory beside the others, is
flushed to disk, and only then renamed to `checkpoint-<step>`. A rename is atomic, so a run killed at any
moment leaves every `checkpoint-*` directory complete; a leftover temporary directory is removed on resume.

A checkpoint holds
    model.safetensors     the trained tensors (an adapter's, or the whole model's for full fine-tuning)
    trainer_state.pt      optimiser, scheduler, grad scaler and RNG states (tensors and numbers only, read
                          back with torch.load(weights_only=True): nothing is unpickled)
    trainer_state.json    step, data position, early-stopping state, the config: readable by people
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from safetensors.torch import load_file, save_file

PREFIX = "checkpoint-"
_TMP = ".tmp-checkpoint-"
_FILES = ("model.safetensors", "trainer_state.pt", "trainer_state.json")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_tensors(path: Path, tensors: Dict[str, torch.Tensor]) -> None:
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def save_checkpoint(output_dir: Path, step: int, tensors: Dict[str, torch.Tensor], state: Dict[str, Any],
                    meta: Dict[str, Any], keep: int) -> Path:
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_TMP, dir=output_dir))
    target = output_dir / f"{PREFIX}{step:08d}"
    try:
        write_tensors(tmp / _FILES[0], tensors)
        torch.save(state, tmp / _FILES[1])
        (tmp / _FILES[2]).write_text(json.dumps(meta, indent=2) + "\n")
        for name in _FILES:
            _fsync(tmp / name)
        if target.exists():  # the same step saved again (a resumed run): swap the old one out first
            old = Path(tempfile.mkdtemp(prefix=_TMP, dir=output_dir))
            os.replace(target, old / "old")
        os.rename(tmp, target)
        _fsync(output_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def checkpoints(output_dir: Path) -> list:
    """The complete checkpoints in output_dir, oldest first."""
    found = []
    for p in Path(output_dir).glob(PREFIX + "*"):
        m = re.fullmatch(PREFIX + r"(\d+)", p.name)
        if m and p.is_dir() and all((p / f).is_file() for f in _FILES):
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: Path) -> Optional[Path]:
    """The newest complete checkpoint; temporary directories left by a killed run are removed."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    for stale in output_dir.glob(_TMP + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    found = checkpoints(output_dir)
    return found[-1] if found else None


def load_checkpoint(path: Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any], Dict[str, Any]]:
    path = Path(path)
    tensors = load_file(str(path / _FILES[0]))
    state = torch.load(path / _FILES[1], weights_only=True, map_location="cpu")
    meta = json.loads((path / _FILES[2]).read_text())
    return tensors, state, meta


def rng_state() -> Dict[str, Any]:
    """Every random generator the loop draws from (dropout, data order helpers), as tensors and numbers."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss,
                  "cached": cached},
        "python": {"version": version, "state": list(py_state), "gauss": gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "checkpoints", "rng_state", "set_rng_state",
           "write_tensors"]
