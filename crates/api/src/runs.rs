//! Route handlers for workflows and runs: parse, call the node, shape the answer.

use crate::error::{fail, parse_json, Failure};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use model::workflow::{Control, RunStatus, WorkflowSpec};
use model::{ErrorCode, RunFilter};
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

/// The body is the spec as TOML text.
pub(crate) async fn deploy_workflow(
    State(app): State<AppState>,
    body: Bytes,
) -> Answer<(StatusCode, Json<WorkflowSpec>)> {
    let toml = std::str::from_utf8(&body).map_err(|_| {
        fail(
            ErrorCode::InvalidInput,
            "a workflow spec is UTF-8 TOML text",
        )
    })?;
    let spec = app.node.deploy_workflow(toml).await?;
    Ok((StatusCode::CREATED, Json(spec)))
}

pub(crate) async fn list_workflows(State(app): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({ "workflows": app.node.workflows() }))
}

pub(crate) async fn get_workflow(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Answer<Json<WorkflowSpec>> {
    Ok(Json(app.node.workflow(&name)?))
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunsQuery {
    workflow: Option<String>,
    state: Option<String>,
    limit: Option<usize>,
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
    let filter = RunFilter {
        workflow: q.workflow,
        state,
    };
    let runs = app.node.runs(&filter, q.limit.unwrap_or(RUNS_LIST_DEFAULT));
    Ok(Json(json!({ "runs": runs })))
}

pub(crate) async fn get_run(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Answer<Json<RunView>> {
    Ok(Json(app.node.get_run(run_id(&id)?)?))
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
    let timeout = Duration::from_millis(q.timeout_ms.unwrap_or(30_000));
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
