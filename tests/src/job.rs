//! A checkpointing job in a real container, run as AWS Batch runs it on an
//! instance blockwatch watches: host networking, the deadline directory
//! mounted read-only at `/run/blockwatch`, and the opt-in
//! `BLOCKWATCH_CHECKPOINT_SIGNAL` in its environment when it asks for a
//! signal. It does units of work and keeps its progress in a host
//! directory mounted at `/work`, so a test reads what it did and heard.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::docker::{DockerCli, DockerError, PrivateDocker};

/// Where the job finds its deadline (the mount the README documents).
pub const DEADLINE_MOUNT: &str = "/run/blockwatch";
/// The job's environment variable blockwatch reads to signal it.
pub const CHECKPOINT_SIGNAL_VARIABLE: &str = "BLOCKWATCH_CHECKPOINT_SIGNAL";

/// The job, for busybox `sh`. busybox runs a trap only between commands,
/// so a unit's `sleep` runs in the background and the shell `wait`s for
/// it: a signal interrupts the wait at once, not after the unit.
const SCRIPT: &str = r#"
units=0    # completed units of work

# Saves the last completed unit; exits 0 unless told to work on.
checkpoint() {
    echo "$units" > /work/checkpoint
    [ "$KEEP_WORKING" = 1 ] || exit 0
}

# One line per signal heard: its name, the wall clock in seconds, and the
# boot clock of /proc/uptime (10 ms; the host reads the same clock).
heard() {
    read up idle < /proc/uptime
    echo "$1 $(date +%s) $up" >> /work/signals
}

sig=${BLOCKWATCH_CHECKPOINT_SIGNAL#SIG}
if [ -n "$sig" ]; then
    trap "heard SIG$sig; checkpoint" "$sig"
fi
# As PID 1 without a handler the job would ignore docker stop's SIGTERM;
# it does the same, but notes it.
if [ "$sig" != TERM ]; then
    trap 'heard SIGTERM' TERM
fi

# The (c) recipe: every POLL_SECONDS (checked between units), read stop_at
# from deadline.json; checkpoint and exit when it is MARGIN_SECONDS away
# or less.
next_poll=0
poll_deadline() {
    now=$(date +%s)
    [ "$now" -ge "$next_poll" ] || return 0
    next_poll=$((now + POLL_SECONDS))
    stop_at=$(sed -n 's/.*"stop_at": *"\([^"]*\)".*/\1/p' /run/blockwatch/deadline.json 2>/dev/null)
    [ -n "$stop_at" ] || return 0
    # 2026-12-07T04:00:00Z (maybe with a fraction) -> what busybox date reads
    end=$(date -u -d "$(echo "$stop_at" | sed 's/T/ /; s/[.Z].*//')" +%s) || return 0
    if [ $((end - now)) -le "$MARGIN_SECONDS" ]; then
        echo "$units" > /work/checkpoint
        exit 0
    fi
}

while :; do
    if [ -n "$POLL_SECONDS" ]; then poll_deadline; fi
    sleep "$UNIT_SECONDS" &
    pid=$!
    # A trapped signal ends wait early; wait again for the unit's end.
    while kill -0 "$pid" 2>/dev/null; do wait "$pid"; done
    echo "unit $((units + 1))" >> /work/progress
    units=$((units + 1))
done
"#;

/// How to run a [`JobContainer`].
#[derive(Debug, Clone, Copy)]
pub struct JobSpec<'a> {
    /// The container's name (unique on its dockerd).
    pub name: &'a str,
    /// `BLOCKWATCH_CHECKPOINT_SIGNAL`'s value (`SIGUSR1`, or whatever a
    /// test wants refused); `None`: no such variable. The job traps it.
    pub checkpoint_signal: Option<&'a str>,
    /// Mounted read-only at [`DEADLINE_MOUNT`].
    pub deadline_dir: &'a Path,
    /// One unit of work.
    pub unit: Duration,
    /// The (c) recipe: read `deadline.json` this often (between units) and
    /// checkpoint and exit when `stop_at` is at most this interval plus one
    /// unit away, the latest moment the next read could still make it.
    pub poll_deadline: Option<Duration>,
    /// After a checkpoint on the signal, work on instead of exiting 0, so a
    /// second signal shows (the job checkpoints again on it).
    pub keep_working_after_checkpoint: bool,
}

impl<'a> JobSpec<'a> {
    /// A job without the opt-in, that does not poll and exits after a
    /// checkpoint.
    pub fn new(name: &'a str, deadline_dir: &'a Path, unit: Duration) -> Self {
        Self {
            name,
            checkpoint_signal: None,
            deadline_dir,
            unit,
            poll_deadline: None,
            keep_working_after_checkpoint: false,
        }
    }
}

/// A signal the job heard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeardSignal {
    /// `SIGUSR1`, `SIGTERM`, ...
    pub name: String,
    /// When, to about 10 ms.
    pub at: SystemTime,
}

/// A running job's container, removed (`docker rm -f`) when dropped.
#[derive(Debug)]
pub struct JobContainer {
    docker: DockerCli,
    id: String,
    work: tempfile::TempDir,
}

impl JobContainer {
    /// Starts the job detached on `docker` (importing the image if needed).
    pub fn start(docker: &PrivateDocker, spec: JobSpec<'_>) -> Result<Self, DockerError> {
        let image = docker.image()?;
        let work = tempfile::Builder::new()
            .prefix("blockwatch-job-")
            .tempdir()
            .map_err(|e| DockerError::Io(format!("job work directory: {e}")))?;
        let mut env = vec![format!("UNIT_SECONDS={:.3}", spec.unit.as_secs_f64())];
        if let Some(signal) = spec.checkpoint_signal {
            env.push(format!("{CHECKPOINT_SIGNAL_VARIABLE}={signal}"));
        }
        if let Some(poll) = spec.poll_deadline {
            let margin = (poll + spec.unit).as_secs_f64().ceil();
            env.push(format!("POLL_SECONDS={}", poll.as_secs().max(1)));
            env.push(format!("MARGIN_SECONDS={margin}"));
        }
        if spec.keep_working_after_checkpoint {
            env.push("KEEP_WORKING=1".to_owned());
        }
        let deadline_volume = format!("{}:{DEADLINE_MOUNT}:ro", spec.deadline_dir.display());
        let work_volume = format!("{}:/work", work.path().display());
        let mut args = vec![
            "run",
            "--detach",
            "--name",
            spec.name,
            "--network",
            "host",
            "--volume",
            &deadline_volume,
            "--volume",
            &work_volume,
        ];
        for variable in &env {
            args.extend(["--env", variable]);
        }
        args.extend([image, "sh", "-c", SCRIPT]);
        let id = docker.cli().checked(&args)?;
        Ok(Self {
            docker: docker.cli(),
            id,
            work,
        })
    }

    /// The full docker id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Units of work completed so far.
    pub fn units_done(&self) -> usize {
        self.read("progress").lines().count()
    }

    /// The unit number of the last checkpoint, `None` before any.
    pub fn checkpointed_unit(&self) -> Option<usize> {
        self.read("checkpoint").trim().parse().ok()
    }

    /// Every signal the job heard, in order.
    pub fn signals_received(&self) -> Vec<HeardSignal> {
        let (now, uptime_now) = (SystemTime::now(), uptime());
        self.read("signals")
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let name = fields.next()?.to_owned();
                let _wall_seconds = fields.next()?;
                let heard_uptime: f64 = fields.next()?.parse().ok()?;
                let ago =
                    Duration::try_from_secs_f64((uptime_now? - heard_uptime).max(0.0)).ok()?;
                Some(HeardSignal {
                    name,
                    at: now.checked_sub(ago)?,
                })
            })
            .collect()
    }

    /// Waits (bounded) for the first signal the job hears.
    pub fn wait_for_signal(&self, timeout: Duration) -> Option<HeardSignal> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(first) = self.signals_received().into_iter().next() {
                return Some(first);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The exit code; `None` while the container runs.
    pub fn exit_code(&self) -> Result<Option<i64>, DockerError> {
        let format = "{{.State.Running}} {{.State.ExitCode}}";
        let state = self
            .docker
            .checked(&["inspect", "--format", format, &self.id])?;
        match state.split_once(' ') {
            Some(("true", _)) => Ok(None),
            Some((_, code)) => code
                .parse()
                .map(Some)
                .map_err(|_| DockerError::Io(format!("docker inspect {}: {state}", self.id))),
            None => Err(DockerError::Io(format!(
                "docker inspect {}: {state}",
                self.id
            ))),
        }
    }

    /// Waits (bounded) for the container to exit; its exit code.
    pub fn wait_for_exit(&self, timeout: Duration) -> Result<Option<i64>, DockerError> {
        let deadline = Instant::now() + timeout;
        loop {
            let code = self.exit_code()?;
            if code.is_some() || Instant::now() >= deadline {
                return Ok(code);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The instance dies under the job: SIGKILL, no checkpoint.
    pub fn kill_now(&self) -> Result<(), DockerError> {
        self.docker
            .checked(&["kill", "--signal", "SIGKILL", &self.id])
            .map(drop)
    }

    /// The host directory mounted at `/work`.
    pub fn work_dir(&self) -> PathBuf {
        self.work.path().to_owned()
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.work.path().join(file)).unwrap_or_default()
    }
}

impl Drop for JobContainer {
    fn drop(&mut self) {
        let _ = self.docker.run(&["rm", "--force", &self.id]);
    }
}

/// The boot clock in seconds, as `/proc/uptime` gives it.
fn uptime() -> Option<f64> {
    std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
