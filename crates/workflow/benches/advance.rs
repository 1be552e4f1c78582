//! What `advance` costs over whole runs, since the leader calls it after every result: a
//! 3-step chain, a fan-out of 100 elements with a fan-in, and a chain of 200 steps. Each run
//! is driven as the node will drive it (advance, apply, record each result, advance again).
//! A plain `harness = false` bench that prints the median of several runs.

use serde_json::json;
use std::hint::black_box;
use std::time::{Duration, Instant};
use workflow::{advance, apply, deploy, record_attempt, RunCommand, RunState, WorkflowSpec};

const RUNS: usize = 21;
/// What one `advance` may cost, at most: the leader calls it after every result.
const BUDGET_US: f64 = 1_000.0;

fn chain(steps: usize) -> String {
    let mut toml = String::from("name = \"chain\"\n");
    for i in 0..steps {
        toml.push_str(&format!(
            "[[steps]]\nname = \"s{i}\"\nfunction = \"noop\"\n"
        ));
        if i > 0 {
            toml.push_str(&format!(
                "needs = [\"s{}\"]\ninput = {{ previous = \"{{{{ steps.s{}.output }}}}\" }}\n",
                i - 1,
                i - 1
            ));
        }
    }
    toml
}

const FAN: &str = r#"
name = "fan"
[[steps]]
name = "split"
function = "noop"
[[steps]]
name = "each"
function = "noop"
needs = ["split"]
for_each = "{{ steps.split.output.items }}"
input = { item = "{{ item }}", n = "{{ index }}" }
[[steps]]
name = "join"
function = "noop"
needs = ["each"]
input = "{{ steps.each.output }}"
"#;

/// Drives one run to its end, every attempt succeeding (`split` with the list `items`, the
/// others with a small object): an advance at the start and after each result. Gives the
/// advances made.
fn drive(spec: &WorkflowSpec, items: &serde_json::Value) -> usize {
    let mut run = RunState::new(spec, 1, json!({}), 0);
    let mut now_ms = 0;
    let mut advances = 0;
    let mut running = std::collections::VecDeque::new();
    loop {
        let result = advance(spec, &run, now_ms);
        advances += 1;
        for command in &result.commands {
            apply(&mut run, command, now_ms);
            if let RunCommand::StartAttempt {
                step,
                element,
                job_key,
                ..
            } = command
            {
                running.push_back((step.clone(), *element, job_key.clone()));
            }
        }
        let Some((step, element, key)) = running.pop_front() else {
            break;
        };
        now_ms += 1;
        let output = if step == "split" {
            json!({ "items": items })
        } else {
            json!({"ok": true, "file": format!("out/{element}.flac")})
        };
        record_attempt(spec, &mut run, &step, element, &key, Ok(output), now_ms);
    }
    assert!(run.is_finished(), "the bench's run is stuck");
    advances
}

fn main() {
    let items = json!((0..100).collect::<Vec<u32>>());
    let cases = [
        ("3-step chain", chain(3)),
        ("fan-out of 100 + fan-in", FAN.to_string()),
        ("200-step chain", chain(200)),
    ];
    println!("advance over whole runs, median of {RUNS} runs");
    for (name, toml) in cases {
        let spec = deploy(&toml, &|_| true).expect("the bench's spec deploys");
        let mut times: Vec<Duration> = Vec::with_capacity(RUNS);
        let mut advances = 0;
        for _ in 0..RUNS {
            let start = Instant::now();
            advances = black_box(drive(black_box(&spec), &items));
            times.push(start.elapsed());
        }
        times.sort();
        let median_ms = times[RUNS / 2].as_secs_f64() * 1e3;
        let per_advance_us = median_ms * 1e3 / advances as f64;
        let verdict = if per_advance_us < BUDGET_US {
            "ok"
        } else {
            "OVER BUDGET"
        };
        println!(
            "{name:>24}: {median_ms:8.3} ms a run, {:6.1} us an advance ({advances} advances, {verdict})",
            per_advance_us
        );
    }
}
