//! Where each setting came from, and the precedence between sources:
//! config file > instance tags > discovered via AWS APIs > defaults.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::file_model::FileConfig;
use crate::tags::{InstanceTags, TagChannel, TAG_CLUSTER, TAG_COMPUTE_ENVIRONMENT};

/// Where a setting came from; logged next to every effective value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    ConfigFile(PathBuf),
    CommandLine,
    InstanceTag {
        key: &'static str,
        channel: TagChannel,
    },
    Discovered(&'static str),
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ConfigFile(path) => write!(f, "config file {}", path.display()),
            Self::CommandLine => f.write_str("command line"),
            Self::InstanceTag {
                key,
                channel: TagChannel::Imds,
            } => {
                write!(f, "instance tag {key} (IMDS)")
            }
            Self::InstanceTag {
                key,
                channel: TagChannel::DescribeTags,
            } => {
                write!(f, "instance tag {key} (ec2:DescribeTags)")
            }
            Self::Discovered(api) => write!(f, "discovered via {api}"),
            Self::Default => f.write_str("default"),
        }
    }
}

impl Origin {
    /// A short machine-friendly name for journald's `SOURCE` field.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ConfigFile(_) => "config",
            Self::CommandLine => "cli",
            Self::InstanceTag { .. } => "tag",
            Self::Discovered(_) => "discovered",
            Self::Default => "default",
        }
    }
}

/// A value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sourced<T> {
    pub value: T,
    pub origin: Origin,
}

impl<T> Sourced<T> {
    pub fn new(value: T, origin: Origin) -> Self {
        Self { value, origin }
    }
}

impl Sourced<String> {
    /// The value of tag `key`, if the instance has it.
    pub(crate) fn from_tag(tags: &InstanceTags, key: &'static str) -> Option<Self> {
        tags.values.get(key).map(|value| {
            Self::new(
                value.clone(),
                Origin::InstanceTag {
                    key,
                    channel: tags.channel,
                },
            )
        })
    }
}

/// How the join finds its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterTarget {
    /// A cluster given outright; Batch is not asked.
    Cluster(Sourced<String>),
    /// A compute environment whose `ecsClusterArn` names the cluster.
    ComputeEnvironment(Sourced<String>),
}

/// Neither the config file nor the tags say which cluster to join.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no cluster source: set `cluster` or `compute_environment` in {config}, or tag the instance with {TAG_CLUSTER} or {TAG_COMPUTE_ENVIRONMENT}{tags_note}")]
pub struct NoClusterSource {
    pub config: String,
    pub tags_note: &'static str,
}

/// The highest-precedence source that names a cluster or a compute
/// environment decides; within one source an explicit cluster wins, since it
/// needs no Batch call. Returns the choice and any lower-precedence values it
/// overrides, so they can be logged.
pub fn choose_cluster_target(
    file: &FileConfig,
    file_path: &Path,
    tags: Option<&InstanceTags>,
) -> Result<(ClusterTarget, Vec<Sourced<String>>), NoClusterSource> {
    let from_file = |value: &Option<String>| {
        value
            .clone()
            .map(|v| Sourced::new(v, Origin::ConfigFile(file_path.to_owned())))
    };
    let from_tag = |key| tags.and_then(|t| Sourced::from_tag(t, key));
    let candidates = [
        from_file(&file.cluster).map(ClusterTarget::Cluster),
        from_file(&file.compute_environment).map(ClusterTarget::ComputeEnvironment),
        from_tag(TAG_CLUSTER).map(ClusterTarget::Cluster),
        from_tag(TAG_COMPUTE_ENVIRONMENT).map(ClusterTarget::ComputeEnvironment),
    ];
    let mut found = candidates.into_iter().flatten();
    match found.next() {
        Some(chosen) => {
            let overridden = found
                .map(|target| match target {
                    ClusterTarget::Cluster(s) | ClusterTarget::ComputeEnvironment(s) => s,
                })
                .collect();
            Ok((chosen, overridden))
        }
        None => Err(NoClusterSource {
            config: file_path.display().to_string(),
            tags_note: if tags.is_some() {
                ""
            } else {
                " (instance tags could not be read)"
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file_model::tests::{parse, path};
    use crate::tags::tests::tags;

    fn target(file: &FileConfig, tags: Option<&InstanceTags>) -> ClusterTarget {
        match choose_cluster_target(file, &path(), tags) {
            Ok((t, _)) => t,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn config_file_beats_tags() {
        let file = parse(r#"compute_environment = "from-file""#);
        let t = tags(&[
            (TAG_CLUSTER, "from-tag"),
            (TAG_COMPUTE_ENVIRONMENT, "ce-tag"),
        ]);
        let (chosen, overridden) = match choose_cluster_target(&file, &path(), Some(&t)) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(
            chosen,
            ClusterTarget::ComputeEnvironment(Sourced::new(
                "from-file".into(),
                Origin::ConfigFile(path())
            ))
        );
        assert_eq!(overridden.len(), 2);
    }

    #[test]
    fn explicit_cluster_beats_compute_environment_within_a_source() {
        let file = parse("cluster = \"c\"\ncompute_environment = \"ce\"");
        assert!(matches!(target(&file, None), ClusterTarget::Cluster(s) if s.value == "c"));
        let t = tags(&[(TAG_COMPUTE_ENVIRONMENT, "ce"), (TAG_CLUSTER, "c")]);
        assert!(matches!(
            target(&FileConfig::default(), Some(&t)),
            ClusterTarget::Cluster(Sourced {
                origin: Origin::InstanceTag {
                    key: TAG_CLUSTER,
                    ..
                },
                ..
            })
        ));
    }

    #[test]
    fn tags_are_used_when_the_file_is_silent() {
        let t = InstanceTags {
            channel: TagChannel::DescribeTags,
            ..tags(&[(TAG_COMPUTE_ENVIRONMENT, "ce")])
        };
        let chosen = target(&parse(r#"drain_lead = "5m""#), Some(&t));
        let ClusterTarget::ComputeEnvironment(ce) = chosen else {
            panic!("expected a CE")
        };
        assert_eq!(
            ce.origin.to_string(),
            "instance tag blockwatch:compute-environment (ec2:DescribeTags)"
        );
    }

    #[test]
    fn no_source_is_an_error_that_says_what_to_set() {
        let err = choose_cluster_target(&FileConfig::default(), &path(), Some(&tags(&[])));
        let text = err.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            text.contains("blockwatch:compute-environment") && text.contains("compute_environment"),
            "{text}"
        );
    }
}
