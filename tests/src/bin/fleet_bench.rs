//! `fleet-bench`: what a fleet of agents costs the AWS control plane. Prints
//! numbers; asserts nothing.
//!
//! 1. Boot storm: N agents run `blockwatch join --retry-for 10m` at once,
//!    each with its own IMDS simulator (in-process, one loopback port each)
//!    and scratch dir, against ONE moto behind a proxy that holds AWS Batch to
//!    a fixed rate (token bucket) and answers over it as Batch does (HTTP 429
//!    `TooManyRequestsException`). Once with the compute-environment tag,
//!    once with the cluster tag (which needs no AWS call).
//! 2. Lifetime: M agents boot (`join`), then `run` a lease that ends ~20 s
//!    later with `drain_lead` 10 s, through drain and the (harmless) power-off;
//!    every AWS call each instance made is counted by API.
//!
//! Every agent's AWS endpoint is `<proxy>/_c/<index>`, so the proxy knows
//! which instance sent each request.
//!
//! Over 400 lines: its scenarios share the fleet, the counters and the report.

use blockwatch_core::tags::TAG_LEASE_END;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use blockwatch_core::time_text::rfc3339;
use blockwatch_testkit::aws_proxy::{AwsProxy, Fault, Seen};
use blockwatch_testkit::imds::{ImdsSimulator, InstanceState};
use blockwatch_testkit::moto::{MotoServer, REGION};
use blockwatch_testkit::script::{finish, run_args_in, say};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "fleet-bench",
    about = "Fleet figures for blockwatch (prints, asserts nothing)"
)]
struct Args {
    /// The agent binary to measure.
    #[arg(long, default_value = "target/release/blockwatch")]
    binary: PathBuf,
    /// Agents that join at once.
    #[arg(long, default_value_t = 200)]
    agents: usize,
    /// Batch requests a second the proxy lets through (token bucket).
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Token bucket size (requests let through at once after a quiet spell).
    #[arg(long, default_value_t = 10.0)]
    burst: f64,
    /// Agents that live through a short lease (0 = skip that part).
    #[arg(long, default_value_t = 50)]
    lease_agents: usize,
    /// Skip the boot storm (only the lease part).
    #[arg(long)]
    no_join: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    finish("fleet-bench", bench(&args).await)
}

/// Kills the agent (by its own PID) when dropped.
struct Agent {
    child: Child,
    started: Instant,
    ended: Option<(Instant, Option<i32>)>,
}

impl Agent {
    /// `child`, just spawned.
    fn started(child: Child) -> Self {
        Self {
            child,
            started: Instant::now(),
            ended: None,
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.ended.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn text<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

use blockwatch_core::tags::TAG_CLUSTER as CLUSTER_TAG;
use blockwatch_core::tags::TAG_COMPUTE_ENVIRONMENT as CE_TAG;

fn instance_id(kind: usize, index: usize) -> String {
    format!("i-f{kind:x}{index:015x}")
}

fn simulator(id: String, tags: &[(&str, &str)]) -> Result<ImdsSimulator, String> {
    ImdsSimulator::start(InstanceState {
        instance_id: id,
        region: REGION.to_owned(),
        tags: Some(
            tags.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ),
        pending_time: time::OffsetDateTime::now_utc(),
        ..InstanceState::default()
    })
    .map_err(|e| format!("IMDS simulator: {e}"))
}

fn command(binary: &Path, imds: &ImdsSimulator, proxy: &AwsProxy, index: usize) -> Command {
    let mut command = Command::new(binary);
    command
        .env_clear()
        .env("PATH", blockwatch_testkit::host_guard::path())
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.endpoint())
        .env(
            "AWS_ENDPOINT_URL",
            format!("{}/_c/{index}", proxy.endpoint()),
        )
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    command
}

/// `blockwatch join` as blockwatch-join.service runs it, logging to `log`
/// in the agent's folder.
fn spawn_join(
    binary: &Path,
    imds: &ImdsSimulator,
    proxy: &AwsProxy,
    index: usize,
    dir: &Path,
    log: &str,
) -> Result<Child, String> {
    command(binary, imds, proxy, index)
        .args(["join", "--retry-for", "10m", "--state-dir"])
        .arg(dir.join("state"))
        .arg("--ecs-config")
        .arg(dir.join("ecs.config"))
        .stderr(log_file(dir, log)?)
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", binary.display()))
}

/// One join an instance, each into its own `dirs[i]`, logging to `log` there.
fn spawn_joins(
    binary: &Path,
    sims: &[ImdsSimulator],
    proxy: &AwsProxy,
    dirs: &[PathBuf],
    log: &str,
) -> Result<Vec<Agent>, String> {
    let mut agents = Vec::with_capacity(sims.len());
    for (i, (sim, dir)) in sims.iter().zip(dirs).enumerate() {
        agents.push(Agent::started(spawn_join(binary, sim, proxy, i, dir, log)?));
    }
    Ok(agents)
}

fn log_file(dir: &Path, name: &str) -> Result<std::fs::File, String> {
    std::fs::File::create(dir.join(name)).map_err(|e| format!("{}: {e}", dir.display()))
}

/// Waits for every agent to exit (or `limit`), polling; returns how many exited.
fn reap(agents: &mut [Agent], limit: Duration) -> usize {
    let start = Instant::now();
    loop {
        let mut running = 0;
        for agent in agents.iter_mut().filter(|a| a.ended.is_none()) {
            match agent.child.try_wait() {
                Ok(Some(status)) => agent.ended = Some((Instant::now(), status.code())),
                Ok(None) => running += 1,
                Err(_) => agent.ended = Some((Instant::now(), None)),
            }
        }
        if running == 0 || start.elapsed() > limit {
            return agents.len() - running;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn is_batch(seen: &Seen) -> bool {
    seen.operation
        .eq_ignore_ascii_case("describecomputeenvironments")
}

/// Per-client counts of the requests `keep` selects, one entry per agent.
fn per_client(log: &[Seen], agents: usize, keep: impl Fn(&Seen) -> bool) -> Vec<f64> {
    let mut counts = vec![0usize; agents];
    for seen in log.iter().filter(|s| keep(s)) {
        if let Some(i) = seen.client.as_deref().and_then(|c| c.parse::<usize>().ok()) {
            if let Some(n) = counts.get_mut(i) {
                *n += 1;
            }
        }
    }
    let mut counts: Vec<f64> = counts.into_iter().map(|n| n as f64).collect();
    counts.sort_by(f64::total_cmp);
    counts
}

async fn bench(args: &Args) -> Result<(), String> {
    if !args.binary.exists() {
        return Err(format!("{} not found", args.binary.display()));
    }
    let scratch = std::env::temp_dir().join(format!("blockwatch-fleet-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(text)?;
    let moto = MotoServer::start().await.map_err(text)?;
    let proxy = AwsProxy::start(moto.addr()).map_err(text)?;
    say(&format!(
        "binary: {}; one moto behind a proxy holding Batch to {} requests/s (token bucket of {}), HTTP 429 TooManyRequestsException over it",
        args.binary.display(),
        args.rate,
        args.burst
    ));
    let result = async {
        if !args.no_join {
            boot_storm(args, &moto, &proxy, &scratch).await?;
        }
        if args.lease_agents > 0 {
            lifetime(args, &moto, &proxy, &scratch).await?;
        }
        Ok::<(), String>(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

async fn boot_storm(
    args: &Args,
    moto: &MotoServer,
    proxy: &AwsProxy,
    scratch: &Path,
) -> Result<(), String> {
    let cluster_arn = moto
        .create_unmanaged_ce("fleet-ce", true)
        .await
        .map_err(text)?;
    let cluster = cluster_arn
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let n = args.agents;
    say(&format!(
        "\n== boot storm: {n} agents run `blockwatch join --retry-for 10m` at once; ideal with one Batch call each: {n} / {} per s = {:.1} s",
        args.rate,
        n as f64 / args.rate
    ));
    say("tag                   joined  failed (exit codes)   Batch requests: total  429s   per instance min/p50/max   join wall time p50 / p99 / max   spawn spread  all done");
    for (kind, (label, tag, value)) in [
        ("compute-environment", CE_TAG, "fleet-ce"),
        ("cluster", CLUSTER_TAG, cluster.as_str()),
    ]
    .into_iter()
    .enumerate()
    {
        proxy.reset_log();
        // A full bucket for each run, as for a fleet after a quiet spell.
        proxy.clear();
        proxy.rate_limit(
            "describecomputeenvironments",
            args.rate,
            args.burst,
            Fault::too_many_requests(),
        );
        let sims = (0..n)
            .map(|i| simulator(instance_id(kind, i), &[(tag, value)]))
            .collect::<Result<Vec<_>, _>>()?;
        let dirs: Vec<PathBuf> = (0..n)
            .map(|i| scratch.join(format!("join-{kind}-{i}")))
            .collect();
        for dir in &dirs {
            std::fs::create_dir_all(dir).map_err(text)?;
        }
        let first = Instant::now();
        let mut agents = spawn_joins(&args.binary, &sims, proxy, &dirs, "agent.log")?;
        let spread = first.elapsed();
        reap(&mut agents, Duration::from_secs(15 * 60));
        let all_done = agents
            .iter()
            .filter_map(|a| a.ended.map(|(at, _)| at - first))
            .max()
            .unwrap_or_default();
        let mut times = Vec::new();
        let mut failures: BTreeMap<String, usize> = BTreeMap::new();
        let mut joined = 0;
        for (agent, dir) in agents.iter().zip(&dirs) {
            match agent.ended {
                Some((at, Some(0))) => {
                    let written = std::fs::read_to_string(dir.join("ecs.config"))
                        .unwrap_or_default()
                        .contains(&format!("ECS_CLUSTER={cluster}"));
                    if written {
                        joined += 1;
                    } else {
                        *failures.entry("0 w/o ECS_CLUSTER".into()).or_default() += 1;
                    }
                    times.push((at - agent.started).as_secs_f64());
                }
                Some((at, code)) => {
                    let code = code.map_or_else(|| "signal".to_owned(), |c| c.to_string());
                    *failures.entry(code).or_default() += 1;
                    times.push((at - agent.started).as_secs_f64());
                }
                None => *failures.entry("still running".into()).or_default() += 1,
            }
        }
        if let Some(dir) = agents
            .iter()
            .zip(&dirs)
            .find(|(a, _)| !matches!(a.ended, Some((_, Some(0)))))
            .map(|(_, d)| d)
        {
            let log = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
            let last = log.lines().last().unwrap_or_default();
            say(&format!("  (a failed agent's last log line: {last})"));
        }
        times.sort_by(f64::total_cmp);
        let log = proxy.log();
        let batch_total = log.iter().filter(|s| is_batch(s)).count();
        let throttled = log.iter().filter(|s| is_batch(s) && s.faulted).count();
        let per = per_client(&log, n, is_batch);
        let failed: usize = failures.values().sum();
        let codes = failures
            .iter()
            .map(|(code, count)| format!("{count}x{code}"))
            .collect::<Vec<_>>()
            .join(",");
        say(&format!(
            "{label:<21} {joined:<7} {:<21} {batch_total:<22} {throttled:<6} {:.0} / {:.0} / {:.0} ({:.2}/instance){:<4} {:.2} / {:.2} / {:.2} s{:<12} {:<13} {:.2} s",
            format!("{failed} ({codes})"),
            quantile(&per, 0.0),
            quantile(&per, 0.5),
            quantile(&per, 1.0),
            batch_total as f64 / n as f64,
            "",
            quantile(&times, 0.5),
            quantile(&times, 0.99),
            quantile(&times, 1.0),
            "",
            format!("{:.2} s", spread.as_secs_f64()),
            all_done.as_secs_f64(),
        ));
        drop(agents);
        drop(sims);
        for dir in &dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    proxy.clear();
    Ok(())
}

async fn lifetime(
    args: &Args,
    moto: &MotoServer,
    proxy: &AwsProxy,
    scratch: &Path,
) -> Result<(), String> {
    let m = args.lease_agents;
    let cluster_arn = moto.create_cluster("fleet-lease").await.map_err(text)?;
    say(&format!(
        "\n== lifetime: {m} launcher-style instances (cluster tag + lease-end tag), registered in ECS; join, then run a lease ending ~20 s after start, drain_lead 10s, poweroff_command harmless"
    ));
    say("   the ECS introspection API is unreachable here, so each agent finds its container instance with ListContainerInstances");
    let mut sims = Vec::with_capacity(m);
    let mut dirs = Vec::with_capacity(m);
    for i in 0..m {
        let id = moto
            .launch_instance(&[(CLUSTER_TAG, "fleet-lease")])
            .await
            .map_err(text)?;
        moto.register_container_instance(&cluster_arn, &id)
            .await
            .map_err(text)?;
        sims.push(simulator(id, &[(CLUSTER_TAG, "fleet-lease")])?);
        let dir = scratch.join(format!("life-{i}"));
        std::fs::create_dir_all(&dir).map_err(text)?;
        let command = format!("echo off >> {}", dir.join("powered-off").display());
        std::fs::write(
            dir.join("blockwatch.toml"),
            format!(
                "poll_interval = \"1s\"\ndrain_lead = \"10s\"\npoweroff_command = {command:?}\n"
            ),
        )
        .map_err(text)?;
        dirs.push(dir);
    }
    proxy.clear();
    proxy.reset_log();
    let started = Instant::now();
    let end = time::OffsetDateTime::now_utc() + time::Duration::seconds(20);
    for sim in &sims {
        sim.update(|s| {
            s.tags
                .get_or_insert_with(Default::default)
                .insert(TAG_LEASE_END.into(), rfc3339(end));
        });
    }
    // Boot: the join, as blockwatch-join.service runs it.
    let mut joins = spawn_joins(&args.binary, &sims, proxy, &dirs, "join.log")?;
    reap(&mut joins, Duration::from_secs(120));
    let joined = joins
        .iter()
        .filter(|a| matches!(a.ended, Some((_, Some(0)))))
        .count();
    let mut runs = Vec::with_capacity(m);
    for (i, (sim, dir)) in sims.iter().zip(&dirs).enumerate() {
        let child = command(&args.binary, sim, proxy, i)
            .args(run_args_in(dir))
            .arg("--ecs-config")
            .arg(dir.join("ecs.config"))
            .stderr(log_file(dir, "run.log")?)
            .spawn()
            .map_err(text)?;
        runs.push(Agent::started(child));
    }
    // Until every instance powered off (or a minute past the lease end).
    let limit = Duration::from_secs(80);
    loop {
        let off = dirs
            .iter()
            .filter(|d| d.join("powered-off").exists())
            .count();
        if off == m || started.elapsed() > limit {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // A few seconds more: anything an agent still sends after its power-off counts too.
    std::thread::sleep(Duration::from_secs(3));
    let lived = started.elapsed();
    let off = dirs
        .iter()
        .filter(|d| d.join("powered-off").exists())
        .count();
    let exited = runs
        .iter_mut()
        .filter_map(|a| a.child.try_wait().ok().flatten())
        .count();
    drop(runs);
    let log = proxy.log();
    say(&format!(
        "joined {joined}/{m}; powered off {off}/{m}; run exited by itself {exited}/{m}; watched for {:.0} s",
        lived.as_secs_f64()
    ));
    let mut by_api: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for operation in log
        .iter()
        .map(|s| s.operation.clone())
        .collect::<std::collections::BTreeSet<_>>()
    {
        let per = per_client(&log, m, |s| s.operation == operation);
        by_api.insert(operation, per);
    }
    say("API                               calls  per instance mean / min / max");
    for (api, per) in &by_api {
        let total: f64 = per.iter().sum();
        say(&format!(
            "{api:<33} {total:<6} {:.2} / {:.0} / {:.0}",
            total / m as f64,
            quantile(per, 0.0),
            quantile(per, 1.0),
        ));
    }
    let all = per_client(&log, m, |_| true);
    let total: f64 = all.iter().sum();
    say(&format!(
        "{:<33} {total:<6} {:.2} / {:.0} / {:.0}",
        "all AWS calls",
        total / m as f64,
        quantile(&all, 0.0),
        quantile(&all, 1.0),
    ));
    for dir in &dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}
