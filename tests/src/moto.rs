//! moto's server, started from the venv that `tests/setup.sh` creates, and
//! helpers that seed it through the real Rust SDK.
//!
//! Over 400 lines: many short seeding helpers around one server's lifecycle.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use crate::tls::{spawn_listening, ServerProcess};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_batch::types::{CeState, CeType, ComputeResource, CrType};
use aws_sdk_ec2::types::{
    InstanceMetadataOptionsRequest, InstanceMetadataTagsState, ResourceType, Tag, TagSpecification,
};

pub const REGION: &str = "eu-west-1";
pub const ACCOUNT_ID: &str = "123456789012";

#[derive(Debug, thiserror::Error)]
pub enum MotoError {
    #[error(
        "moto_server not found at {0}: run tests/setup.sh (it creates the venv with moto[server])"
    )]
    NotInstalled(PathBuf),
    #[error("moto_server did not start: {0}")]
    Start(String),
    #[error("{0}")]
    Aws(String),
}

fn aws<E: std::fmt::Debug>(what: &str) -> impl FnOnce(E) -> MotoError + '_ {
    move |err| MotoError::Aws(format!("{what}: {err:?}"))
}

/// The venv holding moto: `$BLOCKWATCH_MOTO_VENV`, else `.venv` at the repo root.
pub fn venv() -> PathBuf {
    std::env::var_os("BLOCKWATCH_MOTO_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv"))
}

/// The venv's Python, once moto's server is installed in it.
fn installed_python() -> Result<PathBuf, MotoError> {
    let moto_server = venv().join("bin/moto_server");
    if !moto_server.exists() {
        return Err(MotoError::NotInstalled(moto_server));
    }
    Ok(venv().join("bin/python"))
}

/// `moto/serve.py`: moto's server with the calls moto lacks made to behave like AWS.
fn serve_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("moto/serve.py")
}

/// A moto server on a loopback port of its own, stopped (by PID) when dropped.
#[derive(Debug)]
pub struct MotoServer {
    process: ServerProcess,
    addr: SocketAddr,
    sdk: SdkConfig,
    /// `http`, or `https` for [`MotoServer::start_tls`].
    scheme: &'static str,
}

/// One request moto received, from its recorder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    pub url: String,
    /// `X-Amz-Target` for JSON protocols (ECS, Batch uses REST paths).
    pub target: Option<String>,
    /// The body, decoded (EC2's query protocol puts the action here).
    pub body: String,
    /// Sent by the test kit's own clients (the introspection stand-in's
    /// poller), not by the code under test.
    pub from_test_kit: bool,
}

impl MotoServer {
    /// Starts moto on a port the kernel picks (`-p 0`) and reads the port
    /// back from moto's startup line: no port is ever picked, dropped and
    /// bound later, so no other process can take it in between.
    pub async fn start() -> Result<Self, MotoError> {
        let python = installed_python()?;
        let (process, addr) = Self::spawn(&python, &[], "http").map_err(MotoError::Start)?;
        let sdk = sdk_config(&format!("http://{addr}")).await;
        Ok(Self {
            process,
            addr,
            sdk,
            scheme: "http",
        })
    }

    /// Like [`MotoServer::start`], but moto serves HTTPS with `ca`'s server
    /// certificate for 127.0.0.1: [`MotoServer::endpoint`] is
    /// `https://127.0.0.1:<port>`, and [`MotoServer::sdk`] trusts `ca` only.
    /// The binaries under test need `SSL_CERT_FILE` = [`TestCa::ca_file`].
    ///
    /// [`TestCa::ca_file`]: crate::tls::TestCa::ca_file
    pub async fn start_tls(ca: &crate::tls::TestCa) -> Result<Self, MotoError> {
        let python = installed_python()?;
        let client = ca
            .https_client()
            .map_err(|e| MotoError::Start(e.to_string()))?;
        let tls_args = [
            OsString::from("--ssl-cert"),
            ca.cert_file().into_os_string(),
            OsString::from("--ssl-key"),
            ca.key_file().into_os_string(),
        ];
        let (process, addr) = Self::spawn(&python, &tls_args, "https").map_err(MotoError::Start)?;
        let sdk = sdk_config_with(&format!("https://{addr}"), client).await;
        Ok(Self {
            process,
            addr,
            sdk,
            scheme: "https",
        })
    }

    fn spawn(
        program: &PathBuf,
        extra_args: &[OsString],
        scheme: &str,
    ) -> Result<(ServerProcess, SocketAddr), String> {
        static STARTED: AtomicU64 = AtomicU64::new(0);
        let log = std::env::temp_dir().join(format!(
            "blockwatch-moto-{}-{}.log",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let recording = log.with_extension("requests.jsonl");
        // moto's recorder logs every request it receives: tests count them.
        let mut command = Command::new(program);
        command
            .arg(serve_script())
            .args(["-H", "127.0.0.1", "-p", "0"])
            .args(extra_args)
            .env("MOTO_ENABLE_RECORDING", "true")
            .env("MOTO_RECORDER_FILEPATH", &recording);
        // A cold, loaded machine can take a while to import moto.
        let listening = |output: &str| listening_on(output, scheme);
        spawn_listening(command, log.clone(), recording, listening).map_err(|err| {
            let _ = std::fs::remove_file(&log);
            format!("{err} (waited for a \"Running on {scheme}://...\" line)")
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>` (`https://` when started with TLS), for
    /// `AWS_ENDPOINT_URL`.
    pub fn endpoint(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The server's own output, for diagnosing a failed test.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.process.log).unwrap_or_default()
    }

    pub fn sdk(&self) -> &SdkConfig {
        &self.sdk
    }

    /// Every request moto has received so far (seeding included).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        let text = std::fs::read_to_string(&self.process.record).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .map(|entry| {
                let target = entry["headers"]
                    .as_object()
                    .and_then(|h| {
                        h.iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case("x-amz-target"))
                    })
                    .and_then(|(_, v)| v.as_str())
                    .map(str::to_owned);
                let raw = entry["body"].as_str().unwrap_or_default();
                let body = if entry["body_encoded"].as_bool().unwrap_or(false) {
                    aws_smithy_types::base64::decode(raw)
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .unwrap_or_default()
                } else {
                    raw.to_owned()
                };
                let from_test_kit = entry["headers"].as_object().is_some_and(|h| {
                    h.iter().any(|(k, v)| {
                        k.eq_ignore_ascii_case("user-agent")
                            && v.as_str().is_some_and(|v| v.contains(TEST_KIT_APP_NAME))
                    })
                });
                RecordedRequest {
                    from_test_kit,
                    method: entry["method"].as_str().unwrap_or_default().to_owned(),
                    url: entry["url"].as_str().unwrap_or_default().to_owned(),
                    target,
                    body,
                }
            })
            .collect()
    }

    /// How many ECS calls of `operation` (e.g. `UpdateContainerInstancesState`) moto received
    /// (the test kit's own polling left out).
    pub fn ecs_calls(&self, operation: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| !r.from_test_kit)
            .filter(|r| {
                r.target
                    .as_deref()
                    .is_some_and(|t| t.ends_with(&format!(".{operation}")))
            })
            .count()
    }

    /// Creates an ECS cluster; returns its ARN.
    pub async fn create_cluster(&self, name: &str) -> Result<String, MotoError> {
        let ecs = aws_sdk_ecs::Client::new(&self.sdk);
        let created = ecs
            .create_cluster()
            .cluster_name(name)
            .send()
            .await
            .map_err(aws("ecs:CreateCluster"))?;
        created
            .cluster()
            .and_then(|c| c.cluster_arn())
            .map(str::to_owned)
            .ok_or_else(|| MotoError::Aws("ecs:CreateCluster returned no cluster".into()))
    }

    /// Starts one task on `container_instance`, as Batch would place a job; returns its ARN.
    pub async fn start_task(
        &self,
        cluster: &str,
        container_instance: &str,
    ) -> Result<String, MotoError> {
        let ecs = aws_sdk_ecs::Client::new(&self.sdk);
        let container = aws_sdk_ecs::types::ContainerDefinition::builder()
            .name("job")
            .image("busybox")
            .memory(128)
            .build();
        ecs.register_task_definition()
            .family("blockwatch-test-job")
            .container_definitions(container)
            .send()
            .await
            .map_err(aws("ecs:RegisterTaskDefinition"))?;
        let started = ecs
            .start_task()
            .cluster(cluster)
            .task_definition("blockwatch-test-job")
            .container_instances(container_instance)
            .send()
            .await
            .map_err(aws("ecs:StartTask"))?;
        started
            .tasks()
            .first()
            .and_then(|t| t.task_arn())
            .map(str::to_owned)
            .ok_or_else(|| MotoError::Aws("ecs:StartTask started nothing".into()))
    }

    /// Ends a task, as a finished job would.
    pub async fn stop_task(&self, cluster: &str, task: &str) -> Result<(), MotoError> {
        let ecs = aws_sdk_ecs::Client::new(&self.sdk);
        ecs.stop_task()
            .cluster(cluster)
            .task(task)
            .reason("job finished")
            .send()
            .await
            .map_err(aws("ecs:StopTask"))?;
        Ok(())
    }

    /// Why a task stopped, once it has.
    pub async fn task_stopped_reason(
        &self,
        cluster: &str,
        task: &str,
    ) -> Result<Option<String>, MotoError> {
        let described = self.describe_task(cluster, task).await?;
        Ok(described.and_then(|t| t.stopped_reason().map(str::to_owned)))
    }

    /// The task as moto describes it. Each DescribeTasks of a running task
    /// moves it one step towards STOPPED in moto.
    pub async fn describe_task(
        &self,
        cluster: &str,
        task: &str,
    ) -> Result<Option<aws_sdk_ecs::types::Task>, MotoError> {
        let ecs = aws_sdk_ecs::Client::new(&self.sdk);
        let described = ecs
            .describe_tasks()
            .cluster(cluster)
            .tasks(task)
            .send()
            .await
            .map_err(aws("ecs:DescribeTasks"))?;
        Ok(described.tasks().first().cloned())
    }

    /// `ACTIVE` or `DRAINING`.
    pub async fn container_instance_status(
        &self,
        cluster: &str,
        container_instance: &str,
    ) -> Result<String, MotoError> {
        let ecs = aws_sdk_ecs::Client::new(&self.sdk);
        let described = ecs
            .describe_container_instances()
            .cluster(cluster)
            .container_instances(container_instance)
            .send()
            .await
            .map_err(aws("ecs:DescribeContainerInstances"))?;
        described
            .container_instances()
            .first()
            .and_then(|c| c.status())
            .map(str::to_owned)
            .ok_or_else(|| MotoError::Aws(format!("no container instance {container_instance}")))
    }

    /// An IAM role to use as a compute environment's `serviceRole`
    /// (moto checks that it exists).
    pub async fn batch_service_role(&self) -> Result<String, MotoError> {
        let iam = aws_sdk_iam::Client::new(&self.sdk);
        let name = "blockwatch-test-batch-service";
        if let Ok(existing) = iam.get_role().role_name(name).send().await {
            if let Some(role) = existing.role() {
                return Ok(role.arn().to_owned());
            }
        }
        let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"batch.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
        let created = iam
            .create_role()
            .role_name(name)
            .assume_role_policy_document(policy)
            .send()
            .await
            .map_err(aws("iam:CreateRole"))?;
        created
            .role()
            .map(|r| r.arn().to_owned())
            .ok_or_else(|| MotoError::Aws("iam:CreateRole returned no role".into()))
    }

    /// Creates an instance profile (with a role) for instances to launch with.
    pub async fn create_instance_profile(&self, name: &str) -> Result<String, MotoError> {
        let iam = aws_sdk_iam::Client::new(&self.sdk);
        let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
        iam.create_role()
            .role_name(name)
            .assume_role_policy_document(policy)
            .send()
            .await
            .map_err(aws("iam:CreateRole"))?;
        let profile = iam
            .create_instance_profile()
            .instance_profile_name(name)
            .send()
            .await
            .map_err(aws("iam:CreateInstanceProfile"))?;
        iam.add_role_to_instance_profile()
            .instance_profile_name(name)
            .role_name(name)
            .send()
            .await
            .map_err(aws("iam:AddRoleToInstanceProfile"))?;
        profile
            .instance_profile()
            .map(|p| p.arn().to_owned())
            .ok_or_else(|| MotoError::Aws("iam:CreateInstanceProfile returned no profile".into()))
    }

    /// The default VPC's first subnet and security group.
    pub async fn default_network(&self) -> Result<(String, String), MotoError> {
        let ec2 = aws_sdk_ec2::Client::new(&self.sdk);
        let subnets = ec2
            .describe_subnets()
            .send()
            .await
            .map_err(aws("ec2:DescribeSubnets"))?;
        let subnet = subnets
            .subnets()
            .first()
            .and_then(|s| s.subnet_id())
            .unwrap_or_default()
            .to_owned();
        let groups = ec2
            .describe_security_groups()
            .send()
            .await
            .map_err(aws("ec2:DescribeSecurityGroups"))?;
        let group = groups
            .security_groups()
            .first()
            .and_then(|g| g.group_id())
            .unwrap_or_default()
            .to_owned();
        Ok((subnet, group))
    }

    /// Creates an UNMANAGED compute environment; returns its ECS cluster ARN.
    pub async fn create_unmanaged_ce(
        &self,
        name: &str,
        enabled: bool,
    ) -> Result<String, MotoError> {
        let role = self.batch_service_role().await?;
        let batch = aws_sdk_batch::Client::new(&self.sdk);
        batch
            .create_compute_environment()
            .compute_environment_name(name)
            .r#type(CeType::Unmanaged)
            .state(if enabled {
                CeState::Enabled
            } else {
                CeState::Disabled
            })
            .service_role(role)
            .send()
            .await
            .map_err(aws("batch:CreateComputeEnvironment"))?;
        self.ecs_cluster_arn(name).await
    }

    /// Creates a MANAGED (Fargate) compute environment.
    pub async fn create_managed_ce(&self, name: &str) -> Result<String, MotoError> {
        let role = self.batch_service_role().await?;
        // moto checks the network: use its default VPC's subnet and group.
        let (subnet, group) = self.default_network().await?;
        let batch = aws_sdk_batch::Client::new(&self.sdk);
        let resources = ComputeResource::builder()
            .r#type(CrType::Fargate)
            .maxv_cpus(4)
            .subnets(subnet)
            .security_group_ids(group)
            .build();
        batch
            .create_compute_environment()
            .compute_environment_name(name)
            .r#type(CeType::Managed)
            .compute_resources(resources)
            .service_role(role)
            .send()
            .await
            .map_err(aws("batch:CreateComputeEnvironment"))?;
        self.ecs_cluster_arn(name).await
    }

    async fn ecs_cluster_arn(&self, ce: &str) -> Result<String, MotoError> {
        let batch = aws_sdk_batch::Client::new(&self.sdk);
        let described = batch
            .describe_compute_environments()
            .compute_environments(ce)
            .send()
            .await
            .map_err(aws("batch:DescribeComputeEnvironments"))?;
        described
            .compute_environments()
            .first()
            .and_then(|c| c.ecs_cluster_arn())
            .map(str::to_owned)
            .ok_or_else(|| MotoError::Aws(format!("compute environment {ce} has no ecsClusterArn")))
    }

    /// Launches one instance with `tags` (and tags in metadata enabled, as
    /// the launcher does); returns its id.
    pub async fn launch_instance(&self, tags: &[(&str, &str)]) -> Result<String, MotoError> {
        let ec2 = aws_sdk_ec2::Client::new(&self.sdk);
        let mut spec = TagSpecification::builder().resource_type(ResourceType::Instance);
        for (key, value) in tags {
            spec = spec.tags(Tag::builder().key(*key).value(*value).build());
        }
        let launched = ec2
            .run_instances()
            .image_id("ami-0abcdef1234567890")
            .instance_type(aws_sdk_ec2::types::InstanceType::C6iLarge)
            .min_count(1)
            .max_count(1)
            .tag_specifications(spec.build())
            .metadata_options(
                InstanceMetadataOptionsRequest::builder()
                    .instance_metadata_tags(InstanceMetadataTagsState::Enabled)
                    .build(),
            )
            .send()
            .await
            .map_err(aws("ec2:RunInstances"))?;
        launched
            .instances()
            .first()
            .and_then(|i| i.instance_id())
            .map(str::to_owned)
            .ok_or_else(|| MotoError::Aws("ec2:RunInstances returned no instance".into()))
    }

    /// An Auto Scaling group `group` holding `instance_id`, with a
    /// termination lifecycle hook `hook` of `heartbeat_timeout` seconds.
    pub async fn auto_scaling_group_with_hook(
        &self,
        group: &str,
        hook: &str,
        instance_id: &str,
        heartbeat_timeout: i32,
    ) -> Result<(), MotoError> {
        let asg = aws_sdk_autoscaling::Client::new(&self.sdk);
        asg.create_launch_configuration()
            .launch_configuration_name(group)
            .image_id("ami-0abcdef1234567890")
            .instance_type("c6i.large")
            .send()
            .await
            .map_err(aws("autoscaling:CreateLaunchConfiguration"))?;
        asg.create_auto_scaling_group()
            .auto_scaling_group_name(group)
            .launch_configuration_name(group)
            .min_size(0)
            .max_size(2)
            .desired_capacity(0)
            .availability_zones(format!("{REGION}a"))
            .send()
            .await
            .map_err(aws("autoscaling:CreateAutoScalingGroup"))?;
        self.termination_hook(group, hook, heartbeat_timeout)
            .await?;
        asg.attach_instances()
            .auto_scaling_group_name(group)
            .instance_ids(instance_id)
            .send()
            .await
            .map_err(aws("autoscaling:AttachInstances"))?;
        Ok(())
    }

    /// Puts a termination lifecycle hook `hook` of `heartbeat_timeout`
    /// seconds on Auto Scaling group `group`.
    pub async fn termination_hook(
        &self,
        group: &str,
        hook: &str,
        heartbeat_timeout: i32,
    ) -> Result<(), MotoError> {
        aws_sdk_autoscaling::Client::new(&self.sdk)
            .put_lifecycle_hook()
            .auto_scaling_group_name(group)
            .lifecycle_hook_name(hook)
            .lifecycle_transition("autoscaling:EC2_INSTANCE_TERMINATING")
            .heartbeat_timeout(heartbeat_timeout)
            .send()
            .await
            .map_err(aws("autoscaling:PutLifecycleHook"))?;
        Ok(())
    }

    /// Registers `instance_id` as a container instance of `cluster`, as the
    /// ECS agent would; returns the container instance ARN.
    pub async fn register_container_instance(
        &self,
        cluster: &str,
        instance_id: &str,
    ) -> Result<String, MotoError> {
        let ecs = aws_sdk_ecs::Client::new(&self.sdk);
        let document = serde_json::json!({
            "instanceId": instance_id,
            "region": REGION,
            "accountId": ACCOUNT_ID,
        });
        let registered = ecs
            .register_container_instance()
            .cluster(cluster)
            .instance_identity_document(document.to_string())
            .send()
            .await
            .map_err(aws("ecs:RegisterContainerInstance"))?;
        registered
            .container_instance()
            .and_then(|c| c.container_instance_arn())
            .map(str::to_owned)
            .ok_or_else(|| MotoError::Aws("ecs:RegisterContainerInstance returned no ARN".into()))
    }
}

/// The address in werkzeug's startup line ` * Running on http://127.0.0.1:PORT`
/// (`https://` with TLS; complete lines only: a line still being written
/// could hold half a port).
fn listening_on(output: &str, scheme: &str) -> Option<SocketAddr> {
    let running_on = format!("Running on {scheme}://");
    output
        .split_inclusive('\n')
        .filter(|line| line.ends_with('\n'))
        .find_map(|line| line.split(running_on.as_str()).nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|addr| addr.parse().ok())
}

/// The SDK app name the test kit's own background clients send, so that
/// [`MotoServer::ecs_calls`] counts only the calls of the code under test.
pub const TEST_KIT_APP_NAME: &str = "blockwatch-test-kit";

/// [`sdk_config`] for a test-kit poller: its own HTTP client, marked with
/// [`TEST_KIT_APP_NAME`], one attempt of at most 5 s a call (the next poll
/// is the retry, and a poller being dropped is not held up).
pub async fn stand_in_sdk_config(endpoint: &str) -> SdkConfig {
    let mut builder = sdk_config(endpoint).await.to_builder();
    // A valid name: letters and dashes.
    if let Ok(name) = aws_config::AppName::new(TEST_KIT_APP_NAME) {
        builder = builder.app_name(name);
    }
    builder
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_timeout(Duration::from_secs(5))
                .build(),
        )
        .build()
}

/// SDK configuration for talking to moto: fixed test credentials, our region.
pub async fn sdk_config(endpoint: &str) -> SdkConfig {
    sdk_config_with(endpoint, blockwatch_aws::https_client()).await
}

async fn sdk_config_with(
    endpoint: &str,
    client: aws_sdk_batch::config::SharedHttpClient,
) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(client)
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_batch::config::Credentials::new(
            "testing", "testing", None, None, "moto",
        ))
        .load()
        .await
}
