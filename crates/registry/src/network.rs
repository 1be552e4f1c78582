//! Raft RPC between nodes: JSON over HTTP. The client side posts to a peer's
//! `/v1/raft/{append,vote,snapshot}`; the server side ([`handle`]) is mounted by the API.

use crate::{RaftInstance, TypeConfig};
use model::NodeId;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why a peer's raft RPC could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum RaftRpcError {
    #[error("unknown raft rpc {0:?}")]
    UnknownKind(String),
    #[error("malformed raft rpc: {0}")]
    Malformed(#[from] serde_json::Error),
}

#[derive(Debug, Default)]
pub(crate) struct Network {
    client: reqwest::Client,
}

impl Network {
    pub(crate) fn new() -> Network {
        Network { client: reqwest::Client::new() }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, _target: NodeId, node: &BasicNode) -> Connection {
        Connection { client: self.client.clone(), addr: node.addr.clone() }
    }
}

#[derive(Debug)]
pub(crate) struct Connection {
    client: reqwest::Client,
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
        let url = format!("http://{}/v1/raft/{kind}", self.addr);
        let sent = self.client.post(url).json(req).timeout(option.hard_ttl()).send().await;
        let response = sent.map_err(|e| {
            if e.is_connect() {
                RPCError::Unreachable(Unreachable::new(&e))
            } else {
                RPCError::Network(NetworkError::new(&e))
            }
        })?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            response.json().await.map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
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
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
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
pub(crate) async fn handle(raft: &RaftInstance, kind: &str, body: &[u8]) -> Result<Vec<u8>, RaftRpcError> {
    let bytes = match kind {
        "append" => serde_json::to_vec(&raft.append_entries(serde_json::from_slice(body)?).await)?,
        "vote" => serde_json::to_vec(&raft.vote(serde_json::from_slice(body)?).await)?,
        "snapshot" => serde_json::to_vec(&raft.install_snapshot(serde_json::from_slice(body)?).await)?,
        other => return Err(RaftRpcError::UnknownKind(other.to_string())),
    };
    Ok(bytes)
}
