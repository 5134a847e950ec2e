//! `checkpoint-bench`: what the checkpoint signal saves, measured with real
//! containers. Prints numbers; asserts nothing.
//!
//! Four ways to end a job, each through two ends, all eight scenarios in one
//! run and at the same time, so the wall time stays a few minutes:
//! - (a) the seeds' recipe: no blockwatch; the jobs die with the instance
//!   (SIGKILL at the end, given here by the bench);
//! - (b) drain only: blockwatch without `checkpoint_lead`; at a lease end it
//!   stops the tasks (the ECS stand-in's SIGTERM, which the job only notes,
//!   then SIGKILL at the stop timeout), at a spot notice likewise at
//!   `stop_at`, and what still runs dies with the instance;
//! - (c) as (b), and the job reads `deadline.json` every 60 s between units,
//!   and checkpoints and exits when `stop_at` is a poll plus a unit away;
//! - (d) blockwatch with `checkpoint_lead`, the job opted in with
//!   `BLOCKWATCH_CHECKPOINT_SIGNAL=SIGUSR1`: it checkpoints and exits 0.
//!
//! The ends: a lease (`blockwatch:lease-end`, `on_lease_end = "poweroff"`,
//! a harmless `poweroff_command`: its success in `state.json` is the
//! instance's death, and what still runs is SIGKILLed then), and a spot
//! interruption (a 2-minute notice in the IMDS simulator; the instance dies
//! at the notice's time). (b), (c) and (d) share the operator's settings
//! printed at the start, so they differ only in what the job hears; only (d)
//! has `checkpoint_lead`. `job_stop_timeout` is set for all three: without
//! it nothing is stopped at a spot notice, so `deadline.json` has no
//! `stop_at` and (c)'s recipe (the kit's, which reads `stop_at`) would never
//! see that end. Each scenario has its own moto, IMDS simulator and ECS
//! agent stand-in; one private dockerd runs every job.
//!
//! Definitions, per job (the kit's [`JobContainer`]: units of work, a
//! checkpoint holding the last completed unit):
//! - **units done**: completed units when the job ended;
//! - **in checkpoint**: the units its last checkpoint holds (0 without one);
//! - **units lost**: work done but not in a checkpoint when the job ended:
//!   the completed units after the checkpoint, plus the unit under way when
//!   the job was cut, counted as 1. A unit is under way unless the job left
//!   on its own between units (its deadline poll); a signal or a kill cuts
//!   the unit it is in;
//! - **ended**: checkpointed and exited 0 (on the signal, or on its poll),
//!   SIGKILL, or SIGTERM then SIGKILL (the stop timeout);
//! - per scenario, **paid idle s**: from the last job's end (Docker's
//!   `FinishedAt`) to the instance's end: the power-off for a lease (its
//!   time in `state.json`), the notice's time for a spot interruption; 0
//!   when a job died with the instance.
//!
//! Usage: checkpoint-bench [BLOCKWATCH_BINARY] (default: the `blockwatch`
//! beside this binary, the debug build: the figures do not depend on speed).
//!
//! Over 400 lines: one benchmark, its eight scenarios' setup, ends and table.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use blockwatch_core::tags::TAG_LEASE_END;
use blockwatch_core::time_text::rfc3339;
use blockwatch_testkit::docker::PrivateDocker;
use blockwatch_testkit::imds::SpotInstanceAction;
use blockwatch_testkit::instance::{now, phase, Agent};
use blockwatch_testkit::introspection::IntrospectionStandIn;
use blockwatch_testkit::job::{JobContainer, JobSpec};
use blockwatch_testkit::registered::{registered_in_jobs, Registered};
use blockwatch_testkit::script::{finish, say};
use time::OffsetDateTime;

/// One unit of work. 10 s: long beside what delivering the signal takes
/// (a 1 s poll, a Docker call), so a lost unit is work and not noise, and
/// short beside the 4-minute run, so about two dozen units show what each
/// way keeps; it also gives (c)'s 60 s poll six units between reads.
const UNIT: Duration = Duration::from_secs(10);
const JOBS_PER_SCENARIO: usize = 2;
/// The lease ends this long after the jobs start: about 4 minutes, off the
/// poll's 60 s grid so (c) reads at an ordinary moment, not at the edge.
const LEASE_END_AFTER: time::Duration = time::Duration::seconds(247);
/// The spot notice comes this long after the jobs start (1 to 2 minutes in,
/// off the poll's grid), ...
const NOTICE_AFTER: time::Duration = time::Duration::seconds(97);
/// ... for an interruption this long after the notice (AWS gives 2 minutes).
const NOTICE: time::Duration = time::Duration::minutes(2);
/// (c): how often the job reads `deadline.json`.
const POLL: Duration = Duration::from_secs(60);

/// The operator's settings of (b), (c) and (d). The drain lead is the
/// default: new placements stop well before the end (in this short run, at
/// once). The stop timeout is ECS's default made explicit, so the stop
/// comes early enough (40 s before the end) for the SIGKILL to land before
/// it, and `stop_at` is announced at a spot notice too. No `stop_grace`:
/// the stop timeout already sets it to 40 s.
const DRAIN_LEAD: &str = "10m";
const JOB_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// (d) only: covers a checkpoint write of a few seconds with room to spare
/// (the kit's job writes one line).
const CHECKPOINT_LEAD: &str = "30s";
const CHECKPOINT_SIGNAL: &str = "SIGUSR1";
/// How long past an end the bench waits for a power-off or an exit.
const PATIENCE: Duration = Duration::from_secs(180);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    Seeds,
    DrainOnly,
    PolledFile,
    Signal,
}

impl Way {
    const ALL: [Self; 4] = [Self::Seeds, Self::DrainOnly, Self::PolledFile, Self::Signal];

    fn label(self) -> &'static str {
        match self {
            Self::Seeds => "(a) nothing",
            Self::DrainOnly => "(b) drain only",
            Self::PolledFile => "(c) deadline.json polled every 60 s",
            Self::Signal => "(d) checkpoint signal",
        }
    }

    fn letter(self) -> &'static str {
        match self {
            Self::Seeds => "a",
            Self::DrainOnly => "b",
            Self::PolledFile => "c",
            Self::Signal => "d",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Lease,
    Spot,
}

impl End {
    fn label(self) -> &'static str {
        match self {
            Self::Lease => "lease end",
            Self::Spot => "spot notice",
        }
    }
}

/// blockwatch's side of a scenario: an instance registered in moto, the
/// ECS agent's stand-in that runs its tasks' containers, and the agent.
#[derive(Debug)]
struct Watched {
    f: Registered,
    ecs_agent: IntrospectionStandIn,
    agent: Option<Agent>,
}

#[derive(Debug)]
struct Scenario {
    way: Way,
    end: End,
    /// Dropped before the jobs (declaration order): the agent stops first.
    watched: Option<Watched>,
    /// The ECS task of each job (none for (a)).
    tasks: Vec<Option<String>>,
    /// Removed (`docker rm -f`) when dropped, errors included.
    jobs: Vec<JobContainer>,
    /// (a)'s deadline directory: empty, nothing writes it.
    unwatched_dir: tempfile::TempDir,
}

impl Scenario {
    fn deadline_dir(&self) -> PathBuf {
        self.watched.as_ref().map_or_else(
            || self.unwatched_dir.path().to_owned(),
            |w| w.f.instance.deadline_dir(),
        )
    }

    fn job_name(&self, index: usize) -> String {
        let end = match self.end {
            End::Lease => "lease",
            End::Spot => "spot",
        };
        format!("{}-{end}-{}", self.way.letter(), index + 1)
    }
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    CheckpointedOnSignal,
    CheckpointedOnPoll,
    Killed,
    TermThenKilled,
}

impl Ending {
    fn label(self) -> &'static str {
        match self {
            Self::CheckpointedOnSignal => "checkpoint on SIGUSR1 + exit 0",
            Self::CheckpointedOnPoll => "checkpoint on its poll + exit 0",
            Self::Killed => "SIGKILL",
            Self::TermThenKilled => "SIGTERM, then SIGKILL",
        }
    }
}

#[derive(Debug)]
struct JobResult {
    name: String,
    units_done: usize,
    in_checkpoint: usize,
    lost: usize,
    /// Seconds into the unit under way (or since the last unit) at its end.
    into_unit: f64,
    ending: Ending,
    ended_at: OffsetDateTime,
}

#[derive(Debug)]
struct Outcome {
    way: Way,
    end: End,
    jobs: Vec<JobResult>,
    instance_end: OffsetDateTime,
    idle: f64,
    notes: Vec<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    finish("checkpoint-bench", bench().await)
}

fn agent_binary_from_args() -> Result<PathBuf, String> {
    let binary = match std::env::args().nth(1) {
        Some(path) => PathBuf::from(path),
        None => std::env::current_exe()
            .map_err(|e| format!("this binary's path: {e}"))?
            .with_file_name("blockwatch"),
    };
    if !binary.exists() {
        return Err(format!("{} not found", binary.display()));
    }
    Ok(binary)
}

async fn bench() -> Result<(), String> {
    let binary = agent_binary_from_args()?;
    // The kit's Instance runs the agent nextest names in this variable. Set
    // before any other thread starts (the runtime is current-thread).
    std::env::set_var("NEXTEST_BIN_EXE_blockwatch", &binary);
    print_parameters(&binary);

    let docker = PrivateDocker::start().map_err(|e| e.to_string())?;
    docker.image().map_err(|e| e.to_string())?;
    let mut scenarios = Vec::new();
    for end in [End::Lease, End::Spot] {
        for way in Way::ALL {
            scenarios.push(scenario(way, end, &docker).await?);
        }
    }
    start_jobs(&docker, &mut scenarios)?;
    let started = scenarios
        .iter()
        .flat_map(|s| &s.jobs)
        .map(|job| inspect_time(&docker, job, "StartedAt"))
        .collect::<Result<Vec<_>, _>>()?;
    // The ends are timed from the moment every job runs.
    let t0 = now();
    let lease_end = t0 + LEASE_END_AFTER;
    let notice_at = t0 + NOTICE_AFTER;
    for s in &mut scenarios {
        let Some(w) = s.watched.as_mut() else {
            continue;
        };
        if s.end == End::Lease {
            w.f.instance.imds.update(|state| {
                state
                    .tags
                    .get_or_insert_with(Default::default)
                    .insert(TAG_LEASE_END.into(), rfc3339(lease_end));
            });
        }
        let url = w.ecs_agent.metadata_url();
        let host = docker.host();
        w.agent = Some(w.f.instance.spawn_run(
            &["--ecs-introspection-url", &url],
            &[("DOCKER_HOST", host.as_str())],
        ));
    }
    for w in scenarios.iter().filter_map(|s| s.watched.as_ref()) {
        if let Some(agent) = &w.agent {
            w.f.instance
                .wait_for(agent, Duration::from_secs(60), "watching", |s| {
                    phase(s) != "joining"
                });
        }
    }
    if let (Some(first), Some(last)) = (started.iter().min(), started.iter().max()) {
        say(&format!(
            "{} jobs started within {:.1} s, the last {:.1} s before t0; lease end at t0 + {} s; \
             spot notice at t0 + {} s for t0 + {} s",
            started.len(),
            (*last - *first).as_seconds_f64(),
            (t0 - *last).as_seconds_f64(),
            LEASE_END_AFTER.whole_seconds(),
            NOTICE_AFTER.whole_seconds(),
            (NOTICE_AFTER + NOTICE).whole_seconds(),
        ));
    }
    let outcomes: Vec<Result<Outcome, String>> = std::thread::scope(|scope| {
        let running: Vec<_> = scenarios
            .iter()
            .map(|s| {
                let docker = &docker;
                scope.spawn(move || run_to_end(s, docker, lease_end, notice_at))
            })
            .collect();
        running
            .into_iter()
            .map(|r| {
                r.join()
                    .unwrap_or_else(|_| Err("a scenario panicked".into()))
            })
            .collect()
    });
    let outcomes: Vec<Outcome> = outcomes.into_iter().collect::<Result<_, _>>()?;
    for outcome in &outcomes {
        print_outcome(outcome, t0);
    }
    print_table(&outcomes);
    Ok(())
}

fn print_parameters(binary: &Path) {
    say(&format!(
        "checkpoint-bench: agent {}; {JOBS_PER_SCENARIO} jobs per scenario, units of {} s, 8 scenarios at once",
        binary.display(),
        UNIT.as_secs()
    ));
    say(&format!(
        "(b) (c) (d): drain_lead = \"{DRAIN_LEAD}\", job_stop_timeout = \"{}s\" (the ECS stand-in's stop \
         timeout too), stop_grace off (so the stops come at the end - {}s), on_lease_end = \"poweroff\"; \
         poll_interval 1s and drain_poll_interval 15s (defaults)",
        JOB_STOP_TIMEOUT.as_secs(),
        JOB_STOP_TIMEOUT.as_secs() + 10
    ));
    say(&format!(
        "(c): deadline.json read every {} s between units; checkpoint and exit when stop_at is {} s away or less",
        POLL.as_secs(),
        (POLL + UNIT).as_secs()
    ));
    say(&format!(
        "(d): checkpoint_lead = \"{CHECKPOINT_LEAD}\", jobs opt in with BLOCKWATCH_CHECKPOINT_SIGNAL={CHECKPOINT_SIGNAL}"
    ));
}

fn config(way: Way, powered_off: &Path) -> String {
    let mut text = format!(
        "poweroff_command = \"echo off >> {}\"\non_lease_end = \"poweroff\"\n\
         drain_lead = \"{DRAIN_LEAD}\"\njob_stop_timeout = \"{}s\"\n",
        powered_off.display(),
        JOB_STOP_TIMEOUT.as_secs()
    );
    if way == Way::Signal {
        text.push_str(&format!("checkpoint_lead = \"{CHECKPOINT_LEAD}\"\n"));
    }
    text
}

/// A scenario with its instance, stand-in and ECS tasks; its jobs start
/// later, all at once.
async fn scenario(way: Way, end: End, docker: &PrivateDocker) -> Result<Scenario, String> {
    let unwatched_dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let mut tasks = vec![None; JOBS_PER_SCENARIO];
    let watched = if way == Way::Seeds {
        None
    } else {
        let f = registered_in_jobs(&[], "").await;
        let powered_off = f.instance.root.path().join("powered-off");
        f.instance.write_config(&config(way, &powered_off));
        let deadline_dir = f.instance.deadline_dir();
        std::fs::create_dir_all(&deadline_dir)
            .map_err(|e| format!("{}: {e}", deadline_dir.display()))?;
        let ecs_agent =
            IntrospectionStandIn::start(f.instance.moto(), &f.cluster_arn, &f.container_instance)
                .map_err(|e| e.to_string())?
                .with_stop_timeout(JOB_STOP_TIMEOUT)
                .with_docker(docker);
        for task in &mut tasks {
            *task = Some(f.start_task().await);
        }
        Some(Watched {
            f,
            ecs_agent,
            agent: None,
        })
    };
    Ok(Scenario {
        way,
        end,
        watched,
        tasks,
        jobs: Vec::new(),
        unwatched_dir,
    })
}

/// Starts every scenario's jobs at once (one `docker run` per thread) and
/// attaches each to its ECS task.
fn start_jobs(docker: &PrivateDocker, scenarios: &mut [Scenario]) -> Result<(), String> {
    let specs: Vec<(usize, String, PathBuf, Way)> = scenarios
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            (0..JOBS_PER_SCENARIO).map(move |j| (i, s.job_name(j), s.deadline_dir(), s.way))
        })
        .collect();
    let started: Vec<(usize, Result<JobContainer, String>)> = std::thread::scope(|scope| {
        let running: Vec<_> = specs
            .iter()
            .map(|(i, name, dir, way)| {
                scope.spawn(move || {
                    let spec = JobSpec {
                        checkpoint_signal: (*way == Way::Signal).then_some(CHECKPOINT_SIGNAL),
                        poll_deadline: (*way == Way::PolledFile).then_some(POLL),
                        ..JobSpec::new(name, dir, UNIT)
                    };
                    (
                        *i,
                        JobContainer::start(docker, spec).map_err(|e| e.to_string()),
                    )
                })
            })
            .collect();
        running
            .into_iter()
            .map(|r| {
                r.join()
                    .unwrap_or_else(|_| (usize::MAX, Err("a job start panicked".into())))
            })
            .collect()
    });
    // Every started container is kept first, so an error still removes it.
    let mut failure = None;
    for (i, job) in started {
        match (scenarios.get_mut(i), job) {
            (Some(s), Ok(job)) => s.jobs.push(job),
            (_, Err(err)) => failure = Some(err),
            (None, Ok(_)) => failure = Some("a job without its scenario".into()),
        }
    }
    if let Some(err) = failure {
        return Err(err);
    }
    for s in scenarios.iter() {
        if let Some(w) = &s.watched {
            for (task, job) in s.tasks.iter().zip(&s.jobs) {
                if let Some(task) = task {
                    w.ecs_agent.attach(task, job.id(), "job");
                }
            }
        }
    }
    Ok(())
}

fn sleep_until(at: OffsetDateTime) {
    let left = at - OffsetDateTime::now_utc();
    if left.is_positive() {
        std::thread::sleep(left.unsigned_abs());
    }
}

fn parse_rfc3339(text: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{text:?}: {e}"))
}

/// `State.<field>` of `job`'s container (a Docker timestamp).
fn inspect_time(
    docker: &PrivateDocker,
    job: &JobContainer,
    field: &str,
) -> Result<OffsetDateTime, String> {
    let format = format!("{{{{.State.{field}}}}}");
    let text = docker
        .cli()
        .checked(&["inspect", "--format", &format, job.id()])
        .map_err(|e| e.to_string())?;
    parse_rfc3339(&text)
}

/// The power-off's time in `state.json`, once it ran; `None` at `deadline`.
fn wait_powered_off(w: &Watched, deadline: OffsetDateTime) -> Option<OffsetDateTime> {
    while OffsetDateTime::now_utc() < deadline {
        let at = w.f.instance.snapshot().and_then(|s| {
            s["drain"]["poweroff_at"]
                .as_str()
                .and_then(|at| parse_rfc3339(at).ok())
        });
        if at.is_some() {
            return at;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

/// Brings `s` to its end, kills what still runs then, and reads its jobs.
fn run_to_end(
    s: &Scenario,
    docker: &PrivateDocker,
    lease_end: OffsetDateTime,
    notice_at: OffsetDateTime,
) -> Result<Outcome, String> {
    let mut notes = Vec::new();
    let instance_end = match (s.end, &s.watched) {
        (End::Lease, Some(w)) => wait_powered_off(w, lease_end + PATIENCE).unwrap_or_else(|| {
            notes.push(format!(
                "no power-off within {} s of the lease end; phase {:?}",
                PATIENCE.as_secs(),
                w.f.instance.snapshot().map(|s| phase(&s).to_owned())
            ));
            OffsetDateTime::now_utc()
        }),
        (End::Lease, None) => {
            sleep_until(lease_end);
            lease_end
        }
        (End::Spot, watched) => {
            sleep_until(notice_at);
            let interruption = notice_at + NOTICE;
            if let Some(w) = watched {
                w.f.instance.imds.update(|state| {
                    state.spot_instance_action = Some(SpotInstanceAction {
                        action: "terminate".into(),
                        time: interruption,
                    });
                });
            }
            sleep_until(interruption);
            interruption
        }
    };
    // The instance is gone: whatever still runs dies with it.
    for job in &s.jobs {
        if job.exit_code().map_err(|e| e.to_string())?.is_none() {
            // It may have exited in between: the exit code below tells.
            let _ = job.kill_now();
        }
    }
    let mut jobs = Vec::new();
    for (index, job) in s.jobs.iter().enumerate() {
        jobs.push(job_result(docker, s.job_name(index), job)?);
    }
    let idle = jobs
        .iter()
        .map(|j| j.ended_at)
        .max()
        .map_or(0.0, |last| (instance_end - last).as_seconds_f64().max(0.0));
    if s.way == Way::Signal && jobs.iter().any(|j| j.lost > 1) {
        let log = s
            .watched
            .as_ref()
            .and_then(|w| w.agent.as_ref())
            .map(Agent::log)
            .unwrap_or_default();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("checkpoint")).collect();
        notes.push(format!(
            "(d) lost more than one unit; the agent's checkpoint lines:\n{}",
            lines.join("\n")
        ));
    }
    Ok(Outcome {
        way: s.way,
        end: s.end,
        jobs,
        instance_end,
        idle,
        notes,
    })
}

fn job_result(
    docker: &PrivateDocker,
    name: String,
    job: &JobContainer,
) -> Result<JobResult, String> {
    let code = job
        .wait_for_exit(Duration::from_secs(60))
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{name} still runs after its SIGKILL"))?;
    let ended_at = inspect_time(docker, job, "FinishedAt")?;
    let heard = job.signals_received();
    let heard_any = |signal: &str| heard.iter().any(|h| h.name == signal);
    let ending = match (code, heard_any(CHECKPOINT_SIGNAL), heard_any("SIGTERM")) {
        (0, true, _) => Ending::CheckpointedOnSignal,
        (0, false, _) => Ending::CheckpointedOnPoll,
        (_, _, true) => Ending::TermThenKilled,
        (_, _, false) => Ending::Killed,
    };
    let units_done = job.units_done();
    let in_checkpoint = job.checkpointed_unit().unwrap_or(0);
    // Only the poll leaves between units; a signal or a kill cuts one.
    let cut = usize::from(ending != Ending::CheckpointedOnPoll);
    let last_unit_done = match std::fs::metadata(job.work_dir().join("progress")) {
        Ok(meta) => meta
            .modified()
            .map(OffsetDateTime::from)
            .map_err(|e| e.to_string())?,
        Err(_) => inspect_time(docker, job, "StartedAt")?,
    };
    Ok(JobResult {
        name,
        units_done,
        in_checkpoint,
        lost: units_done.saturating_sub(in_checkpoint) + cut,
        into_unit: (ended_at - last_unit_done).as_seconds_f64().max(0.0),
        ending,
        ended_at,
    })
}

fn print_outcome(o: &Outcome, t0: OffsetDateTime) {
    let since = |at: OffsetDateTime| (at - t0).as_seconds_f64();
    say("");
    say(&format!(
        "{}, {}: the instance ended at t0 + {:.1} s; paid idle after the last job: {:.1} s",
        o.way.label(),
        o.end.label(),
        since(o.instance_end),
        o.idle
    ));
    for j in &o.jobs {
        say(&format!(
            "  {}: {} units done, {} in its checkpoint, {} lost; ended at t0 + {:.1} s ({:.1} s into its unit): {}",
            j.name,
            j.units_done,
            j.in_checkpoint,
            j.lost,
            since(j.ended_at),
            j.into_unit,
            j.ending.label()
        ));
    }
    for note in &o.notes {
        say(&format!("  NOTE: {note}"));
    }
}

fn per_job(o: &Outcome, value: impl Fn(&JobResult) -> String) -> String {
    let mut values: Vec<String> = o.jobs.iter().map(value).collect();
    values.dedup();
    values.join(" / ")
}

fn print_table(outcomes: &[Outcome]) {
    say("");
    say("| way | end | units done | in checkpoint | units lost | how the jobs ended | paid idle s after the last job |");
    say("|---|---|---|---|---|---|---|");
    for o in outcomes {
        let all = |value: fn(&JobResult) -> usize| {
            o.jobs
                .iter()
                .map(|j| value(j).to_string())
                .collect::<Vec<_>>()
                .join(" / ")
        };
        say(&format!(
            "| {} | {} | {} | {} | {} | {} | {:.0} |",
            o.way.label(),
            o.end.label(),
            all(|j| j.units_done),
            all(|j| j.in_checkpoint),
            all(|j| j.lost),
            per_job(o, |j| j.ending.label().to_owned()),
            o.idle
        ));
    }
    say(&format!(
        "\nunits of {} s, {JOBS_PER_SCENARIO} jobs per scenario (values per job); lease end at t0 + {} s; \
         spot notice at t0 + {} s, interruption 2 min later; (b)-(d): drain_lead {DRAIN_LEAD}, \
         job_stop_timeout {}s, stop_grace off; (d): checkpoint_lead {CHECKPOINT_LEAD}; (c): poll every {} s",
        UNIT.as_secs(),
        LEASE_END_AFTER.whole_seconds(),
        NOTICE_AFTER.whole_seconds(),
        JOB_STOP_TIMEOUT.as_secs(),
        POLL.as_secs()
    ));
}
