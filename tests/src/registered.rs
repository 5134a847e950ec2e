//! An instance registered in an ECS cluster `jobs` with a running agent,
//! for the tests of what `run` does and when: drains, leases, power-off.
//!
//! A fixture: a failed setup step panics, which fails the test that asked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::instance::{now, parse_time, phase, Agent, Instance, FAST, PATIENCE};
use blockwatch_core::tags::{TAG_CLUSTER, TAG_LEASE_END};

/// An instance in moto, tagged with cluster `jobs` plus `tags` and
/// registered in that cluster, with a config file of [`FAST`] plus `config`.
#[derive(Debug)]
pub struct Registered {
    pub instance: Instance,
    pub cluster_arn: String,
    pub container_instance: String,
}

pub async fn registered_in_jobs(tags: &[(&str, &str)], config: &str) -> Registered {
    let instance = Instance::with_moto().await;
    let cluster_arn = instance.moto().create_cluster("jobs").await.unwrap();
    let mut all = vec![(TAG_CLUSTER, "jobs")];
    all.extend_from_slice(tags);
    let id = instance.launch(&all, true).await;
    let container_instance = instance
        .moto()
        .register_container_instance(&cluster_arn, &id)
        .await
        .unwrap();
    instance.write_config(&format!("{FAST}{config}"));
    Registered {
        instance,
        cluster_arn,
        container_instance,
    }
}

impl Registered {
    /// Starts a task on the instance; returns the task's ARN.
    pub async fn start_task(&self) -> String {
        self.instance
            .moto()
            .start_task(&self.cluster_arn, &self.container_instance)
            .await
            .unwrap()
    }

    /// The container instance's status as moto reports it.
    pub async fn status_at_moto(&self) -> String {
        self.instance
            .moto()
            .container_instance_status(&self.cluster_arn, &self.container_instance)
            .await
            .unwrap()
    }
}

/// A webhook receiver that answers 503 to its first `refusals` requests and
/// 200 after.
pub fn receiver_refusing_first(refusals: usize) -> crate::stub::StubServer {
    crate::stub::StubServer::start(move |n, _| {
        if n < refusals {
            (503, "busy".into())
        } else {
            (200, "ok".into())
        }
    })
    .unwrap()
}

pub const LEAD: time::Duration = time::Duration::seconds(10);
/// A drain may start at most this late: one poll plus two seconds for a
/// loaded machine.
pub const LATE: time::Duration = time::Duration::seconds(3);
/// How long after a test's own setup (moto, the simulator, the config) a
/// timed event is due: the agent must start and be watching before then.
/// A start takes well under a second on an idle machine; this leaves room
/// for a cold, loaded 2-core CI machine.
pub const STARTUP: time::Duration = time::Duration::seconds(8);
pub const DRAINS: &str = "UpdateContainerInstancesState";

impl Registered {
    /// Tags the instance with a lease ending `from_now` from now, in IMDS
    /// where the agent reads its tags; returns the end. Called after the
    /// fixture is up, so setup time never eats into the lease.
    pub fn lease_ends_in(&self, from_now: time::Duration) -> time::OffsetDateTime {
        let end = now() + from_now;
        self.instance.imds.update(|s| {
            s.tags.get_or_insert_with(Default::default).insert(
                TAG_LEASE_END.into(),
                blockwatch_core::time_text::rfc3339(end),
            );
        });
        end
    }

    pub fn start(&self) -> Agent {
        let agent = self.instance.spawn_run(&[], &[]);
        self.instance
            .wait_for(&agent, PATIENCE, "watching", |s| phase(s) != "joining");
        agent
    }

    pub fn wait_draining(&self, agent: &Agent, within: std::time::Duration) -> serde_json::Value {
        self.instance
            .wait_for(agent, within, "a confirmed drain", |s| {
                s["drain"]["draining_confirmed_at"].is_string()
            })
    }

    pub fn drain_calls(&self) -> usize {
        self.instance.moto().ecs_calls(DRAINS)
    }
}

pub fn started_at(snapshot: &serde_json::Value) -> time::OffsetDateTime {
    parse_time(snapshot["drain"]["started_at"].as_str().unwrap())
}

/// The drain in `snapshot` started at `due`, and at most [`LATE`] after.
pub fn assert_on_time(snapshot: &serde_json::Value, due: time::OffsetDateTime, log: &str) {
    let started = started_at(snapshot);
    assert!(
        started >= due,
        "drained early: started {started}, due {due}\n{log}"
    );
    assert!(
        started <= due + LATE,
        "drained late: started {started}, due {due}\n{log}"
    );
}
