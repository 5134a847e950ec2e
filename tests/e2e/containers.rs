//! Real containers on a private dockerd (`blockwatch_testkit::docker`), run
//! the way AWS Batch runs a job on an instance blockwatch watches: host
//! networking, and the host's deadline directory bind-mounted read-only at
//! `/run/blockwatch`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use blockwatch_testkit::docker::PrivateDocker;

/// Where a job finds the deadline (the mount the README documents).
const MOUNT: &str = "/run/blockwatch";

#[test]
fn a_batch_job_reads_the_deadline_through_the_read_only_mount_and_cannot_write_it() {
    let docker = PrivateDocker::start().unwrap();
    let image = docker.image().unwrap();
    let deadline_dir = tempfile::tempdir().unwrap();
    let deadline = "2026-12-07T04:00:00Z\n";
    std::fs::write(deadline_dir.path().join("deadline"), deadline).unwrap();
    let volume = format!("{}:{MOUNT}:ro", deadline_dir.path().display());
    // Prints its network namespace and the deadline, then tries to write
    // beside it: the exit code is touch's, so 0 means the write went through.
    let script = format!(
        "readlink /proc/self/ns/net && cat {MOUNT}/deadline && touch {MOUNT}/written-by-job"
    );
    let output = docker
        .run(&[
            "run",
            "--rm",
            "--network",
            "host",
            "--volume",
            &volume,
            image,
            "sh",
            "-c",
            &script,
        ])
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let context = format!(
        "stdout: {stdout}\nstderr: {stderr}\ndockerd: {}",
        docker.log()
    );
    // Host networking: the job is in the test's own network namespace.
    let host_net = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_eq!(
        stdout,
        format!("{}\n{deadline}", host_net.display()),
        "{context}"
    );
    assert_eq!(output.status.code(), Some(1), "{context}");
    assert!(stderr.contains("Read-only file system"), "{context}");
    assert!(
        !deadline_dir.path().join("written-by-job").exists(),
        "{context}"
    );
}
