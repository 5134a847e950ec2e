//! The real package under real systemd: the `.deb` from
//! `packaging/build.sh --profile dev` (the release metadata and files around
//! the debug binary) installed into a Debian bookworm root
//! (tests/nspawn-base.sh), booted with `systemd-nspawn -b --register=no
//! --keep-unit`, inspected with `nsenter`.
//! The container shares the host's network, so the units reach moto and the
//! IMDS simulator on 127.0.0.1 through drop-ins.
//!
//! Over 400 lines: many independent scenarios on one booted package root.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use blockwatch_core::tags::{TAG_COMPUTE_ENVIRONMENT, TAG_LEASE_END};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use blockwatch_core::time_text::rfc3339;
use blockwatch_testkit::docker::PrivateDocker;
use blockwatch_testkit::imds::SpotInstanceAction;
use blockwatch_testkit::instance::{now, parse_time, Instance};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The test package: `packaging/build.sh --profile dev` writes it, from the
/// debug build, into its own folder so it is never taken for a release one.
fn package(extension: &str) -> PathBuf {
    let dir = repo().join("target/packages-test");
    let found = std::fs::read_dir(&dir)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == extension))
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    found.unwrap_or_else(|| {
        panic!(
            "no .{extension} in {}: run packaging/build.sh --profile dev (tests/run-tests does)",
            dir.display()
        )
    })
}

fn run(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    output
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A booted container; shut down (by the PID of our nspawn) and removed on
/// drop. One that powered itself off is only removed.
struct Container {
    root: PathBuf,
    nspawn: Option<Child>,
    leader: u32,
    /// More `systemd-nspawn` arguments for the boot, e.g. `--bind=…`.
    boot_args: Vec<String>,
}

impl Container {
    /// Copies the cached base root and installs the package with `dpkg -i`.
    fn prepare(name: &str) -> Self {
        let container = Self::bare(name);
        container.install(&package("deb"));
        container
    }

    /// A copy of the cached base root, without the package.
    fn bare(name: &str) -> Self {
        let base = repo().join("target/nspawn/bookworm");
        assert!(
            base.join("usr/lib/systemd/systemd").exists(),
            "{} missing: run tests/nspawn-base.sh (tests/run-tests does)",
            base.display()
        );
        let root = repo().join(format!("target/nspawn/run-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let copied = run(Command::new("cp")
            .args(["-a", "--reflink=auto"])
            .arg(&base)
            .arg(&root));
        assert!(copied.status.success(), "{}", text(&copied));
        Self {
            root,
            nspawn: None,
            leader: 0,
            boot_args: Vec::new(),
        }
    }

    /// Bind-mounts the host's `host` at `inside` in the booted container.
    fn bind(&mut self, host: &Path, inside: &str) {
        self.boot_args
            .push(format!("--bind={}:{inside}", host.display()));
    }

    fn path(&self, inside: &str) -> PathBuf {
        self.root.join(inside.trim_start_matches('/'))
    }

    fn write(&self, inside: &str, content: &str) {
        let path = self.path(inside);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    /// `dpkg -i` the package: inside the booted system once booted, else in
    /// the root through a non-booting nspawn.
    fn install(&self, deb: &Path) -> Output {
        std::fs::copy(deb, self.path("/root/blockwatch.deb")).unwrap();
        let output = if self.leader != 0 {
            self.exec(&["dpkg", "-i", "/root/blockwatch.deb"])
        } else {
            run(Command::new("systemd-nspawn")
                .args(["-q", "--register=no", "--keep-unit", "-D"])
                .arg(&self.root)
                .args(["dpkg", "-i", "/root/blockwatch.deb"]))
        };
        assert!(output.status.success(), "dpkg -i: {}", text(&output));
        output
    }

    /// The stand-in ECS agent, ordered like the real one, and drop-ins that
    /// point blockwatch at the simulated instance.
    fn simulate_instance(&self, instance: &Instance, config: &str) {
        self.write(
            "/etc/systemd/system/ecs.service",
            "[Unit]\nDescription=stand-in ECS agent (test)\nAfter=cloud-final.service\n\n[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/cp /etc/ecs/ecs.config /run/ecs.config.at-start\n\n[Install]\nWantedBy=multi-user.target\n",
        );
        std::os::unix::fs::symlink(
            "/etc/systemd/system/ecs.service",
            self.path("/etc/systemd/system/multi-user.target.wants/ecs.service"),
        )
        .unwrap();
        let environment = format!(
            "[Service]\nEnvironment=AWS_EC2_METADATA_SERVICE_ENDPOINT={}\nEnvironment=AWS_ENDPOINT_URL={}\n",
            instance.imds.endpoint(),
            instance.aws_endpoint
        );
        for unit in ["blockwatch-join.service", "blockwatch.service"] {
            self.write(
                &format!("/etc/systemd/system/{unit}.d/50-simulated-instance.conf"),
                &environment,
            );
        }
        self.write("/etc/blockwatch/blockwatch.toml", config);
    }

    fn boot(&mut self) {
        let log = std::fs::File::create(self.root.with_extension("console.log")).unwrap();
        let child = Command::new("systemd-nspawn")
            .args(["-q", "-b", "--register=no", "--keep-unit"])
            .args(&self.boot_args)
            .arg("-D")
            .arg(&self.root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let pid = child.id();
        self.nspawn = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.leader == 0 {
            assert!(Instant::now() < deadline, "no systemd in the container");
            let children = run(Command::new("ps").args(["-o", "pid=", "--ppid", &pid.to_string()]));
            if let Some(leader) = String::from_utf8_lossy(&children.stdout)
                .split_whitespace()
                .next()
                .and_then(|p| p.parse().ok())
            {
                if std::fs::read_to_string(format!("/proc/{leader}/comm"))
                    .is_ok_and(|c| c.trim() == "systemd")
                {
                    self.leader = leader;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Until boot has finished (degraded is fine: the failure tests want it).
        self.wait_for("boot", Duration::from_secs(60), |c| {
            let state = c.exec(&["systemctl", "is-system-running"]);
            matches!(
                String::from_utf8_lossy(&state.stdout).trim(),
                "running" | "degraded"
            )
        });
    }

    /// Whether the booted container's systemd is still the child of our
    /// nspawn. Our nspawn is never reaped while it runs, so its PID, and so
    /// this test, cannot name another process.
    fn booted(&self) -> bool {
        let Some(nspawn) = self.nspawn.as_ref() else {
            return false;
        };
        // "pid (comm) state ppid ...": comm may hold spaces, so from the last ')'.
        std::fs::read_to_string(format!("/proc/{}/stat", self.leader))
            .ok()
            .and_then(|stat| {
                let fields = stat.rsplit_once(')')?.1.to_owned();
                fields.split_whitespace().nth(1)?.parse::<u32>().ok()
            })
            .is_some_and(|ppid| self.leader != 0 && ppid == nspawn.id())
    }

    /// Waits up to `within` for nspawn to end on its own (the container
    /// shut itself down); its exit status, or `None` while it still runs.
    fn wait_for_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        let nspawn = self.nspawn.as_mut()?;
        loop {
            if let Some(status) = nspawn.try_wait().unwrap() {
                // Reaped: the PIDs may be reused, so nothing may target them.
                self.nspawn = None;
                self.leader = 0;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Runs a command in the root of a container that is not running
    /// (`systemd-nspawn` without boot), e.g. to read its journal.
    fn offline(&self, args: &[&str]) -> Output {
        assert!(self.nspawn.is_none(), "the container still runs");
        run(Command::new("systemd-nspawn")
            .args(["-q", "--register=no", "--keep-unit", "-D"])
            .arg(&self.root)
            .args(args))
    }

    /// Runs a command inside the container, in all its namespaces. Never
    /// anywhere else: a container that is gone is a test failure.
    fn exec(&self, args: &[&str]) -> Output {
        assert!(
            self.booted(),
            "the container is not running; not running {args:?}"
        );
        run(Command::new("nsenter")
            .args(["-t", &self.leader.to_string(), "-a", "--"])
            .args(args))
    }

    fn property(&self, unit: &str, name: &str) -> String {
        let out = self.exec(&["systemctl", "show", "-P", name, unit]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn wait_for(&self, what: &str, within: Duration, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + within;
        while !done(self) {
            if Instant::now() > deadline {
                assert!(self.booted(), "the container stopped waiting for {what}");
                let journal = self.exec(&["journalctl", "-b", "--no-pager", "-n", "80"]);
                panic!("timed out waiting for {what}\n{}", text(&journal));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(mut child) = self.nspawn.take() {
            // A container that shut itself down is only reaped: once reaped,
            // its PID may belong to someone else, so it is never signalled.
            if child.try_wait().ok().flatten().is_none() {
                // SIGTERM makes nspawn shut the container down cleanly.
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
                let deadline = Instant::now() + Duration::from_secs(20);
                while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
                    std::thread::sleep(Duration::from_millis(200));
                }
                // std sends nothing to a child it has already reaped.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
        let _ = std::fs::remove_file(self.root.with_extension("console.log"));
        let _ = std::fs::remove_file(self.root.with_extension("newer.deb"));
    }
}

/// The same package with a newer version (0.1.0-2), repacked with dpkg-deb:
/// an upgrade "from a previous build" without building twice.
fn newer_build(deb: &Path, scratch: &Path) -> PathBuf {
    let _ = std::fs::remove_dir_all(scratch);
    let unpacked = run(Command::new("dpkg-deb").arg("-R").arg(deb).arg(scratch));
    assert!(unpacked.status.success(), "{}", text(&unpacked));
    let control = scratch.join("DEBIAN/control");
    let text_before = std::fs::read_to_string(&control).unwrap();
    std::fs::write(
        &control,
        text_before.replace("Version: 0.1.0-1", "Version: 0.1.0-2"),
    )
    .unwrap();
    let newer = scratch.with_extension("newer.deb");
    let built = run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-b"])
        .arg(scratch)
        .arg(&newer));
    assert!(built.status.success(), "{}", text(&built));
    let _ = std::fs::remove_dir_all(scratch);
    newer
}

const CONFIG: &str = "# edited by the test\npoll_interval = \"1s\"\ndrain_lead = \"10s\"\ndrain_poll_interval = \"1s\"\n";

/// Turns the checkpoint signal on: `blockwatch run` then pings Docker at
/// its default socket once at start, and logs what it found.
const CHECKPOINT: &str = "checkpoint_lead = \"5m\"\n";
/// Where the agent looks for Docker (no `DOCKER_HOST` in the unit).
const DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// The unit's journal once it holds a line with `wanted`.
fn wait_for_journal_line(container: &Container, wanted: &str) -> String {
    let journal = |c: &Container| text(&c.exec(&["journalctl", "-u", "blockwatch", "--no-pager"]));
    container.wait_for(wanted, Duration::from_secs(60), |c| {
        journal(c).contains(wanted)
    });
    journal(container)
}

fn assert_root() {
    let uid = run(Command::new("id").arg("-u"));
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "systemd-nspawn needs root"
    );
}

#[tokio::test]
async fn the_package_joins_before_ecs_watches_drains_upgrades_and_uninstalls() {
    assert_root();
    let instance = Instance::with_moto().await;
    let cluster_arn = instance
        .moto()
        .create_unmanaged_ce("research", true)
        .await
        .unwrap();
    let cluster = cluster_arn.rsplit('/').next().unwrap().to_owned();
    let id = instance
        .launch(&[(TAG_COMPUTE_ENVIRONMENT, "research")], true)
        .await;
    let mut container = Container::prepare("happy");
    // Checkpoint signals asked for, but no Docker in the container.
    let config = format!("{CONFIG}{CHECKPOINT}");
    container.simulate_instance(&instance, &config);
    container.boot();

    // The man pages are where `man` looks, by name and by section.
    for (query, page) in [
        (&["blockwatch"][..], "/usr/share/man/man8/blockwatch.8.gz"),
        (
            &["8", "blockwatch"][..],
            "/usr/share/man/man8/blockwatch.8.gz",
        ),
        (
            &["blockwatch.toml"][..],
            "/usr/share/man/man5/blockwatch.toml.5.gz",
        ),
        (
            &["5", "blockwatch.toml"][..],
            "/usr/share/man/man5/blockwatch.toml.5.gz",
        ),
    ] {
        let found = container.exec(&[&["man", "-w"][..], query].concat());
        assert_eq!(text(&found).trim(), page, "man -w {query:?}");
    }

    // The stand-in ECS agent started with ECS_CLUSTER already written.
    container.wait_for("ecs.service", Duration::from_secs(60), |c| {
        c.property("ecs.service", "ActiveState") == "active"
    });
    // /run is the container's own tmpfs: read it from inside.
    let read = container.exec(&["cat", "/run/ecs.config.at-start"]);
    let at_start = String::from_utf8_lossy(&read.stdout).into_owned();
    assert_eq!(
        at_start,
        format!("ECS_CLUSTER={cluster}\n"),
        "{}",
        text(&read)
    );
    assert_eq!(
        container.property("blockwatch-join.service", "Result"),
        "success"
    );

    // blockwatch.service runs, with a status line naming the cluster.
    container.wait_for("blockwatch.service", Duration::from_secs(60), |c| {
        c.property("blockwatch.service", "ActiveState") == "active"
    });
    let status = container.property("blockwatch.service", "StatusText");
    assert!(
        status.starts_with(&format!("cluster {cluster} ·")),
        "{status}"
    );
    // The stand-in ECS agent serves no introspection API: blockwatch says so.
    assert!(status.ends_with("· ECS agent not answering"), "{status}");
    // No Docker: a warning, and the agent goes on (the drain below too).
    wait_for_journal_line(
        &container,
        &format!("checkpoint_lead is set, but Docker cannot be reached at unix://{DOCKER_SOCKET}"),
    );
    let active = container.exec(&["systemctl", "is-active", "blockwatch.service"]);
    assert_eq!(text(&active).trim(), "active");
    assert_eq!(container.property("blockwatch.service", "NRestarts"), "0");

    // journald holds blockwatch's own fields.
    let journal = container.exec(&[
        "journalctl",
        "-u",
        "blockwatch-join.service",
        "-o",
        "json",
        "--no-pager",
    ]);
    let entries: Vec<serde_json::Value> = String::from_utf8_lossy(&journal.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let decision = entries
        .iter()
        .find(|e| e["CLUSTER"] == cluster.as_str() && e["SOURCE"] == "discovered")
        .unwrap_or_else(|| panic!("{entries:?}"));
    assert_eq!(decision["INSTANCE_ID"], id.as_str());
    // What an operator sees (printed for the README's example session).
    println!(
        "{}",
        text(&container.exec(&[
            "systemctl",
            "status",
            "--no-pager",
            "-n",
            "5",
            "blockwatch.service"
        ]))
    );

    // A spot notice drains the container instance at moto.
    let container_instance = instance
        .moto()
        .register_container_instance(&cluster_arn, &id)
        .await
        .unwrap();
    instance.imds.update(|s| {
        s.spot_instance_action = Some(SpotInstanceAction {
            action: "terminate".into(),
            time: time::OffsetDateTime::now_utc() + time::Duration::seconds(5),
        })
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = instance
            .moto()
            .container_instance_status(&cluster_arn, &container_instance)
            .await
            .unwrap();
        if state == "DRAINING" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not drained; {}",
            text(&container.exec(&["journalctl", "-u", "blockwatch", "--no-pager", "-n", "30"]))
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    container.wait_for("a draining status", Duration::from_secs(30), |c| {
        c.property("blockwatch.service", "StatusText")
            .starts_with("draining")
    });
    let drained = container.exec(&[
        "journalctl",
        "-u",
        "blockwatch",
        "-o",
        "verbose",
        "--no-pager",
        "PHASE=draining",
    ]);
    assert!(
        text(&drained).contains("DEADLINE_SOURCE=spot-interruption"),
        "{}",
        text(&drained)
    );
    println!("{}", text(&drained));
    // The package does not own ecs.config: ecs-init does.
    assert!(!container
        .exec(&["dpkg", "-S", "/etc/ecs/ecs.config"])
        .status
        .success());

    // The hardening is measured, not guessed, and kept where it is or
    // better: the exposures measured on 2026-12-07 (Debian 12's systemd
    // 252), with blockwatch.service reaching Docker's socket.
    for (unit, measured) in [
        ("blockwatch.service", 1.6),
        ("blockwatch-join.service", 1.9),
    ] {
        let analysis = container.exec(&["systemd-analyze", "security", "--no-pager", unit]);
        let output = text(&analysis);
        let exposure: f64 = output
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|rest| rest.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{output}"));
        println!("systemd-analyze security {unit}: {exposure}");
        assert!(
            exposure <= measured,
            "{unit}: exposure {exposure} > {measured}\n{output}"
        );
    }

    // An upgrade to a newer build keeps the edited config and restarts the daemon.
    let before = container.property("blockwatch.service", "ExecMainPID");
    let newer = newer_build(&package("deb"), &container.root.with_extension("newer"));
    let upgraded = container.install(&newer);
    assert!(
        text(&upgraded).contains("over (0.1.0-1)"),
        "an upgrade, not a reinstall: {}",
        text(&upgraded)
    );
    assert_eq!(
        std::fs::read_to_string(container.path("/etc/blockwatch/blockwatch.toml")).unwrap(),
        config
    );
    container.wait_for("a restart", Duration::from_secs(60), |c| {
        let pid = c.property("blockwatch.service", "ExecMainPID");
        pid != before && pid != "0" && c.property("blockwatch.service", "ActiveState") == "active"
    });

    // Removal leaves no running blockwatch unit.
    let removed = container.exec(&["dpkg", "-r", "blockwatch"]);
    assert!(removed.status.success(), "{}", text(&removed));
    let units = container.exec(&[
        "systemctl",
        "list-units",
        "--state=running",
        "--no-legend",
        "blockwatch*",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&units.stdout).trim(),
        "",
        "{}",
        text(&units)
    );
    assert!(!container.path("/usr/bin/blockwatch").exists());
}

/// A join that fails (a compute-environment tag naming nothing) keeps
/// ecs.service down, yet blockwatch.service (which only `Wants=` the join)
/// runs degraded and still ends the lease in a power-off of the container.
/// The power-off command takes 40 s, longer than the unit's `WatchdogSec`
/// (30 s): the watchdog is fed meanwhile, so the agent is not killed and the
/// power-off is recorded once.
#[tokio::test]
async fn a_failed_join_never_starts_ecs_yet_the_lease_ends_in_a_slow_power_off_under_the_watchdog()
{
    assert_root();
    let instance = Instance::with_moto().await;
    instance
        .launch(&[(TAG_COMPUTE_ENVIRONMENT, "no-such-ce")], true)
        .await;
    let mut container = Container::prepare("unknown-ce");
    // A persistent journal, read after the container is gone.
    std::fs::create_dir_all(container.path("/var/log/journal")).unwrap();
    let slow = "sleep 40 && systemctl --no-block poweroff";
    container.simulate_instance(
        &instance,
        &format!(
            "{CONFIG}poweroff_command = {slow:?}
"
        ),
    );
    // Time for the boot and the checks below before the end.
    let lease_end = now() + time::Duration::seconds(60);
    instance.imds.update(|s| {
        s.tags
            .get_or_insert_with(Default::default)
            .insert(TAG_LEASE_END.into(), rfc3339(lease_end));
    });
    container.boot();

    container.wait_for("the join to fail", Duration::from_secs(60), |c| {
        c.property("blockwatch-join.service", "ActiveState") == "failed"
    });
    let status = text(&container.exec(&[
        "systemctl",
        "status",
        "--no-pager",
        "-n",
        "20",
        "blockwatch-join.service",
    ]));
    assert!(
        status.contains("compute environment \"no-such-ce\" not found"),
        "{status}"
    );
    assert!(
        status.contains("status=65/DATAERR"),
        "a terminal exit code, not retried: {status}"
    );
    println!("{status}");
    assert_eq!(
        container.property("ecs.service", "ActiveState"),
        "inactive",
        "ecs.service must not start"
    );
    assert!(!container
        .exec(&["test", "-e", "/run/ecs.config.at-start"])
        .status
        .success());
    assert_eq!(
        container.property("blockwatch-join.service", "NRestarts"),
        "0"
    );
    // blockwatch.service runs all the same, and says why it is degraded.
    container.wait_for(
        "a degraded blockwatch.service",
        Duration::from_secs(30),
        |c| {
            c.property("blockwatch.service", "StatusText")
                .starts_with("DEGRADED, no ECS drain: compute environment \"no-such-ce\" not found")
        },
    );

    let Some(exited) = container.wait_for_exit(Duration::from_secs(240)) else {
        panic!(
            "the container did not power off; {}",
            text(&container.exec(&["journalctl", "-b", "--no-pager", "-n", "80"]))
        );
    };
    let system = text(&container.offline(&["journalctl", "--no-pager", "-o", "short-precise"]));
    assert!(exited.success(), "nspawn: {exited}\n{system}");
    assert!(
        system.contains("Reached target poweroff.target"),
        "{system}"
    );
    assert!(!system.contains("Watchdog timeout"), "{system}");
    // ecs.service was never started, to the end.
    assert!(
        system.contains("Dependency failed for ecs.service"),
        "{system}"
    );
    assert!(
        !system.contains("Started ecs.service") && !system.contains("Finished ecs.service"),
        "{system}"
    );
    assert_eq!(
        system.matches("Started blockwatch.service").count(),
        1,
        "blockwatch.service started once: {system}"
    );
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(container.path("/var/lib/blockwatch/state.json")).unwrap(),
    )
    .unwrap();
    let drain = &state["drain"];
    assert_eq!(drain["poweroff_attempts"], 1, "{state:#}");
    assert!(
        parse_time(
            drain["poweroff_at"]
                .as_str()
                .unwrap_or_else(|| panic!("{state:#}"))
        ) >= lease_end,
        "{state:#}"
    );
    assert_eq!(state["cluster"], serde_json::Value::Null, "{state:#}");
    let ecs_calls = instance
        .moto()
        .requests()
        .into_iter()
        .filter_map(|r| r.target)
        .filter(|t| t.starts_with("AmazonEC2ContainerServiceV"))
        .count();
    assert_eq!(ecs_calls, 0, "no ECS call");
}

/// The shipped units' text: blockwatch.service only wants the join (a
/// failed join must not stop it) and waits for time sync; ecs.service
/// requires the join.
#[test]
fn blockwatch_wants_the_join_and_waits_for_time_sync_while_ecs_requires_the_join() {
    let units = repo().join("packaging/systemd");
    let unit = std::fs::read_to_string(units.join("blockwatch.service")).unwrap();
    let values = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(key))
            .flat_map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .collect()
    };
    assert!(
        values("Wants=").contains(&"blockwatch-join.service".to_owned()),
        "{unit}"
    );
    assert!(values("Requires=").is_empty(), "{unit}");
    let after = values("After=");
    for needed in ["blockwatch-join.service", "time-sync.target"] {
        assert!(
            after.contains(&needed.to_owned()),
            "After= {needed}: {unit}"
        );
    }
    let dropin = std::fs::read_to_string(units.join("ecs.service.d/10-blockwatch.conf")).unwrap();
    assert!(
        dropin
            .lines()
            .any(|l| l == "Requires=blockwatch-join.service"),
        "{dropin}"
    );
}

/// `lastStatus` and `stoppedReason` of `task` once it was stopped, or `None`
/// while it runs. ListTasks first: each DescribeTasks of a running task moves
/// it one step towards STOPPED in moto.
async fn stopped_at_moto(
    instance: &Instance,
    cluster: &str,
    task: &str,
) -> Option<(String, Option<String>)> {
    let ecs = aws_sdk_ecs::Client::new(instance.moto().sdk());
    let stopped = ecs
        .list_tasks()
        .cluster(cluster)
        .desired_status(aws_sdk_ecs::types::DesiredStatus::Stopped)
        .send()
        .await
        .unwrap();
    if !stopped.task_arns().iter().any(|t| t == task) {
        return None;
    }
    let found = instance
        .moto()
        .describe_task(cluster, task)
        .await
        .unwrap()
        .unwrap();
    Some((
        found.last_status().unwrap_or_default().to_owned(),
        found.stopped_reason().map(str::to_owned),
    ))
}

/// The one test that runs the shipped `poweroff_command` (`systemctl
/// poweroff`) from inside the hardened unit: safe only in a booted
/// container. A lease ends ~30 s after boot with a task still running.
#[tokio::test]
async fn at_the_lease_end_the_last_task_stops_and_the_container_really_powers_off() {
    assert_root();
    let instance = Instance::with_moto().await;
    let cluster_arn = instance
        .moto()
        .create_unmanaged_ce("research", true)
        .await
        .unwrap();
    let id = instance
        .launch(&[(TAG_COMPUTE_ENVIRONMENT, "research")], true)
        .await;
    let container_instance = instance
        .moto()
        .register_container_instance(&cluster_arn, &id)
        .await
        .unwrap();
    let task = instance
        .moto()
        .start_task(&cluster_arn, &container_instance)
        .await
        .unwrap();

    // Booted beside it on the same host: the power-off must not reach it.
    let mut neighbour = Container::bare("neighbour");
    neighbour.boot();

    let mut container = Container::prepare("lease-end");
    // A persistent journal, read after the container is gone.
    std::fs::create_dir_all(container.path("/var/log/journal")).unwrap();
    // Neither poweroff_command nor on_lease_end: the shipped defaults.
    container.simulate_instance(&instance, CONFIG);
    let lease_end = now() + time::Duration::seconds(30);
    instance.imds.update(|s| {
        s.tags
            .get_or_insert_with(Default::default)
            .insert(TAG_LEASE_END.into(), rfc3339(lease_end));
    });
    container.boot();
    container.wait_for("blockwatch.service", Duration::from_secs(60), |c| {
        c.property("blockwatch.service", "ActiveState") == "active"
    });

    // DRAINING before the end; the task stopped at the end, not before.
    let mut drained_before_end = false;
    let give_up = Instant::now() + Duration::from_secs(120);
    let reason = loop {
        let before_asking = now();
        if let Some((status, reason)) = stopped_at_moto(&instance, &cluster_arn, &task).await {
            let reason = reason.unwrap_or_default();
            assert!(
                before_asking >= lease_end - time::Duration::seconds(1),
                "stopped before the lease end {lease_end}: {reason}"
            );
            assert_eq!(status, "STOPPED", "{reason}");
            break reason;
        }
        if before_asking < lease_end {
            drained_before_end |= instance
                .moto()
                .container_instance_status(&cluster_arn, &container_instance)
                .await
                .unwrap()
                == "DRAINING";
        }
        assert!(
            Instant::now() < give_up,
            "the task was not stopped; {}",
            text(&container.exec(&["journalctl", "-u", "blockwatch", "--no-pager", "-n", "40"]))
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(drained_before_end, "not DRAINING before the lease end");
    assert!(reason.starts_with("blockwatch: lease ended"), "{reason}");
    println!("task stopped at moto: {reason}");

    // The container shuts itself down: nspawn exits on its own.
    let Some(exited) = container.wait_for_exit(Duration::from_secs(180)) else {
        panic!(
            "the container did not power off; {}",
            text(&container.exec(&["journalctl", "-b", "--no-pager", "-n", "80"]))
        );
    };
    let journal = text(&container.offline(&[
        "journalctl",
        "--no-pager",
        "-o",
        "short-precise",
        "-u",
        "blockwatch.service",
    ]));
    println!("{journal}");
    assert!(exited.success(), "nspawn: {exited}\n{journal}");
    assert!(
        journal.contains("powering off with \"systemctl --no-block poweroff\""),
        "{journal}"
    );
    // systemd itself took the request: a power-off, not a crash or a kill.
    let system = text(&container.offline(&["journalctl", "--no-pager", "_PID=1"]));
    assert!(
        system.contains("Reached target poweroff.target"),
        "{system}"
    );
    let console = std::fs::read_to_string(container.root.with_extension("console.log")).unwrap();
    assert!(console.contains("Powering off."), "{console}");

    // Recorded as done: the command succeeded before the agent was stopped.
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(container.path("/var/lib/blockwatch/state.json")).unwrap(),
    )
    .unwrap();
    let drain = &state["drain"];
    assert!(drain["poweroff_at"].is_string(), "{state:#}");
    assert_eq!(drain["poweroff_attempts"], 1, "{state:#}");
    assert!(
        parse_time(drain["poweroff_at"].as_str().unwrap()) >= lease_end,
        "{state:#}"
    );

    // Only this container: the neighbour still runs.
    assert!(neighbour.booted(), "the neighbour container stopped");
    let running = neighbour.exec(&["systemctl", "is-system-running"]);
    assert!(
        matches!(
            String::from_utf8_lossy(&running.stdout).trim(),
            "running" | "degraded"
        ),
        "{}",
        text(&running)
    );
}

#[test]
fn the_rpm_carries_the_same_payload_and_systemd_handling() {
    assert_root();
    let rpm = package("rpm");
    let listing = run(Command::new("rpm").arg("-qpl").arg(&rpm));
    let files = String::from_utf8_lossy(&listing.stdout);
    for path in [
        "/usr/bin/blockwatch",
        "/usr/lib/systemd/system/blockwatch-join.service",
        "/usr/lib/systemd/system/blockwatch.service",
        "/usr/lib/systemd/system/ecs.service.d/10-blockwatch.conf",
        "/usr/lib/systemd/system-preset/90-blockwatch.preset",
        "/etc/blockwatch/blockwatch.toml",
        "/usr/share/man/man8/blockwatch.8.gz",
        "/usr/share/man/man5/blockwatch.toml.5.gz",
    ] {
        assert!(files.lines().any(|l| l == path), "{path} not in {files}");
    }
    assert!(
        !files.contains("/etc/ecs/ecs.config"),
        "ecs-init owns ecs.config"
    );
    assert!(
        !files.contains("blockwatch-launch"),
        "the launcher is not in the instance package"
    );
    let config = run(Command::new("rpm").args(["-qpc"]).arg(&rpm));
    assert!(
        String::from_utf8_lossy(&config.stdout).contains("/etc/blockwatch/blockwatch.toml"),
        "a %config file"
    );
    let flags = run(Command::new("rpm")
        .args(["-qp", "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\\n]"])
        .arg(&rpm));
    let flags = String::from_utf8_lossy(&flags.stdout);
    let toml = flags
        .lines()
        .find(|l| l.starts_with("/etc/blockwatch/blockwatch.toml "))
        .unwrap_or_default();
    assert!(toml.ends_with(" cn"), "%config(noreplace): {toml:?}");
    // webhook_url may carry a token: not for every local user to read.
    let modes = run(Command::new("rpm")
        .args([
            "-qp",
            "--qf",
            "[%{FILENAMES} %{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME}\\n]",
        ])
        .arg(&rpm));
    let modes = String::from_utf8_lossy(&modes.stdout);
    assert!(
        modes
            .lines()
            .any(|l| l == "/etc/blockwatch/blockwatch.toml -rw-r----- root:root"),
        "{modes}"
    );
    let deb = run(Command::new("dpkg-deb").arg("-c").arg(package("deb")));
    let deb = String::from_utf8_lossy(&deb.stdout);
    let entry = deb
        .lines()
        .find(|l| l.ends_with("./etc/blockwatch/blockwatch.toml"))
        .unwrap_or_else(|| panic!("no blockwatch.toml in\n{deb}"));
    // cargo-deb writes numeric owners: 0/0 is root:root.
    let fields: Vec<&str> = entry.split_whitespace().collect();
    assert!(
        fields[0] == "-rw-r-----" && ["0/0", "root/root"].contains(&fields[1]),
        "the deb's blockwatch.toml: {entry}"
    );
    let scripts = text(&run(Command::new("rpm")
        .args(["-qp", "--scripts"])
        .arg(&rpm)));
    assert!(
        scripts.contains("systemctl --no-reload preset blockwatch-join.service blockwatch.service"),
        "{scripts}"
    );
    assert!(
        scripts.contains("try-restart blockwatch.service"),
        "{scripts}"
    );
    assert!(
        scripts.contains("disable blockwatch.service blockwatch-join.service"),
        "{scripts}"
    );

    let scratch = tempfile::tempdir().unwrap();
    let installed = run(Command::new("rpm")
        .arg("--root")
        .arg(scratch.path())
        .args(["-i", "--nodeps", "--noscripts"])
        .arg(&rpm));
    assert!(installed.status.success(), "{}", text(&installed));
    assert!(scratch.path().join("usr/bin/blockwatch").exists());
    assert!(scratch
        .path()
        .join("usr/lib/systemd/system/ecs.service.d/10-blockwatch.conf")
        .exists());
}

/// The shipped sample config with every example line uncommented: each key
/// is one the agent knows (unknown keys are an error), each example parses,
/// and the lease-end keys are documented with their defaults.
#[test]
fn every_example_in_the_sample_config_is_a_valid_setting_and_shows_its_default() {
    use blockwatch_core::file_model::FileConfig;
    use blockwatch_core::settings::OnLeaseEnd;
    use blockwatch_core::time_text::HumanDuration;
    let path = repo().join("packaging/blockwatch.toml");
    let sample = std::fs::read_to_string(&path).unwrap();
    // "#key = value": an example; "# text": prose.
    let examples: String = sample
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .filter(|l| l.starts_with(|c: char| c.is_ascii_lowercase()) && l.contains(" = "))
        .map(|l| format!("{l}\n"))
        .collect();
    let parsed = FileConfig::parse(&examples, &path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(parsed.on_lease_end, Some(OnLeaseEnd::Poweroff));
    assert_eq!(
        parsed.poweroff_command.as_deref(),
        Some(blockwatch_core::settings::DEFAULT_POWEROFF_COMMAND)
    );
    assert_eq!(
        parsed.lease_refresh_interval,
        Some(HumanDuration(
            blockwatch_core::settings::DEFAULT_LEASE_REFRESH_INTERVAL
        ))
    );
    assert_eq!(
        parsed.capacity_block_refresh_interval,
        Some(HumanDuration(
            blockwatch_core::settings::DEFAULT_CAPACITY_BLOCK_REFRESH_INTERVAL
        ))
    );
}

/// The count of `blockwatch_errors_total{source="…"}` in a metrics file.
fn errors_total(metrics: &str, source: &str) -> u64 {
    let prefix = format!("blockwatch_errors_total{{source=\"{source}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn metrics_and_deadline_files_are_written_under_the_units_hardening_and_errors_move_while_idle(
) {
    assert_root();
    // No AWS: the join needs none (explicit cluster), and the agent's EC2
    // end-date lookup keeps failing while it is otherwise idle.
    let instance = Instance::without_aws();
    // Before the container, so dropped after it.
    let docker = PrivateDocker::start().unwrap();
    let mut container = Container::prepare("metrics");
    // What node_exporter's package creates.
    std::fs::create_dir_all(container.path("/var/lib/node_exporter/textfile_collector")).unwrap();
    // A minbase root has no CA bundle (an instance has one), and the AWS SDK
    // panics building its HTTPS client without one.
    let bundle = container.path("/etc/ssl/certs/ca-certificates.crt");
    if !bundle.exists() {
        std::fs::create_dir_all(bundle.parent().unwrap()).unwrap();
        std::fs::copy("/etc/ssl/certs/ca-certificates.crt", &bundle).unwrap();
    }
    let metrics = "/var/lib/node_exporter/textfile_collector/blockwatch.prom";
    container.simulate_instance(
        &instance,
        &format!("{CONFIG}{CHECKPOINT}cluster = \"jobs\"\nmetrics_file = \"{metrics}\"\n"),
    );
    // A private dockerd's socket where the agent looks for Docker: the
    // sandboxed unit must connect to it and speak HTTP with dockerd.
    let socket = docker.host();
    container.bind(
        Path::new(socket.strip_prefix("unix://").unwrap()),
        DOCKER_SOCKET,
    );
    // Refreshed every 2 s rather than every minute.
    container.write(
        "/etc/systemd/system/blockwatch.service.d/60-quick-heartbeat.conf",
        "[Service]\nEnvironment=BLOCKWATCH_HEARTBEAT_INTERVAL=2s\n",
    );
    container.boot();
    container.wait_for("blockwatch.service", Duration::from_secs(60), |c| {
        c.property("blockwatch.service", "ActiveState") == "active"
    });
    let journal = wait_for_journal_line(
        &container,
        &format!("checkpoint signals go through Docker at unix://{DOCKER_SOCKET}: it answers"),
    );
    assert!(
        !journal.contains("checkpoint_lead is set, but"),
        "{journal}"
    );

    let read = |c: &Container| std::fs::read_to_string(c.path(metrics)).unwrap_or_default();
    container.wait_for("the metrics file", Duration::from_secs(30), |c| {
        read(c).contains("blockwatch_phase{phase=\"watching\"} 1")
    });
    let first = errors_total(&read(&container), "ec2");
    container.wait_for(
        "blockwatch_errors_total to move while idle",
        Duration::from_secs(45),
        |c| errors_total(&read(c), "ec2") > first,
    );
    let journal = text(&container.exec(&["journalctl", "-u", "blockwatch", "--no-pager"]));
    assert!(!journal.contains("cannot write metrics"), "{journal}");
    assert!(!journal.contains("cannot write the deadline"), "{journal}");
    assert_eq!(container.property("blockwatch.service", "NRestarts"), "0");
    println!("{}", read(&container));

    // The deadline files a job mounts: 0644 in a 0755 /run/blockwatch the
    // unit's RuntimeDirectory gives it, and an unprivileged user reads them.
    let modes = container.exec(&[
        "stat",
        "-c",
        "%a %U %n",
        "/run/blockwatch",
        "/run/blockwatch/deadline.json",
        "/run/blockwatch/deadline",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&modes.stdout),
        "755 root /run/blockwatch\n644 root /run/blockwatch/deadline.json\n644 root /run/blockwatch/deadline\n",
        "{}",
        text(&modes)
    );
    let as_nobody = |file: &str| {
        let read = container.exec(&["runuser", "-u", "nobody", "--", "cat", file]);
        assert!(
            read.status.success(),
            "nobody cannot read {file}: {}",
            text(&read)
        );
        String::from_utf8_lossy(&read.stdout).into_owned()
    };
    let json: serde_json::Value =
        serde_json::from_str(&as_nobody("/run/blockwatch/deadline.json")).unwrap();
    assert_eq!(json["phase"], "watching", "{json}");
    assert!(
        json["instance_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("i-")),
        "{json}"
    );
    assert!(json["deadline"].is_null(), "no end announced: {json}");
    assert_eq!(as_nobody("/run/blockwatch/deadline"), "");

    // The unit's RuntimeDirectory: a stopped agent leaves no deadline behind
    // for a job to trust.
    let stop = container.exec(&["systemctl", "stop", "blockwatch.service"]);
    assert!(stop.status.success(), "{}", text(&stop));
    let left = container.exec(&["ls", "-la", "/run/blockwatch"]);
    assert!(
        !left.status.success(),
        "/run/blockwatch outlives the service: {}",
        text(&left)
    );
}
