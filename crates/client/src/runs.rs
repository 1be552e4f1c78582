//! The workflow and run calls of the client: deploy, list and get workflows; start, list,
//! get, wait for and control runs.

use crate::{Client, ClientError};
use model::workflow::{Control, RunStatus, RunSummary, WorkflowSpec};
use model::JobId;
use reqwest::Method;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// A run as `GET /v1/runs/{id}` answers it.
#[derive(Clone, Debug, Deserialize)]
pub struct Run {
    #[serde(flatten)]
    pub summary: RunSummary,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Changes whenever the run does (a step starts or ends, a control).
    pub revision: u64,
    /// The job of each attempt, by job key: `jobs logs ID` finds an attempt's log.
    #[serde(default)]
    pub jobs: BTreeMap<String, JobId>,
    /// Set by a start: the idempotency key named an earlier run.
    #[serde(default)]
    pub existing: bool,
}

impl Run {
    pub fn is_finished(&self) -> bool {
        self.summary.state != RunStatus::Running
    }

    /// Steps done (succeeded, failed, skipped or cancelled) and steps in all.
    pub fn progress(&self) -> (usize, usize) {
        let steps = &self.summary.steps;
        let done = steps.iter().filter(|s| s.step.is_done()).count();
        (done, steps.len())
    }
}

/// A deployed workflow: the spec with its version, and the secret each URL hook's posts are
/// signed with, by URL (`x-chorus-webhook-signature`, as the alert webhook's).
#[derive(Clone, Debug)]
pub struct Deployed {
    pub spec: WorkflowSpec,
    pub hook_secrets: BTreeMap<String, String>,
}

/// What a control on every run of a workflow did.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
pub struct BulkOutcome {
    pub workflow: String,
    pub control: String,
    /// The runs it changed, oldest first.
    pub touched: Vec<u64>,
    /// Runs that changed meanwhile so that the control no longer fitted.
    pub passed_over: usize,
    /// More runs fitted than one call changes: call again.
    pub more: bool,
}

/// Filters for [`Client::list_runs`].
#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    pub workflow: Option<String>,
    pub state: Option<String>,
    pub limit: Option<usize>,
}

impl Client {
    /// Deploys a workflow from its TOML text; answers the spec with its version.
    pub async fn deploy_workflow(&self, toml: &str) -> Result<WorkflowSpec, ClientError> {
        Ok(self.deploy_workflow_with_secrets(toml).await?.spec)
    }

    /// Deploys a workflow; answers the spec and the signing secret of each URL its hooks
    /// post to.
    pub async fn deploy_workflow_with_secrets(&self, toml: &str) -> Result<Deployed, ClientError> {
        let bytes = self
            .send(
                Method::POST,
                "/v1/workflows",
                toml.as_bytes().to_vec(),
                None,
            )
            .await?;
        let decode = |e: serde_json::Error| ClientError::Decode(e.to_string());
        let mut answer: serde_json::Value = serde_json::from_slice(&bytes).map_err(decode)?;
        let secrets = answer
            .as_object_mut()
            .and_then(|o| o.remove("hook_secrets"))
            .unwrap_or_default();
        Ok(Deployed {
            spec: serde_json::from_value(answer).map_err(decode)?,
            hook_secrets: if secrets.is_null() {
                BTreeMap::new()
            } else {
                serde_json::from_value(secrets).map_err(decode)?
            },
        })
    }

    pub async fn workflows(&self) -> Result<Vec<WorkflowSpec>, ClientError> {
        #[derive(Deserialize)]
        struct List {
            workflows: Vec<WorkflowSpec>,
        }
        Ok(self
            .json::<List>(Method::GET, "/v1/workflows", None)
            .await?
            .workflows)
    }

    pub async fn workflow(&self, name: &str) -> Result<WorkflowSpec, ClientError> {
        let path = format!("/v1/workflows/{}", urlencoding(name));
        self.json(Method::GET, &path, None).await
    }

    /// Statistics of a workflow's runs that started within `window` (e.g. `24h`).
    pub async fn workflow_stats(
        &self,
        name: &str,
        window: &str,
    ) -> Result<serde_json::Value, ClientError> {
        let path = format!(
            "/v1/workflows/{}/stats?window={}",
            urlencoding(name),
            urlencoding(window)
        );
        self.json(Method::GET, &path, None).await
    }

    /// Starts a run; with an idempotency key seen before, answers that run (`existing`).
    pub async fn start_run(
        &self,
        workflow: &str,
        input: &serde_json::Value,
        idempotency_key: Option<&str>,
    ) -> Result<Run, ClientError> {
        let body = serde_json::json!({
            "workflow": workflow,
            "input": input,
            "idempotency_key": idempotency_key,
        });
        self.json(Method::POST, "/v1/runs", Some(&body)).await
    }

    /// Starts a run and waits (server side) up to `timeout` for it to end, in one call: the
    /// run as it is then (`state` is still `running` if the time-out came first).
    pub async fn invoke_workflow(
        &self,
        workflow: &str,
        input: &serde_json::Value,
        idempotency_key: Option<&str>,
        timeout: Duration,
    ) -> Result<Run, ClientError> {
        let path = format!(
            "/v1/workflows/{}/invoke?timeout_ms={}",
            urlencoding(workflow),
            timeout.as_millis()
        );
        let body = serde_json::to_vec(&serde_json::json!({
            "input": input,
            "idempotency_key": idempotency_key,
        }))
        .expect("JSON values serialize");
        self.held(Method::POST, &path, body, timeout).await
    }

    pub async fn run(&self, id: u64) -> Result<Run, ClientError> {
        self.json(Method::GET, &format!("/v1/runs/{id}"), None)
            .await
    }

    /// Runs, newest first.
    pub async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, ClientError> {
        #[derive(Deserialize)]
        struct List {
            runs: Vec<RunSummary>,
        }
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        if let Some(w) = &filter.workflow {
            query.append_pair("workflow", w);
        }
        if let Some(s) = &filter.state {
            query.append_pair("state", s);
        }
        if let Some(l) = filter.limit {
            query.append_pair("limit", &l.to_string());
        }
        let query = query.finish();
        let path = if query.is_empty() {
            "/v1/runs".to_string()
        } else {
            format!("/v1/runs?{query}")
        };
        Ok(self.json::<List>(Method::GET, &path, None).await?.runs)
    }

    /// Waits (server side) until the run changes from `revision` (any change if `None`:
    /// until it finishes), or `timeout` passes; returns it as it is then.
    pub async fn wait_run(
        &self,
        id: u64,
        revision: Option<u64>,
        timeout: Duration,
    ) -> Result<Run, ClientError> {
        let mut path = format!("/v1/runs/{id}/wait?timeout_ms={}", timeout.as_millis());
        if let Some(r) = revision {
            path.push_str(&format!("&revision={r}"));
        }
        self.held(Method::GET, &path, Vec::new(), timeout).await
    }

    /// Retries every failed run (`retry`) or aborts every running run (`abort`) of a
    /// workflow, at most `node::BULK_RUNS_MAX` per call; answers the runs it changed.
    pub async fn control_workflow_runs(
        &self,
        workflow: &str,
        control: &str,
    ) -> Result<BulkOutcome, ClientError> {
        let path = format!("/v1/workflows/{}/control", urlencoding(workflow));
        let body = serde_json::json!({ "control": control });
        self.json(Method::POST, &path, Some(&body)).await
    }

    /// Retry, skip, abort or restart a run.
    pub async fn control_run(&self, id: u64, control: &Control) -> Result<Run, ClientError> {
        let body = serde_json::to_value(control).expect("controls serialize");
        self.json(Method::POST, &format!("/v1/runs/{id}/control"), Some(&body))
            .await
    }
}

fn urlencoding(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes()).collect()
}
