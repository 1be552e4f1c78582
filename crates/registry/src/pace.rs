//! When a node builds a snapshot.
//!
//! openraft's own policy counts entries only (`LogsSinceLast`). That was chorus's until a
//! fan-out benchmark showed what it costs: at 9,000 jobs a second, 5,000 entries pass in six
//! seconds, and each snapshot encodes the whole state again, 24 MB after 15 seconds, 47 MB
//! after 30, so the encoding's share of the node's CPU grew with every job kept (a tenth of
//! it after half a minute, more each minute after), on every node at once.
//!
//! So a snapshot is due when at least `min_entries` entries were applied since the last one
//! and either
//! - the log written since holds as many bytes as the last snapshot: the rule of the Raft
//!   dissertation (Ongaro, 5.1.1: snapshot once the log outgrows the previous snapshot by a
//!   factor), which keeps the log on disk and its replay at a restart no larger than the
//!   snapshot, and the encoding's cost in proportion to the bytes written, whatever the
//!   state's size; or
//! - [`COST_SHARE`] times as long as the last snapshot took has passed since it was taken:
//!   so a state that costs little to encode (a few milliseconds: most clusters, and every
//!   test) is snapshotted every `min_entries` entries as before, and a large one at most a
//!   `1/COST_SHARE` of the time.
//!
//! The decision is [`snapshot_due`] (pure); [`pace_snapshots`] is the task that asks
//! openraft for a snapshot when it says so.

use crate::RaftInstance;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A snapshot may cost at most a `1/COST_SHARE` of the time (of one core) by the time leg of
/// the rule.
pub(crate) const COST_SHARE: u32 = 20;
/// How often the pacer looks.
const PACE_TICK: Duration = Duration::from_millis(250);
/// A snapshot asked for and not seen within this long is asked for again (openraft ignores a
/// request while it builds one).
const ASK_AGAIN: Duration = Duration::from_secs(10);

/// The latest snapshot this node holds (built, installed from the leader, or loaded at start).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Taken {
    /// Its last log index.
    pub index: u64,
    /// Its size.
    pub bytes: u64,
    /// What it cost: encoding and writing it, or decoding and writing an installed one.
    pub cost: Duration,
    /// When it was done.
    pub at: Instant,
    /// The log bytes this node had written ([`LogBytes`]) when it was done.
    pub log_bytes_at: u64,
}

/// What happened since the latest snapshot.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Since {
    pub entries: u64,
    pub log_bytes: u64,
    pub elapsed: Duration,
}

/// Whether a snapshot is due (see the module's documentation). Without one yet, entries
/// alone decide.
pub(crate) fn snapshot_due(min_entries: u64, last: Option<&Taken>, since: &Since) -> bool {
    if since.entries < min_entries.max(1) {
        return false;
    }
    let Some(last) = last else { return true };
    since.log_bytes >= last.bytes || since.elapsed >= last.cost * COST_SHARE
}

/// Bytes of entries this node has appended to its log since it started.
#[derive(Clone, Debug, Default)]
pub(crate) struct LogBytes(Arc<AtomicU64>);

impl LogBytes {
    pub(crate) fn add(&self, bytes: u64) {
        self.0.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The latest snapshot's figures, shared by the state machine (which takes snapshots) and the
/// pacer.
#[derive(Debug, Default)]
pub(crate) struct Latest(Mutex<Option<Taken>>);

impl Latest {
    pub(crate) fn set(&self, taken: Taken) {
        let mut latest = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if latest.is_none_or(|l| l.index <= taken.index) {
            *latest = Some(taken);
        }
    }

    pub(crate) fn get(&self) -> Option<Taken> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Asks openraft for a snapshot whenever [`snapshot_due`] says so, until raft stops.
pub(crate) async fn pace_snapshots(
    raft: RaftInstance,
    mut applied: watch::Receiver<u64>,
    latest: Arc<Latest>,
    log_bytes: LogBytes,
    min_entries: u64,
) {
    let started = Instant::now();
    let mut asked: Option<(u64, Instant)> = None;
    let metrics = raft.metrics();
    loop {
        tokio::time::sleep(PACE_TICK).await;
        if metrics.has_changed().is_err() {
            return; // raft's core is gone: it stopped.
        }
        let applied_index = *applied.borrow_and_update();
        let last = latest.get();
        let since = Since {
            entries: applied_index.saturating_sub(last.map_or(0, |l| l.index)),
            log_bytes: log_bytes
                .get()
                .saturating_sub(last.map_or(0, |l| l.log_bytes_at)),
            elapsed: last.map_or(started, |l| l.at).elapsed(),
        };
        if !snapshot_due(min_entries, last.as_ref(), &since) {
            continue;
        }
        let last_index = last.map_or(0, |l| l.index);
        if asked.is_some_and(|(index, at)| index == last_index && at.elapsed() < ASK_AGAIN) {
            continue; // Asked already; being built.
        }
        if raft.trigger().snapshot().await.is_err() {
            return; // raft stopped.
        }
        asked = Some((last_index, Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(bytes: u64, cost_ms: u64) -> Taken {
        Taken {
            index: 10_000,
            bytes,
            cost: Duration::from_millis(cost_ms),
            at: Instant::now(),
            log_bytes_at: 0,
        }
    }

    fn since(entries: u64, log_bytes: u64, elapsed_ms: u64) -> Since {
        Since {
            entries,
            log_bytes,
            elapsed: Duration::from_millis(elapsed_ms),
        }
    }

    #[test]
    fn entries_alone_decide_before_the_first_snapshot() {
        assert!(!snapshot_due(
            5_000,
            None,
            &since(4_999, u64::MAX, u64::MAX)
        ));
        assert!(snapshot_due(5_000, None, &since(5_000, 0, 0)));
        // 0 is taken as 1: a snapshot needs something new.
        assert!(!snapshot_due(0, None, &since(0, 0, 0)));
    }

    #[test]
    fn a_cheap_state_is_snapshotted_every_min_entries() {
        // A 200 KB state that took 2 ms: due as soon as 5,000 entries passed 40 ms after it.
        let last = taken(200_000, 2);
        assert!(snapshot_due(5_000, Some(&last), &since(5_000, 10_000, 40)));
        assert!(!snapshot_due(
            5_000,
            Some(&last),
            &since(4_999, 10_000, 40_000)
        ));
    }

    #[test]
    fn a_large_state_waits_until_the_log_outgrows_it_or_its_cost_share_passed() {
        // 47 MB that took 800 ms: not after 5,000 entries of 20 MB in 6 s...
        let last = taken(47_000_000, 800);
        assert!(!snapshot_due(
            5_000,
            Some(&last),
            &since(5_000, 20_000_000, 6_000)
        ));
        // ...but once the log holds 47 MB,
        assert!(snapshot_due(
            5_000,
            Some(&last),
            &since(12_000, 47_000_000, 14_000)
        ));
        // or 20 times 800 ms passed.
        assert!(snapshot_due(
            5_000,
            Some(&last),
            &since(6_000, 21_000_000, 16_000)
        ));
        assert!(!snapshot_due(
            5_000,
            Some(&last),
            &since(6_000, 21_000_000, 15_999)
        ));
    }

    #[test]
    fn the_latest_is_never_replaced_by_an_older_one() {
        let latest = Latest::default();
        latest.set(taken(1, 1));
        latest.set(Taken {
            index: 9_000,
            ..taken(2, 2)
        });
        assert_eq!(latest.get().unwrap().bytes, 1);
        latest.set(Taken {
            index: 11_000,
            ..taken(3, 3)
        });
        assert_eq!(latest.get().unwrap().bytes, 3);
    }
}
