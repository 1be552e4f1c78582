//! The API contract test: every operation in `/v1/openapi.json` is called on a real node, its
//! status must be one the document lists, and its JSON answer must carry the properties the
//! document's schema requires. Undocumented routes must not exist.

use crate::harness;

use harness::TestNode;
use serde_json::{json, Value};

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
                "controlRun" => serde_json::to_vec(&json!({ "control": "abort" })).unwrap(),
                _ => Vec::new(),
            };
            let public = op.get("security").is_none();
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
    assert_eq!(called, 38, "every documented operation was called");
    // An undocumented route does not exist.
    let (status, answer) = node
        .client
        .raw("GET", "/v1/secret-admin", vec![])
        .await
        .unwrap();
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&answer));
}
