//! The README's first command: `blockwatch join` on a simulated instance.
//!
//! Starts moto and the IMDS simulator, creates an UNMANAGED compute
//! environment, launches an instance tagged with it, and runs the real
//! `blockwatch join` into a scratch ecs.config. No AWS account involved.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use blockwatch_testkit::imds::{ImdsSimulator, InstanceState};
use blockwatch_testkit::moto::{MotoServer, REGION};

#[allow(clippy::print_stdout)]
fn say(text: &str) {
    println!("{text}");
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match demo().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("demo failed: {err}");
            ExitCode::FAILURE
        }
    }
}

fn blockwatch_binary() -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin = me.with_file_name("blockwatch");
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "{} not found: build it with `cargo build -p blockwatch`",
            bin.display()
        ))
    }
}

async fn demo() -> Result<(), String> {
    let blockwatch = blockwatch_binary()?;
    let scratch = std::env::temp_dir().join(format!("blockwatch-demo-{}", std::process::id()));
    let ecs_config = scratch.join("etc/ecs/ecs.config");
    let state_dir = scratch.join("var/lib/blockwatch");

    say("== starting moto (AWS emulator) and the IMDS simulator on 127.0.0.1");
    let moto = MotoServer::start().await.map_err(|e| e.to_string())?;
    let cluster_arn = moto
        .create_unmanaged_ce("demo-ce", true)
        .await
        .map_err(|e| e.to_string())?;
    say(&format!("   created UNMANAGED compute environment demo-ce; Batch made its ECS cluster {cluster_arn}"));
    let tags = [
        ("blockwatch:compute-environment", "demo-ce"),
        ("blockwatch:lease-duration", "3h"),
        ("Name", "demo"),
    ];
    let instance_id = moto
        .launch_instance(&tags)
        .await
        .map_err(|e| e.to_string())?;
    say(&format!("   launched {instance_id} tagged blockwatch:compute-environment=demo-ce, blockwatch:lease-duration=3h"));
    let imds = ImdsSimulator::start(InstanceState {
        instance_id: instance_id.clone(),
        region: REGION.to_owned(),
        availability_zone: format!("{REGION}a"),
        pending_time: time::OffsetDateTime::now_utc(),
        tags: Some(
            tags.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ),
        ..InstanceState::default()
    })
    .map_err(|e| e.to_string())?;
    std::fs::create_dir_all(ecs_config.parent().unwrap_or(&scratch)).map_err(|e| e.to_string())?;
    std::fs::write(
        &ecs_config,
        "ECS_ENABLE_TASK_IAM_ROLE=true\r\nECS_CLUSTER=\"stale\"\r\n",
    )
    .map_err(|e| e.to_string())?;
    say(&format!(
        "   {} starts with a quoted, CRLF ECS_CLUSTER line:",
        ecs_config.display()
    ));
    show(&ecs_config)?;

    let run = |extra: &[&str]| -> Result<i32, String> {
        let status = Command::new(&blockwatch)
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.endpoint())
            .env("AWS_ENDPOINT_URL", moto.endpoint())
            .env_remove("AWS_REGION")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_PROFILE")
            .env("AWS_CONFIG_FILE", scratch.join("no-aws-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                scratch.join("no-aws-credentials"),
            )
            .env_remove("JOURNAL_STREAM")
            .arg("join")
            .arg("--config")
            .arg(scratch.join("blockwatch.toml"))
            .arg("--ecs-config")
            .arg(&ecs_config)
            .arg("--state-dir")
            .arg(&state_dir)
            .args(extra)
            .status()
            .map_err(|e| e.to_string())?;
        Ok(status.code().unwrap_or(-1))
    };
    std::fs::write(scratch.join("blockwatch.toml"), "# empty: tags decide\n")
        .map_err(|e| e.to_string())?;

    say("\n== blockwatch join --dry-run");
    expect_success(run(&["--dry-run"])?)?;
    say("\n== blockwatch join");
    expect_success(run(&[])?)?;
    say(&format!("\n== {} now:", ecs_config.display()));
    show(&ecs_config)?;
    say("\n== blockwatch join again (nothing to do)");
    expect_success(run(&[])?)?;
    say(&format!("\n== {}:", state_dir.join("join.json").display()));
    let record = std::fs::read_to_string(state_dir.join("join.json")).map_err(|e| e.to_string())?;
    say(&record);
    let puts = imds
        .exchanges()
        .iter()
        .filter(|e| e.method == "PUT")
        .count();
    say(&format!(
        "\nIMDS exchanges: {} ({} token PUTs) over 3 runs",
        imds.exchanges().len(),
        puts
    ));
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

fn expect_success(code: i32) -> Result<(), String> {
    if code == 0 {
        Ok(())
    } else {
        Err(format!("blockwatch join exited with {code}"))
    }
}

/// Each line quoted, so CR and quotes are visible.
fn show(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for line in text.split_terminator('\n') {
        say(&format!("   | {line:?}"));
    }
    Ok(())
}
