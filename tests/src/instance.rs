//! A simulated instance for end-to-end tests: the IMDS simulator, moto, a
//! scratch root for ecs.config and state, and the real `blockwatch` binary.
//!
//! A fixture: a failed setup step panics, which fails the test that asked.
//!
//! Over 400 lines: one instance and its agent, with every setup and wait the
//! agent's tests share.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use blockwatch_core::tags::{TAG_CLUSTER, TAG_COMPUTE_ENVIRONMENT};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::imds::{ImdsSimulator, InstanceState};
use crate::moto::{MotoServer, REGION};
pub use crate::output::Run;
use blockwatch::sources::notices::SPOT_INSTANCE_ACTION;

/// The `blockwatch` binary Cargo built beside the test binary: nextest names
/// it in `NEXTEST_BIN_EXE_blockwatch`; under `cargo test` the test binary
/// runs from `target/<profile>/deps/`, the agent's sits one folder up.
pub fn agent_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NEXTEST_BIN_EXE_blockwatch") {
        return PathBuf::from(path);
    }
    let me = std::env::current_exe().expect("the test binary's path");
    let profile_dir = me
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary runs from target/<profile>/deps");
    let bin = profile_dir.join("blockwatch");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build --workspace --bins; tests/run-tests does)",
        bin.display()
    );
    bin
}

/// An upper bound for a wait that passing tests never reach.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Short intervals, so that `run` polls and drains quickly.
pub const FAST: &str =
    "poll_interval = \"1s\"\ndrain_lead = \"10s\"\ndrain_poll_interval = \"1s\"\n";

#[derive(Debug)]
pub struct Instance {
    pub imds: ImdsSimulator,
    pub moto: Option<MotoServer>,
    pub root: tempfile::TempDir,
    /// Used when there is no moto: [`CLOSED_ENDPOINT`], so any AWS call fails.
    pub aws_endpoint: String,
}

pub fn tags(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

/// An endpoint nothing listens on, now or later: port 1 on loopback is
/// privileged and outside the ephemeral range, so no test's moto, simulator
/// or stub can ever be given it (a port picked free and dropped could be).
pub const CLOSED_ENDPOINT: &str = "http://127.0.0.1:1";

/// An address for a server that a test starts later (an IMDS that comes up
/// late in boot): connections are refused until then, and no other server
/// can take it in between. Every other test server listens on 127.0.0.1;
/// this one gets a loopback address of its own, derived from the test's PID,
/// and a port below the ephemeral range, which the kernel never hands out.
pub fn address_for_later() -> std::net::SocketAddr {
    let pid = std::process::id();
    let ip = std::net::Ipv4Addr::new(
        127,
        1 + ((pid >> 16) % 250) as u8,
        ((pid >> 8) & 0xff) as u8,
        1 + ((pid & 0xff) % 254) as u8,
    );
    (20_000..20_200)
        .map(|port| std::net::SocketAddr::from((ip, port)))
        .find(|addr| std::net::TcpListener::bind(addr).is_ok())
        .unwrap_or_else(|| panic!("no free port on {ip} in 20000-20199"))
}

impl Instance {
    /// An instance with moto behind it.
    pub async fn with_moto() -> Self {
        Self::with(MotoServer::start().await.expect("moto server"))
    }

    /// An instance with `moto` behind it (e.g. moto over HTTPS).
    pub fn with(moto: MotoServer) -> Self {
        let endpoint = moto.endpoint();
        Self {
            imds: ImdsSimulator::start(Self::base_state()).unwrap(),
            moto: Some(moto),
            root: tempfile::tempdir().unwrap(),
            aws_endpoint: endpoint,
        }
    }

    /// An instance whose AWS endpoint is [`CLOSED_ENDPOINT`]: any AWS call fails.
    pub fn without_aws() -> Self {
        Self {
            imds: ImdsSimulator::start(Self::base_state()).unwrap(),
            moto: None,
            root: tempfile::tempdir().unwrap(),
            aws_endpoint: CLOSED_ENDPOINT.to_owned(),
        }
    }

    /// An instance without AWS whose cluster is its `blockwatch:cluster`
    /// tag in IMDS: `join` and `run` need nothing else.
    pub fn in_cluster_without_aws(cluster: &str) -> Self {
        let instance = Self::without_aws();
        instance
            .imds
            .update(|s| s.tags = tags(&[(TAG_CLUSTER, cluster)]));
        instance
    }

    fn base_state() -> InstanceState {
        InstanceState {
            region: REGION.to_owned(),
            availability_zone: format!("{REGION}a"),
            ..InstanceState::default()
        }
    }

    pub fn moto(&self) -> &MotoServer {
        self.moto.as_ref().expect("this instance has moto")
    }

    /// Launches the instance in moto with `tags` and makes the simulator
    /// serve the same id and tags (or no tags, when `tags_in_imds` is false).
    pub async fn launch(&self, pairs: &[(&str, &str)], tags_in_imds: bool) -> String {
        let id = self.moto().launch_instance(pairs).await.expect("launch");
        let served = if tags_in_imds { tags(pairs) } else { None };
        self.imds.update(|s| {
            s.instance_id = id.clone();
            s.tags = served;
        });
        id
    }

    /// Creates the enabled UNMANAGED compute environment `name` in moto and
    /// launches the instance tagged with it (in IMDS too); returns the name
    /// of its ECS cluster.
    pub async fn launch_in_compute_environment(&self, name: &str) -> String {
        let cluster_arn = self
            .moto()
            .create_unmanaged_ce(name, true)
            .await
            .expect("compute environment");
        self.launch(&[(TAG_COMPUTE_ENVIRONMENT, name)], true).await;
        cluster_arn
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    pub fn ecs_config(&self) -> PathBuf {
        self.root.path().join("etc/ecs/ecs.config")
    }

    pub fn config_file(&self) -> PathBuf {
        self.root.path().join("etc/blockwatch/blockwatch.toml")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root.path().join("var/lib/blockwatch")
    }

    pub fn write_config(&self, text: &str) -> PathBuf {
        let path = self.config_file();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn write_ecs_config(&self, bytes: &[u8]) {
        let path = self.ecs_config();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    pub fn read_ecs_config(&self) -> Option<Vec<u8>> {
        std::fs::read(self.ecs_config()).ok()
    }

    /// The binary, with only the environment an instance would have: IMDS at
    /// the simulator (which also serves the instance-profile credentials),
    /// AWS at moto, no region and no credentials of the host's.
    pub fn command(&self) -> Command {
        let mut command = Command::new(agent_binary());
        command
            .env_clear()
            .env("PATH", crate::host_guard::path())
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", self.imds.endpoint())
            .env("AWS_ENDPOINT_URL", &self.aws_endpoint)
            .env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/aws-credentials",
            )
            .env("AWS_MAX_ATTEMPTS", "2")
            // The deadline files stay in the scratch directory, off the host's /run.
            .env("BLOCKWATCH_DEADLINE_DIR", self.deadline_dir())
            // Never the host's Docker: nothing answers here unless a test
            // points DOCKER_HOST at its own dockerd.
            .env(
                "DOCKER_HOST",
                format!("unix://{}/no-docker.sock", self.root.path().display()),
            );
        command
    }

    pub fn deadline_dir(&self) -> PathBuf {
        self.root.path().join("run/blockwatch")
    }

    /// `blockwatch join` with the scratch paths and `extra` arguments; the
    /// config file is passed only if it exists (as the default path would be).
    pub fn join(&self, extra: &[&str]) -> Run {
        let mut command = self.join_command();
        command.args(extra);
        command.output().expect("run blockwatch").into()
    }

    /// `blockwatch join` with the scratch paths, to run as the test likes.
    pub fn join_command(&self) -> Command {
        let mut command = self.command();
        command
            .arg("join")
            .arg("--ecs-config")
            .arg(self.ecs_config())
            .arg("--state-dir")
            .arg(self.state_dir());
        if self.config_file().exists() {
            command.arg("--config").arg(self.config_file());
        } else {
            // Exercise the default path, which must be absent on the test host.
            assert!(
                !std::path::Path::new("/etc/blockwatch/blockwatch.toml").exists(),
                "/etc/blockwatch/blockwatch.toml exists on this host and would leak into the tests"
            );
        }
        command
    }

    pub fn token_puts(&self) -> usize {
        self.imds
            .exchanges()
            .iter()
            .filter(|e| e.method == "PUT")
            .count()
    }
}

/// A running `blockwatch run`, killed (by PID) when dropped.
#[derive(Debug)]
pub struct Agent {
    pub child: std::process::Child,
    pub stderr: PathBuf,
}

impl Agent {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Its log holds `needle`.
    #[track_caller]
    pub fn assert_log_has(&self, needle: &str) {
        let log = self.log();
        assert!(log.contains(needle), "the log lacks {needle:?}: {log}");
    }

    /// Waits until the agent's two one-off EC2 reads at start
    /// (`DescribeInstances` for end dates, `DescribeInstanceAttribute` for
    /// the shutdown behaviour, `stop` on moto) have their answers: they run
    /// beside the loop, and are retried when IMDS is slow to give
    /// credentials, so a quiet window must start after them.
    pub fn wait_for_start_reads(&self) {
        self.wait_for_log("EC2 knows no spot block", PATIENCE);
        self.wait_for_log("instance-initiated shutdown behaviour is `stop`", PATIENCE);
    }

    /// Waits until the agent's log contains `needle`, or panics after `within`.
    pub fn wait_for_log(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {needle:?} in the log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill_9();
    }
}

impl Instance {
    /// Starts `blockwatch run` with the scratch paths; `extra_env` lets a
    /// test add e.g. `NOTIFY_SOCKET`.
    pub fn spawn_run(&self, extra_args: &[&str], extra_env: &[(&str, &str)]) -> Agent {
        let stderr = self.root.path().join(format!(
            "run-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let mut command = self.run_command(extra_args);
        for (k, v) in extra_env {
            command.env(k, v);
        }
        let child = command
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn blockwatch run");
        Agent { child, stderr }
    }

    /// `blockwatch run` with the scratch paths and `extra_args`, to start as
    /// the test likes.
    pub fn run_command(&self, extra_args: &[&str]) -> Command {
        let mut command = self.command();
        command.arg("run").arg("--state-dir").arg(self.state_dir());
        if !extra_args.contains(&"--ecs-introspection-url") {
            // Hermetic: nothing answers there, so the API fallback is used.
            command.args([
                "--ecs-introspection-url",
                &format!("{CLOSED_ENDPOINT}/v1/metadata"),
            ]);
        }
        if self.config_file().exists() {
            command.arg("--config").arg(self.config_file());
        }
        command.args(extra_args);
        command
    }

    /// `blockwatch status --json` of this instance's state directory, run as
    /// `command` (this instance's [`Instance::command`], or one with no
    /// environment at all); it must succeed. Its JSON.
    pub fn status_json(&self, mut command: Command) -> serde_json::Value {
        let output = command
            .args(["status", "--json", "--state-dir"])
            .arg(self.state_dir())
            .output()
            .expect("run blockwatch status");
        let status = Run::from(output);
        status.assert_exit(0);
        serde_json::from_str(&status.stdout).expect("status --json prints JSON")
    }

    pub fn snapshot(&self) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.state_dir().join("state.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Waits until the state file satisfies `done`, or panics after `within`.
    pub fn wait_for(
        &self,
        agent: &Agent,
        within: Duration,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + within;
        loop {
            if let Some(snapshot) = self.snapshot() {
                if done(&snapshot) {
                    return snapshot;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; state: {:?}\nlog:\n{}",
                    self.snapshot(),
                    agent.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The polls the agent has begun, as the simulator counts them: every
    /// tick GETs the spot notice once. Only answers IMDS gave (200, or 404
    /// for no notice) count: an answered GET is never retried, so the count
    /// never runs ahead of the ticks, while a failed one may be tried twice.
    pub fn polls_begun(&self) -> usize {
        self.imds
            .exchanges()
            .iter()
            .filter(|e| e.method == "GET" && e.path == SPOT_INSTANCE_ACTION)
            .filter(|e| e.status == 200 || e.status == 404)
            .count()
    }

    /// Waits until `agent` has run `ticks` whole ticks that began after this
    /// call, or panics after [`PATIENCE`]. A tick reads the notices first and
    /// the next one starts only once it has decided, acted and recorded, so
    /// when the poll after them begins those ticks are done. A test that
    /// asserts nothing happened does so after this, never after a sleep,
    /// which a busy machine can outrun.
    pub fn wait_ticks(&self, agent: &Agent, ticks: usize) {
        let target = self.polls_begun() + ticks + 1;
        let deadline = Instant::now() + PATIENCE;
        while self.polls_begun() < target {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {ticks} ticks of the agent ({} of {target} polls begun); state: {:?}\nlog:\n{}",
                self.polls_begun(),
                self.snapshot(),
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub fn phase(snapshot: &serde_json::Value) -> &str {
    snapshot["phase"].as_str().unwrap_or_default()
}

/// Nothing runs on the instance any more: drained by itself, or its stopped
/// tasks gone (or out of time). The phase may already have moved on to the
/// power-off.
pub fn nothing_runs(snapshot: &serde_json::Value) -> bool {
    snapshot["drain"]["drained_at"].is_string() || snapshot["drain"]["stopped_at"].is_string()
}

pub fn parse_time(text: &str) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).unwrap()
}

/// Now, in whole seconds as tags and IMDS carry times.
pub fn now() -> time::OffsetDateTime {
    let now = time::OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap()
}
