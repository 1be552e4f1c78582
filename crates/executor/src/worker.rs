//! One worker process and the node's side of the protocol with it.

use crate::tree::{self, Tag};
use crate::usage::Probe;
use crate::{ProcessSpec, LOG_BYTES_MAX};
use futures::StreamExt;
use model::protocol::{Reply, REPLY_BYTES_MAX};
use model::{ErrorCode, JobError};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tokio_util::sync::CancellationToken;

/// How much of a worker's stderr one read takes.
const STDERR_READ_BYTES: usize = 16 * 1024;
/// How long a worker asked to stop (stdin closed) gets before it is killed.
const STOP_GRACE: Duration = Duration::from_millis(500);
/// The end of a crashed worker's log searched for signs of an allocation failure.
const OOM_LOG_TAIL_BYTES: usize = 16 * 1024;
/// What runtimes print when an allocation fails: Rust's default handler (then it aborts),
/// Python's `MemoryError`, C++'s `std::bad_alloc`, `strerror(ENOMEM)` (C, shells), Go and
/// Node.js (`... out of memory`).
const OOM_SIGNS: [&str; 5] = [
    "memory allocation of ",
    "MemoryError",
    "std::bad_alloc",
    "Cannot allocate memory",
    "out of memory",
];

#[derive(Debug)]
pub(crate) struct Worker {
    child: Child,
    /// Dropped once the worker is reaped (see [`crate::tree`]).
    tag: Tag,
    /// Its function's `memory_mb`, if set (an allocation failure is then `memory_limit`).
    memory_mb: Option<u64>,
    stdin: ChildStdin,
    stdout: FramedRead<ChildStdout, LinesCodec>,
    stderr: ChildStderr,
    log: Vec<u8>,
    log_dropped_bytes: u64,
    /// Where stderr is read into, allocated once: a fresh 16 KiB buffer at every attempt was
    /// the top allocation of a fan-out of no-op jobs.
    stderr_buf: Box<[u8]>,
    pub(crate) last_used: Instant,
    /// Its `/proc` files, opened once, for what each attempt costs (see [`crate::usage`]).
    probe: Option<Probe>,
}

/// Keeps `bytes` of a worker's stderr in `log`, up to [`LOG_BYTES_MAX`]; counts the rest.
fn keep_log(log: &mut Vec<u8>, dropped_bytes: &mut u64, bytes: &[u8]) {
    let room = LOG_BYTES_MAX.saturating_sub(log.len());
    let kept = bytes.len().min(room);
    log.extend_from_slice(&bytes[..kept]);
    *dropped_bytes += (bytes.len() - kept) as u64;
}

/// How waiting for a reply ended.
pub(crate) enum Exchange {
    /// The worker answered; it can be reused.
    Reply(Result<serde_json::Value, JobError>),
    /// The worker must be killed: it crashed, hung, was cancelled or broke the protocol.
    Broken(JobError),
}

impl Worker {
    /// Its `/proc` files, while it has not been reaped (a reaped worker's pid may be
    /// another process's by now; files opened before stay the old process's, but read
    /// nothing).
    pub(crate) fn probe(&mut self) -> Option<&mut Probe> {
        self.child.id()?;
        self.probe.as_mut()
    }

    pub(crate) fn spawn(spec: &ProcessSpec) -> std::io::Result<Worker> {
        let mut command = Command::new(&spec.program);
        command
            .args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        let memory_bytes = spec.memory_mb.map(|mb| mb.saturating_mul(1024 * 1024));
        // SAFETY: the closure runs in the child between fork and exec and calls only
        // async-signal-safe functions (prctl, setrlimit); it allocates nothing.
        unsafe {
            command.pre_exec(move || {
                // Die with the node: a node killed by SIGKILL must not leave workers behind.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(bytes) = memory_bytes {
                    let limit = libc::rlimit {
                        rlim_cur: bytes,
                        rlim_max: bytes,
                    };
                    if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let (mut child, tag) = tree::spawn(&mut command)?;
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let probe = child.id().and_then(Probe::open);
        Ok(Worker {
            child,
            tag,
            memory_mb: spec.memory_mb,
            stdin,
            stdout: FramedRead::new(stdout, LinesCodec::new_with_max_length(REPLY_BYTES_MAX)),
            stderr,
            log: Vec::new(),
            log_dropped_bytes: 0,
            stderr_buf: vec![0u8; STDERR_READ_BYTES].into_boxed_slice(),
            last_used: Instant::now(),
            probe,
        })
    }

    /// Sends one request: `line` ends with its newline, so that it goes in one write.
    pub(crate) async fn send(&mut self, line: &str) -> std::io::Result<()> {
        self.log.clear();
        self.log_dropped_bytes = 0;
        self.stdin.write_all(line.as_bytes()).await?;
        self.stdin.flush().await
    }

    /// Waits for the reply, reading stderr meanwhile (so a chatty worker never blocks on a
    /// full pipe). Stderr is polled first, so what a worker logs before replying is kept.
    pub(crate) async fn await_reply(
        &mut self,
        deadline: tokio::time::Instant,
        cancel: &CancellationToken,
    ) -> Exchange {
        let Worker {
            stdout,
            stderr,
            stderr_buf,
            log,
            log_dropped_bytes,
            ..
        } = self;
        let mut stderr_open = true;
        let line = loop {
            tokio::select! {
                biased;
                read = stderr.read(stderr_buf), if stderr_open => match read {
                    Ok(0) | Err(_) => stderr_open = false,
                    Ok(n) => keep_log(log, log_dropped_bytes, &stderr_buf[..n]),
                },
                line = stdout.next() => break line,
                () = cancel.cancelled() => {
                    return Exchange::Broken(JobError::new(ErrorCode::Cancelled, "the job was cancelled"))
                }
                () = tokio::time::sleep_until(deadline) => {
                    return Exchange::Broken(JobError::new(ErrorCode::Timeout, "the attempt ran past its time-out"))
                }
            }
        };
        self.reply(line).await
    }

    async fn reply(&mut self, line: Option<Result<String, LinesCodecError>>) -> Exchange {
        match line {
            Some(Ok(line)) => match serde_json::from_str::<Reply>(&line) {
                Ok(Reply {
                    output: Some(output),
                    error: None,
                }) => Exchange::Reply(Ok(output)),
                Ok(Reply {
                    output: None,
                    error: Some(error),
                }) => Exchange::Reply(Err(error)),
                _ => {
                    let shown: String = line.chars().take(200).collect();
                    Exchange::Broken(JobError::new(
                        ErrorCode::WorkerCrashed,
                        format!("not a protocol reply: {shown:?}"),
                    ))
                }
            },
            Some(Err(LinesCodecError::MaxLineLengthExceeded)) => Exchange::Broken(JobError::new(
                ErrorCode::WorkerCrashed,
                format!("reply line over {REPLY_BYTES_MAX} bytes; write big results to files"),
            )),
            Some(Err(LinesCodecError::Io(e))) => {
                Exchange::Broken(JobError::new(ErrorCode::WorkerCrashed, e.to_string()))
            }
            None => {
                // Collect what the worker said on its way out, and how it ended.
                let mut rest = Vec::new();
                let mut tail = (&mut self.stderr).take(LOG_BYTES_MAX as u64);
                let _ =
                    tokio::time::timeout(Duration::from_millis(200), tail.read_to_end(&mut rest))
                        .await;
                keep_log(&mut self.log, &mut self.log_dropped_bytes, &rest);
                let status =
                    tokio::time::timeout(Duration::from_millis(200), self.child.wait()).await;
                let how = match status {
                    Ok(Ok(status)) => format!("worker exited ({status}) without replying"),
                    _ => "worker closed its stdout without replying".to_string(),
                };
                match self.memory_mb {
                    Some(mb) if ran_out_of_memory(&self.log) => Exchange::Broken(JobError::new(
                        ErrorCode::MemoryLimit,
                        format!("{how}: out of memory (memory_mb = {mb})"),
                    )),
                    _ => Exchange::Broken(JobError::new(ErrorCode::WorkerCrashed, how)),
                }
            }
        }
    }

    /// The attempt's log, with a note if it was cut.
    pub(crate) fn take_log(&mut self) -> Vec<u8> {
        let mut log = std::mem::take(&mut self.log);
        if self.log_dropped_bytes > 0 {
            log.extend_from_slice(
                format!(
                    "\n[chorus: {} more bytes of log dropped]\n",
                    self.log_dropped_bytes
                )
                .as_bytes(),
            );
        }
        log
    }

    /// Kills the worker, its process group and every process below it, and reaps it.
    pub(crate) async fn kill(self) {
        let Worker { mut child, tag, .. } = self;
        if let Some(pid) = child.id() {
            let _ = tokio::task::spawn_blocking(move || tree::kill_tree(pid)).await;
        }
        let _ = child.wait().await;
        drop(tag);
    }

    /// Asks the worker to exit (end of stdin), kills it if it lingers, then kills what it
    /// leaves behind (found before it was asked, while it still hung from the worker).
    pub(crate) async fn stop(self) {
        let Worker {
            mut child,
            stdin,
            tag,
            ..
        } = self;
        let Some(pid) = child.id() else {
            return;
        };
        let below = tokio::task::spawn_blocking(move || tree::members(pid))
            .await
            .unwrap_or_default();
        drop(stdin);
        if tokio::time::timeout(STOP_GRACE, child.wait())
            .await
            .is_err()
        {
            let _ = tokio::task::spawn_blocking(move || tree::kill_tree(pid)).await;
            let _ = child.wait().await;
        }
        let _ = tokio::task::spawn_blocking(move || tree::kill_all(&below)).await;
        drop(tag);
    }
}

/// Whether a worker's log shows that an allocation failed. Under `RLIMIT_AS` that is how
/// running out of memory looks: `mmap` fails and the runtime says so on its way out. A
/// program that dies without saying (a C program that dereferences a failed `malloc`) is
/// reported as crashed: its exit alone does not tell a limit from a bug.
pub(crate) fn ran_out_of_memory(log: &[u8]) -> bool {
    let tail = &log[log.len().saturating_sub(OOM_LOG_TAIL_BYTES)..];
    let tail = String::from_utf8_lossy(tail);
    OOM_SIGNS.iter().any(|sign| tail.contains(sign))
}

#[cfg(test)]
mod tests {
    use super::ran_out_of_memory;

    #[test]
    fn allocation_failures_of_common_runtimes_are_recognised() {
        for log in [
            "memory allocation of 1073741824 bytes failed\n",
            "Traceback (most recent call last):\n  File \"<string>\", line 3\nMemoryError\n",
            "terminate called after throwing an instance of 'std::bad_alloc'\n",
            "fatal error: runtime: out of memory\n",
            "sh: fork: Cannot allocate memory\n",
        ] {
            assert!(ran_out_of_memory(log.as_bytes()), "{log:?}");
        }
        assert!(!ran_out_of_memory(
            b"thread 'main' panicked at src/main.rs:3:5\n"
        ));
        // Only the end of a long log counts: an old mention is not why it died.
        let mut log = b"MemoryError (handled)\n".to_vec();
        log.extend(std::iter::repeat_n(b'.', 64 * 1024));
        assert!(!ran_out_of_memory(&log));
    }
}
