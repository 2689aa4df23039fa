#!/usr/bin/env bash
# Install Debian's Chromium for the console's browser test (tests/e2e), from Debian's archive
# only: Playwright drives it through `executable_path`; no browser build is ever downloaded.
# Idempotent: a machine that has /usr/bin/chromium returns at once. Needs root (or sudo).
set -euo pipefail

log() { echo "install_browser: $*" >&2; }

if [ -x /usr/bin/chromium ]; then
    log "$(/usr/bin/chromium --version 2>/dev/null || echo chromium) already installed"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        log "must run as root (or with sudo available) to install the Debian package chromium"
        exit 1
    fi
fi
start=$(date +%s)
export DEBIAN_FRONTEND=noninteractive
log "apt-get update"
$SUDO apt-get update -qq
log "installing chromium"
$SUDO apt-get install -y -qq chromium >/dev/null
log "$(/usr/bin/chromium --version 2>/dev/null) ready in $(( $(date +%s) - start )) s"
