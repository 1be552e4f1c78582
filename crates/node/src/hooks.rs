//! URL hooks of workflows: the leader POSTs each fired hook's event to its URL, so another
//! system hears of a step's start or end, or a run's end, without polling.
//!
//! # Delivery, step by step
//!
//! 1. Applying a run's `FireHook` with a URL puts the hook in the replicated queue
//!    (`State::pending_hooks`), numbered in log order. Nothing waits for it: the run goes on.
//! 2. This task (on the leader only) wakes on every applied entry and every [`TICK`], takes
//!    the oldest [`HOOKS_PER_PASS_MAX`] pending hooks and groups them by URL. Each URL gets
//!    its hooks in order, one post at a time (a hook is not posted before the ones fired
//!    before it to the same URL are taken or given up); different URLs are posted to at once.
//! 3. A post is the event as JSON, signed as the alert webhook's posts are (header
//!    `x-chorus-webhook-signature`, with the secret derived from the cluster secret and the
//!    hook's URL, which `workflows deploy` shows), with the hook's number in
//!    `x-chorus-hook-id`. A 2xx answer within [`POST_TIMEOUT`] is taken.
//! 4. A failed post is tried again after a back-off that doubles from [`RETRY_FIRST`] to
//!    [`RETRY_LAST`]; after [`TRIES_MAX`] tries the hook is given up.
//! 5. What was taken and what was given up is logged in one `HooksDone` entry; a hook given
//!    up becomes a `hook_failed` event (an alert on the dashboard and the alert webhook).
//!
//! Delivery is at least once: a leader that dies between a receiver's answer and the commit
//! of `HooksDone` leaves the hook pending, and the next leader posts it again (with the same
//! `x-chorus-hook-id`, so a receiver can drop repeats). Tries are counted by the leader in
//! memory; a new leader starts counting from nothing.

use crate::{now_ms, Node};
use model::signature::{webhook_signature, HEADER_WEBHOOK_SIGNATURE};
use model::{Command, FailedHook, PendingHook};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// The header that carries a hook's number (the same on every try).
pub const HEADER_HOOK_ID: &str = "x-chorus-hook-id";
/// Pending hooks looked at in one pass at most (the oldest).
const HOOKS_PER_PASS_MAX: usize = 256;
/// URLs posted to at once at most; the others wait for the next pass.
const URLS_PER_PASS_MAX: usize = 32;
/// How often the leader looks even if nothing was applied (for back-offs that ran out).
pub(crate) const TICK: Duration = Duration::from_millis(250);
/// A post that takes longer has failed.
pub(crate) const POST_TIMEOUT: Duration = Duration::from_secs(5);
/// Back-off after a failed post: doubles from the first to the last.
pub(crate) const RETRY_FIRST: Duration = Duration::from_millis(500);
pub(crate) const RETRY_LAST: Duration = Duration::from_secs(30);
/// Tries of one hook before it is given up: with the back-off above, a receiver that does
/// not take a hook for about 30 s loses it (and an alert says so).
const TRIES_MAX: u32 = 7;

/// A hook's failed tries so far, on this leader.
#[derive(Clone, Copy, Debug)]
struct Tries {
    count: u32,
    next_at_ms: u64,
}

/// What one URL's posts in a pass came to.
#[derive(Debug, Default)]
struct Outcome {
    delivered: Vec<u64>,
    /// The hook that failed this pass (at most one: the URL's later hooks wait for it).
    failed: Option<(u64, String)>,
}

pub(crate) async fn deliver(node: Node) {
    let client = match reqwest::Client::builder().timeout(POST_TIMEOUT).build() {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "hooks: no HTTP client; URL hooks are not posted");
            return;
        }
    };
    let mut applied = node.inner.registry.applied();
    let mut tries: HashMap<u64, Tries> = HashMap::new();
    while let Some(leading) = node.next_drain_pass(&mut applied, TICK).await {
        if !leading {
            tries.clear();
            continue;
        }
        let pending: Vec<PendingHook> = node.read(|s| {
            s.pending_hooks()
                .take(HOOKS_PER_PASS_MAX)
                .cloned()
                .collect()
        });
        if pending.is_empty() {
            tries.clear();
            continue;
        }
        let now = now_ms();
        let mut by_url: BTreeMap<String, Vec<PendingHook>> = BTreeMap::new();
        for hook in pending {
            by_url.entry(hook.url.clone()).or_default().push(hook);
        }
        // A URL whose oldest hook waits out its back-off waits as a whole: order holds.
        let due: Vec<Vec<PendingHook>> = by_url
            .into_values()
            .filter(|hooks| tries.get(&hooks[0].seq).is_none_or(|t| t.next_at_ms <= now))
            .take(URLS_PER_PASS_MAX)
            .collect();
        if due.is_empty() {
            continue;
        }
        let outcomes = futures::future::join_all(
            due.into_iter()
                .map(|hooks| post_in_order(&node, &client, hooks)),
        )
        .await;
        let mut delivered = Vec::new();
        let mut failed = Vec::new();
        for outcome in outcomes {
            for seq in &outcome.delivered {
                tries.remove(seq);
            }
            delivered.extend(outcome.delivered);
            let Some((seq, error)) = outcome.failed else {
                continue;
            };
            let t = tries.entry(seq).or_insert(Tries {
                count: 0,
                next_at_ms: 0,
            });
            t.count += 1;
            if t.count >= TRIES_MAX {
                tries.remove(&seq);
                failed.push(FailedHook { seq, error });
            } else {
                t.next_at_ms = now_ms() + back_off(t.count);
            }
        }
        if delivered.is_empty() && failed.is_empty() {
            continue;
        }
        let done = Command::HooksDone {
            now_ms: now_ms(),
            delivered,
            failed,
        };
        if let Err(e) = node.propose(done).await {
            // The hooks stay pending and are posted again: at least once.
            tracing::warn!(error = %e, "hooks: could not record what was posted");
        }
    }
}

/// The wait after the `tries`-th failed try in a row (from 1), in milliseconds: doubles from
/// [`RETRY_FIRST`] to [`RETRY_LAST`].
pub(crate) fn back_off(tries: u32) -> u64 {
    let wait = RETRY_FIRST.saturating_mul(1 << tries.saturating_sub(1).min(16));
    wait.min(RETRY_LAST).as_millis() as u64
}

/// Posts one URL's hooks oldest first, stopping at the first that fails.
async fn post_in_order(node: &Node, client: &reqwest::Client, hooks: Vec<PendingHook>) -> Outcome {
    let mut outcome = Outcome::default();
    for hook in hooks {
        match post(node, client, &hook).await {
            Ok(()) => outcome.delivered.push(hook.seq),
            Err(error) => {
                outcome.failed = Some((hook.seq, error));
                break;
            }
        }
    }
    outcome
}

async fn post(node: &Node, client: &reqwest::Client, hook: &PendingHook) -> Result<(), String> {
    let body = serde_json::to_vec(&hook.event).map_err(|e| format!("event not encodable: {e}"))?;
    let secret = crate::webhook::secret(node, &hook.url);
    let signed = webhook_signature(secret.as_bytes(), now_ms() / 1000, &body);
    let posted = client
        .post(hook.url.as_str())
        .header("content-type", "application/json")
        .header(HEADER_WEBHOOK_SIGNATURE, signed)
        .header(HEADER_HOOK_ID, hook.seq.to_string())
        .body(body)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status);
    let result = if posted.is_ok() { "ok" } else { "failed" };
    node.inner.metrics.hook_post(result);
    posted.map(|_| ()).map_err(|e| {
        // Without the URL: hook URLs often carry a token in their path.
        let e = e.without_url();
        tracing::warn!(run = hook.run, hook = hook.seq, error = %e, "hooks: post failed");
        e.to_string()
    })
}
