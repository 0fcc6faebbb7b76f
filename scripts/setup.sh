#!/usr/bin/env bash
# Set up .venv with awdlstm, its test tools, safetensors (for `awdlstm export`), matplotlib
# (for `awdlstm plot`) and tensorboard (for `train --tensorboard`). Safe to
# run again (it only adds what is missing). A CPU machine gets the CPU build of PyTorch,
# never the multi-GB CUDA one.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PY=.venv/bin/python
if ! "$PY" -c "import torch" 2>/dev/null; then
    tag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
    local_wheel=$(ls /opt/wheels/torch-*+cpu-"$tag"-*.whl 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -n "$local_wheel" ]; then
        "$PY" -m pip install -q "$local_wheel"           # a CPU build already on this disk
    elif command -v nvidia-smi >/dev/null 2>&1; then
        "$PY" -m pip install -q "torch>=2.4"             # CUDA build for a GPU machine
    else
        "$PY" -m pip install -q "torch>=2.4" --index-url https://download.pytorch.org/whl/cpu
    fi
fi
"$PY" -m pip install -q -e ".[test,export,plot,tensorboard]"
