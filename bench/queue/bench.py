"""No-op job benchmark: chorus against Celery, RQ and Dramatiq on Redis.

Run through bench/queue/run.sh, which installs what this needs. Subcommands:
  all     start each Redis (as shipped, then AOF fsync always) and chorus, run every system,
          print the table and write results.json
  peer    one Python queue against one running Redis (prints one JSON object)
  chorus  one chorus node (prints one JSON object)

Every process this starts gets its own process group, written to $BENCH_PIDS so that run.sh
can end them if this script dies; every loop is bounded in count and in time.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import ssl
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
LATENCY_KEY = "bench:latency"
POLL_S = 0.005

# ---------------------------------------------------------------------------- processes

_children: list[subprocess.Popen] = []


def spawn(cmd: list[str], log: Path, env: dict | None = None, cwd: Path | None = None) -> subprocess.Popen:
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd, start_new_session=True)
    _children.append(proc)
    pids = os.environ.get("BENCH_PIDS")
    if pids:
        with open(pids, "a") as f:
            f.write(f"{proc.pid}\n")
    return proc


def stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL it after `grace_s`."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers in the group (forked children)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass
    if proc in _children:
        _children.remove(proc)


def stop_all() -> None:
    for proc in list(_children):
        stop(proc, grace_s=3.0)


def _on_signal(signum, _frame):
    stop_all()
    sys.exit(128 + signum)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout_s: float, what: str, step_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step_s)
    raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")


def percentiles(values_s: list[float]) -> dict:
    if not values_s:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    v = sorted(values_s)

    def pick(q):  # nearest rank
        return round(v[min(len(v) - 1, max(0, int(q * len(v) + 0.999999) - 1))] * 1000, 3)

    return {"p50_ms": pick(0.50), "p95_ms": pick(0.95), "p99_ms": pick(0.99), "max_ms": round(v[-1] * 1000, 3)}


def open_loop(send, rate: float, count: int, threads: int, limit_s: float) -> dict:
    """Calls send(i, sent_wall_s) for i < count at `rate` per second from `threads` threads.

    Returns the send wall clock of each index (None if not sent) and how far behind schedule
    the loop fell. Sends stop at `limit_s` after the start whatever is left.
    """
    sent: list[float | None] = [None] * count
    lags: list[float] = []
    errors: list[str] = []
    failures = itertools.count()
    counter = itertools.count()
    start = time.time() + 0.2

    def run():
        while True:
            i = next(counter)
            if i >= count:
                return
            due = start + i / rate
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            now = time.time()
            if now - start > limit_s:
                return
            lags.append(now - due)
            try:
                send(i, now)
                sent[i] = now
            except Exception as e:  # counted and reported, the loop goes on
                if next(failures) < 5:
                    errors.append(repr(e))

    pool = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(limit_s + 60)
    done = [s for s in sent if s is not None]
    elapsed = (max(done) - min(done)) if len(done) > 1 else 0.0
    lags.sort()
    return {
        "sent": sent,
        "sent_count": len(done),
        "achieved_rate": round((len(done) - 1) / elapsed, 1) if elapsed > 0 else None,
        "schedule_lag_p99_ms": round(lags[int(0.99 * (len(lags) - 1))] * 1000, 3) if lags else None,
        "schedule_lag_max_ms": round(lags[-1] * 1000, 3) if lags else None,
        "send_errors": next(failures),
        "send_error_examples": errors,
    }


def latency_plan(drain_rate: float, args) -> tuple[float, int]:
    rate = max(1.0, min(drain_rate / 2, args.rate_cap))
    return rate, max(10, int(rate * args.latency_seconds))


# ---------------------------------------------------------------------------- peers

def parallel(call, n: int, threads: int) -> None:
    """Makes `n` calls from `threads` threads (enqueueing in parallel lets a durable Redis
    fsync many clients' writes at once; enqueue time is not part of the peers' drain figure)."""
    counter = itertools.count()
    failures: list[BaseException] = []

    def run():
        while next(counter) < n and not failures:
            try:
                call()
            except BaseException as e:
                failures.append(e)

    pool = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if failures:
        raise failures[0]


class Peer:
    """One Python queue on one Redis: how to enqueue, count completions and start workers."""

    name = ""
    config = ""

    def __init__(self, url: str, workers: int):
        import redis

        self.url = url
        self.workers = workers
        self.r0 = redis.Redis.from_url(f"{url}/0")
        self.r1 = redis.Redis.from_url(f"{url}/1")

    def worker_env(self) -> dict:
        env = dict(os.environ)
        env["BENCH_REDIS_URL"] = self.url
        env["PYTHONPATH"] = str(HERE) + os.pathsep + env.get("PYTHONPATH", "")
        return env


class CeleryPeer(Peer):
    name = "celery"

    def __init__(self, url, workers):
        super().__init__(url, workers)
        import tasks_celery

        self.t = tasks_celery
        self.config = (f"celery worker --pool prefork --concurrency {workers}; defaults otherwise (acks before running, prefetch x4); "
                       "Redis broker db0, Redis result backend db1 (completion = result stored)")

    def enqueue_noops(self, n, threads):
        parallel(lambda: self.t.noop.apply_async(), n, threads)

    def done_count(self):
        return self.r1.dbsize()

    def start_workers(self, log):
        cmd = [str(VENV_BIN / "celery"), "-A", "tasks_celery", "worker", "--pool", "prefork",
               "--concurrency", str(self.workers), "--loglevel", "WARNING", "-n", f"bench{os.getpid()}@%h"]
        return [spawn(cmd, log, env=self.worker_env(), cwd=HERE)]

    def send_clock(self, sent):
        self.t.clock.apply_async(args=(sent,))

    def purge(self):
        self.t.app.control.purge()


class RqPeer(Peer):
    name = "rq"

    def __init__(self, url, workers):
        super().__init__(url, workers)
        from rq import Queue

        import tasks_rq

        self.t = tasks_rq
        self.q = Queue("default", connection=self.r0)
        self.config = (f"{workers} x `rq worker` (default Worker class: forks a work horse per job), "
                       "Redis db0, results kept (default result_ttl 500 s; completion = finished registry)")

    def enqueue_noops(self, n, threads):
        from rq import Queue

        for start in range(0, n, 1000):
            data = [Queue.prepare_data(self.t.noop) for _ in range(min(1000, n - start))]
            with self.r0.pipeline() as pipe:
                self.q.enqueue_many(data, pipeline=pipe)
                pipe.execute()

    def done_count(self):
        return self.r0.zcard("rq:finished:default")

    def start_workers(self, log):
        cmd = [str(VENV_BIN / "rq"), "worker", "--url", f"{self.url}/0", "--quiet", "default"]
        return [spawn(cmd, log, env=self.worker_env(), cwd=HERE) for _ in range(self.workers)]

    def send_clock(self, sent):
        self.q.enqueue(self.t.clock, sent)

    def purge(self):
        self.q.empty()


class DramatiqPeer(Peer):
    name = "dramatiq"

    def __init__(self, url, workers):
        os.environ["BENCH_REDIS_URL"] = url
        super().__init__(url, workers)
        import tasks_dramatiq

        self.t = tasks_dramatiq
        self.config = (f"dramatiq --processes {workers} --threads 1 (one job at a time per process, like the "
                       "others); default middleware + Results(RedisBackend db1) (completion = result stored)")

    def enqueue_noops(self, n, threads):
        parallel(lambda: self.t.noop.send(), n, threads)

    def done_count(self):
        return self.r1.dbsize()

    def start_workers(self, log):
        cmd = [str(VENV_BIN / "dramatiq"), "tasks_dramatiq", "--processes", str(self.workers), "--threads", "1"]
        return [spawn(cmd, log, env=self.worker_env(), cwd=HERE)]

    def send_clock(self, sent):
        self.t.clock.send(sent)

    def purge(self):
        self.t.broker.flush_all()


PEERS = {"celery": CeleryPeer, "rq": RqPeer, "dramatiq": DramatiqPeer}


def run_peer(args) -> dict:
    os.environ["BENCH_REDIS_URL"] = args.redis_url
    sys.path.insert(0, str(HERE))
    peer = PEERS[args.system](args.redis_url, args.workers)
    peer.r0.flushall()
    log = Path(args.log)
    result = {"system": args.system, "config": peer.config, "jobs": args.jobs, "workers": args.workers}

    # Drain: enqueue everything with no worker running, then start the workers.
    t = time.time()
    peer.enqueue_noops(args.jobs, args.client_threads)
    result["enqueue_s"] = round(time.time() - t, 3)
    result["enqueue_jobs_per_s"] = round(args.jobs / (time.time() - t), 1)
    workers = peer.start_workers(log)
    try:
        spawned = time.time()
        first = None
        count = 0
        deadline = time.monotonic() + args.drain_limit_s
        while time.monotonic() < deadline:
            count = peer.done_count()
            now = time.time()
            if count and first is None:
                first = (now, count)
            if count >= args.jobs:
                break
            if any(w.poll() is not None for w in workers):
                raise RuntimeError(f"{args.system} worker exited; see {log}")
            time.sleep(POLL_S)
        end = time.time()
        result["drain_completed"] = count
        result["drain_timed_out"] = count < args.jobs
        if first and end > first[0]:
            # From the first completion seen (worker start-up excluded) to the last.
            result["drain_jobs_per_s"] = round((count - first[1]) / (end - first[0]), 1)
        else:
            result["drain_jobs_per_s"] = None
        result["drain_s"] = round(end - first[0], 3) if first else None
        result["drain_jobs_per_s_incl_startup"] = round(count / (end - spawned), 1)

        if count < args.jobs:
            # Drop what is left so that the latency jobs do not queue behind it.
            peer.purge()
            time.sleep(1.0)  # jobs the workers already hold finish

        # Submit-to-start latency, open loop, with the same (warm) workers.
        rate, n = latency_plan(result["drain_jobs_per_s"] or 1.0, args)
        peer.r0.delete(LATENCY_KEY)
        loop = open_loop(lambda i, sent: peer.send_clock(sent), rate, n, args.client_threads,
                         args.latency_seconds * 3)
        sent = loop.pop("sent")
        want = loop["sent_count"]
        try:
            wait_until(lambda: peer.r0.llen(LATENCY_KEY) >= want, 60, "latency jobs")
        except TimeoutError as e:
            result["latency_error"] = str(e)
        values = [float(x) for x in peer.r0.lrange(LATENCY_KEY, 0, -1)]
        result["latency"] = {"rate_per_s": round(rate, 1), "jobs": n, "client_threads": args.client_threads,
                             "measured": len(values), **loop, **percentiles(values)}
    finally:
        for w in workers:
            stop(w)
    return result


# ---------------------------------------------------------------------------- chorus

class ChorusClient:
    """A signed HTTP/1.1 client, one keep-alive connection per thread: HTTPS trusting the
    node's cluster CA (`ca_file`), or plain HTTP if the node was started with --insecure-http."""

    def __init__(self, port: int, key_id: str, secret_hex: str, ca_file=None):
        self.port = port
        self.tls = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
        self.key_id = key_id
        # The signing key is derived from the secret (crates/model/src/signature.rs).
        self.secret = hmac.new(bytes.fromhex(secret_hex), b"chorus signing key v1", hashlib.sha256).digest()
        self.local = threading.local()

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            if self.tls:
                conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=60, context=self.tls)
            else:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            self.local.conn = conn
        return conn

    def call(self, method: str, path: str, query: str = "", body: bytes = b"", signed: bool = True):
        headers = {"content-type": "application/json"} if body else {}
        if signed:
            ts = str(int(time.time()))
            nonce = uuid.uuid4().hex
            digest = hashlib.sha256(body).hexdigest()
            host = f"127.0.0.1:{self.port}"
            canonical = "\n".join([method, host, path, query, ts, nonce, digest])
            headers.update({
                "x-chorus-key": self.key_id,
                "x-chorus-timestamp": ts,
                "x-chorus-nonce": nonce,
                "x-chorus-content-sha256": digest,
                "x-chorus-signature": hmac.new(self.secret, canonical.encode(), hashlib.sha256).hexdigest(),
            })
        target = path + ("?" + query if query else "")
        for attempt in range(2):  # one retry on a connection the server closed
            conn = self._conn()
            try:
                conn.request(method, target, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                return resp.status, data
            except (http.client.HTTPException, ConnectionError):
                conn.close()
                self.local.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def json(self, method, path, payload=None, query="", expect=(200, 201)):
        body = json.dumps(payload).encode() if payload is not None else b""
        status, data = self.call(method, path, query, body)
        if status not in expect:
            raise RuntimeError(f"{method} {path}: {status} {data[:300]!r}")
        return json.loads(data) if data else None

    def count(self, function: str, state: str) -> int:
        status, data = self.call("GET", "/metrics", signed=False)
        if status != 200:
            raise RuntimeError(f"/metrics: {status}")
        total = 0
        for line in data.decode().splitlines():
            if line.startswith("chorus_jobs{") and f'function="{function}"' in line and f'state="{state}"' in line:
                total += int(float(line.rsplit(" ", 1)[1]))
        return total


def top_snapshot(delay_s: float, out: list) -> threading.Thread:
    """Two `top` samples one second apart, `delay_s` from now; keeps the second's busiest lines."""

    def run():
        time.sleep(delay_s)
        if not shutil.which("top"):
            return
        try:
            text = subprocess.run(["top", "-b", "-n", "2", "-d", "1", "-w", "160"], capture_output=True,
                                  text=True, timeout=10).stdout
        except (subprocess.TimeoutExpired, OSError):
            return
        last = text.split("\ntop - ")[-1].splitlines()
        out.extend(line for line in last[:20] if line.strip())

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def run_chorus(args) -> dict:
    data_dir = Path(args.data_dir)
    port = free_port()
    log = Path(args.log)
    insecure = ["--insecure-http"] if args.insecure_http else []
    node = spawn([args.chorus, "serve", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}",
                  "--slots", str(args.workers), *insecure], log)
    result = {"system": "chorus", "jobs": args.jobs, "workers": args.workers,
              "config": f"chorus serve --slots {args.workers} (one node; warm worker processes; "
                        "every submit and state change fsync'd to the raft log before it is acknowledged)"}
    try:
        key_file = data_dir / "admin.key"
        wait_until(lambda: key_file.exists() and key_file.stat().st_size > 0, 60, "admin.key")
        key = json.loads(key_file.read_text())
        ca_file = None if args.insecure_http else data_dir / "ca.pem"
        client = ChorusClient(port, key["id"], key["secret"], ca_file)
        wait_until(lambda: client.call("GET", "/readyz", signed=False)[0] == 200, 60, "/readyz")
        # Warm the two worker processes so drain measures steady state, as for the peers.
        for _ in range(args.workers * 2):
            job = client.json("POST", "/v1/jobs", {"function": "clock"})
            client.json("GET", f"/v1/jobs/{job['id']}/wait", query="timeout_ms=10000")

        # Drain: submit in batches and time from the first submit to the last success.
        batch = args.batch
        bodies = [{"jobs": [{"function": "noop"}] * min(batch, args.jobs - s)} for s in range(0, args.jobs, batch)]
        top_lines: list[str] = []
        sampler = top_snapshot(0.3, top_lines)
        first = time.time()
        for body in bodies:
            client.json("POST", "/v1/jobs/batch", body)
        submitted = time.time()
        count = 0
        deadline = time.monotonic() + args.drain_limit_s
        while time.monotonic() < deadline:
            count = client.count("noop", "succeeded")
            if count >= args.jobs:
                break
            time.sleep(POLL_S)
        end = time.time()
        sampler.join(15)
        failed = client.count("noop", "failed")
        result.update({
            "enqueue_s": round(submitted - first, 3),
            "enqueue_jobs_per_s": round(args.jobs / (submitted - first), 1),
            "drain_completed": count, "drain_failed": failed, "drain_timed_out": count < args.jobs,
            "drain_s": round(end - first, 3),
            "drain_jobs_per_s": round(count / (end - first), 1),
            "drain_jobs_per_s_incl_startup": round(count / (end - first), 1),
            "top_during_drain": top_lines,
        })

        # Latency: single signed submits of `clock` in an open loop.
        rate, n = latency_plan(result["drain_jobs_per_s"], args)
        ids: list[int | None] = [None] * n

        def send(i, _sent):
            ids[i] = client.json("POST", "/v1/jobs", {"function": "clock"}, expect=(201,))["id"]

        before = client.count("clock", "succeeded")
        top_lat: list[str] = []
        sampler = top_snapshot(min(3.0, args.latency_seconds / 2), top_lat)
        loop = open_loop(send, rate, n, args.client_threads, args.latency_seconds * 3)
        sent = loop.pop("sent")
        want = before + sum(1 for i in ids if i is not None)
        try:
            wait_until(lambda: client.count("clock", "succeeded") >= want, 60, "clock jobs")
        except TimeoutError as e:
            result["latency_error"] = str(e)
        sampler.join(15)
        values: list[float] = []
        lock = threading.Lock()
        todo = iter([(i, ids[i]) for i in range(n) if ids[i] is not None and sent[i] is not None])

        def fetch():
            for i, job_id in todo:  # the shared iterator hands each job to one thread
                job = client.json("GET", f"/v1/jobs/{job_id}")
                out = job.get("output") or {}
                if job.get("state") == "succeeded" and "now_us" in out:
                    with lock:
                        values.append(out["now_us"] / 1e6 - sent[i])

        pool = [threading.Thread(target=fetch, daemon=True) for _ in range(4)]
        for t in pool:
            t.start()
        for t in pool:
            t.join(120)
        result["latency"] = {"rate_per_s": round(rate, 1), "jobs": n, "client_threads": args.client_threads,
                             "measured": len(values), **loop, **percentiles(values)}
        result["top_during_latency"] = top_lat
    finally:
        stop(node)
    return result


# ---------------------------------------------------------------------------- orchestration

REDIS_MODES = {
    "redis-default": ("Redis as shipped: RDB snapshots, no AOF — NOT durable (acknowledged jobs can be lost)", []),
    "redis-aof-always": ("Redis appendonly yes, appendfsync always — durable (fsync per write batch)",
                         ["--appendonly", "yes", "--appendfsync", "always"]),
}


def start_redis(args, mode: str, tmp: Path) -> tuple[subprocess.Popen, str]:
    import redis

    port = free_port()
    d = tmp / f"{mode}-{port}"
    d.mkdir(parents=True)
    cmd = [args.redis_server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d),
           "--daemonize", "no", "--logfile", "", *REDIS_MODES[mode][1]]
    proc = spawn(cmd, tmp / f"{mode}.log")
    url = f"redis://127.0.0.1:{port}"
    wait_until(lambda: _ping(redis, url), 30, f"{mode} on port {port}")
    return proc, url


def _ping(redis, url):
    try:
        return redis.Redis.from_url(url, socket_timeout=1).ping()
    except redis.exceptions.ConnectionError:
        return False


def sub(args, extra: list[str], timeout_s: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), *extra, "--jobs", str(args.jobs),
           "--workers", str(args.workers), "--latency-seconds", str(args.latency_seconds),
           "--rate-cap", str(args.rate_cap), "--client-threads", str(args.client_threads),
           "--drain-limit-s", str(args.drain_limit_s), "--batch", str(args.batch),
           *(["--insecure-http"] if args.insecure_http else [])]
    out = Path(args.tmp) / f"run-{time.time_ns()}.json"
    proc = spawn(cmd + ["--out", str(out)], Path(args.tmp) / "runs.log")
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        stop(proc)
        return {"error": f"timed out after {timeout_s:.0f} s"}
    if proc.returncode != 0 or not out.exists():
        tail = (Path(args.tmp) / "runs.log").read_text(errors="replace")[-1500:]
        return {"error": f"exit {proc.returncode}: {tail}"}
    return json.loads(out.read_text())


def fmt(v, digits=1):
    return "-" if v is None else f"{v:,.{digits}f}"


def run_all(args) -> int:
    tmp = Path(args.tmp)
    systems = [s for s in args.systems.split(",") if s]
    started = time.time()
    rows: list[dict] = []
    per_run_limit = args.drain_limit_s * 2 + args.latency_seconds * 4 + 300

    if "chorus" in systems:
        print(f"== chorus ({args.jobs} no-op jobs, --slots {args.workers})", flush=True)
        r = sub(args, ["chorus", "--chorus", args.chorus, "--data-dir", str(tmp / "chorus-data"),
                       "--log", str(tmp / "chorus.log")], per_run_limit)
        r.update(system="chorus", durability="raft log fsync'd before every acknowledgement — durable")
        rows.append(r)
        summary(r)
    for mode in REDIS_MODES:
        peers = [s for s in systems if s in PEERS]
        if not peers:
            continue
        proc, url = start_redis(args, mode, tmp)
        try:
            for name in peers:
                print(f"== {name} on {mode} ({args.jobs} no-op jobs, {args.workers} worker processes)", flush=True)
                r = sub(args, ["peer", "--system", name, "--redis-url", url,
                               "--log", str(tmp / f"{name}-{mode}.log")], per_run_limit)
                r.update(system=name, redis=mode, durability=REDIS_MODES[mode][0])
                rows.append(r)
                summary(r)
        finally:
            stop(proc)

    chorus = next((r for r in rows if r["system"] == "chorus"), None)
    chorus_rate = chorus.get("drain_jobs_per_s") if chorus else None
    for r in rows:
        rate = r.get("drain_jobs_per_s")
        r["chorus_drain_ratio"] = round(chorus_rate / rate, 2) if chorus_rate and rate else None

    header = f"{'system':<27} {'durability':<16} {'drain jobs/s':>13} {'chorus/x':>9} {'lat rate/s':>10} " \
             f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"
    lines = [header, "-" * len(header)]
    for r in rows:
        label = r["system"] + (f" ({r['redis']})" if r.get("redis") else "")
        dur = "durable" if "durable" in r["durability"] and "NOT" not in r["durability"] else "NOT durable"
        lat = r.get("latency") or {}
        drain = fmt(r.get("drain_jobs_per_s")) + ("*" if r.get("drain_timed_out") else "")
        lines.append(f"{label:<27} {dur:<16} {drain:>13} "
                     f"{fmt(r.get('chorus_drain_ratio'), 2):>9} {fmt(lat.get('rate_per_s')):>10} "
                     f"{fmt(lat.get('p50_ms'), 2):>8} {fmt(lat.get('p95_ms'), 2):>8} {fmt(lat.get('p99_ms'), 2):>8}")
    if any(r.get("drain_timed_out") for r in rows):
        lines.append(f"* drain stopped at the {args.drain_limit_s:.0f} s limit; rate from the jobs done by then")
    table = "\n".join(lines)
    print()
    print(table)
    print()
    for r in rows:
        label = r["system"] + (f" ({r['redis']})" if r.get("redis") else "")
        print(f"- {label}: {r.get('config', '')}; {r['durability']}")
        if r.get("error"):
            print(f"  ERROR: {r['error']}")

    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    doc = {
        "benchmark": "no-op job drain throughput and submit-to-start latency",
        "started_unix_s": round(started), "duration_s": round(time.time() - started, 1),
        "host": {"cpus": os.cpu_count(), "loadavg_at_end": load},
        "jobs": args.jobs, "worker_processes": args.workers, "latency_seconds": args.latency_seconds,
        "latency_rate_cap_per_s": args.rate_cap, "client_threads": args.client_threads,
        "table": table, "results": rows,
    }
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwritten: {args.out}")
    return 0 if all(not r.get("error") for r in rows) else 1


def summary(r: dict) -> None:
    if r.get("error"):
        print(f"   error: {r['error']}", flush=True)
        return
    lat = r.get("latency") or {}
    print(f"   enqueue {fmt(r.get('enqueue_jobs_per_s'))} jobs/s; drain {fmt(r.get('drain_jobs_per_s'))} jobs/s "
          f"({r.get('drain_completed')}/{r.get('jobs')} in {r.get('drain_s')} s); latency at "
          f"{lat.get('rate_per_s')}/s (achieved {lat.get('achieved_rate')}/s, {lat.get('measured')} measured): "
          f"p50 {lat.get('p50_ms')} p95 {lat.get('p95_ms')} p99 {lat.get('p99_ms')} ms", flush=True)
    for key in ("top_during_drain", "top_during_latency"):
        if r.get(key):
            print(f"   top during {key.split('_')[-1]}:")
            for line in r[key][:16]:
                print("     " + line)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["all", "peer", "chorus"])
    p.add_argument("--jobs", type=int, default=20000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=1000, help="chorus jobs per batch submit")
    p.add_argument("--latency-seconds", type=float, default=12.0)
    p.add_argument("--rate-cap", type=float, default=500.0, help="highest open-loop rate, jobs/s")
    p.add_argument("--client-threads", type=int, default=32)
    p.add_argument("--drain-limit-s", type=float, default=120.0,
                   help="time limit of one drain; past it the rate is taken from the jobs done")
    p.add_argument("--systems", default="chorus,celery,rq,dramatiq")
    p.add_argument("--tmp", default="")
    p.add_argument("--out", default=str(HERE / "results.json"))
    p.add_argument("--chorus", default="")
    p.add_argument("--insecure-http", action="store_true",
                   help="run chorus over plain HTTP instead of TLS (to see what TLS costs)")
    p.add_argument("--redis-server", default="redis-server")
    p.add_argument("--system", choices=sorted(PEERS))
    p.add_argument("--redis-url", default="")
    p.add_argument("--data-dir", default="")
    p.add_argument("--log", default="/dev/null")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        if args.command == "all":
            return run_all(args)
        result = run_peer(args) if args.command == "peer" else run_chorus(args)
        Path(args.out).write_text(json.dumps(result) + "\n")
        return 0
    finally:
        stop_all()


if __name__ == "__main__":
    sys.exit(main())
