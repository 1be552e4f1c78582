//! Worker process trees end with their worker: the node is a subreaper, so whatever a worker
//! leaves behind comes back to the node, which finds it, kills it and reaps it.
//!
//! A command function may fork children that outlive its reply, in the worker's process group
//! or `setsid` into a session of their own (out of reach of a group kill). Left alone they
//! are re-parented to PID 1 when their worker ends and run on for ever. The protocol:
//!
//! 1. [`become_subreaper`] (`PR_SET_CHILD_SUBREAPER`, process-wide): an orphaned descendant
//!    of a worker is re-parented to the node instead of PID 1, so it stays in the node's
//!    tree and its exit status comes to the node.
//! 2. [`spawn`] starts every worker with `CHORUS_WORKER=<node pid>.<tag>` in its environment
//!    and records the tag as live until the worker has been reaped ([`Tag`] is dropped).
//!    Children inherit the variable, so an orphan still says whose it was.
//! 3. Ending a worker ([`kill_tree`], from `Worker::kill` and `Worker::stop`) kills every
//!    process below it in `/proc` (parentage, which `setsid` does not break) and in its
//!    process group, besides the worker itself.
//! 4. A [`sweep`], after a worker ended and on every idle-reaper tick of the node, lists the
//!    node's children (`/proc/self/task/*/children`; every process in `/proc` where the
//!    kernel lacks those files): each child that is not a live worker and carries the tag of
//!    an ended one is killed with everything below it (then, and only then, every process
//!    is read, to find what hangs below it); each child that is a zombie and not a live
//!    worker is reaped (a live worker's exit status is tokio's to collect).
//!    Rounds repeat, a few milliseconds apart, while they still find something to kill.
//!
//! What this does not cover: a descendant that clears its environment, leaves the process
//! group and is orphaned while its worker still runs (a double fork with `env -i` and
//! `setsid`) hangs from no worker and carries no tag, so nothing ties it to one; it is left
//! running. cgroup v2 (a group per worker, killed whole) would close that gap on machines
//! where the node may create groups; it is not implemented.
//!
//! The record of live workers is process-wide, as the subreaper is: two executors in one
//! process (tests) must not take each other's workers for orphans.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::sync::Mutex;
use std::time::Duration;
use tokio::process::{Child, Command};

/// The environment variable that tags a worker and everything it starts.
pub const WORKER_ENV: &str = "CHORUS_WORKER";
/// Scan-and-kill rounds in one sweep at most; each round kills what the previous one could
/// not see yet (a process forked between a scan and its kill).
const SWEEP_ROUNDS_MAX: usize = 20;
/// Pause between rounds, while killed processes die and are re-parented to the node.
const SWEEP_PAUSE: Duration = Duration::from_millis(5);
/// Bytes of a process's environment read at most when looking for its tag.
const ENVIRON_BYTES_MAX: u64 = 256 * 1024;
/// Bytes of a `stat` or `children` file read at most (a `stat` line is under 1 KiB; a
/// thread's children list, a few pids).
const PROC_FILE_BYTES_MAX: u64 = 64 * 1024;

/// Workers started and not yet reaped: tag → pid.
#[derive(Debug)]
struct Registry {
    next_tag: u64,
    live: BTreeMap<u64, u32>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    next_tag: 1,
    live: BTreeMap::new(),
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// A live worker's tag. Dropping it (after the worker has been reaped, or with the worker)
/// marks the worker ended, so the next [`sweep`] kills what it left.
#[derive(Debug)]
pub(crate) struct Tag(u64);

impl Drop for Tag {
    fn drop(&mut self) {
        registry().live.remove(&self.0);
    }
}

/// Makes this process the reaper of its orphaned descendants (see the module docs).
pub(crate) fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer and touches no memory.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Spawns a worker with its tag. The registry is held across the spawn, so a sweep never
/// sees a worker that is running but not yet recorded.
pub(crate) fn spawn(command: &mut Command) -> io::Result<(Child, Tag)> {
    let mut registry = registry();
    let tag = registry.next_tag;
    registry.next_tag += 1;
    command.env(WORKER_ENV, format!("{}.{tag}", std::process::id()));
    let child = command.spawn()?;
    let pid = child
        .id()
        .expect("a child just spawned has not been reaped");
    registry.live.insert(tag, pid);
    Ok((child, Tag(tag)))
}

/// One process as `/proc/PID/stat` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Proc {
    pub(crate) pid: i32,
    ppid: i32,
    pgid: i32,
    zombie: bool,
    /// Clock ticks after boot when it started: with the pid, names the process even if the
    /// pid is reused.
    start_ticks: u64,
}

/// One process from its `/proc/PID/stat`, parsed by `procfs` (as [`crate::usage`] parses a
/// worker's): the command name in parentheses may hold spaces and parentheses itself.
fn parse_stat(stat: impl std::io::Read) -> Option<Proc> {
    use procfs::FromRead;
    let stat = procfs::process::Stat::from_read(stat).ok()?;
    Some(Proc {
        pid: stat.pid,
        ppid: stat.ppid,
        pgid: stat.pgrp,
        zombie: stat.state == 'Z',
        start_ticks: stat.starttime,
    })
}

fn read_proc(pid: i32) -> Option<Proc> {
    use std::io::Read;
    let file = std::fs::File::open(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(file.take(PROC_FILE_BYTES_MAX))
}

/// A small `/proc` file (a thread's `children` list) read whole, up to
/// [`PROC_FILE_BYTES_MAX`]. Read through `take`, as [`tag_of`] reads: `std::fs::read_to_string`
/// would first ask for the file's size and position (two more system calls per file, for a
/// size `/proc` does not know).
fn read_small(path: &str) -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(PROC_FILE_BYTES_MAX)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// The node's own children, from each of its threads' `/proc/self/task/TID/children` (an
/// orphan re-parented to the node hangs from one of its threads): a few small reads where a
/// [`scan`] reads every process on the machine, twice a second on an idle node. `None`
/// where the kernel does not have these files (`CONFIG_PROC_CHILDREN`): then scan. The
/// files are exact only while the children do not fork or exit; what a sweep misses, the
/// next one finds.
fn own_children() -> Option<Vec<i32>> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    let mut pids = Vec::new();
    let mut any = false;
    for task in tasks.flatten() {
        let path = task.path().join("children");
        let Some(text) = read_small(path.to_str()?) else {
            continue;
        };
        any = true;
        pids.extend(
            text.split_ascii_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    any.then_some(pids)
}

/// Every process on the machine (those that exit while being read are skipped).
fn scan() -> Vec<Proc> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(read_proc)
        .collect()
}

/// The processes below `root` (not `root` itself), by parentage.
fn descendants(procs: &[Proc], root: i32) -> Vec<Proc> {
    let mut children: HashMap<i32, Vec<Proc>> = HashMap::new();
    for p in procs {
        children.entry(p.ppid).or_default().push(*p);
    }
    let mut found = Vec::new();
    let mut pending = vec![root];
    while let Some(pid) = pending.pop() {
        for child in children.get(&pid).into_iter().flatten() {
            found.push(*child);
            pending.push(child.pid);
        }
    }
    found
}

/// Kills `p` if the pid still names the same, living process.
fn kill_verified(p: &Proc) -> bool {
    match read_proc(p.pid) {
        Some(now) if now.start_ticks == p.start_ticks && !now.zombie => {
            // SAFETY: kill(2) on a pid just checked to be the process we mean.
            unsafe { libc::kill(p.pid, libc::SIGKILL) == 0 }
        }
        _ => false,
    }
}

/// The tag in a process's environment, if it is one of this node's.
fn tag_of(pid: i32) -> Option<u64> {
    use std::io::Read;
    let mut environ = Vec::new();
    std::fs::File::open(format!("/proc/{pid}/environ"))
        .ok()?
        .take(ENVIRON_BYTES_MAX)
        .read_to_end(&mut environ)
        .ok()?;
    let ours = format!("{WORKER_ENV}={}.", std::process::id());
    environ
        .split(|b| *b == 0)
        .find_map(|var| var.strip_prefix(ours.as_bytes()))
        .and_then(|tag| std::str::from_utf8(tag).ok()?.parse().ok())
}

/// The processes below a worker and in its process group, as they are now. Taken before a
/// worker is asked to exit, so that what it leaves can be found even without its tag.
pub(crate) fn members(worker_pid: u32) -> Vec<Proc> {
    let pid = worker_pid as i32;
    let procs = scan();
    let mut members = descendants(&procs, pid);
    let known: BTreeSet<i32> = members.iter().map(|p| p.pid).collect();
    members.extend(
        procs
            .iter()
            .filter(|p| p.pgid == pid && p.pid != pid && !known.contains(&p.pid)),
    );
    members
}

/// Kills `processes` (from [`members`]) where they are still the processes they were.
pub(crate) fn kill_all(processes: &[Proc]) -> usize {
    processes.iter().filter(|p| kill_verified(p)).count()
}

/// Kills a worker that has not been reaped yet, its process group and every process below
/// it. Blocking (it reads `/proc`).
pub(crate) fn kill_tree(worker_pid: u32) {
    let below = members(worker_pid);
    // SAFETY: the worker is not reaped yet, so its pid (and process group id) are still ours.
    unsafe {
        libc::kill(-(worker_pid as i32), libc::SIGKILL);
        libc::kill(worker_pid as i32, libc::SIGKILL);
    }
    kill_all(&below);
}

/// What a [`sweep`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Processes of ended workers killed.
    pub killed: usize,
    /// Zombie children of the node reaped.
    pub reaped: usize,
}

/// Kills what ended workers left and reaps zombies (see the module docs). Blocking: run it
/// on a blocking thread.
pub(crate) fn sweep() -> Swept {
    let mut total = Swept::default();
    for round in 0..SWEEP_ROUNDS_MAX {
        if round > 0 {
            std::thread::sleep(SWEEP_PAUSE);
        }
        let swept = sweep_round();
        total.killed += swept.killed;
        total.reaped += swept.reaped;
        if swept.killed == 0 {
            break;
        }
    }
    total
}

fn sweep_round() -> Swept {
    let me = std::process::id() as i32;
    // Every process on the machine is read only when there is an ended worker's orphan to
    // end with what hangs below it, or where the node's children cannot be listed.
    let mut procs: Option<Vec<Proc>> = None;
    let children: Vec<Proc> = match own_children() {
        Some(pids) => pids.into_iter().filter_map(read_proc).collect(),
        None => procs.get_or_insert_with(scan).clone(),
    };
    let children: Vec<Proc> = children.into_iter().filter(|p| p.ppid == me).collect();
    let (live_tags, next_tag, live_pids) = {
        let registry = registry();
        let tags: BTreeSet<u64> = registry.live.keys().copied().collect();
        let pids: BTreeSet<u32> = registry.live.values().copied().collect();
        (tags, registry.next_tag, pids)
    };
    // A tag at or past `next_tag` belongs to a worker started after the copy: live.
    let ended = |tag: u64| tag < next_tag && !live_tags.contains(&tag);
    let mut swept = Swept::default();
    // A live worker is passed over without reading its environment (up to 256 KiB).
    let orphans = children
        .iter()
        .filter(|p| !p.zombie && !live_pids.contains(&(p.pid as u32)));
    for orphan in orphans {
        if tag_of(orphan.pid).is_some_and(ended) {
            let mut tree = descendants(procs.get_or_insert_with(scan), orphan.pid);
            tree.push(*orphan);
            swept.killed += kill_all(&tree);
        }
    }
    let zombies: Vec<&Proc> = children.iter().filter(|p| p.zombie).collect();
    if zombies.is_empty() {
        return swept;
    }
    // Held while reaping, so that no worker is spawned (and its pid recorded) in between.
    let registry = registry();
    let workers: BTreeSet<u32> = registry.live.values().copied().collect();
    for zombie in zombies {
        let still = read_proc(zombie.pid)
            .is_some_and(|p| p.zombie && p.ppid == me && p.start_ticks == zombie.start_ticks);
        if still && !workers.contains(&(zombie.pid as u32)) {
            let mut status = 0;
            // SAFETY: waitpid on a zombie child of ours that is no worker tokio waits for.
            if unsafe { libc::waitpid(zombie.pid, &mut status, libc::WNOHANG) } == zombie.pid {
                swept.reaped += 1;
            }
        }
    }
    drop(registry);
    swept
}

#[cfg(test)]
mod tests {
    use super::parse_stat;

    #[test]
    fn stat_lines_parse_even_with_parentheses_in_the_name() {
        // Whole lines as a 6.x kernel writes them (52 fields).
        let line = "4242 (a (b) c) S 1 4240 4240 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 \
                    987654 1000 10 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 \
                    0 0 0 0 0 0 0 0 0 0 0";
        let p = parse_stat(line.as_bytes()).expect("parses");
        assert_eq!((p.pid, p.ppid, p.pgid, p.zombie), (4242, 1, 4240, false));
        assert_eq!(p.start_ticks, 987654);
        assert!(
            parse_stat("12 (x) Z 1".as_bytes()).is_none(),
            "too short a line is refused"
        );
        let zombie = "7 (sh) Z 3 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0 18446744073709551615 \
                      0 0 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 0 0 0 0 0 0";
        let z = parse_stat(zombie.as_bytes()).expect("parses");
        assert!(z.zombie);
        assert_eq!((z.pid, z.ppid, z.start_ticks), (7, 3, 55));
    }

    #[test]
    fn this_process_is_read_from_proc() {
        let me = super::read_proc(std::process::id() as i32).expect("our own stat");
        assert_eq!(me.pid, std::process::id() as i32);
        assert_eq!(me.ppid, std::os::unix::process::parent_id() as i32);
        assert!(!me.zombie && me.start_ticks > 0);
    }
}
