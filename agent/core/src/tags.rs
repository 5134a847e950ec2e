//! The instance tags blockwatch reads (`blockwatch:*`), and how they were read.

use std::collections::BTreeMap;

pub const TAG_COMPUTE_ENVIRONMENT: &str = "blockwatch:compute-environment";
pub const TAG_CLUSTER: &str = "blockwatch:cluster";
pub const TAG_LEASE_END: &str = "blockwatch:lease-end";
pub const TAG_LEASE_DURATION: &str = "blockwatch:lease-duration";
/// Every instance tag the agent reads.
pub const TAG_KEYS: [&str; 4] = [
    TAG_COMPUTE_ENVIRONMENT,
    TAG_CLUSTER,
    TAG_LEASE_END,
    TAG_LEASE_DURATION,
];

/// How the instance tags were read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagChannel {
    Imds,
    DescribeTags,
}

/// The `blockwatch:*` tags of this instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceTags {
    pub values: BTreeMap<String, String>,
    pub channel: TagChannel,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn tags(pairs: &[(&str, &str)]) -> InstanceTags {
        InstanceTags {
            values: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            channel: TagChannel::Imds,
        }
    }

    /// Operators and the launcher write these names on instances: the one
    /// place the tests spell them out; every other test uses the constants.
    #[test]
    fn the_tag_names_are_the_documented_ones() {
        assert_eq!(
            TAG_KEYS,
            [
                "blockwatch:compute-environment",
                "blockwatch:cluster",
                "blockwatch:lease-end",
                "blockwatch:lease-duration",
            ]
        );
    }
}
