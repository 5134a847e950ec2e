//! What may be written as `ECS_CLUSTER`: a validated ECS cluster name.

use std::fmt;

/// The tag and config value we refuse outright: writing it would make the ECS
/// agent join (and checkpoint) the account's `default` cluster.
const DEFAULT_CLUSTER: &str = "default";
const MAX_NAME_LEN: usize = 255;

/// A cluster name that is safe to write into ecs.config.
///
/// Only `[A-Za-z0-9_-]{1,255}` gets through, so no value can carry a newline,
/// a `=` or whitespace into the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterName(String);

/// Why a value cannot be used as the cluster.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCluster {
    #[error("cluster value is empty")]
    Empty,
    #[error(
        "cluster \"default\" is refused: it is the ECS agent's fallback, never a Batch cluster"
    )]
    Default,
    #[error(
        "cluster {0:?} is not a valid ECS cluster name ([A-Za-z0-9_-]{{1,255}}) or cluster ARN"
    )]
    Malformed(String),
}

impl ClusterName {
    /// Accepts a plain cluster name or an ECS cluster ARN
    /// (`arn:<partition>:ecs:<region>:<account>:cluster/<name>`); an ARN is
    /// reduced to its name, since that is what the ECS agent checkpoints.
    pub fn parse(value: &str) -> Result<Self, InvalidCluster> {
        if value.is_empty() {
            return Err(InvalidCluster::Empty);
        }
        let name = if value.starts_with("arn:") {
            name_from_arn(value).ok_or_else(|| InvalidCluster::Malformed(value.to_owned()))?
        } else {
            value
        };
        if !is_valid_name(name) {
            return Err(InvalidCluster::Malformed(value.to_owned()));
        }
        if name == DEFAULT_CLUSTER {
            return Err(InvalidCluster::Default);
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The name part of a well-formed ECS cluster ARN, or `None`.
fn name_from_arn(arn: &str) -> Option<&str> {
    let mut parts = arn.splitn(6, ':');
    let (prefix, partition, service, region, account, resource) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    let partition_ok = partition.starts_with("aws")
        && partition
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'-');
    let region_ok = !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let account_ok = account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit());
    if prefix != "arn" || !partition_ok || service != "ecs" || !region_ok || !account_ok {
        return None;
    }
    resource.strip_prefix("cluster/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names_and_batch_style_names() {
        for name in [
            "batch",
            "a",
            "my-ce_Batch_3c7b1c3e-1f2a-3b4c-9d8e-0123456789ab",
            &"x".repeat(255),
        ] {
            assert_eq!(ClusterName::parse(name).map(|c| c.0), Ok(name.to_owned()));
        }
    }

    #[test]
    fn reduces_an_arn_to_its_name() {
        let arn = "arn:aws:ecs:eu-west-1:123456789012:cluster/OnDemand_Batch_1234";
        assert_eq!(
            ClusterName::parse(arn).map(|c| c.0),
            Ok("OnDemand_Batch_1234".to_owned())
        );
        let gov = "arn:aws-us-gov:ecs:us-gov-west-1:123456789012:cluster/c1";
        assert_eq!(ClusterName::parse(gov).map(|c| c.0), Ok("c1".to_owned()));
    }

    #[test]
    fn refuses_everything_that_could_corrupt_ecs_config() {
        for bad in [
            "good\nECS_ENABLE_TASK_IAM_ROLE=false",
            "good\r\nX=1",
            "a b",
            "a=b",
            "\"quoted\"",
            "x#comment",
            &"x".repeat(256),
            "arn:aws:ecs:eu-west-1:123456789012:service/x",
            "arn:aws:ecs:eu-west-1:12345:cluster/x",
            "arn:aws:ecs:eu-west-1:123456789012:cluster/bad name",
            "arn:aws:ecs:eu-west-1:123456789012:cluster/",
        ] {
            assert!(
                matches!(ClusterName::parse(bad), Err(InvalidCluster::Malformed(_))),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn refuses_default_and_empty() {
        assert_eq!(ClusterName::parse(""), Err(InvalidCluster::Empty));
        assert_eq!(ClusterName::parse("default"), Err(InvalidCluster::Default));
        assert_eq!(
            ClusterName::parse("arn:aws:ecs:eu-west-1:123456789012:cluster/default"),
            Err(InvalidCluster::Default)
        );
    }

    #[test]
    fn error_shows_control_characters_escaped_on_one_line() {
        let err = ClusterName::parse("a\nB=1")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(!err.contains('\n'), "{err}");
        assert!(err.contains("a\\nB=1"), "{err}");
    }
}
