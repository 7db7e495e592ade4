"""Whether the compiled Rust core (`ssm_offset._core`) was built from the Rust sources beside this package.

The GPU machine has no cargo: it runs the abi3 wheel built on the CPU machine with the checkout's Python code.
A wheel built before a change to rust/ then fails late and obscurely (a missing argument deep inside a run), so
GPU scripts call `check_core("rust")` first. The digest is defined once, in rust/build.rs; `source_digest` is its
Python twin: sha256 over (relative path, NUL, bytes, NUL) of Cargo.toml, build.rs and every file under src/, in
sorted order of their '/'-separated relative paths."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Union


class StaleCoreError(RuntimeError):
    """The compiled core does not match the Rust sources of the checkout."""


def source_digest(rust_dir: Union[str, Path]) -> str:
    root = Path(rust_dir)
    files = [root / "Cargo.toml", root / "build.rs"] + [p for p in (root / "src").rglob("*") if p.is_file()]
    missing = [str(p) for p in files[:2] if not p.is_file()]
    if missing or not (root / "src").is_dir():
        raise FileNotFoundError(f"{root}: not the Rust crate (missing {missing or [str(root / 'src')]})")
    h = hashlib.sha256()
    for rel, path in sorted((p.relative_to(root).as_posix(), p) for p in files):
        h.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def built_digest() -> str:
    from . import _core

    return getattr(_core, "__source_digest__", "") or "(none: built before digests existed)"


def check_core(rust_dir: Union[str, Path]) -> str:
    """Returns the digest when the core matches `rust_dir`'s sources; raises StaleCoreError (saying what to
    rebuild) when it does not."""
    want, got = source_digest(rust_dir), built_digest()
    if want != got:
        raise StaleCoreError(
            f"ssm_offset._core was built from other Rust sources than {Path(rust_dir).resolve()}: built {got[:16]}, "
            f"sources {want[:16]}. Rebuild it (here: maturin build --release, and carry the new wheel in .whl/core; "
            "in a checkout: ./scripts/setup.sh)")
    return want
