#!/usr/bin/env bash
# The main job on a fresh machine: set up ./.venv (scripts/setup.sh, with the plot extra) and run
# `xlmr-fast pretrain` (no arguments: the embedded demo corpus, a tiny model on the CPU or a
# small one on a GPU). Extra arguments go to `xlmr-fast pretrain`, e.g.
#   bash scripts/pretrain.sh --corpus ../shared/data/cc100-mini --minutes 10
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh plot
. "${XLMR_FAST_VENV:-.venv}/bin/activate"
exec xlmr-fast pretrain "$@"
