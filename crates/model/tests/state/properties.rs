//! Property tests of `State::apply`: any sequence of commands keeps the state's invariants,
//! never touches a snapshot copy taken before it, and round-trips through a snapshot (the
//! decoded state answers the next command exactly as the original does).
//!
//! Commands are generated as [`Op`]s that pick their jobs, attempts and nodes from the state
//! they are applied to (an index modulo what exists), so most of them hit real jobs, live
//! attempts and known nodes; a few name ids that do not exist, as late or wrong commands do.
//! 256 cases (proptest's default, about two seconds); more with `PROPTEST_CASES=5000`.

use model::{
    ApiKey, AttemptId, AttemptResult, BackupMode, Command, EventKind, FunctionSpec, JobError,
    JobId, JobSpec, JobState, KeyId, NewEvent, NodeLoad, NodeStatus, ObjectRecord, Outcome,
    Response, RetryPolicy, Scope, State,
};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use serde_json::json;
use std::collections::BTreeSet;

/// Commands per generated sequence at most.
const OPS_MAX: usize = 80;
/// Function names the generator deploys and submits to ("d" is never deployed).
const FUNCTIONS: [&str; 4] = ["a", "b", "c", "d"];
/// Node ids the generator names (nodes 1 to 4 usually exist; 5 and 6 often do not).
const NODE_ID_MAX: u64 = 6;

/// One step, resolved against the state it is applied to by [`resolve`].
#[derive(Clone, Debug)]
enum Op {
    Deploy {
        function: usize,
        backups: u32,
        hedge: bool,
        max_attempts: u32,
        label: bool,
    },
    Submit {
        jobs: Vec<(usize, i32, Option<u8>)>,
        place: Vec<Option<u64>>,
    },
    Start {
        node: u64,
        picks: Vec<usize>,
    },
    Finish {
        results: Vec<(usize, Result<u8, u8>)>,
    },
    /// A result naming any job and attempt: usually stale or unknown.
    Stray {
        job: u64,
        attempt: u64,
        ok: bool,
    },
    Cancel {
        pick: usize,
    },
    Abandon {
        node: u64,
    },
    Register {
        node: u64,
        slots: u32,
        label: bool,
    },
    Join,
    Heartbeat {
        node: u64,
    },
    SetStatus {
        node: u64,
        status: u8,
    },
    Remove {
        node: u64,
    },
    CreateKey {
        key: u8,
    },
    RevokeKey {
        key: u8,
    },
    SetConfig {
        value: u8,
    },
    Purge {
        age_ms: u64,
        picks: Vec<usize>,
    },
    Events {
        count: usize,
    },
    Delivered {
        seq: u64,
    },
    /// Objects written: an upload, or a job's output or log (`pick` chooses the job), held by
    /// the given nodes (some unknown); one in eight records is malformed.
    Objects {
        records: Vec<(u8, usize, Vec<u64>)>,
        malformed: bool,
    },
    Batch(Vec<Op>),
}

fn leaf_op() -> impl Strategy<Value = Op> {
    let node = 1..=NODE_ID_MAX;
    let function = 0..FUNCTIONS.len();
    prop_oneof![
        2 => (function.clone(), 0..4u32, any::<bool>(), 1..4u32, prop::bool::weighted(0.2))
            .prop_map(|(function, backups, hedge, max_attempts, label)| Op::Deploy {
                function, backups, hedge, max_attempts, label
            }),
        6 => (
            prop::collection::vec((function, -2..3i32, prop::option::weighted(0.3, 0..4u8)), 1..4),
            prop::collection::vec(prop::option::of(1..=NODE_ID_MAX), 0..4),
        )
            .prop_map(|(jobs, place)| Op::Submit { jobs, place }),
        6 => (node.clone(), prop::collection::vec(any::<usize>(), 1..4))
            .prop_map(|(node, picks)| Op::Start { node, picks }),
        6 => prop::collection::vec(
            (any::<usize>(), prop_oneof![(0..3u8).prop_map(Ok), (0..4u8).prop_map(Err)]),
            1..4,
        )
        .prop_map(|results| Op::Finish { results }),
        1 => (1..20u64, 1..40u64, any::<bool>())
            .prop_map(|(job, attempt, ok)| Op::Stray { job, attempt, ok }),
        2 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        1 => node.clone().prop_map(|node| Op::Abandon { node }),
        2 => (node.clone(), 0..4u32, any::<bool>())
            .prop_map(|(node, slots, label)| Op::Register { node, slots, label }),
        1 => Just(Op::Join),
        1 => node.clone().prop_map(|node| Op::Heartbeat { node }),
        1 => (node.clone(), 0..3u8).prop_map(|(node, status)| Op::SetStatus { node, status }),
        1 => node.prop_map(|node| Op::Remove { node }),
        1 => (0..3u8).prop_map(|key| Op::CreateKey { key }),
        1 => (0..4u8).prop_map(|key| Op::RevokeKey { key }),
        1 => any::<u8>().prop_map(|value| Op::SetConfig { value }),
        1 => (0..5_000u64, prop::collection::vec(any::<usize>(), 1..6))
            .prop_map(|(age_ms, picks)| Op::Purge { age_ms, picks }),
        1 => (1..4usize).prop_map(|count| Op::Events { count }),
        1 => (0..20u64).prop_map(|seq| Op::Delivered { seq }),
        2 => (
            prop::collection::vec(
                (0..3u8, any::<usize>(), prop::collection::vec(1..=NODE_ID_MAX, 0..4)),
                1..4,
            ),
            prop::bool::weighted(0.125),
        )
            .prop_map(|(records, malformed)| Op::Objects { records, malformed }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        9 => leaf_op(),
        1 => prop::collection::vec(leaf_op(), 1..5).prop_map(Op::Batch),
    ]
}

/// A sequence starts with the cluster a real one starts with (a node, a function), then
/// random steps, each after a random pause.
fn ops() -> impl Strategy<Value = Vec<(u64, Op)>> {
    prop::collection::vec((0..1_500u64, op()), 1..OPS_MAX)
}

/// The state after [`setup`].
fn set_up() -> State {
    let mut state = State::default();
    for command in setup() {
        state.apply(command);
    }
    state
}

fn setup() -> Vec<Command> {
    let mut commands: Vec<Command> = (1..=3)
        .map(|node| Command::RegisterNode {
            id: node,
            addr: format!("10.0.0.{node}:7000"),
            slots: 2,
            labels: BTreeSet::new(),
            now_ms: 0,
        })
        .collect();
    commands.push(Command::DeployFunction {
        spec: FunctionSpec::builtin("a"),
    });
    commands
}

fn deploy(function: usize, backups: u32, hedge: bool, max_attempts: u32, label: bool) -> Command {
    let mut spec = FunctionSpec::builtin(FUNCTIONS[function]);
    spec.backups = backups;
    spec.backup_mode = if hedge {
        BackupMode::Hedge
    } else {
        BackupMode::All
    };
    spec.hedge_delay_ms = 300;
    spec.retry = RetryPolicy {
        max_attempts,
        backoff_initial_ms: 100,
        ..RetryPolicy::default()
    };
    if label {
        spec.labels = vec!["gpu".into()];
    }
    Command::DeployFunction { spec }
}

fn pick<T: Copy>(items: &[T], index: usize) -> Option<T> {
    (!items.is_empty()).then(|| items[index % items.len()])
}

/// A job per pick (job 1, which may not exist, when there are none).
fn pick_all(jobs: &[JobId], picks: &[usize]) -> Vec<JobId> {
    picks
        .iter()
        .map(|&i| pick(jobs, i).unwrap_or(JobId(1)))
        .collect()
}

/// Turns an op into the command it stands for in `state` at `now_ms`.
fn resolve(state: &State, now_ms: u64, op: &Op) -> Command {
    let jobs: Vec<JobId> = state.jobs_after(None).map(|j| j.id).collect();
    let unfinished: Vec<JobId> = state
        .jobs_after(None)
        .filter(|j| !j.state.is_terminal())
        .map(|j| j.id)
        .collect();
    let live: Vec<(JobId, AttemptId)> = state
        .jobs_after(None)
        .flat_map(|j| j.live_attempts().map(move |a| (j.id, a.id)))
        .collect();
    match op {
        Op::Deploy {
            function,
            backups,
            hedge,
            max_attempts,
            label,
        } => deploy(*function, *backups, *hedge, *max_attempts, *label),
        Op::Submit { jobs, place } => Command::SubmitJobs {
            now_ms,
            jobs: jobs
                .iter()
                .map(|(function, priority, key)| JobSpec {
                    function: FUNCTIONS[*function].into(),
                    input: json!({"n": priority}),
                    files: vec![],
                    priority: *priority,
                    idempotency_key: key.map(|k| format!("key-{k}")),
                })
                .collect(),
            place: place.clone(),
        },
        Op::Start { node, picks } => Command::StartAttempts {
            now_ms,
            node: *node,
            jobs: pick_all(&unfinished, picks),
        },
        Op::Finish { results } => Command::FinishAttempts {
            now_ms,
            results: results
                .iter()
                .map(|&(i, outcome)| {
                    let (job, attempt) = pick(&live, i).unwrap_or((JobId(1), AttemptId(1)));
                    result(job, attempt, outcome)
                })
                .collect(),
        },
        Op::Stray { job, attempt, ok } => {
            let outcome = if *ok { Ok(0) } else { Err(0) };
            Command::FinishAttempts {
                now_ms,
                results: vec![result(JobId(*job), AttemptId(*attempt), outcome)],
            }
        }
        Op::Cancel { pick: i } => Command::CancelJob {
            now_ms,
            job: pick(&jobs, *i).unwrap_or(JobId(99)),
        },
        Op::Abandon { node } => Command::AbandonAttempts {
            now_ms,
            node: *node,
            code: "node_lost".into(),
        },
        Op::Register { node, slots, label } => Command::RegisterNode {
            id: *node,
            addr: format!("10.0.0.{node}:7000"),
            slots: *slots,
            labels: label.then(|| "gpu".to_string()).into_iter().collect(),
            now_ms,
        },
        Op::Join => Command::JoinNode {
            addr: "10.0.1.1:7000".into(),
            slots: 1,
            labels: BTreeSet::new(),
            now_ms,
        },
        Op::Heartbeat { node } => Command::Heartbeat {
            node: *node,
            now_ms,
            load: NodeLoad::default(),
        },
        Op::SetStatus { node, status } => Command::SetNodeStatus {
            node: *node,
            status: [NodeStatus::Up, NodeStatus::Draining, NodeStatus::Down][*status as usize],
        },
        Op::Remove { node } => Command::RemoveNode { node: *node },
        Op::CreateKey { key } => Command::CreateKey {
            key: ApiKey {
                id: KeyId(format!("k{key}")),
                secret: "00".into(),
                sealed: None,
                scopes: vec![Scope::Submit],
                created_at_ms: now_ms,
                revoked: false,
                expires_at_ms: None,
                last_used_ms: None,
            },
        },
        Op::RevokeKey { key } => Command::RevokeKey {
            id: KeyId(format!("k{key}")),
        },
        Op::SetConfig { value } => Command::SetConfig {
            key: "scheduler.strategy".into(),
            value: format!("v{value}"),
        },
        Op::Purge { age_ms, picks } => Command::PurgeJobs {
            finished_before_ms: now_ms.saturating_sub(*age_ms),
            jobs: pick_all(&jobs, picks),
        },
        Op::Events { count } => Command::RecordEvents {
            now_ms,
            events: (0..*count)
                .map(|i| NewEvent {
                    kind: EventKind::NodeLost,
                    node: Some(i as u64),
                    message: "gone".into(),
                })
                .collect(),
        },
        Op::Delivered { seq } => Command::EventsDelivered { seq: *seq },
        Op::Objects { records, malformed } => Command::RecordObjects {
            now_ms,
            objects: records
                .iter()
                .map(|(kind, i, holders)| {
                    let job = pick(&jobs, *i).unwrap_or(JobId(1));
                    let key = match kind {
                        0 => format!("uploads/{}", i % 5),
                        1 => format!("jobs/{job}/7/out-{}", i % 2),
                        _ => format!("logs/{job}/7.log"),
                    };
                    ObjectRecord {
                        key,
                        size: *i as u64 % 1000,
                        sha256: if *malformed {
                            "xyz".into()
                        } else {
                            "0f".repeat(32)
                        },
                        holders: holders.iter().copied().collect(),
                    }
                })
                .collect(),
        },
        Op::Batch(ops) => Command::Batch(ops.iter().map(|o| resolve(state, now_ms, o)).collect()),
    }
}

/// A result: `Ok(n)` succeeds with `n` objects, `Err(n)` fails with the `n`th code.
fn result(job: JobId, attempt: AttemptId, outcome: Result<u8, u8>) -> AttemptResult {
    let outcome = match outcome {
        Ok(objects) => Outcome::Succeeded {
            output: json!({"attempt": attempt.0}),
            objects: (0..objects).map(|i| format!("jobs/{job}/{i}")).collect(),
        },
        Err(code) => Outcome::Failed(JobError {
            code: ["boom", "timeout", "invalid_input", "worker_crashed"][code as usize].into(),
            message: String::new(),
        }),
    };
    AttemptResult {
        job,
        attempt,
        outcome,
        log_bytes: 7,
        log: None,
        usage: None,
    }
}

proptest! {
    #[test]
    fn any_command_sequence_keeps_the_invariants_and_round_trips(steps in ops()) {
        let mut state = set_up();
        let mut now_ms = 1_000;
        for (pause_ms, op) in &steps {
            now_ms += pause_ms;
            // One command in three was proposed seconds before it commits (its leader died,
            // it waited for a quorum): its clock is behind what the log already holds.
            let proposed_ms = if pause_ms % 3 == 0 { now_ms.saturating_sub(5_000) } else { now_ms };
            let command = resolve(&state, proposed_ms, op);
            // A snapshot taken now, and the same state reloaded from it.
            let copy = state.snapshot_copy();
            let encoded = state.encode();
            let mut reloaded = State::decode(&encoded).expect("a snapshot decodes");
            prop_assert_eq!(reloaded.encode(), encoded.clone());

            let response = state.apply(command.clone());
            if let Err(broken) = state.check_invariants() {
                return Err(TestCaseError::fail(format!("after {command:?}: {broken}")));
            }
            prop_assert_eq!(copy.encode(), encoded, "the snapshot copy changed");
            prop_assert_eq!(reloaded.apply(command), response);
            prop_assert_eq!(reloaded.encode(), state.encode());
        }
    }
}

/// The generator reaches what the property is about: every job state, attempts started,
/// results taken and results refused as stale, hedges superseded, jobs purged. Sampled with
/// a fixed seed.
#[test]
fn the_generator_reaches_every_state_and_outcome() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut states = BTreeSet::new();
    let (mut started, mut taken, mut stale, mut purged, mut superseded) = (0, 0, 0, 0, 0);
    let mut objects_kept = 0;
    for _ in 0..50 {
        let steps = ops().new_tree(&mut runner).expect("a sequence").current();
        let mut state = set_up();
        let mut now_ms = 1_000;
        for (pause_ms, op) in &steps {
            now_ms += pause_ms;
            let mut responses = vec![state.apply(resolve(&state, now_ms, op))];
            while let Some(response) = responses.pop() {
                match response {
                    Response::Started(s) => started += s.len(),
                    Response::Finished { taken: t, stale: s } => {
                        (taken, stale) = (taken + t, stale + s)
                    }
                    Response::Purged { jobs } => purged += jobs,
                    Response::Batch(inner) => responses.extend(inner),
                    _ => {}
                }
            }
            states.extend(state.jobs_after(None).map(|j| j.state));
        }
        objects_kept += state.objects().count();
        superseded += state
            .jobs_after(None)
            .flat_map(|j| &j.attempts)
            .filter(|a| a.error.as_ref().is_some_and(|e| e.code == "superseded"))
            .count();
    }
    assert_eq!(states, JobState::ALL.into_iter().collect::<BTreeSet<_>>());
    assert!(objects_kept > 10, "objects kept {objects_kept}");
    assert!(
        started > 100 && taken > 100 && stale > 10 && purged > 0 && superseded > 0,
        "started {started}, taken {taken}, stale {stale}, purged {purged}, superseded {superseded}"
    );
}

/// `check_invariants` is not a formality: a snapshot edited into an impossible state (a
/// running job whose attempts have all ended) is caught.
#[test]
fn a_broken_state_fails_the_invariants() {
    let mut state = set_up();
    let job = JobSpec {
        function: "a".into(),
        input: json!({}),
        files: vec![],
        priority: 0,
        idempotency_key: None,
    };
    state.apply(Command::SubmitJobs {
        now_ms: 1,
        jobs: vec![job],
        place: vec![Some(1)],
    });
    state.apply(Command::FinishAttempts {
        now_ms: 2,
        results: vec![result(JobId(1), AttemptId(1), Ok(0))],
    });
    state.check_invariants().expect("a real state is sound");
    let mut snapshot: serde_json::Value = serde_json::from_slice(&state.encode()).unwrap();
    snapshot["jobs"]["1"]["state"] = json!("running");
    snapshot["jobs"]["1"]["finished_at_ms"] = serde_json::Value::Null;
    let broken = State::decode(&serde_json::to_vec(&snapshot).unwrap()).unwrap();
    let error = broken
        .check_invariants()
        .expect_err("a running job with no live attempt");
    assert!(error.contains("job 1"), "{error}");
}
