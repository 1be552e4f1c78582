//! Raft RPC between nodes: JSON over HTTP. The client side posts to a peer's
//! `/v1/raft/{append,vote,snapshot}`; the server side ([`handle`]) is mounted by the API.

use crate::{RaftInstance, TypeConfig};
use model::NodeId;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeSet;

/// Why a peer's RPC could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum RaftRpcError {
    #[error("unknown raft rpc {0:?}")]
    UnknownKind(String),
    #[error("malformed raft rpc: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("{0}")]
    Unavailable(String),
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

/// Signed HTTP calls to peers.
#[derive(Clone, Debug)]
pub(crate) struct Peers {
    client: reqwest::Client,
    secret: std::sync::Arc<str>,
    /// The fault-injection seam: peer addresses this node sends nothing to, as if the network
    /// between them were cut. Every exchange between nodes is a request from one to the other,
    /// so when both sides block each other no message crosses in either direction: a
    /// partition. Empty unless a test or an operator sets it (`PUT /v1/faults`).
    blocked: std::sync::Arc<std::sync::RwLock<BTreeSet<String>>>,
}

impl Peers {
    pub(crate) fn new(secret: &str) -> Peers {
        Peers {
            client: reqwest::Client::new(),
            secret: secret.into(),
            blocked: Default::default(),
        }
    }

    pub(crate) fn set_blocked(&self, addrs: BTreeSet<String>) {
        *self.blocked.write().unwrap_or_else(|p| p.into_inner()) = addrs;
    }

    pub(crate) fn blocked(&self) -> BTreeSet<String> {
        self.blocked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn is_blocked(&self, addr: &str) -> bool {
        self.blocked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(addr)
    }

    fn signed(&self, addr: &str, kind: &str, body: Vec<u8>) -> reqwest::RequestBuilder {
        use model::signature::{self, Canonical};
        use rand::RngCore;
        let path = format!("/v1/raft/{kind}");
        let mut nonce = [0u8; 16];
        rand::rng().fill_bytes(&mut nonce);
        let nonce = hex::encode(nonce);
        let hash = signature::body_sha256_hex(&body);
        let timestamp_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let canonical = Canonical {
            method: "POST",
            path: &path,
            query: "",
            timestamp_s,
            nonce: &nonce,
            body_sha256_hex: &hash,
        };
        let sig = canonical.sign(&self.secret).unwrap_or_default();
        self.client
            .post(format!("http://{addr}{path}"))
            .header(signature::HEADER_KEY, CLUSTER_KEY_ID)
            .header(signature::HEADER_TIMESTAMP, timestamp_s.to_string())
            .header(signature::HEADER_NONCE, nonce)
            .header(signature::HEADER_CONTENT_SHA256, hash)
            .header(signature::HEADER_SIGNATURE, sig)
            .header("content-type", "application/json")
            .body(body)
    }

    /// A forwarded call to the leader; its answer body.
    pub(crate) async fn call(
        &self,
        addr: &str,
        kind: &str,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, crate::RegistryError> {
        let unavailable =
            |e: String| crate::RegistryError::Unavailable(format!("leader at {addr}: {e}"));
        // Never sent: the caller may send it again (see `Registry::propose`).
        let not_delivered =
            |e: String| crate::RegistryError::NotDelivered(format!("leader at {addr}: {e}"));
        if self.is_blocked(addr) {
            return Err(not_delivered("unreachable (fault injected)".into()));
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
        if !status.is_success() {
            return Err(unavailable(format!(
                "{status}: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        Ok(bytes.to_vec())
    }

    pub(crate) fn verify(
        &self,
        canonical: &model::signature::Canonical<'_>,
        signature_hex: &str,
    ) -> bool {
        canonical.verify(&self.secret, signature_hex)
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
    async fn call<Req, Resp, E>(
        &self,
        kind: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        if self.peers.is_blocked(&self.addr) {
            let cut = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "fault injected");
            return Err(RPCError::Unreachable(Unreachable::new(&cut)));
        }
        let body = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let sent = self
            .peers
            .signed(&self.addr, kind, body)
            .timeout(option.hard_ttl())
            .send()
            .await;
        let response = sent.map_err(|e| {
            if e.is_connect() {
                RPCError::Unreachable(Unreachable::new(&e))
            } else {
                RPCError::Network(NetworkError::new(&e))
            }
        })?;
        let result: Result<Resp, RaftError<NodeId, E>> = response
            .json()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(openraft::error::RemoteError::new(0, e)))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call("snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("vote", &rpc, &option).await
    }
}

/// Serves one raft RPC from a peer; the answer is the JSON of `Result<Resp, RaftError>`.
pub(crate) async fn handle(
    raft: &RaftInstance,
    kind: &str,
    body: &[u8],
) -> Result<Vec<u8>, RaftRpcError> {
    let bytes = match kind {
        "append" => serde_json::to_vec(&raft.append_entries(serde_json::from_slice(body)?).await)?,
        "vote" => serde_json::to_vec(&raft.vote(serde_json::from_slice(body)?).await)?,
        "snapshot" => {
            serde_json::to_vec(&raft.install_snapshot(serde_json::from_slice(body)?).await)?
        }
        other => return Err(RaftRpcError::UnknownKind(other.to_string())),
    };
    Ok(bytes)
}
