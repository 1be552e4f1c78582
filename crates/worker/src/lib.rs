//! Code that runs inside a `chorus worker` process: reads [`Request`]s on stdin, runs the
//! built-in function they name, writes [`Reply`]s on stdout (see [`model::protocol`]).
//!
//! A worker runs one attempt at a time and holds no state between attempts, so the node can
//! reuse it (warm pool) or kill it at any moment.

use model::protocol::{Reply, Request};
use std::io::{BufRead, Write};
use std::time::Duration;

/// The test and benchmark built-ins that every node has.
pub const TEST_FUNCTIONS: &[&str] = &["noop", "sleep", "fail", "clock"];

/// Longest `sleep` accepted, so a typo cannot park a worker for days.
const SLEEP_MS_MAX: u64 = 3_600_000;

/// Every built-in function a worker can run.
pub fn builtin_functions() -> Vec<&'static str> {
    TEST_FUNCTIONS
        .iter()
        .chain(audio::FUNCTIONS)
        .copied()
        .collect()
}

/// Serves requests until stdin closes. Returns an error only if stdout is gone.
pub fn serve(input: impl BufRead, mut output: impl Write) -> std::io::Result<()> {
    for line in input.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let reply = match serde_json::from_str::<Request>(&line) {
            Ok(request) => execute(&request),
            Err(e) => Reply::err("invalid_input", format!("not a worker request: {e}")),
        };
        let mut text =
            serde_json::to_string(&reply).expect("a reply is always representable as JSON");
        text.push('\n');
        output.write_all(text.as_bytes())?;
        output.flush()?;
    }
    Ok(())
}

/// Runs one built-in function.
pub fn execute(request: &Request) -> Reply {
    match request.function.as_str() {
        "noop" => Reply::ok(serde_json::json!({})),
        "sleep" => sleep(&request.input),
        "fail" => fail(&request.input),
        // The worker's wall clock when the attempt began, for submit-to-start benchmarks.
        "clock" => Reply::ok(serde_json::json!({ "now_us": now_us() })),
        name if audio::FUNCTIONS.contains(&name) => run_audio(request),
        other => Reply::err(
            "unsupported_function",
            format!("this worker has no built-in function {other:?}"),
        ),
    }
}

fn run_audio(request: &Request) -> Reply {
    let files: Vec<std::path::PathBuf> =
        request.files.iter().map(std::path::PathBuf::from).collect();
    let task = audio::Task {
        function: &request.function,
        input: &request.input,
        files: &files,
        out_dir: std::path::Path::new(&request.out_dir),
    };
    let started = std::time::Instant::now();
    match audio::execute(task) {
        Ok(output) => {
            eprintln!(
                "{} took {:.0} ms, wrote {} files",
                request.function,
                started.elapsed().as_secs_f64() * 1e3,
                output.files.len()
            );
            Reply::ok(output.json)
        }
        Err(e) => Reply::err(e.code(), e.to_string()),
    }
}

fn sleep(input: &serde_json::Value) -> Reply {
    let Some(ms) = input.get("ms").and_then(serde_json::Value::as_u64) else {
        return Reply::err(
            "invalid_input",
            "sleep takes {\"ms\": N} with N a whole number of milliseconds",
        );
    };
    if ms > SLEEP_MS_MAX {
        return Reply::err(
            "invalid_input",
            format!("sleep takes at most {SLEEP_MS_MAX} ms"),
        );
    }
    eprintln!("sleeping {ms} ms");
    std::thread::sleep(Duration::from_millis(ms));
    Reply::ok(serde_json::json!({ "slept_ms": ms }))
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn fail(input: &serde_json::Value) -> Reply {
    let code = input
        .get("code")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("function_failed");
    let message = input
        .get("message")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("failed on request");
    eprintln!("failing with {code}");
    Reply::err(code, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    fn check(input: &str, expected: expect_test::Expect) {
        let mut out = Vec::new();
        serve(input.as_bytes(), &mut out).unwrap();
        expected.assert_eq(&String::from_utf8(out).unwrap());
    }

    #[test]
    fn serves_built_ins_line_by_line() {
        let req = |f: &str, input: &str| {
            format!(
                r#"{{"job":1,"attempt":1,"function":"{f}","input":{input},"files":[],"out_dir":"/tmp"}}"#
            )
        };
        let input = [
            req("noop", "{}"),
            req("sleep", r#"{"ms":1}"#),
            req("sleep", r#"{"ms":"x"}"#),
            req("fail", r#"{"code":"bad_thing"}"#),
            req("nope", "{}"),
            "not json".to_string(),
        ]
        .join("\n");
        check(
            &input,
            expect![[r#"
                {"output":{}}
                {"output":{"slept_ms":1}}
                {"error":{"code":"invalid_input","message":"sleep takes {\"ms\": N} with N a whole number of milliseconds"}}
                {"error":{"code":"bad_thing","message":"failed on request"}}
                {"error":{"code":"unsupported_function","message":"this worker has no built-in function \"nope\""}}
                {"error":{"code":"invalid_input","message":"not a worker request: expected ident at line 1 column 2"}}
            "#]],
        );
    }
}
