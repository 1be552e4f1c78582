//! Signed requests as the node serves them: what a request proposes carries its key and
//! nonce into the log (see `model::Command::Signed`, which says why), and the keys' last use
//! is recorded, coarsely, through the log.
//!
//! The API runs each signed request that may change the state inside [`serve`]; every
//! command [`Node::propose`] sends while it runs is wrapped by [`wrap`]. Commands of the
//! node's own tasks are not.

use crate::{now_ms, Node};
use model::signature::CLOCK_SKEW_MAX_S;
use model::{Command, KeyId, KEY_USE_RESOLUTION_MS};
use rand::RngCore;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

/// How often a node proposes the key uses it saw.
const KEY_USE_FLUSH_INTERVAL: Duration = Duration::from_secs(5);
/// Distinct keys a node remembers uses of between two flushes; past it, new keys' uses wait
/// for the next request after the flush.
const KEY_USES_MAX: usize = 10_000;

/// The signed request being served.
#[derive(Clone, Debug)]
pub struct SignedRequest {
    key: KeyId,
    nonce: String,
    /// Chosen here: the commands of this request share it, a replay has another.
    request: u64,
    expires_ms: u64,
}

impl SignedRequest {
    /// A request signed by `key` with `nonce` at `timestamp_s`. Its nonce stays taken until
    /// no node could accept the request any more: the skew window on either side of its
    /// time, and as much again for nodes whose clocks differ.
    pub fn new(key: KeyId, nonce: &str, timestamp_s: u64) -> SignedRequest {
        SignedRequest {
            key,
            nonce: nonce.to_string(),
            request: rand::rng().next_u64(),
            expires_ms: timestamp_s.saturating_add(2 * CLOCK_SKEW_MAX_S) * 1000,
        }
    }
}

tokio::task_local! {
    static REQUEST: SignedRequest;
}

/// Serves `work` as `request`: what it proposes is applied on behalf of the request's key,
/// once per nonce in the whole cluster.
pub async fn serve<F: Future>(request: SignedRequest, work: F) -> F::Output {
    REQUEST.scope(request, work).await
}

/// `command` as the request being served proposes it; unchanged outside a request.
pub(crate) fn wrap(command: Command) -> Command {
    // A continuation is the cluster's decision, not the request's: only what it follows is
    // signed, so the jobs it starts belong to the run, as the driver's would.
    if let Command::Continued { command, then } = command {
        return Command::Continued {
            command: Box::new(wrap(*command)),
            then,
        };
    }
    match REQUEST.try_with(SignedRequest::clone) {
        Ok(r) => Command::Signed {
            key: r.key,
            nonce: r.nonce,
            request: r.request,
            expires_ms: r.expires_ms,
            command: Box::new(command),
        },
        Err(_) => command,
    }
}

/// Uses of keys seen since the last flush: the latest per key.
#[derive(Debug, Default)]
pub(crate) struct KeyUses(Mutex<HashMap<KeyId, u64>>);

impl Node {
    /// Notes that `key` signed a request now (see [`flush_key_uses`]).
    pub fn key_used(&self, key: &KeyId) {
        let mut uses = self
            .inner
            .key_uses
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if uses.len() < KEY_USES_MAX || uses.contains_key(key) {
            uses.insert(key.clone(), now_ms());
        }
    }
}

/// Proposes, every [`KEY_USE_FLUSH_INTERVAL`], the uses of keys whose recorded last use is
/// older than [`KEY_USE_RESOLUTION_MS`]. Owned by the node; stops on shutdown.
pub(crate) async fn flush_key_uses(node: Node) {
    let mut tick = tokio::time::interval(KEY_USE_FLUSH_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = node.inner.shutdown.cancelled() => return,
        }
        let seen = std::mem::take(
            &mut *node
                .inner
                .key_uses
                .0
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let uses: Vec<(KeyId, u64)> = node.read(|s| {
            seen.into_iter()
                .filter(|(id, at)| {
                    s.key(id).is_some_and(|k| {
                        k.last_used_ms
                            .is_none_or(|last| last + KEY_USE_RESOLUTION_MS <= *at)
                    })
                })
                .collect()
        });
        if uses.is_empty() {
            continue;
        }
        if let Err(e) = node.propose(Command::KeysUsed { uses }).await {
            tracing::debug!(error = %e, "could not record key uses");
        }
    }
}
