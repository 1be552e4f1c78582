//! Route handlers: parse, call the node, shape the answer. No logic of their own beyond that.

use crate::auth::{may_read_job, Caller, SignedBodyHash};
use crate::error::{fail, parse_json, Failure};
use crate::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::StreamExt;
use model::{ErrorCode, FunctionSpec, Job, JobId, JobSpec, JobState, KeyId, Scope, SubmitResult};
use node::registry_role;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Largest uploaded object.
pub(crate) const OBJECT_BYTES_MAX: u64 = 2 * 1024 * 1024 * 1024;
/// Jobs per batch submit.
const BATCH_JOBS_MAX: usize = 10_000;
/// Jobs per list page.
const LIST_LIMIT_MAX: usize = 1_000;
/// Longest wait for a job to finish.
pub(crate) const WAIT_TIMEOUT_MS_MAX: u64 = 300_000;
/// Jobs looked at per list call when filtering, so a rare filter cannot scan everything.
const LIST_SCAN_MAX: usize = 100_000;

type Answer<T> = Result<T, Failure>;

pub(crate) async fn dashboard() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        crate::DASHBOARD_HTML,
    )
        .into_response()
}

pub(crate) async fn dashboard_runs_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        crate::DASHBOARD_RUNS_JS,
    )
        .into_response()
}

pub(crate) async fn dashboard_sources_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        crate::DASHBOARD_SOURCES_JS,
    )
        .into_response()
}

pub(crate) async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

pub(crate) async fn readyz(State(app): State<AppState>) -> Response {
    let raft = app.node.raft_figures();
    let body = json!({ "ready": app.node.ready(), "leader": raft.leader, "term": raft.term });
    let status = if app.node.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// OpenMetrics if the scraper asks for it (Prometheus does), else the classic text format.
pub(crate) async fn metrics(
    State(app): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let openmetrics = accept.contains("application/openmetrics-text");
    let content_type = if openmetrics {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    (
        [(header::CONTENT_TYPE, content_type)],
        app.node.metrics_text(openmetrics),
    )
        .into_response()
}

pub(crate) async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::OPENAPI_JSON,
    )
        .into_response()
}

pub(crate) async fn not_found() -> Failure {
    fail(ErrorCode::NotFound, "no such route; see /v1/openapi.json")
}

/// A page size: `default` if unset, refused outside 1 to `max` (as the document says).
pub(crate) fn page_limit(limit: Option<usize>, default: usize, max: usize) -> Answer<usize> {
    match limit.unwrap_or(default) {
        limit @ 1.. if limit <= max => Ok(limit),
        _ => Err(fail(
            ErrorCode::InvalidInput,
            format!("limit is 1 to {max}"),
        )),
    }
}

fn job_id(raw: &str) -> Answer<JobId> {
    raw.parse()
        .map(JobId)
        .map_err(|_| fail(ErrorCode::InvalidInput, format!("{raw:?} is not a job id")))
}

// --- functions ---

pub(crate) async fn deploy_function(
    State(app): State<AppState>,
    body: Bytes,
) -> Answer<(StatusCode, Json<serde_json::Value>)> {
    let spec: FunctionSpec = parse_json(&body)?;
    let name = spec.name.clone();
    let version = app.node.deploy(spec).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "name": name, "version": version })),
    ))
}

pub(crate) async fn list_functions(State(app): State<AppState>) -> Json<serde_json::Value> {
    let functions: Vec<FunctionSpec> = app.node.read(|s| s.functions().cloned().collect());
    Json(json!({ "functions": functions }))
}

pub(crate) async fn get_function(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Answer<Json<FunctionSpec>> {
    app.node
        .read(|s| s.function(&name).cloned())
        .map(Json)
        .ok_or_else(|| fail(ErrorCode::NotFound, format!("no function {name:?}")))
}

// --- jobs ---

#[derive(Serialize)]
struct Submitted {
    id: JobId,
    /// True when the idempotency key matched an earlier job.
    existing: bool,
}

pub(crate) async fn submit_job(
    State(app): State<AppState>,
    body: Bytes,
) -> Answer<(StatusCode, Json<serde_json::Value>)> {
    let spec: JobSpec = parse_json(&body)?;
    let mut results = app.node.submit(vec![spec]).await?;
    match results.pop() {
        Some(SubmitResult::Created(id)) => {
            Ok((StatusCode::CREATED, Json(json!(app.node.job(id)?))))
        }
        Some(SubmitResult::Existing(id)) => Ok((StatusCode::OK, Json(json!(app.node.job(id)?)))),
        Some(SubmitResult::Rejected(e)) => Err(Failure(e)),
        None => Err(fail(ErrorCode::Internal, "submit answered nothing")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    jobs: Vec<JobSpec>,
}

pub(crate) async fn submit_batch(
    State(app): State<AppState>,
    body: Bytes,
) -> Answer<Json<serde_json::Value>> {
    let batch: Batch = parse_json(&body)?;
    if batch.jobs.len() > BATCH_JOBS_MAX {
        return Err(fail(
            ErrorCode::TooLarge,
            format!("at most {BATCH_JOBS_MAX} jobs per batch"),
        ));
    }
    let results = app.node.submit(batch.jobs).await?;
    let results: Vec<serde_json::Value> = results
        .into_iter()
        .map(|r| match r {
            SubmitResult::Created(id) => json!(Submitted {
                id,
                existing: false
            }),
            SubmitResult::Existing(id) => json!(Submitted { id, existing: true }),
            SubmitResult::Rejected(e) => json!({ "error": e }),
        })
        .collect();
    Ok(Json(json!({ "results": results })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReadQuery {
    /// Read this node's state as it is, without first catching up with the leader.
    #[serde(default)]
    pub(crate) stale: bool,
}

pub(crate) async fn get_job(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    query: Result<Query<ReadQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer<Json<model::JobDetail>> {
    let Query(q) = query.map_err(|e| fail(ErrorCode::InvalidInput, e.body_text()))?;
    let id = job_id(&id)?;
    may_read_job(&app, &caller, id).await?;
    if !q.stale {
        app.node.sync().await?;
    }
    Ok(Json(app.node.job_detail(id)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    state: Option<String>,
    function: Option<String>,
    /// The job submitted with this idempotency key, if any (through the key's index, not
    /// a scan): how a client finds out whether it has submitted something before.
    idempotency_key: Option<String>,
    before: Option<u64>,
    limit: Option<usize>,
    #[serde(default)]
    stale: bool,
}

pub(crate) async fn list_jobs(
    State(app): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer<Json<serde_json::Value>> {
    let Query(q) = query.map_err(|e| fail(ErrorCode::InvalidInput, e.body_text()))?;
    let state = match &q.state {
        Some(s) => Some(
            JobState::parse(s)
                .ok_or_else(|| fail(ErrorCode::InvalidInput, format!("no job state {s:?}")))?,
        ),
        None => None,
    };
    let limit = page_limit(q.limit, 50, LIST_LIMIT_MAX)?;
    if !q.stale {
        app.node.sync().await?;
    }
    if let Some(key) = &q.idempotency_key {
        let jobs: Vec<_> = app.node.read(|s| {
            s.job_by_idempotency_key(key)
                .and_then(|id| s.job(id))
                .filter(|job| state.is_none_or(|st| job.state == st))
                .filter(|job| q.function.as_ref().is_none_or(|f| &job.function == f))
                .into_iter()
                .cloned()
                .collect()
        });
        return Ok(Json(json!({ "jobs": jobs, "next_before": null })));
    }
    let (jobs, next_before) = app.node.read(|s| {
        let mut jobs = Vec::new();
        let mut last_seen = None;
        for job in s.jobs_before(q.before.map(JobId)).take(LIST_SCAN_MAX) {
            last_seen = Some(job.id);
            let keep = state.is_none_or(|st| job.state == st)
                && q.function.as_ref().is_none_or(|f| &job.function == f);
            if keep {
                jobs.push(job.clone());
                if jobs.len() == limit {
                    break;
                }
            }
        }
        // A next page exists if anything older than the last job looked at remains.
        let next = last_seen.filter(|id| s.jobs_before(Some(*id)).next().is_some());
        (jobs, next)
    });
    Ok(Json(json!({ "jobs": jobs, "next_before": next_before })))
}

pub(crate) async fn cancel_job(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Answer<Json<Job>> {
    Ok(Json(app.node.cancel(job_id(&id)?).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WaitQuery {
    timeout_ms: Option<u64>,
}

pub(crate) async fn wait_job(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    query: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer<Json<Job>> {
    let Query(q) = query.map_err(|e| fail(ErrorCode::InvalidInput, e.body_text()))?;
    let timeout_ms = q.timeout_ms.unwrap_or(30_000);
    if timeout_ms > WAIT_TIMEOUT_MS_MAX {
        return Err(fail(
            ErrorCode::InvalidInput,
            format!("timeout_ms is at most {WAIT_TIMEOUT_MS_MAX}"),
        ));
    }
    let timeout = Duration::from_millis(timeout_ms);
    let id = job_id(&id)?;
    may_read_job(&app, &caller, id).await?;
    app.node.sync().await?;
    Ok(Json(app.node.wait(id, timeout).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogQuery {
    attempt: Option<u64>,
}

pub(crate) async fn job_logs(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    query: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer<Response> {
    let Query(q) = query.map_err(|e| fail(ErrorCode::InvalidInput, e.body_text()))?;
    let id = job_id(&id)?;
    may_read_job(&app, &caller, id).await?;
    // Linearizable, as a job's read is: through a node a little behind, the attempt's end (and
    // so its log) may not be applied yet, and an empty log would be answered.
    app.node.sync().await?;
    let job = app.node.job(id)?;
    let attempt = match q.attempt {
        Some(a) => model::AttemptId(a),
        None => job
            .attempts
            .last()
            .map(|a| a.id)
            .ok_or_else(|| fail(ErrorCode::NotFound, "the job has no attempt yet"))?,
    };
    let log = app.node.attempt_log(id, attempt).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], log).into_response())
}

// --- objects ---

pub(crate) async fn put_object(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(key): Path<String>,
    Extension(SignedBodyHash(signed_hash)): Extension<SignedBodyHash>,
    body: Body,
) -> Answer<(StatusCode, Json<serde_json::Value>)> {
    storage::parse_key(&key).map_err(|e| fail(ErrorCode::InvalidInput, e.to_string()))?;
    caller.may_upload(&key)?;
    let tmp = receive(&app, body, &signed_hash, OBJECT_BYTES_MAX).await?;
    let size = app
        .node
        .put_object(&key, tmp.path(), &signed_hash, OBJECT_BYTES_MAX)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "key": key, "size": size })),
    ))
}

/// Streams a body to a temporary file while hashing it, so a bad hash or an oversized body
/// never becomes an object. The file goes with its handle, also when the sender goes away and
/// the handler's future is dropped half-way.
async fn receive(
    app: &AppState,
    body: Body,
    signed_hash: &str,
    bytes_max: u64,
) -> Answer<tempfile::NamedTempFile> {
    let tmp_dir = app.node.receiving_dir();
    std::fs::create_dir_all(&tmp_dir).map_err(|e| io_failure(&e))?;
    let tmp = tempfile::Builder::new()
        .prefix("upload-")
        .tempfile_in(&tmp_dir)
        .map_err(|e| io_failure(&e))?;
    let mut file = tokio::fs::File::from_std(tmp.reopen().map_err(|e| io_failure(&e))?);
    let mut hasher = model::signature::BodyHasher::default();
    let mut size: u64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| fail(ErrorCode::InvalidInput, format!("upload broke off: {e}")))?;
        size += chunk.len() as u64;
        if size > bytes_max {
            return Err(fail(
                ErrorCode::TooLarge,
                format!("objects are at most {bytes_max} bytes"),
            ));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(|e| io_failure(&e))?;
    }
    file.flush().await.map_err(|e| io_failure(&e))?;
    if hasher.finish_hex() != signed_hash {
        return Err(fail(
            ErrorCode::Unauthorized,
            "body does not match its signed hash",
        ));
    }
    Ok(tmp)
}

/// An IO failure of this node's own files: the message names no path (an `io::Error` from
/// `tempfile` carries one), the node's log has the details.
fn io_failure(e: &std::io::Error) -> Failure {
    if e.raw_os_error() == Some(28) {
        fail(ErrorCode::StorageFull, "storage is full")
    } else {
        tracing::warn!(error = %e, "receiving an object failed");
        fail(
            ErrorCode::Internal,
            "receiving the object failed on the node",
        )
    }
}

fn object_answer(len: u64, stream: node::ObjectStream) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

pub(crate) async fn get_object(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(key): Path<String>,
) -> Answer<Response> {
    if !caller.reads_all {
        let job = Caller::job_of_object(&key).ok_or_else(|| {
            fail(
                ErrorCode::Forbidden,
                format!(
                    "key {} has no read scope and may read only its own jobs' outputs and logs",
                    caller.key
                ),
            )
        })?;
        may_read_job(&app, &caller, job).await?;
    }
    let (len, stream) = app.node.object_stream(&key).await?;
    Ok(object_answer(len, stream))
}

/// A peer fetches this node's copy of an object (cluster key only).
pub(crate) async fn peer_get_object(
    State(app): State<AppState>,
    Path(key): Path<String>,
) -> Answer<Response> {
    storage::parse_key(&key).map_err(|e| fail(ErrorCode::InvalidInput, e.to_string()))?;
    let (len, stream) = app.node.peer_object_stream(&key).await?;
    Ok(object_answer(len, stream))
}

/// A peer stores a copy of an object it wrote on this node (cluster key only), streamed.
pub(crate) async fn peer_put_object(
    State(app): State<AppState>,
    Path(key): Path<String>,
    Extension(SignedBodyHash(signed_hash)): Extension<SignedBodyHash>,
    body: Body,
) -> Answer<(StatusCode, Json<serde_json::Value>)> {
    storage::parse_key(&key).map_err(|e| fail(ErrorCode::InvalidInput, e.to_string()))?;
    let tmp = receive(&app, body, &signed_hash, node::OBJECT_COPY_BYTES_MAX).await?;
    let size = app.node.peer_object_put(&key, tmp.path()).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "key": key, "size": size })),
    ))
}

// --- keys ---

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    scopes: Vec<Scope>,
    /// The key expires this many seconds after it is created (at most [`KEY_TTL_S_MAX`]).
    #[serde(default)]
    ttl_s: Option<u64>,
}

/// The longest time-to-live a key may be given: ten years (beyond it, give none).
const KEY_TTL_S_MAX: u64 = 10 * 365 * 24 * 3600;

pub(crate) async fn create_key(
    State(app): State<AppState>,
    body: Bytes,
) -> Answer<(StatusCode, Json<serde_json::Value>)> {
    let new: NewKey = parse_json(&body)?;
    if new.scopes.is_empty() {
        return Err(fail(
            ErrorCode::InvalidInput,
            "a key needs at least one scope: admin, submit or read",
        ));
    }
    let ttl = match new.ttl_s {
        Some(0) => return Err(fail(ErrorCode::InvalidInput, "ttl_s must be at least 1")),
        Some(s) if s > KEY_TTL_S_MAX => {
            return Err(fail(
                ErrorCode::InvalidInput,
                format!("ttl_s is at most {KEY_TTL_S_MAX} (ten years); give none for a key that never expires"),
            ))
        }
        other => other.map(Duration::from_secs),
    };
    let key = app.node.create_key(new.scopes.clone(), ttl).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": key.id,
            "secret": key.secret,
            "scopes": new.scopes,
            "expires_at_ms": key.expires_at_ms,
        })),
    ))
}

pub(crate) async fn list_keys(State(app): State<AppState>) -> Answer<Json<serde_json::Value>> {
    app.node.sync().await?;
    let keys: Vec<serde_json::Value> = app.node.read(|s| {
        s.keys()
            .map(|k| {
                json!({
                    "id": k.id,
                    "scopes": k.scopes,
                    "created_at_ms": k.created_at_ms,
                    "revoked": k.revoked,
                    "expires_at_ms": k.expires_at_ms,
                    "last_used_ms": k.last_used_ms,
                })
            })
            .collect()
    });
    Ok(Json(json!({ "keys": keys })))
}

pub(crate) async fn revoke_key(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Answer<StatusCode> {
    app.node.revoke_key(KeyId(id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

// --- cluster ---

pub(crate) async fn cluster(State(app): State<AppState>) -> Json<serde_json::Value> {
    let raft = app.node.raft_figures();
    let nodes: Vec<serde_json::Value> = app.node.read(|s| {
        s.nodes()
            .map(|n| json!({ "id": n.id, "addr": n.addr, "slots": n.slots, "running": s.running_count(n.id) }))
            .collect()
    });
    Json(json!({
        "nodes": nodes,
        "leader": raft.leader,
        "term": raft.term,
        "commit_index": raft.commit_index,
        "snapshot_index": raft.snapshot_index,
        "applied_index": raft.applied_index,
        "raft": {
            "state": raft.server_state,
            "voters": raft.voter_ids,
            "learners": raft.learner_ids,
            "joint": raft.joint,
            "matched": raft.matched,
        },
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinRequest {
    addr: String,
    slots: u32,
    #[serde(default)]
    labels: Vec<String>,
    /// The joining node's certificate request (PEM), which the cluster CA signs.
    #[serde(default)]
    csr: Option<String>,
}

pub(crate) async fn join(
    State(app): State<AppState>,
    body: Bytes,
) -> Answer<Json<serde_json::Value>> {
    let req: JoinRequest = parse_json(&body)?;
    if req.addr.parse::<std::net::SocketAddr>().is_err() {
        return Err(fail(
            ErrorCode::InvalidInput,
            format!("{:?} is not a host:port address", req.addr),
        ));
    }
    let joined = app
        .node
        .join(req.addr, req.slots, req.labels, req.csr)
        .await?;
    let mut answer = json!({ "id": joined.id, "cluster_secret": joined.cluster_secret });
    if let Some(issued) = joined.issued {
        answer["certificate"] = issued.certificate_pem.into();
        answer["ca_certificate"] = issued.ca_pem.into();
        answer["ca_key"] = issued.ca_key_pem.into();
    }
    Ok(Json(answer))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    /// Only events numbered after this one (for polling).
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
    #[serde(default)]
    stale: bool,
}

/// Cluster events, oldest first: breaker changes, lost nodes, replaced voters, jobs waiting
/// for the cluster to change.
pub(crate) async fn list_events(
    State(app): State<AppState>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer<Json<serde_json::Value>> {
    let Query(q) = query.map_err(|e| fail(ErrorCode::InvalidInput, e.body_text()))?;
    if !q.stale {
        app.node.sync().await?;
    }
    let limit = page_limit(q.limit, 100, model::EVENTS_MAX)?;
    let events: Vec<model::Event> = app
        .node
        .read(|s| s.events_after(q.after).take(limit).cloned().collect());
    Ok(Json(json!({ "events": events })))
}

pub(crate) async fn list_nodes(State(app): State<AppState>) -> Answer<Json<serde_json::Value>> {
    app.node.sync().await?;
    let roles: std::collections::BTreeMap<u64, registry_role::Role> =
        app.node.members().into_iter().collect();
    let now = node::now_ms();
    let nodes: Vec<serde_json::Value> = app.node.read(|s| {
        s.nodes()
            .map(|n| {
                json!({
                    "id": n.id,
                    "addr": n.addr,
                    "status": n.status.as_str(),
                    "role": roles.get(&n.id).map_or("none", |r| match r {
                        registry_role::Role::Voter => "voter",
                        registry_role::Role::Learner => "learner",
                        registry_role::Role::Removed => "removed",
                    }),
                    "slots": n.slots,
                    "running": s.running_count(n.id),
                    "labels": n.labels,
                    "load": n.load,
                    "heartbeat_age_ms": now.saturating_sub(n.last_heartbeat_ms),
                })
            })
            .collect()
    });
    let raft = app.node.raft_figures();
    Ok(Json(
        json!({ "nodes": nodes, "leader": raft.leader, "term": raft.term }),
    ))
}

pub(crate) async fn node_action(
    State(app): State<AppState>,
    Path((id, action)): Path<(String, String)>,
) -> Answer<Json<serde_json::Value>> {
    let id: u64 = id
        .parse()
        .map_err(|_| fail(ErrorCode::InvalidInput, format!("{id:?} is not a node id")))?;
    app.node.node_action(id, &action).await?;
    Ok(Json(json!({ "id": id, "done": action })))
}

pub(crate) async fn get_config(State(app): State<AppState>) -> Answer<Json<serde_json::Value>> {
    app.node.sync().await?;
    let mut config = app.node.read(|s| s.config().raw().clone());
    // The webhook URL often carries a token: only whether one is set, and its host.
    if let Some(url) = config.get_mut(model::ConfigKey::AlertsWebhook.to_string().as_str()) {
        if !url.is_empty() {
            let host = url_host(url);
            *url = format!("(set: {host})");
        }
    }
    Ok(Json(json!({ "config": config })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigValue {
    value: String,
}

pub(crate) async fn set_config(
    State(app): State<AppState>,
    Path(key): Path<String>,
    body: Bytes,
) -> Answer<Json<serde_json::Value>> {
    let v: ConfigValue = parse_json(&body)?;
    match app.node.set_config(key.clone(), v.value.clone()).await? {
        // Shown here only: the webhook's posts are signed with it.
        Some(secret) => Ok(Json(
            json!({ "key": key, "value": v.value, "signing_secret": secret }),
        )),
        None => Ok(Json(json!({ "key": key, "value": v.value }))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Faults {
    /// The first form: this node sends no raft traffic to these nodes (`refuse`, outgoing).
    #[serde(default)]
    blocked_nodes: Vec<u64>,
    /// Rules per peer: refuse, drop or delay, outgoing, incoming or both.
    #[serde(default)]
    rules: Vec<node::FaultRule>,
}

/// Fault injection: replaces this node's rules for raft traffic with its peers (an empty body
/// heals). `blocked_nodes` is short for refusing outgoing traffic to each; a partition both
/// ways needs each side told about the other, or `both` rules on one side.
pub(crate) async fn set_faults(
    State(app): State<AppState>,
    body: Bytes,
) -> Answer<Json<serde_json::Value>> {
    let faults: Faults = parse_json(&body)?;
    let blocked = faults.blocked_nodes.iter().map(|&node| node::FaultRule {
        node,
        action: node::FaultAction::Refuse,
        delay_ms: 0,
        direction: node::Direction::Outgoing,
    });
    let rules = app.node.set_faults(blocked.chain(faults.rules).collect())?;
    let blocked_nodes: Vec<u64> = rules
        .iter()
        .filter(|r| {
            r.action == node::FaultAction::Refuse && r.direction != node::Direction::Incoming
        })
        .map(|r| r.node)
        .collect();
    Ok(Json(
        json!({ "blocked_nodes": blocked_nodes, "rules": rules }),
    ))
}

/// The sender of a raft RPC, as it signed it.
#[derive(Deserialize)]
pub(crate) struct RaftFrom {
    from: Option<String>,
}

/// Fault injection's checker: digests of the state this node applied, at fixed log indexes.
pub(crate) async fn state_digests(State(app): State<AppState>) -> Answer<Json<serde_json::Value>> {
    let digests = app.node.state_digests()?;
    Ok(Json(json!({
        "every_entries": node::STATE_DIGEST_EVERY_ENTRIES,
        "digests": digests,
    })))
}

pub(crate) async fn raft_rpc(
    State(app): State<AppState>,
    Path(kind): Path<String>,
    Query(sender): Query<RaftFrom>,
    body: Bytes,
) -> Answer<Response> {
    let from = sender.from.as_deref();
    let answer = app.node.raft_rpc(&kind, from, &body).await.map_err(|e| {
        let code = match e {
            node::RaftRpcError::Unavailable(_) => ErrorCode::Unavailable,
            node::RaftRpcError::StorageFull(_) => ErrorCode::StorageFull,
            node::RaftRpcError::UnknownKind(_) | node::RaftRpcError::Malformed(_) => {
                ErrorCode::InvalidInput
            }
        };
        fail(code, e.to_string())
    })?;
    Ok(([(header::CONTENT_TYPE, "application/json")], answer).into_response())
}

/// The host of a URL, without what follows it (a path may carry a token).
fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    // Credentials before an `@` are secrets too.
    authority.rsplit('@').next().unwrap_or_default()
}
