//! The throttle rules, data in and text out.

use super::*;
use expect_test::{expect, Expect};
use serde_json::json;

fn check_rate(per_s: f64, expected: Expect) {
    expected.assert_eq(&format!("{:?}", Rate::per_s(per_s)));
}

#[test]
fn a_rate_is_starts_per_window() {
    check_rate(5.0, expect!["Rate { starts: 5, window_ms: 1000 }"]);
    check_rate(2.5, expect!["Rate { starts: 2, window_ms: 800 }"]);
    check_rate(0.5, expect!["Rate { starts: 1, window_ms: 2000 }"]);
    check_rate(0.001, expect!["Rate { starts: 1, window_ms: 1000000 }"]);
    check_rate(1000.0, expect!["Rate { starts: 1000, window_ms: 1000 }"]);
}

fn check_resolve(spec: ThrottleSpec, input: Value, expected: Expect) {
    expected.assert_eq(&format!("{:?}", spec.resolve("function:f", &input)));
}

#[test]
fn a_key_names_the_bucket() {
    let keyed = |key: &str| ThrottleSpec {
        concurrency: Some(2),
        rate_per_s: None,
        key: Some(key.into()),
    };
    check_resolve(
        keyed("/customer"),
        json!({"customer": "acme"}),
        expect![[r#"Throttle { bucket: "function:f:acme", concurrency: Some(2), rate: None }"#]],
    );
    check_resolve(
        keyed("/a/0"),
        json!({"a": [7]}),
        expect![[r#"Throttle { bucket: "function:f:7", concurrency: Some(2), rate: None }"#]],
    );
    check_resolve(
        keyed("/customer"),
        json!({}),
        expect![[r#"Throttle { bucket: "function:f:null", concurrency: Some(2), rate: None }"#]],
    );
    check_resolve(
        keyed("/customer"),
        json!({"customer": "x".repeat(200)}),
        expect![[
            r#"Throttle { bucket: "function:f:sha256=aa20c23e3201834050679e1d88941b9a6fed0557c9a705cb2c315e2e63fd486d", concurrency: Some(2), rate: None }"#
        ]],
    );
    check_resolve(
        ThrottleSpec {
            concurrency: None,
            rate_per_s: Some(4.0),
            key: None,
        },
        json!({"customer": "acme"}),
        expect![[
            r#"Throttle { bucket: "function:f", concurrency: None, rate: Some(Rate { starts: 4, window_ms: 1000 }) }"#
        ]],
    );
}

#[test]
fn bad_specs_say_what_is_wrong() {
    let errors: Vec<String> = [
        ThrottleSpec::default(),
        ThrottleSpec {
            concurrency: Some(0),
            ..ThrottleSpec::default()
        },
        ThrottleSpec {
            rate_per_s: Some(5000.0),
            ..ThrottleSpec::default()
        },
        ThrottleSpec {
            rate_per_s: Some(f64::NAN),
            ..ThrottleSpec::default()
        },
        ThrottleSpec {
            concurrency: Some(1),
            key: Some("customer".into()),
            ..ThrottleSpec::default()
        },
    ]
    .iter()
    .map(|s| s.validate().unwrap_err())
    .collect();
    expect![[r#"
        a throttle needs `concurrency`, `rate_per_s` or both
        throttle concurrency must be 1 to 100000
        throttle rate_per_s must be 0.001 to 1000
        throttle rate_per_s must be 0.001 to 1000
        throttle key "customer" must be a JSON pointer into the input (`/customer`), at most 256 bytes"#]]
    .assert_eq(&errors.join("\n"));
}

/// Starts jobs of one throttle at the given times, recording each start the check admits;
/// one line per time.
fn check_admits(throttle: &Throttle, running: u32, times_ms: &[u64], expected: Expect) {
    let mut starts = VecDeque::new();
    let lines: Vec<String> = times_ms
        .iter()
        .map(|&now| {
            let usage = Usage {
                running,
                starts_ms: &starts,
            };
            match admits(throttle, usage, now) {
                Ok(()) => {
                    record_start(throttle, &mut starts, now);
                    format!("{now}: start")
                }
                Err(held) => format!("{now}: {held}"),
            }
        })
        .collect();
    expected.assert_eq(&lines.join("\n"));
}

#[test]
fn a_rate_allows_n_starts_in_any_window() {
    let throttle = Throttle {
        bucket: "b".into(),
        concurrency: None,
        rate: Some(Rate::per_s(2.0)),
    };
    check_admits(
        &throttle,
        0,
        &[0, 10, 20, 999, 1000, 1005, 1010, 2000],
        expect![[r#"
            0: start
            10: start
            20: throttle b allows 2 start(s) per 1000 ms across the cluster; the next may start at 1000 ms
            999: throttle b allows 2 start(s) per 1000 ms across the cluster; the next may start at 1000 ms
            1000: start
            1005: throttle b allows 2 start(s) per 1000 ms across the cluster; the next may start at 1010 ms
            1010: start
            2000: start"#]],
    );
}

#[test]
fn concurrency_counts_the_running_jobs() {
    let throttle = Throttle {
        bucket: "b".into(),
        concurrency: Some(2),
        rate: None,
    };
    check_admits(&throttle, 1, &[0], expect!["0: start"]);
    check_admits(
        &throttle,
        2,
        &[0],
        expect!["0: throttle b allows 2 running at once across the cluster; 2 run"],
    );
}
