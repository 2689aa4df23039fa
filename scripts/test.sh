#!/usr/bin/env bash
# Install everything, then run every test (unit, integration on the real bundled model, slow ones too).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
