//! `join-bench`: what one `blockwatch join` costs, next to the HTTP exchanges
//! it cannot avoid. Prints numbers; asserts nothing.
//!
//! Usage: join-bench [BLOCKWATCH_BINARY] [RUNS]

use blockwatch_core::tags::{TAG_CLUSTER, TAG_COMPUTE_ENVIRONMENT};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use blockwatch_testkit::http::request;
use blockwatch_testkit::imds::{ImdsSimulator, InstanceState, TOKEN_HEADER, TTL_HEADER};
use blockwatch_testkit::moto::{MotoServer, REGION};
use blockwatch_testkit::script::{agent_binary_or_release, finish, say};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    finish("join-bench", bench().await)
}

struct Stats {
    min: Duration,
    median: Duration,
    p90: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Stats {
        min: samples[0],
        median: at(0.5),
        p90: at(0.9),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn bench() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let binary = agent_binary_or_release(args.next());
    let runs: usize = args
        .next()
        .map(|r| r.parse().map_err(|_| format!("bad run count {r:?}")))
        .transpose()?
        .unwrap_or(30);
    if !binary.exists() {
        return Err(format!("{} not found", binary.display()));
    }
    let scratch = std::env::temp_dir().join(format!("blockwatch-bench-{}", std::process::id()));
    let moto = MotoServer::start().await.map_err(|e| e.to_string())?;
    moto.create_unmanaged_ce("bench-ce", true)
        .await
        .map_err(|e| e.to_string())?;
    let instance_id = moto
        .launch_instance(&[(TAG_COMPUTE_ENVIRONMENT, "bench-ce")])
        .await
        .map_err(|e| e.to_string())?;

    say(&format!(
        "binary: {} ({runs} runs per scenario, serial, loopback peers)",
        binary.display()
    ));
    say("scenario                         min        median     p90        IMDS PUT/GET per run  AWS calls");

    let version = time_runs(runs, || {
        Command::new(&binary).arg("--version").output().map(|_| ())
    })?;
    print_row("process start (--version)", &stats(version), "-", "0");

    for (name, tags, aws_calls) in [
        (
            "join, cluster tag",
            vec![(TAG_CLUSTER, "bench-cluster")],
            "0",
        ),
        (
            "join, compute-environment tag",
            vec![(TAG_COMPUTE_ENVIRONMENT, "bench-ce")],
            "1 (Batch)",
        ),
    ] {
        let imds = ImdsSimulator::start(InstanceState {
            instance_id: instance_id.clone(),
            region: REGION.to_owned(),
            tags: Some(
                tags.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..InstanceState::default()
        })
        .map_err(|e| e.to_string())?;
        let ecs_config = scratch
            .join(name.replace([' ', ','], "_"))
            .join("ecs.config");
        let samples = time_runs(runs, || {
            let _ = std::fs::remove_file(&ecs_config);
            let out = Command::new(&binary)
                .env_clear()
                .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.endpoint())
                .env("AWS_ENDPOINT_URL", moto.endpoint())
                .env("AWS_CONFIG_FILE", "/nonexistent")
                .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
                .args(["join", "--state-dir"])
                .arg(scratch.join("state"))
                .arg("--ecs-config")
                .arg(&ecs_config)
                .output()?;
            if out.status.success() {
                Ok(())
            } else {
                Err(std::io::Error::other(
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                ))
            }
        })?;
        let samples_copy = samples.clone();
        let exchanges = imds.exchanges();
        // Every timed run plus the warm-up run talked to this simulator.
        let per_run = |method: &str| {
            exchanges.iter().filter(|e| e.method == method).count() as f64 / (runs + 1) as f64
        };
        let (puts, gets) = (per_run("PUT"), per_run("GET"));
        print_row(
            name,
            &stats(samples),
            &format!("{puts:.0} / {gets:.0}"),
            aws_calls,
        );

        // The floor: the same IMDS exchanges over fresh connections, no agent.
        let paths: Vec<String> = exchanges
            .iter()
            .take((puts + gets) as usize)
            .filter(|e| e.method == "GET")
            .map(|e| e.path.clone())
            .collect();
        let addr = imds.addr();
        let floor = time_runs(runs, || {
            let token = request(
                addr,
                "PUT",
                "/latest/api/token",
                &[(TTL_HEADER, "21600")],
                "",
            )?
            .body;
            for path in &paths {
                request(addr, "GET", path, &[(TOKEN_HEADER, &token)], "")?;
            }
            Ok(())
        })?;
        print_row("  (its IMDS exchanges alone)", &stats(floor), "", "");
        if aws_calls != "0" {
            let join_median = stats(samples_copy.clone()).median;
            manual_recipe(runs, &imds, &moto, &scratch, join_median)?;
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

/// The recipe blockwatch replaces, as a user writes it in user data: look the
/// cluster up with the AWS CLI, then edit ecs.config in the shell. Uses
/// `$BLOCKWATCH_AWS_CLI` (tests/bench installs it in a venv of its own), else
/// `aws` from the moto venv or /usr/bin; without one, the same call through
/// boto3 (the library the AWS CLI v1 is built on), labelled as such.
fn manual_recipe(
    runs: usize,
    imds: &ImdsSimulator,
    moto: &MotoServer,
    scratch: &std::path::Path,
    join_median: Duration,
) -> Result<(), String> {
    let venv = blockwatch_testkit::moto::venv();
    let cli = std::env::var_os("BLOCKWATCH_AWS_CLI")
        .map(PathBuf::from)
        .into_iter()
        .chain([venv.join("bin/aws"), PathBuf::from("/usr/bin/aws")])
        .find(|p| p.exists());
    let lookup = match &cli {
        Some(aws) => format!(
            "{} batch describe-compute-environments --compute-environments bench-ce --query 'computeEnvironments[0].ecsClusterArn' --output text",
            aws.display()
        ),
        None => format!(
            "{} -c 'import boto3; print(boto3.client(\"batch\").describe_compute_environments(computeEnvironments=[\"bench-ce\"])[\"computeEnvironments\"][0][\"ecsClusterArn\"])'",
            venv.join("bin/python").display()
        ),
    };
    let dir = scratch.join("manual");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let config = dir.join("ecs.config");
    let script = format!(
        "set -eu\narn=$({lookup})\ncluster=${{arn##*/}}\nf={config}\n{{ grep -v '^ECS_CLUSTER=' \"$f\" 2>/dev/null || true; echo \"ECS_CLUSTER=$cluster\"; }} > \"$f.tmp\"\nmv \"$f.tmp\" \"$f\"\n",
        config = config.display()
    );
    let samples = time_runs(runs.min(10), || {
        let out = Command::new("bash")
            .args(["-c", &script])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.endpoint())
            .env("AWS_ENDPOINT_URL", moto.endpoint())
            .env("AWS_DEFAULT_REGION", REGION)
            .env("AWS_CONFIG_FILE", "/nonexistent")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
            .output()?;
        let written = std::fs::read_to_string(&config).unwrap_or_default();
        if out.status.success() && written.contains("ECS_CLUSTER=") {
            Ok(())
        } else {
            Err(std::io::Error::other(
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ))
        }
    })?;
    let s = stats(samples);
    let name = if cli.is_some() {
        "manual: aws CLI + shell edit"
    } else {
        "manual: boto3 + shell edit"
    };
    print_row(name, &s, "", "1 (Batch)");
    say(&format!(
        "  manual recipe / join (median): {:.1}x{}",
        s.median.as_secs_f64() / join_median.as_secs_f64(),
        if cli.is_some() {
            ""
        } else {
            " (no AWS CLI in the venv: boto3, the library AWS CLI v1 runs on, stands in; the CLI itself starts slower)"
        }
    ));
    Ok(())
}

fn time_runs(
    runs: usize,
    mut run: impl FnMut() -> std::io::Result<()>,
) -> Result<Vec<Duration>, String> {
    run().map_err(|e| format!("warm-up run failed: {e}"))?;
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            run().map_err(|e| e.to_string())?;
            Ok(start.elapsed())
        })
        .collect()
}

fn print_row(name: &str, s: &Stats, imds: &str, aws: &str) {
    say(&format!(
        "{name:<32} {:<10} {:<10} {:<10} {imds:<21} {aws}",
        ms(s.min),
        ms(s.median),
        ms(s.p90)
    ));
}
