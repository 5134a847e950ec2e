//! The moto harness: starts, seeds through the Rust SDK, stops by PID.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use blockwatch_core::tags::TAG_COMPUTE_ENVIRONMENT;
use blockwatch_testkit::moto::MotoServer;

#[tokio::test]
async fn seeds_a_compute_environment_an_instance_and_a_container_instance_then_stops() {
    let moto = MotoServer::start().await.unwrap();
    let pid = moto.pid();
    assert!(moto.endpoint().starts_with("http://127.0.0.1:"));

    let cluster_arn = moto.create_unmanaged_ce("harness-ce", true).await.unwrap();
    assert!(
        cluster_arn.contains(":cluster/OnDemand_Batch_"),
        "{cluster_arn}"
    );
    let instance_id = moto
        .launch_instance(&[(TAG_COMPUTE_ENVIRONMENT, "harness-ce")])
        .await
        .unwrap();
    assert!(instance_id.starts_with("i-"));

    let tags = aws_sdk_ec2::Client::new(moto.sdk())
        .describe_tags()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("resource-id")
                .values(&instance_id)
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(tags
        .tags()
        .iter()
        .any(|t| t.key() == Some(TAG_COMPUTE_ENVIRONMENT) && t.value() == Some("harness-ce")));

    let container_instance = moto
        .register_container_instance(&cluster_arn, &instance_id)
        .await
        .unwrap();
    let listed = aws_sdk_ecs::Client::new(moto.sdk())
        .list_container_instances()
        .cluster(&cluster_arn)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.container_instance_arns(), [container_instance]);

    drop(moto);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "moto_server {pid} still running"
    );
}
