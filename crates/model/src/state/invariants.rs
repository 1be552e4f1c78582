//! The invariants of [`State`], written down once and checked by tests after every command
//! (the property tests apply thousands of random sequences) and after a snapshot is loaded.

use super::State;
use crate::ids::{AttemptId, JobId, NodeId};
use crate::job::JobState;
use crate::{ErrorCode, BACKUPS_MAX, EVENTS_MAX};
use std::collections::{BTreeMap, BTreeSet};

impl State {
    /// Checks every invariant of the state and its derived indexes; the first one broken is
    /// the error. What holds:
    ///
    /// - the derived indexes (queue, delayed, running, running per throttle bucket,
    ///   idempotency keys) are exactly what the
    ///   jobs imply, and no two jobs carry the same idempotency key; the same for runs, and
    ///   the index of unfinished runs is exactly the runs not finished;
    /// - job, attempt and node ids are at most the counters that hand them out; attempt ids
    ///   are unique and grow within a job; every job's function exists at a version at least
    ///   the job's; an attempt with an output or an error has ended;
    /// - a job is running iff it has a live attempt; its live attempts are on distinct nodes
    ///   and at most `1 + BACKUPS_MAX`; a job that is not running has no unfinished attempt;
    /// - no attempt ends, and no job finishes, before one of its attempts starts (commands
    ///   are applied at the state's clock, which never goes back);
    /// - a job has `finished_at_ms` iff it is finished; a succeeded job has an output, a
    ///   failed one an error, a cancelled one the error `cancelled`; it counts at least one
    ///   try if it ever had an attempt, and never more tries than attempts;
    /// - events are numbered consecutively up to the last number handed out, at most
    ///   [`EVENTS_MAX`] of them;
    /// - every recorded object has a well-formed record (key, hex SHA-256) and 1 to
    ///   [`crate::OBJECT_HOLDERS_MAX`] holders, each a node the registry knows.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.check_indexes()?;
        let mut attempt_ids = BTreeSet::new();
        for (id, job) in &self.jobs {
            let at = |what: &str| format!("job {id}: {what}");
            if job.id != *id || id.0 == 0 || id.0 > self.next_job_id {
                return Err(at("id out of place or past next_job_id"));
            }
            match self.functions.get(&job.function) {
                Some(f) if f.version >= job.function_version => {}
                _ => return Err(at("its function version does not exist")),
            }
            let mut previous = AttemptId(0);
            for attempt in &job.attempts {
                let fresh = attempt_ids.insert(attempt.id);
                if !fresh || attempt.id <= previous || attempt.id.0 > self.next_attempt_id {
                    return Err(at(&format!(
                        "attempt id {} reused or out of order",
                        attempt.id
                    )));
                }
                previous = attempt.id;
                if attempt
                    .finished_at_ms
                    .is_some_and(|end| end < attempt.started_at_ms)
                    || job
                        .finished_at_ms
                        .is_some_and(|end| end < attempt.started_at_ms)
                {
                    return Err(at(&format!(
                        "attempt {} ends, or its job ends, before it starts",
                        attempt.id
                    )));
                }
                let has_result = attempt.output.is_some() || attempt.error.is_some();
                if has_result && attempt.finished_at_ms.is_none() {
                    return Err(at(&format!(
                        "attempt {} has a result but no end",
                        attempt.id
                    )));
                }
            }
            let live: Vec<NodeId> = job
                .attempts
                .iter()
                .filter(|a| a.finished_at_ms.is_none())
                .map(|a| a.node)
                .collect();
            let distinct: BTreeSet<NodeId> = live.iter().copied().collect();
            let running = job.state == JobState::Running;
            if running == live.is_empty() {
                return Err(at("running iff it has a live attempt"));
            }
            if distinct.len() != live.len() || live.len() > 1 + BACKUPS_MAX as usize {
                return Err(at("live attempts on the same node, or too many"));
            }
            if job.state.is_terminal() != job.finished_at_ms.is_some() {
                return Err(at("finished_at_ms iff finished"));
            }
            let cancelled = ErrorCode::Cancelled.as_str();
            let consistent = match job.state {
                JobState::Succeeded => job.output.is_some(),
                JobState::Failed => job.error.is_some(),
                JobState::Cancelled => job.error.as_ref().is_some_and(|e| e.code == cancelled),
                JobState::Queued | JobState::Running => true,
            };
            if !consistent {
                return Err(at(&format!("{:?} without its output or error", job.state)));
            }
            let tries = job.tries as usize;
            if tries > job.attempts.len() || (tries == 0 && !job.attempts.is_empty()) {
                return Err(at(&format!(
                    "{tries} tries for {} attempts",
                    job.attempts.len()
                )));
            }
        }
        for (id, node) in &self.nodes {
            if node.id != *id || *id > self.next_node_id {
                return Err(format!("node {id}: id out of place or past next_node_id"));
            }
        }
        self.check_events()?;
        self.check_objects()
    }

    fn check_objects(&self) -> Result<(), String> {
        for (key, info) in &self.objects {
            let record = crate::ObjectRecord {
                key: key.clone(),
                size: info.size,
                sha256: info.sha256.clone(),
                holders: info.holders.clone(),
            };
            record.check()?;
            if let Some(gone) = info.holders.iter().find(|id| !self.nodes.contains_key(id)) {
                return Err(format!(
                    "object {key:?}: held by node {gone}, which is unknown"
                ));
            }
        }
        Ok(())
    }

    fn check_indexes(&self) -> Result<(), String> {
        let mut rebuilt = self.snapshot_copy();
        rebuilt.rebuild_indexes();
        let nonempty = |m: &BTreeMap<NodeId, BTreeMap<JobId, AttemptId>>| {
            m.iter()
                .filter(|(_, s)| !s.is_empty())
                .map(|(k, s)| (*k, s.clone()))
                .collect::<BTreeMap<_, _>>()
        };
        if rebuilt.queue != self.queue || rebuilt.delayed != self.delayed {
            return Err("the queue or delayed index disagrees with the jobs".into());
        }
        if nonempty(&rebuilt.running) != nonempty(&self.running) {
            return Err("the running index disagrees with the jobs".into());
        }
        let keyed = self.jobs.values().filter(|j| j.idempotency_key.is_some());
        if rebuilt.idempotency != self.idempotency || keyed.count() != self.idempotency.len() {
            return Err("idempotency keys are not one job each".into());
        }
        if rebuilt.throttle_running != self.throttle_running {
            return Err("the running jobs per throttle bucket disagree with the jobs".into());
        }
        let keyed_runs = self.runs.values().filter(|r| r.idempotency_key.is_some());
        if rebuilt.run_keys != self.run_keys || keyed_runs.count() != self.run_keys.len() {
            return Err("run idempotency keys are not one run each".into());
        }
        if rebuilt.live_runs != self.live_runs {
            return Err("the index of unfinished runs disagrees with the runs".into());
        }
        Ok(())
    }

    fn check_events(&self) -> Result<(), String> {
        if self.events.len() > EVENTS_MAX {
            return Err(format!("{} events kept", self.events.len()));
        }
        let consecutive = self.events.iter().zip(self.events.iter().skip(1));
        if consecutive.into_iter().any(|(a, b)| b.seq != a.seq + 1) {
            return Err("event numbers are not consecutive".into());
        }
        if self
            .events
            .back()
            .is_some_and(|e| e.seq != self.next_event_seq)
        {
            return Err("the last event is not the last number handed out".into());
        }
        Ok(())
    }
}
