//! Routes that start jobs without `POST /v1/jobs`: the synchronous invoke of a function,
//! triggers (cron schedules and event subscriptions) and CloudEvents ingestion.

use crate::error::{fail, parse_json, Failure};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use model::{ApiError, ErrorCode, Job, JobSpec, JobState, Trigger, TriggerSpec};
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

/// How long an invoke waits for its job unless the call says otherwise.
const INVOKE_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// The longest an invoke may wait; past its time-out it answers 202 with the job's id.
pub(crate) const INVOKE_TIMEOUT_MS_MAX: u64 = 300_000;

type Answer<T> = Result<T, Failure>;

fn query<T>(q: Result<Query<T>, axum::extract::rejection::QueryRejection>) -> Answer<T> {
    q.map(|Query(q)| q)
        .map_err(|e| fail(ErrorCode::InvalidInput, e.body_text()))
}

// --- invoke ---

/// The body of an invoke: a job spec without its function (every field optional).
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct InvokeBody {
    #[serde(default)]
    input: serde_json::Value,
    #[serde(default)]
    files: Vec<String>,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InvokeQuery {
    timeout_ms: Option<u64>,
}

/// The error a failed job answers with: its own code if it is one of the platform's attempt
/// outcomes (or `invalid_input`, which functions use for input they refuse), else
/// `function_failed`; the message names the job and the code the function gave.
fn job_failure(job: &Job) -> Failure {
    let (code, message) = job
        .error
        .as_ref()
        .map_or(("cancelled", "no error recorded"), |e| {
            (e.code.as_str(), e.message.as_str())
        });
    let passed_on = ErrorCode::parse(code).filter(|c| {
        matches!(
            c,
            ErrorCode::InvalidInput
                | ErrorCode::UnsupportedFormat
                | ErrorCode::Timeout
                | ErrorCode::WorkerCrashed
                | ErrorCode::Cancelled
                | ErrorCode::FunctionFailed
                | ErrorCode::MemoryLimit
                | ErrorCode::SpawnFailed
                | ErrorCode::NodeLost
                | ErrorCode::NodeRestarted
                | ErrorCode::NodeRemoved
                | ErrorCode::Stuck
        )
    });
    Failure(ApiError::new(
        passed_on.unwrap_or(ErrorCode::FunctionFailed),
        format!("job {} {}: {code}: {message}", job.id, job.state.as_str()),
    ))
}

/// Runs a job of the function and answers with its output: 200 once it succeeded, its error
/// once it failed, 202 with its id (to follow with `GET /v1/jobs/{id}/wait`) if it is still
/// queued or running at the time-out.
pub(crate) async fn invoke(
    State(app): State<AppState>,
    Path(name): Path<String>,
    q: Result<Query<InvokeQuery>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> Answer<Response> {
    let q = query(q)?;
    let timeout_ms = q.timeout_ms.unwrap_or(INVOKE_TIMEOUT_MS_DEFAULT);
    if timeout_ms > INVOKE_TIMEOUT_MS_MAX {
        return Err(fail(
            ErrorCode::InvalidInput,
            format!("timeout_ms is at most {INVOKE_TIMEOUT_MS_MAX}"),
        ));
    }
    let body: InvokeBody = if body.iter().all(u8::is_ascii_whitespace) {
        InvokeBody::default()
    } else {
        parse_json(&body)?
    };
    let spec = JobSpec {
        function: name,
        input: body.input,
        files: body.files,
        priority: body.priority,
        idempotency_key: body.idempotency_key,
    };
    let job = app
        .node
        .invoke(spec, Duration::from_millis(timeout_ms))
        .await?;
    match job.state {
        JobState::Succeeded => Ok(Json(json!({
            "id": job.id,
            "output": job.output,
            "objects": job.objects,
        }))
        .into_response()),
        JobState::Failed | JobState::Cancelled => Err(job_failure(&job)),
        JobState::Queued | JobState::Running => Ok((
            StatusCode::ACCEPTED,
            [(header::LOCATION, format!("/v1/jobs/{}", job.id))],
            Json(json!({ "id": job.id, "state": job.state.as_str() })),
        )
            .into_response()),
    }
}

// --- triggers ---

/// A trigger as the API shows it: the stored record and, for an active cron trigger, when
/// it fires next; for a bucket or Kafka trigger, how its source fares (`status`) when the
/// node that answers reads it (the leader, and a node that holds Kafka partitions); for a
/// Kafka trigger, per partition its owner node, epoch, cursor and (on the leader) lag.
fn view(node: &node::Node, trigger: &Trigger) -> serde_json::Value {
    let mut value = json!(trigger);
    let next = trigger
        .spec
        .cron
        .as_ref()
        .filter(|_| !trigger.paused)
        .and_then(|c| c.schedule().ok())
        .and_then(|s| s.next_after(trigger.cursor_ms.max(node::now_ms())));
    if let (Some(next), Some(map)) = (next, value.as_object_mut()) {
        map.insert("next_tick_ms".into(), json!(next));
    }
    if let (Some(status), Some(map)) = (
        node.source_status(&trigger.spec.name),
        value.as_object_mut(),
    ) {
        map.insert("status".into(), json!(status));
    }
    let partitions = node.kafka_partitions(trigger);
    if let (false, Some(map)) = (partitions.is_empty(), value.as_object_mut()) {
        map.insert("partitions".into(), json!(partitions));
    }
    value
}

pub(crate) async fn create_trigger(
    State(app): State<AppState>,
    body: Bytes,
) -> Answer<(StatusCode, Json<serde_json::Value>)> {
    let spec: TriggerSpec = parse_json(&body)?;
    // Checked here too, so a bad spec costs no log entry.
    spec.validate().map_err(trigger_failure)?;
    let trigger = app.node.create_trigger(spec).await?;
    Ok((StatusCode::CREATED, Json(view(&app.node, &trigger))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReadQuery {
    #[serde(default)]
    stale: bool,
}

pub(crate) async fn list_triggers(
    State(app): State<AppState>,
    q: Result<Query<ReadQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer<Json<serde_json::Value>> {
    if !query(q)?.stale {
        app.node.sync().await?;
    }
    let triggers: Vec<serde_json::Value> = app
        .node
        .read(|s| s.triggers().map(|t| view(&app.node, t)).collect());
    Ok(Json(json!({ "triggers": triggers })))
}

pub(crate) async fn get_trigger(
    State(app): State<AppState>,
    Path(name): Path<String>,
    q: Result<Query<ReadQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer<Json<serde_json::Value>> {
    if !query(q)?.stale {
        app.node.sync().await?;
    }
    Ok(Json(view(&app.node, &app.node.trigger(&name)?)))
}

pub(crate) async fn delete_trigger(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Answer<StatusCode> {
    app.node.delete_trigger(name).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn pause_trigger(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Answer<Json<serde_json::Value>> {
    let trigger = app.node.pause_trigger(name, true).await?;
    Ok(Json(view(&app.node, &trigger)))
}

pub(crate) async fn resume_trigger(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Answer<Json<serde_json::Value>> {
    let trigger = app.node.pause_trigger(name, false).await?;
    Ok(Json(view(&app.node, &trigger)))
}

// --- events ---

fn trigger_failure(e: triggers::Error) -> Failure {
    let code = match e.code {
        triggers::Code::InvalidInput => ErrorCode::InvalidInput,
        triggers::Code::InvalidEvent => ErrorCode::InvalidEvent,
        triggers::Code::TooLarge => ErrorCode::TooLarge,
        triggers::Code::SchemaMismatch => ErrorCode::SchemaMismatch,
    };
    fail(code, e.message)
}

/// CloudEvents 1.0 in any of the HTTP binding's three modes, told apart by the content type:
/// `application/cloudevents-batch+json` (batch), `application/cloudevents+json`
/// (structured), anything else binary (`ce-*` headers). Every event is checked before any
/// job is submitted: one malformed event refuses the call and starts nothing.
pub(crate) async fn ingest_events(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer<Json<serde_json::Value>> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let essence = content_type
        .and_then(|t| t.split(';').next())
        .map(|t| t.trim().to_ascii_lowercase());
    let events = match essence.as_deref() {
        Some("application/cloudevents-batch+json") => triggers::parse_batch(&body),
        Some("application/cloudevents+json") => triggers::parse_structured(&body).map(|e| vec![e]),
        _ => triggers::parse_binary(
            headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())),
            content_type,
            &body,
        )
        .map(|e| vec![e]),
    }
    .map_err(trigger_failure)?;
    let ingested = app.node.ingest(events).await?;
    Ok(Json(json!({ "events": ingested })))
}
