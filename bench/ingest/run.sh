#!/usr/bin/env bash
# Platform overhead of `chorus ingest` through a node, against the sum of the per-song CPU
# times of `chorus analyze` on the same files (real music from Debian packages).
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/fetch-music.sh >/dev/null
if [ -z "${CHORUS_BIN:-}" ]; then
    cargo build --release -p chorus
    CHORUS_BIN="$PWD/target/release/chorus"
fi
exec python3 bench/ingest/ingest.py --chorus "$CHORUS_BIN" --music bench/music "$@"
