#!/usr/bin/env bash
# Controls for the synthetic evidence, on a graph and seeds that no default was chosen on (--seed 100):
# SIT against the same selection step on iVAE (ivae-select) and the task-free step on SIT's representation
# (taskfree), in two regimes:
#   rotation-left    the default gauss-mean prior (n = 5, 8 tasks, 5 seeds)
#   prior-identifies a spread-modulated laplace-scale prior (n = 6, 10 tasks, 3 seeds): the task-free
#                    control needs no task there
#   bash examples/controls.sh            # OUT=runs/controls WORKERS=1
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/controls}"
WORKERS="${WORKERS:-1}"
export OMP_NUM_THREADS=1
SIM=".venv/bin/sit-causal simulate --seed 100 --workers $WORKERS --quiet"
run() {  # run DIR ARGS...: resumable (finished seeds are kept), a finished run is not redone
  local dir="$1"; shift
  [ -f "$dir/results.json" ] && return 0
  if [ -d "$dir/seeds" ]; then $SIM "$@" --out "$dir" --resume; else $SIM "$@" --out "$dir"; fi
}
run "$OUT/gauss-mean-n5" --tasks 8 --seeds 5
run "$OUT/laplace-n6" --family laplace-scale --factors 6 --tasks 10 --seeds 3
for run in gauss-mean-n5 laplace-n6; do .venv/bin/python benchmarks/heldout_summary.py "$OUT/$run"; echo; done | tee "$OUT/summary.md"
