//! The HTTP API (axum): routes under `/v1`, request signing, `{code, message}` errors, health,
//! metrics and the OpenAPI document. This is the only crate that knows HTTP on the server
//! side; it talks to the node and nothing else.

mod auth;
mod error;
mod listener;
mod routes;
mod runs;
mod source_routes;
mod trigger_routes;

use auth::Nonces;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::{Extension, Router};
use node::Node;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The dashboard: one static page that signs its calls in the browser.
pub(crate) const DASHBOARD_HTML: &str = include_str!("dashboard/index.html");
/// The dashboard's runs view (runs, a run's DAG, its workflow's statistics), loaded by the page.
pub(crate) const DASHBOARD_RUNS_JS: &str = include_str!("dashboard/runs.js");
/// The dashboard's sources panel, served next to the page at `/sources.js`.
pub(crate) const DASHBOARD_SOURCES_JS: &str = include_str!("dashboard/sources.js");

/// The OpenAPI 3.1 document, written by hand and checked against the routes by a test.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

#[derive(Clone, Debug)]
pub(crate) struct AppState {
    node: Node,
    nonces: Arc<Nonces>,
}

/// Bodies of calls that carry none, or a small JSON object (keys, config, faults, node
/// actions, joins, reads).
const SMALL_BODY_BYTES_MAX: usize = 64 * 1024;
/// A function spec (its command, environment and policies).
const FUNCTION_BODY_BYTES_MAX: usize = 1024 * 1024;
/// One job: its spec around an input of at most `model::INPUT_BYTES_MAX`.
const JOB_BODY_BYTES_MAX: usize = model::INPUT_BYTES_MAX + 64 * 1024;
/// A batch of jobs.
const BATCH_BODY_BYTES_MAX: usize = 16 * 1024 * 1024;
/// A workflow spec: TOML text of at most `workflow::SPEC_BYTES_MAX`.
const WORKFLOW_BODY_BYTES_MAX: usize = model::workflow::SPEC_BYTES_MAX;
/// A run's start: its input of at most `model::RUN_INPUT_BYTES_MAX`, the workflow's name and
/// an idempotency key.
const RUN_BODY_BYTES_MAX: usize = model::RUN_INPUT_BYTES_MAX + 64 * 1024;
/// A trigger spec around an input of at most `triggers::TRIGGER_INPUT_BYTES_MAX`.
const TRIGGER_BODY_BYTES_MAX: usize = triggers::TRIGGER_INPUT_BYTES_MAX + 64 * 1024;
/// A source spec around a schema of at most `triggers::RECORD_SCHEMA_BYTES_MAX`.
const SOURCE_BODY_BYTES_MAX: usize = triggers::RECORD_SCHEMA_BYTES_MAX + 64 * 1024;
/// CloudEvents posted to `/v1/events/ingest` (one, or a batch).
const EVENTS_BODY_BYTES_MAX: usize = 4 * 1024 * 1024;

/// The whole router: public health routes plus the signed `/v1` API. Every signed route has
/// its own body limit; uploads stream under [`routes::OBJECT_BYTES_MAX`], copies between
/// nodes under [`node::OBJECT_COPY_BYTES_MAX`], and the raft route takes the registry's limit.
pub fn router(node: Node) -> Router {
    let app = AppState {
        node,
        nonces: Arc::new(Nonces::default()),
    };
    // The signature is checked only on a route and method that exist (an unknown one is a
    // 404 or 405, whoever asks); the limit sits outside it, so the check buffers no more.
    let signed = |route: MethodRouter<AppState>| -> MethodRouter<AppState> {
        route.route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            auth::require_signature,
        ))
    };
    let limited =
        |route: MethodRouter<AppState>, body_bytes_max: usize| -> MethodRouter<AppState> {
            let route: MethodRouter<AppState> =
                signed(route).layer(DefaultBodyLimit::max(body_bytes_max));
            route.layer(Extension(auth::BodyLimit(body_bytes_max)))
        };
    let small = |route: MethodRouter<AppState>| limited(route, SMALL_BODY_BYTES_MAX);
    Router::new()
        .route("/", get(routes::dashboard))
        .route("/runs.js", get(routes::dashboard_runs_js))
        .route("/sources.js", get(routes::dashboard_sources_js))
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/metrics", get(routes::metrics))
        .route("/v1/openapi.json", get(routes::openapi))
        .route(
            "/v1/functions",
            limited(
                post(routes::deploy_function).get(routes::list_functions),
                FUNCTION_BODY_BYTES_MAX,
            ),
        )
        .route("/v1/functions/{name}", small(get(routes::get_function)))
        .route(
            "/v1/functions/{name}/invoke",
            limited(post(trigger_routes::invoke), JOB_BODY_BYTES_MAX),
        )
        .route(
            "/v1/triggers",
            limited(
                post(trigger_routes::create_trigger).get(trigger_routes::list_triggers),
                TRIGGER_BODY_BYTES_MAX,
            ),
        )
        .route(
            "/v1/triggers/{name}",
            small(get(trigger_routes::get_trigger).delete(trigger_routes::delete_trigger)),
        )
        .route(
            "/v1/triggers/{name}/pause",
            small(post(trigger_routes::pause_trigger)),
        )
        .route(
            "/v1/triggers/{name}/resume",
            small(post(trigger_routes::resume_trigger)),
        )
        .route(
            "/v1/sources",
            limited(
                post(source_routes::register_source).get(source_routes::list_sources),
                SOURCE_BODY_BYTES_MAX,
            ),
        )
        .route(
            "/v1/sources/{name}",
            small(get(source_routes::get_source).delete(source_routes::delete_source)),
        )
        .route(
            "/v1/events/ingest",
            limited(post(trigger_routes::ingest_events), EVENTS_BODY_BYTES_MAX),
        )
        .route(
            "/v1/jobs",
            limited(
                post(routes::submit_job).get(routes::list_jobs),
                JOB_BODY_BYTES_MAX,
            ),
        )
        .route(
            "/v1/jobs/batch",
            limited(post(routes::submit_batch), BATCH_BODY_BYTES_MAX),
        )
        .route("/v1/jobs/{id}", small(get(routes::get_job)))
        .route("/v1/jobs/{id}/cancel", small(post(routes::cancel_job)))
        .route("/v1/jobs/{id}/wait", small(get(routes::wait_job)))
        .route("/v1/jobs/{id}/logs", small(get(routes::job_logs)))
        .route(
            "/v1/workflows",
            limited(
                post(runs::deploy_workflow).get(runs::list_workflows),
                WORKFLOW_BODY_BYTES_MAX,
            ),
        )
        .route("/v1/workflows/{name}", small(get(runs::get_workflow)))
        .route(
            "/v1/workflows/{name}/control",
            small(post(runs::control_workflow_runs)),
        )
        .route(
            "/v1/workflows/{name}/invoke",
            limited(post(runs::invoke_workflow), RUN_BODY_BYTES_MAX),
        )
        .route(
            "/v1/workflows/{name}/stats",
            small(get(runs::workflow_stats)),
        )
        .route(
            "/v1/runs",
            limited(
                post(runs::start_run).get(runs::list_runs),
                RUN_BODY_BYTES_MAX,
            ),
        )
        .route("/v1/runs/{id}", small(get(runs::get_run)))
        .route("/v1/runs/{id}/wait", small(get(runs::wait_run)))
        .route("/v1/runs/{id}/control", small(post(runs::control_run)))
        // Uploads are streamed, not buffered: the handler counts them against
        // OBJECT_BYTES_MAX; the small limit is for the buffered reads.
        .route(
            "/v1/objects/{*key}",
            small(put(routes::put_object).get(routes::get_object)),
        )
        // Copies of objects between nodes (cluster key only), streamed under the largest
        // object a node moves.
        .route(
            "/v1/peer/objects/{*key}",
            limited(
                get(routes::peer_get_object).put(routes::peer_put_object),
                node::OBJECT_COPY_BYTES_MAX as usize,
            ),
        )
        .route(
            "/v1/keys",
            small(post(routes::create_key).get(routes::list_keys)),
        )
        .route("/v1/keys/{id}", small(delete(routes::revoke_key)))
        .route(
            "/v1/raft/{kind}",
            limited(post(routes::raft_rpc), node::RAFT_BODY_BYTES_MAX),
        )
        .route("/v1/cluster", small(get(routes::cluster)))
        .route("/v1/cluster/join", small(post(routes::join)))
        .route("/v1/nodes", small(get(routes::list_nodes)))
        .route("/v1/events", small(get(routes::list_events)))
        .route("/v1/nodes/{id}/{action}", small(post(routes::node_action)))
        .route("/v1/config", small(get(routes::get_config)))
        .route("/v1/config/{key}", small(put(routes::set_config)))
        .route("/v1/faults", small(put(routes::set_faults)))
        .route("/v1/faults/digests", small(get(routes::state_digests)))
        .fallback(routes::not_found)
        .with_state(app)
        .layer(axum::middleware::from_fn(error::contract))
}

/// Serves the API on `listener` until `shutdown` fires: over TLS with the node's
/// certificate, or plain HTTP if the node was started so (`--insecure-http`).
pub async fn serve(
    node: Node,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let tls = node.server_tls().map_err(std::io::Error::other)?;
    let router = router(node);
    match tls {
        Some(config) => listener::serve(router, listener, config, shutdown).await,
        None => {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
        }
    }
}
