//! A typed client for the chorus API, used by the CLI, the tests and the benchmarks. It signs
//! every request (see [`model::signature`]) and turns `{code, message}` answers into
//! [`ClientError::Api`].

use bytes::Bytes;
use model::signature::{self, Canonical};
use model::{ApiError, ErrorCode, FunctionSpec, Job, JobId, JobSpec, Scope};
use rand::RngCore;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod runs;
pub mod tls;

pub use runs::{BulkOutcome, Deployed, Run, RunFilter};
pub use tls::Transport;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{status}: {error}")]
    Api { status: u16, error: ApiError },
    #[error("cannot reach the server: {0}")]
    Http(String),
    /// The server's TLS certificate is not one this client trusts (a wrong CA pin, a CA
    /// that did not issue it, a name it does not carry): nothing was sent.
    #[error("{0}")]
    Untrusted(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("unexpected answer: {0}")]
    Decode(String),
}

impl ClientError {
    /// The API's error code, if the server answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { error, .. } => Some(error.code),
            ClientError::Untrusted(_) => Some(ErrorCode::UntrustedServer),
            _ => None,
        }
    }
}

/// Credentials: a key id and its hex secret.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub key_id: String,
    pub secret: String,
}

#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    /// The `Host` header requests go with (`host:port`), which the signature covers.
    host: String,
    credentials: Credentials,
    http: reqwest::Client,
}

/// One result of a batch submit.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum BatchResult {
    Submitted { id: JobId, existing: bool },
    Rejected { error: ApiError },
}

/// A page of jobs, newest first.
#[derive(Clone, Debug, Deserialize)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    pub next_before: Option<JobId>,
}

/// Filters for [`Client::list_jobs`].
#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    pub state: Option<String>,
    pub function: Option<String>,
    /// Only the job submitted with this idempotency key (none if there is none).
    pub idempotency_key: Option<String>,
    pub before: Option<JobId>,
    pub limit: Option<usize>,
}

/// What an invoke answered: the output of a job that succeeded, or the id of one still queued
/// or running at the time-out (follow it with [`Client::wait`]).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Invoked {
    Done {
        id: JobId,
        output: serde_json::Value,
        #[serde(default)]
        objects: Vec<String>,
    },
    Pending {
        id: JobId,
        state: model::JobState,
    },
}

#[derive(Clone, Debug, Deserialize)]
pub struct JoinAnswer {
    pub id: u64,
    pub cluster_secret: String,
    /// The certificate the cluster CA issued for the request sent (PEM, then the CA's).
    #[serde(default)]
    pub certificate: Option<String>,
    #[serde(default)]
    pub ca_certificate: Option<String>,
    /// The CA's key, with which the new member signs the certificates of later joins.
    #[serde(default)]
    pub ca_key: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct NewKey {
    pub id: String,
    pub secret: String,
    pub scopes: Vec<Scope>,
    /// When the key stops working, if it was given a time-to-live.
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn nonce() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// A failed exchange: a server not trusted, or one that could not be reached.
fn http_error(e: reqwest::Error) -> ClientError {
    match tls::untrusted(&e) {
        Some(why) => ClientError::Untrusted(why),
        None => ClientError::Http(tls::chain(&e)),
    }
}

impl Client {
    /// A client for `server` (`https://host:port`, `http://host:port` or `host:port`, which
    /// is HTTPS) that trusts the system's roots; see [`Client::with_transport`] for the
    /// cluster CA.
    pub fn new(server: &str, credentials: Credentials) -> Client {
        Client::with_transport(server, credentials, &Transport::SystemRoots)
    }

    /// A client for `server` that reaches it as `transport` says; `host:port` takes the
    /// transport's scheme (HTTPS unless it is plain HTTP).
    pub fn with_transport(server: &str, credentials: Credentials, transport: &Transport) -> Client {
        let base = if server.contains("://") {
            server.to_string()
        } else {
            format!("{}://{server}", transport.default_scheme())
        };
        let http = transport
            .configure(reqwest::Client::builder().pool_max_idle_per_host(64))
            .build()
            .unwrap_or_default();
        // As the HTTP client will send it: the default port of the scheme is left out.
        let host = reqwest::Url::parse(&base)
            .ok()
            .and_then(|url| {
                let host = url.host_str()?.to_string();
                Some(match url.port() {
                    Some(port) => format!("{host}:{port}"),
                    None => host,
                })
            })
            .unwrap_or_default();
        Client {
            host,
            base: base.trim_end_matches('/').to_string(),
            credentials,
            http,
        }
    }

    /// The headers of a signed request; public so tests can forge bad ones.
    pub fn sign(
        &self,
        method: &str,
        path_and_query: &str,
        body_sha256_hex: &str,
        timestamp_s: u64,
    ) -> Vec<(&'static str, String)> {
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let nonce = nonce();
        let canonical = Canonical {
            method,
            host: &self.host,
            path,
            query,
            timestamp_s,
            nonce: &nonce,
            body_sha256_hex,
        };
        let sig = canonical.sign(&self.credentials.secret).unwrap_or_default();
        vec![
            (signature::HEADER_KEY, self.credentials.key_id.clone()),
            (signature::HEADER_TIMESTAMP, timestamp_s.to_string()),
            (signature::HEADER_NONCE, nonce),
            (
                signature::HEADER_CONTENT_SHA256,
                body_sha256_hex.to_string(),
            ),
            (signature::HEADER_SIGNATURE, sig),
        ]
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<Bytes, ClientError> {
        let hash = signature::body_sha256_hex(&body);
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path_and_query}", self.base));
        for (name, value) in self.sign(method.as_str(), path_and_query, &hash, now_s()) {
            request = request.header(name, value);
        }
        if !body.is_empty() {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        if let Some(t) = timeout {
            request = request.timeout(t);
        }
        let response = request.send().await.map_err(http_error)?;
        read(response).await
    }

    /// A call the server holds for up to `wait` (a wait, an invoke): its HTTP time-out is
    /// that plus ten seconds, so the server's answer at its own time-out still arrives.
    pub(crate) async fn held<T: DeserializeOwned>(
        &self,
        method: Method,
        path_and_query: &str,
        body: Vec<u8>,
        wait: Duration,
    ) -> Result<T, ClientError> {
        let bytes = self
            .send(
                method,
                path_and_query,
                body,
                Some(wait + Duration::from_secs(10)),
            )
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, ClientError> {
        let body = body
            .map(|b| serde_json::to_vec(b).expect("JSON values serialize"))
            .unwrap_or_default();
        let bytes = self.send(method, path_and_query, body, None).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    pub async fn deploy(&self, spec: &FunctionSpec) -> Result<u32, ClientError> {
        #[derive(Deserialize)]
        struct Deployed {
            version: u32,
        }
        let body = serde_json::to_value(spec).expect("specs serialize");
        let d: Deployed = self
            .json(Method::POST, "/v1/functions", Some(&body))
            .await?;
        Ok(d.version)
    }

    pub async fn functions(&self) -> Result<Vec<FunctionSpec>, ClientError> {
        #[derive(Deserialize)]
        struct List {
            functions: Vec<FunctionSpec>,
        }
        Ok(self
            .json::<List>(Method::GET, "/v1/functions", None)
            .await?
            .functions)
    }

    pub async fn submit(&self, spec: &JobSpec) -> Result<Job, ClientError> {
        self.json(
            Method::POST,
            "/v1/jobs",
            Some(&serde_json::to_value(spec).expect("specs serialize")),
        )
        .await
    }

    pub async fn submit_batch(&self, specs: &[JobSpec]) -> Result<Vec<BatchResult>, ClientError> {
        #[derive(Deserialize)]
        struct Results {
            results: Vec<BatchResult>,
        }
        let body = serde_json::json!({ "jobs": specs });
        Ok(self
            .json::<Results>(Method::POST, "/v1/jobs/batch", Some(&body))
            .await?
            .results)
    }

    pub async fn job(&self, id: JobId) -> Result<Job, ClientError> {
        Ok(self.job_detail(id).await?.job)
    }

    /// The job and, if it is queued, why it waits.
    pub async fn job_detail(&self, id: JobId) -> Result<model::JobDetail, ClientError> {
        self.json(Method::GET, &format!("/v1/jobs/{id}"), None)
            .await
    }

    pub async fn list_jobs(&self, filter: &JobFilter) -> Result<JobPage, ClientError> {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        if let Some(s) = &filter.state {
            query.append_pair("state", s);
        }
        if let Some(f) = &filter.function {
            query.append_pair("function", f);
        }
        if let Some(k) = &filter.idempotency_key {
            query.append_pair("idempotency_key", k);
        }
        if let Some(b) = filter.before {
            query.append_pair("before", &b.to_string());
        }
        if let Some(l) = filter.limit {
            query.append_pair("limit", &l.to_string());
        }
        let query = query.finish();
        let path = if query.is_empty() {
            "/v1/jobs".to_string()
        } else {
            format!("/v1/jobs?{query}")
        };
        self.json(Method::GET, &path, None).await
    }

    pub async fn cancel(&self, id: JobId) -> Result<Job, ClientError> {
        self.json(Method::POST, &format!("/v1/jobs/{id}/cancel"), None)
            .await
    }

    /// Waits (server side) until the job finishes or `timeout` passes; returns it as it is.
    pub async fn wait(&self, id: JobId, timeout: Duration) -> Result<Job, ClientError> {
        let path = format!("/v1/jobs/{id}/wait?timeout_ms={}", timeout.as_millis());
        self.held(Method::GET, &path, Vec::new(), timeout).await
    }

    /// The log of an attempt (the last one if `attempt` is `None`).
    pub async fn logs(&self, id: JobId, attempt: Option<u64>) -> Result<Bytes, ClientError> {
        let path = match attempt {
            Some(a) => format!("/v1/jobs/{id}/logs?attempt={a}"),
            None => format!("/v1/jobs/{id}/logs"),
        };
        self.send(Method::GET, &path, Vec::new(), None).await
    }

    /// Uploads a local file as object `key`, streamed. The file is read twice: once to sign
    /// its hash, once to send it.
    pub async fn put_object(&self, key: &str, file: &Path) -> Result<u64, ClientError> {
        let hash = hash_file(file).await?;
        let path = format!("/v1/objects/{key}");
        let mut request = self.http.put(format!("{}{path}", self.base));
        for (name, value) in self.sign("PUT", &path, &hash, now_s()) {
            request = request.header(name, value);
        }
        let f = tokio::fs::File::open(file).await?;
        let len = f.metadata().await?.len();
        let stream = tokio_util::io::ReaderStream::new(f);
        let body = reqwest::Body::wrap_stream(stream);
        let response = request
            .header("content-length", len)
            .body(body)
            .send()
            .await
            .map_err(http_error)?;
        read(response).await?;
        Ok(len)
    }

    pub async fn get_object(&self, key: &str) -> Result<Bytes, ClientError> {
        self.send(Method::GET, &format!("/v1/objects/{key}"), Vec::new(), None)
            .await
    }

    pub async fn create_key(&self, scopes: &[Scope]) -> Result<NewKey, ClientError> {
        self.create_key_expiring(scopes, None).await
    }

    /// Creates a key that stops working `ttl` after its creation (`None`: never).
    pub async fn create_key_expiring(
        &self,
        scopes: &[Scope],
        ttl: Option<std::time::Duration>,
    ) -> Result<NewKey, ClientError> {
        let mut body = serde_json::json!({ "scopes": scopes });
        if let Some(ttl) = ttl {
            body["ttl_s"] = ttl.as_secs().max(1).into();
        }
        self.json(Method::POST, "/v1/keys", Some(&body)).await
    }

    pub async fn list_keys(&self) -> Result<serde_json::Value, ClientError> {
        self.json(Method::GET, "/v1/keys", None).await
    }

    pub async fn revoke_key(&self, id: &str) -> Result<(), ClientError> {
        self.send(Method::DELETE, &format!("/v1/keys/{id}"), Vec::new(), None)
            .await
            .map(|_| ())
    }

    /// Asks the cluster to admit a new node at `addr`; the answer has its id, the cluster
    /// secret it signs raft traffic with and, for a certificate request (`csr`, PEM), its
    /// certificate from the cluster CA.
    pub async fn join(
        &self,
        addr: &str,
        slots: u32,
        labels: &[String],
        csr: Option<&str>,
    ) -> Result<JoinAnswer, ClientError> {
        let mut body = serde_json::json!({ "addr": addr, "slots": slots, "labels": labels });
        if let Some(csr) = csr {
            body["csr"] = csr.into();
        }
        self.json(Method::POST, "/v1/cluster/join", Some(&body))
            .await
    }

    pub async fn nodes(&self) -> Result<serde_json::Value, ClientError> {
        self.json(Method::GET, "/v1/nodes", None).await
    }

    /// `action`: drain, undrain, promote, demote or remove.
    pub async fn node_action(
        &self,
        id: u64,
        action: &str,
    ) -> Result<serde_json::Value, ClientError> {
        self.json(Method::POST, &format!("/v1/nodes/{id}/{action}"), None)
            .await
    }

    pub async fn config(&self) -> Result<serde_json::Value, ClientError> {
        self.json(Method::GET, "/v1/config", None).await
    }

    /// Sets a config key; the answer carries `signing_secret` for `alerts.webhook`.
    pub async fn set_config(
        &self,
        key: &str,
        value: &str,
    ) -> Result<serde_json::Value, ClientError> {
        self.json(
            Method::PUT,
            &format!("/v1/config/{key}"),
            Some(&serde_json::json!({ "value": value })),
        )
        .await
    }

    pub async fn cluster(&self) -> Result<serde_json::Value, ClientError> {
        self.json(Method::GET, "/v1/cluster", None).await
    }

    /// Runs a job of `function` and waits for it (server side) at most `timeout`: the job's
    /// output once it succeeded, [`Invoked::Pending`] with its id if it still runs at the
    /// time-out; a failed job is an error with its code.
    pub async fn invoke(
        &self,
        function: &str,
        input: &serde_json::Value,
        timeout: Duration,
    ) -> Result<Invoked, ClientError> {
        let path = format!(
            "/v1/functions/{function}/invoke?timeout_ms={}",
            timeout.as_millis()
        );
        let body = serde_json::to_vec(&serde_json::json!({ "input": input }))
            .expect("JSON values serialize");
        self.held(Method::POST, &path, body, timeout).await
    }

    /// Creates a trigger (a cron schedule or an event subscription).
    pub async fn create_trigger(
        &self,
        spec: &model::TriggerSpec,
    ) -> Result<serde_json::Value, ClientError> {
        let body = serde_json::to_value(spec).expect("specs serialize");
        self.json(Method::POST, "/v1/triggers", Some(&body)).await
    }

    pub async fn triggers(&self) -> Result<serde_json::Value, ClientError> {
        self.json(Method::GET, "/v1/triggers", None).await
    }

    pub async fn trigger(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        self.json(Method::GET, &format!("/v1/triggers/{name}"), None)
            .await
    }

    pub async fn delete_trigger(&self, name: &str) -> Result<(), ClientError> {
        self.send(
            Method::DELETE,
            &format!("/v1/triggers/{name}"),
            Vec::new(),
            None,
        )
        .await
        .map(|_| ())
    }

    /// Pauses (`true`) or resumes a trigger.
    pub async fn pause_trigger(
        &self,
        name: &str,
        paused: bool,
    ) -> Result<serde_json::Value, ClientError> {
        let action = if paused { "pause" } else { "resume" };
        self.json(Method::POST, &format!("/v1/triggers/{name}/{action}"), None)
            .await
    }

    /// Registers a source in the catalogue.
    pub async fn register_source(
        &self,
        spec: &model::SourceSpec,
    ) -> Result<serde_json::Value, ClientError> {
        let body = serde_json::to_value(spec).expect("specs serialize");
        self.json(Method::POST, "/v1/sources", Some(&body)).await
    }

    /// Every source, with its counts (and its latest hour of samples, with `samples`).
    pub async fn sources(&self, samples: bool) -> Result<serde_json::Value, ClientError> {
        let path = if samples {
            "/v1/sources?samples=true"
        } else {
            "/v1/sources"
        };
        self.json(Method::GET, path, None).await
    }

    pub async fn source(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        self.json(Method::GET, &format!("/v1/sources/{name}"), None)
            .await
    }

    pub async fn delete_source(&self, name: &str) -> Result<(), ClientError> {
        self.send(
            Method::DELETE,
            &format!("/v1/sources/{name}"),
            Vec::new(),
            None,
        )
        .await
        .map(|_| ())
    }

    /// Posts CloudEvents to `/v1/events/ingest`: `content_type` picks the mode
    /// (`application/cloudevents+json`, `application/cloudevents-batch+json`, or the data's
    /// own type with `ce-*` headers for binary mode). Answers the status and the body, so
    /// that tests see refusals as they are.
    pub async fn ingest_events(
        &self,
        content_type: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<(u16, serde_json::Value), ClientError> {
        let path = "/v1/events/ingest";
        let hash = signature::body_sha256_hex(&body);
        let mut request = self.http.post(format!("{}{path}", self.base));
        for (name, value) in self.sign("POST", path, &hash, now_s()) {
            request = request.header(name, value);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .map_err(http_error)?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(http_error)?;
        let value =
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))?;
        Ok((status, value))
    }

    /// A raw signed call, for tests of the API contract.
    pub async fn raw(
        &self,
        method: &str,
        path_and_query: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Bytes), ClientError> {
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        let hash = signature::body_sha256_hex(&body);
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path_and_query}", self.base));
        for (name, value) in self.sign(method.as_str(), path_and_query, &hash, now_s()) {
            request = request.header(name, value);
        }
        let response = request.body(body).send().await.map_err(http_error)?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(http_error)?;
        Ok((status, bytes))
    }

    /// An unsigned GET, for the public routes (`/healthz`, `/metrics`, the OpenAPI document).
    pub async fn get_public(&self, path: &str) -> Result<(u16, Bytes), ClientError> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(http_error)?;
        let status = response.status().as_u16();
        Ok((status, response.bytes().await.map_err(http_error)?))
    }
}

async fn read(response: reqwest::Response) -> Result<Bytes, ClientError> {
    let status = response.status();
    let bytes = response.bytes().await.map_err(http_error)?;
    if status.is_success() {
        return Ok(bytes);
    }
    let error = serde_json::from_slice::<ApiError>(&bytes).unwrap_or_else(|_| {
        ApiError::new(
            ErrorCode::Internal,
            format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes)),
        )
    });
    Err(ClientError::Api {
        status: status.as_u16(),
        error,
    })
}

async fn hash_file(path: &Path) -> Result<String, ClientError> {
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = signature::BodyHasher::default();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finish_hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the client signs is what the server's check (`model::signature`) accepts: the
    /// same canonical form from the headers it sends, and nothing else.
    #[test]
    fn signed_headers_verify_as_the_server_checks_them() {
        let secret = "00112233445566778899aabbccddeeff";
        let client = Client::new(
            "127.0.0.1:1",
            Credentials {
                key_id: "ck_test".into(),
                secret: secret.into(),
            },
        );
        let body_hash = signature::body_sha256_hex(b"{}");
        let headers: std::collections::HashMap<&str, String> = client
            .sign("POST", "/v1/jobs?stale=true", &body_hash, 1_700_000_000)
            .into_iter()
            .collect();
        assert_eq!(headers[signature::HEADER_KEY], "ck_test");
        let canonical = |path: &'static str, query: &'static str| Canonical {
            method: "POST",
            host: "127.0.0.1:1",
            path,
            query,
            timestamp_s: 1_700_000_000,
            nonce: &headers[signature::HEADER_NONCE],
            body_sha256_hex: &headers[signature::HEADER_CONTENT_SHA256],
        };
        let sig = &headers[signature::HEADER_SIGNATURE];
        let key = signature::signing_key(secret).unwrap();
        assert!(canonical("/v1/jobs", "stale=true").verify(&key, sig));
        assert!(!canonical("/v1/jobs", "stale=false").verify(&key, sig));
        assert!(!canonical("/v1/keys", "stale=true").verify(&key, sig));
        assert!(!canonical("/v1/jobs", "stale=true").verify(&[0xff], sig));
        let elsewhere = Canonical {
            host: "127.0.0.1:2",
            ..canonical("/v1/jobs", "stale=true")
        };
        assert!(
            !elsewhere.verify(&key, sig),
            "the signature covers the host"
        );
    }
}
