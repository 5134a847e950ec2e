//! `join` through its seams: the library's `join` with the test kit's fake
//! sources, no network at all. The same rules run end to end against the
//! IMDS simulator and moto in `join.rs`; here each rule is one small case,
//! and the fake's call log shows exactly which sources were asked.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use blockwatch_core::tags::{TAG_CLUSTER, TAG_COMPUTE_ENVIRONMENT};
use std::collections::BTreeMap;

use blockwatch::exit::AgentError;
use blockwatch::join::{join, JoinRequest};
use blockwatch::sources::AwsFailure;
use blockwatch_testkit::fake_sources::{Failure, FakeInstance};

struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn request(&self) -> JoinRequest {
        JoinRequest {
            config_path: self.dir.path().join("blockwatch.toml"),
            config_path_explicit: false,
            ecs_config: self.dir.path().join("ecs.config"),
            state_dir: self.dir.path().join("state"),
            dry_run: false,
        }
    }

    fn ecs_config(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ecs.config")).unwrap_or_default()
    }
}

fn tagged(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

async fn join_with(instance: &FakeInstance, scratch: &Scratch) -> Result<(), AgentError> {
    join(
        &scratch.request(),
        instance,
        instance,
        instance,
        time::OffsetDateTime::UNIX_EPOCH,
    )
    .await
    .map(|_| ())
}

#[tokio::test]
async fn a_cluster_tag_joins_from_imds_alone() {
    let scratch = Scratch::new();
    let mut instance = FakeInstance::new("i-1");
    instance.imds_tags = Some(tagged(&[(TAG_CLUSTER, "jobs")]));

    join_with(&instance, &scratch).await.unwrap();

    assert_eq!(scratch.ecs_config(), "ECS_CLUSTER=jobs\n");
    assert_eq!(instance.calls(), ["imds:identity", "imds:tags"]);
}

#[tokio::test]
async fn a_compute_environment_tag_costs_one_batch_call() {
    let scratch = Scratch::new();
    let mut instance = FakeInstance::new("i-1");
    instance.imds_tags = Some(tagged(&[(TAG_COMPUTE_ENVIRONMENT, "research")]));
    instance.compute_environments = vec![FakeInstance::unmanaged_compute_environment(
        "research",
        "research_Batch_0b1c",
    )];

    join_with(&instance, &scratch).await.unwrap();

    assert_eq!(scratch.ecs_config(), "ECS_CLUSTER=research_Batch_0b1c\n");
    assert_eq!(
        instance.calls(),
        [
            "imds:identity",
            "imds:tags",
            "batch:DescribeComputeEnvironments"
        ]
    );
}

#[tokio::test]
async fn without_tags_in_imds_the_tags_come_from_describe_tags() {
    let scratch = Scratch::new();
    let mut instance = FakeInstance::new("i-1");
    instance.imds_tags = None;
    instance.described_tags = tagged(&[(TAG_CLUSTER, "jobs")]);

    join_with(&instance, &scratch).await.unwrap();

    assert_eq!(scratch.ecs_config(), "ECS_CLUSTER=jobs\n");
    assert_eq!(
        instance.calls(),
        ["imds:identity", "imds:tags", "ec2:DescribeTags"]
    );
}

#[tokio::test]
async fn a_managed_compute_environment_is_refused_and_nothing_is_written() {
    let scratch = Scratch::new();
    let mut instance = FakeInstance::new("i-1");
    instance.imds_tags = Some(tagged(&[(TAG_COMPUTE_ENVIRONMENT, "auto")]));
    let mut managed = FakeInstance::unmanaged_compute_environment("auto", "auto_Batch_1");
    managed.kind = "MANAGED".to_owned();
    instance.compute_environments = vec![managed];

    let err = join_with(&instance, &scratch).await.unwrap_err();

    assert_eq!(err.exit_code(), 65, "{err}");
    assert!(err.to_string().contains("MANAGED"), "{err}");
    assert_eq!(scratch.ecs_config(), "");
}

#[tokio::test]
async fn a_throttled_batch_is_transient_and_a_denied_one_is_not() {
    for (failure, transient, code) in [
        (AwsFailure::Transient, true, 75),
        (AwsFailure::Denied, false, 77),
    ] {
        let scratch = Scratch::new();
        let mut instance = FakeInstance::new("i-1");
        instance.imds_tags = Some(tagged(&[(TAG_COMPUTE_ENVIRONMENT, "research")]));
        instance
            .failing
            .insert("batch:DescribeComputeEnvironments", Failure::Aws(failure));

        let err = join_with(&instance, &scratch).await.unwrap_err();

        assert_eq!(err.is_transient(), transient, "{err}");
        assert_eq!(err.exit_code(), code, "{err}");
        assert_eq!(scratch.ecs_config(), "", "nothing written on {failure:?}");
    }
}

#[tokio::test]
async fn the_config_file_beats_the_tags_and_needs_no_tags_read() {
    let scratch = Scratch::new();
    std::fs::write(
        scratch.dir.path().join("blockwatch.toml"),
        "cluster = \"from-file\"\n",
    )
    .unwrap();
    let mut instance = FakeInstance::new("i-1");
    instance.imds_tags = Some(tagged(&[(TAG_CLUSTER, "from-tag")]));

    join_with(&instance, &scratch).await.unwrap();

    assert_eq!(scratch.ecs_config(), "ECS_CLUSTER=from-file\n");
    assert_eq!(instance.calls(), ["imds:identity"], "tags are not read");
}

#[tokio::test]
async fn an_unreachable_imds_is_transient_and_writes_nothing() {
    let scratch = Scratch::new();
    let mut instance = FakeInstance::new("i-1");
    instance.failing.insert("imds:identity", Failure::Imds);

    let err = join_with(&instance, &scratch).await.unwrap_err();

    assert!(err.is_transient(), "{err}");
    assert_eq!(scratch.ecs_config(), "");
}
