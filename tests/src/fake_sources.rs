//! Fakes of the agent's source traits (`InstanceMetadata`, `TagDirectory`,
//! `ComputeEnvironments`, `InstanceCapacity`): scripted answers and a log of
//! every call, so `join` and the lookups can be tested without a network.
//! The real adapters are tested against the IMDS simulator and moto.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use blockwatch::sources::batch::ComputeEnvironments;
use blockwatch::sources::ec2::{Ec2Deadlines, InstanceCapacity, TagDirectory};
use blockwatch::sources::imds::{IdentityDocument, InstanceMetadata};
use blockwatch::sources::{AwsFailure, CallError};
use blockwatch_core::compute_environment::ComputeEnvironmentInfo;
use time::OffsetDateTime;

/// How a fake call fails, when it is scripted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// IMDS does not answer.
    Imds,
    /// The AWS call fails this way.
    Aws(AwsFailure),
}

/// One instance as the sources see it. Every field is public: a test sets
/// what it needs and reads [`FakeInstance::calls`] afterwards.
#[derive(Debug)]
pub struct FakeInstance {
    pub identity: IdentityDocument,
    /// The tags in IMDS; `None` when the instance was launched without
    /// tags in metadata.
    pub imds_tags: Option<BTreeMap<String, String>>,
    /// What `ec2:DescribeTags` answers.
    pub described_tags: BTreeMap<String, String>,
    pub compute_environments: Vec<ComputeEnvironmentInfo>,
    pub ec2_deadlines: Ec2Deadlines,
    pub shutdown_behavior: Option<String>,
    /// Calls (by name, as `"batch:DescribeComputeEnvironments"`) scripted to fail.
    pub failing: BTreeMap<&'static str, Failure>,
    calls: Mutex<Vec<&'static str>>,
}

impl FakeInstance {
    /// An instance with no tags, no compute environment and no EC2 end dates.
    pub fn new(instance_id: &str) -> Self {
        Self {
            identity: IdentityDocument {
                instance_id: instance_id.to_owned(),
                region: "eu-west-1".to_owned(),
                availability_zone: "eu-west-1a".to_owned(),
                instance_type: "c6i.large".to_owned(),
                account_id: Some("123456789012".to_owned()),
                pending_time: OffsetDateTime::UNIX_EPOCH,
            },
            imds_tags: Some(BTreeMap::new()),
            described_tags: BTreeMap::new(),
            compute_environments: Vec::new(),
            ec2_deadlines: Ec2Deadlines::default(),
            shutdown_behavior: Some("terminate".to_owned()),
            failing: BTreeMap::new(),
            calls: Mutex::new(Vec::new()),
        }
    }

    /// Every call made so far, in order.
    pub fn calls(&self) -> Vec<&'static str> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// An UNMANAGED compute environment `name` whose cluster is `cluster`.
    pub fn unmanaged_compute_environment(name: &str, cluster: &str) -> ComputeEnvironmentInfo {
        ComputeEnvironmentInfo {
            name: name.to_owned(),
            arn: format!("arn:aws:batch:eu-west-1:123456789012:compute-environment/{name}"),
            kind: "UNMANAGED".to_owned(),
            state: Some("ENABLED".to_owned()),
            status: Some("VALID".to_owned()),
            status_reason: None,
            ecs_cluster_arn: Some(format!(
                "arn:aws:ecs:eu-west-1:123456789012:cluster/{cluster}"
            )),
        }
    }

    fn call(&self, name: &'static str) -> Result<(), CallError> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(name);
        match self.failing.get(name) {
            None => Ok(()),
            Some(Failure::Imds) => Err(CallError::Imds {
                path: name.to_owned(),
                detail: "scripted failure".to_owned(),
            }),
            Some(Failure::Aws(kind)) => Err(CallError::Aws {
                api: name,
                kind: *kind,
                detail: "scripted failure".to_owned(),
            }),
        }
    }
}

impl InstanceMetadata for FakeInstance {
    async fn identity(&self) -> Result<IdentityDocument, CallError> {
        self.call("imds:identity")?;
        Ok(self.identity.clone())
    }

    async fn tags(&self) -> Result<Option<BTreeMap<String, String>>, CallError> {
        self.call("imds:tags")?;
        Ok(self.imds_tags.clone())
    }
}

impl TagDirectory for FakeInstance {
    async fn instance_tags(&self, _: &str) -> Result<BTreeMap<String, String>, CallError> {
        self.call("ec2:DescribeTags")?;
        Ok(self.described_tags.clone())
    }
}

impl ComputeEnvironments for FakeInstance {
    async fn describe_compute_environment(
        &self,
        name: &str,
    ) -> Result<Option<ComputeEnvironmentInfo>, CallError> {
        self.call("batch:DescribeComputeEnvironments")?;
        Ok(self
            .compute_environments
            .iter()
            .find(|ce| ce.name == name || ce.arn == name)
            .cloned())
    }
}

impl InstanceCapacity for FakeInstance {
    async fn ec2_deadlines(&self, _: &str, _: OffsetDateTime) -> Result<Ec2Deadlines, CallError> {
        self.call("ec2:DescribeInstances")?;
        Ok(self.ec2_deadlines.clone())
    }

    async fn capacity_block_end(&self, _: &str) -> Result<Option<OffsetDateTime>, CallError> {
        self.call("ec2:DescribeCapacityReservations")?;
        Ok(self
            .ec2_deadlines
            .capacity_block_end
            .as_ref()
            .map(|(end, _)| *end))
    }

    async fn shutdown_behavior(&self, _: &str) -> Result<Option<String>, CallError> {
        self.call("ec2:DescribeInstanceAttribute")?;
        Ok(self.shutdown_behavior.clone())
    }
}
