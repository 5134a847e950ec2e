//! The content of `/etc/ecs/ecs.config`, read the way ecs-init reads it.
//!
//! ecs-init trims each line and splits it at the first `=`; quotes are kept,
//! `#` is not a comment, and the last duplicate wins. We own `ECS_CLUSTER`
//! and, when `job_stop_timeout` is set, `ECS_CONTAINER_STOP_TIMEOUT`, and
//! leave every other line alone.

use super::cluster::ClusterName;

pub const CLUSTER_KEY: &str = "ECS_CLUSTER";

/// The file as it should be after setting the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewrite {
    /// The file already says exactly this; leave it alone.
    Unchanged,
    /// Write these bytes.
    Replace(Vec<u8>),
}

/// The value ecs-init would read for `ECS_CLUSTER`, if any (the last one
/// wins), with any byte that is not UTF-8 shown as U+FFFD.
pub fn current_cluster(existing: &[u8]) -> Option<String> {
    current_value(existing, CLUSTER_KEY)
}

/// Sets `ECS_CLUSTER=<cluster>` in `existing` (`None` when the file is absent).
///
/// Every line whose key is `ECS_CLUSTER` (quoted, CRLF, duplicated, or with
/// spaces around the `=`) is replaced by a single plain line at the place of
/// the first one; other lines keep their bytes and order, whether or not
/// they are UTF-8. Line endings become LF and the file ends with a newline.
pub fn set_cluster(existing: Option<&[u8]>, cluster: &ClusterName) -> Rewrite {
    set_keys(existing, &[(CLUSTER_KEY, cluster.as_str())])
}

/// The ECS agent's SIGTERM-to-SIGKILL time for a stopped container.
pub const STOP_TIMEOUT_KEY: &str = "ECS_CONTAINER_STOP_TIMEOUT";

/// Sets each `KEY=value` of `wanted` in `existing`, by the rules of
/// [`set_cluster`]: every line of a key (quoted, CRLF, duplicated, spaced)
/// becomes one plain line at the place of its first; a key not yet in the
/// file is appended, in the order given; other lines keep their bytes.
/// Keys and values are the caller's, already checked to be one line.
pub fn set_keys(existing: Option<&[u8]>, wanted: &[(&str, &str)]) -> Rewrite {
    let line_of = |key: &str, value: &str| format!("{key}={value}");
    let mut rendered = Vec::with_capacity(existing.map_or(0, <[u8]>::len) + 64);
    let mut placed = vec![false; wanted.len()];
    for line in existing.map(lines).into_iter().flatten() {
        let ours = key_value(line).and_then(|(key, _)| {
            wanted
                .iter()
                .position(|(wanted_key, _)| is_key(key, wanted_key))
        });
        match ours {
            None => {
                rendered.extend_from_slice(line);
                rendered.push(b'\n');
            }
            Some(index) if !placed[index] => {
                let (key, value) = wanted[index];
                rendered.extend_from_slice(line_of(key, value).as_bytes());
                rendered.push(b'\n');
                placed[index] = true;
            }
            Some(_) => {}
        }
    }
    for ((key, value), placed) in wanted.iter().zip(placed) {
        if !placed {
            rendered.extend_from_slice(line_of(key, value).as_bytes());
            rendered.push(b'\n');
        }
    }
    match existing {
        Some(bytes) if bytes == rendered.as_slice() => Rewrite::Unchanged,
        _ => Rewrite::Replace(rendered),
    }
}

/// The value ecs-init would read for `key`, if any (the last one wins).
pub fn current_value(existing: &[u8], key: &str) -> Option<String> {
    lines(existing)
        .rev()
        .filter_map(key_value)
        .find(|(found, _)| is_key(found, key))
        .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
}

/// The lines of `bytes`, without their `\n` or `\r\n`; an empty file has none.
fn lines(bytes: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let empty = bytes.is_empty();
    body.split(|b| *b == b'\n')
        .filter(move |_| !empty)
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
}

/// ecs-init's reading of a line: trimmed, split at the first `=`.
fn key_value(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let line = line.trim_ascii();
    let at = line.iter().position(|b| *b == b'=')?;
    Some((&line[..at], &line[at + 1..]))
}

const UTF8_BOM: &[u8] = b"\xef\xbb\xbf";

/// ecs-init keeps `KEY = v` as the key `"KEY "`, and a byte order mark as
/// part of the first key; we still treat both as ours so that no line that
/// looks like one of our settings survives next to ours.
fn is_key(found: &[u8], key: &str) -> bool {
    let found = found.strip_prefix(UTF8_BOM).unwrap_or(found);
    found.trim_ascii() == key.as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(name: &str) -> ClusterName {
        match ClusterName::parse(name) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    fn rewritten(existing: Option<&str>, name: &str) -> String {
        match set_cluster(existing.map(str::as_bytes), &cluster(name)) {
            Rewrite::Replace(bytes) => String::from_utf8(bytes).unwrap_or_default(),
            Rewrite::Unchanged => existing.unwrap_or_default().to_owned(),
        }
    }

    #[test]
    fn creates_content_for_a_missing_file() {
        assert_eq!(rewritten(None, "c1"), "ECS_CLUSTER=c1\n");
    }

    #[test]
    fn appends_when_the_key_is_absent_and_keeps_other_lines() {
        let before = "ECS_ENABLE_TASK_IAM_ROLE=true\n# note\n\nECS_LOGLEVEL=debug";
        assert_eq!(
            rewritten(Some(before), "c1"),
            "ECS_ENABLE_TASK_IAM_ROLE=true\n# note\n\nECS_LOGLEVEL=debug\nECS_CLUSTER=c1\n"
        );
    }

    #[test]
    fn replaces_quoted_crlf_and_duplicate_lines_with_one_plain_line_in_place() {
        let before = "A=1\r\nECS_CLUSTER=\"old\"\r\nB=2\r\n  ECS_CLUSTER=older  \r\nECS_CLUSTER = spaced\r\nC=3\r\n";
        assert_eq!(
            rewritten(Some(before), "new"),
            "A=1\nECS_CLUSTER=new\nB=2\nC=3\n"
        );
    }

    #[test]
    fn keeps_keys_that_only_contain_the_name() {
        let before = "MY_ECS_CLUSTER=x\nECS_CLUSTER_X=y\n#ECS_CLUSTER=z\n";
        assert_eq!(
            rewritten(Some(before), "c1"),
            "MY_ECS_CLUSTER=x\nECS_CLUSTER_X=y\n#ECS_CLUSTER=z\nECS_CLUSTER=c1\n"
        );
    }

    #[test]
    fn a_file_that_is_already_right_is_unchanged() {
        let right = "A=1\nECS_CLUSTER=c1\n";
        assert_eq!(
            set_cluster(Some(right.as_bytes()), &cluster("c1")),
            Rewrite::Unchanged
        );
        // Right value but quoted, or CRLF, or no final newline: rewrite.
        for almost in [
            "ECS_CLUSTER=\"c1\"\n",
            "ECS_CLUSTER=c1\r\n",
            "ECS_CLUSTER=c1",
        ] {
            assert!(matches!(
                set_cluster(Some(almost.as_bytes()), &cluster("c1")),
                Rewrite::Replace(_)
            ));
        }
    }

    #[test]
    fn rewriting_is_idempotent() {
        let once = rewritten(Some("X=1\r\nECS_CLUSTER=a\r\nECS_CLUSTER=b\r\n"), "c");
        assert_eq!(
            set_cluster(Some(once.as_bytes()), &cluster("c")),
            Rewrite::Unchanged
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_survive_in_other_lines() {
        let before: &[u8] = b"A=caf\xe9\nECS_CLUSTER=old\nB=\xff\xfe\n";
        assert_eq!(
            set_cluster(Some(before), &cluster("new")),
            Rewrite::Replace(b"A=caf\xe9\nECS_CLUSTER=new\nB=\xff\xfe\n".to_vec())
        );
        assert_eq!(
            current_cluster(b"ECS_CLUSTER=\xff\n"),
            Some("\u{fffd}".into())
        );
    }

    #[test]
    fn a_byte_order_mark_is_kept_before_another_key_and_replaced_with_ours() {
        assert_eq!(
            rewritten(Some("\u{feff}A=1\n"), "c"),
            "\u{feff}A=1\nECS_CLUSTER=c\n"
        );
        assert_eq!(
            rewritten(Some("\u{feff}ECS_CLUSTER=old\nA=1\n"), "c"),
            "ECS_CLUSTER=c\nA=1\n"
        );
    }

    #[test]
    fn empty_and_blank_files() {
        assert_eq!(rewritten(Some(""), "c"), "ECS_CLUSTER=c\n");
        assert_eq!(rewritten(Some("\n"), "c"), "\nECS_CLUSTER=c\n");
    }

    fn with_stop_timeout(existing: Option<&str>, value: &str) -> String {
        let wanted = [(CLUSTER_KEY, "c"), (STOP_TIMEOUT_KEY, value)];
        match set_keys(existing.map(str::as_bytes), &wanted) {
            Rewrite::Replace(bytes) => String::from_utf8(bytes).unwrap_or_default(),
            Rewrite::Unchanged => existing.unwrap_or_default().to_owned(),
        }
    }

    #[test]
    fn the_stop_timeout_lands_once_beside_the_cluster_and_replaces_its_variants() {
        assert_eq!(
            with_stop_timeout(None, "60s"),
            "ECS_CLUSTER=c\nECS_CONTAINER_STOP_TIMEOUT=60s\n"
        );
        let before = "A=1\r\nECS_CONTAINER_STOP_TIMEOUT=\"2m\"\r\nECS_CLUSTER=old\r\n ECS_CONTAINER_STOP_TIMEOUT = 5s \r\nB=2\r\n";
        assert_eq!(
            with_stop_timeout(Some(before), "60s"),
            "A=1\nECS_CONTAINER_STOP_TIMEOUT=60s\nECS_CLUSTER=c\nB=2\n"
        );
        let once = with_stop_timeout(Some("X=1\n"), "60s");
        assert_eq!(
            set_keys(
                Some(once.as_bytes()),
                &[(CLUSTER_KEY, "c"), (STOP_TIMEOUT_KEY, "60s")]
            ),
            Rewrite::Unchanged
        );
        // Setting only the cluster leaves a hand-set stop timeout alone.
        assert_eq!(
            rewritten(Some("ECS_CONTAINER_STOP_TIMEOUT=\"2m\"\n"), "c"),
            "ECS_CONTAINER_STOP_TIMEOUT=\"2m\"\nECS_CLUSTER=c\n"
        );
        assert_eq!(
            current_value(b"ECS_CONTAINER_STOP_TIMEOUT=5s\n", STOP_TIMEOUT_KEY),
            Some("5s".into())
        );
    }

    #[test]
    fn current_cluster_follows_ecs_init_last_wins_and_keeps_quotes() {
        assert_eq!(
            current_cluster(b"ECS_CLUSTER=a\nECS_CLUSTER=\"b\"\n"),
            Some("\"b\"".into())
        );
        assert_eq!(current_cluster(b"X=1\n"), None);
    }
}
