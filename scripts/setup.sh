#!/usr/bin/env bash
# Idempotent set-up on a machine with Python >= 3.10, pip and cargo: a virtual environment in .venv,
# torch, and this package installed editable with its Rust extension. Re-running is quick: the
# install is redone only when the build inputs (this script, pyproject, Cargo files, rust/src) change.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=.venv/.ssm-offset-build
want=$(cat scripts/setup.sh pyproject.toml Cargo.toml Cargo.lock rust/Cargo.toml rust/build.rs $(find rust/src -type f | sort) | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    python -m pip install -q --upgrade pip
    python -m pip install -q "maturin>=1.7,<2"
    python -m pip install -q --no-build-isolation -e ".[test,bench]"
    # mamba_ssm's Triton SSD stages, pure Python (its CUDA extension is not built, nor a prebuilt wheel fetched):
    # with them tests/test_ssd_interpret.py runs our whole Mamba-2 CUDA path under Triton's CPU interpreter.
    MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE python -m pip install -q --no-build-isolation --no-deps \
        "mamba-ssm==2.3.2.post1" "einops>=0.7"
    echo "$want" > "$stamp"
fi
