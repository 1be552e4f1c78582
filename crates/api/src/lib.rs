//! The HTTP API (axum): routes under `/v1`, request signing, `{code, message}` errors, health,
//! metrics and the OpenAPI document. This is the only crate that knows HTTP on the server
//! side; it talks to the node and nothing else.

mod auth;
mod error;
mod routes;
mod runs;

use auth::Nonces;
use axum::routing::{get, post, put};
use axum::Router;
use node::Node;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The dashboard: one static page that signs its calls in the browser.
pub(crate) const DASHBOARD_HTML: &str = include_str!("dashboard/index.html");

/// The OpenAPI 3.1 document, written by hand and checked against the routes by a test.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

#[derive(Clone, Debug)]
pub(crate) struct AppState {
    node: Node,
    nonces: Arc<Nonces>,
}

/// The whole router: public health routes plus the signed `/v1` API.
pub fn router(node: Node) -> Router {
    let app = AppState {
        node,
        nonces: Arc::new(Nonces::default()),
    };
    let signed = Router::new()
        .route(
            "/v1/functions",
            post(routes::deploy_function).get(routes::list_functions),
        )
        .route("/v1/functions/{name}", get(routes::get_function))
        .route("/v1/jobs", post(routes::submit_job).get(routes::list_jobs))
        .route("/v1/jobs/batch", post(routes::submit_batch))
        .route("/v1/jobs/{id}", get(routes::get_job))
        .route("/v1/jobs/{id}/cancel", post(routes::cancel_job))
        .route("/v1/jobs/{id}/wait", get(routes::wait_job))
        .route("/v1/jobs/{id}/logs", get(routes::job_logs))
        .route(
            "/v1/workflows",
            post(runs::deploy_workflow).get(runs::list_workflows),
        )
        .route("/v1/workflows/{name}", get(runs::get_workflow))
        .route("/v1/runs", post(runs::start_run).get(runs::list_runs))
        .route("/v1/runs/{id}", get(runs::get_run))
        .route("/v1/runs/{id}/wait", get(runs::wait_run))
        .route("/v1/runs/{id}/control", post(runs::control_run))
        .route(
            "/v1/objects/{*key}",
            put(routes::put_object).get(routes::get_object),
        )
        .route("/v1/keys", post(routes::create_key).get(routes::list_keys))
        .route("/v1/keys/{id}", axum::routing::delete(routes::revoke_key))
        .route("/v1/raft/{kind}", post(routes::raft_rpc))
        .route("/v1/cluster", get(routes::cluster))
        .route("/v1/cluster/join", post(routes::join))
        .route("/v1/nodes", get(routes::list_nodes))
        .route("/v1/events", get(routes::list_events))
        .route("/v1/nodes/{id}/{action}", post(routes::node_action))
        .route("/v1/config", get(routes::get_config))
        .route("/v1/config/{key}", put(routes::set_config))
        .route("/v1/faults", put(routes::set_faults))
        .route("/v1/faults/digests", get(routes::state_digests))
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            auth::require_signature,
        ));
    Router::new()
        .route("/", get(routes::dashboard))
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/metrics", get(routes::metrics))
        .route("/v1/openapi.json", get(routes::openapi))
        .merge(signed)
        .fallback(routes::not_found)
        .with_state(app)
}

/// Serves the API on `listener` until `shutdown` fires.
pub async fn serve(
    node: Node,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(node))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
