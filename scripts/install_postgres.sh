#!/usr/bin/env bash
# Install PostgreSQL 15 with the pgvector extension (HNSW) on Debian bookworm, from Debian's
# own archive only. Idempotent: a machine that already has both returns in well under a second.
#
# Debian bookworm ships PostgreSQL 15 but no pgvector; trixie packages pgvector (>= 0.8) for
# PostgreSQL 17 only. So this script adds trixie as a *source-only* suite (deb-src: no binary
# from trixie can ever be installed through it, so libc and postgres stay bookworm's), fetches
# the Debian source package with `apt-get source` (checked against the signed Sources index),
# and builds it against bookworm's postgresql-server-dev-15 with PGXS (~25 s on 2 cores).
#
# Needs root (or sudo). Environment:
#   PG_MAJOR            PostgreSQL major version to target (default 15).
#   PGVECTOR_MIN        smallest acceptable pgvector version (default 0.5.0, the first with HNSW).
set -euo pipefail

PG_MAJOR="${PG_MAJOR:-15}"
PGVECTOR_MIN="${PGVECTOR_MIN:-0.5.0}"
PG_BIN="/usr/lib/postgresql/${PG_MAJOR}/bin"
PG_CONFIG="${PG_BIN}/pg_config"
SHARE="/usr/share/postgresql/${PG_MAJOR}/extension"
SOURCES_FILE="/etc/apt/sources.list.d/atelier-pgvector-src.sources"

log() { echo "install_postgres: $*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        log "must run as root (or with sudo available) to install Debian packages"
        exit 1
    fi
fi

# Version of the installed vector extension ("" when absent).
installed_pgvector() {
    if [ -f "${SHARE}/vector.control" ] && [ -f "/usr/lib/postgresql/${PG_MAJOR}/lib/vector.so" ]; then
        sed -n "s/^default_version = '\(.*\)'/\1/p" "${SHARE}/vector.control"
    fi
}

# Run a network step up to three times (a mirror hiccup should not fail CI).
retry() {
    local attempt
    for attempt in 1 2 3; do
        if "$@"; then
            return 0
        fi
        log "attempt $attempt of '$*' failed"
        sleep $((attempt * 5))
    done
    return 1
}

# True when version $1 >= version $2.
version_ge() { dpkg --compare-versions "$1" ge "$2"; }

have="$(installed_pgvector)"
if [ -x "${PG_BIN}/postgres" ] && [ -x "${PG_BIN}/initdb" ] && [ -n "$have" ] && version_ge "$have" "$PGVECTOR_MIN"; then
    log "PostgreSQL ${PG_MAJOR} with pgvector ${have} already installed"
    exit 0
fi

start=$(date +%s)
export DEBIAN_FRONTEND=noninteractive

# Source-only trixie suite for `apt-get source pgvector`. Written every time with the same
# content; a machine that lists the same suite elsewhere only gets apt's duplicate warning.
$SUDO tee "$SOURCES_FILE" >/dev/null <<'EOF'
# Added by atelier scripts/install_postgres.sh: source packages only (deb-src), never binaries,
# so that `apt-get source pgvector` works on bookworm. Nothing from trixie gets installed.
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF

log "apt-get update"
retry $SUDO apt-get update -qq
log "installing postgresql-${PG_MAJOR}, postgresql-server-dev-${PG_MAJOR} and the build tools"
retry $SUDO apt-get install -y -qq --no-install-recommends \
    "postgresql-${PG_MAJOR}" "postgresql-server-dev-${PG_MAJOR}" make gcc dpkg-dev >/dev/null

have="$(installed_pgvector)"
if [ -z "$have" ] || ! version_ge "$have" "$PGVECTOR_MIN"; then
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    log "fetching the Debian source package of pgvector"
    chown _apt "$work" 2>/dev/null || true  # apt downloads as its own _apt user
    retry sh -c "cd '$work' && apt-get source -qq pgvector >/dev/null"
    src="$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'pgvector-*' | head -n 1)"
    if [ -z "$src" ]; then
        log "apt-get source pgvector produced no source tree"
        exit 1
    fi
    log "building $(basename "$src") for PostgreSQL ${PG_MAJOR}"
    # Debian's patch drops -march=native, so the library runs on any x86-64 machine.
    make -s -C "$src" PG_CONFIG="$PG_CONFIG" -j"$(nproc)" >/dev/null
    $SUDO make -s -C "$src" PG_CONFIG="$PG_CONFIG" install >/dev/null
    have="$(installed_pgvector)"
fi

if [ -z "$have" ] || ! version_ge "$have" "$PGVECTOR_MIN"; then
    log "pgvector ${PGVECTOR_MIN} or newer is still missing (found '${have}')"
    exit 1
fi
log "PostgreSQL ${PG_MAJOR} with pgvector ${have} ready in $(( $(date +%s) - start )) s"
