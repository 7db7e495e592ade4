"""The compiled core knows which Rust sources it was built from (rust/build.rs), and Python computes the same
digest for a checkout: GPU scripts refuse a stale wheel before any work (ssm_offset.native.check_core)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ssm_offset.native import StaleCoreError, built_digest, check_core, source_digest

RUST = Path(__file__).resolve().parents[1] / "rust"


def test_installed_core_was_built_from_this_checkout():
    # setup.sh rebuilds whenever rust/ changes, so a mismatch here means a stale extension
    assert check_core(RUST) == built_digest() == source_digest(RUST)


def test_any_change_to_the_sources_is_caught(tmp_path):
    crate = tmp_path / "rust"
    crate.mkdir()
    for name in ("Cargo.toml", "build.rs"):
        shutil.copy(RUST / name, crate / name)
    shutil.copytree(RUST / "src", crate / "src")
    assert source_digest(crate) == source_digest(RUST)
    (crate / "src" / "lib.rs").write_text((crate / "src" / "lib.rs").read_text() + "\n// edited\n")
    with pytest.raises(StaleCoreError, match="Rebuild"):
        check_core(crate)
    # a new file counts too, and so does a rename
    (crate / "src" / "lib.rs").write_text((RUST / "src" / "lib.rs").read_text())
    (crate / "src" / "extra.rs").write_text("")
    assert source_digest(crate) != source_digest(RUST)


def test_not_a_crate(tmp_path):
    with pytest.raises(FileNotFoundError, match="not the Rust crate"):
        source_digest(tmp_path)
