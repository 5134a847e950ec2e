//! The checkpoint signal pass: every container of this instance's ECS tasks
//! (the ECS agent's `/v1/tasks` DockerIds) that opted in through its
//! environment gets its signal, through the Docker Engine API.
//!
//! Only containers the ECS agent lists are looked at, so blockwatch never
//! signals a container that is not part of an ECS task on this instance.
//! Each container is asked on its own: one that fails does not stop the rest.

use std::future::Future;

use blockwatch_core::checkpoint::{CheckpointSignal, SignalRefusal, CHECKPOINT_SIGNAL_ENV};

use super::docker::{ContainerFacts, DockerEngine, DockerError};
use super::ecs::IntrospectionError;

/// One container of an ECS task on this instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskContainer {
    pub task_arn: String,
    /// The container's name in its task definition.
    pub name: String,
    pub docker_id: String,
}

/// What the pass needs of Docker (a trait so the pass is tested without it).
pub trait Containers {
    fn container(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<ContainerFacts, DockerError>> + Send;
    fn kill(&self, id: &str, signal: &str) -> impl Future<Output = Result<(), DockerError>> + Send;
}

/// Why a pass signaled nothing and may be tried again.
#[derive(Debug, thiserror::Error)]
pub enum Unreached {
    #[error("this instance's tasks cannot be read: {0}")]
    Tasks(#[from] IntrospectionError),
    #[error("{0}")]
    Docker(DockerError),
    /// `DOCKER_HOST` names an endpoint blockwatch cannot use.
    #[error("{0}")]
    DockerHost(String),
}

impl Containers for DockerEngine {
    async fn container(&self, id: &str) -> Result<ContainerFacts, DockerError> {
        DockerEngine::container(self, id).await
    }

    async fn kill(&self, id: &str, signal: &str) -> Result<(), DockerError> {
        DockerEngine::kill(self, id, signal).await
    }
}

/// How one pass went, container by container.
#[derive(Debug, Default)]
pub struct PassReport {
    pub signaled: Vec<(TaskContainer, CheckpointSignal)>,
    /// Opted in with a signal that is not allowed.
    pub refused: Vec<(TaskContainer, SignalRefusal)>,
    /// Looked at or signaled without success (gone, stopped meanwhile, an
    /// error from Docker).
    pub failed: Vec<(TaskContainer, DockerError)>,
    /// Running, without the variable: left alone.
    pub not_opted_in: usize,
    /// The ECS agent or Docker could not be reached before anything was
    /// signaled: nothing was sent, and the pass may be tried again.
    pub unreachable: Option<Unreached>,
    /// Docker went quiet after a signal was sent: these were not tried,
    /// and the pass is not tried again (a retry could signal twice).
    pub abandoned: Vec<TaskContainer>,
    pub abandoned_because: Option<DockerError>,
}

impl PassReport {
    pub fn unreached(why: Unreached) -> Self {
        Self {
            unreachable: Some(why),
            ..Self::default()
        }
    }

    /// Docker could not be reached for the first of `rest`.
    fn give_up(&mut self, err: DockerError, rest: &[TaskContainer]) {
        if self.signaled.is_empty() {
            self.unreachable = Some(Unreached::Docker(err));
        } else {
            self.abandoned = rest.to_vec();
            self.abandoned_because = Some(err);
        }
    }
}

/// Signals every opted-in running container among `containers`. Docker
/// gone quiet ends the pass: each request has its own timeout, and a pass
/// must not wait for it once per container.
pub async fn signal_opted_in<D: Containers>(
    containers: &[TaskContainer],
    docker: &D,
) -> PassReport {
    let mut report = PassReport::default();
    for (n, container) in containers.iter().enumerate() {
        let facts = match docker.container(&container.docker_id).await {
            Ok(facts) => facts,
            Err(err) if err.is_unreachable() => {
                report.give_up(err, &containers[n..]);
                return report;
            }
            Err(err) => {
                report.failed.push((container.clone(), err));
                continue;
            }
        };
        if !facts.running {
            continue;
        }
        let Some(value) = facts.env_value(CHECKPOINT_SIGNAL_ENV) else {
            report.not_opted_in += 1;
            continue;
        };
        let signal = match CheckpointSignal::parse(value) {
            Ok(signal) => signal,
            Err(refusal) => {
                report.refused.push((container.clone(), refusal));
                continue;
            }
        };
        match docker.kill(&container.docker_id, signal.name()).await {
            Ok(()) => report.signaled.push((container.clone(), signal)),
            Err(err) if err.is_unreachable() => {
                report.give_up(err, &containers[n..]);
                return report;
            }
            Err(err) => report.failed.push((container.clone(), err)),
        }
    }
    report
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;

    /// Docker as a map of containers; kills are recorded.
    #[derive(Default)]
    struct FakeDocker {
        containers: HashMap<String, ContainerFacts>,
        kills: Mutex<Vec<(String, String)>>,
        down: bool,
        /// Docker stops answering once this many signals were sent.
        quiet_after_kills: Option<usize>,
    }

    impl FakeDocker {
        fn with(mut self, id: &str, running: bool, env: &[&str]) -> Self {
            self.containers.insert(
                id.to_owned(),
                ContainerFacts {
                    id: id.to_owned(),
                    running,
                    env: env.iter().map(|e| (*e).to_owned()).collect(),
                },
            );
            self
        }
    }

    impl Containers for FakeDocker {
        async fn container(&self, id: &str) -> Result<ContainerFacts, DockerError> {
            let kills = self.kills.lock().unwrap().len();
            if self.quiet_after_kills.is_some_and(|n| kills >= n) {
                return Err(DockerError::Timeout {
                    endpoint: "unix:///var/run/docker.sock".into(),
                });
            }
            if self.down {
                return Err(DockerError::Unreachable {
                    endpoint: "unix:///var/run/docker.sock".into(),
                    detail: "connection refused".into(),
                });
            }
            self.containers
                .get(id)
                .cloned()
                .ok_or_else(|| DockerError::NoSuchContainer { id: id.to_owned() })
        }

        async fn kill(&self, id: &str, signal: &str) -> Result<(), DockerError> {
            self.kills
                .lock()
                .unwrap()
                .push((id.to_owned(), signal.to_owned()));
            Ok(())
        }
    }

    fn task(id: &str) -> TaskContainer {
        TaskContainer {
            task_arn: format!("arn:aws:ecs:eu-west-1:123456789012:task/jobs/{id}"),
            name: "job".into(),
            docker_id: id.to_owned(),
        }
    }

    #[tokio::test]
    async fn only_running_opted_in_containers_with_an_allowed_signal_are_signaled() {
        let docker = FakeDocker::default()
            .with(
                "a1",
                true,
                &["PATH=/bin", "BLOCKWATCH_CHECKPOINT_SIGNAL=SIGUSR1"],
            )
            .with("b2", true, &["PATH=/bin"])
            .with("c3", true, &["BLOCKWATCH_CHECKPOINT_SIGNAL=SIGKILL"])
            .with("d4", false, &["BLOCKWATCH_CHECKPOINT_SIGNAL=SIGUSR2"])
            .with("e5", true, &["BLOCKWATCH_CHECKPOINT_SIGNAL=usr2"]);
        let tasks: Vec<_> = ["a1", "b2", "c3", "d4", "e5", "gone"]
            .into_iter()
            .map(task)
            .collect();
        let report = signal_opted_in(&tasks, &docker).await;
        assert_eq!(
            *docker.kills.lock().unwrap(),
            vec![
                ("a1".to_owned(), "SIGUSR1".to_owned()),
                ("e5".to_owned(), "SIGUSR2".to_owned())
            ]
        );
        assert_eq!(report.signaled.len(), 2);
        assert_eq!(report.not_opted_in, 1);
        assert_eq!(report.refused.len(), 1);
        assert_eq!(report.refused[0].0.docker_id, "c3");
        assert_eq!(report.failed.len(), 1);
        assert!(report.unreachable.is_none());
    }

    #[tokio::test]
    async fn docker_down_signals_nothing_and_says_so_for_a_retry() {
        let docker = FakeDocker {
            down: true,
            ..FakeDocker::default()
        }
        .with("a1", true, &["BLOCKWATCH_CHECKPOINT_SIGNAL=SIGUSR1"]);
        let report = signal_opted_in(&[task("a1")], &docker).await;
        assert!(report.unreachable.is_some());
        assert!(docker.kills.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn docker_gone_quiet_after_a_signal_abandons_the_rest_without_a_retry() {
        let opted_in = &["BLOCKWATCH_CHECKPOINT_SIGNAL=SIGUSR1"];
        let docker = FakeDocker {
            quiet_after_kills: Some(1),
            ..FakeDocker::default()
        }
        .with("a1", true, opted_in)
        .with("b2", true, opted_in)
        .with("c3", true, opted_in);
        let tasks: Vec<_> = ["a1", "b2", "c3"].into_iter().map(task).collect();
        let report = signal_opted_in(&tasks, &docker).await;
        assert_eq!(report.signaled.len(), 1);
        // Not "unreached": a retry would signal a1 twice.
        assert!(report.unreachable.is_none());
        let abandoned: Vec<_> = report
            .abandoned
            .iter()
            .map(|c| c.docker_id.as_str())
            .collect();
        assert_eq!(abandoned, ["b2", "c3"]);
        assert!(matches!(
            report.abandoned_because,
            Some(DockerError::Timeout { .. })
        ));
    }
}
