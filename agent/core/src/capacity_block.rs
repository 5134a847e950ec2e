//! The lease of an instance launched into an EC2 Capacity Block.

use std::time::Duration;

use time::OffsetDateTime;

use crate::deadline::capacity_block_termination_starts;

/// When the lease of an instance launched at `now` for `duration` into a
/// Capacity Block that ends at `end_date` ends: EC2 starts terminating the
/// block's instances [`CAPACITY_BLOCK_TERMINATION_LEAD`] before `EndDate`, so
/// the lease ends then, or after `duration` if that is sooner.
///
/// [`CAPACITY_BLOCK_TERMINATION_LEAD`]: crate::deadline::CAPACITY_BLOCK_TERMINATION_LEAD
pub fn lease_end(
    end_date: OffsetDateTime,
    duration: Duration,
    now: OffsetDateTime,
) -> OffsetDateTime {
    // A duration too long to represent never ends the lease early: the
    // block's own end still does.
    let by_duration =
        now.saturating_add(time::Duration::try_from(duration).unwrap_or(time::Duration::MAX));
    capacity_block_termination_starts(end_date).min(by_duration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-03-01 12:00:00 UTC);
    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn the_lease_ends_thirty_minutes_before_the_block_when_the_duration_runs_past_it() {
        let end_date = datetime!(2026-03-01 14:00:00 UTC);
        assert_eq!(
            lease_end(end_date, 3 * HOUR, NOW),
            datetime!(2026-03-01 13:30:00 UTC)
        );
    }

    #[test]
    fn a_shorter_duration_ends_the_lease_first() {
        let end_date = datetime!(2026-03-02 00:00:00 UTC);
        assert_eq!(
            lease_end(end_date, HOUR, NOW),
            datetime!(2026-03-01 13:00:00 UTC)
        );
    }

    #[test]
    fn a_block_ending_within_thirty_minutes_gives_a_lease_already_over() {
        let end_date = datetime!(2026-03-01 12:10:00 UTC);
        assert_eq!(
            lease_end(end_date, HOUR, NOW),
            datetime!(2026-03-01 11:40:00 UTC)
        );
    }
}
