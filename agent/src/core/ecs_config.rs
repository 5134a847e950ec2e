//! The content of `/etc/ecs/ecs.config`, read the way ecs-init reads it.
//!
//! ecs-init trims each line and splits it at the first `=`; quotes are kept,
//! `#` is not a comment, and the last duplicate wins. We own one key,
//! `ECS_CLUSTER`, and leave every other line alone.

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

/// The value ecs-init would read for `ECS_CLUSTER`, if any (the last one wins).
pub fn current_cluster(existing: &[u8]) -> Option<String> {
    String::from_utf8_lossy(existing)
        .lines()
        .rev()
        .filter_map(|line| line.trim().split_once('='))
        .find(|(key, _)| is_cluster_key(key))
        .map(|(_, value)| value.to_owned())
}

/// Sets `ECS_CLUSTER=<cluster>` in `existing` (`None` when the file is absent).
///
/// Every line whose key is `ECS_CLUSTER` (quoted, CRLF, duplicated, or with
/// spaces around the `=`) is replaced by a single plain line at the place of
/// the first one; other lines keep their text and order. Line endings become
/// LF and the file ends with a newline.
pub fn set_cluster(existing: Option<&[u8]>, cluster: &ClusterName) -> Rewrite {
    let ours = format!("{CLUSTER_KEY}={cluster}");
    let text = existing.map(String::from_utf8_lossy).unwrap_or_default();
    let mut lines: Vec<&str> = Vec::new();
    let mut placed = false;
    for line in text.split_terminator('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let is_ours = line
            .trim()
            .split_once('=')
            .is_some_and(|(key, _)| is_cluster_key(key));
        if !is_ours {
            lines.push(line);
        } else if !placed {
            lines.push(&ours);
            placed = true;
        }
    }
    if !placed {
        lines.push(&ours);
    }
    let mut rendered = lines.join("\n").into_bytes();
    rendered.push(b'\n');
    match existing {
        Some(bytes) if bytes == rendered.as_slice() => Rewrite::Unchanged,
        _ => Rewrite::Replace(rendered),
    }
}

/// ecs-init keeps `KEY = v` as the key `"KEY "`; we still treat it as ours so
/// that no line that looks like a cluster setting survives next to ours.
fn is_cluster_key(key: &str) -> bool {
    key.trim() == CLUSTER_KEY
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
    fn current_cluster_follows_ecs_init_last_wins_and_keeps_quotes() {
        assert_eq!(
            current_cluster(b"ECS_CLUSTER=a\nECS_CLUSTER=\"b\"\n"),
            Some("\"b\"".into())
        );
        assert_eq!(current_cluster(b"X=1\n"), None);
    }
}
