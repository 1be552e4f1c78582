//! Alert webhook: the leader POSTs cluster events (see [`model::Event`]) to the URL in the
//! config key `alerts.webhook` (`chorus config set alerts.webhook https://...`), so that
//! alerts reach a chat room, a pager or an incident tool without anyone watching the
//! dashboard.
//!
//! Body: `{"events": [Event, ...]}`, oldest first, at most [`EVENTS_PER_POST_MAX`]; every
//! event carries `seq` (cluster-wide, increasing), `kind`, `alert` (act on it) or not (an
//! all-clear or a notice), `node` and a `message`. Delivery is at least once: after a 2xx
//! answer the leader records how far it got (`EventsDelivered`, through the log), so a new
//! leader carries on from there, and may repeat the last post if the old one died between
//! the answer and the commit (receivers can drop repeats by `seq`). A failed post is retried
//! with back-off; `chorus_webhook_posts_total{result}` counts posts. Setting the URL starts
//! from the events after that moment, not from the whole history; an empty value switches
//! the webhook off.
//!
//! Every post is signed as Stripe signs its webhooks: the header `x-chorus-webhook-signature:
//! t=TIMESTAMP,v1=HEX` carries HMAC-SHA256 over `TIMESTAMP.BODY` with a secret derived from
//! the cluster secret and the URL (`model::signature::webhook_secret`), which `chorus config
//! set alerts.webhook URL` shows once. A receiver recomputes it and refuses an old timestamp,
//! so a forged or replayed post is told apart.

use crate::{now_ms, Node};
use model::signature::{webhook_signature, HEADER_WEBHOOK_SIGNATURE};
use model::Command;
use std::time::Duration;

/// Events in one post at most.
const EVENTS_PER_POST_MAX: usize = 100;
/// How often the leader looks for new events.
const TICK: Duration = Duration::from_millis(500);
/// A post that takes longer has failed.
const POST_TIMEOUT: Duration = Duration::from_secs(5);
/// Back-off after a failed post: doubles from the first to the last.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_LAST: Duration = Duration::from_secs(60);

pub(crate) async fn deliver(node: Node) {
    let client = match reqwest::Client::builder().timeout(POST_TIMEOUT).build() {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "alert webhook: no HTTP client; alerts are not posted");
            return;
        }
    };
    let mut retry = RETRY_FIRST;
    loop {
        tokio::select! {
            () = node.inner.shutdown.cancelled() => return,
            () = tokio::time::sleep(TICK) => {}
        }
        if !node.inner.registry.is_leader() {
            continue;
        }
        let (url, events) = node.read(|s| {
            let url = s.config().settings().webhook.clone();
            let events: Vec<model::Event> = s
                .events_after(s.events_delivered())
                .take(EVENTS_PER_POST_MAX)
                .cloned()
                .collect();
            (url, events)
        });
        let (Some(url), Some(last)) = (url, events.last().map(|e| e.seq)) else {
            continue;
        };
        let body = match serde_json::to_vec(&serde_json::json!({ "events": events })) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(error = %e, "alert webhook: events not encodable");
                continue;
            }
        };
        let signed = webhook_signature(
            secret(&node, url.as_str()).as_bytes(),
            now_ms() / 1000,
            &body,
        );
        let posted = client
            .post(url.clone())
            .header("content-type", "application/json")
            .header(HEADER_WEBHOOK_SIGNATURE, signed)
            .body(body)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status);
        let result = if posted.is_ok() { "ok" } else { "failed" };
        node.inner.metrics.webhook_post(result);
        match posted {
            Ok(_) => {
                retry = RETRY_FIRST;
                if let Err(e) = node.propose(Command::EventsDelivered { seq: last }).await {
                    tracing::warn!(error = %e, "alert webhook: could not record the delivery");
                }
            }
            Err(e) => {
                // The host only: webhook URLs often carry a token in their path.
                let host = url.host_str().unwrap_or_default();
                tracing::warn!(host, error = %e, retry_s = retry.as_secs(), "alert webhook: post failed");
                tokio::select! {
                    () = node.inner.shutdown.cancelled() => return,
                    () = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(RETRY_LAST);
            }
        }
    }
}

/// The secret posts to `url` are signed with (hex; the receiver uses the text as given).
pub(crate) fn secret(node: &Node, url: &str) -> String {
    model::signature::webhook_secret(&node.inner.cluster_secret, url).unwrap_or_default()
}
