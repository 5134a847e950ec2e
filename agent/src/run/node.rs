//! This instance as every part of the loop names it.

use crate::join::{Resolved, Unjoined};
use blockwatch_core::escape::escape;

/// This instance as the journal, the state file and the ECS calls name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub instance_id: String,
    /// None when degraded: no cluster, so no ECS call is ever made.
    pub cluster: Option<String>,
    /// Why `run` goes on without a cluster (escaped: one line).
    pub degraded: Option<String>,
    pub compute_environment: Option<String>,
}

impl Node {
    pub fn of(resolved: &Resolved) -> Self {
        Self {
            instance_id: resolved.instance_id.clone(),
            cluster: Some(resolved.cluster.to_string()),
            degraded: None,
            compute_environment: resolved
                .compute_environment
                .as_ref()
                .map(|ce| ce.value.clone()),
        }
    }

    pub fn unjoined(unjoined: &Unjoined) -> Self {
        Self {
            instance_id: unjoined
                .identity
                .as_ref()
                .map_or("unknown", |i| i.instance_id.as_str())
                .to_owned(),
            cluster: None,
            degraded: Some(escape(&unjoined.reason.to_string())),
            compute_environment: unjoined
                .compute_environment
                .as_ref()
                .map(|ce| ce.value.clone()),
        }
    }
}
