//! Placement: which node runs which due job. A pure function, run by the leader; see
//! [`place`]. It knows nothing of raft, processes or time.

use model::{JobId, NodeId};

/// A node as the scheduler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub id: NodeId,
    /// Attempts it may hold at once (running or waiting for a free worker slot).
    pub capacity: u32,
    /// Attempts it holds now.
    pub assigned: u32,
}

/// Jobs placed per node, in the order they should start.
pub type Placement = Vec<(NodeId, Vec<JobId>)>;

/// Places `jobs` (already in priority order) by least-request: each job goes to the node
/// with the fewest assigned attempts relative to its capacity; ties go to the lower node id.
/// Jobs that find no free capacity stay queued (they are simply not in the placement).
pub fn place(nodes: &[NodeView], jobs: &[JobId]) -> Placement {
    let mut load: Vec<(NodeView, Vec<JobId>)> = nodes.iter().map(|n| (n.clone(), Vec::new())).collect();
    for &job in jobs {
        // Least-request by free share, compared exactly: a/b < c/d  <=>  a*d < c*b.
        let best = load
            .iter_mut()
            .filter(|(n, _)| n.assigned < n.capacity)
            .min_by(|(a, _), (b, _)| {
                let lhs = u64::from(a.assigned) * u64::from(b.capacity);
                let rhs = u64::from(b.assigned) * u64::from(a.capacity);
                lhs.cmp(&rhs).then(a.id.cmp(&b.id))
            });
        let Some((node, placed)) = best else { break };
        node.assigned += 1;
        placed.push(job);
    }
    load.into_iter().filter(|(_, placed)| !placed.is_empty()).map(|(n, placed)| (n.id, placed)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    fn check(nodes: &[(NodeId, u32, u32)], jobs: u64, expected: expect_test::Expect) {
        let nodes: Vec<NodeView> =
            nodes.iter().map(|&(id, capacity, assigned)| NodeView { id, capacity, assigned }).collect();
        let jobs: Vec<JobId> = (1..=jobs).map(JobId).collect();
        let placement = place(&nodes, &jobs);
        let text: Vec<String> = placement
            .iter()
            .map(|(node, js)| format!("{node}: {:?}", js.iter().map(|j| j.0).collect::<Vec<_>>()))
            .collect();
        expected.assert_eq(&text.join("\n"));
    }

    #[test]
    fn one_node_takes_up_to_its_capacity() {
        check(&[(1, 3, 0)], 5, expect!["1: [1, 2, 3]"]);
        check(&[(1, 3, 3)], 5, expect![""]);
    }

    #[test]
    fn least_request_spreads_by_free_share() {
        check(&[(1, 4, 0), (2, 4, 2)], 4, expect![[r#"
            1: [1, 2, 3]
            2: [4]"#]]);
        check(&[(1, 2, 0), (2, 8, 0)], 5, expect![[r#"
            1: [1]
            2: [2, 3, 4, 5]"#]]);
    }
}
