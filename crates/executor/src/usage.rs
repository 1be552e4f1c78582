//! What an attempt cost: the CPU time and the peak resident memory of its worker process
//! while it ran, read from `/proc`. A warm worker serves many attempts, so its peak is reset
//! when an attempt starts (`clear_refs`) and its CPU time is taken as the difference.
//! Children the worker waited for count in its CPU time; its peak is its own.
//!
//! In a fan-out of no-op jobs, opening and parsing these files at every attempt was a quarter
//! of the node's CPU. So a worker's three files are opened once, when it is spawned
//! ([`crate::worker::Worker`]), and read again in place (`pread` at offset 0, which `/proc`'s
//! files answer with fresh contents); the CPU time read at an attempt's end is the next
//! attempt's start (a warm worker does nothing between the two but wait for its next request).

use procfs::FromRead;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// An attempt's resource use, as recorded on the attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// User and system CPU time, the worker's and its reaped children's.
    pub cpu_ms: u64,
    /// The worker's peak resident set while the attempt ran.
    pub peak_rss_bytes: u64,
}

/// The `/proc` files of one worker process and what the last reading said.
#[derive(Debug)]
pub(crate) struct Probe {
    stat: File,
    status: File,
    /// Writing "5" resets the peak resident set (proc(5), `clear_refs`).
    clear_refs: Option<File>,
    /// CPU ticks at the end of the last attempt, the start of the next one.
    last_ticks: Option<u64>,
    buffer: Vec<u8>,
}

/// Started when an attempt is handed to a worker; read when the reply comes.
#[derive(Debug)]
pub(crate) struct Meter {
    cpu_ticks: u64,
}

/// `/proc/PID/status` is 1.5 KiB or so; a read this large takes it whole.
const STATUS_BYTES_MAX: usize = 8 * 1024;

impl Probe {
    /// `None` where `/proc` cannot be read (the worker's attempts then record no usage).
    pub(crate) fn open(pid: u32) -> Option<Probe> {
        let dir = format!("/proc/{pid}");
        Some(Probe {
            stat: File::open(format!("{dir}/stat")).ok()?,
            status: File::open(format!("{dir}/status")).ok()?,
            clear_refs: std::fs::OpenOptions::new()
                .write(true)
                .open(format!("{dir}/clear_refs"))
                .ok(),
            last_ticks: None,
            buffer: Vec::with_capacity(STATUS_BYTES_MAX),
        })
    }

    pub(crate) fn start(&mut self) -> Option<Meter> {
        if let Some(clear_refs) = &self.clear_refs {
            let _ = clear_refs.write_at(b"5", 0);
        }
        let cpu_ticks = match self.last_ticks {
            Some(ticks) => ticks,
            None => self.cpu_ticks()?,
        };
        Some(Meter { cpu_ticks })
    }

    pub(crate) fn read(&mut self, meter: &Meter) -> Option<Usage> {
        let now = self.cpu_ticks();
        self.last_ticks = now;
        let ticks = now?.saturating_sub(meter.cpu_ticks);
        let per_second = procfs::ticks_per_second().max(1);
        let peak_kib = self.peak_kib()?;
        Some(Usage {
            cpu_ms: ticks * 1000 / per_second,
            peak_rss_bytes: peak_kib * 1024,
        })
    }

    fn fill(&mut self, which: Which) -> Option<&[u8]> {
        let file = match which {
            Which::Stat => &self.stat,
            Which::Status => &self.status,
        };
        self.buffer.resize(STATUS_BYTES_MAX, 0);
        let read = file.read_at(&mut self.buffer, 0).ok()?;
        Some(&self.buffer[..read])
    }

    fn cpu_ticks(&mut self) -> Option<u64> {
        let stat = procfs::process::Stat::from_read(self.fill(Which::Stat)?).ok()?;
        let children = (stat.cutime.max(0) + stat.cstime.max(0)) as u64;
        Some(stat.utime + stat.stime + children)
    }

    /// `VmHWM` of `/proc/PID/status`, in KiB. Found by hand: `procfs`'s `Status` parses every
    /// one of the file's fifty-odd lines into a map to answer it, which cost more than the
    /// kernel's writing of the file.
    fn peak_kib(&mut self) -> Option<u64> {
        let status = self.fill(Which::Status)?;
        let line = status
            .split(|&b| b == b'\n')
            .find_map(|line| line.strip_prefix(b"VmHWM:"))?;
        let digits = std::str::from_utf8(line).ok()?.trim().strip_suffix("kB")?;
        digits.trim().parse().ok()
    }
}

enum Which {
    Stat,
    Status,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_of_this_process_reads_its_peak_and_counts_its_cpu_time() {
        let mut probe = Probe::open(std::process::id()).expect("/proc is mounted");
        let meter = probe.start().expect("stat reads");
        // Touch 64 MiB and burn about 30 ms of CPU, so both readings must move.
        let block = vec![1u8; 64 << 20];
        let until = std::time::Instant::now() + std::time::Duration::from_millis(30);
        let mut sum = 0u64;
        while std::time::Instant::now() < until {
            sum = sum.wrapping_add(block.iter().step_by(4096).map(|&b| b as u64).sum::<u64>());
        }
        assert!(sum > 0);
        let usage = probe.read(&meter).expect("status reads");
        assert!(usage.peak_rss_bytes >= 64 << 20, "{usage:?}");
        assert!(usage.cpu_ms >= 10, "{usage:?}");
        // The next attempt starts where this one ended.
        let next = probe.start().expect("cached");
        assert_eq!(Some(next.cpu_ticks), probe.last_ticks);
        drop(block);
    }
}
