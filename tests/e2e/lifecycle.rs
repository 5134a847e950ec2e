//! The Auto Scaling termination lifecycle hook, completed by the real agent:
//! moto for ECS and Auto Scaling (the group, its hook, the instance in it),
//! the test kit's AWS proxy for the two calls moto does not serve
//! (`RecordLifecycleActionHeartbeat`, `CompleteLifecycleAction`), and the
//! IMDS simulator saying `Terminated`.
//!
//! Timed checks measure from a moment after each test's own setup, with
//! the margins of a slow, shared 2-core CI.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use blockwatch_testkit::aws_proxy::{AwsProxy, Fault, LifecycleCall};
use blockwatch_testkit::instance::{parse_time, phase, Agent, PATIENCE};
use blockwatch_testkit::registered::{receiver_refusing_first, registered_in_jobs, Registered};

const GROUP: &str = "batch-asg";
const HOOK: &str = "blockwatch-drain";
/// Nothing can ever listen on port 1: the ECS agent's API "is down".
const NO_INTROSPECTION: &str = "http://127.0.0.1:1/v1/metadata";
const HEARTBEAT: &str = "RecordLifecycleActionHeartbeat";
const COMPLETE: &str = "CompleteLifecycleAction";

/// An instance registered in `jobs`, in Auto Scaling group [`GROUP`] with
/// termination hook [`HOOK`] (heartbeat timeout `heartbeat_timeout` s),
/// its AWS calls through the proxy; `config` added to the config file.
async fn in_a_group(heartbeat_timeout: i32, config: &str) -> (Registered, AwsProxy, String) {
    let mut f = registered_in_jobs(&[], config).await;
    let id = f.instance.imds.state().instance_id;
    f.instance
        .moto()
        .auto_scaling_group_with_hook(GROUP, HOOK, &id, heartbeat_timeout)
        .await
        .unwrap();
    let proxy = AwsProxy::start(f.instance.moto().addr()).unwrap();
    f.instance.aws_endpoint = proxy.endpoint();
    (f, proxy, id)
}

fn spawn(f: &Registered) -> Agent {
    let agent = f
        .instance
        .spawn_run(&["--ecs-introspection-url", NO_INTROSPECTION], &[]);
    f.instance
        .wait_for(&agent, PATIENCE, "watching", |s| phase(s) == "watching");
    agent
}

fn terminated(f: &Registered) {
    f.instance
        .imds
        .update(|s| s.target_lifecycle_state = Some("Terminated".into()));
}

fn calls(proxy: &AwsProxy, operation: &str) -> Vec<LifecycleCall> {
    proxy
        .lifecycle_calls()
        .into_iter()
        .filter(|c| c.operation == operation)
        .collect()
}

/// Stops `task` (its job ends) and waits until the agent completed the
/// hook; returns the state then.
async fn stop_until_completed(f: &Registered, agent: &Agent, task: &str) -> serde_json::Value {
    f.instance
        .moto()
        .stop_task(&f.cluster_arn, task)
        .await
        .unwrap();
    f.instance
        .wait_for(agent, PATIENCE, "the hook completed", |s| {
            s["lifecycle"]["completed_at"].is_string()
        })
}

#[tokio::test]
async fn heartbeats_while_a_task_runs_then_continue_after_the_drain_once_across_a_restart() {
    let receiver = receiver_refusing_first(0);
    let url = receiver.url("/hooks/lifecycle");
    // Heartbeat timeout 4 s: a heartbeat every 2 s.
    let (f, proxy, id) = in_a_group(4, &format!("webhook_url = {url:?}\n")).await;
    proxy.lifecycle_waits(GROUP, HOOK, &id);
    let task = f.start_task().await;
    let mut agent = spawn(&f);
    terminated(&f);

    let beating = f
        .instance
        .wait_for(&agent, PATIENCE, "two heartbeats", |s| {
            s["lifecycle"]["heartbeats"].as_u64() >= Some(2)
        });
    assert_eq!(beating["lifecycle"]["hook"]["group"], GROUP);
    assert_eq!(beating["lifecycle"]["hook"]["name"], HOOK);
    assert!(
        calls(&proxy, COMPLETE).is_empty(),
        "not while the task runs"
    );
    // No group tag in IMDS: the group comes from the API.
    assert_eq!(proxy.seen("DescribeAutoScalingInstances"), 1);
    let heartbeats = calls(&proxy, HEARTBEAT);
    assert!(heartbeats
        .iter()
        .all(|c| c.accepted && c.group == GROUP && c.hook == HOOK && c.instance_id == id));

    let done = stop_until_completed(&f, &agent, &task).await;
    let completed = calls(&proxy, COMPLETE);
    assert_eq!(completed.len(), 1, "{completed:?}");
    assert_eq!(completed[0].result.as_deref(), Some("CONTINUE"));
    assert!(completed[0].accepted, "{completed:?}");
    assert!(
        done["drain"]["drained_at"].is_string(),
        "after the drain: {done}"
    );
    agent.wait_for_log("completed with CONTINUE", PATIENCE);
    let status = f.instance.status_json(f.instance.command());
    assert_eq!(status["lifecycle_hook"], HOOK, "{status}");
    assert!(status["lifecycle_completed_at"].is_string(), "{status}");
    // Webhooks are delivered in the background: wait for it.
    let waited_from = std::time::Instant::now();
    let completion = loop {
        let events: Vec<serde_json::Value> = receiver
            .received()
            .iter()
            .filter_map(|r| serde_json::from_str(&r.body).ok())
            .collect();
        if let Some(found) = events.iter().find(|e| e["event"] == "lifecycle-completed") {
            break found.clone();
        }
        assert!(
            waited_from.elapsed() < PATIENCE,
            "no lifecycle-completed event: {events:?}\n{}",
            agent.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(completion["lifecycle_hook"], HOOK);
    assert_eq!(completion["autoscaling_group"], GROUP);

    // Restarted: the completion is read back; nothing more is sent.
    agent.kill_9();
    let sent = proxy.lifecycle_calls().len();
    let restarted = f
        .instance
        .spawn_run(&["--ecs-introspection-url", NO_INTROSPECTION], &[]);
    restarted.wait_for_log("resuming", PATIENCE);
    f.instance.wait_ticks(&restarted, 5);
    assert_eq!(calls(&proxy, COMPLETE).len(), 1, "never completed twice");
    assert_eq!(
        proxy.lifecycle_calls().len(),
        sent,
        "no heartbeat after the completion:\n{}",
        restarted.log()
    );
}

/// `DescribeLifecycleHooks` as Auto Scaling answers it, for a hook with a
/// short global timeout (moto always reports 48 hours).
fn short_hook(heartbeat: u32, global: u32) -> Fault {
    Fault::Respond {
        status: 200,
        headers: vec![("Content-Type".into(), "text/xml".into())],
        body: format!(
            "<DescribeLifecycleHooksResponse xmlns=\"http://autoscaling.amazonaws.com/doc/2011-01-01/\"><DescribeLifecycleHooksResult><LifecycleHooks><member><LifecycleHookName>{HOOK}</LifecycleHookName><AutoScalingGroupName>{GROUP}</AutoScalingGroupName><LifecycleTransition>autoscaling:EC2_INSTANCE_TERMINATING</LifecycleTransition><HeartbeatTimeout>{heartbeat}</HeartbeatTimeout><GlobalTimeout>{global}</GlobalTimeout><DefaultResult>ABANDON</DefaultResult></member></LifecycleHooks></DescribeLifecycleHooksResult><ResponseMetadata><RequestId>blockwatch-proxy</RequestId></ResponseMetadata></DescribeLifecycleHooksResponse>"
        ),
    }
}

#[tokio::test]
async fn the_global_timeout_bounds_the_wait_when_a_task_never_ends() {
    let (f, proxy, id) = in_a_group(4, "").await;
    // Heartbeat timeout 4 s, global timeout 12 s: completed 10 s after
    // `Terminated` was seen, whatever still runs.
    proxy.inject("DescribeLifecycleHooks", short_hook(4, 12), None);
    proxy.lifecycle_waits(GROUP, HOOK, &id);
    // The group's tag, as Auto Scaling puts it on its instances, in IMDS.
    f.instance.imds.update(|s| {
        s.tags
            .get_or_insert_with(Default::default)
            .insert("aws:autoscaling:groupName".into(), GROUP.into());
    });
    f.start_task().await;
    let agent = spawn(&f);
    terminated(&f);

    let done = f
        .instance
        .wait_for(&agent, PATIENCE, "the hook completed", |s| {
            s["lifecycle"]["completed_at"].is_string()
        });
    let seen = parse_time(done["terminated_seen_at"].as_str().unwrap());
    let completed_at = parse_time(done["lifecycle"]["completed_at"].as_str().unwrap());
    assert!(
        completed_at >= seen + time::Duration::seconds(10),
        "not before the bound: seen {seen}, completed {completed_at}"
    );
    assert!(
        completed_at < seen + time::Duration::seconds(12),
        "before the global timeout: seen {seen}, completed {completed_at}\n{}",
        agent.log()
    );
    assert_eq!(done["drain"]["running_tasks"], 1, "the task still runs");
    assert_eq!(calls(&proxy, COMPLETE).len(), 1);
    assert!(
        calls(&proxy, HEARTBEAT).len() >= 3,
        "{:?}",
        proxy.lifecycle_calls()
    );
    assert_eq!(
        proxy.seen("DescribeAutoScalingInstances"),
        0,
        "the group came from its tag"
    );
    let after = proxy.lifecycle_calls().len();
    f.instance.wait_ticks(&agent, 3);
    assert_eq!(proxy.lifecycle_calls().len(), after, "nothing after it");
}

#[tokio::test]
async fn the_configured_hook_is_the_one_kept_alive_and_completed() {
    // The group has two termination hooks; [`HOOK`], another team's, is
    // listed first. Only the configured one is blockwatch's to complete.
    const OURS: &str = "batch-drain";
    let (f, proxy, id) = in_a_group(4, &format!("lifecycle_hook = {OURS:?}\n")).await;
    f.instance
        .moto()
        .termination_hook(GROUP, OURS, 4)
        .await
        .unwrap();
    proxy.lifecycle_waits(GROUP, HOOK, &id);
    proxy.lifecycle_waits(GROUP, OURS, &id);
    let task = f.start_task().await;
    let agent = spawn(&f);
    terminated(&f);

    f.instance.wait_for(&agent, PATIENCE, "a heartbeat", |s| {
        s["lifecycle"]["heartbeats"].as_u64() >= Some(1)
    });
    let done = stop_until_completed(&f, &agent, &task).await;
    assert_eq!(done["lifecycle"]["hook"]["name"], OURS);
    let sent = proxy.lifecycle_calls();
    assert!(
        sent.iter().all(|c| c.hook == OURS && c.accepted),
        "only the configured hook: {sent:?}"
    );
    let completed = calls(&proxy, COMPLETE);
    assert_eq!(completed.len(), 1, "{completed:?}");
    assert_eq!(completed[0].result.as_deref(), Some("CONTINUE"));
    let status = f.instance.status_json(f.instance.command());
    assert_eq!(status["lifecycle_hook"], OURS, "{status}");
}

#[tokio::test]
async fn an_action_auto_scaling_no_longer_has_is_left_alone_and_the_drain_goes_on() {
    // Auto Scaling has no action waiting for this instance (it timed out,
    // or someone completed it): the proxy answers ValidationError.
    let (f, proxy, _) = in_a_group(4, "").await;
    let task = f.start_task().await;
    let agent = spawn(&f);
    terminated(&f);

    let gone = f
        .instance
        .wait_for(&agent, PATIENCE, "the action gone", |s| {
            s["lifecycle"]["gone_at"].is_string()
        });
    assert!(gone["lifecycle"]["completed_at"].is_null(), "{gone}");
    let sent = proxy.lifecycle_calls();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(!sent[0].accepted);
    agent.wait_for_log("nothing more is sent for it", PATIENCE);

    f.instance
        .moto()
        .stop_task(&f.cluster_arn, &task)
        .await
        .unwrap();
    f.instance.wait_for(&agent, PATIENCE, "drained", |s| {
        s["drain"]["drained_at"].is_string()
    });
    f.instance.wait_ticks(&agent, 3);
    assert_eq!(
        proxy.lifecycle_calls().len(),
        1,
        "never retried, not even after the drain:\n{}",
        agent.log()
    );
}
