#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the main job on the embedded default: `ssm-offset demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/ssm-offset demo "$@"
