//! Objects across nodes when each node keeps them on its own disk (the default local store).
//!
//! The registry records every object (`Command::RecordObjects`: key, size, SHA-256 and the
//! nodes that hold a copy), and nodes move copies between them over signed HTTP
//! (`/v1/peer/objects/{key}`, signed with the cluster secret, as raft traffic is):
//!
//! 1. a write (an upload, an attempt's output or log) goes to this node's disk, then is
//!    copied to one more live node ([`model::copy_targets`], tried in turn until one takes
//!    it, each copy within [`model::copy_deadline`]), then recorded in the log with both
//!    holders. An upload or an output is acknowledged only once both copies are on disk; with
//!    one live node there is nothing to copy to and one copy is all there is. A log is kept
//!    even with one copy (it is recorded with the holders it has);
//! 2. a read finds the record: a holder reads its own disk; any other node fetches the object
//!    from a holder ([`model::read_order`]: live holders first), streaming it through and
//!    checking its size and SHA-256 against the record on the way. An object with no record
//!    (written before records existed) is read from this node's disk;
//! 3. a lost copy is made again ([`repair`]): every few seconds each node looks for objects
//!    it holds whose other holders were removed or have been down for
//!    [`model::HOLDER_LOST_AFTER_MS`], and the first live holder of each (in the key's
//!    rendezvous order) copies it to another live node and adds that holder to the record
//!    (`Command::AddObjectHolders`, taken only while the record has the same SHA-256).
//!
//! With an S3-compatible store none of this runs: every node reads and writes the one store.

use crate::{storage_error, Node};
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use model::signature::{self, BodyHasher, Canonical};
use model::{ApiError, Command, ErrorCode, NodeId, ObjectInfo, ObjectRecord};
use rand::RngCore;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;
use storage::StorageError;

/// Largest object moved between nodes: an attempt's output file (uploads are smaller).
pub const OBJECT_COPY_BYTES_MAX: u64 = 4 * 1024 * 1024 * 1024;
/// Where a node serves copies to its peers (`GET` fetches, `PUT` stores).
pub const PEER_OBJECTS_PATH: &str = "/v1/peer/objects/";
/// How long a connection to a peer may take to open.
pub(crate) const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes read from a file per step while hashing it.
const HASH_CHUNK_BYTES: usize = 256 * 1024;
/// Text of a peer's error answer kept for the node's log.
const PEER_ERROR_TEXT_BYTES_MAX: usize = 1024;

/// A byte stream of an object, as the API serves it.
pub type ObjectStream = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// Where the bytes of a new object are, to send a copy of them.
#[derive(Debug)]
pub(crate) enum Source<'a> {
    File(&'a Path),
    Bytes(Bytes),
    /// This node's stored copy of the object.
    Stored,
}

/// How often a node looks for objects it holds that lost copies.
const REPAIR_EVERY: Duration = Duration::from_secs(5);
/// Objects one node copies again per round at most.
const REPAIRS_PER_ROUND_MAX: usize = 256;

/// How far copying a new object got.
#[derive(Debug)]
pub(crate) struct Copies {
    pub(crate) holders: BTreeSet<NodeId>,
    /// Copies the cluster wants of it now: [`model::OBJECT_COPIES`], or fewer if there are
    /// fewer live nodes.
    wanted: usize,
    /// Why peers did not take a copy, for the node's log.
    failures: Vec<String>,
}

impl Copies {
    /// `unavailable` if fewer nodes hold the object than the cluster wants.
    pub(crate) fn short(&self, key: &str) -> Option<ApiError> {
        (self.holders.len() < self.wanted).then(|| {
            tracing::warn!(key, failures = ?self.failures, "no second node took a copy");
            ApiError::new(
                ErrorCode::Unavailable,
                format!(
                    "object {key:?} could not be copied to a second node ({} tried); try again",
                    self.failures.len()
                ),
            )
        })
    }
}

/// Percent-encodes a key for a URL path: every byte but unreserved characters and `/`.
fn escape_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Hex SHA-256 of a file, read on a blocking thread.
pub(crate) async fn sha256_file(path: &Path) -> std::io::Result<String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = std::fs::File::open(path)?;
        let mut hasher = BodyHasher::default();
        let mut buf = vec![0u8; HASH_CHUNK_BYTES];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                return Ok(hasher.finish_hex());
            }
            hasher.update(&buf[..n]);
        }
    })
    .await
    .map_err(std::io::Error::other)?
}

fn peer_failed(key: &str, why: String) -> ApiError {
    tracing::warn!(key, "object copy between nodes failed: {why}");
    ApiError::new(
        ErrorCode::Unavailable,
        format!("no node that holds object {key:?} could send it; try again"),
    )
}

impl Node {
    /// Whether objects live on the nodes' own disks (and so are recorded and copied).
    fn objects_are_local(&self) -> bool {
        self.inner.store.is_local()
    }

    /// A request to a peer's object route, signed with the cluster secret (over mutual TLS
    /// unless the cluster serves plain HTTP).
    fn peer_request(
        &self,
        method: reqwest::Method,
        addr: &str,
        key: &str,
        body_sha256: &str,
        deadline: Duration,
    ) -> reqwest::RequestBuilder {
        let path = format!("{PEER_OBJECTS_PATH}{}", escape_key(key));
        let mut nonce = [0u8; 16];
        rand::rng().fill_bytes(&mut nonce);
        let nonce = hex::encode(nonce);
        let timestamp_s = crate::now_ms() / 1000;
        let canonical = Canonical {
            method: method.as_str(),
            host: addr,
            path: &path,
            query: "",
            timestamp_s,
            nonce: &nonce,
            body_sha256_hex: body_sha256,
        };
        let sig = canonical
            .sign(&self.inner.cluster_secret)
            .unwrap_or_default();
        self.inner
            .peer_http
            .request(method, format!("{}://{addr}{path}", self.inner.peer_scheme))
            .timeout(deadline)
            .header(signature::HEADER_KEY, crate::CLUSTER_KEY_ID)
            .header(signature::HEADER_TIMESTAMP, timestamp_s.to_string())
            .header(signature::HEADER_NONCE, nonce)
            .header(signature::HEADER_CONTENT_SHA256, body_sha256)
            .header(signature::HEADER_SIGNATURE, sig)
    }

    /// Sends a copy of a new object to peers until the cluster has the copies it wants
    /// (this node's own is the first). Never fails: [`Copies::short`] says if it fell short.
    pub(crate) async fn copy_to_peers(
        &self,
        key: &str,
        source: Source<'_>,
        size: u64,
        sha256: &str,
    ) -> Copies {
        let me = self.id();
        let targets: Vec<(NodeId, String)> = self.read(|s| {
            model::copy_targets(s.nodes(), me, key)
                .into_iter()
                .filter_map(|id| s.node(id).map(|n| (id, n.addr.clone())))
                .collect()
        });
        let mut copies = Copies {
            holders: BTreeSet::from([me]),
            wanted: model::OBJECT_COPIES.min(1 + targets.len()),
            failures: Vec::new(),
        };
        for (id, addr) in targets {
            if copies.holders.len() >= copies.wanted {
                break;
            }
            match self.send_copy(&addr, key, &source, size, sha256).await {
                Ok(()) => {
                    copies.holders.insert(id);
                }
                Err(why) => copies.failures.push(format!("node {id}: {why}")),
            }
        }
        copies
    }

    async fn send_copy(
        &self,
        addr: &str,
        key: &str,
        source: &Source<'_>,
        size: u64,
        sha256: &str,
    ) -> Result<(), String> {
        let body = match source {
            Source::File(path) => {
                let file = tokio::fs::File::open(path)
                    .await
                    .map_err(|e| e.to_string())?;
                reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file))
            }
            Source::Bytes(bytes) => reqwest::Body::from(bytes.clone()),
            Source::Stored => {
                let (_, stream) = self.local_stream(key).await.map_err(|e| e.message)?;
                reqwest::Body::wrap_stream(stream)
            }
        };
        let deadline = model::copy_deadline(size);
        let response = self
            .peer_request(reqwest::Method::PUT, addr, key, sha256, deadline)
            .header("content-length", size)
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        let text: String = text.chars().take(PEER_ERROR_TEXT_BYTES_MAX).collect();
        Err(format!("{status}: {text}"))
    }

    /// Copies one object that lost holders to live nodes without a copy, until it has the
    /// copies it is missing, and adds them to its record.
    async fn repair_one(&self, repair: model::Repair) {
        let targets: Vec<(NodeId, String)> = self.read(|s| {
            repair
                .targets
                .iter()
                .filter_map(|&id| s.node(id).map(|n| (id, n.addr.clone())))
                .collect()
        });
        let mut added = BTreeSet::new();
        for (id, addr) in targets {
            if added.len() >= repair.missing {
                break;
            }
            let sent = self
                .send_copy(
                    &addr,
                    &repair.key,
                    &Source::Stored,
                    repair.size,
                    &repair.sha256,
                )
                .await;
            match sent {
                Ok(()) => {
                    added.insert(id);
                }
                Err(why) => {
                    tracing::warn!(
                        key = repair.key,
                        node = id,
                        why,
                        "copying an object again failed"
                    );
                    self.inner.metrics.object_copy_failures.inc();
                }
            }
        }
        if added.is_empty() {
            return;
        }
        let copies = added.len() as u64;
        let command = Command::AddObjectHolders {
            key: repair.key.clone(),
            sha256: repair.sha256,
            holders: added,
        };
        match self.propose(command).await {
            Ok(_) => {
                tracing::info!(
                    key = repair.key,
                    copies,
                    "an object that lost a holder was copied again"
                );
                self.inner.metrics.object_repairs.inc_by(copies);
            }
            Err(e) => {
                tracing::warn!(key = repair.key, error = %e, "recording a repaired object failed")
            }
        }
    }

    /// Records objects written here (and copied) in the log.
    pub(crate) async fn record_objects(&self, objects: Vec<ObjectRecord>) -> Result<(), ApiError> {
        let command = Command::RecordObjects {
            now_ms: crate::now_ms(),
            objects,
        };
        crate::rejected(self.propose(command).await?).map(|_| ())
    }

    /// Stores an uploaded file (already checked against its signed SHA-256, `sha256`) as
    /// object `key`, refusing files over `limit_bytes`. With the local store it answers only
    /// once the object is on two nodes' disks (or on the one live node) and recorded.
    pub async fn put_object(
        &self,
        key: &str,
        path: &Path,
        sha256: &str,
        limit_bytes: u64,
    ) -> Result<u64, ApiError> {
        let store = &self.inner.store;
        let size = store
            .put_file(key, path, limit_bytes)
            .await
            .map_err(storage_error)?;
        if !self.objects_are_local() {
            return Ok(size);
        }
        let copies = self
            .copy_to_peers(key, Source::File(path), size, sha256)
            .await;
        let recorded = match copies.short(key) {
            Some(e) => Err(e),
            None => {
                let record = ObjectRecord {
                    key: key.to_string(),
                    size,
                    sha256: sha256.to_string(),
                    holders: copies.holders,
                };
                self.record_objects(vec![record]).await
            }
        };
        if let Err(e) = recorded {
            // An upload that was not acknowledged leaves no object a read could find here,
            // unless an earlier one of the key is recorded (its copy is this file now).
            if self.read(|s| s.object(key).is_none()) {
                let _ = store.delete(key).await;
            }
            return Err(e);
        }
        Ok(size)
    }

    /// The object's size and bytes, from this node's disk or a holder's; see the module
    /// documentation for which.
    pub async fn object_stream(&self, key: &str) -> Result<(u64, ObjectStream), ApiError> {
        storage::parse_key(key).map_err(storage_error)?;
        if !self.objects_are_local() {
            return self.local_stream(key).await;
        }
        let mut info = self.read(|s| s.object(key).cloned());
        if info.is_none() {
            match self.local_stream(key).await {
                Err(e) if e.code == ErrorCode::NotFound => {}
                found => return found,
            }
            // Perhaps written through another node just now: catch up with the log.
            self.sync().await?;
            info = self.read(|s| s.object(key).cloned());
        }
        let Some(info) = info else {
            return self.local_stream(key).await;
        };
        if info.holders.contains(&self.id()) {
            match self.local_stream(key).await {
                // This node's copy is gone (its disk was replaced): another holder's will do.
                Err(e) if e.code == ErrorCode::NotFound => {
                    tracing::warn!(key, "this node's copy of an object is missing");
                }
                found => return found,
            }
        }
        self.fetch(key, &info).await
    }

    async fn local_stream(&self, key: &str) -> Result<(u64, ObjectStream), ApiError> {
        let (len, stream) = self
            .inner
            .store
            .get_stream(key)
            .await
            .map_err(storage_error)?;
        let stream = stream.map(|r| r.map_err(std::io::Error::other)).boxed();
        Ok((len, stream))
    }

    /// Streams the object from the first holder that answers, checked against its record.
    async fn fetch(&self, key: &str, info: &ObjectInfo) -> Result<(u64, ObjectStream), ApiError> {
        let me = self.id();
        let holders: Vec<(NodeId, String)> = self.read(|s| {
            let nodes: BTreeMap<NodeId, &model::NodeInfo> = s.nodes().map(|n| (n.id, n)).collect();
            model::read_order(info, &nodes, me, key)
                .into_iter()
                .filter_map(|id| nodes.get(&id).map(|n| (id, n.addr.clone())))
                .collect()
        });
        let empty_sha256 = signature::body_sha256_hex(b"");
        let deadline = model::copy_deadline(info.size);
        let mut failures = Vec::new();
        for (id, addr) in holders {
            let request =
                self.peer_request(reqwest::Method::GET, &addr, key, &empty_sha256, deadline);
            match request.send().await {
                Ok(response) if response.status().is_success() => {
                    let stream = response
                        .bytes_stream()
                        .map(|r| r.map_err(std::io::Error::other));
                    return Ok((info.size, checked(key, info, stream.boxed())));
                }
                Ok(response) => failures.push(format!("node {id}: {}", response.status())),
                Err(e) => failures.push(format!("node {id}: {e}")),
            }
        }
        if failures.is_empty() {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("no object {key:?}: no node holds it any more"),
            ));
        }
        Err(peer_failed(key, failures.join("; ")))
    }

    /// Downloads an object to a local file, refusing objects over `limit_bytes`.
    pub(crate) async fn object_to_file(
        &self,
        key: &str,
        path: &Path,
        limit_bytes: u64,
    ) -> Result<u64, ApiError> {
        use tokio::io::AsyncWriteExt;
        let (len, mut stream) = self.object_stream(key).await?;
        if len > limit_bytes {
            return Err(storage_error(StorageError::TooLarge {
                key: key.into(),
                limit_bytes,
            }));
        }
        let io = |e: std::io::Error| {
            storage_error(StorageError::Io {
                key: key.into(),
                detail: e.to_string(),
            })
        };
        let mut file = tokio::fs::File::create(path).await.map_err(io)?;
        while let Some(chunk) = stream.next().await {
            file.write_all(&chunk.map_err(io)?).await.map_err(io)?;
        }
        file.flush().await.map_err(io)?;
        Ok(len)
    }

    /// Reads a whole (small) object, refusing objects over `limit_bytes`.
    pub(crate) async fn object_bytes(
        &self,
        key: &str,
        limit_bytes: u64,
    ) -> Result<Bytes, ApiError> {
        let (len, mut stream) = self.object_stream(key).await?;
        if len > limit_bytes {
            return Err(storage_error(StorageError::TooLarge {
                key: key.into(),
                limit_bytes,
            }));
        }
        let mut bytes = Vec::with_capacity(len as usize);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                storage_error(StorageError::Io {
                    key: key.into(),
                    detail: e.to_string(),
                })
            })?;
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes.into())
    }

    /// A peer's fetch: this node's own copy, never another node's (no request goes further
    /// than one hop).
    pub async fn peer_object_stream(&self, key: &str) -> Result<(u64, ObjectStream), ApiError> {
        self.local_stream(key).await
    }

    /// A peer's copy of a new object (already checked against its signed SHA-256), stored on
    /// this node's disk; the peer records it.
    pub async fn peer_object_put(&self, key: &str, path: &Path) -> Result<u64, ApiError> {
        if !self.objects_are_local() {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "this node's objects are in shared storage: nothing to copy",
            ));
        }
        self.inner
            .store
            .put_file(key, path, OBJECT_COPY_BYTES_MAX)
            .await
            .map_err(storage_error)
    }

    /// Where uploads and peers' copies are received before they become objects.
    pub fn receiving_dir(&self) -> PathBuf {
        self.inner.config.data_dir.join("tmp")
    }
}

/// Passes a fetched object's bytes through, failing the stream if they are not the recorded
/// size and SHA-256 (a copy that differs from the record: a disk that went bad, or a key
/// written through two nodes at once).
fn checked(key: &str, info: &ObjectInfo, inner: ObjectStream) -> ObjectStream {
    struct Check {
        inner: ObjectStream,
        hasher: Option<BodyHasher>,
        seen: u64,
        size: u64,
        sha256: String,
        key: String,
    }
    let check = Check {
        inner,
        hasher: Some(BodyHasher::default()),
        seen: 0,
        size: info.size,
        sha256: info.sha256.clone(),
        key: key.to_string(),
    };
    futures::stream::unfold(check, |mut c| async move {
        let hasher = c.hasher.as_mut()?;
        match c.inner.next().await {
            Some(Ok(chunk)) => {
                c.seen += chunk.len() as u64;
                hasher.update(&chunk);
                Some((Ok(chunk), c))
            }
            Some(Err(e)) => {
                c.hasher = None;
                Some((Err(e), c))
            }
            None => {
                let digest = c.hasher.take()?.finish_hex();
                if c.seen == c.size && digest == c.sha256 {
                    return None;
                }
                tracing::warn!(
                    key = c.key,
                    seen = c.seen,
                    "a fetched copy differs from its record"
                );
                let e = std::io::Error::other(format!(
                    "object {:?}: the copy fetched differs from its record",
                    c.key
                ));
                Some((Err(e), c))
            }
        }
    })
    .boxed()
}

/// Makes lost copies again, for as long as the node runs (see the module documentation).
pub(crate) async fn repair(node: Node) {
    if !node.objects_are_local() {
        return;
    }
    loop {
        tokio::select! {
            () = node.inner.shutdown.cancelled() => return,
            () = tokio::time::sleep(REPAIR_EVERY) => {}
        }
        let me = node.id();
        let repairs = node.read(|s| {
            let nodes: BTreeMap<NodeId, &model::NodeInfo> = s.nodes().map(|n| (n.id, n)).collect();
            model::object_repairs(
                s.objects(),
                &nodes,
                me,
                crate::now_ms(),
                REPAIRS_PER_ROUND_MAX,
            )
        });
        for repair in repairs {
            if node.inner.shutdown.is_cancelled() {
                return;
            }
            node.repair_one(repair).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_escaped_for_a_url_path() {
        assert_eq!(escape_key("uploads/a-b_c.d~e"), "uploads/a-b_c.d~e");
        assert_eq!(
            escape_key("uploads/50% off (live).mp3"),
            "uploads/50%25%20off%20%28live%29.mp3"
        );
        assert_eq!(escape_key("é?"), "%C3%A9%3F");
    }

    #[tokio::test]
    async fn a_fetched_copy_that_differs_from_its_record_fails_the_stream() {
        let info = |bytes: &[u8]| ObjectInfo {
            size: bytes.len() as u64,
            sha256: signature::body_sha256_hex(bytes),
            holders: BTreeSet::from([1]),
            recorded_at_ms: 0,
        };
        let chunks = || {
            futures::stream::iter(vec![
                Ok(Bytes::from_static(b"ab")),
                Ok(Bytes::from_static(b"c")),
            ])
            .boxed()
        };
        let got: Vec<_> = checked("k", &info(b"abc"), chunks()).collect().await;
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(Result::is_ok));
        for other in [&b"abd"[..], b"abcd"] {
            let got: Vec<_> = checked("k", &info(other), chunks()).collect().await;
            assert_eq!(got.len(), 3, "{other:?}");
            assert!(got[2].is_err(), "{other:?}");
        }
    }
}
