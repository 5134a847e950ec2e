//! Every key of `/etc/blockwatch/blockwatch.toml`, with its value form, its
//! default and what it does: the one table that `blockwatch.toml(5)` is
//! rendered from. Unit tests hold it to `FileConfig` (the parser) and to the
//! shipped `packaging/blockwatch.toml`, so none of the three can drift.

/// One key of the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigKey {
    pub name: &'static str,
    /// What the value looks like, e.g. `duration` or `"none" | "poweroff"`.
    pub value: &'static str,
    /// The default as a TOML value, as the shipped file writes it; `None`
    /// when an unset key means "off" or "from elsewhere" (`unset` says which).
    pub default: Option<&'static str>,
    /// What an unset key means when there is no default value.
    pub unset: &'static str,
    /// One paragraph, for the man page.
    pub description: &'static str,
}

const DURATION: &str = "duration (humantime: \"90s\", \"10m\", \"1h 30m\")";
const BOOL: &str = "true | false";

/// The keys in the order the shipped file and the man page list them.
pub const CONFIG_KEYS: &[ConfigKey] = &[
    ConfigKey {
        name: "compute_environment",
        value: "string (name or ARN)",
        default: None,
        unset: "the instance tag blockwatch:compute-environment",
        description: "The AWS Batch UNMANAGED compute environment to join. `blockwatch join` asks \
            Batch for its ECS cluster. A `cluster` in the same source wins, as it needs no Batch call.",
    },
    ConfigKey {
        name: "cluster",
        value: "string (ECS cluster name or ARN)",
        default: None,
        unset: "the instance tag blockwatch:cluster",
        description: "The ECS cluster to join, used as is.",
    },
    ConfigKey {
        name: "lease_end",
        value: "RFC 3339 time (2026-01-31T15:00:00Z), as a TOML datetime or a string",
        default: None,
        unset: "the instance tags blockwatch:lease-end, then blockwatch:lease-duration; else no lease",
        description: "When this instance's lease ends. blockwatch drains `drain_lead` before it, \
            and `on_lease_end` says what the end does. Set here, the lease cannot be moved by tags.",
    },
    ConfigKey {
        name: "lease_duration",
        value: DURATION,
        default: None,
        unset: "as for lease_end",
        description: "The lease as a duration counted from the instance's launch (IMDS \
            pendingTime). `lease_end` wins when both are set.",
    },
    ConfigKey {
        name: "drain_lead",
        value: DURATION,
        default: Some("\"10m\""),
        unset: "",
        description: "How long before the end the ECS container instance is set to DRAINING.",
    },
    ConfigKey {
        name: "drain_on_rebalance",
        value: BOOL,
        default: Some("false"),
        unset: "",
        description: "Also drain on an EC2 rebalance recommendation.",
    },
    ConfigKey {
        name: "drain_on_maintenance",
        value: BOOL,
        default: Some("true"),
        unset: "",
        description: "Drain for scheduled reboots and maintenance events. They never power off; \
            the instance is ACTIVE again when the event completes.",
    },
    ConfigKey {
        name: "poll_interval",
        value: DURATION,
        default: Some("\"1s\""),
        unset: "",
        description: "How often IMDS notices are polled (at least 100ms).",
    },
    ConfigKey {
        name: "drain_poll_interval",
        value: DURATION,
        default: Some("\"15s\""),
        unset: "",
        description: "How often running tasks are counted while draining (at least 100ms).",
    },
    ConfigKey {
        name: "stop_grace",
        value: DURATION,
        default: None,
        unset: "off: nothing is stopped before the end",
        description: "Stop the tasks still running this long before the end. Not with \
            `stop_tasks = false`.",
    },
    ConfigKey {
        name: "job_stop_timeout",
        value: "duration in whole seconds, at least 1s",
        default: None,
        unset: "off: the ECS agent's 30 s",
        description: "The time a stopped job gets between SIGTERM and SIGKILL, to checkpoint and \
            exit. `blockwatch join` writes it as ECS_CONTAINER_STOP_TIMEOUT=<n>s into ecs.config, \
            and every stop blockwatch makes (stop_grace, the lease end) starts this plus a 10 s \
            margin before the end. The timeout plus 10 s must be shorter than `drain_lead`; else \
            the file is refused (exit 78).",
    },
    ConfigKey {
        name: "checkpoint_lead",
        value: DURATION,
        default: None,
        unset: "off: no job is signaled",
        description: "How long before the end opted-in jobs get their checkpoint signal. A container             opts in with the environment variable BLOCKWATCH_CHECKPOINT_SIGNAL (SIGUSR1, SIGUSR2,             SIGHUP, SIGINT or SIGTERM; a Batch job definition's `environment`). The signal goes once             per end, at `stop_at` less this (at the deadline less this when nothing will be             stopped), at once when the end is learned later than that, and again when the end moves             earlier. Containers are found through the ECS agent's introspection API and signaled             through Docker (DOCKER_HOST, else /var/run/docker.sock).",
    },
    ConfigKey {
        name: "lifecycle_hook",
        value: "a lifecycle hook name",
        default: None,
        unset: "found: the group's termination hook, through DescribeLifecycleHooks",
        description: "The Auto Scaling termination lifecycle hook (autoscaling:EC2_INSTANCE_TERMINATING) \
            blockwatch completes when Auto Scaling terminates the instance. While it drains and its \
            jobs stop, blockwatch records a heartbeat every half heartbeat timeout (never past the \
            hook's global timeout); it completes the hook with CONTINUE once nothing runs, at \
            another signal's end, or one half heartbeat timeout before the global timeout. The \
            group comes from the instance tag aws:autoscaling:groupName in IMDS, else from \
            DescribeAutoScalingInstances.",
    },
    ConfigKey {
        name: "stop_tasks",
        value: BOOL,
        default: Some("true"),
        unset: "",
        description: "Whether blockwatch stops tasks (ecs:StopTask) at `stop_grace` and at a \
            lease's end. With false nothing is ever stopped: the jobs still running at the end \
            end with the instance, as at a spot interruption, and the power-off comes at the \
            lease end. Not with `stop_grace`.",
    },
    ConfigKey {
        name: "on_drained",
        value: "\"none\" | \"poweroff\"",
        default: Some("\"none\""),
        unset: "",
        description: "What to do once drained, whatever the deadline.",
    },
    ConfigKey {
        name: "on_lease_end",
        value: "\"poweroff\" | \"none\"",
        default: Some("\"poweroff\""),
        unset: "",
        description: "What a lease's (or a Capacity Block's) end does. \"poweroff\" powers off as \
            soon as the instance is drained before the end; at the end it stops the tasks still \
            running and powers off once they have stopped, or 2 minutes after the end whatever \
            runs. \"none\" drains only: the instance keeps running (and billing). Spot \
            interruptions and scheduled events are ended by AWS and never power off here.",
    },
    ConfigKey {
        name: "poweroff_command",
        value: "string, run with /bin/sh -c as root",
        default: Some("\"systemctl --no-block poweroff\""),
        unset: "",
        description: "The power-off, retried (5 s, doubling) until it succeeds. It terminates the \
            instance only if it was launched with InstanceInitiatedShutdownBehavior=terminate \
            (blockwatch-launch does; the agent warns at start when it is \"stop\").",
    },
    ConfigKey {
        name: "lease_refresh_interval",
        value: DURATION,
        default: Some("\"1m\""),
        unset: "",
        description: "How often the lease tags and the launch time are read again from IMDS (no \
            AWS call): a changed tag moves the drain and the end within this interval.",
    },
    ConfigKey {
        name: "capacity_block_refresh_interval",
        value: DURATION,
        default: Some("\"30m\""),
        unset: "",
        description: "How often a Capacity Block's EndDate is asked again from EC2 \
            (DescribeCapacityReservations); at most every 5 minutes within its last 2 hours, so \
            an extension is followed.",
    },
    ConfigKey {
        name: "webhook_url",
        value: "string (URL)",
        default: None,
        unset: "off",
        description: "POST a JSON event here when a drain starts, ends or is canceled. The URL is \
            never logged: it may carry a secret.",
    },
    ConfigKey {
        name: "metrics_file",
        value: "path",
        default: None,
        unset: "off",
        description: "A Prometheus textfile for node_exporter's textfile collector. Under the \
            shipped unit (ProtectSystem=strict) only /var/lib/node_exporter/textfile_collector \
            is writable, and it must exist when blockwatch.service starts.",
    },
    ConfigKey {
        name: "dry_run",
        value: BOOL,
        default: Some("false"),
        unset: "",
        description: "Log every action and change nothing. `--dry-run` on the command line turns \
            it on too.",
    },
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde::de::{self, Deserialize, Visitor};

    use super::*;
    use crate::file_model::tests::{parse, path};
    use crate::file_model::FileConfig;
    use crate::settings::Settings;

    /// A deserializer that only records the field names a struct asks for:
    /// with `deny_unknown_fields`, exactly the keys `FileConfig` accepts.
    struct FieldNames(&'static [&'static str]);

    impl<'de> de::Deserializer<'de> for &mut FieldNames {
        type Error = de::value::Error;

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            self.0 = fields;
            Err(de::Error::custom("field names only"))
        }

        fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    fn table_keys() -> BTreeSet<&'static str> {
        CONFIG_KEYS.iter().map(|key| key.name).collect()
    }

    #[test]
    fn the_table_lists_exactly_the_keys_the_parser_accepts() {
        let mut fields = FieldNames(&[]);
        assert!(FileConfig::deserialize(&mut fields).is_err());
        let accepted: BTreeSet<_> = fields.0.iter().copied().collect();
        assert!(!accepted.is_empty());
        assert_eq!(table_keys(), accepted);
        assert_eq!(table_keys().len(), CONFIG_KEYS.len(), "a key listed twice");
    }

    /// The commented `#key = value` lines of the shipped file.
    fn shipped_keys() -> Vec<(&'static str, &'static str)> {
        include_str!("../../../packaging/blockwatch.toml")
            .lines()
            .filter_map(|line| {
                let (key, value) = line.strip_prefix('#')?.split_once('=')?;
                let key = key.trim_end();
                let is_key = key.starts_with(|c: char| c.is_ascii_lowercase())
                    && key.chars().all(|c| c.is_ascii_lowercase() || c == '_');
                let value = value.split(" #").next().unwrap_or(value).trim();
                is_key.then_some((key, value))
            })
            .collect()
    }

    #[test]
    fn the_shipped_file_shows_every_key_once_at_its_default() {
        let shipped = shipped_keys();
        let names: BTreeSet<_> = shipped.iter().map(|(key, _)| *key).collect();
        assert_eq!(names, table_keys());
        assert_eq!(names.len(), shipped.len(), "a key shown twice: {shipped:?}");
        for key in CONFIG_KEYS {
            if let Some(default) = key.default {
                let value = shipped.iter().find(|(name, _)| *name == key.name);
                assert_eq!(value.map(|(_, v)| *v), Some(default), "{}", key.name);
            }
        }
    }

    #[test]
    fn each_key_has_a_default_or_says_what_unset_means_and_a_description() {
        for key in CONFIG_KEYS {
            assert_ne!(key.default.is_some(), !key.unset.is_empty(), "{}", key.name);
            assert!(
                !key.description.is_empty() && !key.value.is_empty(),
                "{}",
                key.name
            );
        }
    }

    /// The defaults in the table are the ones `Settings` applies: a file
    /// that sets every key to its listed default resolves to the same values.
    #[test]
    fn the_listed_defaults_are_the_applied_ones() {
        let text: String = CONFIG_KEYS
            .iter()
            .filter_map(|key| Some(format!("{} = {}\n", key.name, key.default?)))
            .collect();
        let (set, _) = Settings::resolve(&parse(&text), &path(), None, false);
        let (unset, _) = Settings::resolve(&FileConfig::default(), &path(), None, false);
        macro_rules! same {
            ($($field:ident),* $(,)?) => {{
                $(assert_eq!(set.$field.value, unset.$field.value, stringify!($field));)*
                [$(stringify!($field)),*].len()
            }};
        }
        let compared = same!(
            drain_lead,
            drain_on_rebalance,
            drain_on_maintenance,
            poll_interval,
            drain_poll_interval,
            stop_tasks,
            on_drained,
            on_lease_end,
            poweroff_command,
            lease_refresh_interval,
            capacity_block_refresh_interval,
            dry_run,
        );
        let with_default = CONFIG_KEYS.iter().filter(|k| k.default.is_some()).count();
        assert_eq!(compared, with_default, "compare every defaulted key above");
    }
}
