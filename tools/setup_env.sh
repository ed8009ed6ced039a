#!/usr/bin/env bash
# Set up kd_det's environment: torch, mmcv 2.1.0 built with its ops for that torch,
# mmengine, mmdet, the test dependencies and kd_det itself (editable).
# Idempotent: a second run only checks a stamp and returns.
#   KD_DET_VENV=DIR     the environment (default .venv in the repo): a new venv is
#                       made there, or an existing venv/conda env is used as it is
#   KD_DET_PINS=FILE    the tested stack to install (default requirements/pins.txt,
#                       the newest; requirements/pins-oldest.txt: torch 2.1, numpy 1.x)
#   KD_DET_TORCH=skip   keep the torch already in the environment (GPU machines):
#                       nothing pins or replaces it
#   PYTHON=python3.x    the interpreter for a new venv (default: the pins file's)
# mmcv is built once per torch build and Python and cached as a wheel in
# ${KD_DET_CACHE:-~/.cache/kd_det}/mmcv/<torch>-<python>/ (pip's own cache would hand a
# wheel built for one torch to another: "undefined symbol" at import).
# Either the whole setup finishes, or the environment is left as it was: a venv this run
# made is removed, an existing one is put back to the packages it had. It says which.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${KD_DET_VENV:-$ROOT/.venv}
PINS=$(realpath "${KD_DET_PINS:-$ROOT/requirements/pins.txt}")
PY=$VENV/bin/python
STAMP=$VENV/.kd_det_setup
want=$( (cat "$PINS" "$ROOT/requirements/tests.txt" "$ROOT/setup.py" "$ROOT/kd_det/supported.py"
        echo "torch=${KD_DET_TORCH:-}") | sha1sum | cut -c1-40)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$PY" ] \
    && "$PY" -c "import kd_det" 2>/dev/null; then
    exit 0
fi
say() { echo "[setup_env] $*"; }

find_python() {  # the interpreter named in the pins file ("# python: 3.8"), or $PYTHON
    local want_py cand
    [ -n "${PYTHON:-}" ] && { echo "$PYTHON"; return; }
    want_py=$(sed -n 's/^# python: \([0-9.]*\).*/\1/p' "$PINS" | head -n1)
    for cand in "python$want_py" "$(pyenv root 2>/dev/null)"/versions/"$want_py".*/bin/python"$want_py"; do
        if "$cand" -c '' 2>/dev/null; then echo "$cand"; return; fi
    done
    say "no Python $want_py found (the pins file $PINS asks for it): install it or set PYTHON=" >&2
    return 1
}

# What to restore if a step fails: a venv made here is removed; an existing one gets its
# packages back (pip freeze before, reinstalled from it after).
created=0
BEFORE=$(mktemp)
trap 'rm -f "$BEFORE"' EXIT
if [ -x "$PY" ]; then
    "$PY" -m pip freeze --all --disable-pip-version-check > "$BEFORE"
else
    PYBASE=$(find_python)
    say "making a venv at $VENV with $("$PYBASE" --version 2>&1)"
    "$PYBASE" -m venv "$VENV"
    created=1
fi
restore() {
    local rc=${1:-$?}
    trap - ERR INT TERM
    if [ "$created" = 1 ]; then
        rm -rf "$VENV"
        say "FAILED (exit $rc); the environment is left as it was: the venv this run made at $VENV was removed"
    else
        local now extra
        now=$(mktemp)
        "$PY" -m pip freeze --all --disable-pip-version-check > "$now"
        extra=$(comm -13 <(sed 's/[=@ ].*//' "$BEFORE" | sort -u) <(sed 's/[=@ ].*//' "$now" | sort -u) | grep -v '^-e' || true)
        [ -z "$extra" ] || "$PY" -m pip uninstall -q -y $extra || true
        "$PY" -m pip install -q --no-deps --disable-pip-version-check -r "$BEFORE" || true
        "$PY" -m pip freeze --all --disable-pip-version-check > "$now"
        if diff -q "$BEFORE" "$now" >/dev/null; then
            say "FAILED (exit $rc); the environment is left as it was: $VENV has the packages it had before"
        else
            say "FAILED (exit $rc), and $VENV could NOT be put back as it was; it differs in:"
            diff "$BEFORE" "$now" || true
        fi
        rm -f "$now"
    fi
    exit "$rc"
}
trap restore ERR
trap 'restore 143' TERM
trap 'restore 130' INT

say "setting up $VENV for $(basename "$PINS") (a fresh machine builds mmcv from source: about 7 min of the setup on 2 cores)"
CONSTRAINTS=$(mktemp)
trap 'rm -f "$BEFORE" "$CONSTRAINTS"' EXIT
if [ "${KD_DET_TORCH:-}" = skip ]; then
    # keep the environment's torch: no torch pin, and numpy 1.x where that torch needs it
    grep -v '^torch[=<>!~ ]' "$PINS" > "$CONSTRAINTS"
    "$PY" -c "import torch, sys; sys.exit(tuple(map(int, torch.__version__.split('.')[:2])) >= (2, 3))" \
        && echo 'numpy<2' >> "$CONSTRAINTS"
else
    cp "$PINS" "$CONSTRAINTS"
fi
PIP=("$PY" -m pip install --quiet --disable-pip-version-check -c "$CONSTRAINTS")
"${PIP[@]}" --upgrade "setuptools<81" wheel  # PEP 660 editable installs (kd_det/.mim links)
"${PIP[@]}" numpy packaging
if [ "${KD_DET_TORCH:-}" = skip ]; then
    "$PY" -c "import torch" || { say "KD_DET_TORCH=skip, but $VENV has no torch: install yours first"; false; }
else
    "${PIP[@]}" torch
fi

# mmcv 2.1.0 with its ops, built for this torch: one cached wheel per torch build and Python.
MMCV=$(sed -n 's/^mmcv==//p' "$PINS")
TORCH_KEY=$("$PY" -c "import sys, torch; print(f'torch{torch.__version__}-cp{sys.version_info[0]}{sys.version_info[1]}' + ('-cuda' if torch.cuda.is_available() or '${FORCE_CUDA:-0}' == '1' else ''))")
TORCH_VERSION=$("$PY" -c "import torch; print(torch.__version__)")
RECORD=kd_det_built_for_torch  # in mmcv's dist-info: read by kd_det.supported.check_mmcv_build
built_for=$("$PY" -c "from importlib.metadata import distribution as d; print(d('mmcv').read_text('$RECORD') or '')" 2>/dev/null || true)
if [ "$built_for" != "$TORCH_VERSION" ] || ! "$PY" -c "import mmcv.ops" 2>/dev/null; then
    WHEELS=${KD_DET_CACHE:-$HOME/.cache/kd_det}/mmcv/$TORCH_KEY
    if ! ls "$WHEELS"/mmcv-"$MMCV"-*.whl >/dev/null 2>&1; then
        say "building mmcv $MMCV with ops for $TORCH_KEY (cached in $WHEELS for next time)"
        BUILD=$(mktemp -d)
        # -g0: no debug info (Python's own CFLAGS carry -g): the same -O3 code, objects a
        # fraction of the size, about 40% less compile time (docs/install.md)
        CFLAGS="${CFLAGS:-} -g0" MMCV_WITH_OPS=1 FORCE_CUDA=${FORCE_CUDA:-0} MAX_JOBS=${MAX_JOBS:-2} \
            "$PY" -m pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation \
            --no-binary mmcv --no-cache-dir -w "$BUILD" "mmcv==$MMCV"
        mkdir -p "$WHEELS" && mv "$BUILD"/mmcv-*.whl "$WHEELS"/ && rmdir "$BUILD"
    fi
    "${PIP[@]}" --force-reinstall --no-deps "$WHEELS"/mmcv-"$MMCV"-*.whl
    "${PIP[@]}" "$WHEELS"/mmcv-"$MMCV"-*.whl  # its dependencies
    "$PY" - "$RECORD" "$TORCH_VERSION" <<'EOF'
import sys
from importlib.metadata import distribution
meta = next(f for f in distribution('mmcv').files if f.name == 'METADATA')
meta.locate().with_name(sys.argv[1]).write_text(sys.argv[2])
EOF
fi
"${PIP[@]}" -r "$ROOT/requirements/tests.txt"
"${PIP[@]}" --no-build-isolation -e "$ROOT"
"$PY" -c "import kd_det, mmcv.ops, mmdet, torch, numpy; print('[setup_env] kd_det', kd_det.__version__, '| torch', torch.__version__, '| numpy', numpy.__version__, '| mmcv', __import__('mmcv').__version__, '| mmengine', __import__('mmengine').__version__, '| mmdet', mmdet.__version__)"
# SSIMLoss compiles its fused CPU kernel on first use (~20 s, cached by torch): once here,
# not inside the first training run or test session (without a compiler it falls back).
"$PY" -c "import torch; from kd_det.losses import SSIMLoss; SSIMLoss()(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))"
echo "$want" > "$STAMP"
trap - ERR INT TERM
say "done: $VENV is set up"
