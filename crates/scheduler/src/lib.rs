//! Placement: which node runs which due job. A pure function, [`place`], run by the leader's
//! scheduling loop; it knows nothing of raft, processes or time, and its only randomness is a
//! seeded PRNG whose state the caller holds.
//!
//! # One call, step by step
//!
//! The caller passes the [`Config`], its [`SchedulerState`] (kept from the previous call, or
//! [`SchedulerState::new`] on a new leader), a [`NodeView`] per node and the due jobs as
//! [`PendingJob`]s in priority order.
//!
//! 1. Nodes are taken in id order, whatever order they came in. State kept for nodes that are
//!    no longer in the view is dropped.
//! 2. Every up node's CPU breaker takes one step (below); each change is reported in
//!    [`Placement::breaker_changes`].
//! 3. Each job in turn, in the given order:
//!    1. its candidates are the nodes that carry all of its required labels, are not in its
//!       `excluded` set (a hedge goes where its job does not run yet), are up, not
//!       draining, of non-zero weight, with a closed breaker and assigned below capacity;
//!    2. it wants `1 + backups` attempts on distinct nodes; if there are not enough nodes it
//!       is left queued with a [`Reason`], and it never gets only some of them;
//!    3. a cluster-wide throttle it carries (its function's or step's: at most N of a bucket
//!       running, at most N starts per window) that its bucket's usage in [`Throttles`]
//!       has reached leaves it queued ([`Reason::Throttled`]); a placed job counts in its
//!       buckets at once, so one call never goes past a limit;
//!    4. each attempt picks one candidate with the job's strategy (its function's own, or
//!       [`Config::default_strategy`]); the node's assigned count goes up by one and it is no
//!       longer a candidate for this job.
//! 4. The PRNG and round-robin state go back into the [`SchedulerState`].
//!
//! # Strategies
//!
//! - **least-request** (the default): power of two choices. Draw two distinct candidates with
//!   the PRNG and take the one with the lower assigned/capacity (on a tie the higher weight,
//!   then the first drawn). It avoids loaded nodes almost as well as looking at all of them,
//!   without sending a whole batch to the single emptiest node.
//! - **cpu-load**: the candidate with the lowest smoothed CPU, ties by assigned/capacity, then
//!   node id. CPU does not move within one call, so a batch fills the coolest node up to its
//!   capacity before the next; the next call sees the new CPU, and the breaker stops a node
//!   that got too hot.
//! - **concurrency**: the candidate with the lowest assigned/capacity, compared exactly, ties
//!   to the lower node id. This is the scheduler's original behaviour.
//! - **weighted-round-robin**: smooth weighted round-robin as in nginx. Every candidate's
//!   current weight grows by its weight; the largest (first on a tie) is picked and loses the
//!   sum of the candidates' weights. With the same candidates throughout, every run of
//!   `sum(weights)` picks gives each node exactly `weight` of them, interleaved. The current
//!   weights live in [`SchedulerState::round_robin_weights`], so the rotation carries on
//!   across calls.
//! - **random**: a uniformly random candidate, drawn with the PRNG.
//!
//! # The CPU breaker
//!
//! The caller smooths raw CPU samples with [`smooth`] (an EWMA) and passes the result in
//! [`NodeView::cpu_percent`]. At each call, for each node that is up:
//!
//! 1. a closed breaker opens when CPU is at or above [`Config::cpu_threshold_percent`];
//! 2. an open breaker closes when CPU is below `cpu_threshold_percent - cpu_hysteresis_percent`;
//! 3. in between, the breaker stays as it was (the hysteresis band), so a node around the
//!    threshold does not flap.
//!
//! A node with an open breaker gets no new attempts; what it holds is left alone. The
//! breaker limits load by CPU, capacity limits it by count: a node gets work only while both
//! allow. A down node's breaker keeps its state, since its CPU figure is stale.
//!
//! # Invariants
//!
//! - No node gets more than `capacity - assigned` new attempts, and none while it is down,
//!   draining, of weight 0 or with an open breaker.
//! - A job's attempts are on distinct nodes, and it gets either `1 + backups` or none.
//! - No throttle bucket gets more running jobs than its concurrency, nor more starts in a
//!   window than its rate, counting what the state held and what the call placed.
//! - The same arguments and state give the same placement and the same new state.

mod breaker;
mod explain;
mod place;
mod splitmix;
mod strategy;

pub use breaker::{
    smooth, Breaker, BreakerChange, CPU_HYSTERESIS_PERCENT_DEFAULT, CPU_THRESHOLD_PERCENT_DEFAULT,
};
pub use explain::{explain, Bar, Explanation};
pub use model::throttle::{Held, Limit};
pub use model::{Strategy, UnknownStrategy};
pub use place::{
    place, place_throttled, waits_for_cluster, Config, NodeView, PendingJob, Placement, Reason,
    SchedulerState, Throttles, Unplaced,
};
