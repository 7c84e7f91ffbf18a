#!/usr/bin/env bash
# The open goals' measurements in the order they matter, under a deadline, so that one device
# call (at most 600 s, and a session's whole device time is ~15 min, start-up included) never
# dies half-way: each step runs with a timeout cut to the time left, and a step that cannot get
# its minimum is skipped and named. Logs and results.csv land in $OUT (see gpu_check.sh).
#   usage: XLMR_FAST_COMMIT=<sha> bash scripts/device_plan.sh 1|2      (DEADLINE=590 seconds)
# DEADLINE: the seconds this call may run (call 2: what the session has left; at most 590, as a
# call gets 600). The steps end TAIL=20 s before it: the goals and the summary below, and a step
# killed at its limit, need that time, and a call cut by its own limit would lose them.
#   1: build; LCE at the goal shape (N8192 H1024, full: eager, compile, Liger, CCE, ours);
#      attention at 64x512 (--quick); mlm_mask; GPU tests; step profile; LCE token-chunk phases
#   2: fused layer ops; attention at the fine-tuning shapes with every block config; xlmr-fast
#      tune (writes $OUT/tuning.json); the training step end to end (MFU, vs HF, with its
#      kernel profile); the other LCE shapes
#   both end with the issues' goals judged from the call's rows ($OUT/goals.txt, bench/goals.py)
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-$PWD/gpu_out}"; mkdir -p "$OUT"
PY="${PYTHON:-python3}"
DEADLINE="${DEADLINE:-590}"
(( DEADLINE > 590 )) && DEADLINE=590
TAIL=20
T0=$SECONDS
export XLMR_FAST_BENCH_OUT="$OUT/results.csv" PYTHONUNBUFFERED=1
source scripts/baseline_wheels.sh
SUMMARY=()
echo "=== plan $* (deadline ${DEADLINE}s, steps end ${TAIL}s before it)" >> "$OUT/plan.log"

# step NAME MIN_S MAX_S CMD...: run CMD (output appended to $OUT/plan.log) with a timeout of
# min(MAX_S, time left before DEADLINE - TAIL); skipped when less than MIN_S is left; a step
# still running 10 s after its limit's SIGTERM gets a SIGKILL. The benches see a soft deadline
# (XLMR_FAST_BENCH_DEADLINE, bench/harness.py) an eighth of the limit + 5 s before it: their
# timing loops stop warming up and timing there and write the rows they have.
step() {
  local name=$1 min=$2 max=$3; shift 3
  local left=$(( DEADLINE - TAIL - (SECONDS - T0) ))
  if (( left < min )); then SUMMARY+=("$name: skipped (${left}s left, needs ${min}s)"); return; fi
  local lim=$(( left < max ? left : max )) t=$SECONDS
  local soft=$(( lim - lim / 8 - 5 ))
  echo "=== $name (limit ${lim}s, bench deadline ${soft}s)" >> "$OUT/plan.log"
  XLMR_FAST_BENCH_DEADLINE=$(( $(date +%s) + soft )) timeout -k 10 "$lim" "$@" >> "$OUT/plan.log" 2>&1
  local rc=$?
  SUMMARY+=("$name: rc=$rc in $(( SECONDS - t ))s")
}

case "${1:-1}" in
  1)
    step build 60 200 bash scripts/gpu_check.sh ensure   # builds unless the extension loads
    step lce-goal 40 150 $PY -m bench.bench_linear_cross_entropy --N 8192 --H 1024 \
        --modes full --providers torch-eager torch-compile liger cce ours-triton
    step attention-64x512 30 120 $PY -m bench.bench_attention --quick
    # GPU rows only: the CPU baselines (HF collator, our C++ kernel) are measured on any machine
    step mlm_mask 20 60 env XLMR_FAST_BENCH_SKIP_CPU=1 $PY -m bench.bench_mlm_mask
    # 8 workers when pytest-xdist is there (it was on every device so far), else one process.
    # -v: a line per finished test, so that a run cut by its time limit (361 gpu tests now, 256
    # took 251 s on 11-23) still says which passed and which failed.
    XDIST=$($PY -c "import xdist" >/dev/null 2>&1 && echo "-n 8")
    step gpu-tests 120 280 $PY -m pytest -v -m gpu $XDIST tests -p no:cacheprovider --durations=30
    step profile 40 120 $PY -m bench.bench_model --profile \
        --providers ours_padded ours_unpad ours_lce_tokenchunk hf_sdpa
    step lce-phases 20 60 $PY -m bench.bench_linear_cross_entropy --breakdown --rows 2048
    ;;
  2)
    step build 60 200 bash scripts/gpu_check.sh ensure
    # the fused layer ops first: issue 5's HBM goal and their keep-or-drop verdicts. Call 2
    # usually runs on what call 1 left of the session's ~15 device minutes (DEADLINE=<s>).
    step add_dropout_layernorm 30 100 $PY -m bench.bench_add_dropout_layernorm
    step bias_gelu 30 100 $PY -m bench.bench_bias_gelu
    # fine-tuning shapes with every block config: the rows TUNED_BY_SEQLEN is filled from
    step attention-short 40 120 $PY -m bench.bench_attention --short --tune
    step tune 120 260 $PY -m xlmr_fast tune --out "$OUT/tuning.json"
    step train-e2e 60 150 $PY -m bench.bench_train --presets base --micro 32 --steps 4 \
        --providers ours,hf_sdpa --tokens 5000000 --kernel-profile
    step lce-other-shapes 40 150 $PY -m bench.bench_linear_cross_entropy --N 4915 \
        --H 768 1024 --modes forward full
    ;;
  *) echo "usage: bash scripts/device_plan.sh 1|2" >&2; exit 2 ;;
esac
# the issues' goals, judged from this call's rows (bench/goals.py only reads the CSV: no device
# time); $OUT/goals.txt has every goal, the output below the ones this call's rows decide
echo "=== goals" >> "$OUT/plan.log"
$PY -m bench.goals "$OUT/results.csv" > "$OUT/goals.txt" 2>&1
cat "$OUT/goals.txt" >> "$OUT/plan.log"
grep -A1 -E "\[ *(MET|not met)\]" "$OUT/goals.txt" || true
printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/plan_summary.txt"
grep -E "^(FAILED|ERROR)| (FAILED|ERROR) |passed|failed|^\[fail\]" "$OUT/plan.log" | tail -30 || true
