//! Bucket watching: one listing of a bucket trigger's prefix, as the object versions the
//! pure `triggers::BucketCursor` judges. An S3-compatible store is listed (the ETag tells
//! versions apart); a node's local store is not listed at all, since each node's directory
//! holds only its own copies: the replicated object records are the listing there
//! ([`from_records`]).

use crate::EventsError;
use storage::Store;
use triggers::{BucketSource, ObjectVersion};

/// Objects one listing takes at most. A prefix with more is refused (the trigger reports
/// it) rather than watched in part: a listing cut short would miss objects for good.
pub const LIST_OBJECTS_MAX: usize = 100_000;

/// The objects under the source's prefix in a shared (S3-compatible) store.
pub async fn list(store: &Store, source: &BucketSource) -> Result<Vec<ObjectVersion>, EventsError> {
    let listing = store
        .list(&source.prefix, LIST_OBJECTS_MAX)
        .await
        .map_err(|e| EventsError::Store {
            prefix: source.prefix.clone(),
            detail: e.public_message(),
        })?;
    if listing.truncated {
        return Err(EventsError::TooManyObjects {
            prefix: source.prefix.clone(),
            limit: LIST_OBJECTS_MAX,
        });
    }
    Ok(listing
        .objects
        .into_iter()
        .filter(|o| source.matches(&o.key))
        .map(|o| ObjectVersion {
            key: o.key,
            size: o.size,
            modified_ms: o.modified_ms,
            version: o.etag,
        })
        .collect())
}

/// One recorded object of a local store: key, size, SHA-256 and when it was recorded.
#[derive(Clone, Copy, Debug)]
pub struct Recorded<'a> {
    pub key: &'a str,
    pub size: u64,
    pub sha256: &'a str,
    pub recorded_at_ms: u64,
}

/// The objects under the source's prefix among the replicated records of a cluster on local
/// stores: the SHA-256 tells versions apart, the record's time is the modification time.
pub fn from_records<'a>(
    source: &BucketSource,
    records: impl Iterator<Item = Recorded<'a>>,
) -> Result<Vec<ObjectVersion>, EventsError> {
    let mut out = Vec::new();
    for r in records.filter(|r| source.matches(r.key)) {
        if out.len() >= LIST_OBJECTS_MAX {
            return Err(EventsError::TooManyObjects {
                prefix: source.prefix.clone(),
                limit: LIST_OBJECTS_MAX,
            });
        }
        out.push(ObjectVersion {
            key: r.key.to_string(),
            size: r.size,
            modified_ms: r.recorded_at_ms,
            version: r.sha256.to_string(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_listing_keeps_to_the_prefix_and_suffixes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path()).unwrap();
        for key in ["in/a.flac", "in/b.txt", "other/c.flac"] {
            store
                .put_bytes(key, bytes::Bytes::from_static(b"abc"))
                .await
                .unwrap();
        }
        let source = BucketSource {
            prefix: "in/".into(),
            suffixes: vec![".flac".into()],
        };
        let listed = list(&store, &source).await.unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!((listed[0].key.as_str(), listed[0].size), ("in/a.flac", 3));
        let records = [
            Recorded {
                key: "in/x.flac",
                size: 1,
                sha256: "ab",
                recorded_at_ms: 9,
            },
            Recorded {
                key: "out/x.flac",
                size: 1,
                sha256: "cd",
                recorded_at_ms: 9,
            },
        ];
        let found = from_records(&source, records.into_iter()).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].version, "ab");
    }
}
