#!/usr/bin/env bash
# Run kd_det's test suite, setting the environments up first if needed.
#   bash tools/run_tests.sh                  # what CI runs (.ci/run): the full suite on the newest
#                                            # stack (.venv), then the oldest stack's tier (.venv-oldest)
#   bash tools/run_tests.sh [pytest args]    # the newest stack only, e.g. -m "not slow" (the fast tier)
#   KD_DET_STACK=oldest bash tools/run_tests.sh [pytest args]   # the oldest stack only
# The stacks: requirements/pins.txt (newest) and requirements/pins-oldest.txt (oldest: Python 3.8,
# torch 2.1.2, numpy 1.x). The oldest stack's tier is the fast tier plus the tests marked `stacks`
# (resume, test and export of kd_det's own checkpoints); docs/contributing.md.
# Tests that train on coco128 use ../shared/data/coco128 beside the repository when it is there
# (KD_DET_TEST_DATA=DIR: DIR/coco128), else a stand-in the session generates.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OLDEST_TIER=(-m "not slow or stacks")

newest() {
    KD_DET_VENV=${KD_DET_VENV:-$ROOT/.venv} KD_DET_PINS=$ROOT/requirements/pins.txt bash tools/setup_env.sh
    "${KD_DET_VENV:-$ROOT/.venv}/bin/python" -m pytest tests -q -ra "$@"
}
oldest() {
    KD_DET_VENV=$ROOT/.venv-oldest KD_DET_PINS=$ROOT/requirements/pins-oldest.txt bash tools/setup_env.sh
    "$ROOT/.venv-oldest/bin/python" -m pytest tests -q -ra "$@"
}

# pytest exits 5 when it collected no test: that fails this script too.
if [ "${KD_DET_STACK:-}" = oldest ]; then
    [ $# -gt 0 ] || set -- "${OLDEST_TIER[@]}"
    oldest "$@"
elif [ $# -gt 0 ]; then
    newest "$@"
else
    newest
    echo "[run_tests] the oldest supported stack (requirements/pins-oldest.txt): ${OLDEST_TIER[*]}"
    oldest "${OLDEST_TIER[@]}"
fi
