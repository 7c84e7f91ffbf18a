#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole CPU test suite:
#   pass 1: everything except Triton-interpreter tests;
#   pass 2: Triton kernels on the CPU through TRITON_INTERPRET=1 (must be set before triton
#           compiles the kernels, hence a separate process).
# GPU tests (marker `gpu`) skip themselves without CUDA; on a GPU machine they run in pass 1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
. "${XLMR_FAST_VENV:-.venv}/bin/activate"
python -m pytest -q -m "not interpret" "$@"
TRITON_INTERPRET=1 python -m pytest -q -m interpret "$@"
