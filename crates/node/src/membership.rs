//! Cluster membership: admitting a node, the operator's node actions (drain, promote,
//! remove, ...) and fault injection between peers.
//!
//! A join, step by step (so that a join can never cost the quorum):
//! 1. the new node asks any member; the leader appends `JoinNode`, which gives it an id and
//!    the status `joining`; the member answers with the id and the cluster secret;
//! 2. the leader's [`admit`] pass (every liveness scan) adds each joining node that is not a
//!    member yet as a *learner* and replicates to it; a learner has no vote, so one that
//!    never catches up changes nothing for the quorum;
//! 3. the new node catches up, syncs and registers (`RegisterNode`: status `up`);
//! 4. [`admit`] then makes a registered, live learner a voter while there are fewer than
//!    [`registry::VOTERS_DEFAULT`] voters;
//! 5. a node still `joining` `NodeConfig::join_catch_up` after its `JoinNode` is removed
//!    again, from the membership and from the state (event `join_failed`): the membership
//!    is as it was before the join.
//!
//! Any leader carries these steps on: they are read from the replicated state, not from a
//! task on the member that took the join.

use crate::{now_ms, rejected, unavailable, unexpected, FaultRule, Node};
use model::{ApiError, Command, ErrorCode, EventKind, NewEvent, NodeId, NodeStatus, Response};
use registry::Role;
use std::collections::BTreeMap;

/// What a node that joins is handed (over TLS, or plain HTTP where the cluster asked for it).
#[derive(Debug)]
pub struct Joined {
    pub id: NodeId,
    pub cluster_secret: String,
    pub issued: Option<crate::tls::Issued>,
}

impl Node {
    /// Admits a new node: gives it an id, the cluster secret and, for a certificate request
    /// (`csr`, PEM), its certificate from the cluster CA. The request is checked and signed
    /// before anything is proposed, so a bad one leaves no joining node behind. The leader
    /// adds it to the raft membership as a learner and makes it a voter once it has caught
    /// up (see the module doc).
    pub async fn join(
        &self,
        addr: String,
        slots: u32,
        labels: Vec<String>,
        csr: Option<String>,
    ) -> Result<Joined, ApiError> {
        let issued = match (&self.inner.certs, csr) {
            (Some(certs), Some(csr)) => Some(crate::tls::issue(certs, &csr)?),
            (None, Some(_)) => {
                return Err(ApiError::new(
                    ErrorCode::InvalidInput,
                    "this cluster serves plain HTTP (--insecure-http): a node joins it with --insecure-http and no certificate request",
                ))
            }
            (_, None) => None,
        };
        let command = Command::JoinNode {
            addr,
            slots,
            labels: labels.into_iter().collect(),
            now_ms: now_ms(),
        };
        let id = match rejected(self.propose(command).await?)? {
            Response::Joined { id } => id,
            other => return Err(unexpected(other)),
        };
        Ok(Joined {
            id,
            cluster_secret: self.inner.cluster_secret.clone(),
            issued,
        })
    }

    /// Changes a node's raft role or status: `drain`, `undrain`, `promote`, `demote`, `remove`.
    pub async fn node_action(&self, id: NodeId, action: &str) -> Result<(), ApiError> {
        if self.read(|s| s.node(id).is_none()) {
            return Err(ApiError::new(ErrorCode::NotFound, format!("no node {id}")));
        }
        let status = |status| Command::SetNodeStatus { node: id, status };
        match action {
            "drain" => rejected(self.propose(status(NodeStatus::Draining)).await?).map(|_| ()),
            "undrain" => rejected(self.propose(status(NodeStatus::Up)).await?).map(|_| ()),
            "promote" => self
                .inner
                .registry
                .change_role(id, Role::Voter)
                .await
                .map_err(unavailable),
            "demote" => self
                .inner
                .registry
                .change_role(id, Role::Learner)
                .await
                .map_err(unavailable),
            "remove" => {
                if id == self.id() {
                    return Err(ApiError::new(
                        ErrorCode::Conflict,
                        "a node cannot remove itself; ask another node",
                    ));
                }
                self.remove_node(id, ErrorCode::NodeRemoved.as_str(), None)
                    .await
            }
            other => Err(ApiError::new(
                ErrorCode::InvalidInput,
                format!("unknown node action {other:?}"),
            )),
        }
    }

    /// Takes a node out of the raft membership (if it is in it), then out of the state with
    /// its attempts failed over (`code`) and `event` recorded, the latter in one entry.
    async fn remove_node(
        &self,
        id: NodeId,
        code: &str,
        event: Option<NewEvent>,
    ) -> Result<(), ApiError> {
        if self.members().iter().any(|(member, _)| *member == id) {
            self.inner
                .registry
                .change_role(id, Role::Removed)
                .await
                .map_err(unavailable)?;
        }
        let now = now_ms();
        let mut commands = vec![
            Command::AbandonAttempts {
                now_ms: now,
                node: id,
                code: code.into(),
            },
            Command::RemoveNode { node: id },
        ];
        if let Some(event) = event {
            commands.push(Command::RecordEvents {
                now_ms: now,
                events: vec![event],
            });
        }
        match self.propose(Command::Batch(commands)).await? {
            Response::Batch(answers) => answers
                .into_iter()
                .try_for_each(|answer| rejected(answer).map(|_| ())),
            other => Err(unexpected(other)),
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

/// One pass of the leader over joining nodes and learners: steps 2, 4 and 5 of the module
/// doc. Each change is retried on the next pass if it fails.
pub(crate) async fn admit(node: &Node, now_ms: u64) {
    let members: BTreeMap<NodeId, Role> = node.members().into_iter().collect();
    let catch_up_ms = node.inner.config.join_catch_up.as_millis() as u64;
    let (joining, live_learners) = node.read(|s| {
        let joining: Vec<(NodeId, String, u64)> = s
            .nodes()
            .filter(|n| n.status == NodeStatus::Joining)
            .map(|n| (n.id, n.addr.clone(), n.last_heartbeat_ms))
            .collect();
        let live: Vec<NodeId> = s
            .nodes()
            .filter(|n| n.status == NodeStatus::Up && members.get(&n.id) == Some(&Role::Learner))
            .map(|n| n.id)
            .collect();
        (joining, live)
    });
    // `JoinNode` stamps the node's heartbeat time; a joining node sends none until it
    // registers, so that is when it joined.
    for (id, addr, joined_ms) in joining {
        if now_ms.saturating_sub(joined_ms) > catch_up_ms {
            let message = format!(
                "node {id} ({addr}) did not catch up within {} s of joining; removed again",
                node.inner.config.join_catch_up.as_secs()
            );
            tracing::warn!(node = id, "{message}");
            let event = NewEvent {
                kind: EventKind::JoinFailed,
                node: Some(id),
                message,
            };
            if let Err(e) = node
                .remove_node(id, ErrorCode::NodeRemoved.as_str(), Some(event))
                .await
            {
                tracing::warn!(node = id, error = %e, "could not remove a node that failed to join");
            }
        } else if !members.contains_key(&id) {
            match node.inner.registry.add_learner(id, &addr).await {
                Ok(()) => tracing::info!(node = id, %addr, "added a joining node as a learner"),
                Err(e) => tracing::debug!(node = id, error = %e, "adding a learner; again later"),
            }
        }
    }
    let mut voters = members.values().filter(|r| **r == Role::Voter).count();
    for id in live_learners {
        if voters >= registry::VOTERS_DEFAULT {
            break;
        }
        match node.inner.registry.change_role(id, Role::Voter).await {
            Ok(()) => {
                voters += 1;
                let message = format!("node {id} caught up and became a voter ({voters} voters)");
                node.record_events(vec![NewEvent {
                    kind: EventKind::VoterAdded,
                    node: Some(id),
                    message,
                }])
                .await;
            }
            Err(e) => tracing::warn!(node = id, error = %e, "could not make a learner a voter"),
        }
    }
}
