//! Deploy-time validation: each kind of bad spec gets its code and the path of the offending
//! field; good specs round-trip through JSON (the log's format).

use expect_test::{expect, Expect};
use workflow::{deploy, Code, Condition, Template, WorkflowSpec, STEPS_MAX};

use crate::function_exists;

fn check_spec(toml: &str, expected: Expect) {
    let actual = match deploy(toml, &function_exists) {
        Ok(_) => "ok".to_string(),
        Err(errors) => errors
            .0
            .iter()
            .map(|e| format!("{} at {:?}: {}", e.code, e.path, e.message))
            .collect::<Vec<_>>()
            .join("\n"),
    };
    expected.assert_eq(&actual);
}

#[test]
fn a_good_spec_deploys_and_round_trips_through_json() {
    let toml = r#"
        name = "song"
        timeout_ms = 600000
        [retry]
        max_attempts = 4
        retry_codes = ["timeout", "rate_limited"]
        backoff = { initial_ms = 100, multiplier = 3.0, max_ms = 10000, jitter = 0.5 }
        per_code.rate_limited = { initial_ms = 5000 }
        [[hooks.failed]]
        url = "https://example.org/hook"
        [[steps]]
        name = "analyze"
        function = "audio.analyze"
        input = { path = "{{ input.path }}" }
        [[steps]]
        name = "transcode"
        function = "audio.transcode"
        needs = ["analyze"]
        for_each = "{{ input.formats }}"
        concurrency = 2
        if = "steps.analyze.output.duration_s > 1 && !input.dry_run"
        input = { format = "{{ item }}", start_s = "{{ steps.analyze.output.chorus.start_s }}" }
        [[steps.hooks.after]]
        function = "notify"
        input = { text = "{{ event.step }} is {{ event.state }}" }
        [finally]
        name = "clean"
        function = "cleanup"
        input = { state = "{{ run.state }}", error = "{{ steps.transcode.error }}" }
    "#;
    check_spec(toml, expect!["ok"]);
    let spec = WorkflowSpec::from_toml(toml).unwrap();
    let json = serde_json::to_string(&spec).unwrap();
    let back: WorkflowSpec = serde_json::from_str(&json).unwrap();
    assert_eq!(back, spec);
}

#[test]
fn malformed_toml_and_unknown_fields() {
    check_spec(
        "name = \"x\"\n[[steps]]\nname = \"a\"\nfunction = 3\n",
        expect![[
            r#"invalid_input at "": malformed spec (line 4): invalid type: integer `3`, expected a string"#
        ]],
    );
    check_spec(
        "name = \"x\"\n[[steps]]\nname = \"a\"\nfunction = \"f\"\nneed = [\"b\"]\n",
        expect![[
            r#"invalid_input at "": malformed spec (line 5): unknown field `need`, expected one of `name`, `function`, `input`, `files`, `needs`, `for_each`, `concurrency`, `if`, `retry`, `timeout_ms`, `hooks`, `throttle`"#
        ]],
    );
}

#[test]
fn a_cycle_is_named() {
    check_spec(
        r#"
        name = "cyclic"
        [[steps]]
        name = "a"
        function = "f"
        needs = ["c"]
        [[steps]]
        name = "b"
        function = "f"
        needs = ["a"]
        [[steps]]
        name = "c"
        function = "f"
        needs = ["b"]
        [[steps]]
        name = "d"
        function = "f"
        needs = ["a"]
        "#,
        expect![[r#"invalid_input at "steps[1].needs": the steps form a cycle: b -> c -> a -> b"#]],
    );
}

#[test]
fn needs_that_name_no_step() {
    check_spec(
        r#"
        name = "w"
        [[steps]]
        name = "a"
        function = "f"
        needs = ["a", "nope", "clean"]
        [finally]
        name = "clean"
        function = "f"
        needs = ["a"]
        "#,
        expect![[r#"
            invalid_input at "steps[0].needs[0]": step "a" needs itself
            invalid_input at "steps[0].needs[1]": step "a" needs "nope", which is not a step of this workflow
            invalid_input at "steps[0].needs[2]": "clean" is the finally step, which runs last; no step can need it
            invalid_input at "finally.needs": the finally step runs after every other step and needs none"#]],
    );
}

#[test]
fn unknown_functions_names_and_duplicates() {
    check_spec(
        r#"
        name = "bad name!"
        [[steps]]
        name = "a"
        function = "missing"
        [[steps]]
        name = "a"
        function = "f"
        [[steps]]
        name = "dotted.name"
        function = "f"
        "#,
        expect![[r#"
            invalid_input at "name": workflow name "bad name!" must be 1 to 128 characters of a-z, A-Z, 0-9, '.', '_', '-'
            invalid_input at "steps[1].name": two steps are called "a"
            not_found at "steps[0].function": no function is called "missing"
            invalid_input at "steps[2].name": step name "dotted.name" must be 1 to 128 characters of a-z, A-Z, 0-9, '_', '-'"#]],
    );
}

#[test]
fn templates_that_name_nothing() {
    check_spec(
        r#"
        name = "w"
        [[steps]]
        name = "a"
        function = "f"
        input = { x = "{{ steps.b.output }}", y = "{{ inptu.path }}", z = "{{ item }}" }
        [[steps]]
        name = "b"
        function = "f"
        needs = ["a"]
        if = "steps.a.outputs.x == 1"
        input = ["{{ run.nope }}", "{{ steps.ghost.output }}", "{{ steps.a }}", "{{ index.x }}"]
        for_each = "{{ input.list }}"
        [[steps]]
        name = "c"
        function = "f"
        for_each = "{{ item }}"
        "#,
        expect![[r#"
            invalid_input at "steps[0].input.x": `steps.b.output` names step "b", which this step does not need (directly or through its needs)
            invalid_input at "steps[0].input.y": `inptu.path` names nothing: "inptu" is not one of input, steps, run
            invalid_input at "steps[0].input.z": `item` names nothing here: `item` exists only in the input of a step with for_each
            invalid_input at "steps[1].input[0]": `run.nope` names nothing: a run has id, workflow, version, state, started_at_ms
            invalid_input at "steps[1].input[1]": `steps.ghost.output` names nothing: there is no step "ghost"
            invalid_input at "steps[1].input[2]": `steps.a` names nothing: write steps.a.output, .state or .error
            invalid_input at "steps[1].input[3]": `index.x` names nothing: an index has no parts
            invalid_input at "steps[1].if": `steps.a.outputs.x` names nothing: write steps.a.output, .state or .error
            invalid_input at "steps[2].for_each": `item` names nothing here: `item` exists only in the input of a step with for_each"#]],
    );
}

#[test]
fn a_step_sees_its_needs_transitively() {
    check_spec(
        r#"
        name = "w"
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
        input = "{{ steps.a.output.x }} and {{ steps.b.state }}"
        "#,
        expect!["ok"],
    );
}

#[test]
fn template_syntax_errors() {
    check_spec(
        r#"
        name = "w"
        [[steps]]
        name = "a"
        function = "f"
        input = ["{{ input.x", "{{ }}", "{{ input..x }}", "{{ input[x] }}", "{{ input.x y }}", "{{ 'open }}"]
        if = "input.x == "
        "#,
        expect![[r#"
            invalid_input at "steps[0].input[0]": `{{` at byte 0 has no closing `}}`
            invalid_input at "steps[0].input[1]": in `{{ }}`: an empty expression
            invalid_input at "steps[0].input[2]": in `{{ input..x }}`: expected a key after `.` at byte 7, found `.`
            invalid_input at "steps[0].input[3]": in `{{ input[x] }}`: expected an index or a quoted key after `[` at byte 7, found `x`
            invalid_input at "steps[0].input[4]": in `{{ input.x y }}`: unexpected text at byte 9, found `y`
            invalid_input at "steps[0].input[5]": in `{{ 'open }}`: a string opened at byte 1 is not closed
            invalid_input at "steps[0].if": expected a path, a string, a number, true, false or null at the end"#]],
    );
}

#[test]
fn bad_retry_values_and_limits() {
    check_spec(
        r#"
        name = "w"
        timeout_ms = 0
        [retry]
        max_attempts = 0
        retry_codes = ["timeout", "bad code"]
        never_codes = ["timeout"]
        backoff = { initial_ms = 5000, multiplier = 0.5, max_ms = 10, jitter = 2.0 }
        per_code.rate_limited = { multiplier = 1000.0 }
        [[steps]]
        name = "a"
        function = "f"
        concurrency = 3
        timeout_ms = 99999999999999
        throttle = { concurrency = 0, key = "customer" }
        "#,
        expect![[r#"
            invalid_input at "timeout_ms": must be 1 to 2592000000 ms
            invalid_input at "retry.max_attempts": must be 1 to 100
            invalid_input at "retry.retry_codes[1]": "bad code" is not an error code
            invalid_input at "retry.never_codes": "timeout" is both retried and never retried
            invalid_input at "retry.backoff.max_ms": must be between initial_ms (5000) and 2592000000 ms
            invalid_input at "retry.backoff.multiplier": must be 1 to 100
            invalid_input at "retry.backoff.jitter": must be 0 to 1
            invalid_input at "retry.per_code.rate_limited.max_ms": must be between initial_ms (5000) and 2592000000 ms
            invalid_input at "retry.per_code.rate_limited.multiplier": must be 1 to 100
            invalid_input at "retry.per_code.rate_limited.jitter": must be 0 to 1
            invalid_input at "steps[0].concurrency": concurrency caps the elements of a for_each; this step has no for_each
            invalid_input at "steps[0].timeout_ms": must be 1 to 2592000000 ms
            invalid_input at "steps[0].throttle": throttle concurrency must be 1 to 100000"#]],
    );
}

#[test]
fn too_many_steps_and_too_long_templates() {
    let mut toml = String::from("name = \"big\"\n");
    for i in 0..=STEPS_MAX {
        toml.push_str(&format!("[[steps]]\nname = \"s{i}\"\nfunction = \"f\"\n"));
    }
    check_spec(
        &toml,
        expect![[r#"too_large at "steps": 257 steps, over the limit of 256"#]],
    );
    let long = format!(
        "name = \"w\"\n[[steps]]\nname = \"a\"\nfunction = \"f\"\ninput = \"{}\"\n",
        "x".repeat(5000)
    );
    check_spec(
        &long,
        expect![[r#"too_large at "steps[0].input": 5000 bytes long, over the limit of 4096"#]],
    );
    let deep = format!(
        "name = \"w\"\n[[steps]]\nname = \"a\"\nfunction = \"f\"\nif = \"{}input{}\"\n",
        "(".repeat(40),
        ")".repeat(40)
    );
    check_spec(
        &deep,
        expect![[r#"too_large at "steps[0].if": nested deeper than 32"#]],
    );
}

#[test]
fn hooks_and_empty_workflows() {
    check_spec(
        r#"
        name = "w"
        [[hooks.succeeded]]
        function = "notify"
        url = "https://example.org"
        [[hooks.failed]]
        url = "ftp://example.org"
        input = { a = 1 }
        [[hooks.aborted]]
        function = "missing"
        input = "{{ event.run }} {{ item }}"
        "#,
        expect![[r#"
            invalid_input at "steps": a workflow needs at least one step
            invalid_input at "hooks.succeeded[0]": a hook has exactly one of `function` and `url`
            invalid_input at "hooks.failed[0].url": "ftp://example.org" is not an http(s) URL of at most 2048 bytes
            invalid_input at "hooks.failed[0].input": a URL hook POSTs its event; input is for function hooks
            not_found at "hooks.aborted[0].function": no function is called "missing"
            invalid_input at "hooks.aborted[0].input": `item` names nothing here: `item` exists only in the input of a step with for_each"#]],
    );
}

#[test]
fn codes_are_spelled_as_model_error_codes() {
    for code in [
        Code::InvalidInput,
        Code::TooLarge,
        Code::NotFound,
        Code::Conflict,
    ] {
        let parsed: model::ErrorCode =
            serde_json::from_value(serde_json::json!(code.as_str())).unwrap();
        assert_eq!(parsed.as_str(), code.as_str());
    }
}

#[test]
fn conditions_and_templates_parse_their_paths() {
    let c = Condition::parse("{{ steps.a.output['odd key'][2] >= -1.5 || !(input.x != 'y') }}")
        .unwrap();
    let paths: Vec<String> = c.paths().iter().map(|p| p.to_string()).collect();
    assert_eq!(paths, ["steps.a.output[\"odd key\"][2]", "input.x"]);
    let t = Template::parse("plain text").unwrap();
    assert!(t.is_plain());
    assert!(Condition::parse("a ==").is_err());
    assert!(Condition::parse("1 2").is_err());
}

#[test]
fn the_readme_spec_deploys() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("the crate README");
    let start = readme.find("```toml\n").expect("a TOML example") + "```toml\n".len();
    let end = start + readme[start..].find("```").expect("its end");
    check_spec(&readme[start..end], expect!["ok"]);
}

#[test]
fn on_abort_is_another_name_for_finally() {
    let spec = crate::must_deploy(
        "name = \"w\"\n[[steps]]\nname = \"a\"\nfunction = \"f\"\n[on_abort]\nname = \"release\"\nfunction = \"cleanup\"\n",
    );
    assert_eq!(spec.finally.map(|f| f.name), Some("release".to_string()));
}

#[test]
fn an_input_schema_must_compile_and_a_run_input_must_match_it() {
    let bad = deploy(
        r#"
        name = "w"
        input_schema = { type = "object", properties = { n = { type = "nonsense" } } }
        [[steps]]
        name = "a"
        function = "f"
        "#,
        &function_exists,
    )
    .unwrap_err();
    assert_eq!(bad.0.len(), 1, "{bad}");
    assert_eq!(
        (bad.0[0].code, bad.0[0].path.as_str()),
        (Code::InvalidInput, "input_schema")
    );
    assert!(
        bad.0[0].message.starts_with("not a usable JSON Schema"),
        "{bad}"
    );
    let spec = deploy(
        r#"
        name = "songs"
        [input_schema]
        type = "object"
        required = ["path"]
        properties = { path = { type = "string" }, formats = { type = "array", items = { enum = ["mp3", "opus"] } } }
        [[steps]]
        name = "a"
        function = "f"
        "#,
        &function_exists,
    )
    .unwrap();
    let good = serde_json::json!({"path": "a.flac", "formats": ["mp3"]});
    assert_eq!(workflow::check_input(&spec, &good), Ok(()));
    let e = workflow::check_input(&spec, &serde_json::json!({"formats": ["wav", 3]})).unwrap_err();
    assert_eq!(e.code, Code::SchemaMismatch);
    // Each mismatch is named with where it is: the missing field at the root, both bad
    // elements of the list.
    for at in ["at /:", "at /formats/0:", "at /formats/1:"] {
        assert!(e.message.contains(at), "{at} in {}", e.message);
    }
    // A spec without a schema takes any input.
    let free = deploy(
        "name = \"free\"\n[[steps]]\nname = \"a\"\nfunction = \"f\"\n",
        &function_exists,
    )
    .unwrap();
    assert!(workflow::check_input(&free, &serde_json::json!([1, 2])).is_ok());
}

#[test]
fn files_are_templates_that_name_something() {
    check_spec(
        r#"
        name = "x"
        [[steps]]
        name = "a"
        function = "f"
        files = "{{ input.song }}"
        [[steps]]
        name = "b"
        function = "f"
        needs = ["a"]
        files = ["{{ steps.a.output.file }}", 3, "{{ item }}", "{{ steps.c.output }}"]
        [[steps]]
        name = "c"
        function = "f"
        files = { key = "x" }
        "#,
        expect![[r#"
            invalid_input at "steps[1].files[1]": a file is a template giving an object key or URL (a string)
            invalid_input at "steps[1].files[2]": `item` names nothing here: `item` exists only in the input of a step with for_each
            invalid_input at "steps[1].files[3]": `steps.c.output` names step "c", which this step does not need (directly or through its needs)
            invalid_input at "steps[2].files": files is a template or a list of templates (strings)"#]],
    );
}
