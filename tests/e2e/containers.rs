//! Real containers on a private dockerd (`blockwatch_testkit::docker`), run
//! the way AWS Batch runs a job on an instance blockwatch watches: host
//! networking, and the host's deadline directory bind-mounted read-only at
//! `/run/blockwatch`. Also the kit the agent's checkpoint tests and the
//! benchmark stand on: the checkpointing job (`blockwatch_testkit::job`) and
//! the introspection stand-in's real containers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::{Duration, Instant};

use blockwatch_testkit::docker::PrivateDocker;
use blockwatch_testkit::introspection::IntrospectionStandIn;
use blockwatch_testkit::job::{JobContainer, JobSpec};
use blockwatch_testkit::moto::MotoServer;

/// Where a job finds the deadline (the mount the README documents).
const MOUNT: &str = "/run/blockwatch";

#[test]
fn a_batch_job_reads_the_deadline_through_the_read_only_mount_and_cannot_write_it() {
    let docker = PrivateDocker::start().unwrap();
    let image = docker.image().unwrap();
    let deadline_dir = tempfile::tempdir().unwrap();
    let deadline = "2026-12-07T04:00:00Z\n";
    std::fs::write(deadline_dir.path().join("deadline"), deadline).unwrap();
    let volume = format!("{}:{MOUNT}:ro", deadline_dir.path().display());
    // Prints its network namespace and the deadline, then tries to write
    // beside it: the exit code is touch's, so 0 means the write went through.
    let script = format!(
        "readlink /proc/self/ns/net && cat {MOUNT}/deadline && touch {MOUNT}/written-by-job"
    );
    let output = docker
        .run(&[
            "run",
            "--rm",
            "--network",
            "host",
            "--volume",
            &volume,
            image,
            "sh",
            "-c",
            &script,
        ])
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let context = format!(
        "stdout: {stdout}\nstderr: {stderr}\ndockerd: {}",
        docker.log()
    );
    // Host networking: the job is in the test's own network namespace.
    let host_net = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_eq!(
        stdout,
        format!("{}\n{deadline}", host_net.display()),
        "{context}"
    );
    assert_eq!(output.status.code(), Some(1), "{context}");
    assert!(stderr.contains("Read-only file system"), "{context}");
    assert!(
        !deadline_dir.path().join("written-by-job").exists(),
        "{context}"
    );
}

/// Generous bounds for a loaded 2-core machine; never the expected time.
const PATIENCE: Duration = Duration::from_secs(60);

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "waited {PATIENCE:?} for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn job_spec<'a>(name: &'a str, deadline_dir: &'a Path) -> JobSpec<'a> {
    JobSpec::new(name, deadline_dir, Duration::from_millis(300))
}

/// A job that opted in to SIGUSR1.
fn usr1_job(docker: &PrivateDocker, name: &str, deadline_dir: &Path) -> JobContainer {
    let spec = JobSpec {
        checkpoint_signal: Some("SIGUSR1"),
        ..job_spec(name, deadline_dir)
    };
    JobContainer::start(docker, spec).unwrap()
}

fn send(docker: &PrivateDocker, job: &JobContainer, signal: &str) {
    let output = docker.run(&["kill", "--signal", signal, job.id()]).unwrap();
    assert!(output.status.success(), "{output:?}");
}

fn env_of(docker: &PrivateDocker, job: &JobContainer) -> String {
    let output = docker
        .run(&["inspect", "--format", "{{json .Config.Env}}", job.id()])
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn a_job_checkpoints_its_last_unit_on_its_signal_and_exits_0_having_heard_it_once() {
    let docker = PrivateDocker::start().unwrap();
    let deadline_dir = tempfile::tempdir().unwrap();
    let job = usr1_job(&docker, "checkpointer", deadline_dir.path());
    assert_eq!(job.id().len(), 64, "{}", job.id());
    assert!(env_of(&docker, &job).contains("BLOCKWATCH_CHECKPOINT_SIGNAL=SIGUSR1"));
    wait_until("two units", || job.units_done() >= 2);
    assert_eq!(job.exit_code().unwrap(), None, "works until signaled");
    assert_eq!(job.checkpointed_unit(), None);

    let sent = std::time::SystemTime::now();
    send(&docker, &job, "SIGUSR1");
    assert_eq!(
        job.wait_for_exit(PATIENCE).unwrap(),
        Some(0),
        "{}",
        docker.log()
    );
    let done = job.units_done();
    assert!(done >= 2);
    assert_eq!(
        job.checkpointed_unit(),
        Some(done),
        "the last completed unit"
    );
    let heard = job.signals_received();
    assert_eq!(heard.len(), 1, "{heard:?}");
    assert_eq!(heard[0].name, "SIGUSR1");
    // Clock readings a second apart at most (the boot clock is 10 ms).
    assert!(
        heard[0].at + Duration::from_secs(1) >= sent,
        "{heard:?} {sent:?}"
    );
}

#[test]
fn a_signal_interrupts_the_unit_under_way_and_a_job_told_to_work_on_hears_every_signal() {
    let docker = PrivateDocker::start().unwrap();
    let deadline_dir = tempfile::tempdir().unwrap();
    // A unit far longer than the test: only an interrupted wait ends it.
    let job = JobContainer::start(
        &docker,
        JobSpec {
            checkpoint_signal: Some("SIGUSR2"),
            keep_working_after_checkpoint: true,
            ..JobSpec::new("long-units", deadline_dir.path(), Duration::from_secs(3600))
        },
    )
    .unwrap();
    wait_until("the job to run", || job.exit_code().unwrap().is_none());
    send(&docker, &job, "SIGUSR2");
    let first = job
        .wait_for_signal(PATIENCE)
        .expect("the signal heard during the unit");
    assert_eq!(first.name, "SIGUSR2");
    assert_eq!(job.checkpointed_unit(), Some(0));
    assert_eq!(job.exit_code().unwrap(), None, "works on");

    send(&docker, &job, "SIGUSR2");
    wait_until("the second signal", || job.signals_received().len() == 2);
    assert_eq!(job.exit_code().unwrap(), None);

    job.kill_now().unwrap();
    assert_eq!(job.wait_for_exit(PATIENCE).unwrap(), Some(137));
}

#[test]
fn a_job_without_the_opt_in_has_no_checkpoint_variable_and_dies_with_the_instance() {
    let docker = PrivateDocker::start().unwrap();
    let deadline_dir = tempfile::tempdir().unwrap();
    let job = JobContainer::start(&docker, job_spec("no-opt-in", deadline_dir.path())).unwrap();
    let env = env_of(&docker, &job);
    assert!(env.contains("UNIT_SECONDS="), "{env}");
    assert!(!env.contains("BLOCKWATCH_CHECKPOINT_SIGNAL"), "{env}");
    wait_until("a unit", || job.units_done() >= 1);
    job.kill_now().unwrap();
    assert_eq!(job.wait_for_exit(PATIENCE).unwrap(), Some(137));
    assert_eq!(job.checkpointed_unit(), None);
    assert!(job.signals_received().is_empty());
}

#[test]
fn a_job_polling_the_deadline_file_checkpoints_and_exits_when_stop_at_is_near() {
    let docker = PrivateDocker::start().unwrap();
    let deadline_dir = tempfile::tempdir().unwrap();
    let write_stop_at = |stop_at: time::OffsetDateTime| {
        let stop_at = stop_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let json = format!("{{\n  \"phase\": \"draining\",\n  \"stop_at\": \"{stop_at}\"\n}}\n");
        let temp = deadline_dir.path().join("deadline.json.tmp");
        std::fs::write(&temp, json).unwrap();
        std::fs::rename(temp, deadline_dir.path().join("deadline.json")).unwrap();
    };
    write_stop_at(time::OffsetDateTime::now_utc() + time::Duration::hours(1));
    let job = JobContainer::start(
        &docker,
        JobSpec {
            poll_deadline: Some(Duration::from_secs(1)),
            ..job_spec("poller", deadline_dir.path())
        },
    )
    .unwrap();
    // Several polls with the end an hour away: it works on.
    let job = &job;
    let working = |units: usize| {
        move || {
            assert_eq!(job.exit_code().unwrap(), None, "exited with the end far");
            job.units_done() >= units
        }
    };
    wait_until("units over several polls", working(10));

    // The margin is the poll plus a unit (2 s): an end 20 s away is not near.
    write_stop_at(time::OffsetDateTime::now_utc() + time::Duration::seconds(20));
    let units_then = job.units_done();
    wait_until("more polls", working(units_then + 10));

    write_stop_at(time::OffsetDateTime::now_utc() + time::Duration::seconds(1));
    assert_eq!(job.wait_for_exit(PATIENCE).unwrap(), Some(0));
    assert_eq!(job.checkpointed_unit(), Some(job.units_done()));
    assert!(job.signals_received().is_empty());
}

/// moto with one cluster, one registered instance and one task; the
/// stand-in with a `stop_timeout`, on `docker`.
async fn ecs_host(
    docker: &PrivateDocker,
    stop_timeout: Duration,
) -> (MotoServer, IntrospectionStandIn, String) {
    let moto = MotoServer::start().await.unwrap();
    moto.create_cluster("jobs").await.unwrap();
    let instance = moto.launch_instance(&[("Name", "ecs-host")]).await.unwrap();
    let ci = moto
        .register_container_instance("jobs", &instance)
        .await
        .unwrap();
    let task = moto.start_task("jobs", &ci).await.unwrap();
    let stand_in = IntrospectionStandIn::start(&moto, "jobs", &ci)
        .unwrap()
        .with_stop_timeout(stop_timeout)
        .with_docker(docker);
    (moto, stand_in, task)
}

fn v1_tasks(stand_in: &IntrospectionStandIn) -> serde_json::Value {
    let url = stand_in.url("/v1/tasks");
    let addr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let answer = blockwatch_testkit::http::request(addr, "GET", "/v1/tasks", &[], "").unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    serde_json::from_str(&answer.body).unwrap()
}

#[tokio::test]
async fn a_task_stopped_in_ecs_sends_its_container_sigterm_then_sigkill_at_the_stop_timeout() {
    let docker = PrivateDocker::start().unwrap();
    let stop_timeout = Duration::from_secs(3);
    let (moto, stand_in, task) = ecs_host(&docker, stop_timeout).await;
    let deadline_dir = tempfile::tempdir().unwrap();
    // No opt-in: it notes SIGTERM and works on, as a PID 1 without a handler.
    let job = JobContainer::start(&docker, job_spec("stubborn", deadline_dir.path())).unwrap();
    stand_in.attach(&task, job.id(), "trainer");

    let tasks = v1_tasks(&stand_in);
    let listed = &tasks["Tasks"][0];
    assert_eq!(listed["Arn"], task.as_str(), "{tasks}");
    assert_eq!(listed["Containers"][0]["DockerId"], job.id(), "{tasks}");
    assert_eq!(listed["Containers"][0]["Name"], "trainer", "{tasks}");
    assert_eq!(listed["KnownStatus"], "RUNNING");
    wait_until("a unit", || job.units_done() >= 1);
    assert!(job.signals_received().is_empty(), "nothing before the stop");

    moto.stop_task("jobs", &task).await.unwrap();
    let sigterm = job
        .wait_for_signal(PATIENCE)
        .expect("SIGTERM from the stop");
    assert_eq!(sigterm.name, "SIGTERM");
    assert_eq!(stand_in.status(&task), Some(("STOPPED", "RUNNING")));
    assert_eq!(job.wait_for_exit(PATIENCE).unwrap(), Some(137), "SIGKILL");
    let killed = std::time::SystemTime::now();
    // Never before the timeout; a second's slack for the trap running late
    // on a loaded machine (an immediate kill shows well under 1 s).
    let ran_on = killed.duration_since(sigterm.at).unwrap();
    assert!(
        ran_on + Duration::from_secs(1) >= stop_timeout,
        "{ran_on:?}"
    );
    assert_eq!(job.signals_received().len(), 1, "SIGTERM once");
    wait_until("the task STOPPED", || {
        stand_in.status(&task) == Some(("STOPPED", "STOPPED"))
    });
}

#[tokio::test]
async fn an_attached_container_that_exits_by_itself_stops_its_task() {
    let docker = PrivateDocker::start().unwrap();
    let (_moto, stand_in, task) = ecs_host(&docker, Duration::from_secs(30)).await;
    let deadline_dir = tempfile::tempdir().unwrap();
    let job = usr1_job(&docker, "finisher", deadline_dir.path());
    stand_in.attach(&task, job.id(), "job");
    assert!(stand_in.sync(PATIENCE));
    assert_eq!(stand_in.status(&task), Some(("RUNNING", "RUNNING")));

    send(&docker, &job, "SIGUSR1");
    assert_eq!(job.wait_for_exit(PATIENCE).unwrap(), Some(0));
    wait_until("the task STOPPED", || {
        stand_in.status(&task) == Some(("STOPPED", "STOPPED"))
    });
    assert_eq!(v1_tasks(&stand_in)["Tasks"][0]["KnownStatus"], "STOPPED");
}
