//! What the agent knows and keeps, shared by the decision, the executor,
//! the power-off and the poll.

use time::OffsetDateTime;

use super::node::Node;
use super::reporter::Reporter;
use super::store::Store;
use crate::actions::webhook::Deliveries;
use blockwatch_core::deadline::Observations;
use blockwatch_core::decision::{AgentState, Policy};
use blockwatch_core::settings::{OnDrained, OnLeaseEnd, Settings};

/// What the agent knows and keeps, which every part reads or writes: the
/// core's inputs and state, the reporter, and the state store.
#[derive(Debug)]
pub(super) struct Books {
    pub policy: Policy,
    pub observed: Observations,
    pub state: AgentState,
    pub reporter: Reporter,
    pub store: Store,
}

impl Books {
    pub(super) fn new(
        settings: &Settings,
        node: &Node,
        store: Store,
        state: AgentState,
        observed: Observations,
        deliveries: Deliveries,
    ) -> Self {
        Self {
            policy: Policy {
                drain_lead: settings.drain_lead.value,
                drain_on_rebalance: settings.drain_on_rebalance.value,
                drain_on_maintenance: settings.drain_on_maintenance.value,
                stop_grace: settings.stop_grace.as_ref().map(|g| g.value),
                power_off_when_drained: settings.on_drained.value == OnDrained::Poweroff,
                enforce_lease_end: settings.on_lease_end.value == OnLeaseEnd::Poweroff,
                job_stop_timeout: settings.job_stop_timeout.as_ref().map(|t| t.value.0),
                stop_tasks: settings.stop_tasks.value,
                checkpoint_lead: settings.checkpoint_lead.as_ref().map(|l| l.value),
                joined: node.cluster.is_some(),
            },
            observed,
            state,
            reporter: Reporter::new(settings, node, deliveries),
            store,
        }
    }

    /// Writes the state file (and metrics); false when the state could not
    /// be saved.
    pub(super) async fn persist(&mut self, now: OffsetDateTime) -> bool {
        self.store
            .save(&self.state, self.reporter.errors(), now)
            .await
    }

    /// A decision, logged with the journald fields of the current state.
    pub(super) fn decision(&self, message: &str) {
        self.reporter.decision(&self.state, message);
    }
}
