//! The `blockwatch` binary: parse arguments, build the adapters, run.

use std::process::ExitCode;

use blockwatch::cli::{Cli, Command};
use blockwatch::exit;
use blockwatch::join::join_retrying;
use blockwatch::run::{claim_state, run};
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
            let request = args.request(cli.common);
            runtime.block_on(join_retrying(&request, args.retry_for.into()))
        }
        Command::Run(args) => {
            let request = args.request(cli.common);
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

#[allow(clippy::print_stdout)]
fn print(text: &str) {
    println!("{text}");
}
