//! The state store: what a running agent keeps on disk (the state file and
//! the metrics, through [`Records`]), with the names every snapshot carries.

use std::collections::BTreeMap;
use std::path::PathBuf;

use time::OffsetDateTime;

use super::deadline_file::DeadlineFiles;
use super::Node;
use crate::core::state::AgentState;
use crate::core::status::Snapshot;
use crate::host::state::Records;

#[derive(Debug)]
pub struct Store {
    records: Records,
    node: Node,
    /// The files a job reads its deadline from; none in unit tests.
    deadline_files: Option<DeadlineFiles>,
}

impl Store {
    pub fn new(records: Records, node: &Node) -> Self {
        Self {
            records,
            node: node.clone(),
            deadline_files: None,
        }
    }

    /// Also keeps the deadline files in `dir`, from the first save or tick.
    pub fn with_deadline_files(mut self, dir: PathBuf) -> Self {
        self.deadline_files = Some(DeadlineFiles::new(dir, &self.node.instance_id));
        self
    }

    /// The deadline files follow the state, written before the state file
    /// so that they exist once it does.
    fn follow_deadline(&mut self, state: &AgentState, now: OffsetDateTime) {
        if let Some(files) = self.deadline_files.as_mut() {
            files.follow(state, now);
        }
    }

    /// `state` as `blockwatch status` reads it.
    pub fn snapshot(&self, state: &AgentState, now: OffsetDateTime) -> Snapshot {
        Snapshot {
            instance_id: self.node.instance_id.clone(),
            cluster: self.node.cluster.clone(),
            degraded: self.node.degraded.clone(),
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
        self.follow_deadline(state, now);
        self.records.save(self.snapshot(state, now), errors, now)
    }

    /// Once per poll: the heartbeat, a save that failed before, the metrics.
    pub fn tick(
        &mut self,
        state: &AgentState,
        errors: &BTreeMap<&'static str, u64>,
        now: OffsetDateTime,
    ) {
        self.follow_deadline(state, now);
        self.records.tick(self.snapshot(state, now), errors, now);
    }

    /// A few words for the STATUS line while the state is not saved.
    pub fn problem(&self) -> Option<&'static str> {
        self.records.problem()
    }
}
