//! The chaos suite: a seeded, randomised schedule of faults over a cluster of real `chorus
//! serve` processes under a steady mixed load, then a checker that reads every node's state
//! and the client's log (after Jepsen's etcd tests and openraft's fault tests).
//!
//! How a run goes:
//! 1. Three voters and a learner start (`--fault-injection`, small `--snapshot-logs`, so
//!    snapshots happen every few seconds and a node that falls behind installs one). Every
//!    process inherits a marker variable, so a leaked node or worker can be found by it.
//! 2. Load: [`LOAD_CLIENTS`] clients submit no-op, `sleep` and failing jobs (each with an
//!    idempotency key), resubmit known keys, and cancel jobs, through random nodes. Every
//!    answer goes into the client's log ([`History`]).
//! 3. Faults, one at a time, each undone before the next, drawn from the seed: kill -9 and
//!    restart, SIGTERM and restart, a partition between two random sides of the cluster, a
//!    paused process (SIGSTOP, then SIGCONT), a leader kill while a lagging follower catches
//!    up from a snapshot, and, on a fixed beat, a node joining or one removed.
//! 4. Meanwhile a collector reads every node's state digests (`GET /v1/faults/digests`: a
//!    SHA-256 of the applied state every 64 log indexes).
//! 5. Heal: every node runs and is reachable; the load stops; the cluster must finish every
//!    acknowledged job: within [`HEAL_DEADLINE`], or [`HEAL_STALL`] after it last finished
//!    one (a loaded machine may leave a backlog the cluster works through), and never later
//!    than [`HEAL_DEADLINE_MAX`].
//! 6. Check (see [`check`]): every acknowledged job is terminal; no idempotency key has two
//!    jobs; no attempt started after its job finished; every node has the same jobs and the
//!    same digest at every index two of them recorded; after SIGTERM every node exits and no
//!    process of the run is left.
//!
//! The output says what was done and found; a violation fails the test with the seed, and
//! `CHAOS_SEED=... cargo nextest run -p chorus -E 'test(chaos)'` replays the schedule (the
//! faults and the load are drawn from the seed; their timing against the cluster is not, so
//! a replay is the same schedule, not the same interleaving).

use crate::harness::TestNode;
use client::{BatchResult, Client, ClientError, Credentials};
use model::{Job, JobId, JobSpec};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The CI schedule: this long of faults under load (then heal and check).
const CI_FAULTS_S: u64 = 120;
/// The long schedule's default (`CHAOS_DURATION_S`), behind `RUN_SLOW_TESTS`.
const LONG_FAULTS_S_DEFAULT: u64 = 30 * 60;
/// Clients submitting at once.
const LOAD_CLIENTS: usize = 3;
/// Longest one client call may take before it counts as unanswered (a paused node never
/// answers).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// After the faults stop: how long the cluster has to heal and finish every acknowledged job.
const HEAL_DEADLINE: Duration = Duration::from_secs(180);
/// ...or this long after the last job it finished, while it works through a backlog...
const HEAL_STALL: Duration = Duration::from_secs(60);
/// ...but never longer than this after the faults stop.
const HEAL_DEADLINE_MAX: Duration = Duration::from_secs(20 * 60);
/// After every acknowledged job finished: how long every running node has to apply what the
/// leader committed.
const CONVERGE_DEADLINE: Duration = Duration::from_secs(60);
/// How long a restarted or joining node has to become ready.
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// How long a node has to exit after SIGTERM. Jobs here run for at most 1.5 s, so its drain
/// ends well within this unless something hangs.
const TERM_EXIT_DEADLINE: Duration = Duration::from_secs(30);
/// How long processes of the run may linger after their node was killed.
const LEAK_DEADLINE: Duration = Duration::from_secs(15);
/// How often the collector reads every node's state digests.
const DIGEST_POLL: Duration = Duration::from_secs(2);
/// A node joins or one is removed this often.
const MEMBERSHIP_EVERY: Duration = Duration::from_secs(40);
/// Most and fewest nodes in the cluster while nodes join and leave.
const NODES_MAX: usize = 5;
const NODES_MIN: usize = 3;
/// Every process of a run carries this variable, set to the run's token.
const RUN_MARKER: &str = "CHORUS_CHAOS_RUN";
/// Violations printed (the count is always printed).
const VIOLATIONS_SHOWN: usize = 40;
/// The error code of the planned failing jobs.
const PLANNED_FAILURE: &str = "chaos_failure";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_ci_schedule() {
    run(Duration::from_secs(CI_FAULTS_S)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_long_schedule() {
    if std::env::var_os("RUN_SLOW_TESTS").is_none() {
        return;
    }
    let seconds = std::env::var("CHAOS_DURATION_S")
        .ok()
        .map(|s| s.parse().expect("CHAOS_DURATION_S is a number of seconds"))
        .unwrap_or(LONG_FAULTS_S_DEFAULT);
    run(Duration::from_secs(seconds)).await;
}

async fn run(faults_for: Duration) {
    let seed = match std::env::var("CHAOS_SEED") {
        Ok(s) => s.parse().expect("CHAOS_SEED is a number"),
        Err(_) => rand::rng().random(),
    };
    println!(
        "chaos: seed {seed} (replay: CHAOS_SEED={seed}), faults for {} s",
        faults_for.as_secs()
    );
    // Every process started from here inherits the marker: nodes, their workers and what
    // those start. Each test runs in its own process under nextest, so no other test's
    // processes carry it.
    let token = format!("{seed}-{}", std::process::id());
    std::env::set_var(RUN_MARKER, &token);

    let mut chaos = Chaos::start(seed).await;
    // The leak check below must be able to see this run's processes, or it proves nothing.
    let seen = processes_with(&format!("{RUN_MARKER}={token}")).len();
    if seen < chaos.members.len() {
        chaos.violations.push(format!(
            "the process check sees {seen} processes of the run, fewer than its {} nodes",
            chaos.members.len()
        ));
    }
    let history = Arc::new(Mutex::new(History::default()));
    let digests = Arc::new(Mutex::new(DigestBook::default()));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..LOAD_CLIENTS {
        tasks.spawn(load(
            seed.wrapping_add(client as u64 + 1),
            chaos.directory.clone(),
            history.clone(),
            stop.clone(),
        ));
    }
    tasks.spawn(collect_digests(
        chaos.directory.clone(),
        digests.clone(),
        stop.clone(),
    ));

    chaos.inject_until(Instant::now() + faults_for).await;
    chaos.heal().await;
    stop.cancel();
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }

    let history = std::mem::take(&mut *history.lock().unwrap());
    let mut found = Found::default();
    check(&mut chaos, &history, &digests, &mut found).await;
    chaos.stop_all(&mut found).await;
    must_leave_no_process(&token, &mut found).await;

    report(seed, &chaos, &history, &found);
    if !found.violations.is_empty() {
        // The nodes' logs now, while nothing panics (a node dropped during a panic prints its
        // log after the panic's message): the verdict below is then the output's last lines,
        // the part a CI log shows.
        for member in &chaos.members {
            eprintln!("--- node {} log ---\n{}", member.id, member.node.log());
        }
    }
    drop(chaos);
    let shown: Vec<&String> = found.violations.iter().take(VIOLATIONS_SHOWN).collect();
    assert!(
        found.violations.is_empty(),
        "chaos: {} violation(s) with seed {seed}; replay with CHAOS_SEED={seed}; the first:\n{shown:#?}",
        found.violations.len(),
    );
}

// --- the cluster under test ---

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    Up,
    Paused,
    Down,
    Removed,
}

struct Member {
    node: TestNode,
    id: u64,
    life: Life,
}

/// What the load and the collector see of the cluster: a client per node and whether the
/// node runs (a paused or killed node is left alone; calls to it would only time out).
#[derive(Clone, Default)]
struct Directory(Arc<Mutex<Vec<(u64, Client, Life)>>>);

impl Directory {
    fn set(&self, id: u64, client: &Client, life: Life) {
        let mut nodes = self.0.lock().unwrap();
        match nodes.iter_mut().find(|(n, _, _)| *n == id) {
            Some(entry) => *entry = (id, client.clone(), life),
            None => nodes.push((id, client.clone(), life)),
        }
    }

    fn up(&self) -> Vec<(u64, Client)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, _, life)| *life == Life::Up)
            .map(|(id, client, _)| (*id, client.clone()))
            .collect()
    }
}

/// What a fault aims at, resolved against the cluster when the fault starts.
#[derive(Clone, Copy, Debug)]
enum Target {
    Leader,
    /// The n-th (modulo) node that is not the leader.
    Follower(usize),
}

/// How a partition treats the traffic across it: the rules `PUT /v1/faults` offers. Refuse
/// (the sender gets an error at once, both ways) is the original form; the others need the
/// rules form (`{"rules": [...]}`), used when the nodes accept it (see
/// [`Chaos::rules_supported`]).
#[derive(Clone, Copy, Debug)]
enum Link {
    Refuse,
    /// A black hole: requests across are never answered; senders wait for their deadlines.
    Drop,
    /// Requests across go through after this many milliseconds.
    Delay {
        ms: u64,
    },
    /// The first side's requests to the other are refused; the other way works.
    OneWay,
}

impl Link {
    fn draw(rng: &mut StdRng, rules: bool) -> Link {
        if !rules {
            return Link::Refuse;
        }
        match rng.random_range(0..4) {
            0 => Link::Refuse,
            1 => Link::Drop,
            2 => Link::Delay {
                ms: rng.random_range(20..400),
            },
            _ => Link::OneWay,
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Link::Refuse => "partition (refuse)",
            Link::Drop => "partition (drop: black hole)",
            Link::Delay { .. } => "slow links (delay)",
            Link::OneWay => "one-way partition",
        }
    }

    /// What a node on one side (`first_side` or not) is told about the nodes `across`.
    fn faults_body(self, first_side: bool, across: &[u64]) -> serde_json::Value {
        let rules = |action: &str, delay_ms: u64, direction: &str| {
            let rules: Vec<serde_json::Value> = across
                .iter()
                .map(|node| {
                    json!({
                        "node": node,
                        "action": action,
                        "delay_ms": delay_ms,
                        "direction": direction,
                    })
                })
                .collect();
            json!({ "rules": rules })
        };
        match self {
            Link::Refuse => json!({ "blocked_nodes": across }),
            Link::Drop => rules("drop", 0, "both"),
            Link::Delay { ms } => rules("delay", ms, "both"),
            Link::OneWay if first_side => rules("refuse", 0, "outgoing"),
            Link::OneWay => HEALED.clone(),
        }
    }
}

/// The faults body that heals a node, in either form of the API.
static HEALED: std::sync::LazyLock<serde_json::Value> =
    std::sync::LazyLock::new(|| json!({ "blocked_nodes": [] }));

#[derive(Clone, Copy, Debug)]
enum Fault {
    Kill9 {
        target: Target,
        down_ms: u64,
    },
    Term {
        target: Target,
        down_ms: u64,
    },
    Partition {
        split: u64,
        link: Link,
        hold_ms: u64,
    },
    Pause {
        target: Target,
        hold_ms: u64,
    },
    LeaderKillDuringSnapshot {
        target: Target,
    },
    Join,
    Remove {
        target: Target,
    },
}

impl Fault {
    fn kind(self) -> &'static str {
        match self {
            Fault::Kill9 { .. } => "kill -9 and restart",
            Fault::Term { .. } => "SIGTERM and restart",
            Fault::Partition { link, .. } => link.kind(),
            Fault::Pause { .. } => "pause (SIGSTOP/SIGCONT)",
            Fault::LeaderKillDuringSnapshot { .. } => "leader kill during snapshot install",
            Fault::Join => "node join",
            Fault::Remove { .. } => "node removal",
        }
    }

    /// A fault drawn from the schedule's generator; `rules`: the nodes take fault rules.
    fn draw(rng: &mut StdRng, rules: bool) -> Fault {
        let target = if rng.random_bool(0.4) {
            Target::Leader
        } else {
            Target::Follower(rng.random_range(0..8))
        };
        match rng.random_range(0..100) {
            0..25 => Fault::Kill9 {
                target,
                down_ms: rng.random_range(0..3_000),
            },
            25..40 => Fault::Term {
                target,
                down_ms: rng.random_range(0..2_000),
            },
            40..65 => Fault::Partition {
                split: rng.random(),
                link: Link::draw(rng, rules),
                hold_ms: rng.random_range(1_000..8_000),
            },
            65..85 => Fault::Pause {
                target,
                hold_ms: rng.random_range(500..5_000),
            },
            _ => Fault::LeaderKillDuringSnapshot {
                target: Target::Follower(rng.random_range(0..8)),
            },
        }
    }
}

struct Chaos {
    members: Vec<Member>,
    directory: Directory,
    credentials: Credentials,
    rng: StdRng,
    /// Faults injected, by kind.
    injected: BTreeMap<&'static str, u64>,
    /// Leader kills timed with a snapshot install, and how many of those saw the follower
    /// install a snapshot.
    snapshot_installs_seen: u64,
    /// Whether the nodes take fault rules (drop, delay, one way), not only refusals.
    rules_supported: bool,
    /// Violations seen while injecting (a node that did not come back, ...).
    violations: Vec<String>,
    /// Notes that are not violations (a fault that could not be aimed, ...).
    notes: Vec<String>,
}

impl Chaos {
    async fn start(seed: u64) -> Chaos {
        let first = TestNode::start().await;
        let credentials = first.credentials();
        let mut chaos = Chaos {
            members: Vec::new(),
            directory: Directory::default(),
            credentials,
            rng: StdRng::seed_from_u64(seed),
            injected: BTreeMap::new(),
            snapshot_installs_seen: 0,
            rules_supported: false,
            violations: Vec::new(),
            notes: Vec::new(),
        };
        // The rules form of the faults body, where the nodes know it (an empty set of rules
        // changes nothing).
        let probe = serde_json::to_vec(&json!({ "rules": [] })).unwrap();
        let answer = first.client.raw("PUT", "/v1/faults", probe).await;
        chaos.rules_supported = matches!(answer, Ok((200, _)));
        println!(
            "chaos: fault rules (drop, delay, one way) {}",
            if chaos.rules_supported {
                "are supported"
            } else {
                "are not supported by these nodes: partitions refuse only"
            }
        );
        chaos.add(first);
        for _ in 0..3 {
            let joined = TestNode::join(&chaos.members[0].node).await;
            chaos.add(joined);
        }
        chaos
    }

    fn add(&mut self, node: TestNode) {
        let id = node.id();
        let client = self.client_for(&node);
        self.directory.set(id, &client, Life::Up);
        self.members.push(Member {
            node,
            id,
            life: Life::Up,
        });
    }

    /// A client of `node` with the cluster's first admin key (keys are replicated).
    fn client_for(&self, node: &TestNode) -> Client {
        node.client_at(&node.addr, self.credentials.clone())
    }

    fn set_life(&mut self, at: usize, life: Life) {
        self.members[at].life = life;
        let client = self.client_for(&self.members[at].node);
        self.directory.set(self.members[at].id, &client, life);
    }

    fn live(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| self.members[i].life == Life::Up)
            .collect()
    }

    /// The leader as the running nodes know it (the one reported with the highest term).
    async fn leader(&self) -> Option<usize> {
        let mut best: Option<(u64, u64)> = None;
        for i in self.live() {
            let client = self.client_for(&self.members[i].node);
            let Some(Ok(cluster)) = bounded(client.cluster()).await else {
                continue;
            };
            if let (Some(leader), Some(term)) =
                (cluster["leader"].as_u64(), cluster["term"].as_u64())
            {
                if best.is_none_or(|(t, _)| term > t) {
                    best = Some((term, leader));
                }
            }
        }
        let (_, leader) = best?;
        self.members
            .iter()
            .position(|m| m.id == leader && m.life == Life::Up)
    }

    async fn resolve(&self, target: Target) -> Option<usize> {
        let leader = self.leader().await;
        match target {
            Target::Leader => leader,
            Target::Follower(n) => {
                let followers: Vec<usize> = self
                    .live()
                    .into_iter()
                    .filter(|&i| Some(i) != leader)
                    .collect();
                (!followers.is_empty()).then(|| followers[n % followers.len()])
            }
        }
    }

    async fn inject_until(&mut self, end: Instant) {
        let mut next_membership = Instant::now() + MEMBERSHIP_EVERY;
        let mut join_next = true;
        let run_started = Instant::now();
        while Instant::now() < end {
            let gap = Duration::from_millis(self.rng.random_range(500..3_000));
            tokio::time::sleep(gap).await;
            let membership = Instant::now() >= next_membership;
            let fault = if membership {
                let members = self
                    .members
                    .iter()
                    .filter(|m| m.life != Life::Removed)
                    .count();
                let join = (join_next && members < NODES_MAX) || members <= NODES_MIN;
                join_next = !join;
                if join {
                    Fault::Join
                } else {
                    Fault::Remove {
                        target: Target::Follower(self.rng.random_range(0..8)),
                    }
                }
            } else {
                Fault::draw(&mut self.rng, self.rules_supported)
            };
            let started = Instant::now();
            let injected = self.inject(fault).await;
            if membership {
                // Counted from the end of the step, so a slow one (a removal that fails for
                // its whole deadline) does not crowd out the other faults.
                next_membership = Instant::now() + MEMBERSHIP_EVERY;
            }
            if injected {
                *self.injected.entry(fault.kind()).or_default() += 1;
                println!(
                    "chaos: at {:>6.1} s  {fault:?} (took {:.1} s)",
                    (started - run_started).as_secs_f64(),
                    started.elapsed().as_secs_f64()
                );
            }
        }
    }

    /// Injects one fault and undoes it; false if it could not be aimed (no leader known).
    async fn inject(&mut self, fault: Fault) -> bool {
        match fault {
            Fault::Kill9 { target, down_ms } => {
                let Some(at) = self.resolve(target).await else {
                    return false;
                };
                self.members[at].node.kill_9();
                self.set_life(at, Life::Down);
                tokio::time::sleep(Duration::from_millis(down_ms)).await;
                self.restart(at).await;
            }
            Fault::Term { target, down_ms } => {
                let Some(at) = self.resolve(target).await else {
                    return false;
                };
                self.terminate(at).await;
                tokio::time::sleep(Duration::from_millis(down_ms)).await;
                self.restart(at).await;
            }
            Fault::Partition {
                split,
                link,
                hold_ms,
            } => {
                let live = self.live();
                if live.len() < 2 {
                    return false;
                }
                // A random side: the members whose bit in `split` is set, never all or none.
                let mut side: Vec<bool> = (0..live.len()).map(|k| split >> k & 1 == 1).collect();
                if side.iter().all(|&s| s) || side.iter().all(|&s| !s) {
                    side[0] = !side[0];
                }
                let ids: Vec<u64> = live.iter().map(|&i| self.members[i].id).collect();
                for (k, &i) in live.iter().enumerate() {
                    let others: Vec<u64> = (0..live.len())
                        .filter(|&j| side[j] != side[k])
                        .map(|j| ids[j])
                        .collect();
                    self.set_faults(i, link.faults_body(side[k], &others)).await;
                }
                tokio::time::sleep(Duration::from_millis(hold_ms)).await;
                for &i in &live {
                    self.set_faults(i, HEALED.clone()).await;
                }
            }
            Fault::Pause { target, hold_ms } => {
                let Some(at) = self.resolve(target).await else {
                    return false;
                };
                self.members[at].node.signal("STOP");
                self.set_life(at, Life::Paused);
                tokio::time::sleep(Duration::from_millis(hold_ms)).await;
                self.members[at].node.signal("CONT");
                self.set_life(at, Life::Up);
            }
            Fault::LeaderKillDuringSnapshot { target } => {
                return self.leader_kill_during_snapshot(target).await;
            }
            Fault::Join => self.join().await,
            Fault::Remove { target } => return self.remove(target).await,
        }
        true
    }

    /// Tells node `at` which nodes to cut off; a node that cannot be told is a violation (it
    /// runs and is not paused, so it must answer).
    async fn set_faults(&mut self, at: usize, body: serde_json::Value) {
        let client = self.client_for(&self.members[at].node);
        let body = serde_json::to_vec(&body).unwrap();
        match bounded(client.raw("PUT", "/v1/faults", body)).await {
            Some(Ok((200, _))) => {}
            other => self.violations.push(format!(
                "node {} refused PUT /v1/faults: {other:?}",
                self.members[at].id
            )),
        }
    }

    /// SIGTERM, then waits for the process to exit; one that does not within
    /// [`TERM_EXIT_DEADLINE`] is a violation, and is killed.
    async fn terminate(&mut self, at: usize) {
        self.members[at].node.signal("TERM");
        self.set_life(at, Life::Down);
        let id = self.members[at].id;
        let node = &mut self.members[at].node;
        let started = Instant::now();
        while !node.has_exited() {
            if started.elapsed() > TERM_EXIT_DEADLINE {
                self.violations.push(format!(
                    "node {id} did not exit within {} s of SIGTERM",
                    TERM_EXIT_DEADLINE.as_secs()
                ));
                node.kill_9();
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts node `at` again on its data dir and waits until it is ready. A process that
    /// exits, or is not ready in time, is a violation. One that exited is started again (a
    /// few times, as a supervisor would), so the run goes on; one that runs but is not ready
    /// is left running: starting it again would not help it.
    async fn restart(&mut self, at: usize) {
        let id = self.members[at].id;
        for launch in 1..=3 {
            self.members[at].node.launch();
            let why = match self.wait_ready(at).await {
                Ok(()) => {
                    self.set_life(at, Life::Up);
                    return;
                }
                Err(NotReady::Slow(why)) => {
                    self.violations.push(format!(
                        "node {id}, restarted on its data dir (launch {launch}): {why}"
                    ));
                    self.set_life(at, Life::Up);
                    return;
                }
                Err(NotReady::Exited(why)) => why,
            };
            self.violations.push(format!(
                "node {id}, restarted on its data dir (launch {launch}): {why}"
            ));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn wait_ready(&mut self, at: usize) -> Result<(), NotReady> {
        let started = Instant::now();
        let node = &mut self.members[at].node;
        loop {
            if node.probe_ready().await {
                return Ok(());
            }
            if node.has_exited() {
                return Err(NotReady::Exited(format!(
                    "the process exited: {}",
                    last_error(node)
                )));
            }
            if started.elapsed() > READY_DEADLINE {
                return Err(NotReady::Slow(format!(
                    "not ready in {} s: {}",
                    READY_DEADLINE.as_secs(),
                    last_error(node)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn cluster_figure(&self, at: usize, name: &str) -> Option<u64> {
        let client = self.client_for(&self.members[at].node);
        let cluster = bounded(client.cluster()).await?.ok()?;
        cluster[name].as_u64()
    }

    /// Kills a follower, waits until the leader's snapshot has passed what the follower
    /// applied (so it must catch up from a snapshot), restarts it and kills the leader as soon
    /// as the follower serves raft RPC: while the leader sends its snapshot.
    async fn leader_kill_during_snapshot(&mut self, target: Target) -> bool {
        let (Some(leader), Some(follower)) = (self.leader().await, self.resolve(target).await)
        else {
            return false;
        };
        let Some(applied) = self.cluster_figure(follower, "applied_index").await else {
            return false;
        };
        self.members[follower].node.kill_9();
        self.set_life(follower, Life::Down);
        let before = Instant::now();
        let mut forced = false;
        while before.elapsed() < Duration::from_secs(30) {
            if self
                .cluster_figure(leader, "snapshot_index")
                .await
                .is_some_and(|s| s > applied)
            {
                forced = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !forced {
            self.notes.push(format!(
                "the leader took no snapshot past index {applied} in 30 s: node {} may have \
                 caught up from the log",
                self.members[follower].id
            ));
        }
        self.members[follower].node.launch();
        let addr = self.members[follower].node.addr.clone();
        let probe = self.members[follower]
            .node
            .client_at(&addr, self.credentials.clone());
        let started = Instant::now();
        while started.elapsed() < READY_DEADLINE {
            if matches!(bounded(probe.get_public("/healthz")).await, Some(Ok(_))) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.members[leader].node.kill_9();
        self.set_life(leader, Life::Down);
        tokio::time::sleep(Duration::from_millis(self.rng.random_range(500..2_000))).await;
        self.restart(leader).await;
        if self.members[follower].life != Life::Up {
            match self.wait_ready(follower).await {
                Ok(()) => self.set_life(follower, Life::Up),
                Err(NotReady::Slow(why)) => {
                    self.violations.push(format!(
                        "node {} after a snapshot install cut short by the leader's death: {why}",
                        self.members[follower].id
                    ));
                    self.set_life(follower, Life::Up);
                }
                Err(NotReady::Exited(why)) => {
                    self.violations.push(format!(
                        "node {} after a snapshot install cut short by the leader's death: {why}",
                        self.members[follower].id
                    ));
                    self.restart(follower).await;
                }
            }
        }
        if forced
            && self
                .cluster_figure(follower, "snapshot_index")
                .await
                .is_some_and(|s| s > applied)
        {
            self.snapshot_installs_seen += 1;
        }
        true
    }

    /// A new node joins through a random running member.
    async fn join(&mut self) {
        let live = self.live();
        let through = live[self.rng.random_range(0..live.len())];
        let mut node = TestNode::joining(&self.members[through].node, self.credentials.clone());
        node.launch();
        let started = Instant::now();
        loop {
            if node.probe_ready().await {
                self.add(node);
                return;
            }
            if node.has_exited() || started.elapsed() > READY_DEADLINE {
                let tail: Vec<String> =
                    node.log().lines().rev().take(3).map(String::from).collect();
                self.violations.push(format!(
                    "a node joining through node {} did not become ready: {tail:?}",
                    self.members[through].id
                ));
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Removes a node from the cluster (asked of another node), then stops its process.
    async fn remove(&mut self, target: Target) -> bool {
        let Some(at) = self.resolve(target).await else {
            return false;
        };
        let id = self.members[at].id;
        let started = Instant::now();
        loop {
            let asked = self
                .live()
                .into_iter()
                .find(|&i| i != at)
                .map(|i| self.client_for(&self.members[i].node));
            let answer = match asked {
                Some(client) => bounded(client.node_action(id, "remove")).await,
                None => None,
            };
            if let Some(Ok(_)) = answer {
                break;
            }
            if started.elapsed() > READY_DEADLINE {
                self.violations
                    .push(format!("node {id} could not be removed: {answer:?}"));
                return true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.terminate(at).await;
        self.set_life(at, Life::Removed);
        true
    }

    /// Undoes whatever is left: every member that is not removed runs, is reachable and is
    /// ready.
    async fn heal(&mut self) {
        for at in 0..self.members.len() {
            match self.members[at].life {
                Life::Paused => {
                    self.members[at].node.signal("CONT");
                    self.set_life(at, Life::Up);
                }
                Life::Down => self.restart(at).await,
                Life::Up | Life::Removed => {}
            }
        }
        for at in self.live() {
            self.set_faults(at, HEALED.clone()).await;
        }
    }

    /// SIGTERM to every running node; each must exit (see [`Chaos::terminate`]).
    async fn stop_all(&mut self, found: &mut Found) {
        for at in 0..self.members.len() {
            if self.members[at].life == Life::Paused {
                self.members[at].node.signal("CONT");
            }
            if matches!(self.members[at].life, Life::Up | Life::Paused) {
                self.terminate(at).await;
            }
        }
        found.violations.append(&mut self.violations);
    }
}

/// The last line of a node's log that says `error` (colours taken out), or its last line.
fn last_error(node: &TestNode) -> String {
    let log = node.log();
    let plain = |line: &str| {
        let mut out = String::new();
        let mut escape = false;
        for c in line.chars() {
            match (escape, c) {
                (false, '\x1b') => escape = true,
                (true, 'm') => escape = false,
                (false, c) => out.push(c),
                (true, _) => {}
            }
        }
        out
    };
    let lines: Vec<String> = log.lines().map(plain).collect();
    lines
        .iter()
        .rev()
        .find(|l| l.starts_with("error") || l.contains(" ERROR "))
        .or(lines.last())
        .cloned()
        .unwrap_or_else(|| "(empty log)".into())
}

/// Why a started node is not ready.
#[derive(Debug)]
enum NotReady {
    /// The process exited (with the last error in its log).
    Exited(String),
    /// It runs, but did not become ready within [`READY_DEADLINE`].
    Slow(String),
}

/// Runs a client call with [`CALL_TIMEOUT`]; `None` if it took longer.
async fn bounded<T>(call: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout(CALL_TIMEOUT, call).await.ok()
}

// --- the load and the client's log ---

/// The client's log: what it asked and what it was told.
#[derive(Debug, Default)]
struct History {
    /// Every job the client tried to submit, by idempotency key.
    specs: BTreeMap<String, JobSpec>,
    /// Acknowledged jobs and their keys.
    acked: BTreeMap<JobId, String>,
    /// Every id the cluster answered for a key (more than one is a violation).
    ids_by_key: BTreeMap<String, BTreeSet<JobId>>,
    /// Calls by what they were and how they ended.
    calls: BTreeMap<String, u64>,
}

impl History {
    fn count(&mut self, call: &str, outcome: &str) {
        *self.calls.entry(format!("{call}: {outcome}")).or_default() += 1;
    }

    fn acknowledge(&mut self, key: &str, id: JobId) {
        self.acked.insert(id, key.to_string());
        self.ids_by_key
            .entry(key.to_string())
            .or_default()
            .insert(id);
    }
}

fn outcome(e: &ClientError) -> String {
    match e.code() {
        Some(code) => code.as_str().to_string(),
        None => "no answer".into(),
    }
}

/// One client of the load: random calls through random running nodes until `stop`.
async fn load(
    seed: u64,
    directory: Directory,
    history: Arc<Mutex<History>>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut next_key = 0u64;
    while !stop.is_cancelled() {
        let up = directory.up();
        if !up.is_empty() {
            let (_, client) = &up[rng.random_range(0..up.len())];
            match rng.random_range(0..100) {
                0..60 => {
                    let specs: Vec<JobSpec> = (0..rng.random_range(1..=4))
                        .map(|_| {
                            next_key += 1;
                            new_job(&mut rng, format!("chaos-{seed}-{next_key}"))
                        })
                        .collect();
                    submit(client, &specs, "submit", &history).await;
                }
                60..80 => {
                    let spec = {
                        let h = history.lock().unwrap();
                        let n = h.specs.len();
                        (n > 0).then(|| h.specs.values().nth(rng.random_range(0..n)).cloned())
                    };
                    if let Some(Some(spec)) = spec {
                        submit(client, &[spec], "resubmit", &history).await;
                    }
                }
                _ => {
                    let id = {
                        let h = history.lock().unwrap();
                        let n = h.acked.len();
                        (n > 0).then(|| *h.acked.keys().nth(rng.random_range(0..n)).unwrap())
                    };
                    if let Some(id) = id {
                        let answer = bounded(client.cancel(id)).await;
                        let outcome = match &answer {
                            Some(Ok(_)) => "ok".to_string(),
                            Some(Err(e)) => outcome(e),
                            None => "timed out".into(),
                        };
                        history.lock().unwrap().count("cancel", &outcome);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..150))).await;
    }
}

/// A no-op, a short sleep or a job that fails (and is retried by the default policy).
fn new_job(rng: &mut StdRng, key: String) -> JobSpec {
    let (function, input) = match rng.random_range(0..100) {
        0..40 => ("noop", json!({})),
        40..80 => ("sleep", json!({ "ms": rng.random_range(10..1_500) })),
        _ => ("fail", json!({ "code": PLANNED_FAILURE })),
    };
    JobSpec {
        function: function.into(),
        input,
        files: vec![],
        priority: 0,
        idempotency_key: Some(key),
    }
}

async fn submit(client: &Client, specs: &[JobSpec], call: &str, history: &Mutex<History>) {
    for spec in specs {
        let key = spec.idempotency_key.clone().unwrap();
        history.lock().unwrap().specs.insert(key, spec.clone());
    }
    let answer = bounded(client.submit_batch(specs)).await;
    let mut h = history.lock().unwrap();
    match answer {
        Some(Ok(results)) => {
            for (spec, result) in specs.iter().zip(results) {
                let key = spec.idempotency_key.as_deref().unwrap();
                match result {
                    BatchResult::Submitted { id, existing } => {
                        h.acknowledge(key, id);
                        h.count(call, if existing { "existing" } else { "created" });
                    }
                    BatchResult::Rejected { error } => h.count(call, error.code.as_str()),
                }
            }
        }
        Some(Err(e)) => h.count(call, &outcome(&e)),
        None => h.count(call, "timed out"),
    }
}

// --- state digests ---

/// Every digest seen: index -> node -> (term, sha256). A node's digest at an index never
/// changes (it applies each index once per start, and a restart re-applies the same log).
#[derive(Debug, Default)]
struct DigestBook {
    seen: BTreeMap<u64, BTreeMap<u64, (u64, String)>>,
    /// A node that reported two digests for one index (a replay that differs).
    changed: Vec<String>,
}

impl DigestBook {
    fn record(&mut self, node: u64, digests: &serde_json::Value) {
        for d in digests["digests"].as_array().into_iter().flatten() {
            let (Some(index), Some(term), Some(sha)) = (
                d["index"].as_u64(),
                d["term"].as_u64(),
                d["sha256"].as_str(),
            ) else {
                continue;
            };
            let here = self.seen.entry(index).or_default();
            match here.get(&node) {
                Some((t, s)) if (*t, s.as_str()) != (term, sha) => self.changed.push(format!(
                    "node {node} at index {index}: {t}/{s} then {term}/{sha}"
                )),
                Some(_) => {}
                None => {
                    here.insert(node, (term, sha.to_string()));
                }
            }
        }
    }
}

async fn read_digests(directory: &Directory, book: &Mutex<DigestBook>) {
    for (id, client) in directory.up() {
        if let Some(Ok((200, body))) =
            bounded(client.raw("GET", "/v1/faults/digests", Vec::new())).await
        {
            if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body) {
                book.lock().unwrap().record(id, &value);
            }
        }
    }
}

async fn collect_digests(
    directory: Directory,
    book: Arc<Mutex<DigestBook>>,
    stop: tokio_util::sync::CancellationToken,
) {
    while !stop.is_cancelled() {
        read_digests(&directory, &book).await;
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(DIGEST_POLL) => {}
        }
    }
}

// --- the checker ---

#[derive(Debug, Default)]
struct Found {
    violations: Vec<String>,
    jobs: usize,
    terminal_by_state: BTreeMap<String, u64>,
    digest_indexes_compared: usize,
    digest_comparisons: usize,
    final_common_index: Option<u64>,
    leaked: usize,
    /// Acknowledged jobs missing from the cluster, and ones not terminal at the deadline.
    lost: usize,
    unfinished: usize,
}

/// How a node answers a listing: from its own state as it is (the caller has made sure it
/// caught up), or after catching up with the leader (linearizable).
#[derive(Clone, Copy, Debug)]
enum Read {
    Local,
    Linearizable,
}

/// Every job a node holds.
async fn all_jobs(client: &Client, read: Read) -> Result<BTreeMap<JobId, Job>, String> {
    let stale = matches!(read, Read::Local);
    let mut jobs = BTreeMap::new();
    let mut before: Option<JobId> = None;
    loop {
        let path = match before {
            Some(b) => format!("/v1/jobs?stale={stale}&limit=1000&before={b}"),
            None => format!("/v1/jobs?stale={stale}&limit=1000"),
        };
        let (status, body) = bounded(client.raw("GET", &path, Vec::new()))
            .await
            .ok_or("listing jobs timed out")?
            .map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("listing jobs: {status}"));
        }
        let page: client::JobPage = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        for job in page.jobs {
            jobs.insert(job.id, job);
        }
        match page.next_before {
            Some(next) => before = Some(next),
            None => return Ok(jobs),
        }
    }
}

/// Waits until every running node has applied what the leader had committed when asked.
async fn must_converge(chaos: &Chaos, deadline: Instant) -> Result<(), String> {
    loop {
        let settled = async {
            let leader = chaos.leader().await.ok_or("no leader")?;
            let commit = chaos
                .cluster_figure(leader, "commit_index")
                .await
                .ok_or("the leader did not answer")?;
            for at in chaos.live() {
                let applied = chaos.cluster_figure(at, "applied_index").await;
                if applied.is_none_or(|a| a < commit) {
                    return Err(format!(
                        "node {} applied {applied:?} of {commit}",
                        chaos.members[at].id
                    ));
                }
            }
            Ok(())
        }
        .await;
        match settled {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

async fn check(
    chaos: &mut Chaos,
    history: &History,
    digests: &Mutex<DigestBook>,
    found: &mut Found,
) {
    let healing = Instant::now();
    let mut deadline = healing + HEAL_DEADLINE;
    let mut pending_before = usize::MAX;
    // 1. Every acknowledged job reaches a terminal state: read through the leader, so a node
    //    that cannot catch up does not hide the others' answer (it fails check 4).
    let mut leader_jobs = BTreeMap::new();
    loop {
        let read = match chaos.leader().await {
            Some(leader) => {
                let client = chaos.client_for(&chaos.members[leader].node);
                all_jobs(&client, Read::Linearizable).await
            }
            None => Err("no leader".to_string()),
        };
        if let Ok(jobs) = &read {
            leader_jobs = jobs.clone();
        }
        let pending: Vec<JobId> = history
            .acked
            .keys()
            .filter(|id| !leader_jobs.get(id).is_some_and(|j| j.state.is_terminal()))
            .copied()
            .collect();
        if pending.is_empty() {
            println!(
                "chaos: every acknowledged job finished {:.1} s after the faults stopped",
                healing.elapsed().as_secs_f64()
            );
            break;
        }
        // Progress moves the deadline on: a backlog is not a failure to heal, a stall is.
        if pending.len() < pending_before {
            if pending_before != usize::MAX {
                deadline = deadline
                    .max(Instant::now() + HEAL_STALL)
                    .min(healing + HEAL_DEADLINE_MAX);
            }
            pending_before = pending.len();
        }
        if Instant::now() > deadline {
            // What each node makes of the cluster, for whoever reads the failure.
            for at in chaos.live() {
                let client = chaos.client_for(&chaos.members[at].node);
                let view = bounded(client.raw("GET", "/v1/cluster", Vec::new())).await;
                let view = match view {
                    Some(Ok((_, body))) => String::from_utf8_lossy(&body).into_owned(),
                    other => format!("{other:?}"),
                };
                println!("chaos: node {} sees {view}", chaos.members[at].id);
            }
            // Why the first unfinished jobs wait, as the leader explains them, and the nodes
            // as it lists them.
            if let Some(leader) = chaos.leader().await {
                let client = chaos.client_for(&chaos.members[leader].node);
                let running = pending
                    .iter()
                    .filter(|id| {
                        leader_jobs
                            .get(id)
                            .is_some_and(|j| j.state == model::JobState::Running)
                    })
                    .take(3);
                let queued = pending
                    .iter()
                    .filter(|id| {
                        leader_jobs
                            .get(id)
                            .is_some_and(|j| j.state == model::JobState::Queued)
                    })
                    .take(3);
                for id in running.chain(queued) {
                    let path = format!("/v1/jobs/{id}");
                    if let Some(Ok((_, body))) = bounded(client.raw("GET", &path, Vec::new())).await
                    {
                        println!("chaos: job {id}: {}", String::from_utf8_lossy(&body));
                    }
                }
                if let Some(Ok((_, body))) =
                    bounded(client.raw("GET", "/v1/nodes", Vec::new())).await
                {
                    println!("chaos: nodes: {}", String::from_utf8_lossy(&body));
                }
            }
            if leader_jobs.is_empty() {
                found.violations.push(format!(
                    "the cluster did not heal: no leader answered a listing of jobs ({read:?})"
                ));
                break;
            }
            let (unfinished, lost): (Vec<JobId>, Vec<JobId>) =
                pending.iter().partition(|id| leader_jobs.contains_key(id));
            (found.unfinished, found.lost) = (unfinished.len(), lost.len());
            if !unfinished.is_empty() {
                let first: Vec<String> = unfinished
                    .iter()
                    .take(10)
                    .map(|id| format!("{id} {:?}", leader_jobs[id].state))
                    .collect();
                found.violations.push(format!(
                    "{} acknowledged jobs are not terminal after the heal deadline (the first: \
                     {first:?})",
                    unfinished.len()
                ));
            }
            if !lost.is_empty() {
                let first: Vec<&JobId> = lost.iter().take(10).collect();
                found.violations.push(format!(
                    "{} acknowledged jobs are lost: the cluster has no such job (the first: \
                     {first:?})",
                    lost.len()
                ));
            }
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    found.jobs = leader_jobs.len();
    for job in leader_jobs.values() {
        *found
            .terminal_by_state
            .entry(job.state.as_str().to_string())
            .or_default() += 1;
    }

    if history.acked.is_empty() {
        found
            .violations
            .push("the load got no job acknowledged: the run proves nothing".into());
    }

    // 2. No idempotency key has two jobs: in the state, and in what the client was told.
    let mut by_key: BTreeMap<&str, Vec<JobId>> = BTreeMap::new();
    for job in leader_jobs.values() {
        if let Some(key) = &job.idempotency_key {
            by_key.entry(key).or_default().push(job.id);
        }
    }
    for (key, ids) in by_key.iter().filter(|(_, ids)| ids.len() > 1) {
        found
            .violations
            .push(format!("idempotency key {key} has jobs {ids:?}"));
    }
    for (key, ids) in history.ids_by_key.iter().filter(|(_, ids)| ids.len() > 1) {
        found.violations.push(format!(
            "the client was told jobs {ids:?} for idempotency key {key}"
        ));
    }

    // 3. No attempt started after its job finished, and none is still live in a finished job.
    for job in leader_jobs.values() {
        let Some(finished) = job.finished_at_ms else {
            continue;
        };
        for attempt in &job.attempts {
            if attempt.started_at_ms > finished || attempt.finished_at_ms.is_none() {
                found.violations.push(format!(
                    "job {} finished at {finished} ({:?}) but attempt {} started at {} and \
                     ended at {:?}",
                    job.id, job.state, attempt.id, attempt.started_at_ms, attempt.finished_at_ms
                ));
            }
        }
    }

    // 4. Every node has the same jobs (read once all have applied the same commit index; a
    //    late result may still land between two reads, so a difference is read again), and
    //    the same state digest at every index two of them recorded.
    //    The nodes get their own time to converge: what is left of the heal's deadline may be
    //    seconds when its last jobs were slow to finish.
    let converging = Instant::now();
    for round in 1..=3 {
        let differences = same_jobs_everywhere(chaos, Instant::now() + CONVERGE_DEADLINE).await;
        if differences.is_empty() {
            println!(
                "chaos: every node held the same jobs as the leader {:.1} s later",
                converging.elapsed().as_secs_f64()
            );
            break;
        }
        if round == 3 {
            found.violations.extend(differences);
        }
    }
    check_digests(chaos, digests, found).await;
}

/// Reads every running node's jobs after they converged; what differs from the leader's.
async fn same_jobs_everywhere(chaos: &Chaos, deadline: Instant) -> Vec<String> {
    if let Err(e) = must_converge(chaos, deadline).await {
        return vec![format!("the nodes did not converge: {e}")];
    }
    let Some(leader) = chaos.leader().await else {
        return vec!["no leader after the heal".into()];
    };
    let leader = chaos.client_for(&chaos.members[leader].node);
    let expected = match all_jobs(&leader, Read::Local).await {
        Ok(jobs) => jobs,
        Err(e) => return vec![format!("the leader's jobs could not be listed: {e}")],
    };
    let mut differences = Vec::new();
    for at in chaos.live() {
        let id = chaos.members[at].id;
        match all_jobs(&chaos.client_for(&chaos.members[at].node), Read::Local).await {
            Ok(jobs) if jobs == expected => {}
            Ok(jobs) => {
                let differ: BTreeSet<JobId> = expected
                    .keys()
                    .chain(jobs.keys())
                    .filter(|id| jobs.get(id) != expected.get(id))
                    .copied()
                    .collect();
                let first: Vec<&JobId> = differ.iter().take(10).collect();
                differences.push(format!(
                    "node {id} holds other jobs than the leader: {} differ, first {first:?}",
                    differ.len()
                ));
            }
            Err(e) => differences.push(format!("node {id}: could not list its jobs: {e}")),
        }
    }
    differences
}

async fn check_digests(chaos: &Chaos, digests: &Mutex<DigestBook>, found: &mut Found) {
    // Every node applies heartbeats all the time, so each one soon passes the next recorded
    // index: wait until one index has a digest from every running node.
    let live: BTreeSet<u64> = chaos.live().iter().map(|&i| chaos.members[i].id).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        read_digests(&chaos.directory, digests).await;
        found.final_common_index = digests
            .lock()
            .unwrap()
            .seen
            .iter()
            .rev()
            .find(|(_, by_node)| live.iter().all(|id| by_node.contains_key(id)))
            .map(|(index, _)| *index);
        if found.final_common_index.is_some() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(DIGEST_POLL).await;
    }
    let book = digests.lock().unwrap();
    if found.final_common_index.is_none() {
        found.violations.push(format!(
            "no log index has a state digest from every running node {live:?}"
        ));
    }
    for (index, by_node) in &book.seen {
        if by_node.len() < 2 {
            continue;
        }
        found.digest_indexes_compared += 1;
        found.digest_comparisons += by_node.len() - 1;
        let distinct: BTreeSet<&(u64, String)> = by_node.values().collect();
        if distinct.len() > 1 {
            found.violations.push(format!(
                "the nodes applied different logs: at index {index} the digests are {by_node:?}"
            ));
        }
    }
    found.violations.extend(
        book.changed
            .iter()
            .map(|c| format!("a node's digest changed: {c}")),
    );
}

/// After every node was stopped, no process of the run may be left: nodes, workers, or
/// what workers started. Found by the marker variable in `/proc/PID/environ`.
async fn must_leave_no_process(token: &str, found: &mut Found) {
    let marker = format!("{RUN_MARKER}={token}");
    let started = Instant::now();
    loop {
        let left = processes_with(&marker);
        if left.is_empty() {
            return;
        }
        if started.elapsed() > LEAK_DEADLINE {
            found.leaked = left.len();
            found.violations.extend(
                left.iter()
                    .map(|p| format!("process left after the run: {p}")),
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Processes other than this one whose environment holds `marker`, as "PID command line".
fn processes_with(marker: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|pid| pid.chars().all(|c| c.is_ascii_digit()) && *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == marker.as_bytes()))
        })
        .map(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            format!("{pid} {cmd}")
        })
        .collect()
}

fn report(seed: u64, chaos: &Chaos, history: &History, found: &Found) {
    println!("chaos: seed {seed}");
    println!("  faults injected:");
    for (kind, n) in &chaos.injected {
        println!("    {kind}: {n}");
    }
    println!(
        "    (leader kills that saw the follower install a snapshot: {})",
        chaos.snapshot_installs_seen
    );
    println!("  client calls:");
    for (call, n) in &history.calls {
        println!("    {call}: {n}");
    }
    println!(
        "  jobs acknowledged: {}, keys tried: {}, jobs in the cluster: {}, by state: {:?}",
        history.acked.len(),
        history.specs.len(),
        found.jobs,
        found.terminal_by_state
    );
    println!(
        "  acknowledged jobs lost: {}, not finished at the deadline: {}",
        found.lost, found.unfinished
    );
    println!(
        "  state digests: {} indexes compared ({} comparisons), last index common to every \
         node: {:?}",
        found.digest_indexes_compared, found.digest_comparisons, found.final_common_index
    );
    println!("  processes left: {}", found.leaked);
    for note in &chaos.notes {
        println!("  note: {note}");
    }
    println!("  violations: {}", found.violations.len());
    for v in found.violations.iter().take(VIOLATIONS_SHOWN) {
        println!("    {v}");
    }
}
