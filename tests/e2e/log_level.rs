//! The log level, end to end: `--log-level` (a global flag) and `RUST_LOG`
//! decide what the real binary writes to stderr. The journald side is in
//! `journald.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use blockwatch_testkit::instance::{Instance, Run};

/// The debug line every command writes first, once debug is on.
const DEBUG_STARTUP: &str = "blockwatch: debug: blockwatch ";
/// Part of an info line every join below writes.
const INFO_LINE: &str = "cluster=quiet-pool (instance tag blockwatch:cluster (IMDS))";

/// An instance whose join needs only IMDS: the cluster is a tag.
fn instance() -> Instance {
    Instance::in_cluster_without_aws("quiet-pool")
}

/// `blockwatch <args>` with `env` added to the instance's environment.
fn blockwatch(instance: &Instance, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = instance.command();
    command
        .args(args)
        .arg("--ecs-config")
        .arg(instance.ecs_config())
        .arg("--state-dir")
        .arg(instance.state_dir())
        .envs(env.iter().copied());
    command.output().expect("run blockwatch").into()
}

#[test]
fn by_default_debug_lines_are_hidden_and_info_lines_shown() {
    let instance = instance();

    let run = blockwatch(&instance, &["join"], &[]);

    assert_eq!(run.code, 0, "{}", run.stderr);
    run.assert_stderr_has(INFO_LINE);
    assert!(!run.stderr.contains("debug:"), "{}", run.stderr);
}

#[test]
fn log_level_debug_shows_debug_lines() {
    let instance = instance();

    let run = blockwatch(&instance, &["join", "--log-level", "debug"], &[]);

    assert_eq!(run.code, 0, "{}", run.stderr);
    run.assert_stderr_has(format!(
        "{DEBUG_STARTUP}{}: logging at debug (from --log-level)",
        env!("CARGO_PKG_VERSION")
    ));
    run.assert_stderr_has(INFO_LINE);
}

#[test]
fn rust_log_debug_shows_debug_lines() {
    let instance = instance();

    let run = blockwatch(&instance, &["join"], &[("RUST_LOG", "debug")]);

    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains(DEBUG_STARTUP)
            && run.stderr.contains("logging at debug (from RUST_LOG)"),
        "{}",
        run.stderr
    );
}

#[test]
fn log_level_warn_hides_info_lines_and_wins_over_rust_log() {
    let instance = instance();

    let run = blockwatch(
        &instance,
        &["--log-level", "warn", "join"],
        &[("RUST_LOG", "debug")],
    );

    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        std::fs::read_to_string(instance.ecs_config()).unwrap(),
        "ECS_CLUSTER=quiet-pool\n",
        "the join itself is unchanged"
    );
    assert!(!run.stderr.contains(INFO_LINE), "{}", run.stderr);
    assert!(!run.stderr.contains("debug:"), "{}", run.stderr);
}

#[test]
fn an_invalid_log_level_is_a_usage_error_on_every_subcommand() {
    let instance = instance();
    for subcommand in ["join", "run", "status"] {
        let run = blockwatch(&instance, &[subcommand, "--log-level", "verbose"], &[]);

        assert_eq!(run.code, 2, "{subcommand}: {}", run.stderr);
        assert!(
            run.stderr
                .contains("invalid value 'verbose' for '--log-level <LEVEL>'")
                && run
                    .stderr
                    .contains("[possible values: error, warn, info, debug, trace]"),
            "{subcommand}: {}",
            run.stderr
        );
    }
    assert!(
        instance.read_ecs_config().is_none(),
        "nothing ran, so nothing was written"
    );
}

#[test]
fn an_invalid_rust_log_is_a_warning_and_logs_at_info() {
    let instance = instance();

    let run = blockwatch(&instance, &["join"], &[("RUST_LOG", "blockwatch=debug")]);

    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "blockwatch: warning: ignoring RUST_LOG=\"blockwatch=debug\": not a log level \
             (error, warn, info, debug or trace); logging at info"
        ),
        "{}",
        run.stderr
    );
    run.assert_stderr_has(INFO_LINE);
    assert!(!run.stderr.contains("debug:"), "{}", run.stderr);
}

#[test]
fn status_takes_the_flag_too() {
    let instance = instance();

    // No state yet: status says so (66), at whatever level.
    let run = blockwatch(&instance, &["status", "--log-level", "debug"], &[]);

    assert_eq!(run.code, 66, "{}", run.stderr);
    run.assert_stderr_has(DEBUG_STARTUP);
}
