//! Durations and instants as blockwatch reads and writes them: humantime
//! durations (`10m`), RFC 3339 instants, and the one formatter for instants.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use time::OffsetDateTime;

/// The longest duration any setting or tag may hold.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// A humantime duration such as `10m` or `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl std::str::FromStr for HumanDuration {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let parsed = humantime::parse_duration(text.trim())
            .map_err(|e| format!("{text:?} is not a duration like 10m or 1h30m ({e})"))?;
        // Bounded so that no date arithmetic can overflow.
        if parsed > MAX_DURATION {
            return Err(format!("{text:?} is longer than a year"));
        }
        Ok(Self(parsed))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// An RFC 3339 instant; TOML may give it as a string or as a native datetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub OffsetDateTime);

impl std::str::FromStr for Timestamp {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        OffsetDateTime::parse(text.trim(), &time::format_description::well_known::Rfc3339)
            .map(Self)
            .map_err(|_| format!("{text:?} is not an RFC 3339 time like 2026-01-31T15:00:00Z"))
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Toml(toml::value::Datetime),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Text(text) => text,
            Raw::Toml(datetime) => datetime.to_string(),
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `2026-01-31T15:00:00Z`: how every instant is written in logs, state and output.
pub fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&rfc3339(self.0))
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn instants_are_written_as_rfc3339_with_the_fraction_only_when_there_is_one() {
        assert_eq!(
            rfc3339(datetime!(2026-01-31 15:00:00 UTC)),
            "2026-01-31T15:00:00Z"
        );
        assert_eq!(
            rfc3339(datetime!(2026-01-31 15:00:00.25 UTC)),
            "2026-01-31T15:00:00.25Z"
        );
        let text = "2026-01-31T15:00:00Z";
        assert_eq!(
            text.parse::<Timestamp>().map(|t| t.to_string()),
            Ok(text.to_owned())
        );
    }
}
