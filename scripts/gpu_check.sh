#!/usr/bin/env bash
# GPU check on a CUDA machine (the device machine: torch 2.11+cu130, triton 3.6, no network).
# Builds the CUDA extension, runs every test (GPU tests included) and every benchmark, and
# leaves logs + result CSVs in $OUT (default ./gpu_out), with the issues' goals judged from the
# rows in $OUT/goals.txt (bench/goals.py).
#   usage: bash scripts/gpu_check.sh [build|test|bench|tune|profile|all|ensure]
#          (default all; tune and profile are not in all; ensure: build only if the CUDA
#          extension does not load or its sources changed since its build, nothing else)
#   tune: `xlmr-fast tune` (TUNE_ARGS) -> $OUT/tuning.json: commit it as xlmr_fast/tuned/<slug>.json
#   profile: where the MLM step's device time goes (bench_model --profile, PROFILE_ARGS) ->
#            $OUT/profile.log and model_step_profile rows in $OUT/results.csv
#   BENCHES="attention train" runs only those bench/bench_<name>.py, in that order (default: all);
#   TEST_ARGS="-n 8 tests/ops" replaces the test selection (default: tests, serial).
# Baseline wheels (Liger, Cut Cross-Entropy) are installed from ./.whl when present.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_out}"; mkdir -p "$OUT"
WHAT="${1:-all}"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}"
# The device copy of the tree may carry a stale .git: pass XLMR_FAST_COMMIT=<local HEAD> in the call.
export XLMR_FAST_COMMIT="${XLMR_FAST_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
source scripts/baseline_wheels.sh
# A later call on the same (still warm) machine keeps the built extension: rebuild only when
# asked to, when the extension does not load with its CUDA kernels, or when its sources changed
# since it was built (the stamp: a hash of them, in the git-ignored build/).
cuda_ext_loads() { $PY -c "import sys, xlmr_fast._ext as e; sys.exit(0 if e.cuda_built() else 1)" 2>/dev/null; }
src_hash() { cat setup.py csrc/* kernels/cuda/* 2>/dev/null | sha256sum | cut -d' ' -f1; }
STAMP="${XLMR_FAST_BUILD_STAMP:-build/cuda_sources.sha256}"
if [[ "$WHAT" == build || "$WHAT" == all ]] || ! cuda_ext_loads \
   || [[ "$(cat "$STAMP" 2>/dev/null)" != "$(src_hash)" ]]; then
  { nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
    $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
    # all of pip's output: on a failed build its last lines are generic and the compiler's
    # errors come before them. --no-index: nothing to fetch, and no index to wait for offline
    time $PY -m pip install --no-index --no-build-isolation --no-deps -e . 2>&1
    $PY -c "import xlmr_fast._ext as e; print('extension', e.available(), e.build_info(), e._LOAD_ERROR)"
  } > "$OUT/build.log" 2>&1
  tail -5 "$OUT/build.log"
  if cuda_ext_loads; then
    mkdir -p "$(dirname "$STAMP")" && src_hash > "$STAMP"
  else
    rm -f "$STAMP"
    echo "build: the CUDA extension does not load (see $OUT/build.log)"
    # the plan's build step must say so (its rc); the other modes go on: the Triton paths need
    # no build
    [[ "$WHAT" == build || "$WHAT" == ensure ]] && exit 1
  fi
fi
if [[ "$WHAT" == test || "$WHAT" == all ]]; then
  timeout "${TEST_TIMEOUT:-240}" $PY -m pytest -q -m "${TEST_MARK:-not interpret}" ${TEST_ARGS:-tests} -p no:cacheprovider \
      --durations=15 > "$OUT/tests.log" 2>&1
  echo "tests rc=$?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests.log" | tail -40
fi
if [[ "$WHAT" == tune ]]; then
  timeout "${TUNE_TIMEOUT:-300}" $PY -m xlmr_fast tune --out "$OUT/tuning.json" ${TUNE_ARGS:-} \
      > "$OUT/tune.log" 2>&1
  echo "tune rc=$?"; tail -25 "$OUT/tune.log"
fi
if [[ "$WHAT" == profile ]]; then
  XLMR_FAST_BENCH_OUT="$OUT/results.csv" timeout "${PROFILE_TIMEOUT:-150}" $PY -m bench.bench_model \
      --profile ${PROFILE_ARGS:---providers ours_padded ours_unpad ours_lce_tokenchunk hf_sdpa} \
      > "$OUT/profile.log" 2>&1
  echo "profile rc=$?"; grep -vE "^\s*$" "$OUT/profile.log" | grep -v "^  top kernels" | tail -60
fi
if [[ "$WHAT" == bench || "$WHAT" == all ]]; then
  export XLMR_FAST_BENCH_OUT="$OUT/results.csv"
  if [[ -n "${BENCHES:-}" ]]; then files=(); for n in $BENCHES; do files+=("bench/bench_$n.py"); done
  else files=(bench/bench_*.py); fi
  for b in "${files[@]}"; do
    [[ -f "$b" ]] || { echo "=== $b: no such benchmark" >> "$OUT/bench.log"; continue; }
    m="bench.$(basename "$b" .py)"
    echo "=== $m" >> "$OUT/bench.log"
    args="${BENCH_ARGS:-}"
    # end to end: the compiled providers take minutes to compile; run them on their own
    # (python -m bench.bench_train) when the device time allows
    [[ "$m" == bench.bench_train ]] && args="${BENCH_TRAIN_ARGS:---providers ours,hf_sdpa --steps 4}"
    timeout "${BENCH_TIMEOUT:-200}" $PY -m "$m" $args >> "$OUT/bench.log" 2>&1 || echo "$m rc=$?" >> "$OUT/bench.log"
  done
  grep -vE "^\s*$" "$OUT/bench.log" | tail -80
  # the summary: the kernel issues' goals judged from these rows (bench/goals.py)
  $PY -m bench.goals "$OUT/results.csv" > "$OUT/goals.txt" 2>&1
  grep -A1 -E "^## |\[ *(MET|not met)\]" "$OUT/goals.txt" || true
fi
