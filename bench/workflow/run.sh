#!/usr/bin/env bash
# Workflow benchmark: chorus (1 and 3 nodes) against Restate and DBOS, side by side in one run
# (see bench/README.md). Installs what is missing: the pinned npm packages of
# restate/package.json (restate-server, its TypeScript SDK, tsx) into restate/node_modules,
# the pinned `dbos` of requirements.txt into the venv bench/.venv, and PostgreSQL 15 from
# Debian (apt-get) for DBOS. Builds chorus in release mode, then runs bench.py, which starts
# and ends every server itself on loopback ports, prints the table and writes
# bench/workflow/results.json. Extra arguments go to bench.py, e.g.
#   bench/workflow/run.sh --systems chorus-1,restate --seconds 5
# CHORUS_BIN=/path/to/chorus skips the build and benchmarks that binary.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$root/bench/.venv"

if [[ ! -x /usr/lib/postgresql/15/bin/postgres ]]; then
    echo "installing postgresql-15 (apt-get)" >&2
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15
fi
if [[ ! -x "$here/restate/node_modules/.bin/tsx" ]]; then
    (cd "$here/restate" && npm install --no-audit --no-fund)
fi
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
# Already-satisfied pins are checked locally; pip reaches the index only for what is missing.
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"

if [[ -n "${CHORUS_BIN:-}" ]]; then
    chorus="$CHORUS_BIN"
else
    echo "building chorus (release)" >&2
    (cd "$root" && cargo build --release --quiet -p chorus)
    chorus="$root/target/release/chorus"
fi
# Other work on the machine skews every figure, fsync-bound ones most: say how busy it was.
pressure() {
    echo "host: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg), IO pressure" \
        "($1) $(head -1 /proc/pressure/io 2>/dev/null || echo unknown), $(date -u +%Y-%m-%dT%H:%MZ)" >&2
}
pressure before
"$venv/bin/python" "$here/bench.py" all --chorus "$chorus" "$@"
pressure after
