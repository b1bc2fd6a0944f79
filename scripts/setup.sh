#!/usr/bin/env bash
# Create .venv and install earshot into it.
# torch is installed first, pinned, so that pip never resolves a multi-gigabyte CUDA
# build from the registry. Bring your own torch with EARSHOT_TORCH="torch==X" or
# EARSHOT_TORCH=skip (keeps whatever torch the venv already has).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$py" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
torch_req=${EARSHOT_TORCH:-torch==2.13.0}
if [ "$torch_req" != skip ]; then
  .venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "$torch_req"
fi
.venv/bin/python -m pip install -q -e ".[dev]"
