//! The fault matrix: what blockwatch does when things go wrong. Each case
//! names its family (`join_input::…`, `imds::…`, `aws_join::…`, `aws_run::…`,
//! `process::…`, `security::…`, `tls::…`) and asserts what must hold: nothing lost,
//! nothing written that should not be, the right exit code, and a message an
//! operator can act on. `cargo nextest run --test faults` prints one line per
//! case and a summary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod aws_join;
mod aws_run;
mod imds;
mod join_input;
mod process;
mod security;
mod tls;

/// Helpers several families share.
pub(crate) mod shared {
    use blockwatch_testkit::instance::{tags, Instance, Run};

    pub(crate) use blockwatch_core::tags::TAG_CLUSTER as CLUSTER_TAG;

    /// Tags the instance, in IMDS, with cluster `value`.
    pub(crate) fn cluster_tag(instance: &Instance, value: &str) {
        instance
            .imds
            .update(|s| s.tags = tags(&[(CLUSTER_TAG, value)]));
    }

    /// The run's `blockwatch: error:` lines.
    pub(crate) fn error_lines(run: &Run) -> Vec<&str> {
        run.stderr
            .lines()
            .filter(|l| l.starts_with("blockwatch: error:"))
            .collect()
    }

    /// Exactly one error line, containing every needle.
    pub(crate) fn assert_one_error(run: &Run, needles: &[&str]) {
        let errors = error_lines(run);
        assert_eq!(errors.len(), 1, "{}", run.stderr);
        for needle in needles {
            assert!(
                errors[0].contains(needle),
                "{needle:?} missing: {}",
                run.stderr
            );
        }
    }

    /// Joins cluster `c1` (tagged, no AWS) over an ecs.config holding
    /// `before`; the join must succeed.
    pub(crate) fn joined_over(before: &[u8]) -> (Instance, Run) {
        let instance = Instance::without_aws();
        cluster_tag(&instance, "c1");
        instance.write_ecs_config(before);

        let run = instance.join(&[]);

        assert_eq!(run.code, 0, "{}", run.stderr);
        (instance, run)
    }
}
