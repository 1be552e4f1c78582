//! Raft RPC between nodes over HTTP. The client side posts to a peer's
//! `/v1/raft/{append,vote,snapshot}`; the server side ([`handle`]) is mounted by the API.
//!
//! Votes and appends travel as JSON. A snapshot travels in binary chunks of at most
//! [`SNAPSHOT_CHUNK_BYTES`]: a 4-byte big-endian length, a small JSON header (vote, snapshot
//! meta, offset, done), then the chunk's raw bytes (see [`encode_snapshot_chunk`]). The
//! signature covers the whole body. Every call carries the sender's address in its signed
//! query (`?from=`), so a receiver can apply incoming fault rules to it.
//!
//! Every call has a deadline: raft's own calls the one openraft gives ([`RPCOption`]),
//! forwarded calls [`FORWARD_TIMEOUT`]. A call past its deadline is `unavailable`.

use crate::{RaftInstance, RegistryError, TypeConfig};
use model::NodeId;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, SnapshotMeta, Vote};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Bytes of snapshot data per `InstallSnapshot` request (openraft's `snapshot_max_chunk_size`).
pub(crate) const SNAPSHOT_CHUNK_BYTES: u64 = 1024 * 1024;
/// Largest JSON header of a snapshot chunk (vote, meta with the membership, offset, done).
const SNAPSHOT_HEADER_BYTES_MAX: usize = 256 * 1024;
/// Largest raft RPC body a node accepts. An `AppendEntries` request carries at most
/// [`crate::APPEND_BYTES_MAX`] of entries, but always at least one entry, and one entry can be
/// as large as the largest client request (16 MiB of jobs) plus what the leader adds to it.
pub const RAFT_BODY_BYTES_MAX: usize = 64 * 1024 * 1024;
/// How long a call forwarded to the leader (a write, a read index, a role change) waits for
/// its answer. A write then waits up to the same again for the entry to be applied here.
pub(crate) const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection to a peer may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a receiver holds a request that an incoming `drop` rule black-holes before it
/// answers with an error (by then the sender has given up: every call has a shorter deadline,
/// but a join's).
const DROP_HOLD: Duration = Duration::from_secs(60);
/// Largest delay a fault rule may add.
pub const FAULT_DELAY_MS_MAX: u64 = 60_000;

/// Why a peer's RPC could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum RaftRpcError {
    #[error("unknown raft rpc {0:?}")]
    UnknownKind(String),
    #[error("malformed raft rpc: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("{0}")]
    Unavailable(String),
    /// This node's disk is under its reserve: it takes no entries until space is back.
    #[error("{0}")]
    StorageFull(String),
}

/// A value computed on the leader, with the log index a follower must apply before it
/// answers its own caller.
#[derive(Debug, Serialize, serde::Deserialize)]
pub(crate) struct Forwarded<T> {
    pub(crate) index: u64,
    pub(crate) value: T,
}

/// The key id cluster RPCs are signed with; the secret is the cluster secret every node has.
pub const CLUSTER_KEY_ID: &str = "cluster";

/// What a fault rule does to the requests it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultAction {
    /// The request fails at once, as if the peer refused the connection.
    Refuse,
    /// The request is never answered: the sender waits until its deadline (a black hole).
    Drop,
    /// The request is delayed by `delay_ms`, then goes through.
    Delay,
}

/// Which requests between this node and a peer a fault rule applies to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Requests this node sends to the peer.
    Outgoing,
    /// Requests the peer sends to this node (the receiver knows the sender from the signed
    /// `from` of every raft call).
    Incoming,
    #[default]
    Both,
}

impl Direction {
    fn covers(self, other: Direction) -> bool {
        self == Direction::Both || self == other
    }
}

/// One fault-injection rule: what happens to raft traffic between this node and `node`.
/// Every exchange between nodes is a request and its answer, so a rule on one direction cuts
/// the requests of that direction (and so their answers), not the answers to the requests of
/// the other: `drop` outgoing on A for B is a one-way partition where A's messages never reach
/// B, while B's reach A and are answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    pub node: NodeId,
    pub action: FaultAction,
    /// The added latency of a `delay` rule (1 to [`FAULT_DELAY_MS_MAX`]); 0 for the others.
    #[serde(default)]
    pub delay_ms: u64,
    #[serde(default)]
    pub direction: Direction,
}

impl FaultRule {
    /// Refuses rules that cannot mean what they say.
    pub fn check(&self) -> Result<(), String> {
        match (self.action, self.delay_ms) {
            (FaultAction::Delay, 1..=FAULT_DELAY_MS_MAX) => Ok(()),
            (FaultAction::Delay, ms) => Err(format!(
                "a delay rule needs delay_ms from 1 to {FAULT_DELAY_MS_MAX}, not {ms}"
            )),
            (_, 0) => Ok(()),
            (action, _) => Err(format!(
                "delay_ms only goes with a delay rule, not {action:?}"
            )),
        }
    }
}

/// What a matching rule makes of a request before it is sent or handled.
enum Cut {
    Refused,
    Dropped,
}

/// How a node reaches its peers: an HTTP client with the node's TLS identity (mutual TLS,
/// trusting only the cluster CA; the node crate builds it) and the scheme, `https` unless the
/// cluster serves plain HTTP.
#[derive(Debug)]
pub struct PeerLink {
    pub http: reqwest::ClientBuilder,
    pub scheme: &'static str,
}

/// Signed HTTP calls to peers.
#[derive(Clone, Debug)]
pub(crate) struct Peers {
    client: reqwest::Client,
    scheme: &'static str,
    secret: Arc<str>,
    /// This node's address, sent as `from` with every call.
    addr: Arc<str>,
    /// The fault-injection seam: rules per peer address (see [`FaultRule`]). Empty unless a
    /// test or an operator sets them (`PUT /v1/faults`).
    faults: Arc<RwLock<Vec<(String, FaultRule)>>>,
}

impl Peers {
    pub(crate) fn new(secret: &str, addr: &str, link: PeerLink) -> Result<Peers, String> {
        let client = link
            .http
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| format!("the HTTP client of raft traffic: {e}"))?;
        Ok(Peers {
            client,
            scheme: link.scheme,
            secret: secret.into(),
            addr: addr.into(),
            faults: Default::default(),
        })
    }

    pub(crate) fn set_faults(&self, rules: Vec<(String, FaultRule)>) {
        *self.faults.write().unwrap_or_else(|p| p.into_inner()) = rules;
    }

    pub(crate) fn faults(&self) -> Vec<FaultRule> {
        let faults = self.faults.read().unwrap_or_else(|p| p.into_inner());
        faults.iter().map(|(_, rule)| rule.clone()).collect()
    }

    /// The first rule for requests between this node and `addr` in `direction`.
    fn rule(&self, addr: &str, direction: Direction) -> Option<FaultRule> {
        let faults = self.faults.read().unwrap_or_else(|p| p.into_inner());
        faults
            .iter()
            .find(|(a, rule)| a == addr && rule.direction.covers(direction))
            .map(|(_, rule)| rule.clone())
    }

    /// Applies the outgoing rule for `addr`: waits out a delay; a dropped request never
    /// returns (the caller's deadline ends it).
    async fn before_send(&self, addr: &str) -> Result<(), Cut> {
        match self.rule(addr, Direction::Outgoing) {
            None => Ok(()),
            Some(rule) => apply(&rule).await,
        }
    }

    /// Applies the incoming rule for a request from `from`: waits out a delay; holds a dropped
    /// request for [`DROP_HOLD`], then refuses it.
    pub(crate) async fn admit(&self, from: Option<&str>) -> Result<(), RaftRpcError> {
        let Some(rule) = from.and_then(|from| self.rule(from, Direction::Incoming)) else {
            return Ok(());
        };
        let cut = match tokio::time::timeout(DROP_HOLD, apply(&rule)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(cut)) => cut,
            Err(_) => Cut::Dropped,
        };
        Err(RaftRpcError::Unavailable(match cut {
            Cut::Refused => "refused (fault injected)".into(),
            Cut::Dropped => "dropped (fault injected)".into(),
        }))
    }

    fn signed(&self, addr: &str, kind: &str, body: Vec<u8>) -> reqwest::RequestBuilder {
        use model::signature::{self, Canonical};
        use rand::RngCore;
        let path = format!("/v1/raft/{kind}");
        let query = format!("from={}", self.addr);
        let mut nonce = [0u8; 16];
        rand::rng().fill_bytes(&mut nonce);
        let nonce = hex::encode(nonce);
        let hash = signature::body_sha256_hex(&body);
        let timestamp_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let canonical = Canonical {
            method: "POST",
            host: addr,
            path: &path,
            query: &query,
            timestamp_s,
            nonce: &nonce,
            body_sha256_hex: &hash,
        };
        let sig = canonical.sign(&self.secret).unwrap_or_default();
        let content_type = if kind == "snapshot" {
            "application/octet-stream"
        } else {
            "application/json"
        };
        self.client
            .post(format!("{}://{addr}{path}?{query}", self.scheme))
            .header(signature::HEADER_KEY, CLUSTER_KEY_ID)
            .header(signature::HEADER_TIMESTAMP, timestamp_s.to_string())
            .header(signature::HEADER_NONCE, nonce)
            .header(signature::HEADER_CONTENT_SHA256, hash)
            .header(signature::HEADER_SIGNATURE, sig)
            .header("content-type", content_type)
            .body(body)
    }

    /// A forwarded call to the leader; its answer body. Bounded by `timeout`.
    pub(crate) async fn call(
        &self,
        addr: &str,
        kind: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, RegistryError> {
        let unavailable = |e: String| RegistryError::Unavailable(format!("leader at {addr}: {e}"));
        // Never sent: the caller may send it again (see `Registry::propose`).
        let not_delivered =
            |e: String| RegistryError::NotDelivered(format!("leader at {addr}: {e}"));
        let exchange = async {
            if let Err(cut) = self.before_send(addr).await {
                return Err(match cut {
                    Cut::Refused => not_delivered("unreachable (fault injected)".into()),
                    Cut::Dropped => unavailable("dropped (fault injected)".into()),
                });
            }
            let response = self.signed(addr, kind, body).send().await.map_err(|e| {
                if e.is_connect() {
                    not_delivered(e.to_string())
                } else {
                    unavailable(e.to_string())
                }
            })?;
            let status = response.status();
            let bytes = response
                .bytes()
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            if status == reqwest::StatusCode::INSUFFICIENT_STORAGE {
                return Err(RegistryError::StorageFull(format!(
                    "leader at {addr}: {}",
                    String::from_utf8_lossy(&bytes)
                )));
            }
            if !status.is_success() {
                return Err(unavailable(format!(
                    "{status}: {}",
                    String::from_utf8_lossy(&bytes)
                )));
            }
            Ok(bytes.to_vec())
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(unavailable(format!(
                    "no answer to {kind} within {} s",
                    timeout.as_secs_f64()
                )))
            })
    }

    pub(crate) fn verify(
        &self,
        canonical: &model::signature::Canonical<'_>,
        signature_hex: &str,
    ) -> bool {
        model::signature::signing_key(&self.secret)
            .is_some_and(|key| canonical.verify(&key, signature_hex))
    }
}

/// Carries out a matching rule: a delay waits, a drop never ends, a refusal fails at once.
async fn apply(rule: &FaultRule) -> Result<(), Cut> {
    match rule.action {
        FaultAction::Refuse => Err(Cut::Refused),
        FaultAction::Drop => std::future::pending().await,
        FaultAction::Delay => {
            tokio::time::sleep(Duration::from_millis(rule.delay_ms)).await;
            Ok(())
        }
    }
}

#[derive(Debug)]
pub(crate) struct Network {
    peers: Peers,
}

impl Network {
    pub(crate) fn new(peers: Peers) -> Network {
        Network { peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, _target: NodeId, node: &BasicNode) -> Connection {
        Connection {
            peers: self.peers.clone(),
            addr: node.addr.clone(),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Connection {
    peers: Peers,
    addr: String,
}

impl Connection {
    /// Sends an encoded request and decodes the peer's `Result<Resp, RaftError<E>>`, all
    /// within openraft's deadline for the call.
    async fn call<Resp, E>(
        &self,
        kind: &str,
        body: Vec<u8>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let exchange = async {
            if let Err(cut) = self.peers.before_send(&self.addr).await {
                let why = match cut {
                    Cut::Refused => "refused (fault injected)",
                    Cut::Dropped => "dropped (fault injected)",
                };
                let cut = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, why);
                return Err(RPCError::Unreachable(Unreachable::new(&cut)));
            }
            let response = self
                .peers
                .signed(&self.addr, kind, body)
                .send()
                .await
                .map_err(|e| {
                    if e.is_connect() {
                        RPCError::Unreachable(Unreachable::new(&e))
                    } else {
                        RPCError::Network(NetworkError::new(&e))
                    }
                })?;
            let status = response.status();
            let bytes = response
                .bytes()
                .await
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
            if !status.is_success() {
                let refused = std::io::Error::other(format!(
                    "{kind} to {}: {status}: {}",
                    self.addr,
                    String::from_utf8_lossy(&bytes)
                ));
                return Err(RPCError::Network(NetworkError::new(&refused)));
            }
            let result: Result<Resp, RaftError<NodeId, E>> = serde_json::from_slice(&bytes)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
            result.map_err(|e| RPCError::RemoteError(openraft::error::RemoteError::new(0, e)))
        };
        let deadline = option.hard_ttl();
        tokio::time::timeout(deadline, exchange)
            .await
            .unwrap_or_else(|_| {
                let late = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{kind} to {}: no answer within {deadline:?}", self.addr),
                );
                Err(RPCError::Network(NetworkError::new(&late)))
            })
    }
}

fn encode_err<E: std::error::Error>(
    e: serde_json::Error,
) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
    RPCError::Network(NetworkError::new(&e))
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let body = serde_json::to_vec(&rpc).map_err(encode_err)?;
        self.call("append", body, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let body = encode_snapshot_chunk(&rpc).map_err(encode_err)?;
        self.call("snapshot", body, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let body = serde_json::to_vec(&rpc).map_err(encode_err)?;
        self.call("vote", body, &option).await
    }
}

/// Everything of an `InstallSnapshotRequest` but its data.
#[derive(Serialize, Deserialize)]
struct SnapshotChunkHeader {
    vote: Vote<NodeId>,
    meta: SnapshotMeta<NodeId, BasicNode>,
    offset: u64,
    done: bool,
}

/// A snapshot chunk as it travels: the header's length (4 bytes, big-endian), the header's
/// JSON, then the chunk's bytes as they are.
pub(crate) fn encode_snapshot_chunk(
    rpc: &InstallSnapshotRequest<TypeConfig>,
) -> Result<Vec<u8>, serde_json::Error> {
    let header = serde_json::to_vec(&SnapshotChunkHeader {
        vote: rpc.vote,
        meta: rpc.meta.clone(),
        offset: rpc.offset,
        done: rpc.done,
    })?;
    let mut body = Vec::with_capacity(4 + header.len() + rpc.data.len());
    body.extend_from_slice(&(header.len() as u32).to_be_bytes());
    body.extend_from_slice(&header);
    body.extend_from_slice(&rpc.data);
    Ok(body)
}

/// The inverse of [`encode_snapshot_chunk`]; a body that does not hold a whole header, or a
/// chunk over [`SNAPSHOT_CHUNK_BYTES`], is malformed.
pub(crate) fn decode_snapshot_chunk(
    body: &[u8],
) -> Result<InstallSnapshotRequest<TypeConfig>, RaftRpcError> {
    let malformed =
        |why: String| RaftRpcError::Malformed(<serde_json::Error as serde::de::Error>::custom(why));
    let (len, rest) = body
        .split_first_chunk::<4>()
        .ok_or_else(|| malformed("snapshot chunk shorter than its length prefix".into()))?;
    let len = u32::from_be_bytes(*len) as usize;
    if len > SNAPSHOT_HEADER_BYTES_MAX || len > rest.len() {
        return Err(malformed(format!(
            "snapshot chunk header of {len} bytes (at most {SNAPSHOT_HEADER_BYTES_MAX}, and {} in the body)",
            rest.len()
        )));
    }
    let (header, data) = rest.split_at(len);
    if data.len() as u64 > SNAPSHOT_CHUNK_BYTES {
        return Err(malformed(format!(
            "snapshot chunk of {} bytes; at most {SNAPSHOT_CHUNK_BYTES}",
            data.len()
        )));
    }
    let header: SnapshotChunkHeader = serde_json::from_slice(header)?;
    Ok(InstallSnapshotRequest {
        vote: header.vote,
        meta: header.meta,
        offset: header.offset,
        data: data.to_vec(),
        done: header.done,
    })
}

/// Serves one raft RPC from a peer; the answer is the JSON of `Result<Resp, RaftError>`.
/// While `disk_full` says this node's disk is under its reserve, requests that would write
/// entries or a snapshot are refused (the leader tries again later), so the log never meets
/// a full disk; heartbeats and votes still go through.
pub(crate) async fn handle(
    raft: &RaftInstance,
    kind: &str,
    body: &[u8],
    disk_full: impl Fn() -> Option<String>,
) -> Result<Vec<u8>, RaftRpcError> {
    let bytes = match kind {
        "append" => {
            let rpc: AppendEntriesRequest<TypeConfig> = serde_json::from_slice(body)?;
            if !rpc.entries.is_empty() {
                if let Some(why) = disk_full() {
                    return Err(RaftRpcError::StorageFull(why));
                }
            }
            serde_json::to_vec(&raft.append_entries(rpc).await)?
        }
        "vote" => serde_json::to_vec(&raft.vote(serde_json::from_slice(body)?).await)?,
        "snapshot" => {
            let rpc = decode_snapshot_chunk(body)?;
            if let Some(why) = disk_full() {
                return Err(RaftRpcError::StorageFull(why));
            }
            serde_json::to_vec(&raft.install_snapshot(rpc).await)?
        }
        other => return Err(RaftRpcError::UnknownKind(other.to_string())),
    };
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, LogId, StoredMembership};

    fn chunk(data: Vec<u8>, done: bool) -> InstallSnapshotRequest<TypeConfig> {
        let log_id = LogId::new(CommittedLeaderId::new(3, 1), 41);
        InstallSnapshotRequest {
            vote: Vote::new_committed(3, 1),
            meta: SnapshotMeta {
                last_log_id: Some(log_id),
                last_membership: StoredMembership::default(),
                snapshot_id: "3-41".into(),
            },
            offset: 1 << 20,
            data,
            done,
        }
    }

    #[test]
    fn snapshot_chunks_travel_as_raw_bytes() {
        let data: Vec<u8> = (0..=255u8)
            .cycle()
            .take(SNAPSHOT_CHUNK_BYTES as usize)
            .collect();
        let body = encode_snapshot_chunk(&chunk(data.clone(), true)).unwrap();
        // The data is carried byte for byte, not as a JSON array (about 3.5 bytes per byte).
        assert!(body.len() < data.len() + 1024, "{} bytes", body.len());
        let back = decode_snapshot_chunk(&body).unwrap();
        assert_eq!(back.data, data);
        assert_eq!((back.offset, back.done), (1 << 20, true));
        assert_eq!(back.meta.snapshot_id, "3-41");
        assert_eq!(back.vote, Vote::new_committed(3, 1));
    }

    #[test]
    fn malformed_snapshot_chunks_are_refused() {
        let good = encode_snapshot_chunk(&chunk(vec![7; 16], false)).unwrap();
        let oversized =
            encode_snapshot_chunk(&chunk(vec![0; SNAPSHOT_CHUNK_BYTES as usize + 1], false))
                .unwrap();
        let mut long_header = good.clone();
        long_header[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        let mut bad_json = good.clone();
        bad_json[4] = b'x';
        for (name, body) in [
            ("empty", &[][..]),
            ("prefix only", &good[..3]),
            ("truncated header", &good[..20]),
            ("header length past the body", &long_header[..]),
            ("header not JSON", &bad_json[..]),
            ("chunk too large", &oversized[..]),
        ] {
            match decode_snapshot_chunk(body) {
                Err(RaftRpcError::Malformed(_)) => {}
                other => panic!("{name}: {:?}", other.map(|r| r.offset)),
            }
        }
    }

    #[test]
    fn fault_rules_are_checked() {
        let rule = |action, delay_ms| FaultRule {
            node: 2,
            action,
            delay_ms,
            direction: Direction::Both,
        };
        assert!(rule(FaultAction::Delay, 250).check().is_ok());
        assert!(rule(FaultAction::Drop, 0).check().is_ok());
        assert!(rule(FaultAction::Delay, 0).check().is_err());
        assert!(rule(FaultAction::Delay, FAULT_DELAY_MS_MAX + 1)
            .check()
            .is_err());
        assert!(rule(FaultAction::Refuse, 10).check().is_err());
    }

    #[tokio::test]
    async fn incoming_rules_apply_to_their_sender_only() {
        client::tls::install_default_provider();
        let link = PeerLink {
            http: reqwest::Client::builder(),
            scheme: "http",
        };
        let peers = Peers::new("00", "127.0.0.1:1", link).unwrap();
        let rule = |node, action, direction| FaultRule {
            node,
            action,
            delay_ms: 0,
            direction,
        };
        peers.set_faults(vec![
            (
                "a:1".into(),
                rule(2, FaultAction::Refuse, Direction::Incoming),
            ),
            (
                "b:1".into(),
                rule(3, FaultAction::Refuse, Direction::Outgoing),
            ),
        ]);
        assert!(peers.admit(Some("a:1")).await.is_err());
        assert!(peers.admit(Some("b:1")).await.is_ok());
        assert!(peers.admit(None).await.is_ok());
        assert!(peers.before_send("a:1").await.is_ok());
        assert!(peers.before_send("b:1").await.is_err());
    }
}
