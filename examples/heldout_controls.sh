#!/usr/bin/env bash
# The held-out controls tables: simulate's default methods (sit, ivae, ivae-select, taskfree, multitask; with
# sparse-multitask for the default family) on many random UIC graphs that no default was chosen on, a few
# data seeds each (METHODS=... overrides the list).
# Graph g uses data seeds g, g+1, ...; graphs are spaced by 10 so no two share a data seed. The defaults were
# chosen on the graphs of seeds 0 and 1 (simulate.md, linear_regime.md) and looked at on 100, 300-340 and 400;
# the graphs here start at 1000.
#
#   bash examples/heldout_controls.sh gauss-mean      # rotation-left: n = 5, 8 tasks, 20 graphs x 3 seeds
#   bash examples/heldout_controls.sh laplace-scale   # prior-identifies: n = 5, 8 tasks, 10 graphs x 2 seeds
#   bash examples/heldout_controls.sh linear-left     # linear-left (--latent-scm 0.5): n = 5, 8 tasks, 10 x 2
#   OUT=runs/heldout JOBS=2 GRAPHS=20 SEEDS=3 EXTRA='--steps 100' bash examples/heldout_controls.sh gauss-mean
#
# Two graphs run at once (JOBS, one torch thread each). Resumable: a finished graph is kept, a graph that was
# cut off resumes from its finished seeds. The table: benchmarks/heldout_summary.py OUT/FAMILY.
set -euo pipefail
cd "$(dirname "$0")/.."
FAMILY="${1:?usage: heldout_controls.sh gauss-mean|laplace-scale|linear-left}"
OUT="${OUT:-runs/heldout}"
JOBS="${JOBS:-2}"
export OMP_NUM_THREADS=1
DEFAULT_METHODS="sit,ivae,ivae-select,taskfree,multitask"
case "$FAMILY" in
  gauss-mean)    first=1000; GRAPHS="${GRAPHS:-20}"; SEEDS="${SEEDS:-3}"; args=(--tasks 8)
                 DEFAULT_METHODS="$DEFAULT_METHODS,sparse-multitask" ;;
  laplace-scale) first=2000; GRAPHS="${GRAPHS:-10}"; SEEDS="${SEEDS:-2}"; args=(--family laplace-scale --tasks 8) ;;
  linear-left)   first=3000; GRAPHS="${GRAPHS:-10}"; SEEDS="${SEEDS:-2}"; args=(--tasks 8 --latent-scm 0.5) ;;
  *) echo "heldout_controls.sh: unknown family '$FAMILY' (use gauss-mean, laplace-scale or linear-left)" >&2
     exit 2 ;;
esac
METHODS="${METHODS:-$DEFAULT_METHODS}"
run_graph() {  # run_graph SEED: one simulate run, resumable, a finished run is not redone
  local dir="$OUT/$FAMILY/graph_$1"
  [ -f "$dir/results.json" ] && return 0
  local sim=(.venv/bin/sit-causal simulate --seed "$1" --seeds "$SEEDS" --workers 1 --threads 1 --quiet
             --methods "$METHODS" "${args[@]}")
  if [ -d "$dir/seeds" ]; then "${sim[@]}" --out "$dir" --resume; else "${sim[@]}" --out "$dir"; fi
}
export -f run_graph
export OUT FAMILY SEEDS METHODS
mkdir -p "$OUT/$FAMILY"
seq "$first" 10 $((first + 10 * (GRAPHS - 1))) |
  ARGS="${args[*]} ${EXTRA:-}" xargs -P "$JOBS" -I{} bash -c 'args=($ARGS); run_graph {}'
.venv/bin/python benchmarks/heldout_summary.py "$OUT/$FAMILY" | tee "$OUT/$FAMILY/summary.md"
