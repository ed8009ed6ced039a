#!/usr/bin/env bash
# Run kd_det's test suite, setting the environment up first if needed.
#   bash tools/run_tests.sh [pytest args...]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/tools/setup_env.sh"
cd "$ROOT"
# pytest exits 5 when it collected no test: that fails this script too.
exec "${KD_DET_VENV:-$ROOT/.venv}/bin/python" -m pytest tests -q -ra "$@"
