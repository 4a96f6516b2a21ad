#!/usr/bin/env bash
# The UIC's own test, in the linear-left regime: latents related by a linear SCM within every dataset
# (--latent-scm 0.5), so within-dataset whitening leaves a general linear map and simulate's selection
# step searches over GL(n). UIC graphs against nested graphs (some C_i inside a C_j), 5 graphs of each
# kind (the graphs of --seed 300, 310, 320, 330, 340) x 3 data seeds each, n = 5, 8 tasks, gauss-mean;
# SIT and the task-free control. Seeds and graphs disjoint from the pilot (graph of seed 0).
#   bash examples/linear_regime.sh        # OUT=runs/linear_regime
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/linear_regime}"
export OMP_NUM_THREADS=1
run() {  # run DIR ARGS...: resumable (finished seeds are kept), a finished run is not redone
  local dir="$1"; shift
  [ -f "$dir/results.json" ] && return 0
  local sim=(.venv/bin/sit-causal simulate --workers 1 --threads 1 --quiet --latent-scm 0.5 --seeds 3
             --methods sit,taskfree "$@")
  if [ -d "$dir/seeds" ]; then "${sim[@]}" --out "$dir" --resume; else "${sim[@]}" --out "$dir"; fi
}
for seed in 300 310 320 330 340; do
  for mode in uic nested; do
    run "$OUT/${mode}_$seed" --graph-mode "$mode" --seed "$seed"
  done
done
.venv/bin/python benchmarks/linear_regime_summary.py "$OUT" | tee "$OUT/summary.md"
