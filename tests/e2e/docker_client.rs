//! blockwatch's Docker Engine client (`blockwatch::actions::docker`) against
//! a real dockerd (the private one of `blockwatch_testkit::docker`): a job
//! opted in to the checkpoint signal, run as Batch runs it, hears the signal
//! and checkpoints.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use blockwatch::actions::docker::{DockerEngine, DockerError};
use blockwatch_testkit::docker::PrivateDocker;

/// Generous for a loaded 2-core machine; the waits end as soon as it is so.
const WAIT: Duration = Duration::from_secs(30);
const MARKERS: &str = "/markers";

/// Polls `done` until it is true, or fails with dockerd's log after [`WAIT`].
fn wait_for(docker: &PrivateDocker, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        if Instant::now() > deadline {
            panic!(
                "{what}: not so after {WAIT:?}\n--- dockerd log ---\n{}",
                docker.log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Removes the container when the test ends, passed or failed: the private
/// dockerd is stopped sooner than it would stop a job that ignores SIGTERM,
/// which would leave the job running.
struct RemoveOnDrop<'a> {
    docker: &'a PrivateDocker,
    id: String,
}

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.docker.run(&["rm", "--force", &self.id]);
    }
}

/// `docker inspect` of one field, trimmed.
fn inspect(docker: &PrivateDocker, id: &str, format: &str) -> String {
    let output = docker.run(&["inspect", "-f", format, id]).unwrap();
    assert!(
        output.status.success(),
        "docker inspect {id}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[tokio::test]
async fn the_client_finds_an_opted_in_job_and_its_signal_makes_it_checkpoint() {
    let docker = PrivateDocker::start().unwrap();
    let image = docker.image().unwrap();
    let markers = tempfile::tempdir().unwrap();
    let volume = format!("{}:{MARKERS}", markers.path().display());
    // PID 1 ignores signals it has no handler for, so the job says when its
    // trap is set; `sleep & wait` lets the trap run at once.
    let script = format!(
        "trap 'touch {MARKERS}/checkpointed; exit 0' USR1; touch {MARKERS}/ready; \
         while true; do sleep 1 & wait $!; done"
    );
    let output = docker
        .run(&[
            "run",
            "--detach",
            "--network",
            "host",
            "--env",
            "BLOCKWATCH_CHECKPOINT_SIGNAL=SIGUSR1",
            "--volume",
            &volume,
            image,
            "sh",
            "-c",
            &script,
        ])
        .unwrap();
    assert!(
        output.status.success(),
        "docker run: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        docker.log()
    );
    let id = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let _remove = RemoveOnDrop {
        docker: &docker,
        id: id.clone(),
    };
    wait_for(&docker, "the job set its trap", || {
        markers.path().join("ready").exists()
    });

    let engine = DockerEngine::from_docker_host(Some(&docker.host())).unwrap();
    assert_eq!(engine.endpoint(), docker.host());
    engine.ping().await.unwrap();

    let facts = engine.container(&id).await.unwrap();
    assert_eq!(facts.id, id);
    assert!(facts.running);
    assert_eq!(
        facts.env_value("BLOCKWATCH_CHECKPOINT_SIGNAL"),
        Some("SIGUSR1")
    );

    assert!(!markers.path().join("checkpointed").exists());
    engine.kill(&id, "SIGUSR1").await.unwrap();
    let checkpointed = markers.path().join("checkpointed");
    wait_for(&docker, "the job wrote its checkpoint", || {
        checkpointed.exists()
    });
    wait_for(&docker, "the job exited", || {
        inspect(&docker, &id, "{{.State.Running}}") == "false"
    });
    assert_eq!(inspect(&docker, &id, "{{.State.ExitCode}}"), "0");
    assert!(!engine.container(&id).await.unwrap().running);

    let err = engine.kill(&id, "SIGUSR1").await.unwrap_err();
    assert!(
        matches!(&err, DockerError::NotRunning { id: gone } if *gone == id),
        "{err:?}"
    );
    let unknown = "0".repeat(64);
    let err = engine.container(&unknown).await.unwrap_err();
    assert!(
        matches!(err, DockerError::NoSuchContainer { .. }),
        "{err:?}"
    );
    let err = engine.kill(&unknown, "SIGUSR1").await.unwrap_err();
    assert!(
        matches!(err, DockerError::NoSuchContainer { .. }),
        "{err:?}"
    );
}
