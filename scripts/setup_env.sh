#!/usr/bin/env bash
# Create ./.venv with everything fixup-transformer needs (idempotent: a second run only re-checks).
# torch is pinned first (TORCH_VERSION, default 2.13.0); pyproject.toml keeps a range (torch>=2.4) so that GPU
# machines can bring their own build. Which build pip picks is pip's configuration: from plain PyPI, Linux
# gets the CUDA build (several GB). For a CPU-only machine set
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu (this project's CI machines get a local CPU build
# through their pip configuration).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install --quiet -e ".[dev]"
.venv/bin/python -c "import torch, transformers, fixup_transformer; print('fixup-transformer', fixup_transformer.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
