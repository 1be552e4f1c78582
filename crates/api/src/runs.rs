//! Route handlers for workflows and runs: parse, call the node, shape the answer.

use crate::error::{fail, parse_json, Failure};
use crate::routes::{page_limit, ReadQuery, WAIT_TIMEOUT_MS_MAX};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use model::workflow::{Control, RunStatus, WorkflowSpec};
use model::{ErrorCode, RunFilter, RUNS_LIST_MAX};
use node::RunView;
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

type Answer<T> = Result<T, Failure>;

/// Runs per list answer when the caller names no limit.
const RUNS_LIST_DEFAULT: usize = 100;

fn run_id(raw: &str) -> Answer<u64> {
    raw.parse()
        .map_err(|_| fail(ErrorCode::InvalidInput, format!("{raw:?} is not a run id")))
}

/// A wait's `timeout_ms` (30 s when not given, at most `WAIT_TIMEOUT_MS_MAX`).
fn wait_timeout(timeout_ms: Option<u64>) -> Answer<Duration> {
    let timeout_ms = timeout_ms.unwrap_or(30_000);
    if timeout_ms > WAIT_TIMEOUT_MS_MAX {
        return Err(fail(
            ErrorCode::InvalidInput,
            format!("timeout_ms is at most {WAIT_TIMEOUT_MS_MAX}"),
        ));
    }
    Ok(Duration::from_millis(timeout_ms))
}

/// The body is the spec as TOML text. The answer is the spec with its version and, if it
/// has URL hooks, `hook_secrets`: the secret each URL's posts are signed with (shown here
/// only).
pub(crate) async fn deploy_workflow(
    State(app): State<AppState>,
    body: Bytes,
) -> Answer<(StatusCode, Json<serde_json::Value>)> {
    let toml = std::str::from_utf8(&body).map_err(|_| {
        fail(
            ErrorCode::InvalidInput,
            "a workflow spec is UTF-8 TOML text",
        )
    })?;
    let spec = app.node.deploy_workflow(toml).await?;
    let secrets = app.node.hook_secrets(&spec);
    let mut answer = serde_json::to_value(spec)
        .map_err(|e| fail(ErrorCode::Internal, format!("spec not encodable: {e}")))?;
    if !secrets.is_empty() {
        answer["hook_secrets"] = json!(secrets);
    }
    Ok((StatusCode::CREATED, Json(answer)))
}

/// Makes the read that follows linearizable unless the caller asked for this node's state
/// as it is (`?stale=true`), as every other read route does.
async fn catch_up(app: &AppState, stale: bool) -> Answer<()> {
    if !stale {
        app.node.sync().await?;
    }
    Ok(())
}

pub(crate) async fn list_workflows(
    State(app): State<AppState>,
    query: Result<Query<ReadQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer<Json<serde_json::Value>> {
    let Query(q) = query.map_err(|e| fail(ErrorCode::InvalidInput, e.body_text()))?;
    catch_up(&app, q.stale).await?;
    Ok(Json(json!({ "workflows": app.node.workflows() })))
}

pub(crate) async fn get_workflow(
    State(app): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<ReadQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer<Json<WorkflowSpec>> {
    let Query(q) = query.map_err(|e| fail(ErrorCode::InvalidInput, e.body_text()))?;
    catch_up(&app, q.stale).await?;
    Ok(Json(app.node.workflow(&name)?))
}

/// The longest window statistics look back over.
const STATS_WINDOW_MAX: std::time::Duration = std::time::Duration::from_secs(366 * 24 * 3600);
/// The window when a call names none.
const STATS_WINDOW_DEFAULT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StatsQuery {
    /// A duration such as `1h` or `7d`.
    window: Option<String>,
    #[serde(default)]
    stale: bool,
}

pub(crate) async fn workflow_stats(
    State(app): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<StatsQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer<Json<serde_json::Value>> {
    let Query(q) = query.map_err(|e| fail(ErrorCode::InvalidInput, e.body_text()))?;
    let window = match q.window.as_deref() {
        None => STATS_WINDOW_DEFAULT,
        Some(text) => humantime::parse_duration(text)
            .ok()
            .filter(|w| !w.is_zero() && *w <= STATS_WINDOW_MAX)
            .ok_or_else(|| {
                fail(
                    ErrorCode::InvalidInput,
                    format!("window {text:?} is not a duration from 1s to 366d (e.g. 1h, 7d)"),
                )
            })?,
    };
    catch_up(&app, q.stale).await?;
    Ok(Json(app.node.workflow_stats(&name, window)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartRun {
    workflow: String,
    #[serde(default)]
    input: serde_json::Value,
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// 201 with the new run, or 200 with the run an earlier start with the same idempotency key
/// made (`existing: true`).
pub(crate) async fn start_run(
    State(app): State<AppState>,
    body: Bytes,
) -> Answer<(StatusCode, Json<serde_json::Value>)> {
    let start: StartRun = parse_json(&body)?;
    let (run, existing) = app
        .node
        .start_run(start.workflow, start.input, start.idempotency_key)
        .await?;
    let mut answer = serde_json::to_value(run)
        .map_err(|e| fail(ErrorCode::Internal, format!("run not encodable: {e}")))?;
    answer["existing"] = json!(existing);
    let status = if existing {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(answer)))
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct InvokeRun {
    #[serde(default)]
    input: serde_json::Value,
    #[serde(default)]
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InvokeRunQuery {
    timeout_ms: Option<u64>,
}

/// Starts a run of the workflow and answers once it ended: 200 with the run (its `state`
/// says how it ended), or 202 with the run still running at the time-out (follow it with
/// `GET /v1/runs/{id}/wait`). `existing: true` when the idempotency key named an earlier run.
pub(crate) async fn invoke_workflow(
    State(app): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<InvokeRunQuery>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> Answer<axum::response::Response> {
    use axum::response::IntoResponse;
    let Query(q) = query.map_err(|e| fail(ErrorCode::InvalidInput, e.body_text()))?;
    let timeout = wait_timeout(q.timeout_ms)?;
    let invoke: InvokeRun = if body.iter().all(u8::is_ascii_whitespace) {
        InvokeRun::default()
    } else {
        parse_json(&body)?
    };
    let (run, existing) = app
        .node
        .invoke_run(name, invoke.input, invoke.idempotency_key, timeout)
        .await?;
    let id = run.summary.id;
    let running = run.summary.state == RunStatus::Running;
    let mut answer = serde_json::to_value(run)
        .map_err(|e| fail(ErrorCode::Internal, format!("run not encodable: {e}")))?;
    answer["existing"] = json!(existing);
    Ok(if running {
        (
            StatusCode::ACCEPTED,
            [(axum::http::header::LOCATION, format!("/v1/runs/{id}"))],
            Json(answer),
        )
            .into_response()
    } else {
        Json(answer).into_response()
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunsQuery {
    workflow: Option<String>,
    state: Option<String>,
    limit: Option<usize>,
    #[serde(default)]
    stale: bool,
}

pub(crate) async fn list_runs(
    State(app): State<AppState>,
    query: Result<Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer<Json<serde_json::Value>> {
    let Query(q) = query.map_err(|e| fail(ErrorCode::InvalidInput, e.body_text()))?;
    let state = match q.state.as_deref() {
        None => None,
        Some(raw) => Some(
            serde_json::from_value::<RunStatus>(json!(raw)).map_err(|_| {
                fail(
                    ErrorCode::InvalidInput,
                    format!("{raw:?} is not a run state (running, succeeded, failed, aborted)"),
                )
            })?,
        ),
    };
    let limit = page_limit(q.limit, RUNS_LIST_DEFAULT, RUNS_LIST_MAX)?;
    let filter = RunFilter {
        workflow: q.workflow,
        state,
    };
    catch_up(&app, q.stale).await?;
    let runs = app.node.runs(&filter, limit);
    Ok(Json(json!({ "runs": runs })))
}

pub(crate) async fn get_run(
    State(app): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<ReadQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer<Json<RunView>> {
    let Query(q) = query.map_err(|e| fail(ErrorCode::InvalidInput, e.body_text()))?;
    let id = run_id(&id)?;
    catch_up(&app, q.stale).await?;
    Ok(Json(app.node.get_run(id)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WaitQuery {
    timeout_ms: Option<u64>,
    /// Answer as soon as the run's revision is not this one (a change), or it finishes.
    revision: Option<u64>,
}

pub(crate) async fn wait_run(
    State(app): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer<Json<RunView>> {
    let Query(q) = query.map_err(|e| fail(ErrorCode::InvalidInput, e.body_text()))?;
    let timeout = wait_timeout(q.timeout_ms)?;
    let id = run_id(&id)?;
    app.node.sync().await?;
    Ok(Json(app.node.wait_run(id, q.revision, timeout).await?))
}

/// The body is the control: `{"control": "retry", "step": "x"}`, `{"control": "skip",
/// "step": "x"}`, `{"control": "abort"}`, `{"control": "restart", "from": "x"}`.
pub(crate) async fn control_run(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer<Json<RunView>> {
    let id = run_id(&id)?;
    let control: Control = parse_json(&body)?;
    Ok(Json(app.node.control_run(id, control).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkBody {
    control: node::BulkControl,
}

/// A control on every run of a workflow it fits: `{"control": "retry"}` (every failed run)
/// or `{"control": "abort"}` (every running run); at most `node::BULK_RUNS_MAX` in one call,
/// `more: true` says to call again.
pub(crate) async fn control_workflow_runs(
    State(app): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Answer<Json<node::BulkOutcome>> {
    let bulk: BulkBody = parse_json(&body)?;
    app.node.sync().await?;
    Ok(Json(app.node.control_runs(&name, bulk.control).await?))
}
