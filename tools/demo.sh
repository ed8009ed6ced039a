#!/usr/bin/env bash
# The demo, setting the environment up first if needed (tools/setup_env.sh):
#   bash tools/demo.sh [tools/demo.py flags: --methods seed, --seeds 3, --quick, ...]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/tools/setup_env.sh"
cd "$ROOT"
exec "${KD_DET_VENV:-$ROOT/.venv}/bin/python" tools/demo.py "$@"
