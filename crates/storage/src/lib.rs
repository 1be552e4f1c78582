//! Object storage for job inputs, outputs and logs, through the `object_store` crate: a
//! directory under the data dir by default, or any S3-compatible store by URL.
//!
//! This is the only crate that knows `object_store`. Keys are `/`-separated relative paths
//! (`uploads/…`, `jobs/{job}/{attempt}/…`, `logs/{job}/{attempt}.log`); a key is checked before
//! use so that no request can reach outside the store.

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest object key.
const KEY_LEN_MAX: usize = 1024;
/// Chunk size for streamed uploads and downloads.
const CHUNK_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("no object {0:?}")]
    NotFound(String),
    #[error("invalid object key {0:?}: {1}")]
    InvalidKey(String, &'static str),
    #[error("object {key:?} is over the limit of {limit_bytes} bytes")]
    TooLarge { key: String, limit_bytes: u64 },
    #[error("storage is full: {0}")]
    Full(String),
    #[error("invalid storage url {0:?}: {1}")]
    InvalidUrl(String, String),
    #[error("storage failed: {0}")]
    Io(String),
}

impl From<object_store::Error> for StorageError {
    fn from(e: object_store::Error) -> StorageError {
        match e {
            object_store::Error::NotFound { path, .. } => StorageError::NotFound(path),
            other => classify_io(other.to_string()),
        }
    }
}

impl From<std::io::Error> for StorageError {
    fn from(e: std::io::Error) -> StorageError {
        if e.raw_os_error() == Some(libc_enospc()) {
            return StorageError::Full(e.to_string());
        }
        classify_io(e.to_string())
    }
}

/// ENOSPC on Linux; spelled out rather than pulling in libc for one constant.
fn libc_enospc() -> i32 {
    28
}

fn classify_io(message: String) -> StorageError {
    // object_store flattens io errors into text; a full disk must still be told apart.
    if message.contains("No space left on device") || message.contains("os error 28") {
        StorageError::Full(message)
    } else {
        StorageError::Io(message)
    }
}

/// A handle on the object store.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    url: String,
}

impl Store {
    /// A store in a local directory, created if missing.
    pub fn local(dir: &Path) -> Result<Store, StorageError> {
        std::fs::create_dir_all(dir)?;
        // Deleting the last file of a directory removes the directory too (up to `dir`), so
        // retention leaves no empty `jobs/{job}/{attempt}/` trees behind. A write is synced
        // (file and directory) before it returns, as S3 is durable once it answers: a job's
        // result names its objects in the replicated log, and must never name a file that a
        // power cut took away.
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)?
            .with_automatic_cleanup(true)
            .with_fsync(true);
        Ok(Store {
            inner: Arc::new(fs),
            url: format!("file://{}", dir.display()),
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
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub async fn put_bytes(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        self.inner.put(&parse_key(key)?, bytes.into()).await?;
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
        let mut file = tokio::fs::File::open(path).await?;
        let len = file.metadata().await?.len();
        if len > limit_bytes {
            return Err(StorageError::TooLarge {
                key: key.into(),
                limit_bytes,
            });
        }
        let mut upload = WriteMultipart::new_with_chunk_size(
            self.inner.put_multipart(&location).await?,
            CHUNK_BYTES,
        );
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = file.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            upload.wait_for_capacity(2).await?;
            upload.write(&buf[..n]);
        }
        upload.finish().await?;
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
        let mut file = tokio::fs::File::create(path).await?;
        while let Some(chunk) = stream.next().await {
            file.write_all(&chunk?).await?;
        }
        file.flush().await?;
        Ok(len)
    }

    /// The object's size and a stream of its bytes.
    pub async fn get_stream(
        &self,
        key: &str,
    ) -> Result<(u64, BoxStream<'static, Result<Bytes, StorageError>>), StorageError> {
        let got = self.inner.get(&parse_key(key)?).await?;
        let len = got.meta.size;
        Ok((
            len,
            got.into_stream()
                .map(|r| r.map_err(StorageError::from))
                .boxed(),
        ))
    }

    /// Reads a whole (small) object.
    pub async fn get_bytes(&self, key: &str, limit_bytes: u64) -> Result<Bytes, StorageError> {
        let got = self.inner.get(&parse_key(key)?).await?;
        if got.meta.size > limit_bytes {
            return Err(StorageError::TooLarge {
                key: key.into(),
                limit_bytes,
            });
        }
        Ok(got.bytes().await?)
    }

    pub async fn size(&self, key: &str) -> Result<u64, StorageError> {
        Ok(self.inner.head(&parse_key(key)?).await?.size)
    }

    /// Deletes objects under `prefix` last modified before `cutoff_ms` (Unix milliseconds), at
    /// most `limit` of them; returns how many went.
    pub async fn delete_older_than(
        &self,
        prefix: &str,
        cutoff_ms: i64,
        limit: usize,
    ) -> Result<usize, StorageError> {
        let prefix = parse_key(prefix)?;
        let mut listed = self.inner.list(Some(&prefix));
        let mut deleted = 0;
        while let Some(meta) = listed.next().await {
            if deleted >= limit {
                break;
            }
            let meta = meta?;
            if meta.last_modified.timestamp_millis() >= cutoff_ms {
                continue;
            }
            match self.inner.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(deleted)
    }

    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.inner.delete(&parse_key(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Checks a key: relative, no empty, `.` or `..` segments, printable, bounded.
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
    if key.starts_with('/')
        || key
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return bad("must be a relative path without empty, '.' or '..' segments");
    }
    if key.chars().any(|c| c.is_control() || c == '\\') {
        return bad("must not contain control characters or backslashes");
    }
    Key::parse(key).or_else(|_| bad("not a valid object path"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_escape_the_store() {
        for bad in ["", "/etc/passwd", "a/../b", "a//b", "./a", "a\\b", "a\nb"] {
            assert!(parse_key(bad).is_err(), "{bad:?} must be refused");
        }
        for good in ["a", "uploads/x.mp3", "jobs/1/2/out.json"] {
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
}
