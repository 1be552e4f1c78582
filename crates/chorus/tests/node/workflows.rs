//! Workflows end to end on real nodes: deploy (versions, bad specs), runs with `needs`,
//! fan-out and fan-in, conditions, per-code retries, abort with the `finally` step,
//! idempotency keys, and a run of 200 steps that outlives a `kill -9` of the leader with no
//! try run twice.

use crate::cluster::{cluster, leader, leader_index};
use crate::harness::{TestNode, DEADLINE};
use client::{Client, Run};
use model::workflow::{Control, RunStatus, StepStatus};
use model::{ErrorCode, FunctionKind, FunctionSpec};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

/// Deploys a command function that answers each request with the request itself as output
/// (so `output.input` is the step's rendered input). With `log`, it first appends the
/// request line to that file, which tells how often each job ran.
pub(crate) async fn deploy_echo(client: &Client, name: &str, log: Option<&Path>) {
    let append = log.map_or(String::new(), |p| {
        format!("printf '%s\\n' \"$line\" >> '{}'; ", p.display())
    });
    let mut spec = FunctionSpec::builtin(name);
    spec.kind = FunctionKind::Command;
    spec.command = vec![
        "sh".into(),
        "-c".into(),
        format!(
            "while IFS= read -r line; do {append}printf '{{\"output\":%s}}\\n' \"$line\"; done"
        ),
    ];
    client.deploy(&spec).await.unwrap();
}

/// A command function that fails with code `flaky` the first time it runs, then succeeds.
async fn deploy_flaky(client: &Client, name: &str, marker: &Path) {
    let m = marker.display();
    let mut spec = FunctionSpec::builtin(name);
    spec.kind = FunctionKind::Command;
    spec.command = vec![
        "sh".into(),
        "-c".into(),
        format!(
            "while IFS= read -r line; do if [ -e '{m}' ]; then echo '{{\"output\":{{\"ok\":true}}}}'; \
             else touch '{m}'; echo '{{\"error\":{{\"code\":\"flaky\",\"message\":\"first try\"}}}}'; fi; done"
        ),
    ];
    client.deploy(&spec).await.unwrap();
}

/// Waits until the run is finished and returns it; a read the cluster refuses for now
/// (`unavailable`, during an election) is asked again.
pub(crate) async fn must_end(client: &Client, id: u64) -> Run {
    let started = Instant::now();
    loop {
        let last = match client.wait_run(id, None, Duration::from_secs(5)).await {
            Ok(run) if run.is_finished() => return run,
            Ok(run) => format!("{:?}", run.summary),
            Err(e) if e.code() == Some(ErrorCode::Unavailable) => e.to_string(),
            Err(e) if e.to_string().contains("cannot reach") => e.to_string(),
            Err(e) => panic!("waiting for run {id}: {e}"),
        };
        assert!(
            started.elapsed() < DEADLINE * 2,
            "run {id} did not end: {last}"
        );
    }
}

fn step<'r>(run: &'r Run, name: &str) -> &'r model::workflow::StepRun {
    &run.summary
        .steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no step {name} in {:?}", run.summary))
        .step
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_with_needs_passes_outputs_along_and_deploys_are_versioned() {
    let node = TestNode::start().await;
    deploy_echo(&node.client, "echo", None).await;
    let spec = r#"
name = "chain"
[[steps]]
name = "a"
function = "echo"
input = { n = "{{ input.n }}" }
[[steps]]
name = "b"
function = "echo"
needs = ["a"]
input = { from_a = "{{ steps.a.output.input.n }}" }
[[steps]]
name = "c"
function = "echo"
needs = ["b"]
input = { text = "b saw {{ steps.b.output.input.from_a }}" }
"#;
    let first = node.client.deploy_workflow(spec).await.unwrap();
    assert_eq!(first.version, 1);
    let same = node.client.deploy_workflow(spec).await.unwrap();
    assert_eq!(same.version, 1, "an unchanged spec keeps its version");
    let run = node
        .client
        .start_run("chain", &json!({ "n": 7 }), None)
        .await
        .unwrap();
    let changed = spec.replace("b saw", "b got");
    assert_eq!(
        node.client.deploy_workflow(&changed).await.unwrap().version,
        2
    );
    let run = must_end(&node.client, run.summary.id).await;
    assert_eq!(run.summary.state, RunStatus::Succeeded, "{:?}", run.summary);
    assert_eq!(
        run.summary.version, 1,
        "a run keeps the version it started with"
    );
    assert_eq!(
        step(&run, "b").output.as_ref().unwrap()["input"]["from_a"],
        7
    );
    assert_eq!(
        step(&run, "c").output.as_ref().unwrap()["input"]["text"],
        "b saw 7"
    );
    // Every attempt's job is listed, so its log can be read.
    assert_eq!(run.jobs.len(), 3, "{:?}", run.jobs);
    for id in run.jobs.values() {
        let job = node.client.job(*id).await.unwrap();
        assert_eq!(job.state, model::JobState::Succeeded);
    }
    let listed = node
        .client
        .list_runs(&client::RunFilter {
            workflow: Some("chain".into()),
            state: Some("succeeded".into()),
            limit: None,
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    let workflows = node.client.workflows().await.unwrap();
    assert_eq!((workflows.len(), workflows[0].version), (1, 2));
    // Statistics over the run: one run, succeeded; each step tried once, with what its
    // attempt cost measured on its worker.
    let stats = node.client.workflow_stats("chain", "1h").await.unwrap();
    assert_eq!(stats["stats"]["runs"], 1, "{stats}");
    assert_eq!(stats["stats"]["success_rate"], 1.0, "{stats}");
    for name in ["a", "b", "c"] {
        assert_eq!(stats["stats"]["steps"][name]["attempts"], 1, "{stats}");
        assert_eq!(stats["resources"][name]["attempts_measured"], 1, "{stats}");
        assert!(
            stats["resources"][name]["peak_rss_bytes_max"].as_u64() > Some(0),
            "{stats}"
        );
        assert_eq!(
            stats["resources"][name]["queue_wait_ms"]["count"], 1,
            "{stats}"
        );
    }
    let (status, body) = node
        .client
        .raw(
            "GET",
            "/v1/workflows/chain/stats?window=forever",
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_spec_is_refused_at_deploy_with_its_field_path() {
    let node = TestNode::start().await;
    deploy_echo(&node.client, "echo", None).await;
    let cases = [
        (
            "a cycle",
            "name = \"w\"\n[[steps]]\nname = \"a\"\nfunction = \"echo\"\nneeds = [\"b\"]\n[[steps]]\nname = \"b\"\nfunction = \"echo\"\nneeds = [\"a\"]\n",
            "cycle",
            ErrorCode::InvalidInput,
        ),
        (
            "an unknown function",
            "name = \"w\"\n[[steps]]\nname = \"a\"\nfunction = \"nope\"\n",
            "steps[0].function",
            ErrorCode::NotFound,
        ),
        (
            "a template naming nothing",
            "name = \"w\"\n[[steps]]\nname = \"a\"\nfunction = \"echo\"\ninput = { x = \"{{ steps.zz.output }}\" }\n",
            "steps[0].input",
            ErrorCode::InvalidInput,
        ),
        ("malformed TOML", "name = ", "", ErrorCode::InvalidInput),
        (
            "a hook URL that is not http(s)",
            "name = \"w\"\n[[steps]]\nname = \"a\"\nfunction = \"echo\"\n[[steps.hooks.after]]\nurl = \"ftp://example.org/h\"\n",
            "steps[0].hooks.after[0].url",
            ErrorCode::InvalidInput,
        ),
    ];
    // The answer's code is the first error's: a function that is not deployed is
    // `not_found`, as it is for a job.
    for (what, spec, path, code) in cases {
        let err = node.client.deploy_workflow(spec).await.unwrap_err();
        assert_eq!(err.code(), Some(code), "{what}: {err}");
        assert!(err.to_string().contains(path), "{what}: {err}");
    }
    assert!(node.client.workflows().await.unwrap().is_empty());
    let err = node
        .client
        .start_run("w", &json!({}), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_feeds_a_fan_in_and_a_false_condition_skips_what_follows() {
    let node = TestNode::start().await;
    deploy_echo(&node.client, "echo", None).await;
    let spec = r#"
name = "fan"
[[steps]]
name = "split"
function = "echo"
input = { items = "{{ input.items }}" }
[[steps]]
name = "each"
function = "echo"
needs = ["split"]
for_each = "{{ steps.split.output.input.items }}"
concurrency = 2
input = { item = "{{ item }}", index = "{{ index }}" }
[[steps]]
name = "join"
function = "echo"
needs = ["each"]
input = { all = "{{ steps.each.output }}" }
[[steps]]
name = "maybe"
function = "echo"
needs = ["join"]
if = "input.flag"
[[steps]]
name = "after"
function = "echo"
needs = ["maybe"]
"#;
    node.client.deploy_workflow(spec).await.unwrap();
    let items = json!(["x", "y", "z", "w", "v"]);
    let run = node
        .client
        .start_run("fan", &json!({ "items": items, "flag": false }), None)
        .await
        .unwrap();
    let run = must_end(&node.client, run.summary.id).await;
    assert_eq!(run.summary.state, RunStatus::Succeeded, "{:?}", run.summary);
    let all = &step(&run, "join").output.as_ref().unwrap()["input"]["all"];
    let got: Vec<Value> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["input"]["item"].clone())
        .collect();
    assert_eq!(Value::from(got), items, "outputs in item order");
    assert_eq!(step(&run, "maybe").status, StepStatus::Skipped);
    assert_eq!(step(&run, "after").status, StepStatus::Skipped);
    // The cap: never more than two elements' jobs at once.
    let each = step(&run, "each");
    let mut spans = Vec::new();
    for element in &each.elements {
        for a in &element.attempts {
            let job = node.client.job(run.jobs[&a.job_key]).await.unwrap();
            let at = &job.attempts[0];
            spans.push((at.started_at_ms, at.finished_at_ms.unwrap()));
        }
    }
    for &(start, _) in &spans {
        let overlapping = spans
            .iter()
            .filter(|(s, e)| *s <= start && start < *e)
            .count();
        assert!(overlapping <= 2, "{overlapping} at once: {spans:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_code_is_tried_again_and_a_never_code_is_not() {
    let node = TestNode::start().await;
    deploy_flaky(&node.client, "flaky", &node.dir.path().join("flaky.marker")).await;
    let spec = r#"
name = "retries"
[retry]
max_attempts = 3
retry_codes = ["flaky"]
backoff = { initial_ms = 10, max_ms = 50 }
[[steps]]
name = "once-flaky"
function = "flaky"
"#;
    node.client.deploy_workflow(spec).await.unwrap();
    let run = node
        .client
        .start_run("retries", &json!({}), None)
        .await
        .unwrap();
    let run = must_end(&node.client, run.summary.id).await;
    assert_eq!(run.summary.state, RunStatus::Succeeded, "{:?}", run.summary);
    let attempts = &step(&run, "once-flaky").elements[0].attempts;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0].error.as_ref().unwrap().code, "flaky");

    let never = r#"
name = "never"
[retry]
max_attempts = 3
never_codes = ["bad_thing"]
[[steps]]
name = "doomed"
function = "fail"
input = { code = "bad_thing" }
"#;
    node.client.deploy_workflow(never).await.unwrap();
    let run = node
        .client
        .start_run("never", &json!({}), None)
        .await
        .unwrap();
    let run = must_end(&node.client, run.summary.id).await;
    assert_eq!(run.summary.state, RunStatus::Failed, "{:?}", run.summary);
    let doomed = step(&run, "doomed");
    assert_eq!(doomed.elements[0].attempts.len(), 1);
    assert_eq!(doomed.error.as_ref().unwrap().code, "bad_thing");
    // A control on a failed run's unknown step, and an abort of a finished run, are refused.
    let err = node
        .client
        .control_run(run.summary.id, &Control::Skip { step: "zz".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err}");
    let err = node
        .client
        .control_run(run.summary.id, &Control::Abort)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Conflict), "{err}");
    // Skipping the failed step lets the run go on, and end well.
    node.client
        .control_run(
            run.summary.id,
            &Control::Skip {
                step: "doomed".into(),
            },
        )
        .await
        .unwrap();
    let run = must_end(&node.client, run.summary.id).await;
    assert_eq!(run.summary.state, RunStatus::Succeeded, "{:?}", run.summary);
    assert_eq!(step(&run, "doomed").status, StepStatus::Skipped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_cancels_the_running_step_and_runs_finally_and_a_key_returns_the_same_run() {
    let node = TestNode::start().await;
    deploy_echo(&node.client, "echo", None).await;
    let spec = r#"
name = "long"
[[steps]]
name = "wait"
function = "sleep"
input = { ms = 60000 }
[finally]
name = "clean"
function = "echo"
input = { state = "{{ run.state }}" }
"#;
    node.client.deploy_workflow(spec).await.unwrap();
    let first = node
        .client
        .start_run("long", &json!({}), Some("once"))
        .await
        .unwrap();
    assert!(!first.existing);
    let again = node
        .client
        .start_run("long", &json!({}), Some("once"))
        .await
        .unwrap();
    assert!(again.existing);
    assert_eq!(again.summary.id, first.summary.id);
    let id = first.summary.id;
    crate::harness::wait_until("the step's job runs", || async {
        let run = node.client.run(id).await.unwrap();
        run.jobs
            .values()
            .next()
            .is_some_and(|_| step(&run, "wait").status == StepStatus::Running)
    })
    .await;
    node.client.control_run(id, &Control::Abort).await.unwrap();
    let run = must_end(&node.client, id).await;
    assert_eq!(run.summary.state, RunStatus::Aborted, "{:?}", run.summary);
    assert_eq!(step(&run, "wait").status, StepStatus::Cancelled);
    let clean = step(&run, "clean");
    assert_eq!(clean.status, StepStatus::Succeeded, "{clean:?}");
    assert_eq!(clean.output.as_ref().unwrap()["input"]["state"], "aborted");
    let sleep_job = run.jobs.values().min().unwrap();
    let job = node.client.job(*sleep_job).await.unwrap();
    assert_eq!(job.state, model::JobState::Cancelled, "{job:?}");
    // Restart from the start: a new round, a new job, and this time no abort.
    node.client
        .control_run(id, &Control::Restart { from: None })
        .await
        .unwrap();
    let run = node.client.run(id).await.unwrap();
    assert_eq!(run.summary.state, RunStatus::Running);
    assert_eq!(step(&run, "wait").round, 1);
    node.client.control_run(id, &Control::Abort).await.unwrap();
    assert_eq!(
        must_end(&node.client, id).await.summary.state,
        RunStatus::Aborted
    );
}

/// `POST /v1/workflows/{name}/invoke` starts a run and answers once it ended, in one call;
/// a run still going at the call's time-out is a 202 naming it, and the idempotency key
/// returns the same run; bad input is a clear error and starts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoking_a_workflow_answers_once_the_run_ended_or_202_at_the_time_out() {
    let node = TestNode::start().await;
    deploy_echo(&node.client, "echo", None).await;
    let chain = r#"
name = "pair"
[[steps]]
name = "a"
function = "echo"
input = { n = "{{ input.n }}" }
[[steps]]
name = "b"
function = "echo"
needs = ["a"]
input = { twice = "{{ steps.a.output.input.n }}" }
"#;
    node.client.deploy_workflow(chain).await.unwrap();
    let run = node
        .client
        .invoke_workflow("pair", &json!({ "n": 3 }), None, DEADLINE)
        .await
        .unwrap();
    assert_eq!(run.summary.state, RunStatus::Succeeded, "{:?}", run.summary);
    assert_eq!(
        step(&run, "b").output.as_ref().unwrap()["input"]["twice"],
        3
    );

    let long = "name = \"long\"\n[[steps]]\nname = \"wait\"\nfunction = \"sleep\"\ninput = { ms = 60000 }\n";
    node.client.deploy_workflow(long).await.unwrap();
    let body = serde_json::to_vec(&json!({ "idempotency_key": "slow" })).unwrap();
    let (status, answer) = node
        .client
        .raw(
            "POST",
            "/v1/workflows/long/invoke?timeout_ms=300",
            body.clone(),
        )
        .await
        .unwrap();
    assert_eq!(status, 202, "{}", String::from_utf8_lossy(&answer));
    let first: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(
        (&first["state"], &first["existing"]),
        (&json!("running"), &json!(false))
    );
    let (status, answer) = node
        .client
        .raw("POST", "/v1/workflows/long/invoke?timeout_ms=0", body)
        .await
        .unwrap();
    assert_eq!(status, 202);
    let again: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(
        (&again["id"], &again["existing"]),
        (&first["id"], &json!(true))
    );

    for (path, body, code) in [
        ("/v1/workflows/nope/invoke", "{}", "not_found"),
        (
            "/v1/workflows/pair/invoke?timeout_ms=999999999",
            "{}",
            "invalid_input",
        ),
        (
            "/v1/workflows/pair/invoke",
            "{\"inputs\": 1}",
            "invalid_input",
        ),
        ("/v1/workflows/pair/invoke", "[", "invalid_input"),
    ] {
        let (status, answer) = node.client.raw("POST", path, body.into()).await.unwrap();
        let error: Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(error["code"], code, "{path} {body}: {status} {error}");
    }
    let runs = node
        .client
        .list_runs(&client::RunFilter::default())
        .await
        .unwrap();
    assert_eq!(runs.len(), 2, "bad calls started nothing: {runs:?}");
}

/// Elements of the fan-out the leader is killed in the middle of (issue 12: a run of 200
/// steps).
const SURVIVOR_ELEMENTS: u32 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_200_steps_outlives_a_kill_9_of_the_leader_and_no_try_runs_twice() {
    let mut nodes = cluster().await;
    let log = nodes[0].dir.path().join("ran.log");
    deploy_echo(&nodes[0].client, "logged", Some(&log)).await;
    // Each element appends its request (run, index, job) to the log before it answers.
    let mut sleepy = FunctionSpec::builtin("nap");
    sleepy.kind = FunctionKind::Command;
    sleepy.command = vec![
        "sh".into(),
        "-c".into(),
        format!(
            "while IFS= read -r line; do printf '%s\\n' \"$line\" >> '{}'; sleep 0.05; echo '{{\"output\":{{}}}}'; done",
            log.display()
        ),
    ];
    nodes[0].client.deploy(&sleepy).await.unwrap();
    let spec = r#"
name = "survivor"
[retry]
backoff = { initial_ms = 50, max_ms = 200 }
[[steps]]
name = "first"
function = "logged"
[[steps]]
name = "wide"
function = "nap"
needs = ["first"]
for_each = "{{ input.items }}"
concurrency = 16
input = { run = "{{ run.id }}", index = "{{ index }}" }
[[steps]]
name = "last"
function = "logged"
needs = ["wide"]
input = { n = "{{ steps.wide.output }}" }
"#;
    nodes[0].client.deploy_workflow(spec).await.unwrap();
    let items: Vec<u32> = (0..SURVIVOR_ELEMENTS).collect();
    let started = Instant::now();
    let run = nodes[0]
        .client
        .start_run("survivor", &json!({ "items": items }), Some("survive"))
        .await
        .unwrap();
    let id = run.summary.id;
    let old = leader(&nodes[0]).await;
    let li = leader_index(&nodes, old);
    let other = (li + 1) % 3;
    crate::harness::wait_until("a fifth of the elements are done", || async {
        let Ok(run) = nodes[other].client.run(id).await else {
            return false;
        };
        step(&run, "wide")
            .elements
            .iter()
            .filter(|e| e.output.is_some())
            .count()
            >= SURVIVOR_ELEMENTS as usize / 5
    })
    .await;
    nodes[li].kill_9();
    let killed_at = started.elapsed();
    let run = must_end(&nodes[other].client, id).await;
    eprintln!(
        "{SURVIVOR_ELEMENTS} elements: leader killed after {killed_at:?}, run ended after {:?}",
        started.elapsed()
    );
    assert_eq!(run.summary.state, RunStatus::Succeeded, "{:?}", run.summary);
    let wide = step(&run, "wide");
    assert_eq!(
        wide.output.as_ref().unwrap().as_array().unwrap().len(),
        SURVIVOR_ELEMENTS as usize
    );
    // The same key still names the same run after the leader change.
    let again = nodes[other]
        .client
        .start_run("survivor", &json!({}), Some("survive"))
        .await
        .unwrap();
    assert_eq!((again.summary.id, again.existing), (id, true));
    // No try ran twice: each logged request is a (run, step, element, try), named by its
    // job's key, and none appears twice.
    let key_of: std::collections::HashMap<u64, &str> = run
        .jobs
        .iter()
        .map(|(key, job)| (job.0, key.as_str()))
        .collect();
    let text = std::fs::read_to_string(&log).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for line in text.lines() {
        let request: Value = serde_json::from_str(line).unwrap();
        let job = request["job"].as_u64().unwrap();
        let key = key_of
            .get(&job)
            .unwrap_or_else(|| panic!("job {job} is no attempt of run {id}"));
        let k = model::workflow::JobKey::parse(key).unwrap_or_else(|| panic!("{key}"));
        if k.step == "wide" {
            assert_eq!(request["input"]["index"], k.element, "{line}");
            assert_eq!(request["input"]["run"], id, "{line}");
        }
        let try_ = format!("{id}/{}/{}/{}/{}", k.step, k.round, k.element, k.attempt);
        assert!(seen.insert(key.to_string()), "{try_} ran twice:\n{text}");
    }
    let tries: usize = wide.elements.iter().map(|e| e.attempts.len()).sum();
    eprintln!(
        "{} tries ran; the fan-out made {tries} for {SURVIVOR_ELEMENTS} elements",
        seen.len()
    );
    // Every element's last try succeeded; a try lost with the leader was tried anew.
    for (index, element) in wide.elements.iter().enumerate() {
        assert!(element.output.is_some(), "{index}: {element:?}");
        let ran = element.attempts.iter().any(|a| seen.contains(&a.job_key));
        assert!(ran, "element {index} never ran");
    }
}

/// Steps of the chain the leader is killed in the middle of.
const CHAIN_STEPS: usize = 40;

/// A chain's steps start in the entry that ends the step before them (continuations), on
/// whichever node ran that step; a `kill -9` of the leader in the middle loses no step,
/// runs none twice, and the outputs still pass along in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_40_steps_outlives_a_kill_9_of_the_leader_in_order_and_once_each() {
    let mut nodes = cluster().await;
    let log = nodes[0].dir.path().join("chain.log");
    let mut step_fn = FunctionSpec::builtin("link");
    step_fn.kind = FunctionKind::Command;
    step_fn.command = vec![
        "sh".into(),
        "-c".into(),
        format!(
            "while IFS= read -r line; do printf '%s\\n' \"$line\" >> '{}'; sleep 0.03; printf '{{\"output\":%s}}\\n' \"$line\"; done",
            log.display()
        ),
    ];
    nodes[0].client.deploy(&step_fn).await.unwrap();
    let mut spec = String::from(
        "name = \"long_chain\"\n[retry]\nbackoff = { initial_ms = 50, max_ms = 200 }\n",
    );
    for k in 0..CHAIN_STEPS {
        spec.push_str(&format!(
            "[[steps]]\nname = \"s{k}\"\nfunction = \"link\"\n"
        ));
        if k == 0 {
            spec.push_str("input = { chain = \"0\" }\n");
        } else {
            spec.push_str(&format!(
                "needs = [\"s{p}\"]\ninput = {{ chain = \"{{{{ steps.s{p}.output.input.chain }}}}-{k}\" }}\n",
                p = k - 1
            ));
        }
    }
    nodes[0].client.deploy_workflow(&spec).await.unwrap();
    let run = nodes[0]
        .client
        .start_run("long_chain", &json!({}), Some("chain"))
        .await
        .unwrap();
    let id = run.summary.id;
    let old = leader(&nodes[0]).await;
    let li = leader_index(&nodes, old);
    let other = (li + 1) % 3;
    crate::harness::wait_until("a quarter of the steps are done", || async {
        let Ok(run) = nodes[other].client.run(id).await else {
            return false;
        };
        run.summary
            .steps
            .iter()
            .filter(|s| s.step.status == StepStatus::Succeeded)
            .count()
            >= CHAIN_STEPS / 4
    })
    .await;
    nodes[li].kill_9();
    let run = must_end(&nodes[other].client, id).await;
    assert_eq!(run.summary.state, RunStatus::Succeeded, "{:?}", run.summary);
    let expected: Vec<String> = (0..CHAIN_STEPS).map(|k| k.to_string()).collect();
    let last = step(&run, &format!("s{}", CHAIN_STEPS - 1));
    assert_eq!(
        last.output.as_ref().unwrap()["input"]["chain"],
        expected.join("-"),
        "every step saw the one before it"
    );
    // No try ran twice, and every step's successful try is among those that ran.
    let key_of: std::collections::HashMap<u64, &str> = run
        .jobs
        .iter()
        .map(|(key, job)| (job.0, key.as_str()))
        .collect();
    let text = std::fs::read_to_string(&log).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for line in text.lines() {
        let request: Value = serde_json::from_str(line).unwrap();
        let job = request["job"].as_u64().unwrap();
        let key = key_of
            .get(&job)
            .unwrap_or_else(|| panic!("job {job} is no attempt of run {id}"));
        assert!(seen.insert(key.to_string()), "{key} ran twice:\n{text}");
    }
    for k in 0..CHAIN_STEPS {
        let s = step(&run, &format!("s{k}"));
        let ran = s.elements[0]
            .attempts
            .iter()
            .any(|a| seen.contains(&a.job_key));
        assert!(ran, "step s{k} never ran: {s:?}");
    }
    eprintln!(
        "{CHAIN_STEPS} steps, {} tries ran, leader {old} killed",
        seen.len()
    );
}
