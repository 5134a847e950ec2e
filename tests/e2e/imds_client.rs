//! blockwatch's IMDS adapter (aws-config's client) against the simulator.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use blockwatch_core::tags::{TAG_CLUSTER, TAG_LEASE_END};
use std::collections::BTreeMap;

use blockwatch::sources::imds::{Imds, InstanceMetadata};
use blockwatch_testkit::imds::{ImdsSimulator, InstanceState};
use time::macros::datetime;

fn simulator(state: InstanceState) -> (ImdsSimulator, Imds) {
    let sim = ImdsSimulator::start(state).unwrap();
    let imds = Imds::with_endpoint(&sim.endpoint()).unwrap();
    (sim, imds)
}

#[tokio::test]
async fn reads_the_identity_document_including_the_launch_time() {
    let (_sim, imds) = simulator(InstanceState {
        instance_id: "i-0aaaabbbbccccdddd".into(),
        region: "us-west-2".into(),
        availability_zone: "us-west-2b".into(),
        instance_type: "m7g.large".into(),
        pending_time: datetime!(2026-11-29 08:00:05 UTC),
        ..InstanceState::default()
    });
    let identity = imds.identity().await.unwrap();
    assert_eq!(identity.instance_id, "i-0aaaabbbbccccdddd");
    assert_eq!(identity.region, "us-west-2");
    assert_eq!(identity.availability_zone, "us-west-2b");
    assert_eq!(identity.instance_type, "m7g.large");
    assert_eq!(identity.pending_time, datetime!(2026-11-29 08:00:05 UTC));
}

#[tokio::test]
async fn reads_only_blockwatch_tags_and_tells_disabled_from_absent() {
    let tags: BTreeMap<_, _> = [
        (TAG_CLUSTER, "c1"),
        ("Name", "worker"),
        (TAG_LEASE_END, "2026-11-29T20:00:00Z"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let (sim, imds) = simulator(InstanceState {
        tags: Some(tags),
        ..InstanceState::default()
    });
    let read = imds.tags().await.unwrap().unwrap();
    assert_eq!(read.len(), 2, "{read:?}");
    assert_eq!(read.get(TAG_CLUSTER).map(String::as_str), Some("c1"));
    assert!(
        !sim.exchanges().iter().any(|e| e.path.ends_with("/Name")),
        "non-blockwatch tags are not fetched"
    );

    sim.update(|s| s.tags = Some(BTreeMap::new()));
    assert_eq!(
        imds.tags().await.unwrap(),
        Some(BTreeMap::new()),
        "enabled but empty"
    );
    sim.update(|s| s.tags = None);
    assert_eq!(imds.tags().await.unwrap(), None, "disabled in metadata");
}

#[tokio::test]
async fn absent_notices_are_none_not_errors() {
    let (sim, imds) = simulator(InstanceState::default());
    for path in [
        "/latest/meta-data/spot/instance-action",
        "/latest/meta-data/events/recommendations/rebalance",
        "/latest/meta-data/events/maintenance/scheduled",
        "/latest/meta-data/autoscaling/target-lifecycle-state",
        "/latest/user-data",
    ] {
        assert_eq!(imds.get_optional(path).await.unwrap(), None, "{path}");
    }
    sim.update(|s| s.target_lifecycle_state = Some("Terminated".into()));
    assert_eq!(
        imds.get_optional("/latest/meta-data/autoscaling/target-lifecycle-state")
            .await
            .unwrap()
            .as_deref(),
        Some("Terminated")
    );
}

#[tokio::test]
async fn one_token_serves_many_reads() {
    let (sim, imds) = simulator(InstanceState::default());
    imds.identity().await.unwrap();
    imds.tags().await.unwrap();
    let puts = || sim.exchanges().iter().filter(|e| e.method == "PUT").count();
    imds.get_optional("/latest/meta-data/instance-id")
        .await
        .unwrap();
    assert_eq!(puts(), 1);
    assert!(imds.identity().await.is_ok());
    let identity_reads = sim
        .exchanges()
        .iter()
        .filter(|e| e.path.contains("instance-identity"))
        .count();
    assert_eq!(identity_reads, 1, "the identity document is cached");
}

#[tokio::test]
async fn a_dead_endpoint_is_an_error_naming_the_path() {
    // Port 1 is privileged and outside the ephemeral range: no other test's
    // server can be listening there (a port picked free and dropped could be).
    let imds = Imds::with_endpoint("http://127.0.0.1:1").unwrap();
    let err = imds.identity().await.unwrap_err().to_string();
    assert!(
        err.contains("/latest/dynamic/instance-identity/document"),
        "{err}"
    );
}
