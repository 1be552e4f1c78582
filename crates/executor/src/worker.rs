//! One worker process and the node's side of the protocol with it.

use crate::{failure, ProcessSpec, LOG_BYTES_MAX};
use futures::StreamExt;
use model::protocol::{Reply, REPLY_BYTES_MAX};
use model::JobError;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tokio_util::sync::CancellationToken;

/// How long a worker asked to stop (stdin closed) gets before it is killed.
const STOP_GRACE: Duration = Duration::from_millis(500);

#[derive(Debug)]
pub(crate) struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: FramedRead<ChildStdout, LinesCodec>,
    stderr: ChildStderr,
    log: Vec<u8>,
    log_dropped_bytes: u64,
    pub(crate) last_used: Instant,
}

/// How waiting for a reply ended.
pub(crate) enum Exchange {
    /// The worker answered; it can be reused.
    Reply(Result<serde_json::Value, JobError>),
    /// The worker must be killed: it crashed, hung, was cancelled or broke the protocol.
    Broken(JobError),
}

impl Worker {
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
        let mut child = command.spawn()?;
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        Ok(Worker {
            child,
            stdin,
            stdout: FramedRead::new(stdout, LinesCodec::new_with_max_length(REPLY_BYTES_MAX)),
            stderr,
            log: Vec::new(),
            log_dropped_bytes: 0,
            last_used: Instant::now(),
        })
    }

    pub(crate) async fn send(&mut self, line: &str) -> std::io::Result<()> {
        self.log.clear();
        self.log_dropped_bytes = 0;
        self.stdin.write_all(line.as_bytes()).await?;
        self.stdin.write_all(b"\n").await?;
        self.stdin.flush().await
    }

    /// Waits for the reply, reading stderr meanwhile (so a chatty worker never blocks on a
    /// full pipe). Stderr is polled first, so what a worker logs before replying is kept.
    pub(crate) async fn await_reply(
        &mut self,
        deadline: tokio::time::Instant,
        cancel: &CancellationToken,
    ) -> Exchange {
        let mut buf = vec![0u8; 16 * 1024];
        let mut stderr_open = true;
        loop {
            tokio::select! {
                biased;
                read = self.stderr.read(&mut buf), if stderr_open => match read {
                    Ok(0) | Err(_) => stderr_open = false,
                    Ok(n) => self.keep_log(&buf[..n]),
                },
                line = self.stdout.next() => return self.reply(line).await,
                () = cancel.cancelled() => return Exchange::Broken(failure("cancelled", "the job was cancelled")),
                () = tokio::time::sleep_until(deadline) => {
                    return Exchange::Broken(failure("timeout", "the attempt ran past its time-out"))
                }
            }
        }
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
                    Exchange::Broken(failure(
                        "worker_crashed",
                        format!("not a protocol reply: {shown:?}"),
                    ))
                }
            },
            Some(Err(LinesCodecError::MaxLineLengthExceeded)) => Exchange::Broken(failure(
                "worker_crashed",
                format!("reply line over {REPLY_BYTES_MAX} bytes; write big results to files"),
            )),
            Some(Err(LinesCodecError::Io(e))) => {
                Exchange::Broken(failure("worker_crashed", e.to_string()))
            }
            None => {
                // Collect what the worker said on its way out, and how it ended.
                let mut rest = Vec::new();
                let mut tail = (&mut self.stderr).take(LOG_BYTES_MAX as u64);
                let _ =
                    tokio::time::timeout(Duration::from_millis(200), tail.read_to_end(&mut rest))
                        .await;
                self.keep_log(&rest);
                let status =
                    tokio::time::timeout(Duration::from_millis(200), self.child.wait()).await;
                let how = match status {
                    Ok(Ok(status)) => format!("worker exited ({status}) without replying"),
                    _ => "worker closed its stdout without replying".to_string(),
                };
                Exchange::Broken(failure("worker_crashed", how))
            }
        }
    }

    fn keep_log(&mut self, bytes: &[u8]) {
        let room = LOG_BYTES_MAX.saturating_sub(self.log.len());
        let kept = bytes.len().min(room);
        self.log.extend_from_slice(&bytes[..kept]);
        self.log_dropped_bytes += (bytes.len() - kept) as u64;
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

    /// Kills the worker's whole process group and reaps it.
    pub(crate) async fn kill(mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) with a negative pid signals the process group we created.
            unsafe {
                libc::kill(-(pid as i32), libc::SIGKILL);
            }
        }
        let _ = self.child.wait().await;
    }

    /// Asks the worker to exit (end of stdin), then kills it if it lingers.
    pub(crate) async fn stop(self) {
        let Worker {
            mut child, stdin, ..
        } = self;
        drop(stdin);
        if tokio::time::timeout(STOP_GRACE, child.wait())
            .await
            .is_err()
        {
            if let Some(pid) = child.id() {
                // SAFETY: as in `kill`.
                unsafe {
                    libc::kill(-(pid as i32), libc::SIGKILL);
                }
            }
            let _ = child.wait().await;
        }
    }
}
