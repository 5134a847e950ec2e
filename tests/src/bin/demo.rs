//! The README's first command: a whole short block on a simulated instance.
//!
//! moto plays AWS and the IMDS simulator plays the instance. An UNMANAGED
//! compute environment is created and an instance is launched with a 35 s
//! lease. Then the real binary runs: `blockwatch join` writes ECS_CLUSTER,
//! the "ECS agent" registers and Batch places two jobs, and `blockwatch run`
//! counts down and drains at the lease end minus `drain_lead`. One job
//! finishes while draining; the other outlasts the lease, so at the end
//! blockwatch stops it with a `blockwatch:` reason (read back from moto) and
//! powers off, once. The power-off command is a harmless stand-in for
//! `systemctl poweroff` that appends a line to a log, which the demo shows.
//! `blockwatch status` is shown along the way, and the long job reads the
//! deadline file blockwatch keeps for jobs and says how long it has left.
//!
//! Where Docker is usable (`dockerd` installed, and the demo runs as root),
//! the long job is a real container on a private dockerd
//! ([`PrivateDocker`]; the host's Docker is never used), run as Batch runs
//! it: host networking, the deadline directory mounted read-only, opted in
//! with `BLOCKWATCH_CHECKPOINT_SIGNAL=SIGUSR1`, and known to blockwatch
//! through a stand-in for the ECS agent's introspection API. The config gets
//! `checkpoint_lead`, so the job hears its end: it reads its deadline from
//! inside its container, gets the signal, writes its checkpoint and exits 0;
//! the drain then completes before the lease end and the instance powers
//! off at once. `BLOCKWATCH_DEMO_DOCKER=0` keeps the long job simulated (a
//! moto task only, stopped by blockwatch at the lease end), as is done
//! without Docker.
//!
//! Over 400 lines: one script from start to end, narrated as it goes, with
//! its two casts of the long job side by side.

use blockwatch_core::tags::{TAG_COMPUTE_ENVIRONMENT, TAG_LEASE_END};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use aws_smithy_types::error::display::DisplayErrorContext;
use blockwatch_core::time_text::rfc3339;
use blockwatch_testkit::docker::PrivateDocker;
use blockwatch_testkit::imds::{ImdsSimulator, InstanceState};
use blockwatch_testkit::introspection::IntrospectionStandIn;
use blockwatch_testkit::job::{JobContainer, JobSpec, DEADLINE_MOUNT};
use blockwatch_testkit::moto::{MotoServer, REGION};
use blockwatch_testkit::script::{finish, say};

const LEASE: i64 = 35;
const DRAIN_LEAD: &str = "15s";
/// How long the demo watches after the power-off, to show it ran once.
const AFTER_POWEROFF: Duration = Duration::from_secs(3);
/// With a real long job: its signal comes after the short job is done and
/// before the lease end, early enough for the drain to end first.
const CHECKPOINT_LEAD: &str = "8s";
/// `0` keeps the long job simulated even where Docker is usable.
const DOCKER_SWITCH: &str = "BLOCKWATCH_DEMO_DOCKER";
/// The real long job's opt-in: the signal it traps to checkpoint.
const CHECKPOINT_SIGNAL: &str = "SIGUSR1";
/// The real long job's unit of work.
const UNIT: Duration = Duration::from_secs(1);
/// `ECS_CONTAINER_STOP_TIMEOUT` of the ECS agent's stand-in.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    finish("demo failed", demo().await)
}

fn blockwatch_binary() -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin = me.with_file_name("blockwatch");
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "{} not found: build it with `cargo build -p blockwatch`",
            bin.display()
        ))
    }
}

/// Paths and endpoints of the simulated instance.
struct Scene {
    blockwatch: PathBuf,
    scratch: PathBuf,
    imds: String,
    aws: String,
    /// Set when the long job is a real container that opts in.
    checkpoint_lead: Option<&'static str>,
}

impl Scene {
    fn ecs_config(&self) -> PathBuf {
        self.scratch.join("etc/ecs/ecs.config")
    }
    fn state_dir(&self) -> PathBuf {
        self.scratch.join("var/lib/blockwatch")
    }
    fn config(&self) -> PathBuf {
        self.scratch.join("etc/blockwatch/blockwatch.toml")
    }
    fn poweroff_log(&self) -> PathBuf {
        self.scratch.join("poweroff.log")
    }
    /// `/run/blockwatch` on an instance, mounted read-only into the jobs.
    fn deadline_dir(&self) -> PathBuf {
        self.scratch.join("run/blockwatch")
    }

    /// What a job does (`cat /run/blockwatch/deadline`, compared with
    /// `date +%s`): the seconds left before the instance ends, or `None`
    /// while no end is announced (an empty file) or the file is not there.
    fn job_time_left(&self) -> Option<i64> {
        time_left(&std::fs::read_to_string(self.deadline_dir().join("deadline")).ok()?)
    }

    /// `checkpoint_at` of `deadline.json`, as blockwatch announces it.
    fn checkpoint_at(&self) -> Option<time::OffsetDateTime> {
        let text = std::fs::read_to_string(self.deadline_dir().join("deadline.json")).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        parse_rfc3339(json["checkpoint_at"].as_str()?)
    }

    /// The demo's config: short intervals for a short lease, and a power-off
    /// that only appends a line to [`Scene::poweroff_log`].
    fn config_text(&self) -> String {
        let log = self
            .poweroff_log()
            .display()
            .to_string()
            .replace('\'', "'\\''");
        let command = format!("date -u '+%FT%TZ power-off requested' >> '{log}'");
        format!(
            "# The demo's short lease needs short intervals.\n\
             poll_interval = \"1s\"\n\
             drain_lead = \"{DRAIN_LEAD}\"\n\
             drain_poll_interval = \"2s\"\n\
             # on_lease_end = \"poweroff\" is the default; the demo's power-off only writes a line.\n\
             poweroff_command = {}\n{}",
            toml_string(&command),
            self.checkpoint_lead
                .map(|lead| format!(
                    "# Opted-in jobs get their checkpoint signal this long before stop_at (the lease end here).\n\
                     checkpoint_lead = \"{lead}\"\n"
                ))
                .unwrap_or_default()
        )
    }

    /// `blockwatch <args>` with the instance's environment only.
    fn blockwatch(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.blockwatch);
        command
            .env_clear()
            .env("PATH", blockwatch_testkit::host_guard::path())
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &self.imds)
            .env("AWS_ENDPOINT_URL", &self.aws)
            .env("AWS_CONFIG_FILE", self.scratch.join("no-aws-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.scratch.join("no-aws-credentials"),
            )
            .args(args)
            .arg("--config")
            .arg(self.config())
            .arg("--ecs-config")
            .arg(self.ecs_config())
            .arg("--state-dir")
            .arg(self.state_dir());
        command
    }

    fn status_line(&self) -> String {
        let output = self.blockwatch(&["status"]).output();
        let text = output
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("status:").map(str::trim).map(str::to_owned))
            .unwrap_or_else(|| "(no state yet)".into())
    }

    fn state(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.state_dir().join("state.json")).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or_default()
    }

    fn phase(&self) -> String {
        self.state()["phase"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Whether the power-off command has succeeded, as the state file says.
    fn powered_off(&self) -> bool {
        self.state()["drain"]["poweroff_at"].is_string()
    }

    fn poweroff_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.poweroff_log())
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// A TOML basic string holding `text`.
fn toml_string(text: &str) -> String {
    let mut quoted = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if c.is_control() => quoted.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// The seconds left before the end a deadline file's text announces,
/// `None` while no end is announced (an empty file).
fn time_left(deadline: &str) -> Option<i64> {
    let end = parse_rfc3339(deadline.trim_end())?;
    Some((end - time::OffsetDateTime::now_utc()).whole_seconds())
}

fn parse_rfc3339(text: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

/// A private dockerd for the long job, or `None` (said in one line) when
/// [`DOCKER_SWITCH`] is `0` or no private dockerd starts here.
fn private_docker() -> Option<PrivateDocker> {
    if std::env::var_os(DOCKER_SWITCH).is_some_and(|value| value == "0") {
        say(&format!(
            "   {DOCKER_SWITCH}=0: the long job is simulated (a task in moto only)"
        ));
        return None;
    }
    match PrivateDocker::start() {
        Ok(docker) => Some(docker),
        Err(e) => {
            let why = e.to_string();
            say(&format!(
                "   Docker is not usable here ({}): the long job is simulated (a task in moto only)",
                why.lines().next().unwrap_or_default()
            ));
            None
        }
    }
}

/// The long job as a real container, and the ECS agent's stand-in that
/// lists it as its task's container. Dropped in field order: the
/// container, the stand-in, then the daemons.
struct ContainerJob {
    job: JobContainer,
    ecs_agent: IntrospectionStandIn,
    docker: PrivateDocker,
}

impl ContainerJob {
    /// Starts the job as Batch runs it, opted in with SIGUSR1, as the
    /// container of `long_job`; `short_job` has no container and ends as
    /// soon as it is stopped.
    fn start(
        docker: PrivateDocker,
        moto: &MotoServer,
        cluster: &str,
        container_instance: &str,
        tasks: (&str, &str),
        deadline_dir: &Path,
    ) -> Result<Self, String> {
        let (short_job, long_job) = tasks;
        let err = |e: &dyn std::fmt::Display| e.to_string();
        std::fs::create_dir_all(deadline_dir).map_err(|e| err(&e))?;
        let job = JobContainer::start(
            &docker,
            JobSpec {
                checkpoint_signal: Some(CHECKPOINT_SIGNAL),
                ..JobSpec::new("long-job", deadline_dir, UNIT)
            },
        )
        .map_err(|e| err(&e))?;
        let ecs_agent = IntrospectionStandIn::start(moto, cluster, container_instance)
            .map_err(|e| err(&e))?
            .with_stop_timeout(STOP_TIMEOUT)
            .with_docker(&docker);
        ecs_agent.attach(long_job, job.id(), "long-job");
        ecs_agent.exits_after_sigterm(short_job, Duration::ZERO);
        Ok(Self {
            job,
            ecs_agent,
            docker,
        })
    }

    /// What the job reads through its read-only mount, from inside its
    /// container; `None` once it no longer runs.
    fn read_deadline(&self) -> Option<String> {
        let path = format!("{DEADLINE_MOUNT}/deadline");
        let read = self
            .docker
            .cli()
            .run(&["exec", self.job.id(), "cat", &path])
            .ok()?;
        read.status
            .success()
            .then(|| String::from_utf8_lossy(&read.stdout).into_owned())
    }
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        // Our own child, by PID.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn demo() -> Result<(), String> {
    let started = Instant::now();
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let scratch = std::env::temp_dir().join(format!("blockwatch-demo-{}", std::process::id()));

    say("== 1. AWS (moto) and the instance (IMDS simulator), on 127.0.0.1");
    // The daemons start beside moto; both are ready before the lease starts.
    let docker = std::thread::spawn(private_docker);
    let moto = MotoServer::start().await;
    // Joined before any return, so that its daemons are stopped with it.
    let docker = docker
        .join()
        .map_err(|_| "starting the private dockerd panicked".to_owned())?;
    let moto = moto.map_err(|e| err(&e))?;
    if let Some(docker) = &docker {
        docker.image().map_err(|e| err(&e))?;
        say(&format!(
            "   a private dockerd for the jobs: {} (the host's Docker is never used)",
            docker.host()
        ));
    }
    let cluster_arn = moto
        .create_unmanaged_ce("demo-ce", true)
        .await
        .map_err(|e| err(&e))?;
    say(&format!(
        "   UNMANAGED compute environment demo-ce; Batch created its ECS cluster {cluster_arn}"
    ));
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .map_err(|e| err(&e))?;
    let lease_end = rfc3339(now + time::Duration::seconds(LEASE));
    let tags = [
        (TAG_COMPUTE_ENVIRONMENT, "demo-ce"),
        (TAG_LEASE_END, lease_end.as_str()),
        ("Name", "demo"),
    ];
    let instance_id = moto.launch_instance(&tags).await.map_err(|e| err(&e))?;
    // What blockwatch-launch sets at launch: a power-off ends the instance
    // (and its billing) instead of leaving it stopped.
    aws_sdk_ec2::Client::new(moto.sdk())
        .modify_instance_attribute()
        .instance_id(&instance_id)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::InstanceInitiatedShutdownBehavior)
        .value("terminate")
        .send()
        .await
        .map_err(|e| format!("ec2:ModifyInstanceAttribute: {}", DisplayErrorContext(&e)))?;
    say(&format!(
        "   launched {instance_id}, no user data, InstanceInitiatedShutdownBehavior=terminate,"
    ));
    say(&format!("   tagged blockwatch:compute-environment=demo-ce blockwatch:lease-end={lease_end} (in {LEASE}s)"));
    let imds = ImdsSimulator::start(InstanceState {
        instance_id: instance_id.clone(),
        region: REGION.to_owned(),
        availability_zone: format!("{REGION}a"),
        pending_time: now,
        tags: Some(
            tags.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ),
        ..InstanceState::default()
    })
    .map_err(|e| err(&e))?;
    let scene = Scene {
        blockwatch: blockwatch_binary()?,
        scratch: scratch.clone(),
        imds: imds.endpoint(),
        aws: moto.endpoint(),
        checkpoint_lead: docker.as_ref().map(|_| CHECKPOINT_LEAD),
    };
    std::fs::create_dir_all(scene.config().parent().unwrap_or(&scratch)).map_err(|e| err(&e))?;
    std::fs::write(scene.config(), scene.config_text()).map_err(|e| err(&e))?;
    std::fs::create_dir_all(scene.ecs_config().parent().unwrap_or(&scratch))
        .map_err(|e| err(&e))?;
    std::fs::write(
        scene.ecs_config(),
        "ECS_ENABLE_TASK_IAM_ROLE=true\r\nECS_CLUSTER=\"stale\"\r\n",
    )
    .map_err(|e| err(&e))?;

    say("\n== 2. boot: blockwatch join (before ecs.service)");
    let joined = scene.blockwatch(&["join"]).status().map_err(|e| err(&e))?;
    if !joined.success() {
        return Err(format!("blockwatch join exited with {joined}"));
    }
    show(&scene.ecs_config())?;
    let container_instance = moto
        .register_container_instance(&cluster_arn, &instance_id)
        .await
        .map_err(|e| err(&e))?;
    say(&format!("   the ECS agent registered {container_instance}"));
    let short_job = moto
        .start_task(&cluster_arn, &container_instance)
        .await
        .map_err(|e| err(&e))?;
    let long_job = moto
        .start_task(&cluster_arn, &container_instance)
        .await
        .map_err(|e| err(&e))?;
    say(&format!(
        "   Batch placed two jobs on it: a short one, task {short_job}"
    ));
    say(&format!(
        "   and one that outlasts the lease, task {long_job}"
    ));
    let container_job = match docker {
        Some(docker) => {
            let started = ContainerJob::start(
                docker,
                &moto,
                &cluster_arn,
                &container_instance,
                (&short_job, &long_job),
                &scene.deadline_dir(),
            )?;
            say(&format!(
                "   the long one runs in container {}: host network, {} mounted read-only at {DEADLINE_MOUNT},",
                started.job.id().get(..12).unwrap_or(started.job.id()),
                scene.deadline_dir().display()
            ));
            say("   BLOCKWATCH_CHECKPOINT_SIGNAL=SIGUSR1; it traps SIGUSR1 to checkpoint and exit 0");
            say("   the ECS agent (a stand-in on 127.0.0.1) lists it as its task's container");
            Some(started)
        }
        None => None,
    };

    say(&format!(
        "\n== 3. blockwatch run: watch, count down, drain at the lease end - {DRAIN_LEAD}"
    ));
    say(&format!("   {}:", scene.config().display()));
    for line in scene.config_text().lines() {
        say(&format!("   | {line}"));
    }
    let mut run = scene.blockwatch(&["run"]);
    match &container_job {
        Some(c) => run
            .arg("--ecs-introspection-url")
            .arg(c.ecs_agent.metadata_url())
            .env("DOCKER_HOST", c.docker.host()),
        // Nothing answers there: the ECS API counts the tasks.
        None => run.args(["--ecs-introspection-url", "http://127.0.0.1:9/v1/metadata"]),
    };
    let run = run
        .arg("--deadline-dir")
        .arg(scene.deadline_dir())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| err(&e))?;
    let mut run = Running(run);
    let mut short_job_done = false;
    let mut draining_since: Option<Instant> = None;
    let mut lease_end_said = false;
    let mut signal_said = false;
    let mut long_job_exit: Option<i64> = None;
    let mut last_print = Instant::now() - Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Ok(Some(exit)) = run.0.try_wait() {
            return Err(format!("blockwatch run exited early with {exit}"));
        }
        let phase = scene.phase();
        if last_print.elapsed() >= Duration::from_secs(5) {
            say(&format!("   [blockwatch status] {}", scene.status_line()));
            if let Some(c) = &container_job {
                if let Some(left) = c
                    .read_deadline()
                    .as_deref()
                    .and_then(time_left)
                    .filter(|left| *left > 0)
                {
                    say(&format!(
                        "   [long job] reads {DEADLINE_MOUNT}/deadline in its container: {left} s left before the instance ends"
                    ));
                }
            } else if let Some(left) = scene.job_time_left().filter(|left| *left > 0) {
                say(&format!(
                    "   [long job] reads {}: {left} s left before the instance ends{}",
                    scene.deadline_dir().join("deadline").display(),
                    if draining_since.is_some() {
                        "; checkpointing"
                    } else {
                        ""
                    }
                ));
            }
            last_print = Instant::now();
        }
        if phase == "draining" && draining_since.is_none() {
            draining_since = Some(Instant::now());
            say(&format!("   [blockwatch status] {}", scene.status_line()));
            say("   DRAINING: Batch places no new job here; the running jobs carry on");
        }
        if !short_job_done
            && draining_since.is_some_and(|at| at.elapsed() >= Duration::from_secs(5))
        {
            moto.stop_task(&cluster_arn, &short_job)
                .await
                .map_err(|e| err(&e))?;
            say("   the short job finished; the other one is still running");
            short_job_done = true;
        }
        if let Some(c) = &container_job {
            if !signal_said {
                let signals = c.job.signals_received();
                // Only the checkpoint signal: a stop's SIGTERM is heard too.
                if let Some(heard) = signals.iter().find(|s| s.name == CHECKPOINT_SIGNAL) {
                    signal_said = true;
                    let due = scene
                        .checkpoint_at()
                        .ok_or("deadline.json has no checkpoint_at")?;
                    say(&format!(
                        "\n== 4. {}: checkpoint_at, {CHECKPOINT_LEAD} before stop_at (the lease end)",
                        rfc3339(due)
                    ));
                    let heard_at = time::OffsetDateTime::from(heard.at);
                    say(&format!(
                        "   [long job] heard {} (a line in its signals file), {:.1} s after checkpoint_at",
                        heard.name,
                        (heard_at - due).as_seconds_f64()
                    ));
                }
            }
            if signal_said && long_job_exit.is_none() {
                long_job_exit = c.job.exit_code().map_err(|e| err(&e))?;
                if let Some(code) = long_job_exit {
                    let done = c.job.units_done();
                    say(&match c.job.checkpointed_unit() {
                        Some(unit) => format!(
                            "   [long job] wrote its checkpoint (unit {unit} of {done} done) and exited {code}"
                        ),
                        None => format!("   [long job] exited {code} with no checkpoint ({done} units done)"),
                    });
                    // What ECS does when the ECS agent reports the exit of a
                    // task nobody stopped (a stop already set its reason).
                    if !stop_asked(&moto, &cluster_arn, &long_job).await? {
                        moto.stop_task(&cluster_arn, &long_job)
                            .await
                            .map_err(|e| err(&e))?;
                    }
                    say(
                        "   the ECS agent reports its task STOPPED: no job is left on the instance",
                    );
                }
            }
        }
        if !lease_end_said
            && container_job.is_none()
            && time::OffsetDateTime::now_utc() >= now + time::Duration::seconds(LEASE)
        {
            say(&format!(
                "\n== 4. {lease_end}: the lease ends with a job still running"
            ));
            lease_end_said = true;
        }
        if scene.powered_off() {
            break;
        }
        if started.elapsed() > Duration::from_secs(110) {
            return Err("the lease did not end in a power-off within the demo's time".into());
        }
    }
    // A real instance is gone now. Here blockwatch keeps running a moment,
    // to show that the power-off is not repeated.
    tokio::time::sleep(AFTER_POWEROFF).await;
    drop(run);

    let (status, reason) = task_status(&moto, &cluster_arn, &long_job).await?;
    say(&format!(
        "   the last job, as ECS reports it: {status}, stoppedReason {reason:?}"
    ));
    match &container_job {
        Some(c) => {
            check_checkpointed(&c.job, signal_said, long_job_exit)?;
            if status != "STOPPED" || reason.starts_with("blockwatch:") {
                return Err(format!(
                    "the last job did not end by itself: {status} {reason:?}"
                ));
            }
            let early = scene.state()["drain"]["poweroff_at"]
                .as_str()
                .and_then(parse_rfc3339)
                .map(|off| (now + time::Duration::seconds(LEASE) - off).whole_seconds());
            if let Some(early) = early.filter(|early| *early > 0) {
                say(&format!(
                    "   drained with no job left: powered off {early} s before the lease end, idle time not paid for"
                ));
            }
        }
        None if status != "STOPPED" || !reason.starts_with("blockwatch:") => {
            return Err(format!(
                "the last job was not stopped by blockwatch: {status} {reason:?}"
            ));
        }
        None => {}
    }
    let lines = scene.poweroff_lines();
    say(&format!("   {}:", scene.poweroff_log().display()));
    for line in &lines {
        say(&format!("   | {line}"));
    }
    if lines.len() != 1 {
        return Err(format!(
            "the power-off command ran {} times, not once",
            lines.len()
        ));
    }
    say("   the power-off command ran once (on an instance: systemctl --no-block poweroff, and EC2 terminates it)");

    say("\n== 5. what an operator sees");
    say("$ blockwatch status");
    let human = scene
        .blockwatch(&["status"])
        .output()
        .map_err(|e| err(&e))?;
    say(String::from_utf8_lossy(&human.stdout).trim_end());
    say("\n$ blockwatch status --json");
    let json = scene
        .blockwatch(&["status", "--json"])
        .output()
        .map_err(|e| err(&e))?;
    say(String::from_utf8_lossy(&json.stdout).trim_end());
    say(&format!("\ndone in {}s", started.elapsed().as_secs()));
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

/// That the real long job heard its signal, checkpointed its last whole
/// unit and exited 0.
fn check_checkpointed(job: &JobContainer, signaled: bool, exit: Option<i64>) -> Result<(), String> {
    if !signaled {
        return Err("the long job heard no checkpoint signal".into());
    }
    if exit != Some(0) {
        return Err(format!(
            "the long job did not exit 0 after its signal: {exit:?}"
        ));
    }
    let (checkpoint, done) = (job.checkpointed_unit(), job.units_done());
    if checkpoint != Some(done) {
        return Err(format!(
            "the long job's checkpoint is {checkpoint:?}, not its last unit {done}"
        ));
    }
    Ok(())
}

/// Whether ECS (moto) was asked to stop `task`: its desired status is
/// STOPPED. ListTasks, as DescribeTasks would move a running task on.
async fn stop_asked(moto: &MotoServer, cluster: &str, task: &str) -> Result<bool, String> {
    let listed = aws_sdk_ecs::Client::new(moto.sdk())
        .list_tasks()
        .cluster(cluster)
        .desired_status(aws_sdk_ecs::types::DesiredStatus::Stopped)
        .send()
        .await
        .map_err(|e| format!("ecs:ListTasks: {}", DisplayErrorContext(&e)))?;
    Ok(listed.task_arns().iter().any(|arn| arn == task))
}

/// `lastStatus` and `stoppedReason` of a task, read back from ECS (moto).
/// Only for a stopped task: moto moves a running task one step towards
/// STOPPED at each DescribeTasks.
async fn task_status(
    moto: &MotoServer,
    cluster: &str,
    task: &str,
) -> Result<(String, String), String> {
    let described = aws_sdk_ecs::Client::new(moto.sdk())
        .describe_tasks()
        .cluster(cluster)
        .tasks(task)
        .send()
        .await
        .map_err(|e| format!("ecs:DescribeTasks: {}", DisplayErrorContext(&e)))?;
    let found = described
        .tasks()
        .first()
        .ok_or_else(|| format!("ecs:DescribeTasks: no task {task}"))?;
    Ok((
        found.last_status().unwrap_or_default().to_owned(),
        found.stopped_reason().unwrap_or_default().to_owned(),
    ))
}

/// Each line quoted, so CR and quotes are visible.
fn show(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    say(&format!("   {}:", path.display()));
    for line in text.split_terminator('\n') {
        say(&format!("   | {line:?}"));
    }
    Ok(())
}
