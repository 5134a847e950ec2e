//! The `blockwatch-launch` binary: parse, set up logging and the runtime,
//! run the subcommand, exit with its code.

use std::process::ExitCode;

use blockwatch_launch::cli::{Cli, Command};
use blockwatch_launch::exit::{self, Exit};
use blockwatch_launch::{extend, launch, list, logging};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_level);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            return failed(
                exit::INTERNAL,
                &format!("cannot start the async runtime: {err}"),
            )
        }
    };
    let call_timeout = cli.call_timeout.into();
    let done = runtime.block_on(async {
        match &cli.command {
            None => launch::run(&cli.launch, call_timeout)
                .await
                .map_err(|e| (e.exit(), e.to_string())),
            Some(Command::List(args)) => list::run(args, call_timeout)
                .await
                .map_err(|e| (e.exit(), e.to_string())),
            Some(Command::Extend(args)) => extend::run(args, call_timeout)
                .await
                .map_err(|e| (e.exit(), e.to_string())),
        }
    });
    match done {
        Ok(()) => exit::SUCCESS.into(),
        Err((exit, message)) => failed(exit, &message),
    }
}

fn failed(exit: Exit, message: &str) -> ExitCode {
    log::error!("{message}");
    exit.into()
}
