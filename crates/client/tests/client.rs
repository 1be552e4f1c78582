//! The client against a small in-process HTTP server that checks what a chorus node checks:
//! every request is signed over its method, path, query and body, and answers (JSON,
//! `{code, message}` errors, errors that are not JSON, no server at all) come back typed.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use client::{Client, ClientError, Credentials, JobFilter};
use model::signature::{self, Canonical};
use model::{ApiError, ErrorCode, Job, JobId, JobSpec, JobState};
use serde_json::json;
use std::sync::{Arc, Mutex};

const KEY_ID: &str = "k1";
const SECRET: &str = "00112233445566778899aabbccddeeff";

/// What the server saw: each request's method, path and query, after its signature checked.
#[derive(Debug, Default)]
struct Seen(Mutex<Vec<String>>);

fn header<'h>(headers: &'h HeaderMap, name: &str) -> &'h str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// Checks the request's signature as the API does, or answers 401.
fn must_be_signed(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), (StatusCode, Json<ApiError>)> {
    let hash = header(headers, signature::HEADER_CONTENT_SHA256);
    let canonical = Canonical {
        method: method.as_str(),
        host: header(headers, "host"),
        path: uri.path(),
        query: uri.query().unwrap_or_default(),
        timestamp_s: header(headers, signature::HEADER_TIMESTAMP)
            .parse()
            .unwrap_or(0),
        nonce: header(headers, signature::HEADER_NONCE),
        body_sha256_hex: hash,
    };
    let signed = header(headers, signature::HEADER_KEY) == KEY_ID
        && hash == signature::body_sha256_hex(body)
        && canonical.verify(
            &signature::signing_key(SECRET).unwrap(),
            header(headers, signature::HEADER_SIGNATURE),
        );
    if signed {
        return Ok(());
    }
    let error = ApiError::new(ErrorCode::Unauthorized, "bad signature");
    Err((StatusCode::UNAUTHORIZED, Json(error)))
}

fn job(id: u64, function: &str) -> Job {
    Job {
        id: JobId(id),
        function: function.into(),
        function_version: 1,
        input: json!({}),
        files: vec![],
        priority: 0,
        idempotency_key: None,
        state: JobState::Queued,
        attempts: vec![],
        tries: 0,
        submitted_at_ms: 1,
        not_before_ms: 0,
        finished_at_ms: None,
        output: None,
        objects: vec![],
        error: None,
        run: None,
        submitted_by: None,
        throttles: Vec::new(),
    }
}

/// Every route checks the signature first, then records the call.
async fn signed(
    State(seen): State<Arc<Seen>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(Method, Uri, Bytes), Response> {
    must_be_signed(&method, &uri, &headers, &body).map_err(IntoResponse::into_response)?;
    seen.0.lock().unwrap().push(format!("{method} {uri}"));
    Ok((method, uri, body))
}

fn server(seen: Arc<Seen>) -> Router {
    Router::new()
        .route(
            "/v1/jobs/{id}",
            get(
                |Path(id): Path<u64>, state, method, uri, headers, body| async move {
                    signed(state, method, uri, headers, body).await?;
                    if id == 7 {
                        Ok(Json(job(7, "hello")).into_response())
                    } else {
                        let error = ApiError::new(ErrorCode::NotFound, format!("no job {id}"));
                        Ok::<_, Response>((StatusCode::NOT_FOUND, Json(error)).into_response())
                    }
                },
            ),
        )
        .route(
            "/v1/jobs",
            post(|state, method, uri, headers, body| async move {
                let (_, _, body) = signed(state, method, uri, headers, body).await?;
                let spec: JobSpec = serde_json::from_slice(&body).expect("a job spec");
                Ok::<_, Response>(Json(job(8, &spec.function)))
            })
            .get(|state, method, uri, headers, body| async move {
                let (_, uri, _) = signed(state, method, uri, headers, body).await?;
                let query = uri.query().unwrap_or_default().to_string();
                let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
                    .into_owned()
                    .collect();
                let mut found = job(9, "hello");
                found.idempotency_key = pairs
                    .into_iter()
                    .find(|(k, _)| k == "idempotency_key")
                    .map(|(_, v)| v);
                Ok::<_, Response>(Json(json!({"jobs": [found], "next_before": null})))
            }),
        )
        .route(
            "/v1/objects/{*key}",
            put(|state, method, uri, headers, body: Bytes| async move {
                let (_, _, body) = signed(state, method, uri, headers, body).await?;
                Ok::<_, Response>(Json(json!({"bytes": body.len()})))
            }),
        )
        .route(
            "/v1/functions",
            get(|| async { (StatusCode::BAD_GATEWAY, "upstream went away") }),
        )
        .with_state(seen)
}

/// Serves the test server on a free port until the test ends; returns a client for it.
async fn must_serve(credentials: Credentials) -> (Client, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = server(seen.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    // The test server speaks plain HTTP; a bare host:port would mean HTTPS.
    (Client::new(&format!("http://{addr}"), credentials), seen)
}

fn credentials(secret: &str) -> Credentials {
    Credentials {
        key_id: KEY_ID.into(),
        secret: secret.into(),
    }
}

#[tokio::test]
async fn signed_calls_get_typed_answers() {
    let (client, seen) = must_serve(credentials(SECRET)).await;
    assert_eq!(client.job(JobId(7)).await.unwrap().function, "hello");
    let spec = JobSpec {
        function: "transcode".into(),
        input: json!({"bitrate": 128}),
        files: vec!["uploads/a.wav".into()],
        priority: 3,
        idempotency_key: None,
    };
    assert_eq!(client.submit(&spec).await.unwrap().function, "transcode");
    // The query is signed as sent, reserved characters encoded.
    let filter = JobFilter {
        idempotency_key: Some("ingest:a b&c=d".into()),
        limit: Some(5),
        ..JobFilter::default()
    };
    let page = client.list_jobs(&filter).await.unwrap();
    assert_eq!(
        page.jobs[0].idempotency_key.as_deref(),
        Some("ingest:a b&c=d")
    );
    // An upload is streamed from the file; its hash is signed before it is sent.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("song.wav");
    std::fs::write(&file, vec![7u8; 300_000]).unwrap();
    assert_eq!(
        client.put_object("uploads/song.wav", &file).await.unwrap(),
        300_000
    );
    let seen = seen.0.lock().unwrap().clone();
    let expected = [
        "GET /v1/jobs/7",
        "POST /v1/jobs",
        "GET /v1/jobs?idempotency_key=ingest%3Aa+b%26c%3Dd&limit=5",
        "PUT /v1/objects/uploads/song.wav",
    ];
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn errors_come_back_with_their_status_and_code() {
    let (client, _) = must_serve(credentials(SECRET)).await;
    let missing = client.job(JobId(8)).await.unwrap_err();
    assert_eq!(missing.code(), Some(ErrorCode::NotFound));
    assert!(
        matches!(missing, ClientError::Api { status: 404, .. }),
        "{missing:?}"
    );

    // An answer that is not `{code, message}` (a proxy's) is `internal`, with what it said.
    match client.functions().await.unwrap_err() {
        ClientError::Api { status, error } => {
            assert_eq!((status, error.code), (502, ErrorCode::Internal));
            assert!(error.message.contains("upstream went away"), "{error:?}");
        }
        other => panic!("expected an API error, got {other:?}"),
    }

    let (forger, _) = must_serve(credentials("ffeeddccbbaa99887766554433221100")).await;
    let refused = forger.job(JobId(7)).await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::Unauthorized));

    // No server at all: a port that was just free.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let nobody = Client::new(&format!("http://{free}"), credentials(SECRET));
    let unreachable = nobody.job(JobId(7)).await.unwrap_err();
    assert!(
        matches!(unreachable, ClientError::Http(_)),
        "{unreachable:?}"
    );
    assert_eq!(unreachable.code(), None);
}
