//! What a Batch compute environment's description means for the join.

use super::cluster::{ClusterName, InvalidCluster};

/// The parts of `batch:DescribeComputeEnvironments` the join needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ComputeEnvironmentInfo {
    pub name: String,
    pub arn: String,
    /// `MANAGED` or `UNMANAGED`.
    pub kind: String,
    /// `ENABLED` or `DISABLED`.
    pub state: Option<String>,
    /// `VALID`, `INVALID`, `CREATING`, ...
    pub status: Option<String>,
    pub status_reason: Option<String>,
    pub ecs_cluster_arn: Option<String>,
}

/// Why a compute environment cannot be joined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("compute environment {0:?} not found")]
    NotFound(String),
    #[error("compute environment {0:?} is MANAGED: Batch launches and scales its instances itself, so blockwatch only joins UNMANAGED compute environments")]
    Managed(String),
    #[error("compute environment {name:?} has type {kind:?}; blockwatch only joins UNMANAGED compute environments")]
    UnknownType { name: String, kind: String },
    #[error("compute environment {0:?} has no ecsClusterArn yet (is it still being created?)")]
    NoCluster(String),
    #[error("compute environment {name:?} names an unusable cluster: {reason}")]
    BadCluster {
        name: String,
        reason: InvalidCluster,
    },
}

/// The cluster to join, with warnings for states that let the join go ahead
/// but mean no jobs will arrive.
pub fn cluster_of(ce: &ComputeEnvironmentInfo) -> Result<(ClusterName, Vec<String>), Refusal> {
    match ce.kind.as_str() {
        "UNMANAGED" => {}
        "MANAGED" => return Err(Refusal::Managed(ce.name.clone())),
        other => {
            return Err(Refusal::UnknownType {
                name: ce.name.clone(),
                kind: other.to_owned(),
            })
        }
    }
    let arn = ce
        .ecs_cluster_arn
        .as_deref()
        .ok_or_else(|| Refusal::NoCluster(ce.name.clone()))?;
    let cluster = ClusterName::parse(arn).map_err(|reason| Refusal::BadCluster {
        name: ce.name.clone(),
        reason,
    })?;
    let mut warnings = Vec::new();
    if ce.state.as_deref() == Some("DISABLED") {
        warnings.push(format!(
            "compute environment {:?} is DISABLED: the instance joins, but Batch places no jobs until it is enabled",
            ce.name
        ));
    }
    if ce.status.as_deref() == Some("INVALID") {
        warnings.push(format!(
            "compute environment {:?} is INVALID ({}): jobs may not be placed",
            ce.name,
            super::escape::escaped(ce.status_reason.as_deref().unwrap_or("no reason given"))
        ));
    }
    Ok((cluster, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unmanaged() -> ComputeEnvironmentInfo {
        ComputeEnvironmentInfo {
            name: "ce".into(),
            arn: "arn:aws:batch:eu-west-1:123456789012:compute-environment/ce".into(),
            kind: "UNMANAGED".into(),
            state: Some("ENABLED".into()),
            status: Some("VALID".into()),
            status_reason: None,
            ecs_cluster_arn: Some(
                "arn:aws:ecs:eu-west-1:123456789012:cluster/ce_Batch_0b1c".into(),
            ),
        }
    }

    #[test]
    fn takes_the_name_from_ecs_cluster_arn() {
        let (cluster, warnings) = cluster_of(&unmanaged()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cluster.as_str(), "ce_Batch_0b1c");
        assert!(warnings.is_empty());
    }

    #[test]
    fn refuses_managed_and_says_why() {
        let ce = ComputeEnvironmentInfo {
            kind: "MANAGED".into(),
            ..unmanaged()
        };
        let err = cluster_of(&ce)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("MANAGED") && err.contains("scales"), "{err}");
    }

    #[test]
    fn warns_on_disabled_or_invalid() {
        let ce = ComputeEnvironmentInfo {
            state: Some("DISABLED".into()),
            status: Some("INVALID".into()),
            status_reason: Some("bad role".into()),
            ..unmanaged()
        };
        let (_, warnings) = cluster_of(&ce).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(warnings.len(), 2);
        assert!(warnings[1].contains("bad role"));
    }

    #[test]
    fn refuses_a_missing_or_bad_cluster_arn() {
        let ce = ComputeEnvironmentInfo {
            ecs_cluster_arn: None,
            ..unmanaged()
        };
        assert_eq!(cluster_of(&ce), Err(Refusal::NoCluster("ce".into())));
        let ce = ComputeEnvironmentInfo {
            ecs_cluster_arn: Some("arn:aws:ecs:x:1:cluster/a\nb".into()),
            ..unmanaged()
        };
        assert!(matches!(cluster_of(&ce), Err(Refusal::BadCluster { .. })));
    }
}
