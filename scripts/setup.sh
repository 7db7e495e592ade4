#!/usr/bin/env bash
# Idempotent set-up on a machine with Python >= 3.10, pip and cargo: a virtual environment in .venv,
# torch, and this package installed editable with its Rust extension. Re-running is quick: the
# install is redone only when the build inputs (pyproject, Cargo files, rust/src) change.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=.venv/.ssm-offset-build
want=$(cat pyproject.toml Cargo.toml Cargo.lock rust/Cargo.toml rust/build.rs $(find rust/src -type f | sort) | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    python -m pip install -q --upgrade pip
    python -m pip install -q "maturin>=1.7,<2"
    python -m pip install -q --no-build-isolation -e ".[test,bench]"
    echo "$want" > "$stamp"
fi
