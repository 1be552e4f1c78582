//! Bucket triggers as data: which objects of a listing are new since a trigger's cursor, and
//! how the cursor moves. The listing itself (a store's objects under a prefix) is IO and is
//! done by the `events` crate; this is the pure judgement over it.
//!
//! A store cannot list "what changed since": every pass lists the whole prefix, and the
//! cursor says which of the listed object versions were seen. It is a *watermark* (the latest
//! modification time seen) plus the set of versions seen within [`BUCKET_LOOKBACK_MS`] of it:
//! 1. a version is new when it matches the trigger's suffixes, was modified at or after the
//!    trigger's creation, no longer ago than the look-back before the watermark, and is not
//!    in the seen set;
//! 2. the oldest new versions first, at most [`BUCKET_OBJECTS_PER_PASS_MAX`] per pass;
//! 3. a pass's versions join the seen set in the same log entry as their jobs
//!    ([`BucketCursor::advance`], applied on every replica), the watermark moves up to the
//!    newest of them, and versions older than the look-back leave the set: they can never be
//!    new again, since (1) only looks back that far.
//!
//! The look-back covers objects that show up in a listing later than their modification time
//! says (a slow multipart upload carries the time it started). A version that shows up later
//! still is not seen. Each version's job key is derived from the key and the version (an
//! S3 ETag or the SHA-256 a local store records), so a version the cursor forgot starts no
//! second job either while the first is kept.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// How far before the watermark a pass still looks for versions it has not seen.
pub const BUCKET_LOOKBACK_MS: u64 = 10 * 60 * 1_000;
/// New versions one pass starts jobs for at most; the rest wait for the next pass.
pub const BUCKET_OBJECTS_PER_PASS_MAX: usize = 1_000;
/// Versions a cursor remembers at most: past it the oldest are forgotten early (their job
/// keys still find their jobs).
pub const BUCKET_SEEN_MAX: usize = 20_000;
/// Suffixes one bucket trigger filters on at most.
pub const BUCKET_SUFFIXES_MAX: usize = 32;

/// One object of a listing, in one version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectVersion {
    pub key: String,
    pub size: u64,
    /// When the store says the object was last written.
    pub modified_ms: u64,
    /// What tells two contents of one key apart: an S3 ETag, a local store's SHA-256.
    pub version: String,
}

impl ObjectVersion {
    /// The SHA-256 (hex) over key and version: this version's name in the cursor and in its
    /// job's idempotency key. Length-prefixed, so that ("ab", "c") and ("a", "bc") differ.
    pub fn id(&self) -> String {
        let mut hash = Sha256::new();
        hash.update((self.key.len() as u64).to_be_bytes());
        hash.update(self.key.as_bytes());
        hash.update(self.version.as_bytes());
        hex::encode(hash.finalize())
    }
}

/// How far a bucket trigger got (see the module's protocol).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketCursor {
    /// The latest modification time of a version that started a job.
    pub watermark_ms: u64,
    /// Versions seen within the look-back of the watermark: id → modification time.
    #[serde(default)]
    pub seen: BTreeMap<String, u64>,
}

/// One version a pass takes: its id and modification time, as the log carries them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub id: String,
    pub modified_ms: u64,
}

fn within_look_back(watermark_ms: u64, modified_ms: u64) -> bool {
    modified_ms.saturating_add(BUCKET_LOOKBACK_MS) > watermark_ms
}

impl Seen {
    /// What the cursor keeps of each of a pass's versions.
    pub fn of(versions: &[&ObjectVersion]) -> Vec<Seen> {
        versions
            .iter()
            .map(|o| Seen {
                id: o.id(),
                modified_ms: o.modified_ms,
            })
            .collect()
    }
}

impl BucketCursor {
    /// The versions of `listing` that are new (see the module's protocol), oldest first, at
    /// most [`BUCKET_OBJECTS_PER_PASS_MAX`].
    pub fn due<'a>(
        &self,
        source: &crate::BucketSource,
        since_ms: u64,
        listing: &'a [ObjectVersion],
    ) -> Vec<&'a ObjectVersion> {
        // Stores keep whole seconds (S3's listings do): an object written in the second the
        // trigger was created counts as written after it.
        let since_ms = since_ms - since_ms % 1_000;
        let mut new: Vec<&ObjectVersion> = listing
            .iter()
            .filter(|o| source.matches(&o.key))
            .filter(|o| o.modified_ms >= since_ms && self.within_look_back(o.modified_ms))
            .filter(|o| !self.seen.contains_key(&o.id()))
            .collect();
        new.sort_by(|a, b| (a.modified_ms, &a.key).cmp(&(b.modified_ms, &b.key)));
        new.truncate(BUCKET_OBJECTS_PER_PASS_MAX);
        new
    }

    /// Whether a version modified then is recent enough to be new (or remembered).
    fn within_look_back(&self, modified_ms: u64) -> bool {
        within_look_back(self.watermark_ms, modified_ms)
    }

    /// Takes a pass's versions: they join the seen set, the watermark moves up to the newest,
    /// and versions past the look-back (or over [`BUCKET_SEEN_MAX`], oldest first) leave it.
    /// Taking the same versions twice changes nothing more.
    pub fn advance(&mut self, taken: &[Seen]) {
        for s in taken {
            self.watermark_ms = self.watermark_ms.max(s.modified_ms);
        }
        for s in taken {
            self.seen.insert(s.id.clone(), s.modified_ms);
        }
        let watermark_ms = self.watermark_ms;
        self.seen
            .retain(|_, modified_ms| within_look_back(watermark_ms, *modified_ms));
        if self.seen.len() > BUCKET_SEEN_MAX {
            let mut by_age: Vec<(u64, String)> =
                self.seen.iter().map(|(id, t)| (*t, id.clone())).collect();
            by_age.sort();
            for (_, id) in by_age.into_iter().take(self.seen.len() - BUCKET_SEEN_MAX) {
                self.seen.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BucketSource;
    use expect_test::{expect, Expect};

    fn object(key: &str, modified_ms: u64, version: &str) -> ObjectVersion {
        ObjectVersion {
            key: key.into(),
            size: 1,
            modified_ms,
            version: version.into(),
        }
    }

    fn source(suffixes: &[&str]) -> BucketSource {
        BucketSource {
            prefix: "in/".into(),
            suffixes: suffixes.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Runs passes over successive listings; per pass (`|` between), the versions it started
    /// jobs for (`-`: none).
    fn check(
        source: BucketSource,
        since_ms: u64,
        listings: &[Vec<ObjectVersion>],
        expected: Expect,
    ) {
        let mut cursor = BucketCursor::default();
        let mut lines = Vec::new();
        for listing in listings {
            let due = cursor.due(&source, since_ms, listing);
            let line: Vec<String> = due
                .iter()
                .map(|o| format!("{}@{}", o.key, o.version))
                .collect();
            lines.push(if line.is_empty() {
                "-".to_string()
            } else {
                line.join(" ")
            });
            let taken = Seen::of(&due);
            cursor.advance(&taken);
            // Applying the same entry twice changes nothing more.
            let before = cursor.clone();
            cursor.advance(&taken);
            assert_eq!(cursor, before);
        }
        expected.assert_eq(&lines.join(" | "));
    }

    #[test]
    fn every_version_once_oldest_first() {
        let a = object("in/a.flac", 2_000, "e1");
        let b = object("in/b.wav", 2_000, "e1");
        let c = object("in/c.txt", 3_000, "e1");
        let old = object("in/old.flac", 10, "e1");
        let other = object("out/x.flac", 4_000, "e1");
        let a2 = object("in/a.flac", 6_000, "e2");
        // A slow upload: listed after newer objects, with the older time it started.
        let late = object("in/late.flac", 1_900, "e1");
        check(
            source(&[".flac", ".wav"]),
            1_000,
            &[
                vec![b.clone(), a.clone(), c.clone(), old.clone(), other.clone()],
                vec![a.clone(), b.clone(), c.clone()],
                vec![a2.clone(), b.clone(), late.clone()],
                vec![a2, b, late],
            ],
            expect!["in/a.flac@e1 in/b.wav@e1 | - | in/late.flac@e1 in/a.flac@e2 | -"],
        );
    }

    #[test]
    fn no_suffix_takes_every_key_under_the_prefix() {
        check(
            source(&[]),
            0,
            &[vec![object("in/x", 1, "v"), object("inx", 1, "v")]],
            expect!["in/x@v"],
        );
    }

    #[test]
    fn versions_past_the_look_back_are_forgotten_and_never_new_again() {
        let mut cursor = BucketCursor::default();
        let s = source(&[]);
        let first = [object("in/a", 1_000, "v")];
        cursor.advance(&Seen::of(&cursor.due(&s, 0, &first)));
        assert_eq!(cursor.seen.len(), 1);
        let later = [
            object("in/a", 1_000, "v"),
            object("in/b", 1_000 + BUCKET_LOOKBACK_MS + 1, "v"),
        ];
        let due = cursor.due(&s, 0, &later);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].key, "in/b");
        cursor.advance(&Seen::of(&due));
        assert_eq!(cursor.seen.len(), 1, "{cursor:?}");
        assert!(cursor.due(&s, 0, &later).is_empty());
    }

    #[test]
    fn a_pass_is_capped_and_the_rest_follow() {
        let listing: Vec<ObjectVersion> = (0..BUCKET_OBJECTS_PER_PASS_MAX + 5)
            .map(|i| object(&format!("in/{i:05}"), i as u64, "v"))
            .collect();
        let mut cursor = BucketCursor::default();
        let s = source(&[]);
        let mut total = 0;
        loop {
            let due = cursor.due(&s, 0, &listing);
            if due.is_empty() {
                break;
            }
            assert!(due.len() <= BUCKET_OBJECTS_PER_PASS_MAX);
            total += due.len();
            cursor.advance(&Seen::of(&due));
        }
        assert_eq!(total, listing.len());
    }

    #[test]
    fn ids_tell_key_and_version_apart() {
        assert_ne!(object("ab", 0, "c").id(), object("a", 0, "bc").id());
        assert_ne!(object("a", 0, "v1").id(), object("a", 0, "v2").id());
        assert_eq!(object("a", 0, "v").id(), object("a", 9, "v").id());
    }
}
