#!/usr/bin/env bash
# Cluster figures: leader failover, moving a dead node's jobs, and 3-node throughput and
# submit-to-start latency. Starts its own three nodes on loopback ports, kills them with -9.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -z "${CHORUS_BIN:-}" ]; then
    cargo build --release -p chorus
    CHORUS_BIN="$PWD/target/release/chorus"
fi
exec python3 bench/cluster/cluster.py --chorus "$CHORUS_BIN" "$@"
