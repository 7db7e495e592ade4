#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs every test: the Rust crate's checks and tests, then pytest.
# GPU tests carry the `cuda` marker and skip, saying why, where no GPU is present.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo fmt --all --check
cargo clippy --all-targets --all-features --quiet -- -D warnings
cargo test --quiet
.venv/bin/python -m pytest -q "$@"
