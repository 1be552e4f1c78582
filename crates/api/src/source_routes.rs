//! Routes of the source catalogue: register a Kafka topic, a bucket prefix or the
//! CloudEvents ingest as a named source with its owner, schema and dead-letter destination,
//! list and read them with their counts, delete one no trigger reads.

use crate::error::{fail, parse_json, Failure};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use model::{ErrorCode, Source, SourceSpec};
use serde::Deserialize;
use serde_json::json;

type Answer<T> = Result<T, Failure>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReadQuery {
    #[serde(default)]
    stale: bool,
    /// With each source, its samples of the latest hour (the dashboard's chart).
    #[serde(default)]
    samples: bool,
}

fn query(
    q: Result<Query<ReadQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer<ReadQuery> {
    q.map(|Query(q)| q)
        .map_err(|e| fail(ErrorCode::InvalidInput, e.body_text()))
}

/// A source as the API shows it: its spec, what the log counted, what the answering node
/// saw of its records (`seen`: records and bytes in, Kafka lag per partition), the triggers
/// that read it, and with `samples` its latest hour of samples.
fn view(node: &node::Node, source: &Source, samples: bool) -> serde_json::Value {
    let name = &source.spec.name;
    let triggers: Vec<String> = node.read(|s| {
        s.triggers()
            .filter(|t| t.spec.source.as_deref() == Some(name))
            .map(|t| t.spec.name.clone())
            .collect()
    });
    let mut value = json!({
        "spec": source.spec,
        "created_at_ms": source.created_at_ms,
        "counts": source.counts,
        "seen": node.source_seen(name),
        "triggers": triggers,
    });
    if samples {
        value["samples"] = json!(node.source_samples(name));
    }
    value
}

pub(crate) async fn register_source(
    State(app): State<AppState>,
    body: Bytes,
) -> Answer<(StatusCode, Json<serde_json::Value>)> {
    let spec: SourceSpec = parse_json(&body)?;
    // Checked here too, so a bad spec costs no log entry.
    spec.validate().map_err(model::source_error)?;
    let source = app.node.register_source(spec).await?;
    Ok((StatusCode::CREATED, Json(view(&app.node, &source, false))))
}

pub(crate) async fn list_sources(
    State(app): State<AppState>,
    q: Result<Query<ReadQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer<Json<serde_json::Value>> {
    let q = query(q)?;
    if !q.stale {
        app.node.sync().await?;
    }
    let sources: Vec<Source> = app.node.read(|s| s.sources().cloned().collect());
    let sources: Vec<serde_json::Value> = sources
        .iter()
        .map(|s| view(&app.node, s, q.samples))
        .collect();
    Ok(Json(json!({ "sources": sources })))
}

pub(crate) async fn get_source(
    State(app): State<AppState>,
    Path(name): Path<String>,
    q: Result<Query<ReadQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer<Json<serde_json::Value>> {
    let q = query(q)?;
    if !q.stale {
        app.node.sync().await?;
    }
    Ok(Json(view(&app.node, &app.node.source(&name)?, q.samples)))
}

pub(crate) async fn delete_source(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Answer<StatusCode> {
    app.node.delete_source(name).await?;
    Ok(StatusCode::NO_CONTENT)
}
