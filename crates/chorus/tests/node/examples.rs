//! The example workflows of `examples/`, deployed exactly as shipped and run to the end as
//! their comments tell a user to: the song pipeline (started through the CLI with `--file`,
//! on a generated WAV) and the upgrade pipeline, whose clean-up runs whether it succeeds or
//! fails.

use crate::harness::{repo_root, TestNode};
use crate::workflows::must_end;
use client::{Client, Run};
use model::workflow::{RunStatus, StepStatus};
use model::FunctionSpec;
use serde_json::{json, Value};

async fn deploy_example_function(client: &Client, file: &str) {
    let text = std::fs::read_to_string(repo_root().join(file)).unwrap();
    let spec: FunctionSpec = toml::from_str(&text).unwrap();
    client.deploy(&spec).await.unwrap();
}

async fn deploy_example_workflow(client: &Client, file: &str) {
    let text = std::fs::read_to_string(repo_root().join(file)).unwrap();
    client.deploy_workflow(&text).await.unwrap();
}

/// The step's state and output; panics naming the run if it has no such step.
fn step(run: &Run, name: &str) -> (StepStatus, Value) {
    let s = run
        .summary
        .steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no step {name} in {:?}", run.summary));
    let output = s.step.output.as_deref().cloned().unwrap_or(Value::Null);
    (s.step.status, output)
}

/// The jobs of a step's attempts, from the run's job keys (`run:{run}:{step}:...`).
fn step_jobs(run: &Run, name: &str) -> Vec<model::JobId> {
    let prefix = format!("run:{}:{name}:", run.summary.id);
    run.jobs
        .iter()
        .filter(|(key, _)| key.starts_with(&prefix))
        .map(|(_, id)| *id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_song_example_analyses_transcodes_three_ways_and_catalogues() {
    let node = TestNode::start().await;
    deploy_example_function(&node.client, "examples/catalogue.toml").await;
    deploy_example_workflow(&node.client, "examples/song.workflow.toml").await;
    let song = node.dir.path().join("tone.wav");
    std::fs::write(&song, crate::tone_wav(4.0)).unwrap();

    // As the example's comment says: the CLI uploads the song and names it in the input.
    let file = format!("song={}", song.display());
    let stdout = node
        .must_cli(&[
            "runs",
            "start",
            "song",
            "--file",
            &file,
            "--input",
            r#"{"formats": ["opus", "mp3", "flac"]}"#,
            "--json",
        ])
        .await;
    let started: Value = serde_json::from_str(&stdout).unwrap();
    let id = started["id"].as_u64().unwrap();

    let run = must_end(&node.client, id).await;
    assert_eq!(run.summary.state, RunStatus::Succeeded, "{:?}", run.summary);
    let (_, analysis) = step(&run, "analyze");
    let duration_s = analysis["duration_s"].as_f64().unwrap();
    assert!((duration_s - 4.0).abs() < 0.1, "{analysis}");

    // Three transcodes, one job each, each with its file kept as an object.
    let (_, transcodes) = step(&run, "transcode");
    let formats: Vec<&str> = transcodes
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["outputs"][0]["format"].as_str().unwrap())
        .collect();
    assert_eq!(formats, ["opus", "mp3", "flac"]);
    let jobs = step_jobs(&run, "transcode");
    assert_eq!(jobs.len(), 3, "{:?}", run.jobs);
    let mut songs = Vec::new();
    for job in jobs {
        let job = node.client.job(job).await.unwrap();
        songs.extend(job.files.iter().cloned());
        assert_eq!(job.objects.len(), 1, "{job:?}");
        let bytes = node.client.get_object(&job.objects[0]).await.unwrap();
        assert!(
            bytes.len() > 1_000,
            "{}: {} bytes",
            job.objects[0],
            bytes.len()
        );
    }
    // The CLI uploaded the song and named it in the input; each transcode read it.
    let song_key = songs[0].clone();
    assert!(song_key.starts_with("uploads/"), "{song_key}");
    assert_eq!(
        songs,
        [song_key.clone(), song_key.clone(), song_key.clone()]
    );

    // The catalogue line: its output, and the same line written as an object.
    let (_, line) = step(&run, "catalogue");
    assert_eq!(line["song"], json!(song_key));
    assert_eq!(line["run"], json!(id));
    assert_eq!(line["duration_s"], analysis["duration_s"]);
    assert_eq!(line["files"].as_array().unwrap().len(), 3, "{line}");
    let [job] = step_jobs(&run, "catalogue")[..] else {
        panic!("one catalogue job: {:?}", run.jobs)
    };
    let job = node.client.job(job).await.unwrap();
    let object = job
        .objects
        .iter()
        .find(|o| o.ends_with("catalogue.jsonl"))
        .unwrap_or_else(|| panic!("no catalogue.jsonl in {:?}", job.objects));
    let written = node.client.get_object(object).await.unwrap();
    let text = std::str::from_utf8(&written).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert_eq!(serde_json::from_str::<Value>(text).unwrap(), line);
}

/// Runs the upgrade example for app `web` to its end.
async fn upgrade(client: &Client, version: &str) -> Run {
    let input = json!({ "app": "web", "version": version });
    let run = client.start_run("upgrade", &input, None).await.unwrap();
    must_end(client, run.summary.id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_example_releases_and_always_cleans_up() {
    let work = tempfile::tempdir().unwrap();
    let upgrade_dir = work.path().display().to_string();
    let node = TestNode::start_with_env(&[], &[("UPGRADE_DIR", &upgrade_dir)]).await;
    deploy_example_function(&node.client, "examples/upgrade.toml").await;
    deploy_example_workflow(&node.client, "examples/upgrade.workflow.toml").await;
    let released = work.path().join("web/RELEASED");

    let run = upgrade(&node.client, "2.4.1").await;
    assert_eq!(run.summary.state, RunStatus::Succeeded, "{:?}", run.summary);
    for name in ["change", "deploy_test", "verify", "release", "clean_up"] {
        assert_eq!(step(&run, name).0, StepStatus::Succeeded, "{name}");
    }
    assert_eq!(step(&run, "verify").1, json!({ "verified": "2.4.1" }));
    assert_eq!(
        step(&run, "clean_up").1,
        json!({ "removed": true, "run_state": "succeeded" })
    );
    assert_eq!(std::fs::read_to_string(&released).unwrap(), "2.4.1\n");

    // A version that fails verification: nothing is released, and the clean-up still runs.
    let run = upgrade(&node.client, "2.4.2-broken").await;
    assert_eq!(run.summary.state, RunStatus::Failed, "{:?}", run.summary);
    let verify = run
        .summary
        .steps
        .iter()
        .find(|s| s.name == "verify")
        .unwrap();
    let error = verify.step.error.as_ref().unwrap();
    assert_eq!(error.code, "verification_failed", "{error:?}");
    assert_eq!(
        verify.step.elements[0].attempts.len(),
        1,
        "never retried by the policy"
    );
    assert_eq!(step(&run, "release").0, StepStatus::Cancelled);
    assert_eq!(
        step(&run, "clean_up"),
        (
            StepStatus::Succeeded,
            json!({ "removed": true, "run_state": "failed" })
        )
    );
    assert_eq!(std::fs::read_to_string(&released).unwrap(), "2.4.1\n");
    let left: Vec<_> = std::fs::read_dir(work.path().join("web"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["RELEASED"], "every run's working files are gone");
}
