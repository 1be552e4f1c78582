"""Ingest overhead: chorus ingest through a node (2 slots) against the sum of per-song CPU
times of `chorus analyze`, one song at a time, on the same files.

overhead = (ingest wall time x cores) / (sum of per-song CPU seconds) - 1, and the node's
and its workers' CPU use during the ingest, as a share of both cores. The core-seconds are
then split: the workers' CPU (each attempt's, as the executor measured it: the analysis, and
the waveform `chorus analyze` does not draw), the node's own, the `chorus ingest` client's
(hashing and uploading), and what was left idle.
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


def process_cpu_s(pid):
    """User and system CPU seconds of a running process (its own threads, not its children).
    Two fields of `/proc/PID/stat` read by hand: the script runs on the system's Python, and
    psutil would be an install of its own for them."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
        node0, client0 = process_cpu_s(node.pid), cpu_of_children()
        t0 = time.time()
        subprocess.run([args.chorus, "ingest", songs, "--concurrency", str(2 * cores), "--json"], check=True, stdout=subprocess.DEVNULL, env=env, timeout=LIMIT_S)
        wall_s = time.time() - t0
        stat1 = open("/proc/stat").readline().split()[1:]
        node_cpu_s, client_cpu_s = process_cpu_s(node.pid) - node0, cpu_of_children() - client0
        # Each attempt's CPU, as the node's executor measured it on the worker process.
        listed = subprocess.run([args.chorus, "jobs", "list", "--json", "--function", "audio.ingest", "--limit", str(len(files) + 100)], check=True, capture_output=True, env=env, timeout=60)
        jobs = json.loads(listed.stdout)["jobs"]
        workers_cpu_s = sum(a.get("usage", {}).get("cpu_ms", 0) for j in jobs for a in j.get("attempts", [])) / 1000
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
    print(f"ingest through a node ({cores} slots): {wall_s:.1f} s wall x {cores} cores = {wall_s * cores:.1f} core-s -> overhead {overhead * 100:+.1f}% (PRODUCT.md: at most 5%)")
    print(f"machine CPU busy during the ingest: {machine_busy * 100:.0f}% of {cores} cores")
    print(f"of the {wall_s * cores:.1f} core-s: workers {workers_cpu_s:.1f} ({len(jobs)} jobs; "
          f"{workers_cpu_s - analyze_cpu_s:+.1f} against analyze, the waveform among it), node "
          f"{node_cpu_s:.1f}, ingest client {client_cpu_s:.1f}, the rest "
          f"{wall_s * cores - workers_cpu_s - node_cpu_s - client_cpu_s:.1f} (idle, other processes)")
    print(f"second run: {skipped}/{len(files)} skipped in {rerun_s:.1f} s")


if __name__ == "__main__":
    main()
