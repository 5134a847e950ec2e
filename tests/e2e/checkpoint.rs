//! The checkpoint signal with real containers: the real agent, moto for
//! ECS, the IMDS simulator, the ECS agent's introspection stand-in mapping
//! each task to a real container, and a private dockerd running the jobs
//! as Batch runs them (host networking, the deadline directory mounted
//! read-only). The agent reaches that dockerd through `DOCKER_HOST`.
//!
//! Timed checks measure from a moment after each test's own setup (moto,
//! dockerd, the containers), with the margins of a slow, shared 2-core CI.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use blockwatch_core::time_text::rfc3339;
use blockwatch_testkit::docker::PrivateDocker;
use blockwatch_testkit::imds::SpotInstanceAction;
use blockwatch_testkit::instance::{now, parse_time, phase, Agent, PATIENCE};
use blockwatch_testkit::introspection::IntrospectionStandIn;
use blockwatch_testkit::job::{JobContainer, JobSpec, DEADLINE_MOUNT};
use blockwatch_testkit::registered::{
    receiver_refusing_first, registered_in_jobs, Registered, LATE, STARTUP,
};
use blockwatch_testkit::stub::StubServer;

/// A unit of the jobs' work: short, so a test sees units pass.
const UNIT: Duration = Duration::from_secs(1);
/// How long a job may wait for a signal that must come.
const SIGNAL_PATIENCE: Duration = Duration::from_secs(90);

/// An instance registered in `jobs`, with a private dockerd for its jobs
/// and the ECS agent's stand-in that knows them.
struct Host {
    f: Registered,
    docker: PrivateDocker,
    ecs_agent: IntrospectionStandIn,
    metrics: PathBuf,
    deadline_dir: PathBuf,
}

async fn host(config: &str) -> Host {
    let f = registered_in_jobs(&[], "").await;
    let powered_off = f.instance.root.path().join("powered-off");
    let metrics = f.instance.root.path().join("blockwatch.prom");
    let deadline_dir = f.instance.deadline_dir();
    f.instance.write_config(&format!(
        "poll_interval = \"1s\"\ndrain_poll_interval = \"1s\"\nlease_refresh_interval = \"1s\"\n\
         poweroff_command = \"echo off >> {}\"\nmetrics_file = {:?}\n{config}",
        powered_off.display(),
        metrics.display().to_string()
    ));
    let docker = PrivateDocker::start().unwrap();
    let ecs_agent =
        IntrospectionStandIn::start(f.instance.moto(), &f.cluster_arn, &f.container_instance)
            .unwrap()
            .with_stop_timeout(Duration::from_secs(3))
            .with_docker(&docker);
    std::fs::create_dir_all(&deadline_dir).unwrap();
    Host {
        f,
        docker,
        ecs_agent,
        metrics,
        deadline_dir,
    }
}

impl Host {
    /// A task placed by ECS whose container is a real job; its task ARN.
    async fn job(&self, spec: JobSpec<'_>) -> (String, JobContainer) {
        let task = self.f.start_task().await;
        let job = JobContainer::start(&self.docker, spec).unwrap();
        self.ecs_agent.attach(&task, job.id(), "job");
        (task, job)
    }

    fn spec<'a>(&'a self, name: &'a str, signal: Option<&'a str>) -> JobSpec<'a> {
        JobSpec {
            checkpoint_signal: signal,
            ..JobSpec::new(name, &self.deadline_dir, UNIT)
        }
    }

    /// `blockwatch run` beside the stand-in, reaching the private dockerd.
    fn start_agent(&self) -> Agent {
        let url = self.ecs_agent.metadata_url();
        let host = self.docker.host();
        let agent = self.f.instance.spawn_run(
            &["--ecs-introspection-url", &url],
            &[("DOCKER_HOST", host.as_str())],
        );
        self.f
            .instance
            .wait_for(&agent, PATIENCE, "watching", |s| phase(s) != "joining");
        agent
    }

    /// The state once the checkpoint pass is over.
    fn wait_signaled(&self, agent: &Agent) -> serde_json::Value {
        self.f
            .instance
            .wait_for(agent, SIGNAL_PATIENCE, "a checkpoint pass", |s| {
                s["checkpoint"]["signaled_at"].is_string()
            })
    }
}

fn at(value: &serde_json::Value) -> time::OffsetDateTime {
    parse_time(
        value
            .as_str()
            .unwrap_or_else(|| panic!("not a time: {value}")),
    )
}

fn system_time(at: time::OffsetDateTime) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(at.unix_timestamp()).unwrap())
}

/// `heard` came at `due` or after, and at most a poll and [`LATE`] after.
fn assert_heard_on_time(heard: SystemTime, due: time::OffsetDateTime, log: &str) {
    let due = system_time(due);
    let early = due.duration_since(heard).unwrap_or_default();
    assert!(
        early < Duration::from_millis(1),
        "signaled {early:?} before its time\n{log}"
    );
    let late = heard.duration_since(due).unwrap_or_default();
    assert!(
        late <= Duration::from_secs(LATE.whole_seconds().unsigned_abs()),
        "signaled {late:?} after its time\n{log}"
    );
}

fn webhook_events(receiver: &StubServer) -> Vec<serde_json::Value> {
    receiver
        .received()
        .iter()
        .filter_map(|r| serde_json::from_str(&r.body).ok())
        .collect()
}

#[tokio::test]
async fn at_the_lead_before_stop_at_opted_in_jobs_checkpoint_and_exit_others_hear_nothing() {
    let receiver = receiver_refusing_first(0);
    let url = receiver.url("/hooks/checkpoint");
    let h = host(&format!(
        "drain_lead = \"30s\"\nstop_grace = \"5s\"\ncheckpoint_lead = \"15s\"\nwebhook_url = {url:?}\n"
    ))
    .await;
    let (opted_in_task, opted_in) = h.job(h.spec("opted-in", Some("SIGUSR1"))).await;
    let (_, silent) = h.job(h.spec("without-opt-in", None)).await;
    let (refused_task, refused) = h.job(h.spec("asks-for-sigkill", Some("SIGKILL"))).await;
    // Opted in, but in no ECS task of this instance: never looked at.
    let stranger =
        JobContainer::start(&h.docker, h.spec("not-an-ecs-task", Some("SIGUSR1"))).unwrap();
    // Setup is done: the end is timed from here.
    let end = h.f.lease_ends_in(STARTUP + time::Duration::seconds(22));
    let agent = h.start_agent();

    let heard = opted_in.wait_for_signal(SIGNAL_PATIENCE);
    let state = h.wait_signaled(&agent);
    let log = agent.log();
    let heard = heard.unwrap_or_else(|| panic!("no signal came\n{log}"));
    assert_eq!(heard.name, "SIGUSR1");
    let stop_at = end - time::Duration::seconds(5);
    assert_eq!(at(&state["stop_at"]), stop_at, "{state:#}");
    let checkpoint_at = stop_at - time::Duration::seconds(15);
    assert_eq!(at(&state["checkpoint_at"]), checkpoint_at, "{state:#}");
    assert_heard_on_time(heard.at, checkpoint_at, &log);

    // The job checkpointed its last whole unit and exited cleanly.
    assert_eq!(opted_in.wait_for_exit(PATIENCE).unwrap(), Some(0), "{log}");
    assert_eq!(opted_in.checkpointed_unit(), Some(opted_in.units_done()));
    assert_eq!(opted_in.signals_received().len(), 1);

    // Not opted in, or asking for a signal it cannot catch: nothing, and
    // both still run.
    assert_eq!(silent.signals_received(), vec![], "{log}");
    assert_eq!(refused.signals_received(), vec![], "{log}");
    assert_eq!(stranger.signals_received(), vec![], "{log}");
    assert_eq!(silent.exit_code().unwrap(), None);
    assert_eq!(refused.exit_code().unwrap(), None);
    assert_eq!(stranger.exit_code().unwrap(), None);
    assert!(
        log.contains(&format!(
            "container job of task {refused_task}: BLOCKWATCH_CHECKPOINT_SIGNAL=\"SIGKILL\" is refused"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "checkpoint signal SIGUSR1 sent to container job of task {opted_in_task}"
        )),
        "{log}"
    );
    assert_eq!(state["checkpoint"]["containers"], 1, "{state:#}");

    // Jobs, operators and monitoring see when the signal goes.
    let deadline_json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(h.f.instance.deadline_dir().join("deadline.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(deadline_json["checkpoint_at"], rfc3339(checkpoint_at));
    let status = h.f.instance.status_json(h.f.instance.command());
    assert_eq!(status["checkpoint_at"], rfc3339(checkpoint_at));
    assert_eq!(status["checkpoint_signals"], 1);
    let metrics = std::fs::read_to_string(&h.metrics).unwrap_or_default();
    assert!(
        metrics.contains("blockwatch_checkpoint_signals_total 1"),
        "{metrics}"
    );
    let events = webhook_events(&receiver);
    let signaled = events
        .iter()
        .find(|e| e["event"] == "checkpoint-signaled")
        .unwrap_or_else(|| panic!("no checkpoint-signaled event: {events:?}\n{log}"));
    assert_eq!(signaled["containers"], 1);
    assert_eq!(signaled["checkpoint_at"], rfc3339(checkpoint_at));

    // The job saw the deadline through its read-only mount, and cannot
    // write there (checked in the container that still runs).
    let read = h
        .docker
        .cli()
        .run(&[
            "exec",
            silent.id(),
            "cat",
            &format!("{DEADLINE_MOUNT}/deadline"),
        ])
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&read.stdout),
        format!("{}\n", rfc3339(end))
    );
    let write = h
        .docker
        .cli()
        .run(&[
            "exec",
            silent.id(),
            "touch",
            &format!("{DEADLINE_MOUNT}/by-job"),
        ])
        .unwrap();
    assert!(!write.status.success());
    assert!(String::from_utf8_lossy(&write.stderr).contains("Read-only file system"));
}

#[tokio::test]
async fn a_spot_notice_with_less_than_the_lead_left_signals_at_once() {
    let h = host("checkpoint_lead = \"5m\"\n").await;
    let (_, job) = h.job(h.spec("spot-job", Some("SIGUSR2"))).await;
    let agent = h.start_agent();
    h.f.instance.wait_ticks(&agent, 2);

    let noticed = now();
    h.f.instance.imds.update(|s| {
        s.spot_instance_action = Some(SpotInstanceAction {
            action: "terminate".into(),
            time: noticed + time::Duration::minutes(2),
        })
    });
    let heard = job.wait_for_signal(SIGNAL_PATIENCE);
    let log = agent.log();
    let heard = heard.unwrap_or_else(|| panic!("no signal came\n{log}"));
    assert_eq!(heard.name, "SIGUSR2");
    // The notice leaves 2 minutes, less than the 5-minute lead: at once.
    let late = heard
        .at
        .duration_since(system_time(noticed))
        .unwrap_or_default();
    assert!(
        late <= Duration::from_secs(LATE.whole_seconds().unsigned_abs()),
        "signaled {late:?} after the notice\n{log}"
    );
    assert_eq!(job.wait_for_exit(PATIENCE).unwrap(), Some(0));
    assert_eq!(job.checkpointed_unit(), Some(job.units_done()));
}

#[tokio::test]
async fn a_restart_never_signals_again_for_the_same_end_and_an_earlier_end_signals_again() {
    let h = host("checkpoint_lead = \"4m 50s\"\n").await;
    let (_, job) = h
        .job(JobSpec {
            keep_working_after_checkpoint: true,
            ..h.spec("keeps-working", Some("SIGUSR1"))
        })
        .await;
    // No stop_grace: stop_at is the lease end, and the signal comes
    // 4 min 50 s before it, about 10 s from now.
    let end = h.f.lease_ends_in(STARTUP + time::Duration::minutes(5));
    let mut agent = h.start_agent();
    let first = job.wait_for_signal(SIGNAL_PATIENCE);
    assert!(first.is_some(), "no first signal\n{}", agent.log());
    h.wait_signaled(&agent);

    // Killed hard and started again: the pass is on disk.
    agent.kill_9();
    let agent = h.start_agent();
    h.f.instance.wait_ticks(&agent, 5);
    assert_eq!(
        job.signals_received().len(),
        1,
        "signaled again after a restart\n{}",
        agent.log()
    );

    // The lease is cut by a minute: a new, earlier end, signaled at once.
    let earlier = h.f.lease_ends_in(end - now() - time::Duration::minutes(1));
    let moved =
        h.f.instance
            .wait_for(&agent, PATIENCE, "the earlier end", |s| {
                s["stop_at"].as_str().map(parse_time) == Some(earlier)
            });
    let deadline = std::time::Instant::now() + SIGNAL_PATIENCE;
    while job.signals_received().len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let signals = job.signals_received();
    assert_eq!(signals.len(), 2, "{moved:#}\n{}", agent.log());
    let pass = h.wait_signaled(&agent);
    assert_eq!(at(&pass["checkpoint"]["end"]), earlier, "{pass:#}");
    h.f.instance.wait_ticks(&agent, 3);
    assert_eq!(job.signals_received().len(), 2, "once per end");
    // The job checkpointed on each signal and worked on.
    assert_eq!(job.exit_code().unwrap(), None);
    assert!(job.checkpointed_unit().is_some());
}

#[tokio::test]
async fn without_docker_the_pass_is_logged_once_and_the_end_goes_on_as_before() {
    let f = registered_in_jobs(&[], "").await;
    let powered_off = f.instance.root.path().join("powered-off");
    f.instance.write_config(&format!(
        "poll_interval = \"1s\"\ndrain_poll_interval = \"1s\"\ndrain_lead = \"10s\"\n\
         checkpoint_lead = \"15s\"\npoweroff_command = \"echo off >> {}\"\n",
        powered_off.display()
    ));
    let task = f.start_task().await;
    let ecs_agent =
        IntrospectionStandIn::start(f.instance.moto(), &f.cluster_arn, &f.container_instance)
            .unwrap()
            .with_stop_timeout(Duration::from_secs(2));
    let end = f.lease_ends_in(STARTUP + time::Duration::seconds(20));
    // DOCKER_HOST is the instance's default: a socket nothing answers on.
    let agent = f
        .instance
        .spawn_run(&["--ecs-introspection-url", &ecs_agent.metadata_url()], &[]);
    let off = f.instance.wait_for(&agent, PATIENCE, "powered off", |s| {
        phase(s) == "powered-off"
    });
    let log = agent.log();
    assert_eq!(
        std::fs::read_to_string(&powered_off)
            .unwrap_or_default()
            .lines()
            .count(),
        1,
        "{log}"
    );
    assert!(at(&off["drain"]["poweroff_at"]) >= end, "{off:#}");
    assert!(
        log.contains("checkpoint_lead is set, but Docker cannot be reached at unix://"),
        "{log}"
    );
    let unreached = "no job was signaled; trying again every 30s";
    assert_eq!(log.matches(unreached).count(), 1, "logged once\n{log}");
    assert!(off["checkpoint"]["unreached_at"].is_string(), "{off:#}");
    assert!(off["checkpoint"]["signaled_at"].is_null(), "{off:#}");
    let reason = ecs_agent.status(&task);
    assert_eq!(reason.map(|(desired, _)| desired), Some("STOPPED"));
}
