"""Kafka records to started jobs: chorus Kafka triggers (one node, three nodes) against a
Python consumer group (confluent-kafka) handing each record to Celery or Dramatiq on Redis,
all on one tansu broker on this machine; and warm sync invoke latency against a plain HTTP
round trip to the same node (the floor).

Run through bench/events/run.sh, which installs what this needs. Process handling, the signed
client and the open loop are the queue benchmark's (bench/queue/bench.py). Every process this
starts leads its own process group, written to $BENCH_PIDS; every loop is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "queue"))

import bench as q  # noqa: E402  (bench/queue/bench.py)

VENV_BIN = Path(sys.executable).parent
POLL_S = 0.01
# A node's start on a loaded machine (a cold page cache for a large binary) takes a while.
START_LIMIT_S = 180


# ---------------------------------------------------------------------------- the broker


class Broker:
    def __init__(self, tansu: str, tmp: Path):
        self.tansu = tansu
        self.port = q.free_port()
        self.addr = f"127.0.0.1:{self.port}"
        url = f"tcp://{self.addr}"
        self.proc = q.spawn([tansu, "broker", "--listener-url", url, "--advertised-listener-url", url],
                            tmp / "tansu.log")
        q.wait_until(lambda: _connects(self.port), 30, "tansu listens")

    def create_topic(self, topic: str, partitions: int):
        subprocess.run([self.tansu, "topic", "create", topic, "--partitions", str(partitions),
                        "--broker", f"tcp://{self.addr}"], check=True, stdout=subprocess.DEVNULL)

    def produce(self, topic: str, values: list[bytes]):
        """Produces every value (batched), then waits for every acknowledgement."""
        from confluent_kafka import Producer

        p = Producer({"bootstrap.servers": self.addr, "linger.ms": 5, "acks": "all"})
        for i, v in enumerate(values):
            while True:
                try:
                    p.produce(topic, value=v, key=str(i).encode())
                    break
                except BufferError:
                    p.poll(0.05)
            p.poll(0)
        left = p.flush(60)
        if left:
            raise RuntimeError(f"{left} records not acknowledged")

    def open_loop(self, topic: str, rate: float, count: int, limit_s: float) -> dict:
        """Produces {"sent": wall clock} at `rate`, each sent at once (linger.ms=0)."""
        from confluent_kafka import Producer

        p = Producer({"bootstrap.servers": self.addr, "linger.ms": 0, "acks": "all"})

        def send(i, now):
            p.produce(topic, value=json.dumps({"sent": now}).encode(), key=str(i).encode())
            p.poll(0)

        result = q.open_loop(send, rate, count, 1, limit_s)
        p.flush(60)
        return result


def _ready(node) -> bool:
    try:
        return node.call("GET", "/readyz", signed=False)[0] == 200
    except OSError:
        return False


def _connects(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def drain(count, target: int, limit_s: float) -> dict:
    """Polls count() until it reaches `target`; the rate runs from the first record seen
    started to the last, so start-up (a consumer joining its group, workers starting) is
    left out on both sides, as the queue benchmark leaves out worker start-up."""
    deadline = time.monotonic() + limit_s
    first_t = first_n = None
    n = 0
    while time.monotonic() < deadline:
        n = count()
        if first_t is None and n > 0:
            first_t, first_n = time.time(), n
        if n >= target:
            break
        time.sleep(POLL_S)
    end = time.time()
    rate = (n - first_n) / (end - first_t) if first_t and end > first_t and n > first_n else None
    return {"records": target, "started": n, "timed_out": n < target,
            "records_per_s": round(rate, 1) if rate else None}


def warm(send_one, count, limit_s: float = 120):
    """Sends one record and waits until it is handled: the consumer has joined its group."""
    before = count()
    send_one()
    q.wait_until(lambda: count() > before, limit_s, "the first record handled")


# ---------------------------------------------------------------------------- chorus


class Cluster:
    """One or three chorus nodes over plain HTTP on loopback."""

    def __init__(self, chorus: str, tmp: Path, nodes: int, slots: int):
        self.dirs: list[Path] = []
        self.procs = []
        self.ports: list[int] = []
        key = None
        for n in range(nodes):
            d = tmp / f"chorus-{nodes}-{n}"
            d.mkdir(parents=True)
            port = q.free_port()
            args = [chorus, "serve", "--data-dir", str(d), "--listen", f"127.0.0.1:{port}",
                    "--slots", str(slots), "--insecure-http"]
            env = dict(os.environ)
            if n:
                args += ["--join", f"127.0.0.1:{self.ports[0]}"]
                env.update(CHORUS_KEY_ID=key["id"], CHORUS_KEY_SECRET=key["secret"])
            self.procs.append(q.spawn(args, d / "node.log", env=env))
            self.dirs.append(d)
            self.ports.append(port)
            if n == 0:
                key_file = d / "admin.key"
                q.wait_until(lambda: key_file.exists() and key_file.stat().st_size > 0, START_LIMIT_S, "admin.key")
                key = json.loads(key_file.read_text())
                self.client = q.ChorusClient(port, key["id"], key["secret"], None)
            node = q.ChorusClient(port, key["id"], key["secret"], None)
            q.wait_until(lambda: _ready(node), START_LIMIT_S, "/readyz")
        if nodes > 1:
            q.wait_until(lambda: self.voters() >= nodes, START_LIMIT_S, "nodes joined as voters")
        # Warm the workers of every node (a write may be refused while a new cluster settles).
        for i in range(slots * nodes * 2):
            for attempt in range(5):
                try:
                    job = self.client.json("POST", "/v1/jobs", {"function": "clock", "idempotency_key": f"warm-{i}"})
                    self.client.json("GET", f"/v1/jobs/{job['id']}/wait", query="timeout_ms=10000")
                    break
                except RuntimeError:
                    if attempt == 4:
                        raise
                    time.sleep(1)

    def voters(self) -> int:
        try:
            listed = self.client.json("GET", "/v1/nodes")["nodes"]
        except (RuntimeError, OSError):  # unavailable while a member joins
            return 0
        return sum(1 for n in listed if n.get("role") == "voter")

    def counts(self, function: str) -> tuple[int, int]:
        """Jobs of `function` started (running or ended) and succeeded, cluster-wide."""
        # One scrape: a job moving from running to succeeded between two would count twice.
        status, data = self.client.call("GET", "/metrics", signed=False)
        if status != 200:
            raise RuntimeError(f"/metrics: {status}")
        by_state = {}
        for line in data.decode().splitlines():
            if line.startswith("chorus_jobs{") and f'function="{function}"' in line:
                state = line.split('state="', 1)[1].split('"', 1)[0]
                by_state[state] = by_state.get(state, 0) + int(float(line.rsplit(" ", 1)[1]))
        started = sum(by_state.get(s, 0) for s in ("running", "succeeded", "failed"))
        return started, by_state.get("succeeded", 0)

    def stop(self):
        for p in self.procs:
            q.stop(p)


def chorus_kafka(args, broker: Broker, nodes: int, tmp: Path) -> dict:
    cluster = Cluster(args.chorus, tmp, nodes, args.slots)
    result = {"system": f"chorus, {nodes} node{'s' if nodes > 1 else ''}",
              "config": f"chorus serve --slots {args.slots} x{nodes}; a Kafka trigger, one job per record"}
    try:
        topic = f"tput-chorus-{nodes}"
        broker.create_topic(topic, args.partitions)
        broker.produce(topic, [b"{}"] * args.records)
        before = cluster.counts("noop")[0]
        cluster.client.json("POST", "/v1/triggers", {
            "name": topic, "function": "noop",
            "kafka": {"brokers": broker.addr, "topic": topic},
        })
        result.update(drain(lambda: cluster.counts("noop")[0] - before, args.records, args.drain_limit_s))
        rate = result["records_per_s"] or 2.0
        # Latency at half that rate: the `clock` function reports its start.
        lat_rate = max(1.0, min(rate / 2, args.rate_cap))
        count = max(10, int(lat_rate * args.latency_seconds))
        topic = f"lat-chorus-{nodes}"
        broker.create_topic(topic, args.partitions)
        cluster.client.json("POST", "/v1/triggers", {
            "name": topic, "function": "clock",
            "kafka": {"brokers": broker.addr, "topic": topic},
        })
        warm(lambda: broker.produce(topic, [b"{}"]), lambda: cluster.counts("clock")[1])
        before = cluster.counts("clock")[1]
        loop = broker.open_loop(topic, lat_rate, count, args.latency_seconds * 2)
        q.wait_until(lambda: cluster.counts("clock")[1] - before >= loop["sent_count"],
                     args.drain_limit_s, "the latency jobs")
        latencies = []
        before_id = None
        while True:
            query = "function=clock&limit=1000" + (f"&before={before_id}" if before_id else "")
            page = cluster.client.json("GET", "/v1/jobs", query=query)["jobs"]
            for job in page:
                records = ((job.get("input") or {}).get("trigger") or {}).get("records") or []
                if records and job.get("output") and "sent" in (records[0]["value"] or {}):
                    latencies.append(job["output"]["now_us"] / 1e6 - records[0]["value"]["sent"])
            if len(page) < 1000:
                break
            before_id = page[-1]["id"]
        result["latency"] = {"rate": round(lat_rate, 1), "sent": loop["sent_count"],
                             "achieved_rate": loop["achieved_rate"], **q.percentiles(latencies)}
        if nodes == 1:
            try:
                result["invoke"] = invoke_latency(cluster.client, args.invokes)
            except Exception as e:  # the figures above stand
                result["invoke_error"] = repr(e)
    finally:
        cluster.stop()
    return result


def invoke_latency(client, count: int) -> dict:
    """Warm sync invokes of `noop`, one at a time, against GET /readyz on the same node."""
    refused = []

    def timed(call) -> list[float]:
        out = []
        for _ in range(count):
            t = time.perf_counter()
            ok = call()
            if ok:
                out.append(time.perf_counter() - t)
        return out

    def invoke() -> bool:
        status, data = client.call("POST", "/v1/functions/noop/invoke", body=b"{}")
        if status != 200:
            # Counted, not timed: e.g. a write the log did not commit within 5 s.
            refused.append(f"{status} {data[:120]!r}")
        return status == 200

    for _ in range(20):
        invoke()
    refused.clear()
    return {"invoke": q.percentiles(timed(invoke)), "invoke_refused": len(refused),
            "invoke_refused_examples": refused[:3],
            "floor_readyz": q.percentiles(timed(lambda: client.call("GET", "/readyz", signed=False)[0] == 200))}


# ---------------------------------------------------------------------------- the peers


def peer_kafka(args, broker: Broker, name: str, tmp: Path) -> dict:
    import redis

    redis_proc, url = q.start_redis(args, "redis-default", tmp)
    env = dict(os.environ, BENCH_REDIS_URL=url, BENCH_QUEUE=name,
               PYTHONPATH=str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r0 = redis.Redis.from_url(f"{url}/0")
    if name == "celery":
        worker_cmd = [str(VENV_BIN / "celery"), "-A", "tasks", "worker", "--pool", "prefork",
                      "--concurrency", str(args.slots), "--loglevel", "WARNING", "-n", f"bench{os.getpid()}@%h"]
        config = (f"confluent-kafka consumer -> Celery (celery worker --pool prefork --concurrency {args.slots}, "
                  "Redis broker and result backend, as shipped)")
    else:
        worker_cmd = [str(VENV_BIN / "dramatiq"), "tasks", "--processes", str(args.slots), "--threads", "1"]
        config = (f"confluent-kafka consumer -> Dramatiq (dramatiq --processes {args.slots} --threads 1, "
                  "Redis broker, Results middleware, as shipped)")
    result = {"system": f"confluent-kafka + {name}", "config": config}
    procs = []
    try:
        procs.append(q.spawn(worker_cmd, tmp / f"{name}-workers.log", env=env, cwd=HERE))
        topic = f"tput-{name}"
        broker.create_topic(topic, args.partitions)
        broker.produce(topic, [b"{}"] * args.records)
        consumer = [sys.executable, str(HERE / "consumer.py"), broker.addr, topic, f"{name}-group"]
        procs.append(q.spawn(consumer, tmp / f"{name}-consumer.log", env=env, cwd=HERE))
        done = lambda: int(r0.get("bench:done") or 0)  # noqa: E731
        result.update(drain(done, args.records, args.drain_limit_s))
        rate = result["records_per_s"] or 2.0
        lat_rate = max(1.0, min(rate / 2, args.rate_cap))
        count = max(10, int(lat_rate * args.latency_seconds))
        topic = f"lat-{name}"
        broker.create_topic(topic, args.partitions)
        consumer = [sys.executable, str(HERE / "consumer.py"), broker.addr, topic, f"{name}-lat-group"]
        procs.append(q.spawn(consumer, tmp / f"{name}-lat-consumer.log", env=env, cwd=HERE))
        warm(lambda: broker.produce(topic, [b"{}"]), done)
        r0.delete("bench:latency")
        loop = broker.open_loop(topic, lat_rate, count, args.latency_seconds * 2)
        q.wait_until(lambda: r0.llen("bench:latency") >= loop["sent_count"], args.drain_limit_s,
                     "the latency tasks")
        latencies = [float(v) for v in r0.lrange("bench:latency", 0, -1)]
        result["latency"] = {"rate": round(lat_rate, 1), "sent": loop["sent_count"],
                             "achieved_rate": loop["achieved_rate"], **q.percentiles(latencies)}
    finally:
        for p in reversed(procs):
            q.stop(p)
        q.stop(redis_proc)
    return result


# ---------------------------------------------------------------------------- main


def fmt(v):
    return "-" if v is None else f"{v:,.1f}"


def main() -> int:
    signal.signal(signal.SIGTERM, q._on_signal)
    signal.signal(signal.SIGINT, q._on_signal)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chorus", required=True)
    p.add_argument("--tansu", required=True)
    p.add_argument("--redis-server", default=shutil.which("redis-server"))
    p.add_argument("--tmp", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--records", type=int, default=10_000, help="records per throughput run")
    p.add_argument("--partitions", type=int, default=1)
    p.add_argument("--slots", type=int, default=2, help="worker processes per node (and per peer)")
    p.add_argument("--latency-seconds", type=float, default=10)
    p.add_argument("--rate-cap", type=float, default=500)
    p.add_argument("--drain-limit-s", type=float, default=180)
    p.add_argument("--invokes", type=int, default=1_000)
    p.add_argument("--systems", default="chorus1,chorus3,celery,dramatiq")
    args = p.parse_args()
    tmp = Path(args.tmp)
    results = []
    broker = Broker(args.tansu, tmp)
    try:
        for system in args.systems.split(","):
            print(f"running {system}", file=sys.stderr, flush=True)
            try:
                if system.startswith("chorus"):
                    results.append(chorus_kafka(args, broker, int(system[len("chorus"):] or 1), tmp))
                else:
                    results.append(peer_kafka(args, broker, system, tmp))
            except Exception as e:  # one system failing leaves the others' figures
                results.append({"system": system, "error": repr(e)})
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    finally:
        q.stop_all()
    Path(args.out).write_text(json.dumps({"host_cpus": os.cpu_count(), "args": vars(args),
                                          "results": results}, indent=2))
    print(f"{'system':<32} {'records/s':>10} {'rate':>7} {'p50 ms':>8} {'p99 ms':>8}")
    for r in results:
        lat = r.get("latency", {})
        print(f"{r['system']:<32} {fmt(r.get('records_per_s')):>10} {fmt(lat.get('rate')):>7} "
              f"{fmt(lat.get('p50_ms')):>8} {fmt(lat.get('p99_ms')):>8}{'  ' + r['error'] if 'error' in r else ''}")
    for r in results:
        if "invoke" in r:
            inv, floor = r["invoke"]["invoke"], r["invoke"]["floor_readyz"]
            print(f"sync invoke (warm noop): p50 {inv['p50_ms']} ms, p99 {inv['p99_ms']} ms "
                  f"({r['invoke']['invoke_refused']} refused); "
                  f"plain HTTP round trip to the node (GET /readyz): p50 {floor['p50_ms']} ms, p99 {floor['p99_ms']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
