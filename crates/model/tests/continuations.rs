//! Continuations: a run's next decision taken by the node that proposes the entry changing the
//! run, applied in that entry only if the run is exactly as the node saw it. Each test drives
//! the state machine as replicas do, with the commands nodes would propose.

use model::workflow::{RunStatus, StepStatus};
use model::{
    AttemptResult, Command, Continuation, FunctionSpec, JobId, JobState, NodeId, Outcome, Response,
    State,
};
use serde_json::json;
use std::collections::BTreeSet;

const NOW: u64 = 1_000_000;
const NODE: NodeId = 1;

const CHAIN: &str = r#"
name = "chain"
[[steps]]
name = "a"
function = "noop"
[[steps]]
name = "b"
function = "noop"
needs = ["a"]
input = { seen = "{{ steps.a.output.n }}" }
[[steps]]
name = "c"
function = "noop"
needs = ["b"]
"#;

fn apply(s: &mut State, command: Command) -> Response {
    let answer = s.apply(command);
    s.assert_invariants();
    answer
}

/// One node with `slots`, the `noop` function and the chain deployed.
fn cluster(slots: u32) -> State {
    let mut s = State::default();
    apply(
        &mut s,
        Command::RegisterNode {
            id: NODE,
            addr: "127.0.0.1:1".into(),
            slots,
            labels: BTreeSet::new(),
            now_ms: NOW,
        },
    );
    apply(
        &mut s,
        Command::DeployFunction {
            spec: FunctionSpec::builtin("noop"),
        },
    );
    let spec = model::workflow::deploy(CHAIN, &|f| f == "noop").expect("the chain deploys");
    apply(
        &mut s,
        Command::DeployWorkflow {
            spec: Box::new(spec),
        },
    );
    s
}

fn start(now_ms: u64) -> Command {
    Command::StartRun {
        now_ms,
        workflow: "chain".into(),
        input: json!({}),
        idempotency_key: None,
    }
}

/// The start a node proposes: with its continuation, as `node::runs` builds it.
fn continued_start(s: &State, now_ms: u64) -> Command {
    let then = s
        .foresee_start("chain", &json!({}), now_ms, 0, Some(NODE))
        .expect("a run's first step is decided at once");
    Command::Continued {
        command: Box::new(start(now_ms)),
        then: vec![then],
    }
}

/// The job of `step` in run 1, first element, first attempt.
fn step_job(s: &State, run: u64, step: &str) -> Option<JobId> {
    s.job_by_idempotency_key(&format!("run:{run}:{step}:0:0:1"))
}

/// The live attempt's success, with `{"n": n}` as the output.
fn success(s: &State, job: JobId, n: u64) -> AttemptResult {
    let attempt = s.job(job).unwrap().attempts.last().unwrap().id;
    AttemptResult {
        job,
        attempt,
        outcome: Outcome::Succeeded {
            output: json!({ "n": n }),
            objects: vec![],
        },
        log_bytes: 0,
        log: None,
        usage: None,
    }
}

/// The entry a node proposes for `results`: with the continuations it foresees.
fn continued_finish(s: &State, results: Vec<AttemptResult>, now_ms: u64) -> Command {
    let then = s.foresee_finish(&results, now_ms, Some(NODE));
    let finish = Command::FinishAttempts { now_ms, results };
    if then.is_empty() {
        finish
    } else {
        Command::Continued {
            command: Box::new(finish),
            then,
        }
    }
}

fn running_on_node(s: &State, job: JobId) -> bool {
    let job = s.job(job).unwrap();
    job.state == JobState::Running && job.attempts.last().is_some_and(|a| a.node == NODE)
}

/// The same chain driven the way it was before continuations: the driver's decision and the
/// scheduling loop's placement each in an entry of their own.
fn driven(s: &mut State, run: u64, now_ms: u64) {
    let r = s.run(run).unwrap();
    let spec = s.run_spec(&r.state).unwrap();
    let commands = model::workflow::advance(spec, &r.state, now_ms).commands;
    if !commands.is_empty() {
        apply(
            s,
            Command::RunCommands {
                now_ms,
                run,
                commands,
            },
        );
    }
    let queued: Vec<JobId> = s
        .due_jobs_where(now_ms, 100, |_| true)
        .iter()
        .map(|j| j.id)
        .collect();
    if !queued.is_empty() {
        apply(
            s,
            Command::StartAttempts {
                now_ms,
                node: NODE,
                jobs: queued,
            },
        );
    }
}

/// A chain of three steps takes four entries: the start with its first step running, and one
/// entry per step's end with the next step running (the last ends the run). The run is the
/// same as the driver's, entry for entry of it, and a replay of the log gives the same state.
#[test]
fn a_chain_takes_one_entry_per_step_and_ends_as_the_driver_would_end_it() {
    let mut s = cluster(2);
    let mut log = Vec::new();
    let entry = continued_start(&s, NOW);
    log.push(entry.clone());
    assert_eq!(
        apply(&mut s, entry),
        Response::RunStarted {
            run: 1,
            existing: false
        }
    );
    let a = step_job(&s, 1, "a").expect("step a's job is created in the start's entry");
    assert!(running_on_node(&s, a), "and starts in it: {:?}", s.job(a));
    let mut now = NOW;
    for (n, (step, next)) in [("a", Some("b")), ("b", Some("c")), ("c", None)]
        .into_iter()
        .enumerate()
    {
        now += 10;
        let job = step_job(&s, 1, step).unwrap();
        let entry = continued_finish(&s, vec![success(&s, job, n as u64)], now);
        assert!(matches!(entry, Command::Continued { .. }), "{entry:?}");
        log.push(entry.clone());
        apply(&mut s, entry);
        if let Some(next) = next {
            let job = step_job(&s, 1, next).expect("the next step's job is in the same entry");
            assert!(running_on_node(&s, job), "{:?}", s.job(job));
        }
    }
    let run = &s.run(1).unwrap().state;
    assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
    assert_eq!(log.len(), 4);
    let b = s.job(step_job(&s, 1, "b").unwrap()).unwrap();
    assert_eq!(b.input, json!({ "seen": 0 }), "b saw a's output");

    // The same run, driven: every decision and placement in an entry of its own.
    let mut d = cluster(2);
    apply(&mut d, start(NOW));
    driven(&mut d, 1, NOW);
    let mut now = NOW;
    for (n, step) in ["a", "b", "c"].into_iter().enumerate() {
        now += 10;
        let job = step_job(&d, 1, step).unwrap();
        let result = success(&d, job, n as u64);
        apply(
            &mut d,
            Command::FinishAttempts {
                now_ms: now,
                results: vec![result],
            },
        );
        driven(&mut d, 1, now);
    }
    assert_eq!(
        &d.run(1).unwrap().state,
        run,
        "the driver's run and the continued one"
    );

    // Every replica applies the log as it was written.
    let mut replica = cluster(2);
    for entry in log {
        let bytes = serde_json::to_vec(&entry).unwrap();
        apply(&mut replica, serde_json::from_slice(&bytes).unwrap());
    }
    assert_eq!(replica.encode(), s.encode());
}

/// A continuation foreseen on a view the run has left (a control came first, or another
/// start took the run id) is dropped whole: the entry's own command is applied, and the run
/// is left to the driver.
#[test]
fn a_continuation_on_a_run_that_moved_on_is_dropped_whole() {
    let mut s = cluster(2);
    let entry = continued_start(&s, NOW);
    apply(&mut s, entry);
    let a = step_job(&s, 1, "a").unwrap();
    let entry = continued_finish(&s, vec![success(&s, a, 7)], NOW + 10);
    // An operator aborts the run before the result's entry is applied.
    let abort = Command::ControlRun {
        now_ms: NOW + 5,
        run: 1,
        control: model::workflow::Control::Abort,
    };
    assert_eq!(apply(&mut s, abort), Response::Done);
    let revision = s.run(1).unwrap().revision;
    apply(&mut s, entry);
    assert!(step_job(&s, 1, "b").is_none(), "no step after an abort");
    let run = &s.run(1).unwrap();
    assert!(
        run.revision <= revision + 1,
        "only the result, if anything, was recorded"
    );
    assert_ne!(run.state.steps["b"].status, StepStatus::Running);

    // Two starts foreseen on the same view: the first takes run 2, the second's continuation
    // names run 2 too and is dropped; its run 3 waits for the driver.
    let first = continued_start(&s, NOW + 20);
    let second = continued_start(&s, NOW + 20);
    apply(&mut s, first);
    let before = s.encode();
    assert_eq!(
        apply(&mut s, second),
        Response::RunStarted {
            run: 3,
            existing: false
        }
    );
    assert!(step_job(&s, 2, "a").is_some_and(|j| running_on_node(&s, j)));
    assert!(
        step_job(&s, 3, "a").is_none(),
        "run 3's continuation was run 2's"
    );
    assert_ne!(before, s.encode());
    assert_eq!(s.run(3).unwrap().revision, 1);
}

/// A continuation's job starts at once only on a node with a free slot and an empty queue;
/// otherwise it is queued for the scheduling loop, never lost.
#[test]
fn a_continuation_starts_its_job_only_in_a_free_slot() {
    let mut s = cluster(1);
    // A plain job holds the only slot.
    apply(
        &mut s,
        Command::SubmitJobs {
            now_ms: NOW,
            jobs: vec![model::JobSpec {
                function: "noop".into(),
                input: json!({}),
                files: vec![],
                priority: 0,
                idempotency_key: None,
            }],
            place: vec![Some(NODE)],
        },
    );
    let entry = continued_start(&s, NOW);
    apply(&mut s, entry);
    let a = step_job(&s, 1, "a").expect("the step's job exists");
    assert_eq!(
        s.job(a).unwrap().state,
        JobState::Queued,
        "no free slot: queued"
    );

    // A draining node takes no continuation either.
    let mut s = cluster(2);
    apply(
        &mut s,
        Command::SetNodeStatus {
            node: NODE,
            status: model::NodeStatus::Draining,
        },
    );
    let entry = continued_start(&s, NOW);
    apply(&mut s, entry);
    let a = step_job(&s, 1, "a").unwrap();
    assert_eq!(
        s.job(a).unwrap().state,
        JobState::Queued,
        "draining: queued"
    );
}

/// A continuation is an ordinary part of the log: it round-trips through JSON, and an entry
/// written before continuations existed reads as before.
#[test]
fn continuations_are_plain_log_entries() {
    let s = cluster(2);
    let c: Continuation = s.foresee_start("chain", &json!({}), NOW, 0, None).unwrap();
    assert_eq!((c.run, c.from, c.to), (1, 0, 1));
    assert!(c.place.is_none());
    let text = serde_json::to_string(&c).unwrap();
    assert!(!text.contains("place"), "{text}");
    let back: Continuation = serde_json::from_str(&text).unwrap();
    assert_eq!(back, c);
    assert!(s.foresee_start("nope", &json!({}), NOW, 0, None).is_none());
}

/// Several starts in one entry (a trigger's batch): each is foreseen for the id it will get,
/// counting the starts before it, so each run's first step starts in that entry.
#[test]
fn starts_in_one_entry_each_take_their_first_step() {
    let mut s = cluster(4);
    let starts: Vec<Command> = (0..3)
        .map(|i| Command::Continued {
            command: Box::new(start(NOW)),
            then: vec![s
                .foresee_start("chain", &json!({}), NOW, i, Some(NODE))
                .unwrap()],
        })
        .collect();
    apply(&mut s, Command::Batch(starts));
    for run in 1..=3 {
        let a = step_job(&s, run, "a").expect("each run's first job is in the entry");
        assert!(running_on_node(&s, a), "run {run}: {:?}", s.job(a));
    }
}
