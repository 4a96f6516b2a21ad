#!/usr/bin/env bash
# sparse-multitask (group-sparse task heads, end to end) beside SIT and plain multi-task learning on held-out
# graphs: the default gauss-mean prior (regime rotation-left), n = 5, 8 tasks, the UIC graphs of --seed 400,
# 410, 420, 430, 440, 3 data seeds each (the sparse-multitask weight was looked at on the graph of seed 0 only).
#   bash examples/controls_sparse.sh      # OUT=runs/controls_sparse
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/controls_sparse}"
export OMP_NUM_THREADS=1
run() {  # run DIR ARGS...: resumable (finished seeds are kept), a finished run is not redone
  local dir="$1"; shift
  [ -f "$dir/results.json" ] && return 0
  local sim=(.venv/bin/sit-causal simulate --workers 1 --threads 1 --quiet --tasks 8 --seeds 3
             --methods sit,multitask,sparse-multitask "$@")
  if [ -d "$dir/seeds" ]; then "${sim[@]}" --out "$dir" --resume; else "${sim[@]}" --out "$dir"; fi
}
for seed in 400 410 420 430 440; do
  run "$OUT/uic_$seed" --seed "$seed"
done
.venv/bin/python benchmarks/controls_sparse_summary.py "$OUT" | tee "$OUT/summary.md"
