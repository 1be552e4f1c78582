//! Raft RPC from peers: fault rules first, then the registry; a write a follower forwards is
//! checked by the leader as if the client's call had arrived here
//! (`model::State::check_forwarded`) and, for a submit, placed here.

use crate::Node;
use model::Command;

impl Node {
    /// Serves a raft RPC from the peer at `from` (as signed in the request).
    pub async fn raft_rpc(
        &self,
        kind: &str,
        from: Option<&str>,
        body: &[u8],
    ) -> Result<Vec<u8>, registry::RaftRpcError> {
        self.inner.registry.admit_peer(from).await?;
        if kind != "propose" {
            return self.inner.registry.handle_rpc(kind, body).await;
        }
        let command: Command = serde_json::from_slice(body)?;
        if let Err(refused) = self.read(|s| s.check_forwarded(&command)) {
            return self.inner.registry.refuse_forwarded(refused);
        }
        // A signed request's submit is placed inside its wrapper.
        let mut command = command;
        let inner = match &mut command {
            Command::Signed { command: inner, .. } => &mut **inner,
            other => other,
        };
        let taken = std::mem::replace(inner, Command::Batch(Vec::new()));
        *inner = self.placed_if_submit(taken).await;
        self.inner.registry.serve_propose(command).await
    }

    /// A forwarded submit with its jobs placed here (a follower cannot place).
    async fn placed_if_submit(&self, command: Command) -> Command {
        match command {
            Command::SubmitJobs {
                now_ms,
                jobs,
                place,
            } if place.is_empty() => self.placed_submit(now_ms, jobs).await,
            other => other,
        }
    }
}
