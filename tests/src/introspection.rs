//! A stand-in for the local ECS agent's introspection API (`/v1/metadata`,
//! `/v1/tasks`) on one container instance, backed by moto, that stops tasks
//! the way the ECS agent does.
//!
//! `StopTask` sets a task's desiredStatus to STOPPED at once (moto also sets
//! its lastStatus STOPPED at once, which AWS does not). The ECS agent then
//! sends SIGTERM; the container runs on until it exits or the stop timeout
//! (`ECS_CONTAINER_STOP_TIMEOUT`, 30 s by default) ends it with SIGKILL, and
//! only then is the task's `KnownStatus` STOPPED. So here: a task moto wants
//! stopped is `KnownStatus` RUNNING for the stop timeout after the stand-in
//! first saw it so (or less, for a job said to exit early), then STOPPED,
//! and stays listed, as the agent keeps stopped tasks until its cleanup.
//!
//! A task can be attached to a real container on a private dockerd
//! ([`IntrospectionStandIn::with_docker`], [`IntrospectionStandIn::attach`]):
//! `/v1/tasks` then gives its `DockerId` and `Name`, and the stand-in stops
//! it as the ECS agent does, `docker stop --time <stop timeout>` (SIGTERM,
//! SIGKILL at the timeout). Such a task's `KnownStatus` is the container's
//! own: STOPPED once it no longer runs, whether stopped or exited by itself.
//!
//! The request path never calls moto or docker: a background thread
//! refreshes the tasks from moto (`ecs:ListTasks` by desired status, never
//! DescribeTasks, which moves a running task towards STOPPED in moto) and
//! the attached containers' state from docker every 200 ms.
//!
//! Over 400 lines: one stand-in whose two endpoints and task stops share one model of the host.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aws_sdk_ecs::types::DesiredStatus;
use blockwatch::actions::ecs::list_tasks;

use crate::docker::{DockerCli, PrivateDocker};
use crate::moto::MotoServer;
use crate::stub::{Received, StubServer};

/// The ECS agent's default `ECS_CONTAINER_STOP_TIMEOUT`.
pub const ECS_DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the stand-in reads moto's tasks.
const REFRESH: Duration = Duration::from_millis(200);
/// How long [`IntrospectionStandIn::start`] waits for its first look at moto.
const FIRST_REFRESH: Duration = Duration::from_secs(30);

/// One task as the stand-in's ECS agent holds it.
#[derive(Debug, Clone, Default)]
struct Held {
    /// When the stand-in first saw ECS want it stopped: its SIGTERM.
    sigterm_at: Option<Instant>,
    /// Its attached container has been told to stop.
    stop_sent: bool,
}

/// The real container a task runs.
#[derive(Debug, Clone)]
struct Attached {
    docker_id: String,
    name: String,
    /// Seen no longer running.
    exited: bool,
}

/// The stand-in's ECS agent: which tasks it holds and how they stop. Pure:
/// time comes in as an argument.
#[derive(Debug)]
pub struct TaskModel {
    stop_timeout: Duration,
    exits_after_sigterm: HashMap<String, Duration>,
    tasks: BTreeMap<String, Held>,
    /// By task ARN.
    containers: HashMap<String, Attached>,
}

impl TaskModel {
    pub fn new(stop_timeout: Duration) -> Self {
        Self {
            stop_timeout,
            exits_after_sigterm: HashMap::new(),
            tasks: BTreeMap::new(),
            containers: HashMap::new(),
        }
    }

    /// `task` runs the real container `docker_id`, called `name` in its task
    /// definition. Its status follows the container from now on.
    pub fn attach(&mut self, task: &str, docker_id: &str, name: &str) {
        let attached = Attached {
            docker_id: docker_id.to_owned(),
            name: name.to_owned(),
            exited: false,
        };
        self.containers.insert(task.to_owned(), attached);
    }

    /// `task`'s attached container no longer runs (stopped, or exited by
    /// itself).
    pub fn container_exited(&mut self, task: &str) {
        if let Some(attached) = self.containers.get_mut(task) {
            attached.exited = true;
        }
    }

    /// The attached containers still running, as `(task, docker id)`.
    pub fn running_containers(&self) -> Vec<(String, String)> {
        self.containers
            .iter()
            .filter(|(_, attached)| !attached.exited)
            .map(|(task, attached)| (task.clone(), attached.docker_id.clone()))
            .collect()
    }

    /// The docker ids of the running attached containers ECS wants stopped
    /// and that have not been told yet; each is given once.
    pub fn stops_due(&mut self) -> Vec<String> {
        let mut due = Vec::new();
        for (task, held) in &mut self.tasks {
            let Some(attached) = self.containers.get(task) else {
                continue;
            };
            if held.sigterm_at.is_some() && !held.stop_sent && !attached.exited {
                held.stop_sent = true;
                due.push(attached.docker_id.clone());
            }
        }
        due
    }

    pub fn stop_timeout(&self) -> Duration {
        self.stop_timeout
    }

    /// Takes in moto's view at `now`: the tasks it wants running and the
    /// ones it wants stopped. A task it no longer lists is kept as it was.
    pub fn refresh(&mut self, running: &[String], stopping: &[String], now: Instant) {
        for arn in running {
            self.tasks.entry(arn.clone()).or_default();
        }
        for arn in stopping {
            let held = self.tasks.entry(arn.clone()).or_default();
            held.sigterm_at.get_or_insert(now);
        }
    }

    /// `task`'s container exits `after` its SIGTERM (a job that
    /// checkpoints), before the stop timeout if shorter.
    pub fn exits_after_sigterm(&mut self, task: &str, after: Duration) {
        self.exits_after_sigterm.insert(task.to_owned(), after);
    }

    /// `(DesiredStatus, KnownStatus)` of `task` at `now`, as the ECS agent's
    /// `/v1/tasks` gives them; `None` for a task it does not hold.
    pub fn status(&self, task: &str, now: Instant) -> Option<(&'static str, &'static str)> {
        let held = self.tasks.get(task)?;
        if let Some(attached) = self.containers.get(task) {
            // The real container decides; one that ends stops its task.
            return Some(match (attached.exited, held.sigterm_at) {
                (true, _) => ("STOPPED", "STOPPED"),
                (false, Some(_)) => ("STOPPED", "RUNNING"),
                (false, None) => ("RUNNING", "RUNNING"),
            });
        }
        let Some(sigterm_at) = held.sigterm_at else {
            return Some(("RUNNING", "RUNNING"));
        };
        let exits_after = self
            .exits_after_sigterm
            .get(task)
            .map_or(self.stop_timeout, |after| (*after).min(self.stop_timeout));
        let known = if now >= sigterm_at + exits_after {
            "STOPPED"
        } else {
            "RUNNING"
        };
        Some(("STOPPED", known))
    }

    /// The `/v1/tasks` answer at `now` (the ECS agent's `TasksResponse`).
    pub fn tasks_response(&self, now: Instant) -> serde_json::Value {
        let tasks: Vec<serde_json::Value> = self
            .tasks
            .keys()
            .filter_map(|arn| {
                let (desired, known) = self.status(arn, now)?;
                let id = arn.rsplit('/').next().unwrap_or(arn);
                let (docker_id, name) = match self.containers.get(arn) {
                    Some(attached) => (attached.docker_id.clone(), attached.name.as_str()),
                    None => (format!("{:0<64}", id.replace('-', "")), "job"),
                };
                Some(serde_json::json!({
                    "Arn": arn,
                    "DesiredStatus": desired,
                    "KnownStatus": known,
                    "Family": "blockwatch-test-job",
                    "Version": "1",
                    "Containers": [{
                        "DockerId": docker_id,
                        "DockerName": format!("ecs-blockwatch-test-job-1-{name}-{id}"),
                        "Name": name,
                    }],
                }))
            })
            .collect();
        serde_json::json!({ "Tasks": tasks })
    }
}

#[derive(Debug)]
struct Shared {
    model: Mutex<TaskModel>,
    /// The private dockerd the attached containers run on.
    docker: Mutex<Option<DockerCli>>,
    /// Completed looks at moto, and the last failed one's error.
    refreshes: Mutex<(u64, Option<String>)>,
    stopping: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The stand-in; stops (its server and its poller) when dropped.
#[derive(Debug)]
pub struct IntrospectionStandIn {
    server: StubServer,
    shared: Arc<Shared>,
    poller: Option<JoinHandle<()>>,
}

impl IntrospectionStandIn {
    /// Serves `container_instance` of `cluster` (a name or an ARN) from
    /// `moto`, with the default stop timeout; returns once it has read
    /// moto's tasks. moto must serve plain HTTP.
    pub fn start(
        moto: &MotoServer,
        cluster: &str,
        container_instance: &str,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            model: Mutex::new(TaskModel::new(ECS_DEFAULT_STOP_TIMEOUT)),
            docker: Mutex::new(None),
            refreshes: Mutex::new((0, None)),
            stopping: AtomicBool::new(false),
        });
        let metadata = serde_json::json!({
            "Cluster": cluster.rsplit('/').next().unwrap_or(cluster),
            "ContainerInstanceArn": container_instance,
            "Version": "Amazon ECS Agent - v1.89.0 (stand-in)",
        })
        .to_string();
        let server = {
            let shared = Arc::clone(&shared);
            StubServer::start(move |_, request| {
                let path = request.path.split('?').next().unwrap_or_default();
                match path {
                    "/v1/metadata" => (200, metadata.clone()),
                    "/v1/tasks" => {
                        let model = lock(&shared.model);
                        (200, model.tasks_response(Instant::now()).to_string())
                    }
                    _ => (404, "{}".to_owned()),
                }
            })?
        };
        let poller = {
            let shared = Arc::clone(&shared);
            let endpoint = moto.endpoint();
            let (cluster, container_instance) = (cluster.to_owned(), container_instance.to_owned());
            std::thread::Builder::new()
                .name("introspection-stand-in".into())
                .spawn(move || poll(&shared, &endpoint, &cluster, &container_instance))?
        };
        let stand_in = Self {
            server,
            shared,
            poller: Some(poller),
        };
        if !stand_in.wait_refreshed(1, FIRST_REFRESH) {
            let error = lock(&stand_in.shared.refreshes).1.clone();
            return Err(std::io::Error::other(format!(
                "the introspection stand-in could not read moto's tasks: {error:?}"
            )));
        }
        Ok(stand_in)
    }

    /// Containers get `timeout` between SIGTERM and SIGKILL
    /// (`ECS_CONTAINER_STOP_TIMEOUT`).
    pub fn with_stop_timeout(self, timeout: Duration) -> Self {
        lock(&self.shared.model).stop_timeout = timeout;
        self
    }

    /// Attached containers run on `docker`; needed before
    /// [`IntrospectionStandIn::attach`].
    pub fn with_docker(self, docker: &PrivateDocker) -> Self {
        *lock(&self.shared.docker) = Some(docker.cli());
        self
    }

    /// `task_arn`'s container is the real container `docker_id` (on the
    /// dockerd of [`IntrospectionStandIn::with_docker`]), `name` in its task
    /// definition: `/v1/tasks` gives them as `Containers[0]`, a stop of the
    /// task stops it (SIGTERM, SIGKILL after the stop timeout), and the task
    /// is STOPPED once the container no longer runs.
    pub fn attach(&self, task_arn: &str, docker_id: &str, name: &str) {
        lock(&self.shared.model).attach(task_arn, docker_id, name);
    }

    /// `task`'s container exits `after` its SIGTERM (a job that checkpoints
    /// and exits), or at the stop timeout if that is shorter. Not for an
    /// attached task: its real container decides.
    pub fn exits_after_sigterm(&self, task: &str, after: Duration) {
        lock(&self.shared.model).exits_after_sigterm(task, after);
    }

    /// The metadata URL, for `--ecs-introspection-url`.
    pub fn metadata_url(&self) -> String {
        self.server.url("/v1/metadata")
    }

    pub fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    /// Every request the stand-in received.
    pub fn received(&self) -> Vec<Received> {
        self.server.received()
    }

    /// How many `/v1/tasks` requests it received.
    pub fn task_requests(&self) -> usize {
        self.received()
            .iter()
            .filter(|r| r.path.starts_with("/v1/tasks"))
            .count()
    }

    /// `(DesiredStatus, KnownStatus)` of `task` now.
    pub fn status(&self, task: &str) -> Option<(&'static str, &'static str)> {
        lock(&self.shared.model).status(task, Instant::now())
    }

    /// Waits until the stand-in has read moto again since this call (so it
    /// has seen what moto holds now); `false` after `timeout`.
    pub fn sync(&self, timeout: Duration) -> bool {
        let seen = lock(&self.shared.refreshes).0;
        // The look under way may have started before the call.
        self.wait_refreshed(seen + 2, timeout)
    }

    fn wait_refreshed(&self, count: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if lock(&self.shared.refreshes).0 >= count {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for IntrospectionStandIn {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        if let Some(poller) = self.poller.take() {
            let _ = poller.join();
        }
    }
}

/// The poller: reads moto's tasks into the model until told to stop. Its
/// own runtime and HTTP client, so it never waits on the test's.
fn poll(shared: &Shared, endpoint: &str, cluster: &str, container_instance: &str) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            lock(&shared.refreshes).1 = Some(format!("no runtime: {err}"));
            return;
        }
    };
    runtime.block_on(async {
        let sdk = crate::moto::stand_in_sdk_config(endpoint).await;
        let ecs = aws_sdk_ecs::Client::new(&sdk);
        while !shared.stopping.load(Ordering::Relaxed) {
            let (running, stopping) = (
                list_tasks(&ecs, cluster, container_instance, DesiredStatus::Running).await,
                list_tasks(&ecs, cluster, container_instance, DesiredStatus::Stopped).await,
            );
            match (running, stopping) {
                (Ok(running), Ok(stopping)) => {
                    lock(&shared.model).refresh(&running, &stopping, Instant::now());
                    follow_containers(shared);
                    lock(&shared.refreshes).0 += 1;
                }
                (Err(err), _) | (_, Err(err)) => lock(&shared.refreshes).1 = Some(err.to_string()),
            }
            tokio::time::sleep(REFRESH).await;
        }
    });
}

/// Stops the attached containers ECS now wants stopped, as the ECS agent
/// does, and notes those that no longer run.
fn follow_containers(shared: &Shared) {
    let Some(docker) = lock(&shared.docker).clone() else {
        return;
    };
    let (due, running, timeout) = {
        let mut model = lock(&shared.model);
        (
            model.stops_due(),
            model.running_containers(),
            model.stop_timeout(),
        )
    };
    // docker takes whole seconds; never shorter than asked.
    let seconds = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
    for docker_id in due {
        let docker = docker.clone();
        // Returns when the container is gone: off the poller's loop.
        let _ = std::thread::Builder::new()
            .name("stand-in-docker-stop".into())
            .spawn(move || docker.run(&["stop", "--time", &seconds.to_string(), &docker_id]));
    }
    for (task, docker_id) in running {
        let state = docker.checked(&["inspect", "--format", "{{.State.Running}}", &docker_id]);
        // Gone from docker (removed) counts as not running.
        if state.as_deref().map_or(true, |running| running != "true") {
            lock(&shared.model).container_exited(&task);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    const T: &str = "arn:aws:ecs:eu-west-1:123456789012:task/jobs/t";

    #[test]
    fn a_stopped_task_runs_through_its_stop_timeout_then_is_stopped() {
        let start = Instant::now();
        let mut model = TaskModel::new(Duration::from_secs(30));
        model.refresh(&[T.to_owned()], &[], start);
        assert_eq!(model.status(T, start), Some(("RUNNING", "RUNNING")));

        let sigterm = start + Duration::from_secs(5);
        model.refresh(&[], &[T.to_owned()], sigterm);
        // Seen again later: the SIGTERM time is the first sight.
        model.refresh(&[], &[T.to_owned()], sigterm + Duration::from_secs(10));

        let just_before = sigterm + Duration::from_secs(30) - Duration::from_millis(1);
        assert_eq!(model.status(T, just_before), Some(("STOPPED", "RUNNING")));
        let at_timeout = sigterm + Duration::from_secs(30);
        assert_eq!(model.status(T, at_timeout), Some(("STOPPED", "STOPPED")));
        // Still listed, as the agent keeps a stopped task until its cleanup.
        let listed = model.tasks_response(at_timeout);
        assert_eq!(listed["Tasks"][0]["Arn"], T);
        assert_eq!(listed["Tasks"][0]["KnownStatus"], "STOPPED");
    }

    #[test]
    fn a_job_that_exits_early_is_stopped_then_and_never_after_the_timeout() {
        let start = Instant::now();
        let mut model = TaskModel::new(Duration::from_secs(30));
        model.exits_after_sigterm(T, Duration::from_secs(4));
        model.refresh(&[], &[T.to_owned()], start);
        let early = start + Duration::from_secs(4);
        assert_eq!(
            model.status(T, early - Duration::from_millis(1)).unwrap().1,
            "RUNNING"
        );
        assert_eq!(model.status(T, early).unwrap().1, "STOPPED");

        // An exit later than the timeout: SIGKILL at the timeout.
        model.exits_after_sigterm(T, Duration::from_secs(300));
        assert_eq!(
            model.status(T, start + Duration::from_secs(30)).unwrap().1,
            "STOPPED"
        );
    }

    #[test]
    fn an_attached_task_shows_its_container_is_stopped_once_and_follows_the_container() {
        let start = Instant::now();
        let other = "arn:aws:ecs:eu-west-1:123456789012:task/jobs/other";
        let mut model = TaskModel::new(Duration::from_secs(3));
        model.exits_after_sigterm(T, Duration::from_secs(1));
        model.attach(T, "c0ffee", "trainer");
        model.refresh(&[T.to_owned(), other.to_owned()], &[], start);
        let listed = model.tasks_response(start);
        // Sorted by ARN: `other`, then T.
        assert_eq!(listed["Tasks"][1]["Arn"], T, "{listed}");
        let container = &listed["Tasks"][1]["Containers"][0];
        assert_eq!(container["DockerId"], "c0ffee");
        assert_eq!(container["Name"], "trainer");
        assert_ne!(listed["Tasks"][0]["Containers"][0]["DockerId"], "c0ffee");
        assert!(model.stops_due().is_empty(), "not stopped yet");

        model.refresh(&[other.to_owned()], &[T.to_owned()], start);
        assert_eq!(model.stops_due(), ["c0ffee"]);
        assert!(model.stops_due().is_empty(), "told once");
        // The real container decides, not the timers: long after both it
        // still runs.
        let later = start + Duration::from_secs(60);
        assert_eq!(model.status(T, later), Some(("STOPPED", "RUNNING")));
        assert_eq!(
            model.running_containers(),
            [(T.to_owned(), "c0ffee".to_owned())]
        );
        model.container_exited(T);
        assert_eq!(model.status(T, later), Some(("STOPPED", "STOPPED")));
        assert!(model.running_containers().is_empty());
    }

    #[test]
    fn an_attached_container_that_exits_by_itself_stops_its_task_and_is_never_stopped() {
        let start = Instant::now();
        let mut model = TaskModel::new(Duration::from_secs(30));
        model.attach(T, "c0ffee", "job");
        model.refresh(&[T.to_owned()], &[], start);
        model.container_exited(T);
        assert_eq!(model.status(T, start), Some(("STOPPED", "STOPPED")));
        model.refresh(&[], &[T.to_owned()], start);
        assert!(model.stops_due().is_empty());
    }

    /// Through moto and HTTP: the early-exit task is stopped first, so when
    /// it shows STOPPED the other, stopped after it, must still be running.
    #[tokio::test]
    async fn against_moto_the_stop_timeout_is_honoured_and_an_early_exit_comes_first() {
        let moto = MotoServer::start().await.unwrap();
        moto.create_cluster("jobs").await.unwrap();
        let instance = moto
            .launch_instance(&[("Name", "ecs-host-test")])
            .await
            .unwrap();
        let ci = moto
            .register_container_instance("jobs", &instance)
            .await
            .unwrap();
        let early = moto.start_task("jobs", &ci).await.unwrap();
        let full = moto.start_task("jobs", &ci).await.unwrap();
        let timeout = Duration::from_secs(10);
        let stand_in = IntrospectionStandIn::start(&moto, "jobs", &ci)
            .unwrap()
            .with_stop_timeout(timeout);
        stand_in.exits_after_sigterm(&early, Duration::from_secs(1));
        let get = |path: &str| {
            let addr = stand_in
                .server
                .url("")
                .trim_start_matches("http://")
                .parse()
                .unwrap();
            let answer = crate::http::request(addr, "GET", path, &[], "").unwrap();
            assert_eq!(answer.status, 200, "{path}: {}", answer.body);
            serde_json::from_str::<serde_json::Value>(&answer.body).unwrap()
        };
        let known = |tasks: &serde_json::Value, arn: &str| {
            let task = tasks["Tasks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["Arn"] == arn);
            (
                task.unwrap()["DesiredStatus"].clone(),
                task.unwrap()["KnownStatus"].clone(),
            )
        };

        let metadata = get("/v1/metadata");
        assert_eq!(metadata["Cluster"], "jobs");
        assert_eq!(metadata["ContainerInstanceArn"], ci.as_str());
        assert_eq!(
            known(&get("/v1/tasks"), &full),
            ("RUNNING".into(), "RUNNING".into())
        );

        moto.stop_task("jobs", &early).await.unwrap();
        let full_stopped = Instant::now();
        moto.stop_task("jobs", &full).await.unwrap();

        let when_early_exited = loop {
            let tasks = get("/v1/tasks");
            if known(&tasks, &early).1 == "STOPPED" {
                break tasks;
            }
            assert!(full_stopped.elapsed() < Duration::from_secs(60), "{tasks}");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(
            known(&when_early_exited, &full),
            ("STOPPED".into(), "RUNNING".into()),
            "SIGTERM sent, the container still runs"
        );
        loop {
            if known(&get("/v1/tasks"), &full).1 == "STOPPED" {
                break;
            }
            assert!(full_stopped.elapsed() < timeout + Duration::from_secs(60));
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            full_stopped.elapsed() >= timeout,
            "{:?}",
            full_stopped.elapsed()
        );
        assert!(stand_in.task_requests() >= 3);
    }
}
