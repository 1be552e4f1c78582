#!/usr/bin/env bash
# Side-by-side benchmark of the audio engine against its peers (librosa +
# pychorus + pyloudnorm, essentia, ffmpeg) on real music, pinned to one core.
# Prints markdown tables of speed ratios and accuracy. Not a test: run it by hand.
#
#   bench/audio/run.sh            # 6 songs closest to 4 minutes, core 0
#   BENCH_TRACKS=3 BENCH_CORE=1 bench/audio/run.sh
#   BENCH_TRANSCODE_RUNS=5 bench/audio/run.sh   # runs per transcode and side (3)
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
venv="$root/bench/.venv"

scripts/fetch-music.sh >/dev/null

if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import librosa, pyloudnorm" 2>/dev/null; then
    "$venv/bin/pip" install -q "librosa==0.11.*" pyloudnorm
fi
# essentia publishes Linux wheels on PyPI; if it ever does not install, the
# benchmark says so and carries on without it.
"$venv/bin/python" -c "import essentia" 2>/dev/null || "$venv/bin/pip" install -q essentia || true
# pychorus pins ancient librosa and numpy; it runs fine on librosa 0.11.
"$venv/bin/python" -c "import pychorus" 2>/dev/null || "$venv/bin/pip" install -q --no-deps pychorus

cargo build --release -q -p audio --example ingest --example transcode --example arrangements

exec "$venv/bin/python" bench/audio/run.py "$@"
