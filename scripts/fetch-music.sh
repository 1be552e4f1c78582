#!/usr/bin/env bash
# Fetches real, freely licensed music from Debian packages into bench/music/
# (gitignored) for the audio tests and the benchmark. Audio is never committed:
# the packages are the source of truth and are re-extracted on demand.
set -euo pipefail

repo_root="$(cd "$(dirname "$0")/.." && pwd)"
music_dir="$repo_root/bench/music"
packages=(wesnoth-1.16-music drascula-music asc-music hyperrogue-music)

if [[ -f "$music_dir/.complete" ]]; then
    echo "music already in $music_dir"
    exit 0
fi

mkdir -p "$music_dir/debs"
cd "$music_dir/debs"
for package in "${packages[@]}"; do
    if ! ls "$package"_*.deb >/dev/null 2>&1; then
        apt-get download "$package"
    fi
done
for deb in ./*.deb; do
    dpkg -x "$deb" "$music_dir/root"
done
rm -rf "$music_dir/debs"

# Flatten into one folder per package family so tests can name tracks simply.
count=$(find "$music_dir/root" -type f \( -name '*.ogg' -o -name '*.mp3' -o -name '*.flac' -o -name '*.wav' \) | wc -l)
echo "extracted $count tracks into $music_dir/root"
touch "$music_dir/.complete"
