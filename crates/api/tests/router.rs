//! The API's router over a real one-member node in a temporary directory, called in process
//! (no socket): what every caller meets before any handler runs. Signatures, scopes, replays,
//! body limits and unknown routes must each answer with their status and the `{code, message}`
//! contract, and a signed call must reach the registry and read back.

use api::router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use model::signature::{self, Canonical};
use model::{ErrorCode, Scope};
use node::{Node, NodeConfig};
use serde_json::{json, Value};
use tower::ServiceExt;

/// The `Host` the requests are signed for and sent with.
const HOST: &str = "127.0.0.1:7700";

/// A founded one-member node, its router, and an admin key of it.
struct Api {
    router: Router,
    node: Node,
    admin: (String, String),
    _dir: tempfile::TempDir,
}

impl Api {
    async fn start() -> Api {
        let dir = tempfile::tempdir().unwrap();
        let config = NodeConfig {
            data_dir: dir.path().to_path_buf(),
            advertise_addr: HOST.to_string(),
            slots: 1,
            storage_url: None,
            // Nothing here runs an attempt: these tests stop at the registry.
            worker_program: dir.path().join("no-worker"),
            builtin_functions: vec!["noop".to_string()],
            labels: Vec::new(),
            join: None,
            fault_injection: false,
            snapshot_logs: node::SNAPSHOT_LOGS_DEFAULT,
            join_catch_up: node::JOIN_CATCH_UP_DEFAULT,
        };
        let node = Node::open(config).await.unwrap();
        node.run().await.unwrap();
        let key = node.create_key(vec![Scope::Admin], None).await.unwrap();
        Api {
            router: router(node.clone()),
            node,
            admin: (key.id.0, key.secret),
            _dir: dir,
        }
    }

    async fn key(&self, scopes: Vec<Scope>) -> (String, String) {
        let key = self.node.create_key(scopes, None).await.unwrap();
        (key.id.0, key.secret)
    }

    /// Sends `request` and answers its status and JSON body (`Value::Null` if it has none).
    async fn call(&self, request: Request<Body>) -> (StatusCode, Value) {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024 * 1024)
            .await
            .unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, body)
    }
}

/// A request signed by `key` for `signed_host`, sent with `Host: sent_host`.
fn signed_for(
    key: &(String, String),
    method: Method,
    path_and_query: &str,
    body: Vec<u8>,
    signed_host: &str,
    sent_host: &str,
    nonce: &str,
) -> Request<Body> {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let hash = signature::body_sha256_hex(&body);
    let timestamp_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let canonical = Canonical {
        method: method.as_str(),
        host: signed_host,
        path,
        query,
        timestamp_s,
        nonce,
        body_sha256_hex: &hash,
    };
    Request::builder()
        .method(method.clone())
        .uri(path_and_query)
        .header("host", sent_host)
        .header("content-type", "application/json")
        .header(signature::HEADER_KEY, &key.0)
        .header(signature::HEADER_TIMESTAMP, timestamp_s.to_string())
        .header(signature::HEADER_NONCE, nonce)
        .header(signature::HEADER_SIGNATURE, canonical.sign(&key.1).unwrap())
        .header(signature::HEADER_CONTENT_SHA256, hash)
        .body(Body::from(body))
        .unwrap()
}

fn fresh_nonce() -> String {
    use rand::Rng;
    format!("{:032x}", rand::rng().random::<u128>())
}

fn signed(key: &(String, String), method: Method, path: &str, body: Value) -> Request<Body> {
    let bytes = if body.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(&body).unwrap()
    };
    signed_for(key, method, path, bytes, HOST, HOST, &fresh_nonce())
}

/// The error contract: a JSON object with the stable `code` and a message that says why.
fn assert_error(body: &Value, code: ErrorCode) {
    assert_eq!(
        body["code"],
        json!(code),
        "expected code {code:?}, got {body}"
    );
    let message = body["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "an error without a message: {body}");
}

#[tokio::test]
async fn an_unsigned_call_is_refused_with_the_error_contract() {
    let api = Api::start().await;
    let request = Request::get("/v1/jobs")
        .header("host", HOST)
        .body(Body::empty())
        .unwrap();
    let (status, body) = api.call(request).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_error(&body, ErrorCode::Unauthorized);
    assert!(
        body["message"].as_str().unwrap().contains("x-chorus-"),
        "the message names the missing header: {body}"
    );
}

#[tokio::test]
async fn a_signed_submit_reaches_the_registry_and_reads_back() {
    let api = Api::start().await;
    let (status, job) = api
        .call(signed(
            &api.admin,
            Method::POST,
            "/v1/jobs",
            json!({ "function": "noop", "input": { "n": 7 } }),
        ))
        .await;
    assert!(status.is_success(), "{status}: {job}");
    let id = job["id"].as_u64().expect("the new job's id");
    let in_registry = api
        .node
        .read(|s| s.job(model::JobId(id)).map(|j| j.function.clone()));
    assert_eq!(in_registry.as_deref(), Some("noop"));
    let (status, read) = api
        .call(signed(
            &api.admin,
            Method::GET,
            &format!("/v1/jobs/{id}"),
            Value::Null,
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{read}");
    assert_eq!(read["id"], json!(id));
    assert_eq!(read["input"], json!({ "n": 7 }), "{read}");
}

#[tokio::test]
async fn a_replayed_write_is_refused_and_makes_no_second_job() {
    let api = Api::start().await;
    let body = serde_json::to_vec(&json!({ "function": "noop" })).unwrap();
    let nonce = fresh_nonce();
    let request = || {
        signed_for(
            &api.admin,
            Method::POST,
            "/v1/jobs",
            body.clone(),
            HOST,
            HOST,
            &nonce,
        )
    };
    let (first, _) = api.call(request()).await;
    assert!(first.is_success(), "{first}");
    let (again, refused) = api.call(request()).await;
    assert_eq!(again, StatusCode::UNAUTHORIZED, "{refused}");
    assert_error(&refused, ErrorCode::Unauthorized);
    assert_eq!(
        api.node.read(|s| s.jobs_after(None).count()),
        1,
        "the replay made a job"
    );
}

#[tokio::test]
async fn a_signature_for_another_host_does_not_verify() {
    let api = Api::start().await;
    let request = signed_for(
        &api.admin,
        Method::GET,
        "/v1/jobs",
        Vec::new(),
        "10.0.0.9:7700",
        HOST,
        &fresh_nonce(),
    );
    let (status, body) = api.call(request).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_error(&body, ErrorCode::Unauthorized);
}

#[tokio::test]
async fn a_body_over_the_route_limit_is_too_large_with_the_contract() {
    let api = Api::start().await;
    // A job's body may hold its input and 64 KiB more; one byte of input over the input
    // limit is still under the body limit, so go well past both.
    let input = "x".repeat(model::INPUT_BYTES_MAX + 128 * 1024);
    let body = serde_json::to_vec(&json!({ "function": "noop", "input": input })).unwrap();
    let request = signed_for(
        &api.admin,
        Method::POST,
        "/v1/jobs",
        body,
        HOST,
        HOST,
        &fresh_nonce(),
    );
    let (status, refused) = api.call(request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_error(&refused, ErrorCode::TooLarge);
    assert_eq!(api.node.read(|s| s.jobs_after(None).count()), 0);
}

#[tokio::test]
async fn a_key_without_the_scope_is_forbidden_and_changes_nothing() {
    let api = Api::start().await;
    let submit_only = api.key(vec![Scope::Submit]).await;
    let (status, body) = api
        .call(signed(
            &submit_only,
            Method::PUT,
            "/v1/config/retention",
            json!({ "value": "1h" }),
        ))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_error(&body, ErrorCode::Forbidden);
    let (status, body) = api
        .call(signed(&submit_only, Method::GET, "/v1/keys", Value::Null))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_error(&body, ErrorCode::Forbidden);
    // The same key may do what its scope is for.
    let (status, body) = api
        .call(signed(
            &submit_only,
            Method::POST,
            "/v1/jobs",
            json!({ "function": "noop" }),
        ))
        .await;
    assert!(status.is_success(), "{status}: {body}");
}

#[tokio::test]
async fn a_revoked_key_is_refused() {
    let api = Api::start().await;
    let reader = api.key(vec![Scope::Read]).await;
    let (status, _) = api
        .call(signed(&reader, Method::GET, "/v1/jobs", Value::Null))
        .await;
    assert_eq!(status, StatusCode::OK);
    api.node
        .revoke_key(model::KeyId(reader.0.clone()))
        .await
        .unwrap();
    let (status, body) = api
        .call(signed(&reader, Method::GET, "/v1/jobs", Value::Null))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_error(&body, ErrorCode::Unauthorized);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_with_their_codes() {
    let api = Api::start().await;
    let (status, body) = api
        .call(signed(
            &api.admin,
            Method::GET,
            "/v1/nothing-here",
            Value::Null,
        ))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_error(&body, ErrorCode::NotFound);
    let (status, body) = api
        .call(signed(&api.admin, Method::DELETE, "/v1/jobs", Value::Null))
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    assert_error(&body, ErrorCode::MethodNotAllowed);
    let (status, body) = api
        .call(signed(
            &api.admin,
            Method::GET,
            "/v1/jobs/999999",
            Value::Null,
        ))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_error(&body, ErrorCode::NotFound);
}

#[tokio::test]
async fn probes_and_the_openapi_document_need_no_key() {
    let api = Api::start().await;
    for path in ["/healthz", "/readyz"] {
        let request = Request::get(path)
            .header("host", HOST)
            .body(Body::empty())
            .unwrap();
        let response = api.router.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    let request = Request::get("/v1/openapi.json")
        .header("host", HOST)
        .body(Body::empty())
        .unwrap();
    let (status, document) = api.call(request).await;
    assert_eq!(status, StatusCode::OK);
    assert!(document["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with('3')));
    assert!(document["paths"]["/v1/jobs"].is_object(), "{document}");
}
