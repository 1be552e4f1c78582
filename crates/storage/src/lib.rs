//! Object storage for job inputs, outputs and logs, through the `object_store` crate: a
//! directory under the data dir by default, or any S3-compatible store by URL.
//!
//! This is the only crate that knows `object_store`. Keys are `/`-separated relative paths
//! (`uploads/…`, `jobs/{job}/{attempt}/…`, `logs/{job}/{attempt}.log`); a key is checked before
//! use so that no request can reach outside the store.

mod local;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest object key.
pub const KEY_LEN_MAX: usize = 1024;
/// Longest segment of a key: a file name (255 bytes on common file systems) with room for
/// the `#N` suffix a local store's writes in progress carry.
pub const SEGMENT_LEN_MAX: usize = 240;
/// Where a local store stages its writes: a name no key can reach (see [`parse_key`]).
const STAGING_DIR: &str = ".staging";
/// Chunk size for streamed uploads and downloads.
const CHUNK_BYTES: usize = 8 * 1024 * 1024;

/// A storage failure. `Display` carries the details for the node's log (they may name server
/// paths); [`StorageError::public_message`] is what a client may be told.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("no object {0:?}")]
    NotFound(String),
    #[error("invalid object key {0:?}: {1}")]
    InvalidKey(String, &'static str),
    /// The key cannot be held next to the objects already stored (local stores: an object
    /// under another object, or an object where others are under it).
    #[error("object {0:?} {1}")]
    Conflict(String, &'static str),
    #[error("object {key:?} is over the limit of {limit_bytes} bytes")]
    TooLarge { key: String, limit_bytes: u64 },
    #[error("storage is full: {0}")]
    Full(String),
    #[error("invalid storage url {0:?}: {1}")]
    InvalidUrl(String, String),
    #[error("storage failed on {key:?}: {detail}")]
    Io { key: String, detail: String },
}

impl StorageError {
    /// The message for a client: names the object and what went wrong, never a path of the
    /// server (those stay in `Display`, for the log).
    pub fn public_message(&self) -> String {
        match self {
            StorageError::Full(_) => "storage is full".to_string(),
            StorageError::Io { key, .. } => format!("storage failed on object {key:?}"),
            other => other.to_string(),
        }
    }

    /// An `object_store` error met while working on `key`.
    fn store(key: &str, e: object_store::Error) -> StorageError {
        match e {
            // Its `path` is a file name for local stores: the key is what the caller knows.
            object_store::Error::NotFound { .. } => StorageError::NotFound(key.to_string()),
            other => classify_io(key, other.to_string()),
        }
    }

    fn io(key: &str, e: std::io::Error) -> StorageError {
        if e.raw_os_error() == Some(libc_enospc()) {
            return StorageError::Full(e.to_string());
        }
        classify_io(key, e.to_string())
    }
}

/// ENOSPC on Linux; spelled out rather than pulling in libc for one constant.
fn libc_enospc() -> i32 {
    28
}

fn classify_io(key: &str, detail: String) -> StorageError {
    // object_store flattens io errors into text; a full disk must still be told apart.
    if detail.contains("No space left on device") || detail.contains("os error 28") {
        StorageError::Full(detail)
    } else {
        StorageError::Io {
            key: key.to_string(),
            detail,
        }
    }
}

/// One object of a [`Store::list`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    /// When the store says the object was last written, in Unix milliseconds.
    pub modified_ms: u64,
    /// The store's tag of the object's content (empty if it gives none).
    pub etag: String,
}

/// What a [`Store::list`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    pub objects: Vec<Listed>,
    /// More objects matched than the listing's limit.
    pub truncated: bool,
}

/// A handle on the object store.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    url: String,
    /// The directory of a local store: files are written there directly (see
    /// [`Store::put_file`]).
    local_root: Option<PathBuf>,
}

impl Store {
    /// A store in a local directory, created if missing.
    pub fn local(dir: &Path) -> Result<Store, StorageError> {
        std::fs::create_dir_all(dir).map_err(|e| StorageError::io("", e))?;
        // Deleting the last file of a directory removes the directory too (up to `dir`), so
        // retention leaves no empty `jobs/{job}/{attempt}/` trees behind. A write is synced
        // (file and directory) before it returns, as S3 is durable once it answers: a job's
        // result names its objects in the replicated log, and must never name a file that a
        // power cut took away.
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| StorageError::store("", e))?
            .with_automatic_cleanup(true)
            .with_fsync(true);
        Ok(Store {
            inner: Arc::new(fs),
            url: format!("file://{}", dir.display()),
            local_root: Some(dir.to_path_buf()),
        })
    }

    /// A store from a URL: `s3://bucket/prefix` (endpoint and credentials from the usual
    /// `AWS_*` environment variables, e.g. `AWS_ENDPOINT` for MinIO), or `file:///dir`.
    pub fn open(url: &str) -> Result<Store, StorageError> {
        if let Some(dir) = url.strip_prefix("file://") {
            return Store::local(Path::new(dir));
        }
        let parsed = url::Url::parse(url)
            .map_err(|e| StorageError::InvalidUrl(url.into(), e.to_string()))?;
        if parsed.scheme() != "s3" {
            return Err(StorageError::InvalidUrl(
                url.into(),
                "use s3://bucket/prefix or file:///dir".into(),
            ));
        }
        let bucket = parsed
            .host_str()
            .ok_or_else(|| StorageError::InvalidUrl(url.into(), "no bucket".into()))?;
        let s3 = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_allow_http(true)
            .build()
            .map_err(|e| StorageError::InvalidUrl(url.into(), e.to_string()))?;
        let prefix = parsed.path().trim_matches('/').to_string();
        let inner: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(s3, prefix.as_str()))
        };
        Ok(Store {
            inner,
            url: url.to_string(),
            local_root: None,
        })
    }

    /// Whether this is a directory of this node's (each node has its own), not a store every
    /// node shares.
    pub fn is_local(&self) -> bool {
        self.local_root.is_some()
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub async fn put_bytes(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        self.inner
            .put(&parse_key(key)?, bytes.into())
            .await
            .map_err(|e| StorageError::store(key, e))?;
        Ok(())
    }

    /// Uploads a local file, streamed in chunks, refusing files over `limit_bytes`.
    pub async fn put_file(
        &self,
        key: &str,
        path: &Path,
        limit_bytes: u64,
    ) -> Result<u64, StorageError> {
        let location = parse_key(key)?;
        if let Some(root) = &self.local_root {
            let (root, key, path) = (root.clone(), key.to_string(), path.to_path_buf());
            return tokio::task::spawn_blocking(move || {
                local::put_file(&root, &key, &path, limit_bytes)
            })
            .await
            .map_err(|e| StorageError::Io {
                key: location.to_string(),
                detail: e.to_string(),
            })?;
        }
        let io = |e| StorageError::io(key, e);
        let store = |e| StorageError::store(key, e);
        let mut file = tokio::fs::File::open(path).await.map_err(io)?;
        let len = file.metadata().await.map_err(io)?.len();
        if len > limit_bytes {
            return Err(StorageError::TooLarge {
                key: key.into(),
                limit_bytes,
            });
        }
        let mut upload = WriteMultipart::new_with_chunk_size(
            self.inner.put_multipart(&location).await.map_err(store)?,
            CHUNK_BYTES,
        );
        let mut buf = vec![0u8; 256 * 1024];
        let copied = async {
            loop {
                let n = file.read(&mut buf).await.map_err(io)?;
                if n == 0 {
                    return Ok(());
                }
                upload.wait_for_capacity(2).await.map_err(store)?;
                upload.write(&buf[..n]);
            }
        }
        .await;
        match copied {
            Ok(()) => upload.finish().await.map_err(store)?,
            Err(e) => {
                // Parts already sent are dropped with the upload, not left behind.
                let _ = upload.abort().await;
                return Err(e);
            }
        };
        Ok(len)
    }

    /// Downloads an object to a local file, refusing objects over `limit_bytes`.
    pub async fn get_file(
        &self,
        key: &str,
        path: &Path,
        limit_bytes: u64,
    ) -> Result<u64, StorageError> {
        let (len, mut stream) = self.get_stream(key).await?;
        if len > limit_bytes {
            return Err(StorageError::TooLarge {
                key: key.into(),
                limit_bytes,
            });
        }
        let io = |e| StorageError::io(key, e);
        let mut file = tokio::fs::File::create(path).await.map_err(io)?;
        while let Some(chunk) = stream.next().await {
            file.write_all(&chunk?).await.map_err(io)?;
        }
        file.flush().await.map_err(io)?;
        Ok(len)
    }

    /// The object's size and a stream of its bytes.
    pub async fn get_stream(
        &self,
        key: &str,
    ) -> Result<(u64, BoxStream<'static, Result<Bytes, StorageError>>), StorageError> {
        let got = self
            .inner
            .get(&parse_key(key)?)
            .await
            .map_err(|e| StorageError::store(key, e))?;
        let len = got.meta.size;
        let key = key.to_string();
        Ok((
            len,
            got.into_stream()
                .map(move |r| r.map_err(|e| StorageError::store(&key, e)))
                .boxed(),
        ))
    }

    /// Reads a whole (small) object.
    pub async fn get_bytes(&self, key: &str, limit_bytes: u64) -> Result<Bytes, StorageError> {
        let store = |e| StorageError::store(key, e);
        let got = self.inner.get(&parse_key(key)?).await.map_err(store)?;
        if got.meta.size > limit_bytes {
            return Err(StorageError::TooLarge {
                key: key.into(),
                limit_bytes,
            });
        }
        got.bytes().await.map_err(store)
    }

    pub async fn size(&self, key: &str) -> Result<u64, StorageError> {
        let meta = self.inner.head(&parse_key(key)?).await;
        Ok(meta.map_err(|e| StorageError::store(key, e))?.size)
    }

    /// Deletes objects under `prefix` last modified before `cutoff_ms` (Unix milliseconds), at
    /// most `limit` of them; returns how many went.
    pub async fn delete_older_than(
        &self,
        prefix: &str,
        cutoff_ms: i64,
        limit: usize,
    ) -> Result<usize, StorageError> {
        let store = |e| StorageError::store(prefix, e);
        let location = parse_key(prefix)?;
        let mut listed = self.inner.list(Some(&location));
        let mut deleted = 0;
        while let Some(meta) = listed.next().await {
            if deleted >= limit {
                break;
            }
            let meta = meta.map_err(store)?;
            if meta.last_modified.timestamp_millis() >= cutoff_ms {
                continue;
            }
            match self.inner.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                Err(e) => return Err(store(e)),
            }
        }
        Ok(deleted)
    }

    /// The objects whose keys start with `prefix` (any string, not only a folder), at most
    /// `limit`; the listing says whether more were left out. Names no store's own files (a
    /// local store's writes in progress).
    pub async fn list(&self, prefix: &str, limit: usize) -> Result<Listing, StorageError> {
        let store = |e| StorageError::store(prefix, e);
        // object_store lists folders: list the prefix's folder and keep what starts with it.
        let folder = prefix.rsplit_once('/').map_or("", |(folder, _)| folder);
        let location = if folder.is_empty() {
            None
        } else {
            Some(parse_key(folder)?)
        };
        let mut listed = self.inner.list(location.as_ref());
        let mut listing = Listing::default();
        while let Some(meta) = listed.next().await {
            let meta = meta.map_err(store)?;
            let key = meta.location.to_string();
            if !key.starts_with(prefix) || parse_key(&key).is_err() {
                continue;
            }
            if listing.objects.len() >= limit {
                listing.truncated = true;
                break;
            }
            listing.objects.push(Listed {
                size: meta.size,
                modified_ms: u64::try_from(meta.last_modified.timestamp_millis()).unwrap_or(0),
                etag: meta.e_tag.unwrap_or_default(),
                key,
            });
        }
        Ok(listing)
    }

    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.inner.delete(&parse_key(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StorageError::store(key, e)),
        }
    }
}

/// The object key grammar, the one place it is defined (the API checks uploads and reads
/// against it before a byte is written, so the store never sees a key it cannot hold):
///
/// - 1 to [`KEY_LEN_MAX`] bytes of `/`-separated segments;
/// - each segment 1 to [`SEGMENT_LEN_MAX`] bytes (a file name, with room for the store's
///   staging suffix), not starting with `.` (so no `.`, `..` or hidden staging names);
/// - no control characters, backslashes or `#` (local stores reserve `name#N` for writes in
///   progress).
pub fn parse_key(key: &str) -> Result<Key, StorageError> {
    let bad = |why| {
        Err(StorageError::InvalidKey(
            key.chars().take(80).collect(),
            why,
        ))
    };
    if key.is_empty() || key.len() > KEY_LEN_MAX {
        return bad("must be 1 to 1024 bytes");
    }
    if key.split('/').any(|s| s.is_empty() || s.starts_with('.')) {
        return bad(
            "must be a relative path whose segments are not empty and do not start with '.'",
        );
    }
    if key.split('/').any(|s| s.len() > SEGMENT_LEN_MAX) {
        return bad("each '/'-separated segment must be at most 240 bytes");
    }
    if key.chars().any(|c| c.is_control() || c == '\\' || c == '#') {
        return bad("must not contain control characters, backslashes or '#'");
    }
    Key::parse(key).or_else(|_| bad("not a valid object path"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_escape_the_store() {
        let long = format!("uploads/{}", "x".repeat(SEGMENT_LEN_MAX + 1));
        for bad in [
            "",
            "/etc/passwd",
            "a/../b",
            "a//b",
            "./a",
            "a\\b",
            "a\nb",
            "uploads/t#1",
            "uploads/.hidden",
            "a/",
            long.as_str(),
        ] {
            assert!(parse_key(bad).is_err(), "{bad:?} must be refused");
        }
        let longest = format!("uploads/{}", "x".repeat(SEGMENT_LEN_MAX));
        for good in [
            "a",
            "uploads/x.mp3",
            "jobs/1/2/out.json",
            "uploads/50% off (live).mp3",
            longest.as_str(),
        ] {
            assert!(parse_key(good).is_ok(), "{good:?} must be accepted");
        }
    }

    #[tokio::test]
    async fn a_file_goes_round_trip_and_limits_hold() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(&dir.path().join("objects")).unwrap();
        let src = dir.path().join("src.bin");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &data).unwrap();
        assert_eq!(
            store
                .put_file("uploads/a.bin", &src, 1 << 20)
                .await
                .unwrap(),
            data.len() as u64
        );
        let dst = dir.path().join("dst.bin");
        store
            .get_file("uploads/a.bin", &dst, 1 << 20)
            .await
            .unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), data);
        assert!(matches!(
            store.put_file("uploads/b.bin", &src, 1000).await,
            Err(StorageError::TooLarge { .. })
        ));
        assert!(matches!(
            store.get_file("uploads/a.bin", &dst, 1000).await,
            Err(StorageError::TooLarge { .. })
        ));
        assert!(matches!(
            store.get_bytes("uploads/none", 10).await,
            Err(StorageError::NotFound(_))
        ));
        store.delete("uploads/a.bin").await.unwrap();
        assert!(matches!(
            store.size("uploads/a.bin").await,
            Err(StorageError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn a_listing_takes_any_prefix_and_keeps_to_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(&dir.path().join("objects")).unwrap();
        for key in ["in/a.flac", "in/b.wav", "in/sub/c.flac", "inbox/d", "out/e"] {
            store
                .put_bytes(key, Bytes::from_static(b"x"))
                .await
                .unwrap();
        }
        let keys = |l: &Listing| {
            let mut keys: Vec<String> = l.objects.iter().map(|o| o.key.clone()).collect();
            keys.sort();
            keys.join(" ")
        };
        let all = store.list("in", 100).await.unwrap();
        assert_eq!(keys(&all), "in/a.flac in/b.wav in/sub/c.flac inbox/d");
        assert!(!all.truncated);
        assert_eq!(
            keys(&store.list("in/", 100).await.unwrap()),
            "in/a.flac in/b.wav in/sub/c.flac"
        );
        assert_eq!(
            keys(&store.list("in/sub/", 100).await.unwrap()),
            "in/sub/c.flac"
        );
        let capped = store.list("", 2).await.unwrap();
        assert_eq!((capped.objects.len(), capped.truncated), (2, true));
        assert!(capped
            .objects
            .iter()
            .all(|o| o.size == 1 && o.modified_ms > 0));
    }
}
