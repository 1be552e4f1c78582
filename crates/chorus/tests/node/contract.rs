//! The API contract test: every operation in `/v1/openapi.json` is called on a real node, its
//! status must be one the document lists, and its JSON answer must carry the properties the
//! document's schema requires. Undocumented routes must not exist.

use crate::harness;

use harness::TestNode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.rsplit('/').next().unwrap();
            &doc["components"]["schemas"][name]
        }
        None => schema,
    }
}

/// Checks `value` against the `required` lists of `schema`, following refs and arrays.
fn must_match(doc: &Value, schema: &Value, value: &Value, at: &str) {
    let schema = resolve(doc, schema);
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for field in required {
            let field = field.as_str().unwrap();
            assert!(
                value.get(field).is_some(),
                "{at}: missing required property {field:?} in {value}"
            );
        }
    }
    if let (Some(props), Some(obj)) = (
        schema.get("properties").and_then(Value::as_object),
        value.as_object(),
    ) {
        for (name, sub) in props {
            if let Some(v) = obj.get(name).filter(|v| !v.is_null()) {
                must_match(doc, sub, v, &format!("{at}.{name}"));
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), value.as_array()) {
        for (i, v) in arr.iter().enumerate() {
            must_match(doc, items, v, &format!("{at}[{i}]"));
        }
    }
    if let (Some(allowed), Some(s)) = (schema.get("enum").and_then(Value::as_array), value.as_str())
    {
        assert!(
            allowed.iter().any(|a| a == s),
            "{at}: {s:?} is not one of {allowed:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_matches_its_openapi_document() {
    let node = TestNode::start().await;
    let (status, body) = node.client.get_public("/v1/openapi.json").await.unwrap();
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_slice(&body).unwrap();
    let key = node.client.create_key(&[model::Scope::Read]).await.unwrap();
    let mut called = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let concrete = path
                .replace(
                    "{id}",
                    if path.starts_with("/v1/keys") {
                        &key.id
                    } else {
                        "1"
                    },
                )
                .replace("{name}", "noop")
                .replace("/v1/objects/{key}", "/v1/objects/uploads/contract.bin")
                .replace("{kind}", "vote")
                .replace("{action}", "undrain")
                .replace("{key}", "scheduler.strategy");
            let body: Vec<u8> = match op["operationId"].as_str().unwrap() {
                "deployFunction" => serde_json::to_vec(&json!({ "name": "noop" })).unwrap(),
                "submitJob" => serde_json::to_vec(&json!({ "function": "noop" })).unwrap(),
                "submitBatch" => {
                    serde_json::to_vec(&json!({ "jobs": [{ "function": "noop" }] })).unwrap()
                }
                "createKey" => serde_json::to_vec(&json!({ "scopes": ["read"] })).unwrap(),
                "putObject" => b"contract".to_vec(),
                "raftRpc" => b"{}".to_vec(),
                "joinCluster" => {
                    serde_json::to_vec(&json!({ "addr": "not-an-address", "slots": 1 })).unwrap()
                }
                "setConfig" => serde_json::to_vec(&json!({ "value": "least-request" })).unwrap(),
                "setFaults" => serde_json::to_vec(&json!({ "blocked_nodes": [] })).unwrap(),
                "deployWorkflow" => {
                    b"name = \"contract\"\n[[steps]]\nname = \"a\"\nfunction = \"noop\"\n".to_vec()
                }
                "startRun" => serde_json::to_vec(&json!({ "workflow": "contract" })).unwrap(),
                "controlRun" | "controlWorkflowRuns" => {
                    serde_json::to_vec(&json!({ "control": "abort" })).unwrap()
                }
                "invokeFunction" => serde_json::to_vec(&json!({ "input": {} })).unwrap(),
                "registerSource" => serde_json::to_vec(&json!({
                    "name": "noop",
                    "owner": "contract",
                    "events": {},
                }))
                .unwrap(),
                "createTrigger" => serde_json::to_vec(&json!({
                    "name": "noop",
                    "function": "noop",
                    "cron": { "schedule": "0 0 1 1 *" },
                }))
                .unwrap(),
                _ => Vec::new(),
            };
            let public = op.get("security").is_none();
            if op["operationId"] == "dashboardRunsScript" {
                let (status, script) = node.client.get_public("/runs.js").await.unwrap();
                assert_eq!(status, 200);
                assert!(String::from_utf8_lossy(&script).contains("function drawDag"));
                called += 1;
                continue;
            }
            if op["operationId"] == "dashboardSourcesScript" {
                let (status, script) = node.client.get_public("/sources.js").await.unwrap();
                assert_eq!(status, 200);
                assert!(String::from_utf8_lossy(&script).contains("function refreshSources"));
                called += 1;
                continue;
            }
            if op["operationId"] == "dashboard" {
                let (status, page) = node.client.get_public("/").await.unwrap();
                assert_eq!(status, 200);
                assert!(String::from_utf8_lossy(&page).contains("<title>chorus</title>"));
                called += 1;
                continue;
            }
            let (status, answer) = if public {
                node.client.get_public(&concrete).await.unwrap()
            } else {
                node.client
                    .raw(&method.to_uppercase(), &concrete, body)
                    .await
                    .unwrap()
            };
            let at = format!("{} {concrete}", method.to_uppercase());
            let documented = &op["responses"][status.to_string()];
            assert!(
                !documented.is_null(),
                "{at} answered {status}, which the document does not list: {}",
                String::from_utf8_lossy(&answer)
            );
            if let Some(schema) = documented["content"]
                .get("application/json")
                .map(|c| &c["schema"])
            {
                let value: Value = serde_json::from_slice(&answer)
                    .unwrap_or_else(|e| panic!("{at}: not JSON ({e})"));
                must_match(&doc, schema, &value, &at);
            }
            called += 1;
        }
    }
    assert_eq!(called, 57, "every documented operation was called");
    // An undocumented route does not exist.
    let (status, answer) = node
        .client
        .raw("GET", "/v1/secret-admin", vec![])
        .await
        .unwrap();
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&answer));
}

/// The answer must be `{code, message}` JSON with `code`, and its message must not show where
/// the server keeps its files.
fn must_be_error(node: &TestNode, at: &str, status: u16, answer: &[u8], code: &str) {
    let value: Value = serde_json::from_slice(answer).unwrap_or_else(|e| {
        panic!(
            "{at}: not JSON ({e}): {status} {:?}",
            String::from_utf8_lossy(answer)
        )
    });
    assert_eq!(value["code"], code, "{at}: {status} {value}");
    let message = value["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{at}: {value}"));
    assert!(!message.is_empty(), "{at}: empty message");
    let data_dir = node.dir.path().to_string_lossy().to_string();
    assert!(
        !message.contains(&data_dir) && !message.contains("/tmp/"),
        "{at}: the message shows a server path: {message}"
    );
}

/// Issue 11, point 4: every error, from every layer, answers JSON with its stable code, and
/// object keys the store cannot hold are refused before a byte is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_answers_json_with_a_stable_code() {
    let node = TestNode::start().await;
    let c = &node.client;
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        // Bodies over the route's limit, 2 to 16 MiB (axum's own limit answered plain text).
        ("POST", "/v1/jobs", vec![b' '; 3 << 20], 413, "too_large"),
        (
            "PUT",
            "/v1/config/retention",
            vec![b' '; 2 << 20],
            413,
            "too_large",
        ),
        (
            "POST",
            "/v1/jobs/batch",
            vec![b' '; 17 << 20],
            413,
            "too_large",
        ),
        // Path parameters that do not decode, or do not parse.
        ("GET", "/v1/jobs/%FF", vec![], 400, "invalid_input"),
        (
            "GET",
            "/v1/objects/uploads/%FF",
            vec![],
            400,
            "invalid_input",
        ),
        ("GET", "/v1/jobs/abc", vec![], 400, "invalid_input"),
        // Routes and methods that do not exist.
        ("GET", "/v1/nothing-here", vec![], 404, "not_found"),
        ("DELETE", "/v1/jobs", vec![], 405, "method_not_allowed"),
        (
            "PATCH",
            "/v1/config/retention",
            vec![],
            405,
            "method_not_allowed",
        ),
        // Extractor rejections: bad JSON, bad query.
        (
            "POST",
            "/v1/jobs",
            b"{not json".to_vec(),
            400,
            "invalid_input",
        ),
        ("GET", "/v1/jobs?limit=many", vec![], 400, "invalid_input"),
        ("GET", "/v1/events?surprise=1", vec![], 400, "invalid_input"),
        // The workflow routes: their own body limits, ids and queries.
        (
            "POST",
            "/v1/workflows",
            vec![b' '; 2 << 20],
            413,
            "too_large",
        ),
        ("POST", "/v1/runs", vec![b' '; 1 << 20], 413, "too_large"),
        (
            "POST",
            "/v1/runs/1/control",
            vec![b' '; 1 << 20],
            413,
            "too_large",
        ),
        ("GET", "/v1/runs/abc", vec![], 400, "invalid_input"),
        ("GET", "/v1/runs?limit=0", vec![], 400, "invalid_input"),
        ("GET", "/v1/runs?state=done", vec![], 400, "invalid_input"),
        (
            "GET",
            "/v1/runs/1/wait?surprise=1",
            vec![],
            400,
            "invalid_input",
        ),
        (
            "POST",
            "/v1/runs/1/control",
            br#"{"control":"pause"}"#.to_vec(),
            400,
            "invalid_input",
        ),
        ("GET", "/v1/runs/1", vec![], 404, "not_found"),
        // Object keys the store cannot hold.
        (
            "PUT",
            &*Box::leak(format!("/v1/objects/uploads/{}", "x".repeat(1016)).into_boxed_str()),
            b"data".to_vec(),
            400,
            "invalid_input",
        ),
        (
            "PUT",
            "/v1/objects/uploads/t%231",
            b"data".to_vec(),
            400,
            "invalid_input",
        ),
        (
            "PUT",
            "/v1/objects/uploads/.hidden",
            b"data".to_vec(),
            400,
            "invalid_input",
        ),
        (
            "GET",
            "/v1/objects/uploads/missing",
            vec![],
            404,
            "not_found",
        ),
        // Unknown config keys and bad values.
        (
            "PUT",
            "/v1/config/scheduler.fastest",
            br#"{"value":"yes"}"#.to_vec(),
            400,
            "invalid_input",
        ),
        (
            "PUT",
            "/v1/config/retention",
            br#"{"value":"soon"}"#.to_vec(),
            400,
            "invalid_input",
        ),
    ];
    let credentials = node.credentials();
    // A fresh connection per call: a server that refuses a body before reading it closes the
    // connection, which a pooled client would otherwise reuse for the next call.
    let fresh = || node.client_with(&credentials.key_id, &credentials.secret);
    for (method, path, body, status, code) in cases {
        let at = format!("{method} {}", &path[..path.len().min(80)]);
        let (got, answer) = fresh().raw(method, path, body).await.unwrap();
        assert_eq!(got, status, "{at}: {}", String::from_utf8_lossy(&answer));
        must_be_error(&node, &at, got, &answer, code);
    }

    // An unknown config key is refused with the list of the known ones, and not stored.
    let (_, answer) = c
        .raw(
            "PUT",
            "/v1/config/scheduler.fastest",
            br#"{"value":"yes"}"#.to_vec(),
        )
        .await
        .unwrap();
    let message = serde_json::from_slice::<Value>(&answer).unwrap()["message"].to_string();
    assert!(message.contains("scheduler.cpu_threshold"), "{message}");
    let config = c.config().await.unwrap();
    assert!(
        config["config"].get("scheduler.fastest").is_none(),
        "{config}"
    );

    // A key under an existing object, and one naming a folder of objects: conflicts.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data.bin");
    std::fs::write(&file, b"data").unwrap();
    c.put_object("uploads/a", &file).await.unwrap();
    c.put_object("uploads/d/x", &file).await.unwrap();
    for key in ["uploads/a/b", "uploads/d"] {
        let (status, answer) = c
            .raw("PUT", &format!("/v1/objects/{key}"), b"data".to_vec())
            .await
            .unwrap();
        assert_eq!(status, 409, "{key}: {}", String::from_utf8_lossy(&answer));
        must_be_error(&node, key, status, &answer, "conflict");
    }
    // Nothing of the refused uploads stays behind: the store holds the two objects only, and
    // no staging file is left in the node's data dir.
    let data = node.dir.path().join("data");
    let mut files = Vec::new();
    let mut pending = vec![data.join("objects"), data.join("tmp")];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().unwrap().is_dir() {
                pending.push(entry.path());
            } else {
                files.push(entry.path().strip_prefix(&data).unwrap().to_path_buf());
            }
        }
    }
    files.sort();
    assert_eq!(
        files,
        vec![
            std::path::PathBuf::from("objects/uploads/a"),
            std::path::PathBuf::from("objects/uploads/d/x"),
        ]
    );

    // Paths over our limit answer JSON; hyper answers request lines over 64 KiB itself,
    // before the router runs, with an empty 414.
    let long = format!("/v1/jobs/{}", "9".repeat(20_000));
    let (status, answer) = c.raw("GET", &long, vec![]).await.unwrap();
    assert_eq!(status, 414);
    must_be_error(
        &node,
        "GET a 20,000-byte path",
        status,
        &answer,
        "uri_too_long",
    );
    // (HTTP clients refuse to build such a URI, so this one goes over a bare socket, to a
    // node serving plain HTTP: the TLS listener's answer to it is not checked here.)
    let plain = TestNode::start_with(2, &["--insecure-http"]).await;
    let longest = format!(
        "GET /v1/jobs/{} HTTP/1.1\r\nhost: chorus\r\nconnection: close\r\n\r\n",
        "9".repeat(100_000)
    );
    let mut socket = tokio::net::TcpStream::connect(&plain.addr).await.unwrap();
    socket.write_all(longest.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    socket.read_to_end(&mut answer).await.unwrap();
    let head = String::from_utf8_lossy(&answer[..answer.len().min(12)]).to_string();
    assert_eq!(head, "HTTP/1.1 414");
}

/// `chorus jobs list | head -1`: the CLI ends quietly when its reader goes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_exits_quietly_on_a_closed_pipe() {
    use std::process::{Command, Stdio};
    let node = TestNode::start().await;
    let jobs: Vec<model::JobSpec> = (0..50)
        .map(|_| model::JobSpec {
            function: "noop".into(),
            input: json!({}),
            files: vec![],
            priority: 0,
            idempotency_key: None,
        })
        .collect();
    node.client.submit_batch(&jobs).await.unwrap();
    // A pipe whose reading end is closed before the CLI writes anything.
    let (writer, reader) = tokio::net::unix::pipe::pipe().unwrap();
    drop(reader);
    let writer = writer.into_blocking_fd().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args(["jobs", "list", "--server", &node.addr, "--data-dir"])
        .arg(node.dir.path().join("data"))
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(stderr.is_empty(), "the CLI said something: {stderr}");
}
