//! The state machine, driven by commands: data in, a rendering of the state out.

use expect_test::{expect, Expect};
use model::{
    AttemptResult, Command, FunctionSpec, JobError, JobId, JobSpec, Outcome, Response, State,
};
use serde_json::json;

fn job(function: &str, priority: i32, key: Option<&str>) -> JobSpec {
    JobSpec {
        function: function.into(),
        input: json!({}),
        files: vec![],
        priority,
        idempotency_key: key.map(String::from),
    }
}

fn failed(job: u64, attempt: u64, code: &str) -> AttemptResult {
    AttemptResult {
        job: JobId(job),
        attempt: model::AttemptId(attempt),
        outcome: Outcome::Failed(JobError {
            code: code.into(),
            message: String::new(),
        }),
        log_bytes: 0,
    }
}

fn succeeded(job: u64, attempt: u64) -> AttemptResult {
    AttemptResult {
        job: JobId(job),
        attempt: model::AttemptId(attempt),
        outcome: Outcome::Succeeded {
            output: json!({"ok": true}),
            objects: vec![],
        },
        log_bytes: 12,
    }
}

/// Applies `commands` in order and renders every response and the final jobs.
fn check(commands: Vec<Command>, expected: Expect) {
    let mut state = State::default();
    let mut lines = Vec::new();
    for command in commands {
        let response = state.apply(command);
        state.assert_invariants();
        lines.push(format!("-> {}", short(&response)));
    }
    // A snapshot decodes to the same state.
    let reloaded = State::decode(&state.encode()).unwrap();
    reloaded.assert_invariants();
    assert_eq!(reloaded.encode(), state.encode());
    for job in state.jobs_after(None) {
        let attempts: Vec<String> = job
            .attempts
            .iter()
            .map(|a| {
                format!(
                    "{}@{}{}",
                    a.id,
                    a.started_at_ms,
                    a.error
                        .as_ref()
                        .map(|e| format!(":{}", e.code))
                        .unwrap_or_default()
                )
            })
            .collect();
        lines.push(format!(
            "job {} {} p{} {:?} not_before={} attempts=[{}]",
            job.id,
            job.function,
            job.priority,
            job.state,
            job.not_before_ms,
            attempts.join(" ")
        ));
    }
    lines.push(format!(
        "due at 10000: {:?}",
        state
            .due_jobs(10_000, 10)
            .iter()
            .map(|j| j.id.0)
            .collect::<Vec<_>>()
    ));
    expected.assert_eq(&lines.join("\n"));
}

fn short(r: &Response) -> String {
    serde_json::to_string(r).unwrap()
}

fn setup() -> Vec<Command> {
    let mut fail = FunctionSpec::builtin("fail");
    fail.retry.max_attempts = 2;
    vec![
        Command::DeployFunction {
            spec: FunctionSpec::builtin("noop"),
        },
        Command::DeployFunction { spec: fail },
        Command::RegisterNode {
            id: 1,
            addr: "n1".into(),
            slots: 2,
            labels: Default::default(),
            now_ms: 0,
        },
    ]
}

#[test]
fn jobs_start_in_priority_order_and_finish() {
    let mut commands = setup();
    commands.extend([
        Command::SubmitJobs {
            now_ms: 100,
            jobs: vec![
                job("noop", 0, None),
                job("noop", 5, None),
                job("nope", 0, None),
            ],
            place: vec![],
        },
        Command::StartAttempts {
            now_ms: 200,
            node: 1,
            jobs: vec![JobId(2), JobId(1)],
        },
        Command::FinishAttempts {
            now_ms: 300,
            results: vec![succeeded(2, 1), succeeded(2, 1)],
        },
    ]);
    check(
        commands,
        expect![[r#"
            -> {"deployed":{"version":1}}
            -> {"deployed":{"version":1}}
            -> "done"
            -> {"submitted":[{"created":1},{"created":2},{"rejected":{"code":"not_found","message":"no function \"nope\""}}]}
            -> {"started":[[2,1],[1,2]]}
            -> {"finished":{"taken":1,"stale":1}}
            job 1 noop p0 Running not_before=0 attempts=[2@200]
            job 2 noop p5 Succeeded not_before=0 attempts=[1@200]
            due at 10000: []"#]],
    );
}

#[test]
fn failures_retry_with_back_off_until_attempts_run_out() {
    let mut commands = setup();
    commands.extend([
        Command::SubmitJobs {
            now_ms: 100,
            jobs: vec![job("fail", 0, None), job("fail", 0, None)],
            place: vec![],
        },
        Command::StartAttempts {
            now_ms: 200,
            node: 1,
            jobs: vec![JobId(1), JobId(2)],
        },
        // Job 1 fails with a retryable code, job 2 with one that is never retried.
        Command::FinishAttempts {
            now_ms: 300,
            results: vec![failed(1, 1, "flaky"), failed(2, 2, "invalid_input")],
        },
        Command::StartAttempts {
            now_ms: 600,
            node: 1,
            jobs: vec![JobId(1)],
        },
        Command::FinishAttempts {
            now_ms: 700,
            results: vec![failed(1, 3, "flaky")],
        },
    ]);
    check(
        commands,
        expect![[r#"
            -> {"deployed":{"version":1}}
            -> {"deployed":{"version":1}}
            -> "done"
            -> {"submitted":[{"created":1},{"created":2}]}
            -> {"started":[[1,1],[2,2]]}
            -> {"finished":{"taken":2,"stale":0}}
            -> {"started":[[1,3]]}
            -> {"finished":{"taken":1,"stale":0}}
            job 1 fail p0 Failed not_before=499 attempts=[1@200:flaky 3@600:flaky]
            job 2 fail p0 Failed not_before=0 attempts=[2@200:invalid_input]
            due at 10000: []"#]],
    );
}

#[test]
fn idempotency_keys_cancel_and_abandoned_nodes() {
    let mut commands = setup();
    commands.extend([
        Command::SubmitJobs {
            now_ms: 100,
            jobs: vec![
                job("noop", 0, Some("k")),
                job("noop", 0, Some("k")),
                job("noop", 0, None),
            ],
            place: vec![],
        },
        Command::SubmitJobs {
            now_ms: 150,
            jobs: vec![job("noop", 0, Some("k"))],
            place: vec![],
        },
        Command::StartAttempts {
            now_ms: 200,
            node: 1,
            jobs: vec![JobId(1), JobId(2)],
        },
        Command::CancelJob {
            now_ms: 250,
            job: JobId(2),
        },
        Command::CancelJob {
            now_ms: 260,
            job: JobId(99),
        },
        Command::AbandonAttempts {
            now_ms: 300,
            node: 1,
            code: "node_restarted".into(),
        },
        // The late result of the abandoned attempt is fenced off.
        Command::FinishAttempts {
            now_ms: 400,
            results: vec![succeeded(1, 1)],
        },
    ]);
    check(
        commands,
        expect![[r#"
            -> {"deployed":{"version":1}}
            -> {"deployed":{"version":1}}
            -> "done"
            -> {"submitted":[{"created":1},{"existing":1},{"created":2}]}
            -> {"submitted":[{"existing":1}]}
            -> {"started":[[1,1],[2,2]]}
            -> {"cancelled":{"previous":"running"}}
            -> {"rejected":{"code":"not_found","message":"no job 99"}}
            -> {"abandoned":{"attempts":1}}
            -> {"finished":{"taken":0,"stale":1}}
            job 1 noop p0 Queued not_before=499 attempts=[1@200:node_restarted]
            job 2 noop p0 Cancelled not_before=0 attempts=[2@200:cancelled]
            due at 10000: [1]"#]],
    );
}

#[test]
fn a_placed_submit_starts_its_jobs_in_the_same_entry() {
    let mut commands = setup();
    commands.extend([
        // Job 1 is placed on node 1; job 2 waits; the duplicate key is not started twice.
        Command::SubmitJobs {
            now_ms: 100,
            jobs: vec![
                job("noop", 0, Some("k")),
                job("noop", 0, None),
                job("noop", 0, Some("k")),
            ],
            place: vec![Some(1), None, Some(1)],
        },
    ]);
    check(
        commands,
        expect![[r#"
            -> {"deployed":{"version":1}}
            -> {"deployed":{"version":1}}
            -> "done"
            -> {"submitted":[{"created":1},{"created":2},{"existing":1}]}
            job 1 noop p0 Running not_before=0 attempts=[1@100]
            job 2 noop p0 Queued not_before=0 attempts=[]
            due at 10000: [2]"#]],
    );
}
