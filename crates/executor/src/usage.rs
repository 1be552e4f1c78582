//! What an attempt cost: the CPU time and the peak resident memory of its worker process
//! while it ran, read from `/proc` (through `procfs`). A warm worker serves many attempts, so
//! its peak is reset when an attempt starts (`clear_refs`) and its CPU time is taken as the
//! difference. Children the worker waited for count in its CPU time; its peak is its own.

use procfs::process::Process;

/// An attempt's resource use, as recorded on the attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// User and system CPU time, the worker's and its reaped children's.
    pub cpu_ms: u64,
    /// The worker's peak resident set while the attempt ran.
    pub peak_rss_bytes: u64,
}

/// Started when an attempt is handed to a worker; read when the reply comes. The worker's
/// `/proc` entry is opened once, when it is spawned ([`crate::worker::Worker`]), not at every
/// attempt: in a fan-out of no-op jobs these reads were a tenth of the node's CPU.
#[derive(Debug)]
pub(crate) struct Meter {
    cpu_ticks: u64,
}

impl Meter {
    /// `None` where `/proc` cannot be read (the attempt then records no usage).
    pub(crate) fn start(process: &Process) -> Option<Meter> {
        // "5" resets the peak resident set (proc(5), clear_refs); procfs only reads.
        let _ = std::fs::write(format!("/proc/{}/clear_refs", process.pid()), "5");
        let cpu_ticks = cpu_ticks(process)?;
        Some(Meter { cpu_ticks })
    }

    pub(crate) fn read(&self, process: &Process) -> Option<Usage> {
        let ticks = cpu_ticks(process)?.saturating_sub(self.cpu_ticks);
        let per_second = procfs::ticks_per_second().max(1);
        let peak_kib = process.status().ok()?.vmhwm?;
        Some(Usage {
            cpu_ms: ticks * 1000 / per_second,
            peak_rss_bytes: peak_kib * 1024,
        })
    }
}

fn cpu_ticks(process: &Process) -> Option<u64> {
    let stat = process.stat().ok()?;
    let children = (stat.cutime.max(0) + stat.cstime.max(0)) as u64;
    Some(stat.utime + stat.stime + children)
}
