//! Whole runs through `advance`: each case drives a run with results, time and controls, and
//! snapshots the transcript of commands and the final state.

use expect_test::{expect, Expect};
use serde_json::{json, Value};
use workflow::{record_attempt, stats, Control, Recorded, StepStatus};

use crate::Sim;

fn check_run(toml: &str, input: Value, script: impl FnOnce(&mut Sim), expected: Expect) -> Sim {
    let mut sim = Sim::new(toml, input);
    sim.log.push("@0".into());
    sim.advance();
    script(&mut sim);
    expected.assert_eq(&sim.transcript());
    sim
}

#[test]
fn linear_chain_passes_outputs_along() {
    check_run(
        r#"
        name = "chain"
        [[steps]]
        name = "a"
        function = "analyze"
        input = { path = "{{ input.path }}" }
        [[steps]]
        name = "b"
        function = "cut"
        needs = ["a"]
        input = { start_s = "{{ steps.a.output.chorus.start_s }}", label = "at {{ steps.a.output.chorus.start_s }}s of {{ input.path }}" }
        [[steps]]
        name = "c"
        function = "store"
        needs = ["b"]
        input = "{{ steps.b.output }}"
        "#,
        json!({"path": "song.flac"}),
        |sim| {
            sim.at(10)
                .ok("a", 0, json!({"chorus": {"start_s": 42.5}}))
                .step();
            sim.at(20).ok("b", 0, json!(["x", 1])).step();
            sim.at(30).ok("c", 0, json!(null)).step();
        },
        expect![[r#"
            @0
              start step a
              start a[0] #1 analyze({"path":"song.flac"}) key run:7:a:0:0:1
            @10
            a[0] ok {"chorus":{"start_s":42.5}}
              finish step a: {"chorus":{"start_s":42.5}}
              start step b
              start b[0] #1 cut({"label":"at 42.5s of song.flac","start_s":42.5}) key run:7:b:0:0:1
            @20
            b[0] ok ["x",1]
              finish step b: ["x",1]
              start step c
              start c[0] #1 store(["x",1]) key run:7:c:0:0:1
            @30
            c[0] ok null
              finish step c: null
              end run succeeded
              finish run succeeded
            run: succeeded
              a: succeeded (round 0) output {"chorus":{"start_s":42.5}}
              b: succeeded (round 0) output ["x",1]
              c: succeeded (round 0) output null"#]],
    );
}

#[test]
fn diamond_joins_both_branches() {
    check_run(
        r#"
        name = "diamond"
        [[steps]]
        name = "top"
        function = "f"
        [[steps]]
        name = "left"
        function = "f"
        needs = ["top"]
        [[steps]]
        name = "right"
        function = "f"
        needs = ["top"]
        [[steps]]
        name = "bottom"
        function = "f"
        needs = ["left", "right"]
        input = { l = "{{ steps.left.output }}", r = "{{ steps.right.output }}", t = "{{ steps.top.output.n }}" }
        "#,
        json!({}),
        |sim| {
            sim.at(1).ok("top", 0, json!({"n": 1})).step();
            sim.at(2).ok("right", 0, json!("R")).step();
            sim.at(3).ok("left", 0, json!("L")).step();
            sim.at(4).ok("bottom", 0, json!(true)).step();
        },
        expect![[r#"
            @0
              start step top
              start top[0] #1 f(null) key run:7:top:0:0:1
            @1
            top[0] ok {"n":1}
              finish step top: {"n":1}
              start step left
              start step right
              start left[0] #1 f(null) key run:7:left:0:0:1
              start right[0] #1 f(null) key run:7:right:0:0:1
            @2
            right[0] ok "R"
              finish step right: "R"
            @3
            left[0] ok "L"
              finish step left: "L"
              start step bottom
              start bottom[0] #1 f({"l":"L","r":"R","t":1}) key run:7:bottom:0:0:1
            @4
            bottom[0] ok true
              finish step bottom: true
              end run succeeded
              finish run succeeded
            run: succeeded
              top: succeeded (round 0) output {"n":1}
              left: succeeded (round 0) output "L"
              right: succeeded (round 0) output "R"
              bottom: succeeded (round 0) output true"#]],
    );
}

#[test]
fn fan_out_under_a_cap_then_fan_in_in_order() {
    let sim = check_run(
        r#"
        name = "fan"
        [[steps]]
        name = "each"
        function = "transcode"
        for_each = "{{ input.formats }}"
        concurrency = 2
        input = { format = "{{ item }}", n = "{{ index }}" }
        [[steps]]
        name = "join"
        function = "catalogue"
        needs = ["each"]
        input = { outputs = "{{ steps.each.output }}", second = "{{ steps.each.output[1].file }}" }
        "#,
        json!({"formats": ["flac", "mp3", "opus", "wav"]}),
        |sim| {
            sim.at(1).ok("each", 1, json!({"file": "b.mp3"})).step();
            sim.at(2).ok("each", 0, json!({"file": "a.flac"})).step();
            sim.at(3).ok("each", 3, json!({"file": "d.wav"})).step();
            sim.at(4).ok("each", 2, json!({"file": "c.opus"})).step();
            sim.at(5).ok("join", 0, json!("done")).step();
        },
        expect![[r#"
            @0
              start step each over ["flac","mp3","opus","wav"]
              start each[0] #1 transcode({"format":"flac","n":0}) key run:7:each:0:0:1
              start each[1] #1 transcode({"format":"mp3","n":1}) key run:7:each:0:1:1
            @1
            each[1] ok {"file":"b.mp3"}
              start each[2] #1 transcode({"format":"opus","n":2}) key run:7:each:0:2:1
            @2
            each[0] ok {"file":"a.flac"}
              start each[3] #1 transcode({"format":"wav","n":3}) key run:7:each:0:3:1
            @3
            each[3] ok {"file":"d.wav"}
            @4
            each[2] ok {"file":"c.opus"}
              finish step each: [{"file":"a.flac"},{"file":"b.mp3"},{"file":"c.opus"},{"file":"d.wav"}]
              start step join
              start join[0] #1 catalogue({"outputs":[{"file":"a.flac"},{"file":"b.mp3"},{"file":"c.opus"},{"file":"d.wav"}],"second":"b.mp3"}) key run:7:join:0:0:1
            @5
            join[0] ok "done"
              finish step join: "done"
              end run succeeded
              finish run succeeded
            run: succeeded
              each: succeeded (round 0) output [{"file":"a.flac"},{"file":"b.mp3"},{"file":"c.opus"},{"file":"d.wav"}]
              join: succeeded (round 0) output "done""#]],
    );
    assert_eq!(sim.peak_running["each"], 2);
}

#[test]
fn an_empty_fan_out_succeeds_with_an_empty_list_and_a_bad_one_fails() {
    let toml = r#"
        name = "fan"
        [[steps]]
        name = "each"
        function = "f"
        for_each = "{{ input.items }}"
        "#;
    check_run(
        toml,
        json!({"items": []}),
        |_| {},
        expect![[r#"
            @0
              start step each over []
              finish step each: []
              end run succeeded
              finish run succeeded
            run: succeeded
              each: succeeded (round 0) output []"#]],
    );
    check_run(
        toml,
        json!({"items": "not a list"}),
        |_| {},
        expect![[r#"
            @0
              fail step each: invalid_input: for_each gave a string, not a list
              end run failed: invalid_input: step "each" failed: for_each gave a string, not a list
              finish run failed
            run: failed
              each: failed (round 0) error invalid_input: for_each gave a string, not a list"#]],
    );
}

#[test]
fn a_false_condition_skips_and_the_skip_propagates() {
    check_run(
        r#"
        name = "cond"
        [[steps]]
        name = "analyze"
        function = "f"
        [[steps]]
        name = "vocals"
        function = "f"
        needs = ["analyze"]
        if = "steps.analyze.output.has_vocals && steps.analyze.output.bpm >= 100"
        [[steps]]
        name = "mix"
        function = "f"
        needs = ["vocals"]
        [[steps]]
        name = "catalogue"
        function = "f"
        needs = ["mix", "analyze"]
        if = "steps.mix.state == 'skipped' || steps.mix.output.ok"
        input = { vocals = "{{ steps.vocals.output }}" }
        "#,
        json!({}),
        |sim| {
            sim.at(1)
                .ok("analyze", 0, json!({"has_vocals": true, "bpm": 90}))
                .step();
            sim.at(2).ok("catalogue", 0, json!(1)).step();
        },
        expect![[r#"
            @0
              start step analyze
              start analyze[0] #1 f(null) key run:7:analyze:0:0:1
            @1
            analyze[0] ok {"bpm":90,"has_vocals":true}
              finish step analyze: {"bpm":90,"has_vocals":true}
              skip step vocals (Condition)
              skip step mix (Need)
              start step catalogue
              start catalogue[0] #1 f({"vocals":null}) key run:7:catalogue:0:0:1
            @2
            catalogue[0] ok 1
              finish step catalogue: 1
              end run succeeded
              finish run succeeded
            run: succeeded
              analyze: succeeded (round 0) output {"bpm":90,"has_vocals":true}
              vocals: skipped (round 0)
              mix: skipped (round 0)
              catalogue: succeeded (round 0) output 1"#]],
    );
}

#[test]
fn retries_follow_the_policy_of_each_code() {
    check_run(
        r#"
        name = "retry"
        [[steps]]
        name = "call"
        function = "api"
        [steps.retry]
        max_attempts = 4
        never_codes = ["invalid_input"]
        backoff = { initial_ms = 100, multiplier = 2.0, max_ms = 1000, jitter = 0.0 }
        per_code.rate_limited = { initial_ms = 5000, max_ms = 60000 }
        [[steps]]
        name = "strict"
        function = "api"
        [steps.retry]
        max_attempts = 5
        retry_codes = ["timeout"]
        "#,
        json!({}),
        |sim| {
            sim.at(10).err("call", 0, "timeout").step();
            sim.at(109).step(); // not yet: 100 ms after 10
            sim.at(110).step();
            sim.at(120).err("call", 0, "rate_limited").step();
            sim.at(10_119).step();
            sim.at(10_120).step().err("call", 0, "timeout").step();
            sim.at(10_520).step().ok("call", 0, json!("ok")).step();
            sim.at(10_600).err("strict", 0, "boom").step();
        },
        expect![[r#"
            @0
              start step call
              start step strict
              start call[0] #1 api(null) key run:7:call:0:0:1
              start strict[0] #1 api(null) key run:7:strict:0:0:1
            @10
            call[0] fails timeout
              wake at 110
            @109
              wake at 110
            @110
              start call[0] #2 api(null) key run:7:call:0:0:2
            @120
            call[0] fails rate_limited
              wake at 10120
            @10119
              wake at 10120
            @10120
              start call[0] #3 api(null) key run:7:call:0:0:3
            call[0] fails timeout
              wake at 10520
            @10520
              start call[0] #4 api(null) key run:7:call:0:0:4
            call[0] ok "ok"
              finish step call: "ok"
            @10600
            strict[0] fails boom
              fail step strict: boom: boom happened
              end run failed: boom: step "strict" failed: boom happened
              finish run failed
            run: failed
              call: succeeded (round 0) output "ok"
              strict: failed (round 0) error boom: boom happened"#]],
    );
}

#[test]
fn retries_run_out_and_never_codes_fail_at_once() {
    check_run(
        r#"
        name = "retry"
        [retry]
        max_attempts = 2
        backoff = { initial_ms = 50, jitter = 0.0 }
        [[steps]]
        name = "a"
        function = "f"
        [[steps]]
        name = "b"
        function = "f"
        "#,
        json!({}),
        |sim| {
            sim.at(1).err("b", 0, "invalid_input").step();
        },
        expect![[r#"
            @0
              start step a
              start step b
              start a[0] #1 f(null) key run:7:a:0:0:1
              start b[0] #1 f(null) key run:7:b:0:0:1
            @1
            b[0] fails invalid_input
              fail step b: invalid_input: invalid_input happened
              end run failed: invalid_input: step "b" failed: invalid_input happened
              cancel step a
              cancel a[0]
              finish run failed
            run: failed
              a: cancelled (round 0)
              b: failed (round 0) error invalid_input: invalid_input happened"#]],
    );
}

#[test]
fn jitter_is_deterministic_and_within_bounds() {
    let retry = workflow::RetrySpec {
        backoff: workflow::Backoff {
            initial_ms: 1000,
            multiplier: 2.0,
            max_ms: 3000,
            jitter: 0.5,
        },
        ..Default::default()
    };
    let mut delays = Vec::new();
    for attempt in 1..=4 {
        let seed = workflow::jitter_seed(7, "a", 0, attempt);
        let delay = retry.delay_ms("timeout", attempt, seed);
        assert_eq!(delay, retry.delay_ms("timeout", attempt, seed));
        let base = (1000u64 << (attempt - 1)).min(3000);
        assert!(delay <= base && delay >= base / 2, "{delay} for {base}");
        delays.push(delay);
    }
    assert_ne!(
        workflow::jitter_seed(7, "a", 0, 1),
        workflow::jitter_seed(8, "a", 0, 1)
    );
}

#[test]
fn the_run_times_out_and_the_finally_step_still_runs() {
    check_run(
        r#"
        name = "slow"
        timeout_ms = 1000
        [[steps]]
        name = "work"
        function = "f"
        [[steps]]
        name = "after"
        function = "f"
        needs = ["work"]
        [finally]
        name = "clean"
        function = "cleanup"
        input = { state = "{{ run.state }}", work = "{{ steps.work.state }}" }
        "#,
        json!({}),
        |sim| {
            sim.at(999).step();
            sim.at(1000).step();
            sim.at(1500).ok("clean", 0, json!("cleaned")).step();
        },
        expect![[r#"
            @0
              start step work
              start work[0] #1 f(null) key run:7:work:0:0:1
              wake at 1000
            @999
              wake at 1000
            @1000
              end run failed: timeout: the run ran over its time-out of 1000 ms
              cancel step work
              cancel step after
              cancel work[0]
              start step clean
              start clean[0] #1 cleanup({"state":"failed","work":"cancelled"}) key run:7:clean:0:0:1
            @1500
            clean[0] ok "cleaned"
              finish step clean: "cleaned"
              finish run failed
            run: failed
              work: cancelled (round 0)
              after: cancelled (round 0)
              clean: succeeded (round 0) output "cleaned""#]],
    );
}

#[test]
fn a_step_times_out_over_all_its_tries() {
    check_run(
        r#"
        name = "slow"
        [[steps]]
        name = "work"
        function = "f"
        timeout_ms = 500
        retry = { max_attempts = 10, backoff = { initial_ms = 100, jitter = 0.0 } }
        "#,
        json!({}),
        |sim| {
            sim.at(300).err("work", 0, "timeout").step();
            sim.at(400).step();
            sim.at(500).step();
        },
        expect![[r#"
            @0
              start step work
              start work[0] #1 f(null) key run:7:work:0:0:1
              wake at 500
            @300
            work[0] fails timeout
              wake at 400
            @400
              start work[0] #2 f(null) key run:7:work:0:0:2
              wake at 500
            @500
              fail step work: timeout: the step ran over its time-out of 500 ms
              end run failed: timeout: step "work" failed: the step ran over its time-out of 500 ms
              cancel work[0]
              finish run failed
            run: failed
              work: failed (round 0) error timeout: the step ran over its time-out of 500 ms"#]],
    );
}

#[test]
fn abort_cancels_running_steps_and_runs_the_finally_step() {
    let mut sim = check_run(
        r#"
        name = "abortable"
        [[steps]]
        name = "deploy"
        function = "f"
        [[steps]]
        name = "verify"
        function = "f"
        needs = ["deploy"]
        [finally]
        name = "release"
        function = "cleanup"
        if = "run.state != 'succeeded'"
        input = { why = "{{ run.state }}" }
        [[hooks.aborted]]
        url = "https://example.org/aborted"
        "#,
        json!({}),
        |sim| {
            sim.at(5).control(Control::Abort).step();
            sim.at(6).control(Control::Abort);
            sim.at(7).ok("release", 0, json!({})).step();
            sim.control(Control::Abort);
        },
        expect![[r#"
            @0
              start step deploy
              start deploy[0] #1 f(null) key run:7:deploy:0:0:1
            @5
            control Abort: ok
              cancel step deploy
              cancel step verify
              cancel deploy[0]
              start step release
              start release[0] #1 cleanup({"why":"aborted"}) key run:7:release:0:0:1
            @6
            control Abort: conflict: the run is already being aborted
            @7
            release[0] ok {}
              finish step release: {}
              hook run_aborted run#0: POST https://example.org/aborted {"error":{"code":"cancelled","message":"aborted by an operator"},"event":"run_finished","generation":0,"run":7,"state":"aborted","version":0,"workflow":"abortable"}
              finish run aborted
            control Abort: conflict: the run is already aborted
            run: aborted
              deploy: cancelled (round 0)
              verify: cancelled (round 0)
              release: succeeded (round 0) output {}"#]],
    );
    // A late result of the cancelled attempt changes nothing.
    let late = record_attempt(
        &sim.spec.clone(),
        &mut sim.run,
        "deploy",
        0,
        "run:7:deploy:0:0:1",
        Ok(json!("late")),
        8,
    );
    assert_eq!(late, Recorded::Stale);
}

#[test]
fn a_finally_step_whose_condition_is_false_is_skipped() {
    check_run(
        r#"
        name = "w"
        [[steps]]
        name = "a"
        function = "f"
        [finally]
        name = "release"
        function = "cleanup"
        if = "run.state != 'succeeded'"
        "#,
        json!({}),
        |sim| {
            sim.at(1).ok("a", 0, json!(1)).step();
        },
        expect![[r#"
            @0
              start step a
              start a[0] #1 f(null) key run:7:a:0:0:1
            @1
            a[0] ok 1
              finish step a: 1
              end run succeeded
              skip step release (Condition)
              finish run succeeded
            run: succeeded
              a: succeeded (round 0) output 1
              release: skipped (round 0)"#]],
    );
}

#[test]
fn restart_from_a_step_keeps_the_outputs_before_it() {
    check_run(
        r#"
        name = "pipeline"
        retry = { max_attempts = 1 }
        [[steps]]
        name = "a"
        function = "f"
        [[steps]]
        name = "b"
        function = "f"
        needs = ["a"]
        input = "{{ steps.a.output }}"
        [[steps]]
        name = "c"
        function = "f"
        needs = ["b"]
        [finally]
        name = "clean"
        function = "cleanup"
        "#,
        json!({}),
        |sim| {
            sim.at(1).ok("a", 0, json!("A")).step();
            sim.at(2).ok("b", 0, json!("B")).step();
            sim.at(3).err("c", 0, "boom").step();
            sim.at(4).ok("clean", 0, json!(null)).step();
            sim.at(5)
                .control(Control::Restart {
                    from: Some("b".into()),
                })
                .step();
            sim.at(6).ok("b", 0, json!("B2")).step();
            sim.at(7).ok("c", 0, json!("C")).step();
            sim.at(8).ok("clean", 0, json!(null)).step();
            sim.control(Control::Restart {
                from: Some("nope".into()),
            });
        },
        expect![[r#"
            @0
              start step a
              start a[0] #1 f(null) key run:7:a:0:0:1
            @1
            a[0] ok "A"
              finish step a: "A"
              start step b
              start b[0] #1 f("A") key run:7:b:0:0:1
            @2
            b[0] ok "B"
              finish step b: "B"
              start step c
              start c[0] #1 f(null) key run:7:c:0:0:1
            @3
            c[0] fails boom
              fail step c: boom: boom happened
              end run failed: boom: step "c" failed: boom happened
              start step clean
              start clean[0] #1 cleanup(null) key run:7:clean:0:0:1
            @4
            clean[0] ok null
              finish step clean: null
              finish run failed
            @5
            control Restart { from: Some("b") }: ok
              start step b
              start b[0] #1 f("A") key run:7:b:1:0:1
            @6
            b[0] ok "B2"
              finish step b: "B2"
              start step c
              start c[0] #1 f(null) key run:7:c:1:0:1
            @7
            c[0] ok "C"
              finish step c: "C"
              end run succeeded
              start step clean
              start clean[0] #1 cleanup(null) key run:7:clean:1:0:1
            @8
            clean[0] ok null
              finish step clean: null
              finish run succeeded
            control Restart { from: Some("nope") }: not_found: step: workflow "pipeline" has no step "nope"
            run: succeeded
              a: succeeded (round 0) output "A"
              b: succeeded (round 1) output "B2"
              c: succeeded (round 1) output "C"
              clean: succeeded (round 1) output null"#]],
    );
}

#[test]
fn retry_and_skip_a_failed_step() {
    let toml = r#"
        name = "pipeline"
        retry = { max_attempts = 1 }
        [[steps]]
        name = "a"
        function = "f"
        [[steps]]
        name = "b"
        function = "f"
        needs = ["a"]
        [[steps]]
        name = "c"
        function = "f"
        needs = ["b"]
        input = "{{ steps.b.output }}"
        "#;
    check_run(
        toml,
        json!({}),
        |sim| {
            sim.at(1).err("a", 0, "boom").step();
            sim.control(Control::Retry {
                step: Some("b".into()),
            });
            sim.at(2).control(Control::Retry { step: None }).step();
            sim.at(3).ok("a", 0, json!("A")).step();
        },
        expect![[r#"
            @0
              start step a
              start a[0] #1 f(null) key run:7:a:0:0:1
            @1
            a[0] fails boom
              fail step a: boom: boom happened
              end run failed: boom: step "a" failed: boom happened
              cancel step b
              cancel step c
              finish run failed
            control Retry { step: Some("b") }: conflict: step "b" is cancelled; only a failed step can be retried
            @2
            control Retry { step: None }: ok
              start step a
              start a[0] #1 f(null) key run:7:a:1:0:1
            @3
            a[0] ok "A"
              finish step a: "A"
              start step b
              start b[0] #1 f(null) key run:7:b:1:0:1
            run: running
              a: succeeded (round 1) output "A"
              b: running (round 1)
              c: waiting (round 1)"#]],
    );
    check_run(
        toml,
        json!({}),
        |sim| {
            sim.at(1).ok("a", 0, json!("A")).step();
            sim.at(2).err("b", 0, "boom").step();
            sim.at(3).control(Control::Skip { step: "b".into() }).step();
            sim.at(4).ok("c", 0, json!("C")).step();
            sim.control(Control::Skip { step: "c".into() });
        },
        expect![[r#"
            @0
              start step a
              start a[0] #1 f(null) key run:7:a:0:0:1
            @1
            a[0] ok "A"
              finish step a: "A"
              start step b
              start b[0] #1 f(null) key run:7:b:0:0:1
            @2
            b[0] fails boom
              fail step b: boom: boom happened
              end run failed: boom: step "b" failed: boom happened
              cancel step c
              finish run failed
            @3
            control Skip { step: "b" }: ok
              start step c
              start c[0] #1 f(null) key run:7:c:1:0:1
            @4
            c[0] ok "C"
              finish step c: "C"
              end run succeeded
              finish run succeeded
            control Skip { step: "c" }: conflict: the run is succeeded; a step can be skipped while the run runs, or a failed step of a failed run
            run: succeeded
              a: succeeded (round 0) output "A"
              b: skipped (round 0)
              c: succeeded (round 1) output "C""#]],
    );
}

#[test]
fn skipping_a_running_step_cancels_it_and_its_dependants_go_on() {
    check_run(
        r#"
        name = "w"
        [[steps]]
        name = "slow"
        function = "f"
        [[steps]]
        name = "next"
        function = "f"
        needs = ["slow"]
        input = { state = "{{ steps.slow.state }}", out = "{{ steps.slow.output }}" }
        "#,
        json!({}),
        |sim| {
            sim.at(1)
                .control(Control::Skip {
                    step: "slow".into(),
                })
                .step();
            sim.control(Control::Skip {
                step: "ghost".into(),
            });
        },
        expect![[r#"
            @0
              start step slow
              start slow[0] #1 f(null) key run:7:slow:0:0:1
            @1
            control Skip { step: "slow" }: ok
              cancel slow[0]
              start step next
              start next[0] #1 f({"out":null,"state":"skipped"}) key run:7:next:0:0:1
            control Skip { step: "ghost" }: not_found: step: workflow "w" has no step "ghost"
            run: running
              slow: skipped (round 0)
              next: running (round 0)"#]],
    );
}

#[test]
fn hooks_fire_once_at_each_stage() {
    check_run(
        r#"
        name = "hooked"
        [[steps]]
        name = "a"
        function = "f"
        [[steps.hooks.before]]
        function = "notify"
        input = { text = "{{ event.step }} {{ event.event }}" }
        [[steps.hooks.after]]
        url = "https://example.org/after"
        [[hooks.succeeded]]
        function = "notify"
        input = { text = "run {{ event.run }} {{ event.state }}", out = "{{ steps.a.output }}" }
        "#,
        json!({}),
        |sim| {
            sim.at(1).ok("a", 0, json!(5)).step();
        },
        expect![[r#"
            @0
              start step a
              hook before_step a#0: notify({"text":"a step_started"}) key hook:7:before_step:a:0:0
              start a[0] #1 f(null) key run:7:a:0:0:1
            @1
            a[0] ok 5
              finish step a: 5
              hook after_step a#0: POST https://example.org/after {"event":"step_finished","generation":0,"round":0,"run":7,"state":"succeeded","step":"a","version":0,"workflow":"hooked"}
              end run succeeded
              hook run_succeeded run#0: notify({"out":5,"text":"run 7 succeeded"}) key hook:7:run_succeeded:0:0
              finish run succeeded
            run: succeeded
              a: succeeded (round 0) output 5"#]],
    );
}

#[test]
fn a_template_that_names_nothing_at_run_time_fails_the_step() {
    check_run(
        r#"
        name = "w"
        [[steps]]
        name = "a"
        function = "f"
        input = { x = "{{ input.missing.deep }}" }
        "#,
        json!({"other": 1}),
        |_| {},
        expect![[r#"
            @0
              start step a
              fail step a: invalid_input: input: `input.missing.deep` names nothing in this run
              end run failed: invalid_input: step "a" failed: input: `input.missing.deep` names nothing in this run
              finish run failed
            run: failed
              a: failed (round 0) error invalid_input: input: `input.missing.deep` names nothing in this run"#]],
    );
}

#[test]
fn statistics_over_runs() {
    let toml = r#"
        name = "w"
        retry = { max_attempts = 2, backoff = { initial_ms = 10, jitter = 0.0 } }
        [[steps]]
        name = "a"
        function = "f"
        "#;
    let mut runs = Vec::new();
    for (i, outcome) in ["ok", "retry-ok", "fail", "ok"].iter().enumerate() {
        let mut sim = Sim::new(toml, json!({}));
        sim.run.started_at_ms = 1000 * i as u64;
        sim.at(1000 * i as u64).step();
        let end = 1000 * i as u64 + 100 * (i as u64 + 1);
        match *outcome {
            "ok" => {
                sim.at(end).ok("a", 0, json!(1)).step();
            }
            "retry-ok" => {
                sim.at(end - 50).err("a", 0, "timeout").step();
                sim.at(end).step().ok("a", 0, json!(1)).step();
            }
            _ => {
                sim.at(end - 50).err("a", 0, "boom").step();
                sim.at(end).step().err("a", 0, "boom").step();
            }
        }
        runs.push(sim.run.clone());
    }
    let mut running = Sim::new(toml, json!({}));
    running.step();
    runs.push(running.run.clone());
    let s = stats(&runs, 0, 10_000);
    expect![[r#"
        {
          "runs": 5,
          "by_status": {
            "running": 1,
            "succeeded": 3,
            "failed": 1
          },
          "success_rate": 0.75,
          "duration_ms": {
            "count": 4,
            "p50_ms": 200,
            "p95_ms": 400,
            "max_ms": 400
          },
          "steps": {
            "a": {
              "by_status": {
                "running": 1,
                "succeeded": 3,
                "failed": 1
              },
              "success_rate": 0.75,
              "duration_ms": {
                "count": 4,
                "p50_ms": 200,
                "p95_ms": 400,
                "max_ms": 400
              },
              "attempts": 7,
              "retries": 2,
              "errors": {
                "boom": 2,
                "timeout": 1
              }
            }
          }
        }"#]]
    .assert_eq(&serde_json::to_string_pretty(&s).unwrap());
    assert_eq!(stats(&runs, 2000, 3000).runs, 1);
    assert_eq!(runs[2].steps["a"].status, StepStatus::Failed);
}

#[test]
fn a_run_summary_lists_steps_in_spec_order() {
    let mut sim = Sim::new(
        r#"
        name = "w"
        [[steps]]
        name = "zeta"
        function = "f"
        for_each = "{{ input.items }}"
        input = "{{ item }}"
        [[steps]]
        name = "alpha"
        function = "f"
        needs = ["zeta"]
        [finally]
        name = "clean"
        function = "f"
        "#,
        json!({"items": ["a"]}),
    );
    sim.step().at(3).err("zeta", 0, "invalid_input").step();
    expect![[r#"
        {
          "id": 7,
          "workflow": "w",
          "version": 0,
          "state": "running",
          "started_at_ms": 0,
          "error": {
            "code": "invalid_input",
            "message": "step \"zeta\" failed: element 0: invalid_input happened"
          },
          "steps": [
            {
              "name": "zeta",
              "state": "failed",
              "round": 0,
              "started_at_ms": 0,
              "finished_at_ms": 3,
              "items": [
                "a"
              ],
              "elements": [
                {
                  "state": "failed",
                  "input": "a",
                  "attempts": [
                    {
                      "number": 1,
                      "job_key": "run:7:zeta:0:0:1",
                      "started_at_ms": 0,
                      "finished_at_ms": 3,
                      "error": {
                        "code": "invalid_input",
                        "message": "invalid_input happened"
                      }
                    }
                  ]
                }
              ],
              "error": {
                "code": "invalid_input",
                "message": "element 0: invalid_input happened"
              }
            },
            {
              "name": "alpha",
              "state": "cancelled",
              "round": 0,
              "finished_at_ms": 3
            },
            {
              "name": "clean",
              "state": "running",
              "round": 0,
              "started_at_ms": 3,
              "elements": [
                {
                  "state": "running",
                  "attempts": [
                    {
                      "number": 1,
                      "job_key": "run:7:clean:0:0:1",
                      "started_at_ms": 3
                    }
                  ]
                }
              ]
            }
          ]
        }"#]]
    .assert_eq(&serde_json::to_string_pretty(&sim.run.summary(&sim.spec)).unwrap());
}

/// Runs `a` (whose output is `output`) then `b` with `b_field = text`, and says what became
/// of `b`: its rendered input, skipped, or failed with why.
fn check_language(b_field: &str, cases: &[&str], expected: Expect) {
    let output = json!({
        "n": 3, "x": 1.0, "s": "abc", "t": true, "f": false, "z": 0, "e": "", "list": [10, {"k": "v"}],
        "obj": {"odd key": 5}, "null": null
    });
    let mut lines = Vec::new();
    for case in cases {
        let toml = format!(
            "name = \"w\"\n[[steps]]\nname = \"a\"\nfunction = \"f\"\n[[steps]]\nname = \"b\"\nfunction = \"f\"\nneeds = [\"a\"]\n{b_field} = {}\n",
            serde_json::to_string(case).unwrap()
        );
        let mut sim = Sim::new(&toml, json!({"name": "song", "tags": ["x", "y"]}));
        sim.step().ok("a", 0, output.clone()).step();
        let b = &sim.run.steps["b"];
        let result = match b.status {
            StepStatus::Running => format!("input {}", b.elements[0].input),
            StepStatus::Skipped => "skipped".to_string(),
            other => format!("{other}: {}", b.error.as_ref().unwrap().message),
        };
        lines.push(format!("{case:<46} => {result}"));
    }
    expected.assert_eq(&lines.join("\n"));
}

#[test]
fn templates_render_values_and_strings() {
    check_language(
        "input",
        &[
            "{{ steps.a.output.n }}",
            "{{steps.a.output.list[1]}}",
            "{{ steps.a.output.obj['odd key'] }}",
            "n={{ steps.a.output.n }} list={{ steps.a.output.list }}",
            "{{ input.name }}-{{ input.tags[1] }}",
            "{{ steps.a.output.null }}",
            "{{ steps.a.state }} {{ steps.a.error }}",
            "{{ run.id }}/{{ run.workflow }}/{{ run.state }}",
            "{{ '{{' }} literal {{ 12 }}",
            "{{ steps.a.output.list[5] }}",
            "{{ steps.a.output.n.deeper }}",
        ],
        expect![[r#"
            {{ steps.a.output.n }}                         => input 3
            {{steps.a.output.list[1]}}                     => input {"k":"v"}
            {{ steps.a.output.obj['odd key'] }}            => input 5
            n={{ steps.a.output.n }} list={{ steps.a.output.list }} => input "n=3 list=[10,{\"k\":\"v\"}]"
            {{ input.name }}-{{ input.tags[1] }}           => input "song-y"
            {{ steps.a.output.null }}                      => input null
            {{ steps.a.state }} {{ steps.a.error }}        => input "succeeded null"
            {{ run.id }}/{{ run.workflow }}/{{ run.state }} => input "7/w/running"
            {{ '{{' }} literal {{ 12 }}                    => input "{{ literal 12"
            {{ steps.a.output.list[5] }}                   => failed: input: `steps.a.output.list[5]` names nothing in this run
            {{ steps.a.output.n.deeper }}                  => failed: input: `steps.a.output.n.deeper` names nothing in this run"#]],
    );
}

#[test]
fn conditions_compare_and_combine() {
    check_language(
        "if",
        &[
            "steps.a.output.t",
            "steps.a.output.f",
            "steps.a.output.z || steps.a.output.e || steps.a.output.null",
            "steps.a.output.list && steps.a.output.obj",
            "steps.a.output.missing",
            "!steps.a.output.missing",
            "steps.a.output.n == 3 && steps.a.output.x == 1",
            "steps.a.output.s != 'abc'",
            "steps.a.output.s < \"abd\" && steps.a.output.s >= 'abc'",
            "steps.a.output.n > 2.5 && !(steps.a.output.n >= 4)",
            "steps.a.output.list[1] == steps.a.output.list[1]",
            "{{ input.tags[0] == 'x' }}",
            "steps.a.output.s > 1",
            "steps.a.output.missing < 1",
            "true && (false || null == steps.a.output.null)",
        ],
        expect![[r#"
            steps.a.output.t                               => input null
            steps.a.output.f                               => skipped
            steps.a.output.z || steps.a.output.e || steps.a.output.null => skipped
            steps.a.output.list && steps.a.output.obj      => input null
            steps.a.output.missing                         => skipped
            !steps.a.output.missing                        => input null
            steps.a.output.n == 3 && steps.a.output.x == 1 => input null
            steps.a.output.s != 'abc'                      => skipped
            steps.a.output.s < "abd" && steps.a.output.s >= 'abc' => input null
            steps.a.output.n > 2.5 && !(steps.a.output.n >= 4) => input null
            steps.a.output.list[1] == steps.a.output.list[1] => input null
            {{ input.tags[0] == 'x' }}                     => input null
            steps.a.output.s > 1                           => failed: `if`: cannot order a string and a number (only two numbers or two strings)
            steps.a.output.missing < 1                     => failed: `if`: cannot order null and a number (only two numbers or two strings)
            true && (false || null == steps.a.output.null) => input null"#]],
    );
}

#[test]
fn an_element_that_fails_for_good_fails_its_step_and_cancels_its_siblings() {
    check_run(
        r#"
        name = "fan"
        retry = { max_attempts = 2, backoff = { initial_ms = 10, jitter = 0.0 } }
        [[steps]]
        name = "each"
        function = "f"
        for_each = "{{ input.items }}"
        concurrency = 2
        input = "{{ item }}"
        [[hooks.failed]]
        function = "page"
        input = { why = "{{ event.error.message }}", each = "{{ steps.each.state }}" }
        "#,
        json!({"items": [1, 2, 3]}),
        |sim| {
            sim.at(1).err("each", 0, "timeout").step();
            // Both slots are taken: the retry waits for one, though its back-off is over.
            sim.at(11).step();
            sim.at(12).ok("each", 1, json!("two")).step();
            sim.at(13).err("each", 0, "timeout").step();
        },
        expect![[r#"
            @0
              start step each over [1,2,3]
              start each[0] #1 f(1) key run:7:each:0:0:1
              start each[1] #1 f(2) key run:7:each:0:1:1
            @1
            each[0] fails timeout
              start each[2] #1 f(3) key run:7:each:0:2:1
            @11
            @12
            each[1] ok "two"
              start each[0] #2 f(1) key run:7:each:0:0:2
            @13
            each[0] fails timeout
              fail step each: timeout: element 0: timeout happened
              end run failed: timeout: step "each" failed: element 0: timeout happened
              cancel each[2]
              hook run_failed run#0: page({"each":"failed","why":"step \"each\" failed: element 0: timeout happened"}) key hook:7:run_failed:0:0
              finish run failed
            run: failed
              each: failed (round 0) error timeout: element 0: timeout happened"#]],
    );
}

#[test]
fn job_keys_read_back() {
    let key = workflow::job_key(7, "transcode", 2, 13, 4);
    assert_eq!(key, "run:7:transcode:2:13:4");
    let parsed = workflow::JobKey::parse(&key).unwrap();
    assert_eq!(
        (
            parsed.run,
            parsed.step.as_str(),
            parsed.round,
            parsed.element,
            parsed.attempt
        ),
        (7, "transcode", 2, 13, 4)
    );
    assert_eq!(parsed.to_string(), key);
    for other in [
        "hook:7:run_failed:0:0",
        "run:7:a:0:0",
        "run:7:a:0:0:1:9",
        "run:x:a:0:0:1",
        "run:7::0:0:1",
        "ingest:abc",
        "",
    ] {
        assert_eq!(workflow::JobKey::parse(other), None, "{other}");
    }
}

#[test]
fn files_are_rendered_once_per_element_and_kept_for_retries() {
    let toml = r#"
        name = "files"
        [retry]
        max_attempts = 2
        backoff = { initial_ms = 10, jitter = 0.0 }
        [[steps]]
        name = "each"
        function = "transcode"
        for_each = "{{ input.formats }}"
        files = ["{{ input.song }}", "{{ input.extra }}"]
        input = { format = "{{ item }}" }
        "#;
    check_run(
        toml,
        json!({"song": "uploads/ab/song.wav", "extra": ["cover.png"], "formats": ["flac", "mp3"]}),
        |sim| {
            sim.at(1).err("each", 0, "io").step();
            sim.at(20).step();
            sim.at(21)
                .ok("each", 0, json!(1))
                .ok("each", 1, json!(2))
                .step();
        },
        expect![[r#"
            @0
              start step each over ["flac","mp3"]
              start each[0] #1 transcode({"format":"flac"}) files ["uploads/ab/song.wav","cover.png"] key run:7:each:0:0:1
              start each[1] #1 transcode({"format":"mp3"}) files ["uploads/ab/song.wav","cover.png"] key run:7:each:0:1:1
            @1
            each[0] fails io
              wake at 11
            @20
              start each[0] #2 transcode({"format":"flac"}) files ["uploads/ab/song.wav","cover.png"] key run:7:each:0:0:2
            @21
            each[0] ok 1
            each[1] ok 2
              finish step each: [1,2]
              end run succeeded
              finish run succeeded
            run: succeeded
              each: succeeded (round 0) output [1,2]"#]],
    );
    check_run(
        toml,
        json!({"song": {"key": "x"}, "extra": [], "formats": ["flac"]}),
        |_| {},
        expect![[r#"
            @0
              start step each over ["flac"]
              fail step each: invalid_input: element 0: files: gave an object, not an object key or URL (a string)
              end run failed: invalid_input: step "each" failed: element 0: files: gave an object, not an object key or URL (a string)
              finish run failed
            run: failed
              each: failed (round 0) error invalid_input: element 0: files: gave an object, not an object key or URL (a string)"#]],
    );
}
