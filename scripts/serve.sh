#!/usr/bin/env bash
# Install everything, then run the service on its embedded defaults (bundled model, SQLite,
# local files under ~/.atelier). Extra arguments go to `atelier serve` (e.g. --port 9000).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/atelier serve "$@"
