#!/usr/bin/env bash
# The first SIT vs vanilla comparison (docs/results/first_result.md): the default BIG-bench mixture, the MiniLM BERT2BERT
# preset (real pretrained weights), several seeds per method, zero-shot held-out evaluation, scores,
# and the comparison table + bar plot. Every step is a plain sit-nlp command; rerun any of them.
#
#   bash examples/first_result.sh                 # defaults below
#   STEPS=600 SEEDS="0 1 2 3 4" LIMIT=50 bash examples/first_result.sh
#
# Needs the BIG-bench cache (`sit-nlp data fetch`) and builds data/default if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
SIT=.venv/bin/sit-nlp
STEPS="${STEPS:-200}"          # optimiser steps per run (batch 8)
SEEDS="${SEEDS:-0 1 2}"
LIMIT="${LIMIT:-10}"           # held-out records per task (generation on CPU is the slow part)
OUT="${OUT:-runs/first-result}"
THREADS="${THREADS:-2}"
export OMP_NUM_THREADS="$THREADS"

[ -f data/default/train.jsonl ] || $SIT data build --mixture configs/mixtures/default.yaml --out data/default
runs=()
for seed in $SEEDS; do
  for method in vanilla sit; do
    run="$OUT/$method-s$seed"
    runs+=("$run")
    if [ ! -f "$run/scores.json" ]; then
      start=$(date +%s)
      $SIT train -c configs/minilm-cpu.yaml --model.method="$method" --train.seed="$seed" \
        --train.max_steps="$STEPS" --train.out_dir="$run" --train.save_every=1000000 \
        --train.eval_every=1000000 --quiet --overwrite
      mid=$(date +%s)
      $SIT eval --checkpoint "$run" --split heldout --limit-per-task "$LIMIT" --quiet \
        --out "$run/predictions_heldout.jsonl" --force
      $SIT score "$run/predictions_heldout.jsonl" --out "$run/scores.json" --force > /dev/null
      end=$(date +%s)
      echo "{\"run\": \"$run\", \"train_s\": $((mid - start)), \"eval_s\": $((end - mid))}" >> "$OUT/timings.jsonl"
    fi
  done
done
$SIT compare "${runs[@]}" --plot "$OUT/comparison.png" | tee "$OUT/comparison.md"
$SIT compare "${runs[@]}" --json > "$OUT/comparison.json"
