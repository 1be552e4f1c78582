//! The client-facing work calls: deploy, submit, cancel, wait, API keys and attempt logs.

use crate::{now_ms, rejected, running, scheduling, unexpected, Node, WAIT_MAX};
use model::{
    ApiError, ApiKey, Command, ErrorCode, FunctionSpec, Job, JobDetail, JobId, JobSpec, KeyId,
    Response, Scope, SubmitResult,
};
use rand::RngCore;
use std::time::Duration;

/// A key just created: the only time its secret is known outside the client.
#[derive(Clone, Debug)]
pub struct NewKey {
    pub id: KeyId,
    /// Hex.
    pub secret: String,
    pub expires_at_ms: Option<u64>,
}

impl Node {
    pub async fn deploy(&self, spec: FunctionSpec) -> Result<u32, ApiError> {
        if spec.kind == model::FunctionKind::Builtin
            && !self.inner.config.builtin_functions.contains(&spec.name)
        {
            return Err(ApiError::new(
                ErrorCode::InvalidInput,
                format!(
                    "{:?} is not a built-in function; set kind = \"command\" and a command",
                    spec.name
                ),
            ));
        }
        match rejected(self.propose(Command::DeployFunction { spec }).await?)? {
            Response::Deployed { version } => Ok(version),
            other => Err(unexpected(other)),
        }
    }

    /// Submits jobs in one log entry; each gets its own result.
    pub async fn submit(&self, jobs: Vec<JobSpec>) -> Result<Vec<SubmitResult>, ApiError> {
        let submit = self.placed_submit(now_ms(), jobs).await;
        match self.propose(submit).await? {
            Response::Submitted(results) => Ok(results),
            other => Err(unexpected(other)),
        }
    }

    /// `SubmitJobs` with the jobs placed now, if this node leads and no older work waits:
    /// such jobs start in the entry that submits them, one commit instead of two. A follower
    /// cannot place (the scheduler runs on the leader); the leader places what it forwards.
    pub(crate) async fn placed_submit(&self, now_ms: u64, jobs: Vec<JobSpec>) -> Command {
        let (place, breaker_events) = scheduling::place_new(self, &jobs);
        if !breaker_events.is_empty() {
            self.record_events(breaker_events).await;
        }
        Command::SubmitJobs {
            now_ms,
            jobs,
            place,
        }
    }

    pub fn job(&self, id: JobId) -> Result<Job, ApiError> {
        self.read(|s| s.job(id).cloned())
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no job {id}")))
    }

    /// The job and, if it is queued, why it waits.
    pub fn job_detail(&self, id: JobId) -> Result<JobDetail, ApiError> {
        let now = now_ms();
        self.read(|s| {
            let job = s.job(id)?;
            Some(JobDetail {
                waiting: scheduling::waiting(self, s, job, now),
                job: job.clone(),
            })
        })
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no job {id}")))
    }

    pub async fn cancel(&self, id: JobId) -> Result<Job, ApiError> {
        rejected(
            self.propose(Command::CancelJob {
                now_ms: now_ms(),
                job: id,
            })
            .await?,
        )?;
        self.job(id)
    }

    /// Waits until the job is finished or `timeout` passes, and returns it as it is then.
    pub async fn wait(&self, id: JobId, timeout: Duration) -> Result<Job, ApiError> {
        let deadline = tokio::time::Instant::now() + timeout.min(WAIT_MAX);
        let mut applied = self.inner.registry.applied();
        loop {
            let job = self.job(id)?;
            if job.state.is_terminal() {
                return Ok(job);
            }
            tokio::select! {
                changed = applied.changed() => if changed.is_err() { return Ok(job) },
                () = tokio::time::sleep_until(deadline) => return Ok(job),
                () = self.inner.shutdown.cancelled() => return Ok(job),
            }
        }
    }

    /// Submits one job and waits for it to finish, at most `timeout` (and [`WAIT_MAX`]): the
    /// synchronous call. The job is an ordinary one (same queue, placement and warm pools);
    /// the caller tells a finished job from one still queued or running by its state.
    pub async fn invoke(&self, spec: JobSpec, timeout: Duration) -> Result<Job, ApiError> {
        let id = match self.submit(vec![spec]).await?.pop() {
            Some(SubmitResult::Created(id) | SubmitResult::Existing(id)) => id,
            Some(SubmitResult::Rejected(e)) => return Err(e),
            None => {
                return Err(ApiError::new(
                    ErrorCode::Internal,
                    "submit answered nothing",
                ))
            }
        };
        self.wait(id, timeout).await
    }

    /// Creates an API key, valid for `ttl` if given; the secret is returned once and only
    /// here.
    pub async fn create_key(
        &self,
        scopes: Vec<Scope>,
        ttl: Option<Duration>,
    ) -> Result<NewKey, ApiError> {
        let mut bytes = [0u8; 40];
        rand::rng().fill_bytes(&mut bytes);
        let id = KeyId(format!("ck_{}", hex::encode(&bytes[..8])));
        let secret = hex::encode(&bytes[8..]);
        let now = now_ms();
        let expires_at_ms = ttl.map(|t| now.saturating_add(t.as_millis() as u64));
        let signing_key = model::signature::signing_key(&secret)
            .ok_or_else(|| ApiError::new(ErrorCode::Internal, "a new key's secret is not hex"))?;
        let key = ApiKey {
            sealed: Some(crate::sealing::seal(&self.inner.kek, &id, &signing_key)),
            id: id.clone(),
            secret: String::new(),
            scopes,
            created_at_ms: now,
            revoked: false,
            expires_at_ms,
            last_used_ms: None,
        };
        rejected(self.propose(Command::CreateKey { key }).await?)?;
        Ok(NewKey {
            id,
            secret,
            expires_at_ms,
        })
    }

    pub async fn revoke_key(&self, id: KeyId) -> Result<(), ApiError> {
        rejected(self.propose(Command::RevokeKey { id }).await?).map(|_| ())
    }

    /// The attempt's captured stderr (empty if it logged nothing).
    pub async fn attempt_log(
        &self,
        job: JobId,
        attempt: model::AttemptId,
    ) -> Result<bytes::Bytes, ApiError> {
        let j = self.job(job)?;
        let a = j.attempts.iter().find(|a| a.id == attempt).ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                format!("job {job} has no attempt {attempt}"),
            )
        })?;
        if let Some(text) = &a.log {
            return Ok(bytes::Bytes::from(text.clone()));
        }
        if a.log_bytes == 0 {
            return Ok(bytes::Bytes::new());
        }
        let limit = executor::LOG_BYTES_MAX as u64 + 1024;
        self.object_bytes(&running::log_key(job, attempt), limit)
            .await
    }
}
