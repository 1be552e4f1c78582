//! Triggers as the replicated state keeps them: the spec (see the `triggers` crate), whether
//! an operator paused it, and its cursor: for a cron trigger the latest tick it fired, for a
//! bucket trigger the object versions it has seen, for a Kafka trigger the next offset of
//! each partition.

use serde::{Deserialize, Serialize};
pub use triggers::{BucketCursor, KafkaCursor, TriggerSpec};

/// Triggers in the cluster at most.
pub const TRIGGERS_MAX: usize = 1_000;

/// One trigger.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trigger {
    pub spec: TriggerSpec,
    pub created_at_ms: u64,
    #[serde(default)]
    pub paused: bool,
    /// A cron trigger's latest tick fired (its creation, or its latest resume, before the
    /// first): the next pass fires only ticks after it. It moves in the same log entry as
    /// the jobs of the ticks it passes, and never back.
    pub cursor_ms: u64,
    /// Ticks a cron trigger fired; objects or records a bucket or Kafka trigger started
    /// jobs for.
    #[serde(default)]
    pub fired: u64,
    /// A bucket trigger's cursor; it lists objects modified from `created_at_ms` on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<BucketCursor>,
    /// A Kafka trigger's cursor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaCursor>,
}

#[cfg(test)]
mod tests {
    use crate::ErrorCode;

    /// The `triggers` crate spells its codes as `ErrorCode`'s: each must be one of them.
    #[test]
    fn trigger_codes_are_error_codes() {
        for code in triggers::Code::ALL {
            assert!(
                ErrorCode::parse(code.as_str()).is_some(),
                "{code} is not an ErrorCode"
            );
        }
    }

    fn cron(name: &str) -> crate::TriggerSpec {
        serde_json::from_value(serde_json::json!({
            "name": name,
            "function": "noop",
            "cron": { "schedule": "* * * * * *" },
        }))
        .unwrap()
    }

    fn must_apply(state: &mut crate::State, command: crate::Command) -> crate::Response {
        let answer = state.apply(command);
        state.assert_invariants();
        answer
    }

    /// Create, advance, pause, resume and delete, as every replica applies them: the cursor
    /// never moves back, a repeated advance counts nothing twice, and a resume skips the ticks
    /// of the pause. Triggers are in snapshots.
    #[test]
    fn a_trigger_lives_in_the_replicated_state() {
        use crate::{Command, Response, State};
        let mut s = State::default();
        must_apply(
            &mut s,
            Command::DeployFunction {
                spec: crate::FunctionSpec::builtin("noop"),
            },
        );
        let create = |spec| Command::CreateTrigger {
            now_ms: 1_000,
            spec,
        };
        assert_eq!(must_apply(&mut s, create(cron("t"))), Response::Done);
        let again = must_apply(&mut s, create(cron("t")));
        assert!(
            matches!(&again, Response::Rejected(e) if e.code == ErrorCode::Conflict),
            "{again:?}"
        );
        let mut missing = cron("u");
        missing.function = Some("nope".into());
        let refused = must_apply(&mut s, create(missing));
        assert!(
            matches!(&refused, Response::Rejected(e) if e.code == ErrorCode::NotFound),
            "{refused:?}"
        );
        // A trigger of a workflow: the workflow must be deployed.
        let mut of_run = cron("w");
        of_run.function = None;
        of_run.workflow = Some("chain".into());
        let refused = must_apply(&mut s, create(of_run.clone()));
        assert!(
            matches!(&refused, Response::Rejected(e) if e.code == ErrorCode::NotFound && e.message.contains("workflow")),
            "{refused:?}"
        );
        let chain = "name = \"chain\"\n[[steps]]\nname = \"a\"\nfunction = \"noop\"\n";
        let spec = crate::workflow::deploy(chain, &|f| f == "noop").unwrap();
        must_apply(
            &mut s,
            Command::DeployWorkflow {
                spec: Box::new(spec),
            },
        );
        assert_eq!(must_apply(&mut s, create(of_run)), Response::Done);
        must_apply(&mut s, Command::DeleteTrigger { name: "w".into() });
        let mut bad = cron("v");
        bad.cron.as_mut().unwrap().schedule = "nonsense".into();
        let refused = must_apply(&mut s, create(bad));
        assert!(
            matches!(&refused, Response::Rejected(e) if e.code == ErrorCode::InvalidInput),
            "{refused:?}"
        );
        assert_eq!(s.trigger("t").unwrap().cursor_ms, 1_000);
        let advance = |cursor_ms| Command::AdvanceTrigger {
            name: "t".into(),
            cursor_ms,
            fired: 2,
        };
        must_apply(&mut s, advance(3_000));
        must_apply(&mut s, advance(3_000));
        must_apply(&mut s, advance(2_000));
        let t = s.trigger("t").unwrap();
        assert_eq!((t.cursor_ms, t.fired), (3_000, 2));
        let pause = |now_ms, paused| Command::PauseTrigger {
            now_ms,
            name: "t".into(),
            paused,
        };
        must_apply(&mut s, pause(4_000, true));
        assert!(s.trigger("t").unwrap().paused);
        must_apply(&mut s, pause(9_000, false));
        let t = s.trigger("t").unwrap();
        assert_eq!((t.paused, t.cursor_ms), (false, 9_000));
        let copy = crate::State::decode(&s.snapshot_copy().encode()).unwrap();
        assert_eq!(copy.trigger("t"), s.trigger("t"));
        assert_eq!(
            must_apply(&mut s, Command::DeleteTrigger { name: "t".into() }),
            Response::Done
        );
        assert!(s.trigger("t").is_none());
        assert!(matches!(
            must_apply(&mut s, advance(10_000)),
            Response::Rejected(e) if e.code == ErrorCode::NotFound
        ));
    }

    /// A bucket trigger's seen versions and a Kafka trigger's offsets move with their
    /// commands, on every replica the same, and taking one twice counts nothing twice.
    #[test]
    fn bucket_and_kafka_cursors_move_forward_once() {
        use crate::{Command, Response, State};
        use serde_json::json;
        let mut s = State::default();
        must_apply(
            &mut s,
            Command::DeployFunction {
                spec: crate::FunctionSpec::builtin("noop"),
            },
        );
        let spec = |v| serde_json::from_value(v).unwrap();
        for spec in [
            spec(json!({ "name": "b", "function": "noop", "bucket": { "prefix": "in/" } })),
            spec(json!({ "name": "k", "function": "noop",
                         "kafka": { "brokers": "h:9092", "topic": "songs" } })),
        ] {
            let created = must_apply(&mut s, Command::CreateTrigger { now_ms: 5, spec });
            assert_eq!(created, Response::Done);
        }
        let seen = vec![triggers::Seen {
            id: "a".repeat(64),
            modified_ms: 7,
        }];
        let advance = Command::AdvanceBucket {
            name: "b".into(),
            seen: seen.clone(),
        };
        must_apply(&mut s, advance.clone());
        must_apply(&mut s, advance);
        let b = s.trigger("b").unwrap();
        assert_eq!(b.fired, 1);
        assert_eq!(b.bucket.as_ref().unwrap().watermark_ms, 7);
        let offsets = |next_offset| Command::AdvanceKafka {
            name: "k".into(),
            partition: 0,
            next_offset,
            records: 3,
        };
        must_apply(&mut s, offsets(3));
        must_apply(&mut s, offsets(3));
        must_apply(&mut s, offsets(1));
        let k = s.trigger("k").unwrap();
        assert_eq!(k.fired, 3);
        assert!(!k.kafka.as_ref().unwrap().is_new(0, 2));
        let wrong = must_apply(
            &mut s,
            Command::AdvanceKafka {
                name: "b".into(),
                partition: 0,
                next_offset: 1,
                records: 1,
            },
        );
        assert!(
            matches!(&wrong, Response::Rejected(e) if e.code == ErrorCode::InvalidInput),
            "{wrong:?}"
        );
        let copy = State::decode(&s.snapshot_copy().encode()).unwrap();
        assert_eq!(copy.trigger("b"), s.trigger("b"));
        assert_eq!(copy.trigger("k"), s.trigger("k"));
    }

    /// Partitions are given at later epochs only, and a consumer's entry is taken whole
    /// while its node holds its partitions at the epochs it names, and refused whole (no job,
    /// no cursor move) once they moved.
    #[test]
    fn a_kafka_consumers_entry_is_fenced_by_its_partitions_epochs() {
        use crate::{Command, JobSpec, Response, State, SubmitResult};
        use serde_json::json;
        use triggers::PartitionOwner;
        let mut s = State::default();
        must_apply(
            &mut s,
            Command::DeployFunction {
                spec: crate::FunctionSpec::builtin("noop"),
            },
        );
        for id in [1, 2] {
            must_apply(
                &mut s,
                Command::RegisterNode {
                    id,
                    addr: format!("n{id}:1"),
                    slots: 1,
                    labels: Default::default(),
                    now_ms: 1,
                },
            );
        }
        let spec = serde_json::from_value(json!({ "name": "k", "function": "noop",
            "kafka": { "brokers": "h:9092", "topic": "songs" } }))
        .unwrap();
        must_apply(&mut s, Command::CreateTrigger { now_ms: 5, spec });
        let assign = |partition, node, epoch| Command::AssignKafka {
            name: "k".into(),
            owners: vec![(partition, PartitionOwner { node, epoch })],
        };
        assert_eq!(must_apply(&mut s, assign(0, 1, 1)), Response::Done);
        let refused = must_apply(&mut s, assign(0, 9, 2));
        assert!(
            matches!(&refused, Response::Rejected(e) if e.code == ErrorCode::InvalidInput),
            "{refused:?}"
        );
        let entry = |node, epoch, offset: i64| Command::Fenced {
            name: "k".into(),
            node,
            partitions: vec![(0, epoch)],
            first: vec![(0, offset)],
            command: Box::new(Command::Batch(vec![
                Command::SubmitJobs {
                    now_ms: 10,
                    jobs: vec![JobSpec {
                        function: "noop".into(),
                        input: json!({}),
                        files: Vec::new(),
                        priority: 0,
                        idempotency_key: Some(format!("kafka:k:songs:0:{offset}")),
                    }],
                    place: Vec::new(),
                },
                Command::AdvanceKafka {
                    name: "k".into(),
                    partition: 0,
                    next_offset: offset + 1,
                    records: 1,
                },
            ])),
        };
        let taken = must_apply(&mut s, entry(1, 1, 0));
        assert!(
            matches!(&taken, Response::Batch(r) if matches!(&r[0], Response::Submitted(j) if matches!(j[0], SubmitResult::Created(_)))),
            "{taken:?}"
        );
        // Node 1 is lost: partition 0 goes to node 2 at epoch 2, and an older view of the
        // assignment changes nothing.
        must_apply(&mut s, assign(0, 2, 2));
        must_apply(&mut s, assign(0, 1, 1));
        let late = must_apply(&mut s, entry(1, 1, 1));
        assert!(
            matches!(&late, Response::Rejected(e) if e.code == ErrorCode::Conflict),
            "{late:?}"
        );
        let k = s.trigger("k").unwrap();
        let cursor = k.kafka.as_ref().unwrap();
        assert_eq!((cursor.next_offset(0), k.fired), (1, 1));
        assert_eq!(
            s.jobs_after(None).count(),
            1,
            "the fenced entry started no job"
        );
        assert!(matches!(
            must_apply(&mut s, entry(2, 2, 1)),
            Response::Batch(_)
        ));
        assert_eq!(
            s.trigger("k")
                .unwrap()
                .kafka
                .as_ref()
                .unwrap()
                .next_offset(0),
            2
        );
        // The holder's entry planned from a cursor the log has passed (a consumer restarted
        // before its last entry was applied where it reads): records 1 and 2 batched again
        // under the key of the batch that took record 1. Taken, the batch would be dropped as
        // a repeat and the cursor moved past record 2, which no job holds: refused whole.
        let mut stale = entry(2, 2, 1);
        if let Command::Fenced { command, .. } = &mut stale {
            if let Command::Batch(commands) = command.as_mut() {
                if let Command::AdvanceKafka {
                    next_offset,
                    records,
                    ..
                } = &mut commands[1]
                {
                    (*next_offset, *records) = (3, 2);
                }
            }
        }
        let refused = must_apply(&mut s, stale);
        assert!(
            matches!(&refused, Response::Rejected(e) if e.code == ErrorCode::Conflict && e.message.contains("past offset 1")),
            "{refused:?}"
        );
        let k = s.trigger("k").unwrap();
        assert_eq!((k.kafka.as_ref().unwrap().next_offset(0), k.fired), (2, 2));
        assert_eq!(
            s.jobs_after(None).count(),
            2,
            "the stale entry started no job"
        );
        let copy = State::decode(&s.snapshot_copy().encode()).unwrap();
        assert_eq!(copy.trigger("k"), s.trigger("k"));
    }
}
