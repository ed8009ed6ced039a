#!/usr/bin/env bash
# Run kd_det's test suite, setting the environment up first if needed.
#   bash tools/run_tests.sh [pytest args...]
# With no arguments: the full suite (what CI runs, through .ci/run). While working, the fast
# tier: bash tools/run_tests.sh -m "not slow" (docs/contributing_tests.md).
# Tests that train on coco128 use ../shared/data/coco128 beside the repository when it is there
# (KD_DET_TEST_DATA=DIR: DIR/coco128), else a stand-in the session generates.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/tools/setup_env.sh"
cd "$ROOT"
# pytest exits 5 when it collected no test: that fails this script too.
exec "${KD_DET_VENV:-$ROOT/.venv}/bin/python" -m pytest tests -q -ra "$@"
