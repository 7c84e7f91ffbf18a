#!/usr/bin/env bash
# Create ./.venv (or $XLMR_FAST_VENV) and install xlmr_fast with its compiled extension.
# torch is pinned to 2.13.0: on these machines that is a CPU wheel on disk, while an unpinned
# torch would pull a multi-GB CUDA build. On a GPU machine, install your CUDA torch first and
# set XLMR_FAST_TORCH="" to keep it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${XLMR_FAST_VENV:-.venv}"
TORCH_SPEC="${XLMR_FAST_TORCH-torch==2.13.0}"
EXTRAS="${1:-test}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
if [ -n "$TORCH_SPEC" ]; then python -m pip install -q "$TORCH_SPEC"; fi
# Build requirements installed up front so --no-build-isolation uses the torch above.
python -m pip install -q setuptools wheel ninja pybind11 numpy
python -m pip install -q --no-build-isolation -e ".[$EXTRAS]"
python -c "import xlmr_fast, xlmr_fast._ext as e; print('xlmr_fast', xlmr_fast.__version__, 'extension:', e.available(), e.build_info())"
