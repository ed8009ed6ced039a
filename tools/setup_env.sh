#!/usr/bin/env bash
# Set up kd_det's environment: a virtualenv (default .venv in the repo, or
# $KD_DET_VENV) with torch, mmcv 2.1.0 built with its ops, mmengine, mmdet,
# the test dependencies and kd_det itself (editable). Idempotent: a second run
# only checks a stamp and returns. Versions: requirements/pins.txt.
#   KD_DET_TORCH=skip   keep the torch already in the venv (GPU machines)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${KD_DET_VENV:-$ROOT/.venv}
PY=$VENV/bin/python
STAMP=$VENV/.kd_det_setup
want=$(cat "$ROOT/requirements/pins.txt" "$ROOT/requirements/tests.txt" "$ROOT/setup.py" | sha1sum | cut -c1-40)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$PY" ] \
    && "$PY" -c "import kd_det, mmcv.ops" 2>/dev/null; then
    exit 0
fi

echo "[setup_env] setting up $VENV (a fresh machine builds mmcv from source; the whole setup took 11.5 min on a 2-core AMD EPYC Zen 4, about 20 min on a 2-core Zen 3)"
[ -x "$PY" ] || "${PYTHON:-python3}" -m venv "$VENV"
PIP=("$PY" -m pip install --quiet --disable-pip-version-check -c "$ROOT/requirements/pins.txt")
"${PIP[@]}" "setuptools<81" wheel numpy
if [ "${KD_DET_TORCH:-}" != skip ]; then
    "${PIP[@]}" torch
fi
if ! "$PY" -c "import mmcv.ops" 2>/dev/null; then
    echo "[setup_env] building mmcv with ops (pip caches the wheel for next time)"
    MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=${MAX_JOBS:-2} \
        "${PIP[@]}" --no-build-isolation mmcv
fi
"${PIP[@]}" -r "$ROOT/requirements/tests.txt"
"${PIP[@]}" --no-build-isolation -e "$ROOT"
"$PY" -c "import kd_det, mmcv.ops, mmdet, torch; print('[setup_env] kd_det', kd_det.__version__, '| torch', torch.__version__, '| mmcv', __import__('mmcv').__version__, '| mmdet', mmdet.__version__)"
# SSIMLoss compiles its fused CPU kernel on first use (~20 s, cached by torch): once here,
# not inside the first training run or test session (without a compiler it falls back).
"$PY" -c "import torch; from kd_det.losses import SSIMLoss; SSIMLoss()(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))"
echo "$want" > "$STAMP"
