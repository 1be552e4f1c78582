"""Where a chorus run's time goes: one node, `--runs` seq3 runs one after the other, and for
each step the median of each phase, from the times the log records (milliseconds since the
run started, all on the leader's clock):

- advance: the previous step's job ended (or the run started) -> this step's job submitted:
  0 when the entry that recorded the end carried the next decision (a continuation), else
  the run driver waking, `workflow::advance`, and the `RunCommands` entry committed;
- place: job submitted -> its attempt started: 0 when the continuation started it on the
  node in the same entry, else the scheduling loop waking and its `StartAttempts` entry
  committed;
- execute: attempt started -> attempt ended: the node handing the job to a worker process,
  the worker's reply, and the `FinishAttempts` entry committed;
- finish: the last job ended -> the run finished: one more driver pass and `RunCommands`
  entry (the last step finishes, the run ends);
- client: the run ended -> the client holds the answer of its wait.

Usage: bench/.venv/bin/python bench/workflow/profile.py --chorus target/release/chorus
"""
import argparse
import statistics
import sys
import tempfile
import time
import os

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--chorus", required=True)
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="chorus-workflow-profile-")
    run, stop = bench.chorus_system(args.chorus, root, 1)
    client = run.__self__
    phases = {}
    try:
        for _ in range(5):
            run("seq3")
        for _ in range(args.runs):
            r = client.call("POST", "/v1/runs", {"workflow": "seq3", "input": {}})
            while r["state"] == "running":
                r = client.call("GET", f"/v1/runs/{r['id']}/wait?timeout_ms=30000")
            seen_ms = time.time() * 1000
            base = r["started_at_ms"]
            previous_end = 0
            for key, job_id in sorted(r["jobs"].items(), key=lambda kv: kv[1]):
                step = key.split(":")[2]
                job = client.call("GET", f"/v1/jobs/{job_id}")
                attempt = job["attempts"][0]
                for name, value in (("advance", job["submitted_at_ms"] - base - previous_end),
                                    ("place", attempt["started_at_ms"] - job["submitted_at_ms"]),
                                    ("execute", attempt["finished_at_ms"] - attempt["started_at_ms"])):
                    phases.setdefault((step, name), []).append(value)
                previous_end = attempt["finished_at_ms"] - base
            phases.setdefault(("run", "finish"), []).append(r["finished_at_ms"] - base - previous_end)
            phases.setdefault(("run", "total"), []).append(r["finished_at_ms"] - base)
            phases.setdefault(("run", "client"), []).append(seen_ms - r["finished_at_ms"])
    finally:
        stop()
    for (step, name), values in phases.items():
        print(f"{step:>4} {name:<8} median {statistics.median(values):6.1f} ms   "
              f"mean {statistics.mean(values):6.1f} ms   max {max(values):6.1f} ms")


if __name__ == "__main__":
    sys.exit(main())
