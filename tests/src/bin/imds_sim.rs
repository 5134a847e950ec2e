//! `imds-sim`: the IMDS simulator as a standalone server, for trying
//! blockwatch by hand. Change the instance with `PUT /_sim/state` (JSON, as
//! `GET /_sim/state` shows it); `POST /_sim/expire-tokens`; `GET /_sim/requests`.
//! Inject faults with `PUT /_sim/faults` (JSON, as `GET /_sim/faults` shows
//! it) and lift them with `DELETE /_sim/faults`, for example:
//!
//! ```text
//! curl -X PUT localhost:8111/_sim/faults -d '{"paths": {"*": {"status": 500}}}'
//! curl -X PUT localhost:8111/_sim/faults -d '{"all": "hang"}'
//! curl -X PUT localhost:8111/_sim/faults -d '{"token": {"status": 403}}'
//! curl -X PUT localhost:8111/_sim/faults -d '{"token_lifetime_ms": 2000}'
//! curl -X PUT localhost:8111/_sim/faults \
//!   -d '{"paths": {"/latest/meta-data/spot/instance-action": {"body": "{oops"}}}'
//! ```

use std::collections::BTreeMap;
use std::process::ExitCode;

use blockwatch_testkit::imds::{ImdsSimulator, InstanceState};
use clap::Parser;

/// A local instance metadata service that follows the EC2 docs (IMDSv2 only).
#[derive(Debug, Parser)]
#[command(name = "imds-sim")]
struct Args {
    /// Address to listen on (loopback only)
    #[arg(long, default_value = "127.0.0.1:8111")]
    listen: String,
    /// Instance id to serve
    #[arg(long, default_value = "i-0123456789abcdef0")]
    instance_id: String,
    /// Region to serve
    #[arg(long, default_value = "eu-west-1")]
    region: String,
    /// Instance tag KEY=VALUE (repeatable)
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    tags: Vec<String>,
    /// Serve no tags at all, as for an instance launched without InstanceMetadataTags
    #[arg(long, conflicts_with = "tags")]
    tags_disabled: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !args.listen.starts_with("127.") && !args.listen.starts_with("localhost") {
        eprintln!(
            "imds-sim: refusing to listen on {}: loopback only",
            args.listen
        );
        return ExitCode::from(2);
    }
    let mut tags = BTreeMap::new();
    for tag in &args.tags {
        match tag.split_once('=') {
            Some((k, v)) => {
                tags.insert(k.to_owned(), v.to_owned());
            }
            None => {
                eprintln!("imds-sim: --tag {tag:?} is not KEY=VALUE");
                return ExitCode::from(2);
            }
        }
    }
    let state = InstanceState {
        instance_id: args.instance_id,
        availability_zone: format!("{}a", args.region),
        region: args.region,
        pending_time: time::OffsetDateTime::now_utc(),
        tags: if args.tags_disabled { None } else { Some(tags) },
        ..InstanceState::default()
    };
    match ImdsSimulator::start_on(&args.listen, state, true) {
        Ok(sim) => {
            eprintln!("imds-sim: serving on {}", sim.endpoint());
            loop {
                std::thread::park();
            }
        }
        Err(err) => {
            eprintln!("imds-sim: {err}");
            ExitCode::FAILURE
        }
    }
}
