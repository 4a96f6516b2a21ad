#!/usr/bin/env bash
# The NLP selection step on real data: SIT on the default BIG-bench mixture with the MiniLM BERT2BERT preset,
# the task graph found at half of training (graph.find_at), fixed and distilled into the selector; then
# `sit-nlp masks` on every run (closed gates at inference, both UIC forms, family sharing) and a summary
# over seeds (mean and 95% CI): runs/selection-minilm/summary.json.
#
#   bash examples/selection_minilm.sh                       # STEPS=300 SEEDS="0 1 2" THREADS=1
#   FIND_AT=null OUT=runs/selection-minilm-joint bash examples/selection_minilm.sh   # the ablation: no selection
#                                                           # step, masks learned jointly (the sit-joint recipe)
#   METHOD=vanilla OUT=runs/selection-minilm-vanilla bash examples/selection_minilm.sh  # the backbone alone
#                                                           # (no masks: validation NLL only)
#
# Needs the BIG-bench cache (`sit-nlp data fetch`); builds data/default if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
SIT=.venv/bin/sit-nlp
STEPS="${STEPS:-300}"
SEEDS="${SEEDS:-0 1 2}"
THREADS="${THREADS:-1}"
OUT="${OUT:-runs/selection-minilm}"
FIND_AT="${FIND_AT:-0.5}"
METHOD="${METHOD:-sit}"
EXTRA="${EXTRA:-}"   # more --key=value overrides, e.g. EXTRA="--model.sample_latent=true"
export OMP_NUM_THREADS="$THREADS"
[ -f data/default/train.jsonl ] || $SIT data build --mixture configs/mixtures/default.yaml --out data/default
mkdir -p "$OUT"
for seed in $SEEDS; do   # resumable: a finished training or masks step is not redone
  run="$OUT/$METHOD-s$seed"
  if [ ! -f "$run/final/config.yaml" ]; then
    start=$(date +%s)
    $SIT train -c configs/minilm-cpu.yaml --model.method="$METHOD" --train.seed="$seed" --model.init_seed="$seed" \
      --train.max_steps="$STEPS" --train.out_dir="$run" --train.save_every=1000000 \
      --train.eval_every=1000000 --graph.find_at="$FIND_AT" --threads "$THREADS" --quiet --overwrite $EXTRA
    echo "{\"run\": \"$run\", \"train_s\": $(( $(date +%s) - start )), \"load\": \"$(cut -d' ' -f1-3 /proc/loadavg)\"}" \
      >> "$OUT/timings.jsonl"
  fi
  if [ "$METHOD" = sit ] && [ ! -f "$run/masks/masks.json" ]; then
    mkdir -p "$run/masks"
    $SIT masks --checkpoint "$run" --data data/default --out "$run/masks" --json > "$run/masks/stdout.json"
  fi
done
if [ "$METHOD" = sit ]; then .venv/bin/python benchmarks/selection_summary.py "$OUT" | tee "$OUT/summary.md"; fi
