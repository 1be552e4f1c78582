//! Tidy: the architecture invariants of ARCHITECTURE.md, checked from each crate's manifest,
//! and the conventions every source file follows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Normal (not dev) dependencies of every crate under `crates/`.
fn dependencies() -> BTreeMap<String, Vec<String>> {
    let mut all = BTreeMap::new();
    for entry in std::fs::read_dir(workspace().join("crates")).unwrap() {
        let dir = entry.unwrap().path();
        let text = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let manifest: toml::Table = text.parse().unwrap();
        let name = manifest["package"]["name"].as_str().unwrap().to_string();
        assert_eq!(
            Some(name.as_str()),
            dir.file_name().and_then(|n| n.to_str()),
            "folder name = crate name"
        );
        let deps = manifest
            .get("dependencies")
            .and_then(|d| d.as_table())
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default();
        all.insert(name, deps);
    }
    all
}

/// `dependency` may appear only in `owners`.
fn must_be_owned(all: &BTreeMap<String, Vec<String>>, dependency: &str, owners: &[&str]) {
    for (krate, deps) in all {
        if deps.iter().any(|d| d == dependency) {
            assert!(
                owners.contains(&krate.as_str()),
                "{krate} depends on {dependency}; only {owners:?} may"
            );
        }
    }
}

#[test]
fn each_outside_concern_has_one_owner() {
    let all = dependencies();
    must_be_owned(&all, "openraft", &["registry"]);
    must_be_owned(&all, "redb", &["registry"]);
    must_be_owned(&all, "axum", &["api"]);
    must_be_owned(&all, "object_store", &["storage"]);
    must_be_owned(&all, "clap", &["chorus"]);
    must_be_owned(&all, "anyhow", &["chorus"]);
    must_be_owned(&all, "tracing-subscriber", &["chorus"]);
    // libc: process control in the executor; the per-thread CPU clock in audio's timings and
    // huge-page advice on its decode buffer; the snapshot thread's lower priority in the
    // registry.
    must_be_owned(&all, "libc", &["executor", "audio", "registry"]);
    must_be_owned(&all, "symphonia", &["audio"]);
    // The AEAD that seals API keys' signing keys in the replicated state.
    must_be_owned(&all, "ring", &["node"]);
    must_be_owned(&all, "rdkafka", &["events"]);
    // TLS: only the node issues certificates; only the API serves TLS; rustls is known by
    // those two and by the client, which says whom it trusts.
    must_be_owned(&all, "rcgen", &["node"]);
    must_be_owned(&all, "tokio-rustls", &["api"]);
    must_be_owned(&all, "hyper-util", &["api"]);
    must_be_owned(&all, "rustls", &["node", "api", "client"]);
}

#[test]
fn pure_crates_do_no_io() {
    let all = dependencies();
    let io = [
        "tokio",
        "reqwest",
        "axum",
        "openraft",
        "redb",
        "object_store",
        "libc",
        "tracing",
        "rdkafka",
        "events",
    ];
    for pure in [
        "model",
        "scheduler",
        "workflow",
        "triggers",
        "throttle",
        "dsp",
    ] {
        let Some(deps) = all.get(pure) else {
            panic!("crate {pure} is missing")
        };
        for d in deps {
            assert!(
                !io.contains(&d.as_str()),
                "pure crate {pure} depends on {d}"
            );
        }
    }
    let dsp = &all["dsp"];
    assert!(
        !dsp.iter().any(|d| d == "serde" || d == "serde_json"),
        "dsp knows nothing of serde"
    );
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "target") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_file_says_why_it_exists() {
    let mut files = Vec::new();
    rust_files(&workspace().join("crates"), &mut files);
    assert!(files.len() > 20, "found only {} files", files.len());
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.starts_with("//!"),
            "{} must start with a //! line saying why it exists",
            file.display()
        );
    }
}

#[test]
fn no_catch_all_modules() {
    let mut files = Vec::new();
    rust_files(&workspace().join("crates"), &mut files);
    for file in files {
        let stem = file.file_stem().unwrap().to_string_lossy().to_string();
        assert!(
            !["utils", "util", "common", "helpers", "manager", "misc"].contains(&stem.as_str()),
            "{}: name it after what it does",
            file.display()
        );
    }
}
