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
    # The oldest stack's setup (a 2.5 GB torch download, an mmcv build) runs meanwhile at the
    # lowest CPU priority: it takes the network and whatever CPU the newest stack leaves idle.
    LOG=$(mktemp)
    (KD_DET_VENV=$ROOT/.venv-oldest KD_DET_PINS=$ROOT/requirements/pins-oldest.txt \
        nice -n 19 bash tools/setup_env.sh > "$LOG" 2>&1) &
    SETUP_OLDEST=$!
    # (`|| true`: under set -e a pkill that finds nothing would make the script exit 1 after a green run)
    trap 'pkill -TERM -P "$SETUP_OLDEST" 2>/dev/null || true' EXIT  # setup_env.sh then puts its env back
    newest
    echo "[run_tests] the oldest supported stack (requirements/pins-oldest.txt): ${OLDEST_TIER[*]}"
    wait "$SETUP_OLDEST" || { cat "$LOG"; exit 1; }
    grep '^\[setup_env\]' "$LOG" || true
    rm -f "$LOG"
    oldest "${OLDEST_TIER[@]}"
fi
