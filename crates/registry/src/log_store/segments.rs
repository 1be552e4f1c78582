//! The raft log's entries in append-only segment files, `log/<first index>.seg` in the data
//! dir. An append is one write at the end of the last segment and one `fdatasync`; a segment
//! past [`SEGMENT_BYTES`] is closed and the next append starts a new one; a purge deletes whole
//! segments, a truncation cuts the last ones.
//!
//! Written here rather than taken from a crate. redb, which held the log before, rewrote about
//! ten 4 KiB pages (B-tree, free list, header) and their checksums at every commit, a quarter
//! of a node's CPU when it runs short workflow steps. `raft-log`, the crate made for
//! openraft's log, flushes on a thread of its own, and handing every append to another thread
//! and back was what bounded a fan-out of short jobs (see `in_place` in `log_store`). What is
//! needed is small: framed, checksummed records, an index of offsets, and a torn last write
//! cut at start.
//!
//! A segment's file is grown ahead of its records, [`PREALLOC_BYTES`] of zeros at a time: an
//! `fdatasync` after a write inside the file's size is one write to the disk, where one that
//! grows the file also writes its inode, a second round trip (13.2 writes to the disk per
//! three-step workflow run growing the file at each append, 10.6 grown ahead). A header of
//! zeros ends a segment's records.
//!
//! A record is a 17-byte header, then its payload:
//! `[payload length: u32 LE][CRC-32 of the rest: u32 LE][kind: u8][index: u64 LE]`.
//! Kind 1 is an entry (the JSON `openraft::Entry`, `index` its log index); kind 2 is the
//! committed index openraft last reported (JSON `Option<LogId>`, `index` 0), carried by an
//! append at no cost of its own (see `LogStore::save_committed`).

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::sync_dir;

/// A segment is closed once it holds this many bytes (the record that crosses it included).
pub(crate) const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// How far ahead of its records a segment's file is grown.
const PREALLOC_BYTES: u64 = 1024 * 1024;
const HEADER_BYTES: u64 = 17;
const KIND_ENTRY: u8 = 1;
const KIND_COMMITTED: u8 = 2;
/// No record is larger: a longer length in a header is damage, not an entry.
const RECORD_BYTES_MAX: u32 = 1 << 30;
const SUFFIX: &str = ".seg";

/// Where an entry's payload is.
#[derive(Clone, Copy, Debug)]
struct At {
    /// The record's first byte (its header).
    record: u64,
    payload_len: u32,
}

impl At {
    fn end(self) -> u64 {
        self.record + HEADER_BYTES + u64::from(self.payload_len)
    }
}

#[derive(Debug)]
struct Segment {
    first: u64,
    path: PathBuf,
    file: Arc<File>,
    /// Bytes written (the next record's offset).
    len: u64,
    /// The file's size: `len` and the zeros after it.
    allocated: u64,
    /// Each entry's record, from `first` on.
    entries: Vec<At>,
}

impl Segment {
    fn last(&self) -> Option<u64> {
        (!self.entries.is_empty()).then(|| self.first + self.entries.len() as u64 - 1)
    }
}

/// Entries to read: one file, the byte span of their records, and each payload in it.
pub(crate) struct Span {
    file: Arc<File>,
    start: u64,
    end: u64,
    payloads: Vec<At>,
}

impl Span {
    /// Reads the span with one `pread` and hands each entry's payload to `each`, in order;
    /// `each` answers whether to go on. Answers whether it went through the whole span.
    pub(crate) fn read(&self, mut each: impl FnMut(&[u8]) -> io::Result<bool>) -> io::Result<bool> {
        let mut buf = vec![0; (self.end - self.start) as usize];
        self.file.read_exact_at(&mut buf, self.start)?;
        for at in &self.payloads {
            let from = (at.record + HEADER_BYTES - self.start) as usize;
            if !each(&buf[from..from + at.payload_len as usize])? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// The segment files of one log.
#[derive(Debug)]
pub(crate) struct Segments {
    dir: PathBuf,
    segment_bytes: u64,
    segments: Vec<Segment>,
    /// The purge point: entries at or below it are never read, even while a segment that
    /// also holds later ones keeps them.
    purged: Option<u64>,
    /// The payload of the last committed-index record found at open or written since.
    committed: Option<Vec<u8>>,
}

fn corrupt(path: &Path, offset: u64, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {what} at byte {offset}", path.display()),
    )
}

fn crc(kind: u8, index: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&[kind]);
    h.update(&index.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn frame(buf: &mut Vec<u8>, kind: u8, index: u64, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|l| *l <= RECORD_BYTES_MAX)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "a log entry over 1 GiB"))?;
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc(kind, index, payload).to_le_bytes());
    buf.push(kind);
    buf.extend_from_slice(&index.to_le_bytes());
    buf.extend_from_slice(payload);
    Ok(())
}

fn open_file(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(create)
        .mode(0o600)
        .open(path)
}

impl Segments {
    /// Opens the log in `dir` (created if missing). Segments wholly at or below `purged` (the
    /// purge point, kept elsewhere) are deleted: a purge that deleted files the crash undid.
    /// A last record cut short or damaged is an append that never returned (it is reported
    /// only once on disk): it is cut off. Damage anywhere else is an error.
    pub(crate) fn open(
        dir: &Path,
        segment_bytes: u64,
        purged: Option<u64>,
    ) -> io::Result<Segments> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(first) = name
                .strip_suffix(SUFFIX)
                .and_then(|n| n.parse::<u64>().ok())
            {
                found.push(first);
            }
        }
        found.sort_unstable();
        let mut log = Segments {
            dir: dir.to_path_buf(),
            segment_bytes,
            segments: Vec::new(),
            purged,
            committed: None,
        };
        let count = found.len();
        let mut removed = false;
        for (i, first) in found.into_iter().enumerate() {
            let is_last = i + 1 == count;
            let segment = log.scan(first, is_last)?;
            let path = segment.path.clone();
            let gone = match (segment.last(), purged) {
                (Some(last), Some(purged)) => last <= purged,
                // Only the last segment can be empty: created, then the crash came.
                (None, _) => is_last,
                (Some(_), None) => false,
            };
            if gone {
                std::fs::remove_file(&path)?;
                removed = true;
                continue;
            }
            if segment.last().is_none() {
                return Err(corrupt(&path, 0, "an empty segment before the last one"));
            }
            if let Some(prev) = log.segments.last() {
                let expected = prev.last().map_or(prev.first, |l| l + 1);
                if segment.first != expected {
                    return Err(corrupt(
                        &path,
                        0,
                        &format!(
                            "a segment from index {} after one ending at {}",
                            segment.first,
                            expected - 1
                        ),
                    ));
                }
            }
            log.segments.push(segment);
        }
        if removed {
            sync_dir(dir)?;
        }
        Ok(log)
    }

    /// Reads one segment's records, keeping where each entry is and the last committed index.
    fn scan(&mut self, first: u64, is_last: bool) -> io::Result<Segment> {
        let path = self.dir.join(format!("{first:020}{SUFFIX}"));
        let file = open_file(&path, false)?;
        let size = file.metadata()?.len();
        let mut reader = BufReader::with_capacity(1 << 20, &file);
        let mut entries = Vec::new();
        let mut offset = 0u64;
        let mut payload = Vec::new();
        let damage = loop {
            if offset == size {
                break None;
            }
            let mut header = [0u8; HEADER_BYTES as usize];
            if size - offset < HEADER_BYTES {
                break Some("a record cut short");
            }
            reader.read_exact(&mut header)?;
            if header == [0; HEADER_BYTES as usize] {
                break None; // The zeros the file was grown by: the end.
            }
            let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
            let sum = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
            let kind = header[8];
            let index = u64::from_le_bytes(header[9..17].try_into().expect("8 bytes"));
            if len > RECORD_BYTES_MAX || size - offset - HEADER_BYTES < u64::from(len) {
                break Some("a record cut short");
            }
            payload.resize(len as usize, 0);
            reader.read_exact(&mut payload)?;
            if crc(kind, index, &payload) != sum {
                break Some("a record whose checksum does not match");
            }
            match kind {
                KIND_ENTRY if index == first + entries.len() as u64 => entries.push(At {
                    record: offset,
                    payload_len: len,
                }),
                KIND_ENTRY => break Some("an entry out of order"),
                KIND_COMMITTED => self.committed = Some(payload.clone()),
                _ => break Some("a record of an unknown kind"),
            }
            offset += HEADER_BYTES + u64::from(len);
        };
        if let Some(what) = damage {
            if !is_last {
                return Err(corrupt(&path, offset, what));
            }
            tracing::warn!(path = %path.display(), offset, what, "cutting off a log write that did not finish");
        }
        if is_last && size > offset {
            // Also the zeros ahead: a write cut short may have left bytes of its own further
            // on, which later appends might not cover. The next append grows the file again.
            file.set_len(offset)?;
            file.sync_all()?;
        }
        let allocated = if is_last { offset } else { size };
        Ok(Segment {
            first,
            path,
            file: Arc::new(file),
            len: offset,
            allocated,
            entries,
        })
    }

    /// The index of the last entry, if any is left after the purge point.
    pub(crate) fn last_index(&self) -> Option<u64> {
        let last = self.segments.last().and_then(Segment::last)?;
        self.purged.is_none_or(|p| last > p).then_some(last)
    }

    /// The committed-index payload last written or found at open.
    pub(crate) fn committed(&self) -> Option<&[u8]> {
        self.committed.as_deref()
    }

    /// Writes `entries` (index, payload; consecutive, after the last entry) and, if given, a
    /// committed-index record after them, with one write; answers the file to `fdatasync`
    /// before the append may be reported (done by the caller, outside any lock). A log
    /// emptied by a purge starts again from any index.
    pub(crate) fn append(
        &mut self,
        entries: &[(u64, Vec<u8>)],
        committed: Option<&[u8]>,
    ) -> io::Result<Option<Arc<File>>> {
        let Some(&(first, _)) = entries.first() else {
            return Ok(None);
        };
        if let Some(last) = self.segments.last().and_then(Segment::last) {
            if first != last + 1 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("appending entry {first} after entry {last}"),
                ));
            }
        }
        let roll = self
            .segments
            .last()
            .is_none_or(|s| s.len >= self.segment_bytes);
        if roll {
            let path = self.dir.join(format!("{first:020}{SUFFIX}"));
            let file = open_file(&path, true)?;
            sync_dir(&self.dir)?;
            self.segments.push(Segment {
                first,
                path,
                file: Arc::new(file),
                len: 0,
                allocated: 0,
                entries: Vec::new(),
            });
        }
        let segment = self.segments.last_mut().expect("a segment to append to");
        let mut buf = Vec::with_capacity(
            entries
                .iter()
                .map(|(_, p)| p.len() + HEADER_BYTES as usize)
                .sum::<usize>()
                + committed.map_or(0, |c| c.len() + HEADER_BYTES as usize),
        );
        let mut added = Vec::with_capacity(entries.len());
        for (k, (index, payload)) in entries.iter().enumerate() {
            if *index != first + k as u64 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("entry {index} where {} was due", first + k as u64),
                ));
            }
            added.push(At {
                record: segment.len + buf.len() as u64,
                payload_len: payload.len() as u32,
            });
            frame(&mut buf, KIND_ENTRY, *index, payload)?;
        }
        if let Some(c) = committed {
            frame(&mut buf, KIND_COMMITTED, 0, c)?;
        }
        let end = segment.len + buf.len() as u64;
        if end > segment.allocated {
            // Synced with the records, by the caller's `fdatasync`.
            let grown = end + PREALLOC_BYTES;
            let zeros = vec![0; (grown - segment.allocated) as usize];
            segment.file.write_all_at(&zeros, segment.allocated)?;
            segment.allocated = grown;
        }
        if let Err(e) = segment.file.write_all_at(&buf, segment.len) {
            // Whatever part landed is cut at the next open (or overwritten by the next append).
            if roll && segment.entries.is_empty() {
                let gone = self.segments.pop().expect("just pushed");
                let _ = std::fs::remove_file(&gone.path);
            }
            return Err(e);
        }
        segment.len += buf.len() as u64;
        segment.entries.extend(added);
        if let Some(c) = committed {
            self.committed = Some(c.to_vec());
        }
        Ok(Some(segment.file.clone()))
    }

    /// The spans that hold entries `start..end` (as far as they exist and are not purged),
    /// one per segment.
    pub(crate) fn spans(&self, start: u64, end: u64) -> Vec<Span> {
        let start = self
            .purged
            .map_or(start, |p| start.max(p.saturating_add(1)));
        let mut spans = Vec::new();
        for s in &self.segments {
            let Some(last) = s.last() else { continue };
            let (from, to) = (start.max(s.first), end.min(last + 1));
            if from >= to {
                continue;
            }
            let payloads = s.entries[(from - s.first) as usize..(to - s.first) as usize].to_vec();
            spans.push(Span {
                file: s.file.clone(),
                start: payloads[0].record,
                end: payloads[payloads.len() - 1].end(),
                payloads,
            });
        }
        spans
    }

    /// Removes the entries from `index` on (a leader's log replacing this one's), durably.
    pub(crate) fn truncate(&mut self, index: u64) -> io::Result<()> {
        let mut removed = false;
        while self.segments.last().is_some_and(|s| s.first >= index) {
            let gone = self.segments.pop().expect("checked");
            std::fs::remove_file(&gone.path)?;
            removed = true;
        }
        if removed {
            // A deleted segment must not come back after a crash, over entries appended since.
            sync_dir(&self.dir)?;
        }
        if let Some(s) = self.segments.last_mut() {
            let keep = (index - s.first) as usize;
            if keep < s.entries.len() {
                let cut = s.entries[keep].record;
                s.file.set_len(cut)?;
                s.file.sync_data()?;
                s.entries.truncate(keep);
                s.len = cut;
                s.allocated = cut;
            }
        }
        Ok(())
    }

    /// Deletes the segments whose entries are all at or below `index` (the purge point,
    /// written durably by the caller before). Entries at or below it left in a segment that
    /// also holds later ones are never read again.
    pub(crate) fn purge(&mut self, index: u64) -> io::Result<()> {
        self.purged = self.purged.max(Some(index));
        let keep_from = self
            .segments
            .iter()
            .position(|s| s.last().is_none_or(|last| last > index))
            .unwrap_or(self.segments.len());
        for gone in self.segments.drain(..keep_from) {
            // Not synced: a segment back after a crash is deleted at the next open.
            std::fs::remove_file(&gone.path)?;
        }
        Ok(())
    }

    /// Deletes every segment (a move of the log from elsewhere starts from nothing).
    pub(crate) fn clear(&mut self) -> io::Result<()> {
        for gone in self.segments.drain(..) {
            std::fs::remove_file(&gone.path)?;
        }
        self.committed = None;
        sync_dir(&self.dir)
    }

    /// Segment files and their bytes (for tests and statistics).
    #[cfg(test)]
    pub(crate) fn files(&self) -> Vec<(PathBuf, u64)> {
        self.segments
            .iter()
            .map(|s| (s.path.clone(), s.len))
            .collect()
    }
}
