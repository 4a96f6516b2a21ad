#!/usr/bin/env bash
# One script for a lent GPU: versions, the throughput benchmark (vanilla vs SIT at BART-base and BART-large
# shapes, bf16, eager and compiled) and the known-truth text testbed at GPU scale; everything under $OUT.
# Sized to finish inside 9 minutes on one H100/H200-class card (each stage has its own time limit).
#
#   OUT=/tmp/device bash benchmarks/device_check.sh          # on the GPU machine, from the repository root
#   TOY=1 OUT=/tmp/device bash benchmarks/device_check.sh    # CPU, toy sizes (what the tests run)
#
# Needs torch, transformers, accelerate, tokenizers, safetensors, typer, scipy, networkx, pyyaml and tqdm in
# $PYTHON (default python3); the repository itself is put on PYTHONPATH (no install needed).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:?set OUT to the folder the results go to}"
PYTHON="${PYTHON:-python3}"
TOY="${TOY:-0}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
status=0
stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, record the outcome
  # (an exit code listed in $OK_RC counts as done: `testbed run` exits 1 when its gate fails, report written)
  local name=$1 limit=$2; shift 2
  local start=$SECONDS ok=false
  timeout "$limit" "$@" > "$OUT/$name.out" 2> "$OUT/$name.log"
  local rc=$?
  for good in ${OK_RC:-0}; do [ "$rc" -eq "$good" ] && ok=true; done
  echo "{\"stage\": \"$name\", \"rc\": $rc, \"ok\": $ok, \"seconds\": $((SECONDS - start)), \"limit_s\": $limit}" \
    >> "$OUT/stages.jsonl"
  echo "stage $name: rc $rc in $((SECONDS - start)) s" >&2
  [ "$ok" = true ] || status=1
}

"$PYTHON" - > "$OUT/versions.json" <<'PY'
import json, platform, sys
import torch, transformers, accelerate
info = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "transformers": transformers.__version__, "accelerate": accelerate.__version__,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "gpus": torch.cuda.device_count()}
print(json.dumps(info))
PY
cat "$OUT/versions.json" >&2
command -v nvidia-smi > /dev/null && nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1

if [ "$TOY" = 1 ]; then
  stage throughput 300 "$PYTHON" benchmarks/gpu_throughput.py --tiny --steps 2 --warmup 1 --json
else
  stage throughput 240 "$PYTHON" benchmarks/gpu_throughput.py --shapes base,large --steps 10 --warmup 3 --json
  stage throughput_compiled 150 "$PYTHON" benchmarks/gpu_throughput.py --shapes large --steps 10 --warmup 3 \
    --compile --json
fi

if [ "$TOY" = 1 ]; then
  printf 'train_per_dataset: 200\nvalidation_per_dataset: 10\ntest_per_task: 40\nmodel_d: 32\n' > "$OUT/testbed-toy.yaml"
  stage testbed_build 120 "$PYTHON" -m sit_nlp.cli.main testbed build --out "$OUT/testbed-data" --seed 0 \
    --config "$OUT/testbed-toy.yaml"
  OK_RC="0 1" stage testbed_run 300 "$PYTHON" -m sit_nlp.cli.main testbed run --data "$OUT/testbed-data" --out "$OUT/testbed" \
    --seeds 1 --methods vanilla,sit --steps 20 --quiet
else  # GPU scale: a larger testbed and model, 5 paired seeds of vanilla and SIT, several runs at once on the card
  printf 'train_per_dataset: 2000\ntest_per_task: 400\nmodel_d: 256\nmodel_layers: 4\nmodel_ffn: 1024\n' \
    > "$OUT/testbed-gpu.yaml"
  stage testbed_build 60 "$PYTHON" -m sit_nlp.cli.main testbed build --out "$OUT/testbed-data" --seed 0 \
    --config "$OUT/testbed-gpu.yaml"
  OK_RC="0 1" stage testbed_run 240 "$PYTHON" -m sit_nlp.cli.main testbed run --data "$OUT/testbed-data" --out "$OUT/testbed" \
    --seeds 5 --methods vanilla,sit --jobs 10 --threads 1 --quiet
fi
exit $status
