//! Property: random DAGs (needs, conditions, fan-outs with caps, retry policies, time-outs, a
//! `finally` step) with random results, time jumps and aborts always reach a finished run
//! within a bound, never start a step before its needs are done, never run more elements at
//! once than a cap allows, and `advance` never panics.

use proptest::prelude::*;
use serde_json::json;
use workflow::{
    advance, apply, record_attempt, validate, Condition, Control, RunCommand, RunState, StepError,
    StepStatus, Template, WorkflowSpec,
};

use crate::{function_exists, must_fit};

/// A tiny PRNG so that one proptest seed draws a whole scenario.
struct Draw(u64);

impl Draw {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn random_spec(d: &mut Draw) -> WorkflowSpec {
    let count = 1 + d.below(10) as usize;
    let mut toml = String::from("name = \"random\"\n");
    if d.chance(30) {
        toml.push_str(&format!("timeout_ms = {}\n", 1_000 + d.below(20_000)));
    }
    toml.push_str(&format!(
        "retry = {{ max_attempts = {}, never_codes = [\"fatal\"], backoff = {{ initial_ms = {}, max_ms = 5000 }} }}\n",
        1 + d.below(3),
        1 + d.below(500)
    ));
    for i in 0..count {
        toml.push_str(&format!("[[steps]]\nname = \"s{i}\"\nfunction = \"f\"\n"));
        let needs: Vec<String> = (0..i)
            .filter(|_| d.chance(35))
            .map(|j| format!("\"s{j}\""))
            .collect();
        toml.push_str(&format!("needs = [{}]\n", needs.join(", ")));
        if let Some(first) = needs.first() {
            if d.chance(30) {
                let need = first.trim_matches('"');
                toml.push_str(&format!(
                    "if = \"steps.{need}.output.flag || steps.{need}.state == 'skipped'\"\n"
                ));
            }
        }
        if d.chance(30) {
            toml.push_str(&format!(
                "for_each = \"{{{{ input.items }}}}\"\nconcurrency = {}\ninput = \"{{{{ item }}}}\"\n",
                1 + d.below(3)
            ));
        }
        if d.chance(20) {
            toml.push_str(&format!("timeout_ms = {}\n", 100 + d.below(3_000)));
        }
    }
    if d.chance(50) {
        toml.push_str(
            "[finally]\nname = \"clean\"\nfunction = \"f\"\ninput = \"{{ run.state }}\"\n",
        );
    }
    let spec = WorkflowSpec::from_toml(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    validate(&spec, &function_exists).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    spec
}

/// Events in one scenario at most; a run that needs more is stuck.
const EVENTS_MAX: usize = 2_000;

fn must_finish(seed: u64) {
    let mut d = Draw(seed);
    let spec = random_spec(&mut d);
    let items: Vec<u64> = (0..d.below(5)).collect();
    let mut run = RunState::new(&spec, seed, json!({"items": items}), 0);
    let mut now_ms = 0u64;
    let mut reopens = 3;
    // Every attempt's job key, over the whole scenario: a key is never used twice, so no
    // function runs twice for the same try.
    let mut keys = std::collections::BTreeSet::new();
    for _ in 0..EVENTS_MAX {
        let result = advance(&spec, &run, now_ms);
        for command in &result.commands {
            must_fit(&spec, &run, command);
            if let RunCommand::StartAttempt { step, job_key, .. } = command {
                assert!(keys.insert(job_key.clone()), "job key {job_key} used twice");
                let s = &run.steps[step];
                assert_eq!(
                    s.status,
                    StepStatus::Running,
                    "{step} gets an attempt while {}",
                    s.status
                );
            }
            apply(&mut run, command, now_ms);
        }
        for step in &spec.steps {
            let running = run.steps[&step.name]
                .elements
                .iter()
                .filter(|e| e.live_attempt().is_some())
                .count();
            let cap = step.concurrency.map_or(usize::MAX, |c| c as usize);
            assert!(
                running <= cap,
                "{} runs {running} elements, over {cap}",
                step.name
            );
        }
        if run.is_finished() {
            let live = run
                .steps
                .values()
                .flat_map(|s| &s.elements)
                .filter(|e| e.live_attempt().is_some())
                .count();
            assert_eq!(live, 0, "a finished run still has live attempts");
            // Sometimes an operator re-opens the finished run; each control either applies
            // whole or leaves the run as it was.
            if reopens == 0 || !d.chance(50) {
                return;
            }
            reopens -= 1;
            let step = format!("s{}", d.below(spec.steps.len() as u64));
            let c = match d.below(3) {
                0 => Control::Retry { step: None },
                1 => Control::Skip { step },
                _ => Control::Restart { from: Some(step) },
            };
            let before = run.clone();
            if workflow::control(&spec, &mut run, &c, now_ms).is_err() {
                assert_eq!(run, before, "a refused {c:?} changed the run");
            }
            continue;
        }
        // One event: a result for a random live attempt, a time jump, or an abort.
        let live: Vec<(String, usize, String)> = run
            .steps
            .iter()
            .flat_map(|(name, s)| {
                s.elements.iter().enumerate().filter_map(move |(i, e)| {
                    e.live_attempt()
                        .map(|a| (name.clone(), i, a.job_key.clone()))
                })
            })
            .collect();
        now_ms += d.below(200);
        if d.chance(2) {
            let before = run.clone();
            if workflow::control(&spec, &mut run, &Control::Abort, now_ms).is_err() {
                assert_eq!(run, before, "a refused abort changed the run");
            }
        } else if !live.is_empty() && d.chance(90) {
            let (step, element, key) = &live[d.below(live.len() as u64) as usize];
            let outcome = match d.below(10) {
                0..=6 => Ok(json!({"flag": d.chance(50)})),
                7 | 8 => Err(StepError::new("timeout", "slow")),
                _ => Err(StepError::new("fatal", "broken")),
            };
            record_attempt(&spec, &mut run, step, *element, key, outcome, now_ms);
        } else if let Some(wake) = result.wake_at_ms {
            now_ms = now_ms.max(wake);
        } else {
            assert!(
                !live.is_empty(),
                "stuck: nothing runs and nothing is due\n{run:#?}"
            );
        }
    }
    panic!("the run did not finish within {EVENTS_MAX} events\n{run:#?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]
    #[test]
    fn random_runs_always_finish_and_respect_needs(seed in any::<u64>()) {
        must_finish(seed);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]
    /// Any text, made mostly of the language's own characters, parses or gets an error; and
    /// `advance` on an unvalidated spec that uses it as a condition, a `for_each` and an input
    /// decides something without a panic.
    #[test]
    fn parsers_and_advance_never_panic(text in "[a-z0-9_.\\[\\]'\"(){}!=<>&| -]{0,80}|\\PC{0,40}") {
        if let Ok(c) = Condition::parse(&text) {
            let _ = c.paths();
        }
        if let Ok(t) = Template::parse(&text) {
            let _ = t.paths();
        }
        let toml = "name = \"w\"\n[[steps]]\nname = \"a\"\nfunction = \"f\"\n[[steps]]\nname = \"b\"\nfunction = \"f\"\nneeds = [\"a\"]\n";
        let mut spec = WorkflowSpec::from_toml(toml).unwrap();
        spec.steps[1].condition = Some(text.clone());
        spec.steps[1].input = json!({"x": text.clone(), "y": [text.clone()]});
        let mut fanned = spec.clone();
        fanned.steps[1].condition = None;
        fanned.steps[1].for_each = Some(format!("{{{{ {text} }}}}"));
        for spec in [spec, fanned] {
            let input = json!({"a": [1, {"b": "c"}], "n": 2});
            let mut run = RunState::new(&spec, 1, input, 0);
            let a = advance(&spec, &run, 0);
            for command in &a.commands {
                apply(&mut run, command, 0);
            }
            let key = run.steps["a"].elements[0].attempts[0].job_key.clone();
            let output = json!({"flag": true, "list": [1, 2]});
            record_attempt(&spec, &mut run, "a", 0, &key, Ok(output), 1);
            let b = advance(&spec, &run, 1);
            prop_assert!(!b.commands.is_empty(), "nothing happened after a succeeded");
        }
    }
}
