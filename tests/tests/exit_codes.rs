//! The exit-code table in `agent/src/exit.rs` is the one list: README.md's
//! table says the same, and each systemd unit stops restarting for exactly
//! the codes the table says it should.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use blockwatch::exit::{Exit, Systemd, TABLE};

fn repo_file(path: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The rows of the table under `## Exit codes`, cells trimmed.
fn readme_rows() -> Vec<Vec<String>> {
    let readme = repo_file("README.md");
    let section = readme
        .split("\n## Exit codes\n")
        .nth(1)
        .expect("README.md has an `## Exit codes` section");
    let section = section.split("\n## ").next().unwrap();
    section
        .lines()
        .filter(|line| line.starts_with('|'))
        .skip(2) // the header and the |---| line
        .map(|line| {
            line.trim()
                .strip_prefix('|')
                .and_then(|line| line.strip_suffix('|'))
                .unwrap()
                .split('|')
                .map(|cell| cell.trim().to_owned())
                .collect()
        })
        .collect()
}

fn table_row(exit: &Exit) -> Vec<String> {
    vec![
        exit.code.to_string(),
        exit.name.to_owned(),
        exit.meaning.to_owned(),
        exit.retry_helps.to_owned(),
    ]
}

#[test]
fn the_readme_table_is_the_code_table() {
    let readme = readme_rows();
    let code: Vec<Vec<String>> = TABLE.iter().map(table_row).collect();
    assert_eq!(
        readme, code,
        "README.md's exit-code table differs from agent/src/exit.rs"
    );
}

/// The codes a unit's `RestartPreventExitStatus=` lines name.
fn restart_prevented(unit: &str) -> BTreeSet<u8> {
    repo_file(&format!("packaging/systemd/{unit}"))
        .lines()
        .filter_map(|line| line.trim().strip_prefix("RestartPreventExitStatus="))
        .flat_map(|codes| {
            codes
                .split_whitespace()
                .map(|code| code.parse::<u8>().unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn staying_down(unit_policy: impl Fn(&Exit) -> Systemd) -> BTreeSet<u8> {
    TABLE
        .iter()
        .filter(|exit| unit_policy(exit) == Systemd::StaysDown)
        .map(|exit| exit.code)
        .collect()
}

#[test]
fn the_join_unit_stays_down_exactly_for_the_codes_the_table_says() {
    assert_eq!(
        restart_prevented("blockwatch-join.service"),
        staying_down(|exit| exit.join_unit)
    );
}

#[test]
fn the_run_unit_stays_down_exactly_for_the_codes_the_table_says() {
    assert_eq!(
        restart_prevented("blockwatch.service"),
        staying_down(|exit| exit.run_unit)
    );
}

/// A code a retry can mend stops neither unit, and `run` is retried when
/// another agent holds its state directory (that agent may be gone by then).
#[test]
fn no_unit_stays_down_for_what_a_restart_can_mend() {
    for exit in TABLE.iter().filter(|exit| exit.retry_helps == "yes") {
        assert_eq!(exit.join_unit, Systemd::MayRestart, "{exit:?}");
        assert_eq!(exit.run_unit, Systemd::MayRestart, "{exit:?}");
    }
    assert_eq!(blockwatch::exit::CANT_CREATE.run_unit, Systemd::MayRestart);
}

#[test]
fn the_help_lists_every_code() {
    let help = blockwatch::exit::help_text();
    for exit in TABLE {
        let start = format!("\n  {:<3} ", exit.code);
        assert!(help.contains(&start), "help lacks {}:\n{help}", exit.code);
        assert!(
            help.contains(exit.name),
            "help lacks {}:\n{help}",
            exit.name
        );
    }
}
