//! The state store: what a running agent keeps on disk (the state file and
//! the metrics, through [`Records`]), with the names every snapshot carries.

use std::collections::BTreeMap;

use time::OffsetDateTime;

use super::Node;
use crate::core::state::AgentState;
use crate::core::status::Snapshot;
use crate::host::state::Records;

#[derive(Debug)]
pub struct Store {
    records: Records,
    node: Node,
}

impl Store {
    pub fn new(records: Records, node: &Node) -> Self {
        Self {
            records,
            node: node.clone(),
        }
    }

    /// `state` as `blockwatch status` reads it.
    pub fn snapshot(&self, state: &AgentState, now: OffsetDateTime) -> Snapshot {
        Snapshot {
            instance_id: self.node.instance_id.clone(),
            cluster: self.node.cluster.clone(),
            compute_environment: self.node.compute_environment.clone(),
            agent: state.clone(),
            updated_at: now,
            heartbeat: Default::default(),
        }
    }

    /// Writes a state that changed (and the metrics); false when the state
    /// could not be saved.
    pub fn save(
        &mut self,
        state: &AgentState,
        errors: &BTreeMap<&'static str, u64>,
        now: OffsetDateTime,
    ) -> bool {
        self.records.save(self.snapshot(state, now), errors, now)
    }

    /// Once per poll: the heartbeat, a save that failed before, the metrics.
    pub fn tick(
        &mut self,
        state: &AgentState,
        errors: &BTreeMap<&'static str, u64>,
        now: OffsetDateTime,
    ) {
        self.records.tick(self.snapshot(state, now), errors, now);
    }

    /// A few words for the STATUS line while the state is not saved.
    pub fn problem(&self) -> Option<&'static str> {
        self.records.problem()
    }
}
