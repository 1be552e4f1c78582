//! Request authentication: every `/v1` request (but the OpenAPI document) carries an HMAC
//! signature (see [`model::signature`]) and the key's scopes must allow the route.
//!
//! The middleware checks, in order: the headers are present and well-formed; the timestamp is
//! within [`CLOCK_SKEW_MAX_S`] of ours; the key exists and is not revoked; the signature
//! matches (it covers the host); the key has not expired; the scope allows the route; the
//! nonce has not been seen here in the window (replay). A request that may change the state
//! is then served inside `node::serve_signed`, so what it proposes carries its nonce into the
//! log, where a replay through any node, or after a restart, is refused.
//! Then it buffers the body (up to the route's limit) and checks its hash against the signed
//! one. Object uploads (and copies between nodes) are streamed instead: their handler checks
//! the hash at the end.
//!
//! The cluster key (the cluster secret, [`node::CLUSTER_KEY_ID`]) is for nodes only, and only
//! for what passes between them: raft traffic (`/v1/raft/…`) and object copies
//! (`/v1/peer/…`). No API key, not even an admin's, may call `/v1/peer/…`. Over TLS such a
//! call must also come on a connection whose client certificate the cluster CA issued
//! (mutual TLS; the listener verified it and hands it on as [`crate::listener::Tls`]).

use crate::error::{fail, Failure};
use crate::AppState;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use model::signature::{self, Canonical, CLOCK_SKEW_MAX_S, NONCE_LEN_MAX};
use model::{ErrorCode, KeyId, Scope};
use std::collections::HashMap;
use std::sync::Mutex;

/// Nonces remembered at most; past it, requests are refused until old ones expire.
const NONCES_MAX: usize = 2_000_000;
/// Largest buffered body of a route that sets no [`BodyLimit`] of its own.
const BODY_BYTES_MAX: usize = 16 * 1024 * 1024;

/// The body limit of the route a request is for, set by a layer outside this check so that
/// it never buffers more than the route takes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BodyLimit(pub(crate) usize);

/// The body hash the client signed, for handlers that stream the body.
#[derive(Clone, Debug)]
pub(crate) struct SignedBodyHash(pub(crate) String);

/// Nonces seen within the skew window, with the time each expires.
#[derive(Debug, Default)]
pub(crate) struct Nonces {
    seen: Mutex<HashMap<String, u64>>,
}

impl Nonces {
    /// Records a nonce; false if it was seen before (a replay) or the table is full.
    fn insert(&self, nonce: &str, now_s: u64) -> Result<(), &'static str> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= NONCES_MAX {
            seen.retain(|_, expires| *expires > now_s);
            if seen.len() >= NONCES_MAX {
                return Err("too many requests in the replay window; slow down");
            }
        }
        if seen
            .insert(nonce.to_string(), now_s + 2 * CLOCK_SKEW_MAX_S)
            .is_some_and(|exp| exp > now_s)
        {
            return Err("nonce was already used (replay)");
        }
        Ok(())
    }
}

/// Who signed the request being served, for the handlers that narrow what a key may do by
/// what the call names: a job (a key with `submit` but not `read` sees only the jobs it
/// submitted) or an object key (`submit` uploads under `uploads/` only; no key writes
/// under `jobs/` or `logs/`, which only nodes write).
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    pub(crate) key: KeyId,
    /// May read anything (`read` or `admin`).
    pub(crate) reads_all: bool,
    pub(crate) admin: bool,
}

/// Object keys under these prefixes are written by nodes only (outputs and logs of
/// attempts); inputs are uploaded under [`UPLOADS_PREFIX`].
const NODE_WRITTEN_PREFIXES: [&str; 2] = ["jobs/", "logs/"];
const UPLOADS_PREFIX: &str = "uploads/";

impl Caller {
    /// Whether this caller may upload `key` (already decoded): never under `jobs/` or
    /// `logs/`; a key without `admin` only under `uploads/`.
    pub(crate) fn may_upload(&self, key: &str) -> Result<(), Failure> {
        if NODE_WRITTEN_PREFIXES.iter().any(|p| key.starts_with(p)) {
            return Err(fail(
                ErrorCode::Forbidden,
                format!("{key:?}: only the nodes write outputs and logs (jobs/, logs/)"),
            ));
        }
        if !self.admin && !key.starts_with(UPLOADS_PREFIX) {
            return Err(fail(
                ErrorCode::Forbidden,
                format!(
                    "key {} may upload under {UPLOADS_PREFIX} only, not {key:?}",
                    self.key
                ),
            ));
        }
        Ok(())
    }

    /// The job whose output or log the object `key` is, if it is one (`jobs/{id}/...`,
    /// `logs/{id}/...`).
    pub(crate) fn job_of_object(key: &str) -> Option<model::JobId> {
        let rest = NODE_WRITTEN_PREFIXES
            .iter()
            .find_map(|p| key.strip_prefix(p))?;
        rest.split('/').next()?.parse().ok().map(model::JobId)
    }
}

/// Whether `key` may read `job`: it reads everything, or it submitted the job. A job this
/// node has not applied yet is looked for again after catching up with the leader.
pub(crate) async fn may_read_job(
    app: &AppState,
    caller: &Caller,
    job: model::JobId,
) -> Result<(), Failure> {
    if caller.reads_all {
        return Ok(());
    }
    let owns = |app: &AppState| app.node.read(|s| s.submitted_by(job, &caller.key));
    if owns(app) {
        return Ok(());
    }
    if app.node.read(|s| s.job(job).is_none()) {
        app.node.sync().await?;
        if owns(app) {
            return Ok(());
        }
    }
    Err(fail(
        ErrorCode::Forbidden,
        format!(
            "key {} has no read scope and may read only the jobs it submitted",
            caller.key
        ),
    ))
}

/// Reads a key without `read` may still make, of the jobs it submitted (checked by the
/// handler, which knows the job): a job, its wait and log, its outputs.
fn reads_own_jobs(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && ((path.starts_with("/v1/jobs/") && path != "/v1/jobs/batch")
            || path.starts_with("/v1/objects/"))
}

/// The scope a route needs: the one table to audit.
pub(crate) fn required_scope(method: &Method, path: &str) -> Scope {
    // Invoking a function runs a job, as a submit does, and invoking a workflow starts a
    // run; deploying either is an admin's.
    let invoke = method == Method::POST
        && (path.starts_with("/v1/functions/") || path.starts_with("/v1/workflows/"))
        && path.ends_with("/invoke");
    // A control on a workflow's runs is a control on runs, as `POST /v1/runs/{id}/control`
    // is; changing the workflow itself is an admin's.
    let runs_control =
        method == Method::POST && path.starts_with("/v1/workflows/") && path.ends_with("/control");
    if invoke || runs_control {
        return Scope::Submit;
    }
    let admin = path.starts_with("/v1/keys")
        || path.starts_with("/v1/cluster/join")
        || path.starts_with("/v1/faults")
        || (path.starts_with("/v1/config") && method != Method::GET)
        || (path.starts_with("/v1/nodes/") && method != Method::GET)
        || (path.starts_with("/v1/functions") && method != Method::GET)
        || (path.starts_with("/v1/workflows") && method != Method::GET)
        // A trigger is standing work, started without anyone asking: an admin's, as a
        // function is.
        || (path.starts_with("/v1/triggers") && method != Method::GET)
        // So is a source: triggers read it, its dead letters go where it says.
        || (path.starts_with("/v1/sources") && method != Method::GET);
    if admin {
        Scope::Admin
    } else if method == Method::GET || method == Method::HEAD {
        Scope::Read
    } else {
        Scope::Submit
    }
}

fn is_streamed_upload(method: &Method, path: &str) -> bool {
    method == Method::PUT
        && (path.starts_with("/v1/objects/") || path.starts_with(node::PEER_OBJECTS_PATH))
}

/// Routes only nodes call, signed with the cluster key.
fn is_between_nodes(path: &str) -> bool {
    path.starts_with("/v1/raft/") || path.starts_with("/v1/peer/")
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, Failure> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            fail(
                ErrorCode::Unauthorized,
                format!("missing or unreadable header {name}"),
            )
        })
}

pub(crate) async fn require_signature(
    State(app): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    match verify(&app, request).await {
        // What a signed request that may change the state proposes carries its nonce into
        // the log, where a replay through any node is refused.
        Ok((request, Some(signed))) => node::serve_signed(signed, next.run(request)).await,
        Ok((request, None)) => next.run(request).await,
        Err(failure) => failure.into_response(),
    }
}

async fn verify(
    app: &AppState,
    request: Request,
) -> Result<(Request, Option<node::SignedRequest>), Failure> {
    let (parts, body) = request.into_parts();
    let h = &parts.headers;
    let key_id = header(h, signature::HEADER_KEY)?;
    let timestamp_s: u64 = header(h, signature::HEADER_TIMESTAMP)?
        .parse()
        .map_err(|_| {
            fail(
                ErrorCode::Unauthorized,
                "timestamp must be whole seconds since the epoch",
            )
        })?;
    let nonce = header(h, signature::HEADER_NONCE)?;
    let body_hash = header(h, signature::HEADER_CONTENT_SHA256)?;
    let sig = header(h, signature::HEADER_SIGNATURE)?;
    if nonce.len() < 16 || nonce.len() > NONCE_LEN_MAX {
        return Err(fail(
            ErrorCode::Unauthorized,
            format!("nonce must be 16 to {NONCE_LEN_MAX} characters"),
        ));
    }
    let now_s = node::now_ms() / 1000;
    if now_s.abs_diff(timestamp_s) > CLOCK_SKEW_MAX_S {
        return Err(fail(
            ErrorCode::Unauthorized,
            format!(
                "request time is {}s off the server's clock; at most {CLOCK_SKEW_MAX_S}s allowed",
                now_s.abs_diff(timestamp_s)
            ),
        ));
    }
    // The host the client addressed: a request signed for one node does not verify when
    // sent to another under its own name.
    let host = h
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .ok_or_else(|| {
            fail(
                ErrorCode::Unauthorized,
                "missing Host header, which the signature covers",
            )
        })?;
    let canonical = Canonical {
        method: parts.method.as_str(),
        host,
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        timestamp_s,
        nonce,
        body_sha256_hex: body_hash,
    };
    // Peers sign raft traffic with the cluster secret, which every member has from the
    // moment it joins (before it has replicated any API key).
    let bytes_max = parts
        .extensions
        .get::<BodyLimit>()
        .map_or(BODY_BYTES_MAX, |l| l.0);
    if key_id == registry_key_id() {
        if !is_between_nodes(parts.uri.path()) {
            return Err(fail(
                ErrorCode::Forbidden,
                "the cluster key is only for traffic between nodes",
            ));
        }
        // Over TLS, a node also proves itself with its certificate from the cluster CA
        // (verified in the handshake): the cluster secret alone is not enough.
        let tls = parts.extensions.get::<crate::listener::Tls>();
        if tls.is_some_and(|tls| tls.peer.is_none()) {
            return Err(fail(
                ErrorCode::Forbidden,
                "only the nodes of the cluster may call this route: present a node certificate of the cluster CA (mutual TLS)",
            ));
        }
        if !app.node.verify_peer(&canonical, sig) {
            return Err(fail(ErrorCode::Unauthorized, "bad cluster signature"));
        }
        app.nonces
            .insert(nonce, now_s)
            .map_err(|why| fail(ErrorCode::Unauthorized, why))?;
        let body_hash = body_hash.to_string();
        return Ok((with_body(parts, body, &body_hash, bytes_max).await?, None));
    }
    if is_between_nodes(parts.uri.path()) {
        return Err(fail(
            ErrorCode::Forbidden,
            "only the nodes of the cluster may call this route; API keys never may",
        ));
    }
    let key = app
        .node
        .read(|s| s.key(&KeyId(key_id.to_string())).cloned())
        .filter(|k| !k.revoked)
        .ok_or_else(|| {
            fail(
                ErrorCode::Unauthorized,
                format!("unknown or revoked key {key_id:?}"),
            )
        })?;
    let verified = app
        .node
        .signing_key(&key)
        .is_some_and(|k| canonical.verify(&k, sig));
    if !verified {
        return Err(fail(ErrorCode::Unauthorized, "bad signature"));
    }
    if key.expired(node::now_ms()) {
        return Err(fail(
            ErrorCode::Unauthorized,
            format!("key {key_id} has expired"),
        ));
    }
    // The scope before anything is recorded or read: a refused call costs nothing more.
    let scope = required_scope(&parts.method, parts.uri.path());
    let own_jobs = reads_own_jobs(&parts.method, parts.uri.path()) && key.allows(Scope::Submit);
    if !key.allows(scope) && !own_jobs {
        return Err(fail(
            ErrorCode::Forbidden,
            format!("key {key_id} lacks the {scope:?} scope for this call"),
        ));
    }
    app.nonces
        .insert(nonce, now_s)
        .map_err(|why| fail(ErrorCode::Unauthorized, why))?;
    app.node.key_used(&key.id);
    let caller = Caller {
        key: key.id.clone(),
        reads_all: key.allows(Scope::Read),
        admin: key.allows(Scope::Admin),
    };
    let signed = (parts.method != Method::GET && parts.method != Method::HEAD)
        .then(|| node::SignedRequest::new(key.id.clone(), nonce, timestamp_s));
    let body_hash = body_hash.to_string();
    let mut request = with_body(parts, body, &body_hash, bytes_max).await?;
    request.extensions_mut().insert(caller);
    Ok((request, signed))
}

/// The request with its body: streamed (the handler checks the hash at the end) for
/// uploads, otherwise buffered up to `bytes_max` and checked here.
async fn with_body(
    parts: axum::http::request::Parts,
    body: Body,
    body_hash: &str,
    bytes_max: usize,
) -> Result<Request, Failure> {
    if is_streamed_upload(&parts.method, parts.uri.path()) {
        let mut request = Request::from_parts(parts, body);
        request
            .extensions_mut()
            .insert(SignedBodyHash(body_hash.to_string()));
        return Ok(request);
    }
    buffered(parts, body, body_hash, bytes_max).await
}

fn registry_key_id() -> &'static str {
    node::CLUSTER_KEY_ID
}

/// Reads the whole body (up to `bytes_max`) and checks it against its signed hash.
async fn buffered(
    parts: axum::http::request::Parts,
    body: Body,
    body_hash: &str,
    bytes_max: usize,
) -> Result<Request, Failure> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut bytes = bytes::BytesMut::new();
    let mut over = false;
    let mut drained = 0usize;
    let drain_until = tokio::time::Instant::now() + DRAIN_WAIT;
    loop {
        let next = if over {
            // Read the rest (within bounds) before answering: a client still sending when
            // the connection closes sees a broken pipe, not the 413.
            match tokio::time::timeout_at(drain_until, stream.next()).await {
                Ok(next) => next,
                Err(_) => break,
            }
        } else {
            stream.next().await
        };
        let Some(chunk) = next else { break };
        let chunk =
            chunk.map_err(|e| fail(ErrorCode::InvalidInput, format!("reading the body: {e}")))?;
        if over {
            drained += chunk.len();
            if drained > DRAIN_BYTES_MAX {
                break;
            }
        } else if bytes.len() + chunk.len() > bytes_max {
            over = true;
        } else {
            bytes.extend_from_slice(&chunk);
        }
    }
    if over {
        return Err(fail(
            ErrorCode::TooLarge,
            format!("the request body is over this route's limit of {bytes_max} bytes"),
        ));
    }
    let bytes = bytes.freeze();
    if signature::body_sha256_hex(&bytes) != body_hash {
        return Err(fail(
            ErrorCode::Unauthorized,
            "body does not match its signed hash",
        ));
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// How much of a body over its limit is read and dropped before the 413 is answered, and for
/// how long at most.
const DRAIN_BYTES_MAX: usize = 64 * 1024 * 1024;
const DRAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invoke_and_ingest_need_submit_and_triggers_need_admin_to_change() {
        let post = Method::POST;
        assert_eq!(
            required_scope(&post, "/v1/functions/f/invoke"),
            Scope::Submit
        );
        assert_eq!(required_scope(&post, "/v1/functions"), Scope::Admin);
        assert_eq!(required_scope(&post, "/v1/workflows"), Scope::Admin);
        assert_eq!(
            required_scope(&post, "/v1/workflows/w/control"),
            Scope::Submit
        );
        assert_eq!(
            required_scope(&post, "/v1/workflows/w/invoke"),
            Scope::Submit
        );
        assert_eq!(required_scope(&post, "/v1/events/ingest"), Scope::Submit);
        assert_eq!(required_scope(&post, "/v1/triggers"), Scope::Admin);
        assert_eq!(required_scope(&post, "/v1/triggers/t/pause"), Scope::Admin);
        assert_eq!(
            required_scope(&Method::DELETE, "/v1/triggers/t"),
            Scope::Admin
        );
        assert_eq!(required_scope(&Method::GET, "/v1/triggers"), Scope::Read);
        assert_eq!(required_scope(&post, "/v1/sources"), Scope::Admin);
        assert_eq!(
            required_scope(&Method::DELETE, "/v1/sources/s"),
            Scope::Admin
        );
        assert_eq!(required_scope(&Method::GET, "/v1/sources/s"), Scope::Read);
    }
}
