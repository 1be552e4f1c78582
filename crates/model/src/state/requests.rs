//! Signed requests in the log: replay protection that holds across the cluster and across
//! restarts, who submitted a job, the keys' last use, and the leader's check of a write a
//! follower forwards.
//!
//! A node that accepts a signed request which changes the state wraps what it proposes in
//! [`Command::Signed`] with the request's key and nonce, and a random request number of its
//! own. Applying it, every replica:
//! 1. forgets the nonces whose window has passed (by the state's clock, so every replica
//!    forgets the same ones);
//! 2. refuses the command (`unauthorized`) if the key's nonce was taken by another request:
//!    a replay, through whichever node, before or after a restart (the nonces are in the
//!    snapshot);
//! 3. otherwise records the nonce and applies the command on behalf of the key.
//!
//! The same request may propose more than once (a submit may record events first), and a
//! write whose fate is unknown is sent again as it was: both carry the same request number.

use super::State;
use crate::command::{Command, Response};
use crate::ids::{JobId, KeyId, NodeId};
use crate::{ApiError, ErrorCode, Scope, Setting};
use serde::{Deserialize, Serialize};

/// Nonces of state-changing requests the log remembers at once (a window of ten minutes):
/// past it, signed writes are refused until old ones leave the window.
pub const NONCES_MAX: usize = 1_000_000;

/// A nonce taken by a request, until it leaves the replay window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenNonce {
    pub request: u64,
    pub expires_ms: u64,
}

impl State {
    pub(super) fn apply_signed(
        &mut self,
        key: KeyId,
        nonce: String,
        request: u64,
        expires_ms: u64,
        command: Command,
    ) -> Response {
        while let Some((expires, id)) = self.nonce_expiry.first().cloned() {
            if expires > self.clock_ms {
                break;
            }
            self.nonce_expiry.pop_first();
            self.nonces.remove(&id);
        }
        let id = format!("{key} {nonce}");
        match self.nonces.get(&id) {
            Some(seen) if seen.request != request => {
                return Response::Rejected(ApiError::new(
                    ErrorCode::Unauthorized,
                    "nonce was already used (replay)",
                ))
            }
            Some(_) => {}
            None if self.nonces.len() >= NONCES_MAX => {
                return Response::Rejected(ApiError::new(
                    ErrorCode::Unavailable,
                    "too many signed writes in the replay window; slow down",
                ))
            }
            None => {
                self.nonce_expiry.insert((expires_ms, id.clone()));
                self.nonces.insert(
                    id,
                    SeenNonce {
                        request,
                        expires_ms,
                    },
                );
            }
        }
        let outer = self.requester.replace(key);
        let response = self.apply(command);
        self.requester = outer;
        response
    }

    pub(super) fn keys_used(&mut self, uses: Vec<(KeyId, u64)>) -> Response {
        for (id, at_ms) in uses {
            if let Some(key) = self.keys.get_mut(&id) {
                key.last_used_ms = Some(key.last_used_ms.unwrap_or(0).max(at_ms));
            }
        }
        Response::Done
    }

    /// Whether the request being applied may change `job`: the cluster's own commands and
    /// admin keys may change any job, other keys only the jobs they submitted.
    pub(super) fn may_change(&self, job: JobId) -> Result<(), ApiError> {
        let Some(key) = &self.requester else {
            return Ok(());
        };
        if self.keys.get(key).is_some_and(|k| k.allows(Scope::Admin)) {
            return Ok(());
        }
        match self.job(job) {
            Some(j) if j.submitted_by.as_ref() != Some(key) => Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("key {key} may change only the jobs it submitted, not job {job}"),
            )),
            _ => Ok(()),
        }
    }

    /// Whether `key` may read `job` although it lacks the `read` scope: it submitted it.
    pub fn submitted_by(&self, job: JobId, key: &KeyId) -> bool {
        self.job(job)
            .is_some_and(|j| j.submitted_by.as_ref() == Some(key))
    }

    /// The checks the API makes before it proposes, made again by the leader on a write a
    /// follower forwards: a forwarded command is taken only if the same call would have been
    /// taken had it arrived at the leader (a setting that parses, a placement on a node the
    /// cluster has, a function spec that validates, a key with a scope).
    pub fn check_forwarded(&self, command: &Command) -> Result<(), ApiError> {
        let invalid = |m: String| ApiError::new(ErrorCode::InvalidInput, m);
        match command {
            Command::SetConfig { key, value } => Setting::parse(key, value).map(|_| ()),
            Command::StartAttempts { node, .. } => self.known_node(*node),
            Command::SubmitJobs { place, .. } => place
                .iter()
                .flatten()
                .try_for_each(|node| self.known_node(*node)),
            Command::DeployFunction { spec } => spec.validate().map_err(invalid),
            Command::CreateKey { key } if key.scopes.is_empty() => {
                Err(invalid(format!("key {} needs at least one scope", key.id)))
            }
            Command::Signed { command, .. } | Command::Fenced { command, .. } => {
                self.check_forwarded(command)
            }
            Command::Batch(commands) => commands.iter().try_for_each(|c| self.check_forwarded(c)),
            _ => Ok(()),
        }
    }

    fn known_node(&self, node: NodeId) -> Result<(), ApiError> {
        match self.node(node) {
            Some(_) => Ok(()),
            None => Err(ApiError::new(
                ErrorCode::InvalidInput,
                format!("no node {node} to place work on"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ApiKey, JobSpec};

    fn key(id: &str, scopes: &[Scope]) -> Command {
        Command::CreateKey {
            key: ApiKey {
                id: KeyId(id.into()),
                secret: "00".repeat(32),
                sealed: None,
                scopes: scopes.to_vec(),
                created_at_ms: 0,
                revoked: false,
                expires_at_ms: None,
                last_used_ms: None,
            },
        }
    }

    fn signed(key: &str, nonce: &str, request: u64, now_ms: u64, command: Command) -> Command {
        Command::Signed {
            key: KeyId(key.into()),
            nonce: nonce.into(),
            request,
            expires_ms: now_ms + 600_000,
            command: Box::new(command),
        }
    }

    fn submit(now_ms: u64) -> Command {
        Command::SubmitJobs {
            now_ms,
            jobs: vec![JobSpec {
                function: "f".into(),
                input: serde_json::Value::Null,
                files: vec![],
                priority: 0,
                idempotency_key: None,
            }],
            place: vec![],
        }
    }

    fn state() -> State {
        let mut s = State::default();
        s.apply(Command::DeployFunction {
            spec: crate::FunctionSpec::builtin("f"),
        });
        s.apply(key("ck_a", &[Scope::Submit]));
        s.apply(key("ck_b", &[Scope::Submit]));
        s.apply(key("ck_admin", &[Scope::Admin]));
        s
    }

    #[test]
    fn a_nonce_taken_by_one_request_is_refused_to_another_until_its_window_ends() {
        let mut s = state();
        let first = s.apply(signed("ck_a", "n1", 7, 1_000, submit(1_000)));
        assert!(matches!(first, Response::Submitted(_)), "{first:?}");
        // The same request again (a retry after a leader change) is taken.
        let again = s.apply(signed("ck_a", "n1", 7, 1_000, submit(1_000)));
        assert!(matches!(again, Response::Submitted(_)), "{again:?}");
        // Another request with the nonce (a replay through any node) is not.
        let replay = s.apply(signed("ck_a", "n1", 8, 1_000, submit(2_000)));
        let Response::Rejected(e) = replay else {
            panic!("{replay:?}")
        };
        assert_eq!(e.code, ErrorCode::Unauthorized);
        // Another key's nonce is its own.
        let other = s.apply(signed("ck_b", "n1", 9, 1_000, submit(2_000)));
        assert!(matches!(other, Response::Submitted(_)), "{other:?}");
        // Past the window the nonce is forgotten, by every replica at the same entry.
        let later = s.apply(signed("ck_a", "n2", 10, 700_000, submit(700_000)));
        assert!(matches!(later, Response::Submitted(_)), "{later:?}");
        assert!(!s.nonces.contains_key("ck_a n1"));
        let decoded = State::decode(&s.encode()).unwrap();
        assert_eq!(decoded.nonce_expiry, s.nonce_expiry);
    }

    #[test]
    fn a_submit_key_cancels_only_its_own_jobs_and_an_admin_any() {
        let mut s = state();
        s.apply(signed("ck_a", "n1", 1, 1_000, submit(1_000)));
        let job = JobId(1);
        assert_eq!(s.job(job).unwrap().submitted_by, Some(KeyId("ck_a".into())));
        assert!(s.submitted_by(job, &KeyId("ck_a".into())));
        let cancel = Command::CancelJob { now_ms: 2_000, job };
        let theirs = s.apply(signed("ck_b", "n2", 2, 2_000, cancel.clone()));
        let Response::Rejected(e) = theirs else {
            panic!("{theirs:?}")
        };
        assert_eq!(e.code, ErrorCode::Forbidden);
        let admin = s.apply(signed("ck_admin", "n3", 3, 2_000, cancel));
        assert!(matches!(admin, Response::Cancelled { .. }), "{admin:?}");
    }

    #[test]
    fn a_forwarded_write_is_checked_as_the_api_checks_it() {
        let s = state();
        let bad_setting = Command::SetConfig {
            key: "retention".into(),
            value: "garbage".into(),
        };
        assert_eq!(
            s.check_forwarded(&bad_setting).unwrap_err().code,
            ErrorCode::InvalidInput
        );
        let nowhere = Command::StartAttempts {
            now_ms: 0,
            node: 42,
            jobs: vec![JobId(1)],
        };
        let wrapped = Command::Batch(vec![signed("ck_a", "n", 1, 0, nowhere)]);
        assert_eq!(
            s.check_forwarded(&wrapped).unwrap_err().code,
            ErrorCode::InvalidInput
        );
        let good = Command::SetConfig {
            key: "retention".into(),
            value: "3d".into(),
        };
        assert!(s.check_forwarded(&good).is_ok());
    }

    #[test]
    fn the_latest_use_of_a_key_never_moves_back() {
        let mut s = state();
        let id = KeyId("ck_a".into());
        s.apply(Command::KeysUsed {
            uses: vec![(id.clone(), 5_000)],
        });
        s.apply(Command::KeysUsed {
            uses: vec![(id.clone(), 3_000), (KeyId("ck_gone".into()), 1)],
        });
        assert_eq!(s.key(&id).unwrap().last_used_ms, Some(5_000));
    }
}
