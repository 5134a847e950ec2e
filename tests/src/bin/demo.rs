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
//! Over 400 lines: one script from start to end, narrated as it goes.

use blockwatch_core::tags::{TAG_COMPUTE_ENVIRONMENT, TAG_LEASE_END};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use aws_smithy_types::error::display::DisplayErrorContext;
use blockwatch_core::time_text::rfc3339;
use blockwatch_testkit::imds::{ImdsSimulator, InstanceState};
use blockwatch_testkit::moto::{MotoServer, REGION};
use blockwatch_testkit::script::{finish, say};

const LEASE: i64 = 35;
const DRAIN_LEAD: &str = "15s";
/// How long the demo watches after the power-off, to show it ran once.
const AFTER_POWEROFF: Duration = Duration::from_secs(3);

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
        let text = std::fs::read_to_string(self.deadline_dir().join("deadline")).ok()?;
        let end = time::OffsetDateTime::parse(
            text.trim_end(),
            &time::format_description::well_known::Rfc3339,
        )
        .ok()?;
        Some((end - time::OffsetDateTime::now_utc()).whole_seconds())
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
             poweroff_command = {}\n",
            toml_string(&command)
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
    let moto = MotoServer::start().await.map_err(|e| err(&e))?;
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

    say(&format!(
        "\n== 3. blockwatch run: watch, count down, drain at the lease end - {DRAIN_LEAD}"
    ));
    say(&format!("   {}:", scene.config().display()));
    for line in scene.config_text().lines() {
        say(&format!("   | {line}"));
    }
    let run = scene
        .blockwatch(&[
            "run",
            "--ecs-introspection-url",
            "http://127.0.0.1:9/v1/metadata",
        ])
        .arg("--deadline-dir")
        .arg(scene.deadline_dir())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| err(&e))?;
    let mut run = Running(run);
    let mut short_job_done = false;
    let mut draining_since: Option<Instant> = None;
    let mut lease_end_said = false;
    let mut last_print = Instant::now() - Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Ok(Some(exit)) = run.0.try_wait() {
            return Err(format!("blockwatch run exited early with {exit}"));
        }
        let phase = scene.phase();
        if last_print.elapsed() >= Duration::from_secs(5) {
            say(&format!("   [blockwatch status] {}", scene.status_line()));
            if let Some(left) = scene.job_time_left().filter(|left| *left > 0) {
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
        if !lease_end_said
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
    if status != "STOPPED" || !reason.starts_with("blockwatch:") {
        return Err(format!(
            "the last job was not stopped by blockwatch: {status} {reason:?}"
        ));
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
