//! The ECS adapter (`blockwatch::actions::ecs::Ecs`) against moto through
//! the real SDK: a task is running until the host says it stopped (the ECS
//! agent's `/v1/tasks`, else ListTasks + DescribeTasks), introspection
//! answers are capped, an introspection ARN is confirmed before any write,
//! and one failed StopTask does not keep the others from being stopped.
//!
//! Over 400 lines: many independent scenarios of one adapter.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockwatch::actions::ecs::{
    ContainerService, Ecs, HostTask, Introspection, IntrospectionError, INTROSPECTION_CAP,
    INTROSPECTION_TASKS_CAP,
};
use blockwatch::sources::aws::Aws;
use blockwatch::sources::imds::Imds;
use blockwatch_testkit::aws_proxy::{AwsProxy, Fault};
use blockwatch_testkit::introspection::IntrospectionStandIn;
use blockwatch_testkit::moto::{self, MotoServer};
use blockwatch_testkit::stub::StubServer;
use tokio::sync::watch;

const CLUSTER: &str = "jobs";
/// Nothing listens there: the ECS agent is down.
const CLOSED_INTROSPECTION: &str = "http://127.0.0.1:1/v1/metadata";

/// moto with our instance registered in [`CLUSTER`].
struct Registered {
    moto: MotoServer,
    instance_id: String,
    container_instance: String,
}

impl Registered {
    /// Starts a task on our container instance; returns its ARN.
    async fn start_task(&self) -> String {
        self.moto
            .start_task(CLUSTER, &self.container_instance)
            .await
            .unwrap()
    }
}

async fn registered() -> Registered {
    let moto = MotoServer::start().await.unwrap();
    moto.create_cluster(CLUSTER).await.unwrap();
    let instance_id = moto
        .launch_instance(&[("Name", "ecs-host-test")])
        .await
        .unwrap();
    let container_instance = moto
        .register_container_instance(CLUSTER, &instance_id)
        .await
        .unwrap();
    Registered {
        moto,
        instance_id,
        container_instance,
    }
}

/// The adapter on the ECS API at `endpoint`, with one attempt a call (so an
/// injected fault fails exactly one call), and the ECS agent at `introspection_url`.
/// `times` lookups of our instance through `ecs`, each finding our container instance.
async fn finds_ours(ecs: &Ecs, r: &Registered, times: usize) {
    for _ in 0..times {
        let found = ecs.find_container_instance(CLUSTER, &r.instance_id).await;
        assert_eq!(
            found.unwrap().as_deref(),
            Some(r.container_instance.as_str())
        );
    }
}

async fn ecs_at(endpoint: &str, introspection_url: &str) -> Ecs {
    let sdk = moto::sdk_config(endpoint)
        .await
        .to_builder()
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
        .build();
    let (_updates, aws) = watch::channel(Arc::new(Aws::with_config(Imds::new(), sdk)));
    let http = blockwatch::host::http::client().unwrap();
    Ecs::new(
        aws,
        Introspection::new(http, introspection_url.to_owned()),
        Err("no Docker in these tests".to_owned()),
    )
}

fn arns(tasks: &[HostTask]) -> Vec<&str> {
    let mut arns: Vec<&str> = tasks.iter().map(|t| t.arn.as_str()).collect();
    arns.sort_unstable();
    arns
}

fn sorted(mut arns: Vec<&str>) -> Vec<&str> {
    arns.sort_unstable();
    arns
}

#[tokio::test]
async fn a_stopped_task_counts_until_its_stop_timeout_ends_on_the_host() {
    let r = registered().await;
    let job = r.start_task().await;
    let other = r.start_task().await;
    let stop_timeout = Duration::from_secs(8);
    let stand_in = IntrospectionStandIn::start(&r.moto, CLUSTER, &r.container_instance)
        .unwrap()
        .with_stop_timeout(stop_timeout);
    let ecs = ecs_at(&r.moto.endpoint(), &stand_in.metadata_url()).await;

    let before = ecs.tasks(CLUSTER, &r.container_instance).await.unwrap();
    assert_eq!(arns(&before), sorted(vec![job.as_str(), other.as_str()]));
    assert!(before.iter().all(|t| !t.stop_requested), "{before:?}");

    let stopped = Instant::now();
    r.moto.stop_task(CLUSTER, &job).await.unwrap();
    assert!(stand_in.sync(Duration::from_secs(30)));
    let stopping = ecs.tasks(CLUSTER, &r.container_instance).await.unwrap();
    assert!(
        stopping.contains(&HostTask {
            arn: job.clone(),
            stop_requested: true
        }),
        "told to stop, still running on the host: {stopping:?}"
    );

    let after = loop {
        let tasks = ecs.tasks(CLUSTER, &r.container_instance).await.unwrap();
        if !tasks.iter().any(|t| t.arn == job) {
            break tasks;
        }
        assert!(stopped.elapsed() < stop_timeout + Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        stopped.elapsed() >= stop_timeout,
        "gone {:?} after StopTask, before the stop timeout",
        stopped.elapsed()
    );
    assert_eq!(
        after,
        [HostTask {
            arn: other,
            stop_requested: false
        }]
    );
    // The host's view came from the ECS agent, with no AWS call.
    assert!(stand_in.task_requests() >= 3);
    assert_eq!(r.moto.ecs_calls("ListTasks"), 0);
    assert_eq!(r.moto.ecs_calls("DescribeTasks"), 0);
}

#[tokio::test]
async fn without_introspection_tasks_come_from_list_tasks_and_describe_tasks() {
    let r = registered().await;
    let job = r.start_task().await;
    let other = r.start_task().await;
    let ecs = ecs_at(&r.moto.endpoint(), CLOSED_INTROSPECTION).await;

    let before = ecs.tasks(CLUSTER, &r.container_instance).await.unwrap();
    assert_eq!(arns(&before), sorted(vec![job.as_str(), other.as_str()]));
    assert!(before.iter().all(|t| !t.stop_requested), "{before:?}");

    // moto sets lastStatus STOPPED at StopTask (AWS keeps it RUNNING
    // through the stop timeout): the task is gone at once.
    r.moto.stop_task(CLUSTER, &job).await.unwrap();
    let after = ecs.tasks(CLUSTER, &r.container_instance).await.unwrap();
    assert_eq!(
        after,
        [HostTask {
            arn: other.clone(),
            stop_requested: false
        }]
    );
    assert!(
        r.moto.ecs_calls("ListTasks") >= 4,
        "both desired statuses, twice"
    );
    assert!(r.moto.ecs_calls("DescribeTasks") >= 1);
}

/// What AWS answers for a task in its stop timeout: desiredStatus STOPPED,
/// lastStatus still RUNNING. moto never does, so the proxy answers for it.
#[tokio::test]
async fn without_introspection_a_task_ecs_still_reports_running_is_kept_as_stop_requested() {
    let r = registered().await;
    let job = r.start_task().await;
    r.moto.stop_task(CLUSTER, &job).await.unwrap();
    let proxy = AwsProxy::start(r.moto.addr()).unwrap();
    let in_stop_timeout = serde_json::json!({
        "tasks": [{
            "taskArn": job,
            "clusterArn": format!("arn:aws:ecs:{}:{}:cluster/{CLUSTER}", moto::REGION, moto::ACCOUNT_ID),
            "containerInstanceArn": r.container_instance,
            "desiredStatus": "STOPPED",
            "lastStatus": "RUNNING",
        }],
        "failures": [],
    });
    proxy.inject(
        "DescribeTasks",
        Fault::Respond {
            status: 200,
            headers: vec![("Content-Type".into(), "application/x-amz-json-1.1".into())],
            body: in_stop_timeout.to_string(),
        },
        None,
    );
    let ecs = ecs_at(&proxy.endpoint(), CLOSED_INTROSPECTION).await;

    let tasks = ecs.tasks(CLUSTER, &r.container_instance).await.unwrap();

    assert_eq!(
        tasks,
        [HostTask {
            arn: job,
            stop_requested: true
        }]
    );
    assert_eq!(proxy.seen("DescribeTasks"), 1);
}

/// `/v1/tasks` of `size` bytes or more: a phantom task running, then
/// stopped tasks as filler.
fn tasks_answer(phantom: &str, size: usize) -> String {
    let running = serde_json::json!({"Arn": phantom, "DesiredStatus": "RUNNING", "KnownStatus": "RUNNING", "Containers": []});
    let mut tasks = vec![running.to_string()];
    // `{"Tasks":[` + the tasks joined by commas + `]}`.
    let mut length = 12 + tasks[0].len();
    let mut n = 0;
    while length < size {
        n += 1;
        let filler = serde_json::json!({
            "Arn": format!("arn:aws:ecs:eu-west-1:123456789012:task/jobs/filler{n:032}"),
            "DesiredStatus": "STOPPED",
            "KnownStatus": "STOPPED",
            "Containers": [],
        })
        .to_string();
        length += filler.len() + 1;
        tasks.push(filler);
    }
    let answer = format!("{{\"Tasks\":[{}]}}", tasks.join(","));
    assert_eq!(answer.len(), length);
    answer
}

#[tokio::test]
async fn a_tasks_answer_over_its_1_mib_cap_is_refused_and_the_api_is_used() {
    let r = registered().await;
    let job = r.start_task().await;
    let phantom = "arn:aws:ecs:eu-west-1:123456789012:task/jobs/phantom";
    let serve = |size: usize| {
        let metadata =
            serde_json::json!({"Cluster": CLUSTER, "ContainerInstanceArn": r.container_instance})
                .to_string();
        let tasks = tasks_answer(phantom, size);
        StubServer::start(move |_, request| match request.path.as_str() {
            "/v1/tasks" => (200, tasks.clone()),
            _ => (200, metadata.clone()),
        })
        .unwrap()
    };

    // Just under the cap: the ECS agent's answer is used, past the 64 KiB
    // of a metadata answer (a busy host's 3 h of stopped tasks).
    let under = serve(INTROSPECTION_TASKS_CAP - 1024);
    let ecs = ecs_at(&r.moto.endpoint(), &under.url("/v1/metadata")).await;
    let tasks = ecs.tasks(CLUSTER, &r.container_instance).await.unwrap();
    assert_eq!(arns(&tasks), [phantom]);
    assert_eq!(r.moto.ecs_calls("ListTasks"), 0);

    // Over it: refused, and ECS's own view is used.
    let over = serve(INTROSPECTION_TASKS_CAP + 1);
    let ecs = ecs_at(&r.moto.endpoint(), &over.url("/v1/metadata")).await;
    let tasks = ecs.tasks(CLUSTER, &r.container_instance).await.unwrap();
    assert_eq!(
        tasks,
        [HostTask {
            arn: job,
            stop_requested: false
        }]
    );
    assert_eq!(r.moto.ecs_calls("ListTasks"), 2);
    assert!(over.received().iter().any(|q| q.path == "/v1/tasks"));
}

/// A server that answers every request with 200 and `body` `repeat` times,
/// then closes: no Content-Length, the size is known only by reading.
fn unsized_server(body: Vec<u8>, repeat: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut head = [0u8; 4096];
            let _ = stream.read(&mut head);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
            for _ in 0..repeat {
                if stream.write_all(&body).is_err() {
                    break;
                }
            }
        }
    });
    format!("http://{addr}/v1/metadata")
}

fn too_large<T>(answer: &Result<T, IntrospectionError>, path: &str) -> bool {
    matches!(answer, Err(IntrospectionError::TooLarge { url, .. }) if url.ends_with(path))
}

#[tokio::test]
async fn an_answer_without_a_length_is_read_only_up_to_the_cap() {
    let http = blockwatch::host::http::client().unwrap();

    // Valid JSON one byte over each cap.
    let json = serde_json::json!({"Cluster": CLUSTER, "Tasks": []}).to_string();
    let over = |cap: usize| format!("{json}{}", " ".repeat(cap + 1 - json.len())).into_bytes();
    let introspection =
        Introspection::new(http.clone(), unsized_server(over(INTROSPECTION_CAP), 1));
    let metadata = introspection.metadata().await;
    assert!(too_large(&metadata, "/v1/metadata"), "{metadata:?}");
    let introspection = Introspection::new(
        http.clone(),
        unsized_server(over(INTROSPECTION_TASKS_CAP), 1),
    );
    let tasks = introspection.tasks().await;
    assert!(too_large(&tasks, "/v1/tasks"), "{tasks:?}");
    let containers = introspection.task_containers().await;
    assert!(too_large(&containers, "/v1/tasks"), "{containers:?}");

    // 1 GiB: only a reader that stops at the cap says so within the 1 s
    // request timeout.
    let endless = Introspection::new(http, unsized_server(vec![b' '; 1024], 1024 * 1024));
    let metadata = endless.metadata().await;
    assert!(too_large(&metadata, "/v1/metadata"), "{metadata:?}");
}

#[tokio::test]
async fn an_oversized_metadata_answer_is_refused_and_the_instance_is_looked_up_by_id() {
    let r = registered().await;
    let padding = " ".repeat(INTROSPECTION_CAP);
    let metadata = format!(
        "{}{padding}",
        serde_json::json!({"Cluster": CLUSTER, "ContainerInstanceArn": r.container_instance})
    );
    let stub = StubServer::start(move |_, _| (200, metadata.clone())).unwrap();
    let ecs = ecs_at(&r.moto.endpoint(), &stub.url("/v1/metadata")).await;

    let found = ecs
        .find_container_instance(CLUSTER, &r.instance_id)
        .await
        .unwrap();

    assert_eq!(found.as_deref(), Some(r.container_instance.as_str()));
    assert_eq!(r.moto.ecs_calls("ListContainerInstances"), 1);
    assert!(
        !ecs.agent_answers().await,
        "an oversized answer is not the ECS agent"
    );
}

#[tokio::test]
async fn the_introspection_arn_is_confirmed_once_and_another_instances_is_refused() {
    let r = registered().await;
    let other_instance = r
        .moto
        .launch_instance(&[("Name", "ecs-host-test")])
        .await
        .unwrap();
    let others = r
        .moto
        .register_container_instance(CLUSTER, &other_instance)
        .await
        .unwrap();
    let naming = |arn: &str| {
        let body = serde_json::json!({"Cluster": CLUSTER, "ContainerInstanceArn": arn}).to_string();
        StubServer::start(move |_, _| (200, body.clone())).unwrap()
    };

    // Ours: confirmed by one DescribeContainerInstances, then trusted.
    let ours = naming(&r.container_instance);
    let ecs = ecs_at(&r.moto.endpoint(), &ours.url("/v1/metadata")).await;
    finds_ours(&ecs, &r, 3).await;
    assert_eq!(r.moto.ecs_calls("DescribeContainerInstances"), 1);
    assert_eq!(r.moto.ecs_calls("ListContainerInstances"), 0);

    // Another EC2 instance's: refused (asked once), ours found by instance id.
    let wrong = naming(&others);
    let ecs = ecs_at(&r.moto.endpoint(), &wrong.url("/v1/metadata")).await;
    finds_ours(&ecs, &r, 2).await;
    assert_eq!(r.moto.ecs_calls("ListContainerInstances"), 2);
    // 1 before, 1 to refuse theirs, 1 per lookup by instance id.
    assert_eq!(r.moto.ecs_calls("DescribeContainerInstances"), 1 + 1 + 2);

    // So a drain writes to ours only.
    ecs.set_draining(CLUSTER, &r.container_instance, true)
        .await
        .unwrap();
    let status = |arn: String| {
        let moto = &r.moto;
        async move { moto.container_instance_status(CLUSTER, &arn).await.unwrap() }
    };
    assert_eq!(status(r.container_instance.clone()).await, "DRAINING");
    assert_eq!(status(others).await, "ACTIVE");
}

#[tokio::test]
async fn stop_tasks_goes_on_after_a_throttled_stop_task() {
    let r = registered().await;
    let mut tasks = Vec::new();
    for _ in 0..3 {
        tasks.push(
            r.moto
                .start_task(CLUSTER, &r.container_instance)
                .await
                .unwrap(),
        );
    }
    let proxy = AwsProxy::start(r.moto.addr()).unwrap();
    proxy.inject("StopTask", Fault::throttling_json(), Some(1));
    let ecs = ecs_at(&proxy.endpoint(), CLOSED_INTROSPECTION).await;

    let report = ecs.stop_tasks(CLUSTER, &tasks, "blockwatch: test").await;

    assert_eq!(report.stopped, tasks[1..]);
    assert_eq!(report.failed.len(), 1, "{:?}", report.failed);
    let (task, err) = &report.failed[0];
    assert_eq!(task, &tasks[0]);
    assert!(err.is_throttled(), "{err}");
    assert_eq!(proxy.seen("StopTask"), 3);
    let left = ecs.tasks(CLUSTER, &r.container_instance).await.unwrap();
    assert_eq!(
        left,
        [HostTask {
            arn: tasks[0].clone(),
            stop_requested: false
        }]
    );
    for task in &tasks[1..] {
        let reason = r.moto.task_stopped_reason(CLUSTER, task).await.unwrap();
        assert_eq!(reason.as_deref(), Some("blockwatch: test"));
    }
}
