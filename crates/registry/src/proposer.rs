//! Group commit. Callers hand commands to one proposer task; it keeps [`IN_FLIGHT_MAX`] log
//! write in flight and packs whatever arrives meanwhile into the next [`Command::Batch`]
//! entry. An idle registry writes a lone command at once (lowest latency); a busy one pays one
//! fsync for thousands of commands. More writes in flight would not help: the log store
//! commits them one after the other, each with its own fsync.

use crate::{RaftInstance, RegistryError};
use futures::stream::{FuturesUnordered, StreamExt};
use model::{Command, Response};
use openraft::error::{ClientWriteError, RaftError};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Commands waiting for the proposer; callers wait (back-pressure) beyond this.
const QUEUE_LEN_MAX: usize = 16_384;
/// Commands packed into one log entry at most.
const BATCH_COMMANDS_MAX: usize = 4_096;
/// Log writes in flight at once.
const IN_FLIGHT_MAX: usize = 1;
/// Longest the proposer waits for openraft to answer one write. openraft answers a write once
/// it is applied, or with an error when this node stops leading; with one write in flight, a
/// write it never answered would hold every later write of the node for good, so the wait is
/// bounded: past it the write's callers are told it may still commit, and the proposer moves
/// on. (Added while chasing a cluster-wide freeze the chaos suite's long run shows; the freeze
/// outlived it, so it was not that freeze's cause, or not its only one.) Longer than the
/// callers' own wait (5 s), so a write that commits late after an election is still answered.
const CLIENT_WRITE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

struct Proposal {
    command: Command,
    reply: oneshot::Sender<Result<Response, RegistryError>>,
}

#[derive(Clone, Debug)]
pub(crate) struct Handle {
    tx: mpsc::Sender<Proposal>,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Handle {
    pub(crate) fn spawn(raft: RaftInstance) -> Handle {
        let (tx, rx) = mpsc::channel(QUEUE_LEN_MAX);
        let task = tokio::spawn(run(raft, rx));
        Handle {
            tx,
            task: Arc::new(Mutex::new(Some(task))),
        }
    }

    pub(crate) async fn propose(&self, command: Command) -> Result<Response, RegistryError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Proposal { command, reply })
            .await
            .map_err(|_| RegistryError::Unavailable("the registry is shutting down".into()))?;
        rx.await
            .map_err(|_| RegistryError::Unavailable("the registry is shutting down".into()))?
    }

    pub(crate) async fn stop(&self) {
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }
}

async fn run(raft: RaftInstance, mut rx: mpsc::Receiver<Proposal>) {
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            next = rx.recv(), if in_flight.len() < IN_FLIGHT_MAX => {
                let Some(first) = next else { break };
                let mut batch = vec![first];
                while batch.len() < BATCH_COMMANDS_MAX {
                    match rx.try_recv() {
                        Ok(p) => batch.push(p),
                        Err(_) => break,
                    }
                }
                in_flight.push(write(raft.clone(), batch));
            }
        }
    }
    while in_flight.next().await.is_some() {}
}

/// One `client_write`, bounded by [`CLIENT_WRITE_WAIT`].
async fn client_write(raft: &RaftInstance, command: Command) -> Result<Response, RegistryError> {
    match tokio::time::timeout(CLIENT_WRITE_WAIT, raft.client_write(command)).await {
        Ok(answer) => answer.map(|r| r.data).map_err(map_err),
        Err(_) => Err(RegistryError::Unavailable(format!(
            "the log did not answer the write within {} s (it may still commit)",
            CLIENT_WRITE_WAIT.as_secs()
        ))),
    }
}

async fn write(raft: RaftInstance, mut batch: Vec<Proposal>) {
    if batch.len() == 1 {
        let p = batch.pop().expect("one proposal");
        let result = client_write(&raft, p.command).await;
        let _ = p.reply.send(result);
        return;
    }
    let (commands, replies): (Vec<Command>, Vec<_>) =
        batch.into_iter().map(|p| (p.command, p.reply)).unzip();
    match client_write(&raft, Command::Batch(commands)).await {
        Ok(Response::Batch(responses)) => {
            assert_eq!(
                responses.len(),
                replies.len(),
                "a batch answers each of its commands"
            );
            for (reply, response) in replies.into_iter().zip(responses) {
                let _ = reply.send(Ok(response));
            }
        }
        Ok(other) => unreachable!("a batch command answered {other:?}"),
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(clone_err(&e)));
            }
        }
    }
}

fn map_err(
    e: RaftError<model::NodeId, ClientWriteError<model::NodeId, openraft::BasicNode>>,
) -> RegistryError {
    match e.forward_to_leader() {
        Some(fwd) => RegistryError::NotLeader {
            leader: fwd
                .leader_id
                .zip(fwd.leader_node.as_ref().map(|n| n.addr.clone())),
        },
        None => RegistryError::Unavailable(e.to_string()),
    }
}

fn clone_err(e: &RegistryError) -> RegistryError {
    match e {
        RegistryError::NotLeader { leader } => RegistryError::NotLeader {
            leader: leader.clone(),
        },
        RegistryError::Unavailable(m) => RegistryError::Unavailable(m.clone()),
        RegistryError::NotDelivered(m) => RegistryError::NotDelivered(m.clone()),
        RegistryError::Storage(m) => RegistryError::Storage(m.clone()),
        RegistryError::StorageFull(m) => RegistryError::StorageFull(m.clone()),
    }
}
