//! The main job end to end, as a person sees it: `chorus demo --keep-running` analyses its
//! songs, then headless Chromium opens the dashboard link it printed; the screenshot must show
//! the waveform with the chorus marked, and the page must show the analysis values. And the
//! runs view: a run's DAG drawn with each step's state.

use crate::harness::{repo_root, DEADLINE};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chromium(args: &[&str]) -> std::process::Output {
    chromium_sized("1400,900", args)
}

fn chromium_sized(window: &str, args: &[&str]) -> std::process::Output {
    // A fresh profile each time: a shared or default one makes headless Chromium print nothing.
    let profile = tempfile::tempdir().unwrap();
    Command::new("chromium")
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
        ])
        .args([
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            &format!("--window-size={window}"),
            "--virtual-time-budget=10000",
        ])
        .args(args)
        .output()
        .expect("chromium is needed for the dashboard test: apt-get install chromium")
}

/// A screenshot of `url` in a window of that size: a few tries, each a fresh browser (see the
/// demo's test for why).
fn must_screenshot(window: &str, url: &str, shot: &std::path::Path) -> Vec<u8> {
    let mut errors = Vec::new();
    loop {
        let out = chromium_sized(window, &[&format!("--screenshot={}", shot.display()), url]);
        match std::fs::read(shot) {
            Ok(png) => return png,
            Err(_) if errors.len() < 2 => {
                errors.push(String::from_utf8_lossy(&out.stderr).into_owned())
            }
            Err(_) => panic!("no screenshot in 3 tries: {}", errors.join("\n---\n")),
        }
    }
}

/// Pixels of exactly this colour in an RGBA or RGB PNG.
fn count_colour(png_bytes: &[u8], rgb: [u8; 3]) -> usize {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let step = info.color_type.samples();
    buf[..info.buffer_size()]
        .chunks(step)
        .filter(|p| p[..3] == rgb)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shows_songs_on_the_dashboard() {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args(["demo", "--keep-running", "--data-dir"])
        .arg(dir.path().join("data"))
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut demo = Demo(child);
    let stdout = demo.0.stdout.take().unwrap();
    let started = Instant::now();
    let mut printed = String::new();
    let mut url = None;
    // Kept open to the end: a demo that writes to a closed pipe stops (as `| head` wants).
    let mut lines = BufReader::new(stdout).lines();
    for line in &mut lines {
        let line = line.unwrap();
        printed.push_str(&line);
        printed.push('\n');
        if let Some(u) = line.strip_prefix("dashboard: ") {
            url = Some(u.to_string());
            break;
        }
        assert!(
            started.elapsed() < DEADLINE * 3,
            "the demo took too long:\n{printed}"
        );
    }
    let url = url.unwrap_or_else(|| panic!("the demo printed no dashboard link:\n{printed}"));
    must_carry_a_short_lived_read_key(&url, &dir.path().join("data")).await;
    // The table: three songs, each with loudness, tempo, key and a chorus that overlaps the truth.
    assert_eq!(printed.matches("-> found a chorus").count(), 3, "{printed}");
    assert!(printed.contains("mp3,opus"), "{printed}");

    // Headless Chromium on a loaded machine now and then exits without printing the page (its
    // stderr says why): a few tries, each a fresh browser, before the page is judged.
    let mut tries = Vec::new();
    let dom = loop {
        let out = chromium(&["--dump-dom", &url]);
        let dom = String::from_utf8_lossy(&out.stdout).into_owned();
        if dom.contains("LUFS") || tries.len() == 2 {
            break dom;
        }
        tries.push(String::from_utf8_lossy(&out.stderr).into_owned());
    };
    assert!(
        !dom.is_empty(),
        "Chromium printed no page in 3 tries:\n{}",
        tries.join("\n---\n")
    );
    for text in ["LUFS", "BPM", "minor", "audio.ingest", "succeeded", "up"] {
        assert!(
            dom.contains(text),
            "the dashboard does not show {text:?}:\n{dom}"
        );
    }
    assert!(
        dom.contains(r#"<div id="error"></div>"#),
        "the dashboard shows an error:\n{dom}"
    );

    let shot = dir.path().join("dashboard.png");
    let png = must_screenshot("1400,900", &url, &shot);
    // The waveform (#7aa2ff) and the chorus section chip (#f5a524) are on screen.
    let wave = count_colour(&png, [0x7a, 0xa2, 0xff]);
    let chorus = count_colour(&png, [0xf5, 0xa5, 0x24]);
    assert!(wave > 2_000, "waveform pixels: {wave}");
    assert!(chorus > 200, "chorus pixels: {chorus}");
    let keep = std::env::var_os("CHORUS_KEEP_SCREENSHOT").map(std::path::PathBuf::from);
    if let Some(path) = keep {
        std::fs::copy(&shot, path).unwrap();
    }
}

/// The link's key reads and nothing more, and expires within a few hours: never the admin
/// key. The page keeps it for the tab only.
async fn must_carry_a_short_lived_read_key(url: &str, data: &std::path::Path) {
    let (id, _secret) = url
        .split_once("#key=")
        .and_then(|(_, key)| key.split_once(':'))
        .unwrap_or_else(|| panic!("no key in {url}"));
    let text = std::fs::read_to_string(data.join(node::ADMIN_KEY_FILE)).unwrap();
    let admin: node::KeyFile = serde_json::from_str(&text).unwrap();
    assert_ne!(id, admin.id, "the dashboard got the admin key");
    let addr = url
        .strip_prefix("http://")
        .and_then(|rest| rest.split('/').next())
        .unwrap();
    // The demo serves plain HTTP on loopback, so that the link opens without a warning.
    let client = client::Client::new(
        &format!("http://{addr}"),
        client::Credentials {
            key_id: admin.id,
            secret: admin.secret,
        },
    );
    let keys = client.list_keys().await.unwrap();
    let key = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .unwrap_or_else(|| panic!("{keys}"));
    assert_eq!(key["scopes"], serde_json::json!(["read"]), "{key}");
    let expires_in_ms = key["expires_at_ms"].as_u64().unwrap() - crate::harness::now_ms();
    assert!(expires_in_ms <= 4 * 3600 * 1000, "{key}");
    let (status, page) = client.get_public("/").await.unwrap();
    assert_eq!(status, 200);
    let page = String::from_utf8_lossy(&page);
    assert!(
        page.contains("sessionStorage.setItem"),
        "the page keeps the key for the tab"
    );
    assert!(
        !page.contains("localStorage.setItem"),
        "the page keeps the key for good"
    );
}

/// The dashboard as Chromium prints it, a few tries (see the demo's test).
fn must_dump(url: &str, wanted: &str) -> String {
    let mut tries = Vec::new();
    loop {
        let out = chromium_sized(RUNS_WINDOW, &["--dump-dom", url]);
        let dom = String::from_utf8_lossy(&out.stdout).into_owned();
        if dom.contains(wanted) {
            return dom;
        }
        tries.push(format!("{}\n{dom}", String::from_utf8_lossy(&out.stderr)));
        assert!(
            tries.len() < 3,
            "no {wanted:?} in 3 tries:\n{}",
            tries.join("\n---\n")
        );
    }
}

/// Tall enough that the runs view, below the other panels, is on the screenshot.
const RUNS_WINDOW: &str = "1400,1800";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runs_view_draws_a_runs_dag_with_each_steps_state() {
    use model::workflow::RunStatus;
    // Plain HTTP on loopback, as `chorus demo` serves the dashboard: what is tested here is
    // the drawing, and Chromium would refuse the cluster CA it has never been given.
    let node = crate::harness::TestNode::start_with(2, &["--insecure-http"]).await;
    crate::workflows::deploy_echo(&node.client, "echo", None).await;
    let spec = r#"
name = "song-dag"
[[steps]]
name = "analyze"
function = "echo"
input = { path = "song.wav" }
[[steps]]
name = "mp3"
function = "echo"
needs = ["analyze"]
[[steps]]
name = "opus"
function = "echo"
needs = ["analyze"]
[[steps]]
name = "never"
function = "echo"
needs = ["analyze"]
if = "steps.analyze.output.nope"
[[steps]]
name = "catalogue"
function = "echo"
needs = ["mp3", "opus"]
[finally]
name = "clean"
function = "echo"
"#;
    node.client.deploy_workflow(spec).await.unwrap();
    let run = node
        .client
        .start_run("song-dag", &serde_json::json!({}), None)
        .await
        .unwrap();
    let run = crate::workflows::must_end(&node.client, run.summary.id).await;
    assert_eq!(run.summary.state, RunStatus::Succeeded, "{:?}", run.summary);
    let key = node.client.create_key(&[model::Scope::Read]).await.unwrap();
    let url = format!("http://{}/#key={}:{}", node.addr, key.id, key.secret);

    let dom = must_dump(&url, r#"data-step="clean""#);
    assert!(
        dom.contains(r#"<div id="error"></div>"#),
        "the dashboard shows an error:\n{dom}"
    );
    for (step, state) in [
        ("analyze", "succeeded"),
        ("mp3", "succeeded"),
        ("opus", "succeeded"),
        ("never", "skipped"),
        ("catalogue", "succeeded"),
        ("clean", "succeeded"),
    ] {
        let drawn = format!(r#"data-step="{step}" data-state="{state}""#);
        assert!(dom.contains(&drawn), "no {drawn} in:\n{dom}");
    }
    // Five needs drawn as edges, and the finally step's edges from the two steps nothing
    // needs (catalogue, never).
    assert_eq!(dom.matches("<path ").count(), 7, "{dom}");
    assert!(dom.contains("success 100 %"), "no statistics in:\n{dom}");

    let dir = tempfile::tempdir().unwrap();
    let shot = dir.path().join("runs.png");
    let png = must_screenshot(RUNS_WINDOW, &url, &shot);
    // Five succeeded steps (#3ecf8e, 150 x 46 each less their text) and one skipped
    // (#5b6178) are on screen.
    let succeeded = count_colour(&png, [0x3e, 0xcf, 0x8e]);
    let skipped = count_colour(&png, [0x5b, 0x61, 0x78]);
    assert!(succeeded > 5 * 4_000, "succeeded pixels: {succeeded}");
    assert!(skipped > 4_000, "skipped pixels: {skipped}");
    if let Some(path) = std::env::var_os("CHORUS_KEEP_SCREENSHOT") {
        std::fs::copy(
            &shot,
            std::path::PathBuf::from(path).with_extension("runs.png"),
        )
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sources_panel_shows_each_source_with_its_counts_and_a_chart() {
    use serde_json::json;
    let node = crate::harness::TestNode::start_with(2, &["--insecure-http"]).await;
    let spec: model::SourceSpec = serde_json::from_value(json!({
        "name": "uploads",
        "owner": "label-team",
        "events": {},
        "schema": { "type": "object", "required": ["song"] },
        "dead_letter": { "prefix": "dead/" },
    }))
    .unwrap();
    node.client.register_source(&spec).await.unwrap();
    let trigger: model::TriggerSpec = serde_json::from_value(json!({
        "name": "catalogue", "function": "noop", "source": "uploads",
    }))
    .unwrap();
    node.client.create_trigger(&trigger).await.unwrap();
    let events: Vec<_> = (0..4)
        .map(|i| {
            let data = if i == 3 {
                json!({ "title": "no song" })
            } else {
                json!({ "song": i })
            };
            json!({ "specversion": "1.0", "id": i.to_string(), "source": "app",
                    "type": "song.uploaded", "data": data })
        })
        .collect();
    let (status, answer) = node
        .client
        .ingest_events(
            "application/cloudevents-batch+json",
            &[],
            serde_json::to_vec(&events).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{answer}");
    // Two samples of the node's, the later one after the events: a line to draw.
    crate::harness::wait_until("the node sampled the source after its records", || async {
        let list = node.client.sources(true).await.unwrap();
        let s = &list["sources"][0];
        let samples = s["samples"].as_array().unwrap();
        samples.len() >= 2
            && samples.last().unwrap()["records_in"] == 4
            && s["counts"]["dead_lettered"] == 1
    })
    .await;
    let key = node.client.create_key(&[model::Scope::Read]).await.unwrap();
    let url = format!("http://{}/#key={}:{}", node.addr, key.id, key.secret);
    let dom = must_dump(&url, r#"data-chart="uploads""#);
    assert!(
        dom.contains(r#"<div id="error"></div>"#),
        "the dashboard shows an error:\n{dom}"
    );
    let row = dom
        .split(r#"data-source="uploads""#)
        .nth(1)
        .and_then(|rest| rest.split("</tr>").next())
        .unwrap_or_else(|| panic!("no row of source uploads in:\n{dom}"));
    for cell in [
        "<td>label-team</td>",
        "<td>ingest</td>",
        r#"<td class="in">4</td>"#,
        r#"<td class="rejected">1</td>"#,
        r#"<td class="dead">1</td>"#,
    ] {
        assert!(row.contains(cell), "no {cell} in the row:\n{row}");
    }
    for line in [r#"class="rate""#, r#"class="lag""#] {
        assert!(
            row.contains(line),
            "no polyline {line} in the chart:\n{row}"
        );
    }
}
