"""Cluster benchmark for chorus: three real nodes on loopback, faults by kill -9.

Figures:
- leader failover: kill -9 of the leader, then the time until a write through a follower is
  committed (the client retries every 10 ms);
- node loss: kill -9 of a node running sleep jobs, then the time until every one of its jobs
  has a new attempt running on another node;
- throughput: 20,000 no-op jobs submitted in batches of 1,000 through one node, drained by
  the three nodes (2 slots each);
- submit-to-start latency: single `clock` jobs at a fixed rate through a follower, long
  enough (30 s by default) for the log to cross snapshots, which every node builds at the
  same index.

The nodes run as the README starts them: HTTPS and mutual TLS between nodes, joins pinning
the cluster CA; `--insecure-http` runs them over plain HTTP instead, to see what TLS costs.
"""
import argparse
import concurrent.futures
import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

LIMIT_S = 120  # every wait in this script gives up after this long
# How the script reaches the nodes: set by main (plain HTTP, or TLS trusting the cluster CA
# of the first node, set once it has made it).
TLS = {"insecure": False, "context": None}


def scheme():
    return "http" if TLS["insecure"] else "https"


def urlopen(request, timeout):
    return urllib.request.urlopen(request, timeout=timeout, context=TLS["context"])


def ca_pin(data_dir):
    pem = open(os.path.join(data_dir, "ca.pem")).read()
    return "sha256:" + hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


class Node:
    def __init__(self, binary, root, join=None, key=None):
        self.dir = tempfile.mkdtemp(dir=root)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.addr = f"127.0.0.1:{s.getsockname()[1]}"
        args = [binary, "serve", "--data-dir", self.dir, "--listen", self.addr, "--slots", "2"]
        env = dict(os.environ)
        if join is None:
            # A founding node makes a new cluster CA: trust that one, not the last cluster's.
            TLS["context"] = None
        if TLS["insecure"]:
            args += ["--insecure-http"]
        if join:
            args += ["--join", join.addr]
            if not TLS["insecure"]:
                args += ["--ca-pin", ca_pin(join.dir)]
            env.update(CHORUS_KEY_ID=key["id"], CHORUS_KEY_SECRET=key["secret"])
        self.log = open(os.path.join(self.dir, "node.log"), "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=self.log, env=env)
        wait(lambda: self.trust() and ready(self.addr), "node ready")
        self.id = int(open(os.path.join(self.dir, "node.id")).read())

    def trust(self):
        """Whether the node wrote its key (and CA); the script trusts the CA of the cluster's
        founding node."""
        if not os.path.exists(os.path.join(self.dir, "admin.key")):
            return False
        if not TLS["insecure"] and TLS["context"] is None:
            if not os.path.exists(os.path.join(self.dir, "ca.pem")):
                return False
            TLS["context"] = ssl.create_default_context(cafile=os.path.join(self.dir, "ca.pem"))
        return True

    def key(self):
        return json.load(open(os.path.join(self.dir, "admin.key")))

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def ready(addr):
    try:
        return urlopen(f"{scheme()}://{addr}/readyz", timeout=1).status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait(predicate, what, step_s=0.01):
    deadline = time.time() + LIMIT_S
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(step_s)
    raise SystemExit(f"timed out waiting for {what}")


def call(addr, key, method, path, body=None, timeout=5):
    data = json.dumps(body).encode() if body is not None else b""
    ts, nonce, digest = str(int(time.time())), secrets.token_hex(16), hashlib.sha256(data).hexdigest()
    p, _, q = path.partition("?")
    canonical = "\n".join([method, addr, p, q, ts, nonce, digest]).encode()
    # The signing key is derived from the secret (crates/model/src/signature.rs).
    signing_key = hmac.new(bytes.fromhex(key["secret"]), b"chorus signing key v1", "sha256").digest()
    sig = hmac.new(signing_key, canonical, "sha256").hexdigest()
    headers = {"x-chorus-key": key["id"], "x-chorus-timestamp": ts, "x-chorus-nonce": nonce,
               "x-chorus-content-sha256": digest, "x-chorus-signature": sig, "content-type": "application/json"}
    req = urllib.request.Request(f"{scheme()}://{addr}{path}", data=data or None, method=method, headers=headers)
    return json.load(urlopen(req, timeout=timeout))


def leader_of(nodes, key):
    for n in nodes:
        try:
            return call(n.addr, key, "GET", "/v1/nodes")["leader"]
        except (urllib.error.URLError, OSError):
            continue
    return None


def cluster(binary, root):
    first = Node(binary, root)
    key = first.key()
    nodes = [first, Node(binary, root, first, key), Node(binary, root, first, key)]
    wait(lambda: all(n["role"] == "voter" and n["status"] == "up" for n in call(first.addr, key, "GET", "/v1/nodes")["nodes"])
         and len(call(first.addr, key, "GET", "/v1/nodes")["nodes"]) == 3, "three voters", 0.05)
    return nodes, key


def failover(binary, root):
    nodes, key = cluster(binary, root)
    leader = next(n for n in nodes if n.id == leader_of(nodes, key))
    follower = next(n for n in nodes if n is not leader)
    t0 = time.time()
    leader.kill()
    while time.time() - t0 < LIMIT_S:
        try:
            call(follower.addr, key, "POST", "/v1/jobs", {"function": "noop"}, timeout=0.5)
            break
        except (urllib.error.URLError, OSError):
            time.sleep(0.01)
    committed_s = time.time() - t0
    for n in nodes:
        if n is not leader:
            n.kill()
    return committed_s


def node_loss(binary, root):
    nodes, key = cluster(binary, root)
    leader_id = leader_of(nodes, key)
    leader = next(n for n in nodes if n.id == leader_id)
    victim = next(n for n in nodes if n is not leader)
    ids = [r["id"] for r in call(leader.addr, key, "POST", "/v1/jobs/batch", {"jobs": [{"function": "sleep", "input": {"ms": 20000}}] * 12})["results"]]

    def jobs():
        return [call(leader.addr, key, "GET", f"/v1/jobs/{i}") for i in ids]
    wait(lambda: any(j["state"] == "running" and j["attempts"][-1]["node"] == victim.id for j in jobs()), "victim runs jobs", 0.05)
    on_victim = [j["id"] for j in jobs() if j["state"] == "running" and j["attempts"][-1]["node"] == victim.id]
    t0 = time.time()
    victim.kill()

    def moved():
        js = {j["id"]: j for j in jobs()}
        return all(js[i]["state"] == "running" and js[i]["attempts"][-1]["node"] != victim.id for i in on_victim)
    wait(moved, "the dead node's jobs to run elsewhere", 0.02)
    moved_s = time.time() - t0
    for n in nodes:
        if n is not victim:
            n.kill()
    return moved_s, len(on_victim)


def throughput_and_latency(binary, root, jobs, rate, seconds):
    nodes, key = cluster(binary, root)
    entry = nodes[1]

    def succeeded():
        text = urlopen(f"{scheme()}://{nodes[0].addr}/metrics", timeout=5).read().decode()
        return sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith('chorus_jobs{function="noop",state="succeeded"}'))
    t0 = time.time()
    for _ in range(jobs // 1000):
        call(entry.addr, key, "POST", "/v1/jobs/batch", {"jobs": [{"function": "noop"}] * 1000}, timeout=60)
    wait(lambda: succeeded() >= jobs, "the drain", 0.02)
    drain_rate = jobs / (time.time() - t0)
    count = int(rate * seconds)
    sent = {}
    raft_before = call(entry.addr, key, "GET", "/v1/cluster")

    def send(i):
        time.sleep(max(0.0, t_start + i / rate - time.time()))
        t = time.time()
        job = call(entry.addr, key, "POST", "/v1/jobs", {"function": "clock"})
        sent[job["id"]] = t
    t_start = time.time() + 0.2
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        list(pool.map(send, range(count)))
    raft_after = call(entry.addr, key, "GET", "/v1/cluster")
    entries = raft_after["commit_index"] - raft_before["commit_index"]
    snapshots = (raft_before["snapshot_index"], raft_after["snapshot_index"])
    latencies = []
    for jid, t in sent.items():
        job = call(entry.addr, key, "GET", f"/v1/jobs/{jid}/wait?timeout_ms=30000", timeout=40)
        latencies.append(job["output"]["now_us"] / 1e6 - t)
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000
    for n in nodes:
        n.kill()
    return drain_rate, count, entries, snapshots, pick(0.5), pick(0.95), pick(0.99)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--chorus", required=True)
    ap.add_argument("--jobs", type=int, default=20000)
    ap.add_argument("--rate", type=float, default=200.0, help="latency test: jobs/s")
    ap.add_argument("--seconds", type=float, default=30.0, help="latency test: how long")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--insecure-http", action="store_true", help="plain HTTP instead of TLS")
    args = ap.parse_args()
    TLS["insecure"] = args.insecure_http
    root = tempfile.mkdtemp(prefix="chorus-cluster-bench-")
    try:
        fo = [failover(args.chorus, root) for _ in range(args.rounds)]
        nl = [node_loss(args.chorus, root) for _ in range(args.rounds)]
        drain, count, entries, snaps, p50, p95, p99 = throughput_and_latency(
            args.chorus, root, args.jobs, args.rate, args.seconds)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"leader kill -9 -> first commit through a follower: {', '.join(f'{x*1000:.0f} ms' for x in fo)} (target < 1000 ms)")
    print(f"node kill -9 -> its jobs running elsewhere: {', '.join(f'{s*1000:.0f} ms ({n} jobs)' for s, n in nl)} (target < 3000 ms)")
    print(f"3 nodes x 2 slots: drain {drain:,.0f} no-op jobs/s ({args.jobs} jobs)")
    print(f"3 nodes: submit-to-start at {args.rate:.0f}/s through a follower ({count} jobs): p50 {p50:.2f} ms, p95 {p95:.2f} ms, p99 {p99:.2f} ms (target p99 < 20 ms)")
    print(f"   meanwhile {entries} log entries committed; the entry node's snapshot index went {snaps[0]} -> {snaps[1]}")


if __name__ == "__main__":
    sys.exit(main())
