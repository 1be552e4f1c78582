//! Controls on many runs at once and starts the input schema refuses, end to end: `chorus
//! runs retry --workflow W --failed` and `chorus runs abort --workflow W` through the CLI
//! against a real node, and a start whose input does not match creates no run.

use crate::harness::TestNode;
use crate::workflows::{deploy_echo, must_end};
use model::workflow::RunStatus;
use model::{ErrorCode, FunctionKind, FunctionSpec};
use serde_json::{json, Value};
use std::path::Path;

/// A command function that fails with code `not_yet` until the file `gate` exists.
async fn deploy_gated(client: &client::Client, name: &str, gate: &Path) {
    let g = gate.display();
    let mut spec = FunctionSpec::builtin(name);
    spec.kind = FunctionKind::Command;
    spec.command = vec![
        "sh".into(),
        "-c".into(),
        format!(
            "while IFS= read -r line; do if [ -e '{g}' ]; then echo '{{\"output\":{{\"ok\":true}}}}'; \
             else echo '{{\"error\":{{\"code\":\"not_yet\",\"message\":\"the gate is shut\"}}}}'; fi; done"
        ),
    ];
    client.deploy(&spec).await.unwrap();
}

/// Runs the CLI against `node` with its admin key; answers its stdout as JSON.
fn cli(node: &TestNode, args: &[&str]) -> Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args(args)
        .args(["--json", "--server", &node.addr, "--data-dir"])
        .arg(node.dir.path().join("data"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {stdout}"))
}

fn ids(answer: &Value) -> Vec<u64> {
    let mut ids: Vec<u64> = answer["touched"]
        .as_array()
        .unwrap_or_else(|| panic!("{answer}"))
        .iter()
        .map(|id| id.as_u64().unwrap())
        .collect();
    ids.sort_unstable();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failed_run_is_retried_and_every_running_run_aborted_in_one_call() {
    let node = TestNode::start().await;
    let gate = node.dir.path().join("gate");
    deploy_gated(&node.client, "gated", &gate).await;
    deploy_echo(&node.client, "echo", None).await;
    let gated = r#"
name = "gated"
[retry]
max_attempts = 1
[[steps]]
name = "pass"
function = "gated"
"#;
    let long = r#"
name = "long"
[[steps]]
name = "wait"
function = "sleep"
input = { ms = 60000 }
[finally]
name = "clean"
function = "echo"
"#;
    node.client.deploy_workflow(gated).await.unwrap();
    node.client.deploy_workflow(long).await.unwrap();
    let mut failed = Vec::new();
    for _ in 0..3 {
        let run = node
            .client
            .start_run("gated", &json!({}), None)
            .await
            .unwrap();
        let run = must_end(&node.client, run.summary.id).await;
        assert_eq!(run.summary.state, RunStatus::Failed, "{:?}", run.summary);
        failed.push(run.summary.id);
    }
    std::fs::write(&gate, b"open").unwrap();
    let retried = cli(&node, &["runs", "retry", "--workflow", "gated", "--failed"]);
    assert_eq!(ids(&retried), failed, "{retried}");
    for &id in &failed {
        let run = must_end(&node.client, id).await;
        assert_eq!(run.summary.state, RunStatus::Succeeded, "{:?}", run.summary);
    }
    // Two runs that sleep for a minute: they take both of the node's slots (so they are
    // started after the retried runs are done).
    let mut running = Vec::new();
    for _ in 0..2 {
        let run = node
            .client
            .start_run("long", &json!({}), None)
            .await
            .unwrap();
        running.push(run.summary.id);
    }
    // Nothing fits: no run of `long` failed, and an abort of `gated` finds none running.
    let none = cli(&node, &["runs", "retry", "--workflow", "long", "--failed"]);
    assert_eq!(ids(&none), Vec::<u64>::new(), "{none}");
    let none = cli(&node, &["runs", "abort", "--workflow", "gated"]);
    assert_eq!(ids(&none), Vec::<u64>::new(), "{none}");
    let aborted = cli(&node, &["runs", "abort", "--workflow", "long"]);
    assert_eq!(ids(&aborted), running, "{aborted}");
    for &id in &running {
        let run = must_end(&node.client, id).await;
        assert_eq!(run.summary.state, RunStatus::Aborted, "{:?}", run.summary);
        let clean = run
            .summary
            .steps
            .iter()
            .find(|s| s.name == "clean")
            .unwrap();
        assert!(clean.step.is_done(), "{:?}", run.summary);
    }
    // Once more: nothing is left to retry or abort.
    let again = node
        .client
        .control_workflow_runs("gated", "retry")
        .await
        .unwrap();
    assert!(again.touched.is_empty() && !again.more, "{again:?}");

    // Bad calls change nothing and say why.
    let unknown = node
        .client
        .control_workflow_runs("nope", "retry")
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Some(ErrorCode::NotFound), "{unknown}");
    let bad = node
        .client
        .control_workflow_runs("gated", "skip")
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Some(ErrorCode::InvalidInput), "{bad}");
    // A read-only key may not control runs.
    let reader = node.client.create_key(&[model::Scope::Read]).await.unwrap();
    let reader = node.client_with(&reader.id, &reader.secret);
    let denied = reader
        .control_workflow_runs("gated", "retry")
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Some(ErrorCode::Forbidden), "{denied}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_whose_input_does_not_match_the_schema_is_refused_and_creates_no_run() {
    let node = TestNode::start().await;
    deploy_echo(&node.client, "echo", None).await;
    let spec = r#"
name = "typed"
[input_schema]
type = "object"
required = ["path", "formats"]
properties = { path = { type = "string" }, formats = { type = "array", items = { type = "string" }, minItems = 1 } }
[[steps]]
name = "a"
function = "echo"
input = { path = "{{ input.path }}" }
"#;
    node.client.deploy_workflow(spec).await.unwrap();
    let bad_inputs = [
        (json!({ "formats": ["mp3"] }), "path"),
        (json!({ "path": 7, "formats": ["mp3"] }), "/path"),
        (json!({ "path": "a.wav", "formats": [] }), "/formats"),
        (json!("not an object"), "object"),
    ];
    for (input, named) in &bad_inputs {
        let refused = node
            .client
            .start_run("typed", input, Some("typed-key"))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Some(ErrorCode::SchemaMismatch), "{refused}");
        assert!(refused.to_string().contains(named), "{input}: {refused}");
    }
    let filter = client::RunFilter {
        workflow: Some("typed".into()),
        ..Default::default()
    };
    assert!(
        node.client.list_runs(&filter).await.unwrap().is_empty(),
        "a refused start creates no run"
    );
    // The key was not taken by a refused start: a good input with it starts run 1.
    let run = node
        .client
        .start_run(
            "typed",
            &json!({ "path": "a.wav", "formats": ["mp3"] }),
            Some("typed-key"),
        )
        .await
        .unwrap();
    assert!(!run.existing);
    assert_eq!(
        run.summary.id, 1,
        "no run number was spent on a refused start"
    );
    let run = must_end(&node.client, run.summary.id).await;
    assert_eq!(run.summary.state, RunStatus::Succeeded, "{:?}", run.summary);
}
