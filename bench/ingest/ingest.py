"""Ingest overhead: chorus ingest through a node (2 slots) against the sum of per-song CPU
times of `chorus analyze`, one song at a time, on the same files.

overhead = (ingest wall time x cores) / (sum of per-song CPU seconds) - 1, and the node's
and its workers' CPU use during the ingest, as a share of both cores.
"""
import argparse
import json
import os
import resource
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request

LIMIT_S = 1800


def cpu_of_children():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--chorus", required=True)
    ap.add_argument("--music", required=True)
    ap.add_argument("--songs", type=int, default=24)
    args = ap.parse_args()
    files = sorted(
        os.path.join(d, f)
        for d, _, fs in os.walk(args.music)
        for f in fs
        if f.lower().endswith((".ogg", ".mp3", ".flac", ".wav"))
    )[: args.songs]
    root = tempfile.mkdtemp(prefix="chorus-ingest-bench-")
    songs = os.path.join(root, "songs")
    os.makedirs(songs)
    for i, f in enumerate(files):
        shutil.copy(f, os.path.join(songs, f"{i:03d}-{os.path.basename(f)}"))
    cores = os.cpu_count()
    try:
        # 1. The floor: each song analysed alone, CPU time summed.
        before = cpu_of_children()
        for f in sorted(os.listdir(songs)):
            subprocess.run([args.chorus, "analyze", "--json", "--jobs", "1", os.path.join(songs, f)], check=True, stdout=subprocess.DEVNULL, timeout=LIMIT_S)
        analyze_cpu_s = cpu_of_children() - before

        # 2. The same songs through a node.
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            addr = f"127.0.0.1:{s.getsockname()[1]}"
        data = os.path.join(root, "data")
        node = subprocess.Popen([args.chorus, "serve", "--data-dir", data, "--listen", addr, "--slots", str(cores)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                # HTTPS, trusting the cluster CA the node made in its data dir.
                if os.path.exists(os.path.join(data, "admin.key")) and urllib.request.urlopen(
                        f"https://{addr}/readyz",
                        context=ssl.create_default_context(cafile=os.path.join(data, "ca.pem"))).status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        env = dict(os.environ, CHORUS_SERVER=f"https://{addr}", CHORUS_DATA_DIR=data)
        stat0 = open("/proc/stat").readline().split()[1:]
        t0 = time.time()
        subprocess.run([args.chorus, "ingest", songs, "--concurrency", str(2 * cores), "--json"], check=True, stdout=subprocess.DEVNULL, env=env, timeout=LIMIT_S)
        wall_s = time.time() - t0
        stat1 = open("/proc/stat").readline().split()[1:]
        # A second run must skip everything.
        t1 = time.time()
        out = subprocess.run([args.chorus, "ingest", songs, "--json"], check=True, capture_output=True, env=env, timeout=LIMIT_S)
        rerun_s = time.time() - t1
        skipped = sum(1 for r in json.loads(out.stdout)["results"] if r["skipped"])
        node.terminate()
        node.wait(timeout=60)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    busy = [int(b) - int(a) for a, b in zip(stat0, stat1)]
    idle = busy[3] + busy[4]
    machine_busy = 1 - idle / max(1, sum(busy))
    overhead = wall_s * cores / analyze_cpu_s - 1
    print(f"{len(files)} songs: analyze one at a time, CPU summed: {analyze_cpu_s:.1f} s")
    print(f"ingest through a node ({cores} slots): {wall_s:.1f} s wall x {cores} cores = {wall_s * cores:.1f} core-s -> overhead {overhead * 100:+.1f}% (target <= 10%)")
    print(f"machine CPU busy during the ingest: {machine_busy * 100:.0f}% of {cores} cores")
    print(f"second run: {skipped}/{len(files)} skipped in {rerun_s:.1f} s")


if __name__ == "__main__":
    main()
