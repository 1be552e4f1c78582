//! Start-up refuses a data dir whose snapshot is older than its log's purge point (what an
//! older snapshot written over a newer one used to leave): said at once, with what to do,
//! rather than a node whose raft stops at the first entry it cannot read.

use model::{Command, FunctionSpec};
use registry::{Founding, Registry};
use std::path::Path;
use std::time::{Duration, Instant};

const SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// Opens the registry in `dir`, once the previous one's tasks have let go of its database.
async fn open(dir: &Path) -> Result<Registry, registry::RegistryError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        client::tls::install_default_provider();
        let link = registry::PeerLink {
            http: reqwest::Client::builder(),
            scheme: "http",
        };
        match Registry::open(dir, 1, "127.0.0.1:1", Founding::Found, SECRET, 20, link).await {
            Err(e) if e.to_string().contains("already open") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

/// The log index in the snapshot file's header line.
fn snapshot_index(dir: &Path) -> Option<u64> {
    let bytes = std::fs::read(dir.join("snapshot.json")).ok()?;
    let line = bytes.split(|b| *b == b'\n').next()?;
    let header: serde_json::Value = serde_json::from_slice(line).ok()?;
    header["meta"]["last_log_id"]["index"].as_u64()
}

async fn write_until_snapshot_passes(registry: &Registry, dir: &Path, index: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 0;
    while snapshot_index(dir).is_none_or(|i| i <= index) {
        assert!(Instant::now() < deadline, "no snapshot past {index}");
        n += 1;
        let spec = FunctionSpec::builtin(&format!("f{n}"));
        // Until the one-member cluster has elected itself, a write is refused: asked again.
        if let Err(e) = registry.propose(Command::DeployFunction { spec }).await {
            pause_on(&e).await;
        }
    }
}

async fn pause_on(e: &registry::RegistryError) {
    assert!(
        matches!(e, registry::RegistryError::Unavailable(_)),
        "only unavailable is expected: {e}"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_older_than_the_purged_log_is_refused_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let registry = open(dir.path()).await.unwrap();
    write_until_snapshot_passes(&registry, dir.path(), 0).await;
    let old_index = snapshot_index(dir.path()).unwrap();
    let old = std::fs::read(dir.path().join("snapshot.json")).unwrap();
    // Two more snapshots: the log before the newer one is purged.
    write_until_snapshot_passes(&registry, dir.path(), old_index + 40).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while registry.figures().purged_index <= old_index {
        assert!(
            Instant::now() < deadline,
            "the log was not purged past {old_index}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    registry.shutdown().await;
    drop(registry);

    // Restarts as it is.
    let registry = open(dir.path()).await.expect("a sound data dir opens");
    registry.shutdown().await;
    drop(registry);

    std::fs::write(dir.path().join("snapshot.json"), old).unwrap();
    let error = match open(dir.path()).await {
        Ok(_) => panic!("a snapshot older than the purged log opened"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.contains("older than the log's purge point"),
        "{error}"
    );
}
