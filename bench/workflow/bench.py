"""Workflow benchmark: chorus against Restate and DBOS, side by side in one run.

Two workflows of no-op steps, the same in every system:
- seq3: three steps one after the other;
- fan100: 100 steps at once (fan-out), then one step that sees all their outputs (fan-in).

For each system and workflow:
- end-to-end latency at a fixed open-loop rate: a run is started at its scheduled time (from a
  pool of client threads, so a slow run does not hold the next one back) and its latency runs
  from that time until the client holds its result; median and p99;
- maximum runs per second: closed loop, `--clients` threads each starting a run and waiting
  for its result, again and again, for `--seconds`.

Systems (each started and stopped by this script, on loopback ports):
- chorus, 1 node: `chorus serve` (HTTPS, 2 worker slots), the workflows deployed as TOML, each
  step the built-in `noop` function (the cheapest real step: a job on a worker process that
  answers `{}`); the client starts a run and waits for it in one call (`POST
  /v1/workflows/{name}/invoke`, then `GET /v1/runs/{id}/wait` only if it still runs after
  30 s) over pooled keep-alive connections. Every state change is
  fsync'd to the raft log before it is applied: durable.
- chorus, 3 nodes: the same through a follower of a three-node cluster started as
  bench/cluster does (mutual TLS between nodes, 2 slots each); a change is durable on two
  nodes.
- Restate: `restate-server` (npm `@restatedev/restate-server`) single node with its defaults
  (local log and RocksDB with WAL fsync: durable), a TypeScript service (`restate/service.ts`,
  SDK `@restatedev/restate-sdk` on Node 20 through tsx) whose steps are `ctx.run` no-ops, the
  fan-out's awaited with `RestatePromise.all`; the client calls the ingress (plain HTTP,
  request-response, keep-alive). "restate, no fsync" turns the WAL fsyncs off (not durable).
- DBOS (PyPI `dbos`) on PostgreSQL (its production setup; this script runs a private
  `postgres` with defaults: fsync and synchronous_commit on, durable), workflows and steps
  decorated Python functions in the benchmark process itself (DBOS is a library: no network
  hop to a server), the fan-out as 100 child workflows started with `DBOS.start_workflow`
  and awaited. "dbos, no sync commit" runs postgres with `synchronous_commit=off` (a crash
  loses the last commits: not durable).
"""
import argparse
import concurrent.futures
import hashlib
import hmac
import http.client
import json
import os
import queue
import secrets
import shutil
import signal
import socket
import statistics
import ssl
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "cluster"))
import cluster  # noqa: E402  (bench/cluster: starting chorus nodes, TLS, signed calls)

FAN_WIDTH = 100
LIMIT_S = 120  # every wait gives up after this long

CHORUS_WORKFLOWS = {
    "seq3": """
name = "seq3"
retry = { max_attempts = 1 }
[[steps]]
name = "a"
function = "noop"
[[steps]]
name = "b"
function = "noop"
needs = ["a"]
[[steps]]
name = "c"
function = "noop"
needs = ["b"]
""",
    "fan100": """
name = "fan100"
retry = { max_attempts = 1 }
[[steps]]
name = "fan"
function = "noop"
for_each = "{{ input.items }}"
[[steps]]
name = "join"
function = "noop"
needs = ["fan"]
input = { outputs = "{{ steps.fan.output }}" }
""",
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, what, step_s=0.05):
    deadline = time.time() + LIMIT_S
    while time.time() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(step_s)
    raise SystemExit(f"timed out waiting for {what}")


# ---------------------------------------------------------------------------------------------
# Measuring: the same two loops for every system, around a blocking `run(workflow)` call.


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def open_loop(run, workflow, rate, seconds, threads=64):
    count = max(1, int(rate * seconds))
    latencies, errors = [], []
    t0 = time.perf_counter() + 0.2

    def one(i):
        at = t0 + i / rate
        time.sleep(max(0.0, at - time.perf_counter()))
        try:
            run(workflow)
            latencies.append(time.perf_counter() - at)
        except Exception as e:  # a failed run is counted, not measured
            errors.append(repr(e))

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(count)))
    if not latencies:
        return {"rate": rate, "runs": count, "errors": len(errors), "p50_ms": None,
                "p99_ms": None, "first_errors": errors[:3]}
    return {
        "rate": rate, "runs": count, "errors": len(errors),
        "p50_ms": percentile(latencies, 0.5) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000,
        "first_errors": errors[:3],
    }


def closed_loop(run, workflow, clients, seconds):
    done, errors, first_errors = [0], [0], []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client():
        while time.perf_counter() < stop:
            try:
                run(workflow)
                with lock:
                    done[0] += 1
            except Exception as e:  # counted, and the first few kept for the JSON
                with lock:
                    errors[0] += 1
                    if len(first_errors) < 3:
                        first_errors.append(repr(e))

    t0 = time.perf_counter()
    workers = [threading.Thread(target=client) for _ in range(clients)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    return {"clients": clients, "runs": done[0], "errors": errors[0],
            "runs_per_s": done[0] / elapsed, "first_errors": first_errors}


def measure(run, args):
    """Warms up, then the latency and throughput loops of both workflows. The warm-up is a
    closed loop of its own (`--warmup` seconds): Restate's partitions, for one, each take a
    first invocation that is slow, and a few runs alone left seconds-long stalls in the
    measured loop."""
    result = {}
    for workflow, rate, clients in (("seq3", args.seq_rate, args.clients),
                                    ("fan100", args.fan_rate, args.fan_clients)):
        closed_loop(run, workflow, clients, args.warmup)
        result[workflow] = {
            "latency": open_loop(run, workflow, rate, args.seconds),
            "throughput": closed_loop(run, workflow, clients, args.seconds),
        }
        print(f"    {workflow}: {json.dumps(result[workflow])}", file=sys.stderr, flush=True)
    return result


# ---------------------------------------------------------------------------------------------
# chorus


class Pool:
    """Keep-alive connections shared by the client threads: a call takes an idle one (or opens
    one) and gives it back, so a run does not pay a connection set-up (a TLS handshake for
    chorus) because the open loop handed it to a thread that had none."""

    def __init__(self, connect):
        self.connect, self.idle = connect, queue.LifoQueue()

    def request(self, method, path, body, headers):
        """Sends one request; answers (status, body). A connection the server closed is
        replaced once."""
        for tries in range(2):
            try:
                c = self.idle.get_nowait()
            except queue.Empty:
                c = self.connect()
            try:
                c.request(method, path, body=body, headers=headers)
                response = c.getresponse()
                text = response.read()
            except (http.client.HTTPException, OSError):
                c.close()
                if tries:
                    raise
                continue
            self.idle.put(c)
            return response.status, text


class ChorusClient:
    """Signed requests over pooled keep-alive HTTPS connections."""

    def __init__(self, addr, key):
        self.addr, self.key = addr, key
        self.signing_key = hmac.new(bytes.fromhex(key["secret"]), b"chorus signing key v1",
                                    "sha256").digest()
        host, port = addr.split(":")
        if cluster.TLS["insecure"]:
            self.pool = Pool(lambda: http.client.HTTPConnection(host, int(port), timeout=60))
        else:
            self.pool = Pool(lambda: http.client.HTTPSConnection(host, int(port), timeout=60,
                                                                 context=cluster.TLS["context"]))

    def call(self, method, path, body=None, raw=None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        ts, nonce = str(int(time.time())), secrets.token_hex(16)
        digest = hashlib.sha256(data).hexdigest()
        p, _, q = path.partition("?")
        canonical = "\n".join([method, self.addr, p, q, ts, nonce, digest]).encode()
        headers = {"x-chorus-key": self.key["id"], "x-chorus-timestamp": ts, "x-chorus-nonce": nonce,
                   "x-chorus-content-sha256": digest,
                   "x-chorus-signature": hmac.new(self.signing_key, canonical, "sha256").hexdigest(),
                   "content-type": "application/json"}
        status, text = self.pool.request(method, path, data or None, headers)
        if status >= 300:
            raise RuntimeError(f"{method} {path}: {status} {text[:200]!r}")
        return json.loads(text)

    def run(self, workflow):
        input_ = {"items": list(range(FAN_WIDTH))} if workflow == "fan100" else {}
        run = self.call("POST", f"/v1/workflows/{workflow}/invoke?timeout_ms=30000", {"input": input_})
        while run["state"] == "running":
            run = self.call("GET", f"/v1/runs/{run['id']}/wait?timeout_ms=30000")
        if run["state"] != "succeeded":
            raise RuntimeError(f"run {run['id']} {run['state']}")


def chorus_system(binary, root, nodes_wanted):
    if nodes_wanted == 1:
        nodes = [cluster.Node(binary, root)]
        key = nodes[0].key()
        entry = nodes[0]
    else:
        nodes, key = cluster.cluster(binary, root)
        leader = cluster.leader_of(nodes, key)
        entry = next(n for n in nodes if n.id != leader)  # through a follower, as a client may
    client = ChorusClient(entry.addr, key)
    for text in CHORUS_WORKFLOWS.values():
        client.call("POST", "/v1/workflows", raw=text.encode())
    return client.run, lambda: [n.kill() for n in nodes]


# ---------------------------------------------------------------------------------------------
# Restate


def restate_system(root, node_modules, durable):
    base = tempfile.mkdtemp(dir=root)
    ingress, admin, node_port, service_port = (free_port() for _ in range(4))
    env = dict(os.environ,
               RESTATE_INGRESS__BIND_ADDRESS=f"127.0.0.1:{ingress}",
               RESTATE_ADMIN__BIND_ADDRESS=f"127.0.0.1:{admin}",
               RESTATE_BIND_ADDRESS=f"127.0.0.1:{node_port}",
               RESTATE_ADVERTISED_ADDRESS=f"http://127.0.0.1:{node_port}",
               RESTATE_DISABLE_TELEMETRY="true",
               RESTATE_LOG_FILTER="warn")
    if not durable:
        env.update(RESTATE_BIFROST__LOCAL__ROCKSDB_DISABLE_WAL_FSYNC="true",
                   RESTATE_WORKER__STORAGE__ROCKSDB_DISABLE_WAL_FSYNC="true",
                   RESTATE_LOG_SERVER__ROCKSDB_DISABLE_WAL_FSYNC="true",
                   RESTATE_METADATA_SERVER__ROCKSDB_DISABLE_WAL_FSYNC="true")
    log = open(os.path.join(base, "server.log"), "w")
    server_bin = os.path.join(node_modules, "@restatedev", "restate-server-linux-x64", "bin",
                              "restate-server")
    procs = [subprocess.Popen([server_bin, "--base-dir", os.path.join(base, "data")], env=env,
                              stdout=log, stderr=log, start_new_session=True)]
    service_env = dict(os.environ, PORT=str(service_port), RESTATE_LOGGING="WARN")
    procs.append(subprocess.Popen([os.path.join(node_modules, ".bin", "tsx"),
                                   os.path.join(HERE, "restate", "service.ts")],
                                  env=service_env, stdout=log, stderr=log, start_new_session=True))

    def stop():
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()

    def register():
        c = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
        c.request("POST", "/deployments", body=json.dumps({"uri": f"http://127.0.0.1:{service_port}"}),
                  headers={"content-type": "application/json"})
        r = c.getresponse()
        r.read()
        return r.status < 300

    try:
        wait_for(register, "restate up and the service registered", 0.2)
    except SystemExit:
        stop()
        raise
    pool = Pool(lambda: http.client.HTTPConnection("127.0.0.1", ingress, timeout=60))

    def run(workflow):
        path, body = ("/bench/seq3", b"null") if workflow == "seq3" else ("/bench/fan", str(FAN_WIDTH).encode())
        status, text = pool.request("POST", path, body, {"content-type": "application/json"})
        if status != 200:
            raise RuntimeError(f"{path}: {status} {text[:200]!r}")

    # The first calls after registration can meet a partition still starting: wait for one.
    wait_for(lambda: run("seq3") is None, "a first restate run", 0.2)
    return run, stop


# ---------------------------------------------------------------------------------------------
# DBOS: measured in a process of its own (one DBOS instance per process), on a private postgres.


def start_postgres(root, synchronous_commit):
    pg_bin = "/usr/lib/postgresql/15/bin"
    data = tempfile.mkdtemp(dir=root)
    os.chmod(root, 0o755)
    shutil.chown(data, "postgres", "postgres")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run(as_postgres + [f"{pg_bin}/initdb", "-D", data, "-A", "trust", "-U", "postgres"],
                   check=True, stdout=subprocess.DEVNULL)
    port = free_port()
    log = open(os.path.join(root, f"postgres-{port}.log"), "w")
    proc = subprocess.Popen(as_postgres + [f"{pg_bin}/postgres", "-D", data, "-p", str(port), "-k", data,
                                           "-c", "listen_addresses=127.0.0.1",
                                           "-c", f"synchronous_commit={synchronous_commit}",
                                           "-c", "max_connections=200"],
                            stdout=log, stderr=log, start_new_session=True)

    def ready():
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    wait_for(ready, "postgres")
    time.sleep(0.5)
    return f"postgresql://postgres@127.0.0.1:{port}/dbos_bench", proc


def dbos_inner(args):
    """`bench.py dbos`: DBOS in this process, measured with the same loops; prints JSON."""
    from dbos import DBOS, DBOSConfig

    config: DBOSConfig = {"name": "bench", "system_database_url": args.db_url,
                          "sys_db_pool_size": 40, "max_executor_threads": 256,
                          "log_level": "WARNING", "run_migrations": True}
    DBOS(config=config)

    @DBOS.step()
    def noop(i=0):
        return i

    @DBOS.workflow()
    def seq3():
        noop()
        noop()
        noop()

    @DBOS.workflow()
    def one_step(i):
        return noop(i)

    @DBOS.workflow()
    def fan100():
        handles = [DBOS.start_workflow(one_step, i) for i in range(FAN_WIDTH)]
        outputs = [h.get_result() for h in handles]
        noop(len(outputs))

    DBOS.launch()
    workflows = {"seq3": seq3, "fan100": fan100}

    def run(workflow):
        DBOS.start_workflow(workflows[workflow]).get_result()

    result = measure(run, args)
    DBOS.destroy()
    print(json.dumps(result))


def dbos_system(args, root, synchronous_commit):
    url, pg = start_postgres(root, synchronous_commit)
    try:
        inner = [sys.executable, os.path.abspath(__file__), "dbos", "--db-url", url,
                 "--seconds", str(args.seconds), "--warmup", str(args.warmup), "--seq-rate", str(args.seq_rate),
                 "--fan-rate", str(args.fan_rate), "--clients", str(args.clients),
                 "--fan-clients", str(args.fan_clients)]
        out = subprocess.run(inner, check=True, stdout=subprocess.PIPE, text=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        os.killpg(pg.pid, signal.SIGTERM)
        pg.wait()


# ---------------------------------------------------------------------------------------------


SYSTEMS = {
    # name: (label in the table, durable)
    "chorus-1": ("chorus, 1 node", True),
    "chorus-3": ("chorus, 3 nodes (through a follower)", True),
    "restate": ("Restate 1.7.12, 1 node (TS SDK 1.17.2)", True),
    "dbos": ("DBOS 3.4.0 on PostgreSQL 15", True),
    "restate-nofsync": ("Restate, WAL fsync off", False),
    "dbos-async": ("DBOS on PostgreSQL, synchronous_commit=off", False),
}


def ms(value):
    return "-" if value is None else f"{value:.1f}"


def ratio(a, b):
    return "-" if not a or not b else f"{a / b:.2f}"


def table(results, args):
    base = results.get("chorus-1")
    lines = []
    header = ("| system | durable | seq3 p50 ms | seq3 p99 ms | seq3 runs/s | "
              "fan100 p50 ms | fan100 p99 ms | fan100 runs/s |")
    lines += [header, "|" + " --- |" * 8]
    for name, r in results.items():
        label, durable = SYSTEMS[name]
        cells = []
        for wf in ("seq3", "fan100"):
            lat, thr = r[wf]["latency"], r[wf]["throughput"]
            # Over its capacity the open loop only measures a growing queue: marked with *.
            mark = "*" if thr["runs_per_s"] < lat["rate"] else ""
            # Runs that failed (an error answer, a time-out) are counted apart: marked with !.
            mark += f" ({lat['errors']} failed)" if lat["errors"] else ""
            cells += [ms(lat["p50_ms"]) + mark, ms(lat["p99_ms"]) + mark,
                      f"{thr['runs_per_s']:.1f}" + (f" ({thr['errors']} failed)" if thr["errors"] else "")]
        lines.append(f"| {label} | {'yes' if durable else 'no'} | " + " | ".join(cells) + " |")
    if base:
        lines += ["", "Ratios against chorus on 1 node (latency: peer / chorus, above 1 = chorus faster; "
                  "runs/s: chorus / peer, above 1 = chorus faster):", "",
                  "| peer | seq3 p50 | seq3 p99 | seq3 runs/s | fan100 p50 | fan100 p99 | fan100 runs/s |",
                  "|" + " --- |" * 7]
        for name, r in results.items():
            if name == "chorus-1":
                continue
            cells = []
            for wf in ("seq3", "fan100"):
                b, p = base[wf], r[wf]
                cells += [ratio(p["latency"]["p50_ms"], b["latency"]["p50_ms"]),
                          ratio(p["latency"]["p99_ms"], b["latency"]["p99_ms"]),
                          ratio(b["throughput"]["runs_per_s"], p["throughput"]["runs_per_s"])]
            lines.append(f"| {SYSTEMS[name][0]} | " + " | ".join(cells) + " |")
    lines += ["", "* the system's maximum runs/s is below the open-loop rate: its latency is a queue's.",
              "", f"Open loop: seq3 at {args.seq_rate:g} runs/s, fan100 at {args.fan_rate:g} runs/s, "
              f"{args.seconds:g} s each; closed loop: {args.clients} clients (seq3), {args.fan_clients} "
              f"(fan100), {args.seconds:g} s each."
              + (f" Each figure is the median of {args.rounds} rounds." if args.rounds > 1 else "")]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["all", "dbos"])
    ap.add_argument("--chorus")
    ap.add_argument("--node-modules", default=os.path.join(HERE, "restate", "node_modules"))
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=3.0, help="closed-loop seconds before measuring")
    ap.add_argument("--seq-rate", type=float, default=10.0, help="seq3 open-loop runs/s")
    ap.add_argument("--fan-rate", type=float, default=1.0, help="fan100 open-loop runs/s")
    ap.add_argument("--clients", type=int, default=32, help="seq3 closed-loop clients")
    ap.add_argument("--fan-clients", type=int, default=8, help="fan100 closed-loop clients")
    # Three by default: on a shared machine one trial of each system is one sample of an hour
    # that drifts (see bench/README.md, "Rounds"); `--rounds 1` is the quick look.
    ap.add_argument("--rounds", type=int, default=3,
                    help="measure every system this many times, the order rotated each round; "
                         "the table gives each figure's median over the rounds")
    ap.add_argument("--db-url")
    ap.add_argument("--out", default=os.path.join(HERE, "results.json"))
    args = ap.parse_args()
    if args.mode == "dbos":
        return dbos_inner(args)
    root = tempfile.mkdtemp(prefix="chorus-workflow-bench-")
    names = args.systems.split(",")
    rounds = []
    try:
        for r in range(args.rounds):
            # Each round starts one system later: over the rounds every system takes every
            # place in the order, so a machine that drifts (it does, hour to hour) does not
            # favour whichever system always came first.
            order = names[r % len(names):] + names[:r % len(names)]
            results = {}
            for name in order:
                print(f"{name} (round {r + 1} of {args.rounds}):", file=sys.stderr, flush=True)
                results[name] = one_system(name, args, root)
            rounds.append({name: results[name] for name in names})
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results = median_of_rounds(rounds)
    text = table(results, args)
    if len(rounds) > 1:
        text += "\n\n" + rounds_table(rounds)
    print(text)
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "results": results, "rounds": rounds, "table": text}, f,
                  indent=2)


def one_system(name, args, root):
    """Starts `name`, measures it (`measure`), stops it."""
    if name in ("dbos", "dbos-async"):
        return dbos_system(args, root, "on" if name == "dbos" else "off")
    if name.startswith("chorus"):
        run, stop = chorus_system(args.chorus, root, 1 if name == "chorus-1" else 3)
    else:
        run, stop = restate_system(root, args.node_modules, durable=name == "restate")
    try:
        return measure(run, args)
    finally:
        stop()


# The figures a round gives per workflow, as (loop, key) in `measure`'s result.
FIGURES = (("latency", "p50_ms"), ("latency", "p99_ms"), ("throughput", "runs_per_s"))


def median_of_rounds(rounds):
    """One result per system: each figure the median of its rounds (errors summed)."""
    if len(rounds) == 1:
        return rounds[0]
    merged = {}
    for name in rounds[0]:
        merged[name] = {}
        for wf in ("seq3", "fan100"):
            each = [r[name][wf] for r in rounds]
            m = {"latency": dict(each[0]["latency"]), "throughput": dict(each[0]["throughput"])}
            for loop, key in FIGURES:
                values = [e[loop][key] for e in each if e[loop][key] is not None]
                m[loop][key] = statistics.median(values) if values else None
            for loop in ("latency", "throughput"):
                m[loop]["errors"] = sum(e[loop]["errors"] for e in each)
                m[loop]["runs"] = sum(e[loop]["runs"] for e in each)
            merged[name][wf] = m
    return merged


def rounds_table(rounds):
    """Each peer against chorus on 1 node, round by round: the median of the rounds'
    ratios, and their lowest and highest (a ratio is of two figures of one round)."""
    if "chorus-1" not in rounds[0]:
        return ""
    lines = [f"Ratios round by round ({len(rounds)} rounds, each system once per round, the order "
             "rotated): median (lowest to highest); above 1 = chorus faster.", "",
             "| peer | seq3 p50 | seq3 runs/s | fan100 p50 | fan100 runs/s |",
             "|" + " --- |" * 5]
    for name in rounds[0]:
        if name == "chorus-1":
            continue
        cells = []
        for wf in ("seq3", "fan100"):
            lat = [r[name][wf]["latency"]["p50_ms"] / r["chorus-1"][wf]["latency"]["p50_ms"]
                   for r in rounds
                   if r[name][wf]["latency"]["p50_ms"] and r["chorus-1"][wf]["latency"]["p50_ms"]]
            thr = [r["chorus-1"][wf]["throughput"]["runs_per_s"] / r[name][wf]["throughput"]["runs_per_s"]
                   for r in rounds if r[name][wf]["throughput"]["runs_per_s"]]
            for values in (lat, thr):
                cells.append(f"{statistics.median(values):.2f} ({min(values):.2f} to {max(values):.2f})"
                             if values else "-")
        lines.append(f"| {SYSTEMS[name][0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

if __name__ == "__main__":
    sys.exit(main())
