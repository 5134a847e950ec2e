//! The README's first command: a whole short lease on a simulated instance.
//!
//! moto plays AWS and the IMDS simulator plays the instance. An UNMANAGED
//! compute environment is created and an instance is launched with a 45 s
//! lease. Then the real binary runs: `blockwatch join` writes ECS_CLUSTER,
//! the "ECS agent" registers and Batch places a job, and `blockwatch run`
//! counts down, drains at the lease end minus `drain_lead`, waits for the job
//! to finish, and reports drained. `blockwatch status` is shown along the way.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use blockwatch_testkit::imds::{rfc3339, ImdsSimulator, InstanceState};
use blockwatch_testkit::moto::{MotoServer, REGION};

const LEASE: i64 = 45;
const CONFIG: &str = "# The demo's short lease needs short intervals.\npoll_interval = \"1s\"\ndrain_lead = \"20s\"\ndrain_poll_interval = \"2s\"\n";

#[allow(clippy::print_stdout)]
fn say(text: &str) {
    println!("{text}");
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match demo().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("demo failed: {err}");
            ExitCode::FAILURE
        }
    }
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

    fn phase(&self) -> String {
        let text = std::fs::read_to_string(self.state_dir().join("state.json")).unwrap_or_default();
        serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["phase"].as_str().map(str::to_owned))
            .unwrap_or_default()
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
        ("blockwatch:compute-environment", "demo-ce"),
        ("blockwatch:lease-end", lease_end.as_str()),
        ("Name", "demo"),
    ];
    let instance_id = moto.launch_instance(&tags).await.map_err(|e| err(&e))?;
    say(&format!("   launched {instance_id}, no user data, tagged blockwatch:compute-environment=demo-ce blockwatch:lease-end={lease_end}"));
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
    std::fs::write(scene.config(), CONFIG).map_err(|e| err(&e))?;
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
    let task = moto
        .start_task(&cluster_arn, &container_instance)
        .await
        .map_err(|e| err(&e))?;
    say(&format!("   Batch placed a job on it: task {task}"));

    say("\n== 3. blockwatch run: watch, count down, drain at lease end - 20s");
    let run = scene
        .blockwatch(&[
            "run",
            "--ecs-introspection-url",
            "http://127.0.0.1:9/v1/metadata",
        ])
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| err(&e))?;
    let _run = Running(run);
    let mut job_finished = false;
    let mut draining_since: Option<Instant> = None;
    let mut last_print = Instant::now() - Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let phase = scene.phase();
        if last_print.elapsed() >= Duration::from_secs(5) {
            say(&format!("   [blockwatch status] {}", scene.status_line()));
            last_print = Instant::now();
        }
        if phase == "draining" && draining_since.is_none() {
            draining_since = Some(Instant::now());
            say(&format!("   [blockwatch status] {}", scene.status_line()));
            say("   DRAINING: Batch places no new job here; the running job carries on");
        }
        if !job_finished && draining_since.is_some_and(|at| at.elapsed() >= Duration::from_secs(6))
        {
            moto.stop_task(&cluster_arn, &task)
                .await
                .map_err(|e| err(&e))?;
            say("   the job finished");
            job_finished = true;
        }
        if phase == "drained" {
            break;
        }
        if started.elapsed() > Duration::from_secs(110) {
            return Err("the lease did not drain within the demo's time".into());
        }
    }
    let status = moto
        .container_instance_status(&cluster_arn, &container_instance)
        .await
        .map_err(|e| err(&e))?;
    say(&format!(
        "\n== 4. drained: the container instance is {status} at ECS and has no job left"
    ));
    say("\n$ blockwatch status");
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
    drop(_run);
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
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
