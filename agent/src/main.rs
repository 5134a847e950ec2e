//! The `blockwatch` binary: parse arguments, build the adapters, run.

use std::process::ExitCode;

use blockwatch::cli::{Cli, Command};
use blockwatch::exit::{self, AgentError};
use blockwatch::join::{join, JoinRequest};
use blockwatch::run::{run, RunRequest};
use blockwatch::sources::aws::Aws;
use blockwatch::sources::imds::Imds;
use blockwatch::status;
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    blockwatch::host::logging::init(log::LevelFilter::Info);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            log::error!("cannot start the async runtime: {err}");
            return ExitCode::from(exit::INTERNAL);
        }
    };
    let result = match cli.command {
        Command::Join(args) => {
            let (config_path, config_path_explicit) = cli.common.config_path();
            let request = JoinRequest {
                config_path,
                config_path_explicit,
                ecs_config: cli.common.ecs_config,
                state_dir: cli.common.state_dir,
                dry_run: args.dry_run,
            };
            runtime.block_on(run_join(&request, args.retry_for.into()))
        }
        Command::Run(args) => {
            let (config_path, config_path_explicit) = cli.common.config_path();
            let request = RunRequest {
                config_path,
                config_path_explicit,
                state_dir: cli.common.state_dir,
                dry_run: args.dry_run,
                introspection_url: args.ecs_introspection_url,
            };
            runtime.block_on(run(&request, Imds::for_polling()))
        }
        Command::Status(args) => {
            return match status::render(
                &cli.common.state_dir,
                args.json,
                time::OffsetDateTime::now_utc(),
            ) {
                Ok(text) => {
                    print(&text);
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    log::error!("{err}");
                    ExitCode::from(exit::NO_STATE)
                }
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if err.is_transient() {
                log::error!("{err} (transient; try again)");
            } else {
                log::error!("{err}");
            }
            ExitCode::from(err.exit_code())
        }
    }
}

/// Joins; transient failures are retried with backoff for `retry_for`.
async fn run_join(request: &JoinRequest, retry_for: std::time::Duration) -> Result<(), AgentError> {
    let started = std::time::Instant::now();
    let mut backoff = std::time::Duration::from_secs(1);
    loop {
        // Fresh clients each attempt: a failed IMDS session is not reused.
        let imds = Imds::new();
        let aws = Aws::new(imds.clone());
        match join(request, &imds, &aws, &aws, time::OffsetDateTime::now_utc()).await {
            Ok(_) => return Ok(()),
            Err(err) if err.is_transient() && started.elapsed() + backoff <= retry_for => {
                log::warn!("{err}; retrying in {}", humantime::format_duration(backoff));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(30));
            }
            Err(err) => return Err(err),
        }
    }
}

#[allow(clippy::print_stdout)]
fn print(text: &str) {
    println!("{text}");
}
