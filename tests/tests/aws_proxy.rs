//! The AWS fault proxy in front of moto: forwards, injects faults per
//! operation, and never lets a hung connection block another.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use aws_config::retry::RetryConfig;
use aws_sdk_ecs::error::ProvideErrorMetadata;
use blockwatch_testkit::aws_proxy::{AwsProxy, Fault};
use blockwatch_testkit::moto::{sdk_config, MotoServer};

async fn clients(
    proxy: &AwsProxy,
) -> (
    aws_sdk_ecs::Client,
    aws_sdk_ec2::Client,
    aws_sdk_batch::Client,
) {
    let sdk = sdk_config(&proxy.endpoint())
        .await
        .into_builder()
        .retry_config(RetryConfig::disabled())
        .build();
    (
        aws_sdk_ecs::Client::new(&sdk),
        aws_sdk_ec2::Client::new(&sdk),
        aws_sdk_batch::Client::new(&sdk),
    )
}

#[tokio::test]
async fn forwards_and_injects_faults_per_operation_and_count() {
    let moto = MotoServer::start().await.unwrap();
    moto.create_cluster("proxied").await.unwrap();
    let proxy = AwsProxy::start(moto.addr()).unwrap();
    let (ecs, ec2, batch) = clients(&proxy).await;

    // Forwarded unchanged.
    let listed = ecs.list_clusters().send().await.unwrap();
    assert_eq!(listed.cluster_arns().len(), 1);
    assert_eq!(proxy.seen("ListClusters"), 1);

    // Throttled once (JSON protocol), then forwarded again.
    proxy.inject("ListClusters", Fault::throttling_json(), Some(1));
    let err = ecs.list_clusters().send().await.unwrap_err();
    assert_eq!(err.code(), Some("ThrottlingException"), "{err:?}");
    ecs.list_clusters().send().await.unwrap();
    assert_eq!(proxy.seen("ListClusters"), 3);

    // Other operations are not affected by a rule for one operation.
    proxy.inject("DescribeClusters", Fault::access_denied_json(), None);
    ecs.list_clusters().send().await.unwrap();
    let err = ecs.describe_clusters().send().await.unwrap_err();
    assert_eq!(err.code(), Some("AccessDeniedException"), "{err:?}");

    // EC2's query protocol: the action is in the body.
    proxy.inject("DescribeInstances", Fault::throttling_ec2(), Some(1));
    let err = ec2.describe_instances().send().await.unwrap_err();
    assert_eq!(err.code(), Some("RequestLimitExceeded"), "{err:?}");
    ec2.describe_instances().send().await.unwrap();
    assert_eq!(proxy.seen("DescribeInstances"), 2);

    // Batch's REST path is the lower-cased operation.
    proxy.inject(
        "DescribeComputeEnvironments",
        Fault::server_error(),
        Some(1),
    );
    let err = batch
        .describe_compute_environments()
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        err.raw_response().map(|r| r.status().as_u16()),
        Some(500),
        "{err:?}"
    );
    batch.describe_compute_environments().send().await.unwrap();

    proxy.clear();
    ecs.describe_clusters().send().await.unwrap();
}

#[tokio::test]
async fn a_hung_connection_times_out_without_blocking_others_and_reset_resets() {
    let moto = MotoServer::start().await.unwrap();
    let proxy = AwsProxy::start(moto.addr()).unwrap();
    proxy.inject("Hang", Fault::Hang, None);
    proxy.inject("Reset", Fault::Reset, None);

    let mut hung = TcpStream::connect(proxy.addr()).unwrap();
    hung.set_read_timeout(Some(Duration::from_millis(800)))
        .unwrap();
    hung.write_all(b"POST /Hang HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        .unwrap();

    // While it hangs, another connection is answered.
    let (ecs, _, _) = clients(&proxy).await;
    ecs.list_clusters().send().await.unwrap();

    let started = Instant::now();
    let mut buf = [0u8; 16];
    let err = hung.read(&mut buf).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    let mut reset = TcpStream::connect(proxy.addr()).unwrap();
    reset
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    reset
        .write_all(b"POST /Reset HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    let outcome = reset.read(&mut buf);
    assert!(
        matches!(&outcome, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "{outcome:?}"
    );
    assert_eq!(proxy.seen("Hang"), 1);
    assert_eq!(proxy.seen("Reset"), 1);

    // Dropping the proxy releases the hung connection.
    drop(proxy);
    hung.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let after = hung.read(&mut buf);
    assert!(matches!(after, Ok(0)) || after.is_err(), "{after:?}");
}
