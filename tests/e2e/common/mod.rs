//! A simulated instance for end-to-end tests: the IMDS simulator, moto, a
//! scratch root for ecs.config and state, and the real `blockwatch` binary.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use blockwatch_core::tags::{TAG_CLUSTER, TAG_LEASE_END};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};

use blockwatch_testkit::imds::{ImdsSimulator, InstanceState};
use blockwatch_testkit::moto::{MotoServer, REGION};

pub const BIN: &str = env!("CARGO_BIN_EXE_blockwatch");

pub struct Instance {
    pub imds: ImdsSimulator,
    pub moto: Option<MotoServer>,
    pub root: tempfile::TempDir,
    /// Used when there is no moto: [`CLOSED_ENDPOINT`], so any AWS call fails.
    pub aws_endpoint: String,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Self {
        Self {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
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
        let moto = MotoServer::start().await.expect("moto server");
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
        let mut command = Command::new(BIN);
        command
            .env_clear()
            .env("PATH", blockwatch_testkit::host_guard::path())
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", self.imds.endpoint())
            .env("AWS_ENDPOINT_URL", &self.aws_endpoint)
            .env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/aws-credentials",
            )
            .env("AWS_MAX_ATTEMPTS", "2")
            // The deadline files stay in the scratch directory, off the host's /run.
            .env("BLOCKWATCH_DEADLINE_DIR", self.deadline_dir());
        command
    }

    pub fn deadline_dir(&self) -> PathBuf {
        self.root.path().join("run/blockwatch")
    }

    /// `blockwatch join` with the scratch paths and `extra` arguments; the
    /// config file is passed only if it exists (as the default path would be).
    pub fn join(&self, extra: &[&str]) -> Run {
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
        command.args(extra);
        command.output().expect("run blockwatch").into()
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
pub struct Agent {
    pub child: std::process::Child,
    pub stderr: PathBuf,
}

impl Agent {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until the agent's log contains `needle`, or panics after `within`.
    pub fn wait_for_log(&self, needle: &str, within: std::time::Duration) -> String {
        let deadline = std::time::Instant::now() + within;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {needle:?} in the log:\n{log}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
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
        for (k, v) in extra_env {
            command.env(k, v);
        }
        let child = command
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn blockwatch run");
        Agent { child, stderr }
    }

    pub fn snapshot(&self) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.state_dir().join("state.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Waits until the state file satisfies `done`, or panics after `within`.
    pub fn wait_for(
        &self,
        agent: &Agent,
        within: std::time::Duration,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(snapshot) = self.snapshot() {
                if done(&snapshot) {
                    return snapshot;
                }
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; state: {:?}\nlog:\n{}",
                    self.snapshot(),
                    agent.log()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
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

/// Short intervals, so that `run` polls and drains quickly.
pub const FAST: &str =
    "poll_interval = \"1s\"\ndrain_lead = \"10s\"\ndrain_poll_interval = \"1s\"\n";

/// An instance in moto, tagged with cluster `jobs` plus `tags` and
/// registered in that cluster, with a config file of [`FAST`] plus `config`.
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
pub fn receiver_refusing_first(refusals: usize) -> blockwatch_testkit::stub::StubServer {
    blockwatch_testkit::stub::StubServer::start(move |n, _| {
        if n < refusals {
            (503, "busy".into())
        } else {
            (200, "ok".into())
        }
    })
    .unwrap()
}

pub const POLL: std::time::Duration = std::time::Duration::from_secs(1);
pub const LEAD: time::Duration = time::Duration::seconds(10);
/// A drain may start at most this late: one poll plus two seconds for a
/// loaded machine.
pub const LATE: time::Duration = time::Duration::seconds(3);
/// How long after a test's own setup (moto, the simulator, the config) a
/// timed event is due: the agent must start and be watching before then.
/// A start takes well under a second on an idle machine; this leaves room
/// for a cold, loaded 2-core CI machine.
pub const STARTUP: time::Duration = time::Duration::seconds(8);
/// An upper bound for a wait that passing tests never reach.
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);
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

/// A Capacity Block end that a test may move while the agent runs.
pub type MovableEnd = std::sync::Arc<std::sync::Mutex<Option<time::OffsetDateTime>>>;

/// moto has neither legacy spot blocks nor Capacity Blocks, so these come
/// from a stub EC2 endpoint (`AWS_ENDPOINT_URL_EC2`) that answers the calls
/// in EC2's XML, read by the real SDK. `capacity_block_end` is read at each
/// `DescribeCapacityReservations`, so a test can extend the block.
pub fn ec2_stub(
    instance_id: String,
    block_minutes: Option<u32>,
    capacity_block_end: MovableEnd,
) -> blockwatch_testkit::stub::StubServer {
    use blockwatch_core::time_text::rfc3339;
    blockwatch_testkit::stub::StubServer::start(move |_, request| {
        let end = *capacity_block_end.lock().unwrap();
        let action = request.body.split('&').find_map(|kv| kv.strip_prefix("Action=")).unwrap_or_default().to_owned();
        let body = match action.as_str() {
            "DescribeInstances" => format!(
                "<DescribeInstancesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>r</requestId><reservationSet><item><reservationId>r-1</reservationId><instancesSet><item><instanceId>{instance_id}</instanceId>{}{}</item></instancesSet></item></reservationSet></DescribeInstancesResponse>",
                block_minutes.map(|_| "<spotInstanceRequestId>sir-0123abcd</spotInstanceRequestId>").unwrap_or_default(),
                end.map(|_| "<capacityReservationId>cr-0123abcd</capacityReservationId>").unwrap_or_default(),
            ),
            "DescribeSpotInstanceRequests" => format!(
                "<DescribeSpotInstanceRequestsResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>r</requestId><spotInstanceRequestSet><item><spotInstanceRequestId>sir-0123abcd</spotInstanceRequestId><blockDurationMinutes>{}</blockDurationMinutes></item></spotInstanceRequestSet></DescribeSpotInstanceRequestsResponse>",
                block_minutes.unwrap_or_default()
            ),
            "DescribeCapacityReservations" => format!(
                "<DescribeCapacityReservationsResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>r</requestId><capacityReservationSet><item><capacityReservationId>cr-0123abcd</capacityReservationId><reservationType>capacity-block</reservationType><endDate>{}</endDate></item></capacityReservationSet></DescribeCapacityReservationsResponse>",
                end.map(rfc3339).unwrap_or_default()
            ),
            "DescribeInstanceAttribute" => format!(
                "<DescribeInstanceAttributeResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>r</requestId><instanceId>{instance_id}</instanceId><instanceInitiatedShutdownBehavior><value>terminate</value></instanceInitiatedShutdownBehavior></DescribeInstanceAttributeResponse>"
            ),
            _ => return (400, format!("<Response><Errors><Error><Code>InvalidAction</Code><Message>{action}</Message></Error></Errors></Response>")),
        };
        (200, body)
    })
    .unwrap()
}

/// A fixed end for [`ec2_stub`].
pub fn fixed_end(end: Option<time::OffsetDateTime>) -> MovableEnd {
    std::sync::Arc::new(std::sync::Mutex::new(end))
}
