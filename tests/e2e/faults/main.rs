//! The fault matrix: what blockwatch does when things go wrong. Each case
//! names its family (`join_input::…`, `imds::…`, `aws_join::…`, `aws_run::…`,
//! `process::…`, `security::…`) and asserts what must hold: nothing lost,
//! nothing written that should not be, the right exit code, and a message an
//! operator can act on. `cargo nextest run --test faults` prints one line per
//! case and a summary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;

mod aws_join;
mod aws_run;
mod imds;
mod join_input;
mod process;
mod security;
