//! A private Docker for tests that run real containers: its own containerd
//! and dockerd, with every path (data, state, sockets, pid file, config)
//! under one temporary directory, driven with the `docker` CLI through
//! `-H unix://…`. It never uses or touches a Docker on the host's default
//! socket; `tests/setup.sh` installs `docker.io` and `busybox-static`.
//!
//! Why each daemon flag, beyond the brief's set (checked on Debian 12's
//! docker.io 20.10 and containerd 1.6, as root):
//! - containerd is started here too and handed to dockerd (`--containerd`):
//!   left to itself, dockerd uses a containerd it finds on the host's
//!   default socket, and would put our containers into the host's one.
//! - `--config-file` (an empty `{}`) for both: each otherwise reads the
//!   host's `/etc/docker/daemon.json` or `/etc/containerd/config.toml`.
//! - `--ip-forward=false`: dockerd otherwise sets the host's
//!   `net.ipv4.ip_forward`, even with `--bridge=none`.
//! - `--cgroup-parent`: our containers' cgroups stay out of `docker/`.
//!
//! What still lands outside the directory: containerd's shims put their
//! sockets in `/run/containerd/s/` (a fixed path in containerd 1.6; the
//! names hash the address, so they never clash), and the cgroups under
//! [`CGROUP_PARENT`], removed on drop when empty.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The test image's name; [`PrivateDocker::image`] builds it once per daemon.
pub const IMAGE: &str = "blockwatch-test-busybox:1";
/// busybox applets the image links; `trap` is a builtin of busybox's `sh`.
const APPLETS: &[&str] = &[
    "sh", "cat", "touch", "sleep", "echo", "ls", "readlink", "date", "sed",
];
/// The static busybox of Debian's `busybox-static`.
const BUSYBOX: &str = "/bin/busybox";
const CGROUP_PARENT: &str = "blockwatch-tests";
/// A cold, loaded 2-core machine can take a while to start both daemons.
const START_WAIT: Duration = Duration::from_secs(60);
/// SIGTERM, then this long before SIGKILL.
const STOP_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("{0} not found: run tests/setup.sh (it installs docker.io and busybox-static)")]
    NotInstalled(&'static str),
    #[error("{0}")]
    Io(String),
    #[error("the private dockerd did not answer `docker version` ({0})\n--- dockerd log ---\n{1}\n--- containerd log ---\n{2}")]
    Start(String, String, String),
    #[error("`docker {args}` failed ({status}): {stderr}")]
    Command {
        args: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

fn io(what: &Path) -> impl FnOnce(std::io::Error) -> DockerError + '_ {
    move |err| DockerError::Io(format!("{}: {err}", what.display()))
}

/// containerd and dockerd of our own, stopped by their pids and their
/// directory removed when dropped.
#[derive(Debug)]
pub struct PrivateDocker {
    dir: tempfile::TempDir,
    containerd: Child,
    dockerd: Child,
    image: OnceLock<()>,
}

impl PrivateDocker {
    /// Starts both daemons and waits (bounded) until `docker version`
    /// answers on the private socket; fails with both daemons' logs.
    pub fn start() -> Result<Self, DockerError> {
        let containerd_program = which("containerd")?;
        let dockerd_program = which("dockerd")?;
        which("docker")?;
        let dir = tempfile::Builder::new()
            .prefix("blockwatch-docker-")
            .tempdir()
            .map_err(|e| DockerError::Io(format!("temporary directory: {e}")))?;
        let path = dir.path();
        for (file, text) in [("containerd.toml", ""), ("daemon.json", "{}")] {
            std::fs::write(path.join(file), text).map_err(io(&path.join(file)))?;
        }
        let containerd_socket = path.join("containerd.sock");
        let mut containerd = spawn_logged(
            Command::new(containerd_program)
                .arg("--config")
                .arg(path.join("containerd.toml"))
                .arg("--root")
                .arg(path.join("containerd-root"))
                .arg("--state")
                .arg(path.join("containerd-state"))
                .arg("--address")
                .arg(&containerd_socket),
            &path.join("containerd.log"),
        )?;
        let dockerd = spawn_logged(
            Command::new(dockerd_program)
                .arg("--config-file")
                .arg(path.join("daemon.json"))
                .arg("--containerd")
                .arg(&containerd_socket)
                .arg("--data-root")
                .arg(path.join("data"))
                .arg("--exec-root")
                .arg(path.join("exec"))
                .arg("--pidfile")
                .arg(path.join("dockerd.pid"))
                .arg("--host")
                .arg(host_of(path))
                .args(["--storage-driver", "vfs"])
                .args(["--iptables=false", "--ip-masq=false", "--ip-forward=false"])
                .args(["--bridge", "none"])
                .args(["--cgroup-parent", &format!("/{CGROUP_PARENT}")]),
            &path.join("dockerd.log"),
        );
        let dockerd = match dockerd {
            Ok(dockerd) => dockerd,
            Err(err) => {
                stop(&mut containerd);
                return Err(err);
            }
        };
        let mut docker = Self {
            dir,
            containerd,
            dockerd,
            image: OnceLock::new(),
        };
        docker.wait_until_answering()?;
        Ok(docker)
    }

    fn wait_until_answering(&mut self) -> Result<(), DockerError> {
        let deadline = Instant::now() + START_WAIT;
        let mut last = String::new();
        while Instant::now() < deadline {
            let exited = [
                ("dockerd", &mut self.dockerd),
                ("containerd", &mut self.containerd),
            ]
            .into_iter()
            .find_map(|(name, child)| Some((name, child.try_wait().ok()??)));
            if let Some((name, status)) = exited {
                return Err(self.start_error(format!("{name} exited with {status}")));
            }
            match self.docker().arg("version").output() {
                Ok(output) if output.status.success() => return Ok(()),
                Ok(output) => last = String::from_utf8_lossy(&output.stderr).into_owned(),
                Err(err) => last = err.to_string(),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(self.start_error(format!(
            "not answering after {START_WAIT:?}: {}",
            last.trim()
        )))
    }

    fn start_error(&self, why: String) -> DockerError {
        DockerError::Start(why, self.log(), self.read("containerd.log"))
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(file)).unwrap_or_default()
    }

    /// `unix://<dir>/docker.sock`, for `docker -H` (or `DOCKER_HOST`).
    pub fn host(&self) -> String {
        host_of(self.dir.path())
    }

    /// dockerd's own output, for diagnosing a failed test.
    pub fn log(&self) -> String {
        self.read("dockerd.log")
    }

    /// A `docker` command on the private daemon, with a client config of
    /// its own (never `~/.docker`).
    pub fn docker(&self) -> Command {
        self.cli().command()
    }

    /// The `docker` client of this daemon, to keep beyond a borrow (in a
    /// thread, or in a container's handle).
    pub fn cli(&self) -> DockerCli {
        DockerCli {
            host: self.host(),
            config: self.dir.path().join("client"),
        }
    }

    /// Runs `docker <args>`; its output whatever the exit code (a container's
    /// exit code is `docker run`'s).
    pub fn run(&self, args: &[&str]) -> Result<Output, DockerError> {
        self.cli().run(args)
    }

    /// [`IMAGE`], imported once from a tar holding the static busybox and
    /// its applet links (no registry pull).
    pub fn image(&self) -> Result<&'static str, DockerError> {
        if self.image.get().is_none() {
            self.import_image()?;
            let _ = self.image.set(());
        }
        Ok(IMAGE)
    }

    fn import_image(&self) -> Result<(), DockerError> {
        if !Path::new(BUSYBOX).exists() {
            return Err(DockerError::NotInstalled(BUSYBOX));
        }
        let root = self.dir.path().join("image-root");
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).map_err(io(&bin))?;
        std::fs::copy(BUSYBOX, bin.join("busybox")).map_err(io(&bin))?;
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).map_err(io(&bin))?;
        }
        let tar = self.dir.path().join("image.tar");
        let packed = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .output()
            .map_err(io(&tar))?;
        if !packed.status.success() {
            return Err(DockerError::Io(format!(
                "tar {}: {}",
                tar.display(),
                String::from_utf8_lossy(&packed.stderr)
            )));
        }
        let tar_arg = tar.to_string_lossy().into_owned();
        let args = ["import", tar_arg.as_str(), IMAGE];
        self.cli().checked(&args).map(drop)
    }
}

impl Drop for PrivateDocker {
    fn drop(&mut self) {
        // dockerd first (it stops its containers), then its containerd.
        stop(&mut self.dockerd);
        stop(&mut self.containerd);
        // dockerd leaves its network namespace bind-mounted in the exec root.
        unmount_under(self.dir.path());
        for controller in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            // Only when empty: another test's daemon may still use it.
            let _ = std::fs::remove_dir(controller.path().join(CGROUP_PARENT));
        }
    }
}

/// `docker` on one private daemon: its host and its own client config.
#[derive(Debug, Clone)]
pub struct DockerCli {
    host: String,
    config: PathBuf,
}

impl DockerCli {
    /// A `docker -H <host>` command, never reading `~/.docker`.
    pub fn command(&self) -> Command {
        let mut command = Command::new("docker");
        command
            .env("DOCKER_CONFIG", &self.config)
            .args(["-H", &self.host])
            .stdin(Stdio::null());
        command
    }

    /// Runs `docker <args>`; its output whatever the exit code.
    pub fn run(&self, args: &[&str]) -> Result<Output, DockerError> {
        self.command()
            .args(args)
            .output()
            .map_err(|e| DockerError::Io(format!("docker {}: {e}", args.join(" "))))
    }

    /// Runs `docker <args>` and returns its trimmed stdout; an error when it
    /// fails.
    pub fn checked(&self, args: &[&str]) -> Result<String, DockerError> {
        let output = self.run(args)?;
        if !output.status.success() {
            return Err(DockerError::Command {
                args: args.join(" "),
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }
}

fn host_of(dir: &Path) -> String {
    format!("unix://{}", dir.join("docker.sock").display())
}

/// `program` on `PATH`, else in `/usr/sbin` (where Debian puts dockerd,
/// and which a user's `PATH` may lack).
fn which(program: &'static str) -> Result<PathBuf, DockerError> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .ok_or(DockerError::NotInstalled(program))
}

fn spawn_logged(command: &mut Command, log: &Path) -> Result<Child, DockerError> {
    let out = std::fs::File::create(log).map_err(io(log))?;
    let err = out.try_clone().map_err(io(log))?;
    command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| DockerError::Io(format!("{:?}: {e}", command.get_program())))
}

/// Our own child, by its pid: SIGTERM, then SIGKILL after [`STOP_WAIT`].
fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + STOP_WAIT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Unmounts every mount below `dir`, deepest first, so it can be removed.
fn unmount_under(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut below: Vec<&str> = mounts
        .lines()
        .filter_map(|line| line.split(' ').nth(1))
        .filter(|point| Path::new(point).starts_with(dir))
        .collect();
    below.sort_by_key(|point| std::cmp::Reverse(point.len()));
    for point in below {
        let _ = Command::new("umount").arg(point).status();
    }
}
