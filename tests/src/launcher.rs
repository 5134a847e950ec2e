//! `blockwatch-launch` for its end-to-end tests: the binary in a hermetic
//! environment against moto ([`Launcher`]), and the canned answers of the
//! AWS stand-ins that show what moto cannot ([`canned`]).

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use crate::moto::REGION;
use crate::stub::{forward, StubServer};

/// The launcher binary Cargo built beside the test that runs it.
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/debug/deps/<test> -> target/debug/blockwatch-launch
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("blockwatch-launch"))
        .unwrap_or_default()
}

/// How the launcher ended.
pub use crate::output::Run;

/// The launcher with only AWS at one endpoint in its environment: fixed
/// test credentials, a region, no profile files, no instance metadata, and
/// nothing of the host's.
#[derive(Debug)]
pub struct Launcher {
    command: Command,
}

impl Launcher {
    /// Every AWS service at `endpoint`.
    pub fn new(endpoint: &str) -> Self {
        let mut command = Command::new(binary());
        command.env_clear();
        for (key, value) in hermetic_env(endpoint) {
            command.env(key, value);
        }
        Self { command }
    }

    /// EC2 at `url` instead, and one attempt per call: a stand-in's refusal
    /// is final.
    pub fn ec2_at(mut self, url: &str) -> Self {
        self.command
            .env("AWS_ENDPOINT_URL_EC2", url)
            .env("AWS_MAX_ATTEMPTS", "1");
        self
    }

    /// ECS at `url` instead, one attempt per call.
    pub fn ecs_at(mut self, url: &str) -> Self {
        self.command
            .env("AWS_ENDPOINT_URL_ECS", url)
            .env("AWS_MAX_ATTEMPTS", "1");
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.command.env(key, value);
        self
    }

    /// Takes `key` out of the environment, such as the test keys where a
    /// profile must supply the credentials.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.command.env_remove(key);
        self
    }

    /// Launching `count` instances for `duration` into the `research`
    /// compute environment, the flags most tests start from.
    pub fn launch(self, count: u32, duration: &str) -> Self {
        self.args(launch_args("research", &count.to_string(), duration))
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command.args(args);
        self
    }

    /// The command, to spawn it rather than run it to the end.
    pub fn command(self) -> Command {
        self.command
    }

    /// Starts it, its output captured.
    pub fn spawn(mut self) -> std::io::Result<Running> {
        use std::process::Stdio;
        let child = self
            .command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        Ok(Running { child: Some(child) })
    }

    /// Runs it to the end, or kills it after `limit` (see
    /// [`Running::finish_within`]).
    pub fn run_within(self, limit: std::time::Duration) -> Run {
        match self.spawn() {
            Ok(running) => running.finish_within(limit),
            Err(err) => Run {
                code: -1,
                stdout: String::new(),
                stderr: format!("cannot run {}: {err}", binary().display()),
            },
        }
    }

    /// Runs it to the end.
    pub fn run(mut self) -> Run {
        match self.command.output() {
            Ok(output) => output.into(),
            Err(err) => Run {
                code: -1,
                stdout: String::new(),
                stderr: format!("cannot run {}: {err}", binary().display()),
            },
        }
    }
}

/// A launcher started by [`Launcher::spawn`]; killed if dropped running.
#[derive(Debug)]
pub struct Running {
    child: Option<std::process::Child>,
}

impl Running {
    /// Sends it SIGINT, as Ctrl-C does.
    pub fn interrupt(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
        }
    }

    /// Waits for its end, or kills it after `limit` and says so in `stderr`
    /// (code -1): a launcher that hangs fails its test instead of holding it.
    pub fn finish_within(mut self, limit: std::time::Duration) -> Run {
        let Some(mut child) = self.child.take() else {
            return Run {
                code: -1,
                stdout: String::new(),
                stderr: "already finished".into(),
            };
        };
        let started = std::time::Instant::now();
        while matches!(child.try_wait(), Ok(None)) && started.elapsed() < limit {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let hung = matches!(child.try_wait(), Ok(None));
        if hung {
            let _ = child.kill();
        }
        let mut run: Run = match child.wait_with_output() {
            Ok(output) => output.into(),
            Err(err) => Run {
                code: -1,
                stdout: String::new(),
                stderr: err.to_string(),
            },
        };
        if hung {
            run.code = -1;
            run.stderr.push_str(&format!(
                "\n[killed by the test: still running after {limit:?}]"
            ));
        }
        run
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Every instance moto holds, as the launcher's tests check them.
pub async fn instances(
    moto: &crate::moto::MotoServer,
) -> Result<Vec<aws_sdk_ec2::types::Instance>, aws_sdk_ec2::Error> {
    let described = aws_sdk_ec2::Client::new(moto.sdk())
        .describe_instances()
        .send()
        .await?;
    Ok(described
        .reservations()
        .iter()
        .flat_map(|r| r.instances().to_vec())
        .collect())
}

/// An instance's shutdown behaviour (`stop` or `terminate`), as EC2 holds it.
pub async fn shutdown_behavior(moto: &crate::moto::MotoServer, id: &str) -> Option<String> {
    aws_sdk_ec2::Client::new(moto.sdk())
        .describe_instance_attribute()
        .instance_id(id)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::InstanceInitiatedShutdownBehavior)
        .send()
        .await
        .ok()?
        .instance_initiated_shutdown_behavior()
        .and_then(|b| b.value())
        .map(str::to_owned)
}

/// Asserts that instance `id` has volumes and that each carries `tags`.
pub async fn assert_volumes_tagged(
    moto: &crate::moto::MotoServer,
    id: &str,
    tags: &[(&str, &str)],
) {
    let described = aws_sdk_ec2::Client::new(moto.sdk())
        .describe_volumes()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("attachment.instance-id")
                .values(id)
                .build(),
        )
        .send()
        .await;
    let volumes = described.map(|d| d.volumes().to_vec()).unwrap_or_default();
    assert!(!volumes.is_empty(), "{id} has no volume");
    for volume in &volumes {
        for (key, value) in tags {
            assert!(
                volume
                    .tags()
                    .iter()
                    .any(|t| t.key() == Some(key) && t.value() == Some(value)),
                "a volume of {id} lacks {key}={value}: {:?}",
                volume.tags()
            );
        }
    }
}

/// The data of the launch template a launch reported (`launch_template` of
/// its `--output json`); the template must still exist (`--keep-template`).
pub async fn launch_template_data(
    moto: &crate::moto::MotoServer,
    reported: &serde_json::Value,
) -> Option<aws_sdk_ec2::types::ResponseLaunchTemplateData> {
    let described = aws_sdk_ec2::Client::new(moto.sdk())
        .describe_launch_template_versions()
        .launch_template_id(reported["id"].as_str()?)
        .versions(reported["version"].as_i64()?.to_string())
        .send()
        .await
        .ok()?;
    described
        .launch_template_versions()
        .first()
        .and_then(|v| v.launch_template_data())
        .cloned()
}

/// The flags that launch `count` instances for `duration` into
/// `compute_environment`, for tests that vary the rest.
pub fn launch_args<'a>(
    compute_environment: &'a str,
    count: &'a str,
    duration: &'a str,
) -> Vec<&'a str> {
    vec![
        "--compute-environment",
        compute_environment,
        "--count",
        count,
        "--duration",
        duration,
    ]
}

/// The environment of a hermetic launcher with AWS at `endpoint`.
pub fn hermetic_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint.to_owned()),
        ("AWS_REGION", REGION.to_owned()),
        ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
        ("AWS_CONFIG_FILE", "/nonexistent".to_owned()),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent".to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
    ]
}

/// What the AWS stand-ins answer where moto cannot.
pub mod canned {
    use super::*;

    /// An EC2 error document, as EC2's query protocol sends it.
    pub fn ec2_error(code: &str, message: &str) -> String {
        format!("<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>r</RequestID></Response>")
    }

    /// EC2 in front of moto at `upstream` where only RunInstances is
    /// answered by `answer`, given how many RunInstances came before; every
    /// other call (the launch template's) goes to moto.
    pub fn run_instances(
        upstream: SocketAddr,
        answer: impl Fn(usize) -> (u16, String) + Send + Sync + 'static,
    ) -> std::io::Result<StubServer> {
        let calls = std::sync::atomic::AtomicUsize::new(0);
        StubServer::start(move |_, request| {
            if request.body.contains("Action=RunInstances") {
                answer(calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst))
            } else {
                forward(upstream, request)
            }
        })
    }

    /// EC2 in front of moto at `upstream` that answers the calls named in
    /// `answers` (action, status, body) and passes every other to moto.
    pub fn answering(
        upstream: SocketAddr,
        answers: Vec<(&'static str, u16, String)>,
    ) -> std::io::Result<StubServer> {
        StubServer::start(move |_, request| {
            answers
                .iter()
                .find(|(action, _, _)| request.body.contains(&format!("Action={action}&")))
                .map_or_else(
                    || forward(upstream, request),
                    |(_, status, body)| (*status, body.clone()),
                )
        })
    }

    /// A CreateFleet answer as EC2 sends it: `instances` (id, type,
    /// lifecycle) and `errors` (type, lifecycle, code, message), each with
    /// its pool's overrides.
    pub fn create_fleet(
        instances: &[(&str, &str, &str)],
        errors: &[(&str, &str, &str, &str)],
    ) -> String {
        let pool = |instance_type: &str| {
            format!("<launchTemplateAndOverrides><launchTemplateSpecification><launchTemplateId>lt-0123456789abcdef0</launchTemplateId><version>1</version></launchTemplateSpecification><overrides><instanceType>{instance_type}</instanceType></overrides></launchTemplateAndOverrides>")
        };
        let errors: String = errors
            .iter()
            .map(|(t, lifecycle, code, message)| {
                format!("<item>{}<lifecycle>{lifecycle}</lifecycle><errorCode>{code}</errorCode><errorMessage>{message}</errorMessage></item>", pool(t))
            })
            .collect();
        let instances: String = instances
            .iter()
            .map(|(id, t, lifecycle)| {
                format!("<item>{}<lifecycle>{lifecycle}</lifecycle><instanceIds><item>{id}</item></instanceIds><instanceType>{t}</instanceType></item>", pool(t))
            })
            .collect();
        format!("<CreateFleetResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>r</requestId><fleetId>fleet-0123</fleetId><errorSet>{errors}</errorSet><fleetInstanceSet>{instances}</fleetInstanceSet></CreateFleetResponse>")
    }

    /// DescribeInstances of one pending instance launched at `launch_time`.
    pub fn pending_instance(id: &str, instance_type: &str, launch_time: &str) -> String {
        format!("<DescribeInstancesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>r</requestId><reservationSet><item><reservationId>r-1</reservationId><instancesSet><item><instanceId>{id}</instanceId><instanceType>{instance_type}</instanceType><launchTime>{launch_time}</launchTime><instanceState><code>0</code><name>pending</name></instanceState></item></instancesSet></item></reservationSet></DescribeInstancesResponse>")
    }

    /// DescribeCapacityReservations of one Capacity Block (moto has none).
    pub fn capacity_block(id: &str, end_date: &str) -> String {
        format!("<DescribeCapacityReservationsResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>r</requestId><capacityReservationSet><item><capacityReservationId>{id}</capacityReservationId><instanceType>p5.48xlarge</instanceType><reservationType>capacity-block</reservationType><endDate>{end_date}</endDate></item></capacityReservationSet></DescribeCapacityReservationsResponse>")
    }

    /// ECS as a real account answers, in front of moto at `upstream`:
    /// ListContainerInstances in pages of `maxResults`, at most `most`
    /// (moto gives all at once), listing `first` before the rest (the real
    /// order is unspecified); DescribeContainerInstances refuses more than
    /// `most`. Everything else goes to moto.
    pub fn paginating_ecs(
        upstream: SocketAddr,
        most: usize,
        first: Vec<String>,
    ) -> std::io::Result<StubServer> {
        StubServer::start(move |_, request| {
            let target = request
                .header("x-amz-target")
                .unwrap_or_default()
                .to_owned();
            let asked: serde_json::Value = serde_json::from_str(&request.body).unwrap_or_default();
            if target.ends_with(".DescribeContainerInstances")
                && asked["containerInstances"]
                    .as_array()
                    .is_some_and(|a| a.len() > most)
            {
                return (
                    400,
                    serde_json::json!({"__type": "InvalidParameterException", "message": format!("containerInstances: at most {most}")}).to_string(),
                );
            }
            let (status, text) = forward(upstream, request);
            if !target.ends_with(".ListContainerInstances") || status != 200 {
                return (status, text);
            }
            let listed: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let all: Vec<String> = listed["containerInstanceArns"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect();
            let mut ordered: Vec<&String> = all.iter().filter(|a| first.contains(a)).collect();
            ordered.extend(all.iter().filter(|a| !first.contains(a)));
            let start: usize = asked["nextToken"]
                .as_str()
                .map_or(0, |t| t.parse().unwrap_or(0));
            let size = asked["maxResults"]
                .as_u64()
                .map_or(most, |m| usize::try_from(m).unwrap_or(most).min(most));
            let end = (start + size).min(ordered.len());
            let next = (end < ordered.len()).then(|| end.to_string());
            (
                200,
                serde_json::json!({"containerInstanceArns": ordered[start.min(end)..end], "nextToken": next})
                    .to_string(),
            )
        })
    }
}
