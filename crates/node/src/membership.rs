//! Cluster membership: admitting a node, the operator's node actions (drain, promote,
//! remove, ...) and fault injection between peers.

use crate::{now_ms, rejected, unavailable, unexpected, FaultRule, Node, JOIN_WAIT};
use model::{ApiError, Command, ErrorCode, NodeId, Response};
use std::time::Duration;

impl Node {
    /// Admits a new node: gives it an id and the cluster secret, and adds it to the raft
    /// membership (as a learner, then a voter while there are fewer than three) once it
    /// answers.
    pub async fn join(
        &self,
        addr: String,
        slots: u32,
        labels: Vec<String>,
    ) -> Result<(NodeId, String), ApiError> {
        let command = Command::JoinNode {
            addr: addr.clone(),
            slots,
            labels: labels.into_iter().collect(),
            now_ms: now_ms(),
        };
        let id = match rejected(self.propose(command).await?)? {
            Response::Joined { id } => id,
            other => return Err(unexpected(other)),
        };
        let registry = self.inner.registry.clone();
        let shutdown = self.inner.shutdown.clone();
        self.inner.tasks.lock().await.spawn(async move {
            let deadline = tokio::time::Instant::now() + JOIN_WAIT;
            loop {
                match registry.add_member(id, &addr).await {
                    Ok(()) => {
                        tracing::info!(node = id, %addr, "node joined");
                        return;
                    }
                    Err(e) if tokio::time::Instant::now() < deadline => {
                        tracing::debug!(node = id, error = %e, "adding node; trying again");
                    }
                    Err(e) => {
                        tracing::warn!(node = id, error = %e, "gave up adding node");
                        return;
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        });
        Ok((id, self.inner.cluster_secret.clone()))
    }

    /// Changes a node's raft role or status: `drain`, `undrain`, `promote`, `demote`, `remove`.
    pub async fn node_action(&self, id: NodeId, action: &str) -> Result<(), ApiError> {
        if self.read(|s| s.node(id).is_none()) {
            return Err(ApiError::new(ErrorCode::NotFound, format!("no node {id}")));
        }
        let status = |status| Command::SetNodeStatus { node: id, status };
        match action {
            "drain" => {
                rejected(self.propose(status(model::NodeStatus::Draining)).await?).map(|_| ())
            }
            "undrain" => rejected(self.propose(status(model::NodeStatus::Up)).await?).map(|_| ()),
            "promote" => self
                .inner
                .registry
                .change_role(id, registry::Role::Voter)
                .await
                .map_err(unavailable),
            "demote" => self
                .inner
                .registry
                .change_role(id, registry::Role::Learner)
                .await
                .map_err(unavailable),
            "remove" => {
                if id == self.id() {
                    return Err(ApiError::new(
                        ErrorCode::Conflict,
                        "a node cannot remove itself; ask another node",
                    ));
                }
                self.inner
                    .registry
                    .change_role(id, registry::Role::Removed)
                    .await
                    .map_err(unavailable)?;
                let now = now_ms();
                self.propose(Command::AbandonAttempts {
                    now_ms: now,
                    node: id,
                    code: ErrorCode::NodeRemoved.as_str().into(),
                })
                .await?;
                rejected(self.propose(Command::RemoveNode { node: id }).await?).map(|_| ())
            }
            other => Err(ApiError::new(
                ErrorCode::InvalidInput,
                format!("unknown node action {other:?}"),
            )),
        }
    }

    /// Sets the fault-injection rules for raft traffic between this node and others (see
    /// [`crate::NodeConfig::fault_injection`] and [`FaultRule`]); an empty list heals. A
    /// rule on one node covers only that node's side: a partition both ways needs both sides
    /// told, or `both` rules.
    pub fn set_faults(&self, rules: Vec<FaultRule>) -> Result<Vec<FaultRule>, ApiError> {
        if !self.inner.config.fault_injection {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "fault injection is off on this node (start it with --fault-injection)",
            ));
        }
        let rules = self.read(|s| {
            rules
                .into_iter()
                .map(|rule| {
                    rule.check()
                        .map_err(|why| ApiError::new(ErrorCode::InvalidInput, why))?;
                    let node = s.node(rule.node).ok_or_else(|| {
                        ApiError::new(ErrorCode::NotFound, format!("no node {}", rule.node))
                    })?;
                    Ok((node.addr.clone(), rule))
                })
                .collect::<Result<Vec<_>, ApiError>>()
        })?;
        self.inner.registry.set_faults(rules);
        Ok(self.inner.registry.faults())
    }

    /// Digests of the state this node applied, at every [`crate::STATE_DIGEST_EVERY_ENTRIES`]-th
    /// log index (the latest [`crate::STATE_DIGESTS_MAX`]): nodes that applied the same log
    /// agree at every index they both have. Recorded only with fault injection on, for the
    /// chaos suite's checker.
    pub fn state_digests(&self) -> Result<Vec<crate::StateDigest>, ApiError> {
        if !self.inner.config.fault_injection {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "state digests are recorded only with fault injection (--fault-injection)",
            ));
        }
        Ok(self.inner.registry.state_digests())
    }
}
