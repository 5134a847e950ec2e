//! Under systemd, `blockwatch join` logs to journald with structured fields.
//!
//! The binary runs in a private mount namespace whose
//! `/run/systemd/journal/socket` is our own datagram socket, with
//! `JOURNAL_STREAM` naming its stderr, exactly as systemd sets it up. We then
//! read the journal's native protocol off the socket. Needs root (CI and the
//! dev machines run as root); it fails loudly otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use blockwatch_core::tags::{TAG_CLUSTER, TAG_LEASE_END};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use blockwatch_testkit::instance::{tags, Instance};

/// Decodes one native-protocol datagram: `KEY=value\n`, or `KEY\n` + a
/// little-endian u64 length + value + `\n` for values with newlines.
fn parse_entry(mut data: &[u8]) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    while !data.is_empty() {
        let line_end = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
        let line = &data[..line_end];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            fields.insert(
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            );
            data = &data[(line_end + 1).min(data.len())..];
        } else {
            let key = String::from_utf8_lossy(line).into_owned();
            let rest = &data[line_end + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            fields.insert(key, String::from_utf8_lossy(&rest[8..8 + len]).into_owned());
            data = &rest[(8 + len + 1).min(rest.len())..];
        }
    }
    fields
}

fn assert_root() {
    assert!(
        std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout == b"0\n")
            .unwrap_or(false),
        "this test needs root for a private mount namespace"
    );
}

/// The journal as systemd would set it up: a private mount namespace whose
/// /run/systemd/journal/socket is `socket_path`, and `JOURNAL_STREAM` naming
/// the child's stderr (the file `stderr_path`).
fn under_journal(
    command: &std::process::Command,
    socket_path: &std::path::Path,
    stderr_path: &std::path::Path,
) -> std::process::Command {
    let stderr = std::fs::File::create(stderr_path).unwrap();
    let meta = stderr.metadata().unwrap();
    let mut wrapped = std::process::Command::new("unshare");
    wrapped
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && touch /run/systemd/journal/socket && mount --bind "$0" /run/systemd/journal/socket && exec "$@""#)
        .arg(socket_path)
        .arg(command.get_program())
        .args(command.get_args())
        .env_clear()
        .envs(command.get_envs().filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))))
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stderr(stderr);
    wrapped
}

fn drain_entries(socket: &UnixDatagram) -> Vec<BTreeMap<String, String>> {
    let mut entries = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    socket.set_nonblocking(true).unwrap();
    while let Ok(n) = socket.recv(&mut buffer) {
        entries.push(parse_entry(&buffer[..n]));
    }
    entries
}

/// `blockwatch join <extra>` under the journal, which must succeed: its
/// journal entries and its stderr.
fn join_under_journal(
    instance: &Instance,
    extra: &[&str],
) -> (Vec<BTreeMap<String, String>>, String) {
    let socket_path = instance.root.path().join("journal.socket");
    let _ = std::fs::remove_file(&socket_path);
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let stderr_path = instance.root.path().join("stderr");
    let mut command = instance.join_command();
    command.args(extra);

    let status = under_journal(&command, &socket_path, &stderr_path)
        .status()
        .unwrap();

    let stderr_text = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(status.success(), "{status}: {stderr_text}");
    (drain_entries(&socket), stderr_text)
}

#[tokio::test]
async fn join_sends_structured_fields_to_the_journal() {
    assert_root();
    let instance = Instance::without_aws();
    instance
        .imds
        .update(|s| s.tags = tags(&[(TAG_CLUSTER, "journal-cluster")]));

    let (entries, stderr_text) = join_under_journal(&instance, &[]);

    assert!(
        !entries.is_empty(),
        "nothing reached the journal; stderr: {stderr_text}"
    );
    assert!(
        !stderr_text.contains("effective configuration"),
        "logs go to the journal, not stderr"
    );
    let decision = entries
        .iter()
        .find(|e| e.get("MESSAGE").is_some_and(|m| m.contains("created")))
        .unwrap_or_else(|| panic!("no decision entry in {entries:?}"));
    assert_eq!(
        decision.get("CLUSTER").map(String::as_str),
        Some("journal-cluster")
    );
    assert_eq!(decision.get("SOURCE").map(String::as_str), Some("tag"));
    assert_eq!(
        decision.get("INSTANCE_ID").map(String::as_str),
        Some("i-0123456789abcdef0")
    );
    assert_eq!(
        decision.get("SYSLOG_IDENTIFIER").map(String::as_str),
        Some("blockwatch")
    );
    // systemd-journal-logger maps log::Level::Info to NOTICE (5).
    assert_eq!(decision.get("PRIORITY").map(String::as_str), Some("5"));
}

#[tokio::test]
async fn run_decisions_carry_phase_and_deadline_fields() {
    assert_root();
    let instance = Instance::with_moto().await;
    let cluster_arn = instance.moto().create_cluster("jobs").await.unwrap();
    let end = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap()
        + time::Duration::seconds(3);
    let end_text = blockwatch_core::time_text::rfc3339(end);
    let id = instance
        .launch(&[(TAG_CLUSTER, "jobs"), (TAG_LEASE_END, &end_text)], true)
        .await;
    instance
        .moto()
        .register_container_instance(&cluster_arn, &id)
        .await
        .unwrap();
    instance.write_config("poll_interval = \"1s\"\ndrain_lead = \"10s\"\n");
    let socket_path = instance.root.path().join("journal.socket");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let stderr_path = instance.root.path().join("stderr");
    let command = instance.run_command(&[]);

    let mut child = under_journal(&command, &socket_path, &stderr_path)
        .spawn()
        .unwrap();
    // A bound passing runs never reach (the lease is already within the lead).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !instance
        .snapshot()
        .is_some_and(|s| s["drain"]["draining_confirmed_at"].is_string())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no drain; stderr: {}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();

    let entries = drain_entries(&socket);
    let drained = entries
        .iter()
        .find(|e| e.get("MESSAGE").is_some_and(|m| m.contains("DRAINING")))
        .unwrap_or_else(|| panic!("no DRAINING entry in {entries:?}"));
    assert_eq!(drained.get("PHASE").map(String::as_str), Some("draining"));
    assert_eq!(
        drained.get("DEADLINE").map(String::as_str),
        Some(end_text.as_str())
    );
    assert_eq!(
        drained.get("DEADLINE_SOURCE").map(String::as_str),
        Some("lease")
    );
    assert_eq!(drained.get("CLUSTER").map(String::as_str), Some("jobs"));
    assert_eq!(
        drained.get("INSTANCE_ID").map(String::as_str),
        Some(id.as_str())
    );
}

#[tokio::test]
async fn the_log_level_decides_what_reaches_the_journal() {
    assert_root();
    let instance = Instance::without_aws();
    instance
        .imds
        .update(|s| s.tags = tags(&[(TAG_CLUSTER, "journal-cluster")]));
    let priorities = |extra: &[&str]| -> Vec<String> {
        let (entries, _) = join_under_journal(&instance, extra);
        entries
            .iter()
            .map(|e| e.get("PRIORITY").cloned().unwrap_or_default())
            .collect()
    };

    // systemd-journal-logger maps Info to 5 (notice) and Debug to 6 (info).
    let default = priorities(&[]);
    assert!(default.iter().any(|p| p == "5"), "{default:?}");
    assert!(!default.iter().any(|p| p == "6"), "{default:?}");
    let debug = priorities(&["--log-level", "debug"]);
    assert!(debug.iter().any(|p| p == "6"), "{debug:?}");
    let warn = priorities(&["--log-level", "warn"]);
    assert!(
        warn.iter().all(|p| p.as_str() < "5"),
        "no info or debug entry at warn: {warn:?}"
    );
}
