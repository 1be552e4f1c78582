//! The executor against real worker processes (small shell and Python command functions):
//! what a worker starts ends with it, and a memory limit hit has its own code.

use executor::{Executor, ProcessSpec};
use model::protocol::Request;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long a test waits for processes to be gone, or for a child to have left its session.
const WAIT_DEADLINE: Duration = Duration::from_secs(20);
/// Pause between two looks at `/proc` while waiting.
const POLL_PAUSE: Duration = Duration::from_millis(20);

/// A worker that, for each request, starts three processes that outlive the reply, writes
/// their pids to `$PIDS_FILE` (one line per request) and then does `$THEN`:
/// - a child forked into the worker's process group (it keeps the worker's pipes);
/// - a child that `setsid`s into a session of its own, out of reach of a group kill;
/// - a grandchild whose parent exits at once, so it is orphaned while the worker runs.
const LEAVES_CHILDREN: &str = r#"
while read -r line; do
  sleep 1000 & forked=$!
  setsid sh -c 'exec sleep 1000' </dev/null >/dev/null 2>&1 & detached=$!
  orphan=$(sh -c 'sleep 1000 </dev/null >/dev/null 2>&1 & echo $!')
  echo "$forked $detached $orphan" >> "$PIDS_FILE"
  eval "$THEN"
done
"#;

fn shell_worker(script: &str, env: &[(&str, &str)]) -> ProcessSpec {
    ProcessSpec {
        program: PathBuf::from("/bin/sh"),
        args: vec!["-c".into(), script.into()],
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        memory_mb: None,
        timeout_ms: 60_000,
        idle_timeout_ms: 60_000,
    }
}

fn request() -> Request {
    Request {
        job: 1,
        attempt: 1,
        function: "test".into(),
        input: json!({}),
        files: vec![],
        out_dir: std::env::temp_dir().display().to_string(),
    }
}

/// A process as a test knows it: the pid and when it started (pids are reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Process {
    pid: i32,
    start_ticks: u64,
}

/// Fields after the command name in `/proc/PID/stat`: state, ppid, pgrp, session, ...
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(String::from).collect())
}

fn process(pid: i32) -> Process {
    let fields = stat_fields(pid).unwrap_or_else(|| panic!("process {pid} is not running"));
    Process {
        pid,
        start_ticks: fields[19].parse().expect("starttime is a number"),
    }
}

/// Whether the process still exists, as a running process or as a zombie nobody reaped.
fn exists(p: Process) -> bool {
    stat_fields(p.pid).is_some_and(|f| f[19].parse() == Ok(p.start_ticks))
}

fn running(p: Process) -> bool {
    stat_fields(p.pid).is_some_and(|f| f[19].parse() == Ok(p.start_ticks) && f[0] != "Z")
}

fn session(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(3)?.parse().ok()
}

/// The processes of each request, as the worker wrote them, once it has written `lines`.
async fn must_read_pids(file: &Path, lines: usize) -> Vec<[Process; 3]> {
    let deadline = Instant::now() + WAIT_DEADLINE;
    let text = loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if text.lines().count() >= lines && text.ends_with('\n') {
            break text;
        }
        assert!(Instant::now() < deadline, "the worker wrote no pids");
        tokio::time::sleep(POLL_PAUSE).await;
    };
    let mut found = Vec::new();
    for line in text.lines() {
        let pids: Vec<i32> = line
            .split_whitespace()
            .map(|p| p.parse().expect("a pid"))
            .collect();
        assert_eq!(pids.len(), 3, "three pids per request: {line:?}");
        let [forked, detached, orphan] = [pids[0], pids[1], pids[2]].map(process);
        // The detached child may not have called setsid yet when the worker replies.
        while session(detached.pid) != Some(detached.pid) {
            assert!(
                Instant::now() < deadline,
                "the setsid'd child never left the worker's session"
            );
            tokio::time::sleep(POLL_PAUSE).await;
        }
        assert_ne!(session(forked.pid), Some(forked.pid));
        found.push([forked, detached, orphan]);
    }
    found
}

/// Waits until every process is gone and reaped, running the idle reaper (as the node does
/// on its tick) meanwhile.
async fn must_end(executor: &Executor, processes: &[Process]) {
    let deadline = Instant::now() + WAIT_DEADLINE;
    loop {
        executor.reap_idle().await;
        let left: Vec<&Process> = processes.iter().filter(|p| exists(**p)).collect();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still there after {WAIT_DEADLINE:?}: {left:?}"
        );
        tokio::time::sleep(POLL_PAUSE).await;
    }
}

#[tokio::test]
async fn children_of_a_worker_end_when_the_pool_scales_down() {
    let dir = tempfile::tempdir().unwrap();
    let pids_file = dir.path().join("pids");
    let env = [
        ("PIDS_FILE", pids_file.to_str().unwrap()),
        ("THEN", r#"echo '{"output": {}}'"#),
    ];
    let mut spec = shell_worker(LEAVES_CHILDREN, &env);
    let executor = Executor::new();
    let cancel = CancellationToken::new();

    let first = executor.run("pool", &spec, &request(), &cancel).await;
    assert_eq!(first.reply, Ok(json!({})), "log: {:?}", first.log);
    // While the worker is warm, what it started is left alone, even the grandchild that was
    // orphaned (and is now the test process's child).
    assert_eq!(executor.reap_idle().await, 0);
    let kept = must_read_pids(&pids_file, 1).await;
    assert!(kept.iter().flatten().all(|p| running(*p)), "{kept:?}");

    // The same warm worker runs a second attempt, then its pool scales down to zero.
    spec.idle_timeout_ms = 0;
    let second = executor.run("pool", &spec, &request(), &cancel).await;
    assert!(!second.cold_start);
    assert_eq!(second.reply, Ok(json!({})), "log: {:?}", second.log);
    let all: Vec<Process> = must_read_pids(&pids_file, 2)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(all.len(), 6);
    must_end(&executor, &all).await;
    assert!(executor.warm_workers().is_empty());
}

#[tokio::test]
async fn children_of_a_worker_end_when_it_is_killed_for_its_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let pids_file = dir.path().join("pids");
    let env = [
        ("PIDS_FILE", pids_file.to_str().unwrap()),
        ("THEN", "sleep 1000"),
    ];
    let mut spec = shell_worker(LEAVES_CHILDREN, &env);
    // Time enough for a shell to start three processes; then it hangs and is killed.
    spec.timeout_ms = 3_000;
    let executor = Executor::new();
    let (cancel, request) = (CancellationToken::new(), request());
    // The children are looked at while the worker hangs, before the time-out kills it.
    let (finished, seen) = tokio::join!(
        executor.run("pool", &spec, &request, &cancel),
        must_read_pids(&pids_file, 1)
    );
    let error = finished.reply.expect_err("the worker hangs");
    assert_eq!(error.code, "timeout");
    let all: Vec<Process> = seen.into_iter().flatten().collect();
    must_end(&executor, &all).await;
}

/// The real interpreter (not a launcher script, which would count against the limit).
fn python() -> PathBuf {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("these tests need python3 on PATH");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn python_worker(body: &str, memory_mb: Option<u64>) -> ProcessSpec {
    let script = format!(
        "import json, sys\nfor line in sys.stdin:\n    {body}\n    print(json.dumps({{'output': {{}}}}), flush=True)\n"
    );
    ProcessSpec {
        program: python(),
        args: vec!["-c".into(), script],
        env: vec![],
        memory_mb,
        timeout_ms: 60_000,
        idle_timeout_ms: 60_000,
    }
}

#[tokio::test]
async fn a_worker_over_its_memory_limit_fails_with_memory_limit() {
    let executor = Executor::new();
    let cancel = CancellationToken::new();
    let greedy = python_worker("data = bytearray(4 << 30)", Some(256));
    let finished = executor.run("greedy", &greedy, &request(), &cancel).await;
    let error = finished.reply.expect_err("4 GiB do not fit in 256 MiB");
    assert_eq!(error.code, "memory_limit", "{error:?}");
    assert!(error.message.contains("memory_mb = 256"), "{error:?}");

    // A crash that is not about memory is still a crash, limit or not.
    let crashing = python_worker("sys.exit(3)", Some(256));
    let finished = executor
        .run("crashing", &crashing, &request(), &cancel)
        .await;
    assert_eq!(finished.reply.expect_err("it exits").code, "worker_crashed");

    // And within its limit the same worker is fine.
    let modest = python_worker("data = bytearray(1 << 20)", Some(256));
    let finished = executor.run("modest", &modest, &request(), &cancel).await;
    assert_eq!(finished.reply, Ok(json!({})));
    executor.shutdown().await;
}

/// A worker that, for each request, leaves one process both orphaned (its parent exits at
/// once, so it hangs from the test process, the subreaper) and in a session of its own: no
/// parentage and no process group lead to it from the worker, only its tag. Writes its pid
/// to `$PIDS_FILE`.
const LEAVES_A_DETACHED_ORPHAN: &str = r#"
while read -r line; do
  sh -c 'setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo $!' >> "$PIDS_FILE"
  echo '{"output": {}}'
done
"#;

#[tokio::test]
async fn an_orphan_in_a_session_of_its_own_ends_when_its_worker_has_ended() {
    let dir = tempfile::tempdir().unwrap();
    let pids_file = dir.path().join("pids");
    let mut spec = shell_worker(
        LEAVES_A_DETACHED_ORPHAN,
        &[("PIDS_FILE", pids_file.to_str().unwrap())],
    );
    spec.idle_timeout_ms = 0;
    let executor = Executor::new();
    let finished = executor
        .run("pool", &spec, &request(), &CancellationToken::new())
        .await;
    assert_eq!(finished.reply, Ok(json!({})), "log: {:?}", finished.log);
    let deadline = Instant::now() + WAIT_DEADLINE;
    let pid: i32 = loop {
        let text = std::fs::read_to_string(&pids_file).unwrap_or_default();
        if let Some(pid) = text.lines().next().and_then(|l| l.trim().parse().ok()) {
            break pid;
        }
        assert!(Instant::now() < deadline, "the worker wrote no pid");
        tokio::time::sleep(POLL_PAUSE).await;
    };
    let orphan = process(pid);
    // Re-parented to this process and in a session of its own: only the sweep can find it.
    let me = std::process::id().to_string();
    while !(stat_fields(pid).is_some_and(|f| f[1] == me) && session(pid) == Some(pid)) {
        assert!(
            Instant::now() < deadline,
            "the orphan never hung from this process in a session of its own"
        );
        tokio::time::sleep(POLL_PAUSE).await;
    }
    must_end(&executor, &[orphan]).await;
}
