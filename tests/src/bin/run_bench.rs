//! `run-bench`: figures for `blockwatch run`. Prints numbers; asserts nothing.
//!
//! - latency from a spot notice appearing in IMDS to DRAINING reaching moto
//!   (poll_interval 1 s, so expect up to 1 s plus one API round trip);
//! - idle CPU (utime + stime from /proc over a window) and steady RSS.
//!
//! Usage: run-bench [BLOCKWATCH_BINARY] [IDLE_SECONDS] [REPETITIONS]

use blockwatch_core::tags::TAG_CLUSTER;
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use blockwatch_testkit::imds::{ImdsSimulator, InstanceState, SpotInstanceAction};
use blockwatch_testkit::moto::{MotoServer, REGION};
use blockwatch_testkit::script::{agent_binary_or_release, finish, run_args_in, say};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    finish("run-bench", bench().await)
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU ticks (utime + stime) of `pid`.
fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = stat
        .rsplit_once(") ")
        .map(|(_, r)| r)
        .ok_or("bad /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .ok_or("bad /proc stat field")
    };
    Ok(tick(11)? + tick(12)?)
}

fn rss_kib(pid: u32) -> Result<u64, String> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| "no VmRSS".to_owned())
}

fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

fn spawn(binary: &Path, scratch: &Path, imds: &str, aws: &str) -> Result<Running, String> {
    let child = Command::new(binary)
        .env_clear()
        .env("PATH", blockwatch_testkit::host_guard::path())
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds)
        .env("AWS_ENDPOINT_URL", aws)
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .args(run_args_in(scratch))
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    Ok(Running(child))
}

fn wait_for_state(scratch: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !scratch.join("state/state.json").exists() {
        if Instant::now() > deadline {
            return Err("blockwatch run did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

async fn bench() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let binary = agent_binary_or_release(args.next());
    let idle: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(30);
    let reps: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(30);
    if !binary.exists() {
        return Err(format!("{} not found", binary.display()));
    }
    let moto = MotoServer::start().await.map_err(|e| e.to_string())?;
    let cluster = moto
        .create_cluster("bench")
        .await
        .map_err(|e| e.to_string())?;
    say(&format!(
        "binary: {} (poll_interval 1s, loopback peers)",
        binary.display()
    ));

    let mut latencies = Vec::new();
    for rep in 0..=reps {
        let instance_id = moto
            .launch_instance(&[(TAG_CLUSTER, "bench")])
            .await
            .map_err(|e| e.to_string())?;
        moto.register_container_instance(&cluster, &instance_id)
            .await
            .map_err(|e| e.to_string())?;
        let imds = ImdsSimulator::start(InstanceState {
            instance_id,
            region: REGION.to_owned(),
            tags: Some([(TAG_CLUSTER.to_owned(), "bench".to_owned())].into()),
            pending_time: time::OffsetDateTime::now_utc(),
            ..InstanceState::default()
        })
        .map_err(|e| e.to_string())?;
        let scratch =
            std::env::temp_dir().join(format!("blockwatch-run-bench-{}-{rep}", std::process::id()));
        std::fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
        std::fs::write(scratch.join("blockwatch.toml"), "poll_interval = \"1s\"\n")
            .map_err(|e| e.to_string())?;
        let agent = spawn(&binary, &scratch, &imds.endpoint(), &moto.endpoint())?;
        wait_for_state(&scratch)?;

        if rep == 0 {
            // The first instance measures idle cost.
            std::thread::sleep(Duration::from_secs(2));
            let pid = agent.0.id();
            let (ticks0, t0) = (cpu_ticks(pid)?, Instant::now());
            let polls0 = imds.exchanges().len();
            std::thread::sleep(Duration::from_secs(idle));
            let (ticks1, elapsed) = (cpu_ticks(pid)?, t0.elapsed());
            let cpu = (ticks1 - ticks0) as f64 / clock_ticks_per_second() as f64;
            say(&format!(
                "idle over {:.0} s: CPU {:.3} s = {:.3}% of one core; RSS {:.1} MiB; {} IMDS requests ({:.1}/s); 0 AWS calls expected",
                elapsed.as_secs_f64(),
                cpu,
                cpu / elapsed.as_secs_f64() * 100.0,
                rss_kib(pid)? as f64 / 1024.0,
                imds.exchanges().len() - polls0,
                (imds.exchanges().len() - polls0) as f64 / elapsed.as_secs_f64(),
            ));
        }
        let drains_before = moto.ecs_calls("UpdateContainerInstancesState");
        // Appear at a random point of the poll cycle.
        std::thread::sleep(Duration::from_millis(137 * rep as u64 % 1000));
        let notice_at = Instant::now();
        imds.update(|s| {
            s.spot_instance_action = Some(SpotInstanceAction {
                action: "terminate".into(),
                time: time::OffsetDateTime::now_utc() + time::Duration::minutes(2),
            })
        });
        loop {
            if moto.ecs_calls("UpdateContainerInstancesState") > drains_before {
                latencies.push(notice_at.elapsed());
                break;
            }
            if notice_at.elapsed() > Duration::from_secs(30) {
                return Err("no DRAINING within 30 s of the spot notice".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(agent);
        let _ = std::fs::remove_dir_all(&scratch);
    }
    latencies.sort();
    let ms = |d: &Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    let at = |q: f64| {
        latencies
            .get(((latencies.len().max(1) - 1) as f64 * q).round() as usize)
            .map(ms)
            .unwrap_or_default()
    };
    say(&format!(
        "spot notice -> DRAINING at moto over {} notices: min {}, p50 {}, p95 {}, max {} (bound: poll_interval 1 s + one API round trip)",
        latencies.len(),
        at(0.0),
        at(0.5),
        at(0.95),
        at(1.0),
    ));
    Ok(())
}
