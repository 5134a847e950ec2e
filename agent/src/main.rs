//! The `blockwatch` binary: parse arguments, build the adapters, run.

use std::process::ExitCode;

use blockwatch::cli::{Cli, Command};
use blockwatch::exit::{self, AgentError};
use blockwatch::host::dry_run;
use blockwatch::host::lock::StateDirLock;
use blockwatch::join::{join_retrying, JoinRequest};
use blockwatch::run::{run, RunRequest};
use blockwatch::sources::config_file;
use blockwatch::sources::imds::Imds;
use blockwatch::status_command;
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    blockwatch::host::logging::init(
        cli.common.log_level,
        std::env::var_os("RUST_LOG").as_deref(),
    );
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            log::error!("cannot start the async runtime: {err}");
            return ExitCode::from(exit::INTERNAL.code);
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
            runtime.block_on(join_retrying(&request, args.retry_for.into()))
        }
        Command::Run(args) => {
            let (config_path, config_path_explicit) = cli.common.config_path();
            let request = RunRequest {
                config_path,
                config_path_explicit,
                state_dir: cli.common.state_dir,
                dry_run: args.dry_run,
                introspection_url: args.ecs_introspection_url,
                deadline_dir: args.deadline_dir,
            };
            // Before anything reads or writes the state: the lock (held
            // until `run` returns), or a dry run's private directories.
            match claim_state(request) {
                Ok((request, _lock)) => runtime.block_on(run(&request, Imds::for_polling())),
                Err(err) => Err(err),
            }
        }
        Command::Status(args) => {
            return match status_command::render(
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
                    ExitCode::from(exit::NO_STATE.code)
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

/// A live run takes the state directory's lock; a dry run gets private
/// directories instead and leaves the live ones (and their lock) alone.
fn claim_state(request: RunRequest) -> Result<(RunRequest, Option<StateDirLock>), AgentError> {
    let unusable_but_dry = unusable_config_says_dry_run(&request);
    if request.dry_run || unusable_but_dry || config_asks_for_a_dry_run(&request) {
        let private = dry_run::prepare(&request.state_dir, &request.deadline_dir)?;
        let request = RunRequest {
            state_dir: private.state_dir,
            deadline_dir: private.deadline_dir,
            // A config `run` cannot use leaves the built-in defaults, which
            // are live: a file that asks for a dry run stays one.
            dry_run: request.dry_run || unusable_but_dry,
            ..request
        };
        return Ok((request, None));
    }
    let lock = StateDirLock::acquire(&request.state_dir)?;
    Ok((request, lock))
}

/// `dry_run = true` in the config file. Start-up reads the file again and
/// reports its errors; an unusable file here means a live run, which takes
/// the lock (the safe side).
fn config_asks_for_a_dry_run(request: &RunRequest) -> bool {
    matches!(
        config_file::load(&request.config_path, request.config_path_explicit),
        Ok(Some(file)) if file.dry_run == Some(true)
    )
}

/// A config file that cannot be used but has a `dry_run = true` line: its
/// author asked for a dry run, and a degraded `run` must not act for real.
fn unusable_config_says_dry_run(request: &RunRequest) -> bool {
    if config_file::load(&request.config_path, request.config_path_explicit).is_ok() {
        return false;
    }
    let text = std::fs::read_to_string(&request.config_path).unwrap_or_default();
    text.lines().any(|line| {
        let line = line.split('#').next().unwrap_or_default();
        matches!(line.split_once('='), Some((key, value)) if key.trim() == "dry_run" && value.trim() == "true")
    })
}

#[allow(clippy::print_stdout)]
fn print(text: &str) {
    println!("{text}");
}
