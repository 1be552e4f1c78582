#!/usr/bin/env bash
# No-op job benchmark: chorus against Celery, RQ and Dramatiq on Redis (see bench/README.md).
# Installs what is missing (redis-server from Debian, a venv at bench/.venv with the pinned
# packages of requirements.txt), builds chorus in release mode, then runs bench.py, which
# prints the table and writes bench/queue/results.json. Extra arguments go to bench.py, e.g.
#   bench/queue/run.sh --jobs 2000 --systems chorus,celery
# CHORUS_BIN=/path/to/chorus skips the build and benchmarks that binary.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$root/bench/.venv"

if ! command -v redis-server >/dev/null; then
    echo "installing redis-server (apt-get)" >&2
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server
fi
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
# Already-satisfied pins are checked locally; pip reaches the index only for what is missing.
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"

# CHORUS_BIN=path runs an already-built release binary instead (e.g. one built from a commit).
if [[ -n "${CHORUS_BIN:-}" ]]; then
    chorus="$CHORUS_BIN"
else
    echo "building chorus (release)" >&2
    (cd "$root" && cargo build --release --quiet -p chorus)
    chorus="$root/target/release/chorus"
fi
echo "chorus: $chorus ($("$chorus" --version 2>/dev/null || echo 'version unknown'))" >&2

tmp="$(mktemp -d -t chorus-queue-bench.XXXXXX)"
pids="$tmp/pids"
: >"$pids"
bench_pid=""
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n "$bench_pid" ]] && kill -0 "$bench_pid" 2>/dev/null; then
        kill -TERM "$bench_pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$bench_pid" 2>/dev/null || break; sleep 0.1; done
    fi
    # Every process bench.py started leads its own process group; end any group still there.
    while read -r pid; do
        [[ -n "$pid" ]] && kill -KILL -- "-$pid" 2>/dev/null || true
    done <"$pids"
    rm -rf "$tmp"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "host: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
BENCH_PIDS="$pids" "$venv/bin/python" "$here/bench.py" all --tmp "$tmp" --chorus "$chorus" \
    --redis-server "$(command -v redis-server)" --out "$here/results.json" "$@" &
bench_pid=$!
wait "$bench_pid"
