//! A workflow's URL hooks and run events end to end: a real HTTP receiver in the test checks
//! each post's signature and the order of events, a refused post is tried again, a hook
//! whose receiver never answers is given up as a `hook_failed` alert without holding the
//! run back, and the run's start, steps' ends and end reach the alert webhook in order.

use crate::harness::{must_find, wait_until, TestNode};
use crate::workflows::{deploy_echo, must_end};
use model::workflow::RunStatus;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

/// A post as the receiver got it: its head (lower-cased) and its body.
pub(crate) type Posts = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// An HTTP endpoint that answers its first `refused` posts with 500 and the others with 200,
/// and keeps every post it was sent.
pub(crate) async fn receiver(refused: usize) -> (String, Posts) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/T0KEN", listener.local_addr().unwrap());
    let posts: Posts = Arc::new(Mutex::new(Vec::new()));
    let kept = posts.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let post = crate::read_post(&mut socket).await;
            let count = {
                let mut posts = kept.lock().unwrap();
                posts.push(post);
                posts.len()
            };
            let status = if count <= refused {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let answer =
                format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            socket.write_all(answer.as_bytes()).await.unwrap();
        }
    });
    (url, posts)
}

/// Checks the post's `x-chorus-webhook-signature` against `secret` and returns its body.
fn must_be_signed(head: &str, body: &[u8], secret: &str) -> Value {
    use hmac::{Hmac, Mac};
    let header = head
        .lines()
        .find_map(|l| l.strip_prefix("x-chorus-webhook-signature:"))
        .unwrap_or_else(|| panic!("no signature header in {head}"))
        .trim();
    let (t, v1) = header
        .split_once(',')
        .and_then(|(t, v)| Some((t.strip_prefix("t=")?, v.strip_prefix("v1=")?)))
        .unwrap_or_else(|| panic!("{header}"));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    assert_eq!(hex::encode(mac.finalize().into_bytes()), v1, "{header}");
    serde_json::from_slice(body).unwrap()
}

/// `event` and `step` of a hook's body, as one string (`step_finished a`, `run_finished`).
fn what(event: &Value) -> String {
    match event["step"].as_str() {
        Some(step) => format!("{} {step}", event["event"].as_str().unwrap()),
        None => event["event"].as_str().unwrap().to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_hooks_are_signed_in_order_retried_given_up_as_an_alert_and_runs_reach_the_webhook() {
    let node = TestNode::start().await;
    deploy_echo(&node.client, "echo", None).await;
    // The hook receiver refuses the first post: it is posted again, and nothing after it
    // overtakes it.
    let (hook_url, hook_posts) = receiver(1).await;
    let (alerts_url, alert_posts) = receiver(0).await;
    let alerts = node
        .client
        .set_config("alerts.webhook", &alerts_url)
        .await
        .unwrap();
    let alerts_secret = alerts["signing_secret"].as_str().unwrap().to_string();
    // A URL nothing listens on: every post fails at once.
    let dead_url = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/dead", listener.local_addr().unwrap())
    };
    let spec = format!(
        r#"
name = "hooked"
[[hooks.succeeded]]
url = "{hook_url}"
[[hooks.succeeded]]
url = "{dead_url}"
[[steps]]
name = "a"
function = "echo"
input = {{ n = 1 }}
[[steps.hooks.before]]
url = "{hook_url}"
[[steps.hooks.after]]
url = "{hook_url}"
[[steps]]
name = "b"
function = "echo"
needs = ["a"]
input = {{ n = 2 }}
[[steps.hooks.after]]
url = "{hook_url}"
"#
    );
    let deployed = node
        .client
        .deploy_workflow_with_secrets(&spec)
        .await
        .unwrap();
    let secret = deployed.hook_secrets[&hook_url].clone();
    assert!(deployed.hook_secrets.contains_key(&dead_url));
    assert_ne!(secret, alerts_secret, "each URL has its own secret");

    let run = node
        .client
        .start_run("hooked", &json!({}), None)
        .await
        .unwrap();
    let id = run.summary.id;
    let run = must_end(&node.client, id).await;
    assert_eq!(run.summary.state, RunStatus::Succeeded, "{:?}", run.summary);

    // Four hooks, one of them posted twice; each in order, signed, with its number.
    let wanted = [
        "step_started a",
        "step_finished a",
        "step_finished b",
        "run_finished",
    ];
    let posts = must_find("every hook taken", || async {
        let posts = hook_posts.lock().unwrap().clone();
        (posts.len() > wanted.len()).then_some(posts)
    })
    .await;
    let bodies: Vec<Value> = posts
        .iter()
        .map(|(head, body)| must_be_signed(head, body, &secret))
        .collect();
    assert_eq!(bodies[0], bodies[1], "the refused post is posted again");
    let order: Vec<String> = bodies[1..].iter().map(what).collect();
    assert_eq!(order, wanted, "{bodies:?}");
    assert!(
        bodies
            .iter()
            .all(|b| b["run"] == id && b["workflow"] == "hooked"),
        "{bodies:?}"
    );
    assert_eq!(bodies[2]["state"], "succeeded");
    assert_eq!(bodies[4]["state"], "succeeded");
    let hook_ids: Vec<u64> = posts
        .iter()
        .map(|(head, _)| {
            head.lines()
                .find_map(|l| l.strip_prefix("x-chorus-hook-id:"))
                .unwrap_or_else(|| panic!("no hook id in {head}"))
                .trim()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(hook_ids[0], hook_ids[1], "a repeat carries the same id");
    assert!(
        hook_ids[1..].windows(2).all(|w| w[0] < w[1]),
        "{hook_ids:?}"
    );

    // The hook nobody takes is given up after its tries: an alert, and the run is not
    // held back by it (it succeeded above, long before).
    let failed = must_find("the dead hook's alert", || async {
        crate::events(&node, 0)
            .await
            .into_iter()
            .find(|e| e["kind"] == "hook_failed")
    })
    .await;
    assert_eq!(failed["alert"], true);
    let message = failed["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("run {id}")) && message.contains("run_finished"),
        "{message}"
    );
    let port = dead_url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    assert!(
        message.contains(port) && !message.contains("/dead"),
        "{message}"
    );

    // The alert webhook got the run's events in order, signed with its own secret.
    let wanted = [
        "run_started",
        "step_finished a",
        "step_finished b",
        "run_finished",
        "hook_failed",
    ];
    let events = must_find("the run's events on the alert webhook", || async {
        let events: Vec<Value> = alert_posts
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(head, body)| {
                let post = must_be_signed(head, body, &alerts_secret);
                post["events"].as_array().unwrap().clone()
            })
            .collect();
        let done = events.iter().any(|e| e["kind"] == "hook_failed");
        done.then_some(events)
    })
    .await;
    let order: Vec<String> = events
        .iter()
        .map(|e| match &e["run"] {
            Value::Null => e["kind"].as_str().unwrap().to_string(),
            run => what(run),
        })
        .collect();
    assert_eq!(order, wanted, "{events:?}");
    assert_eq!(events[3]["run"]["state"], "succeeded");
    assert_eq!(events[3]["alert"], false);
    wait_until("the hooks are no longer pending", || async {
        let metrics = String::from_utf8_lossy(&node.client.get_public("/metrics").await.unwrap().1)
            .into_owned();
        crate::harness::metric(&metrics, r#"chorus_hook_posts_total{result="failed"}"#) >= Some(8.0)
    })
    .await;
}
