//! The IMDS notices polled every `poll_interval`: spot interruption,
//! scheduled events, Auto Scaling lifecycle and rebalance recommendation.

use serde::Deserialize;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

use super::imds::{Imds, ImdsFault};
use super::CallError;
use blockwatch_core::deadline::{Observations, ScheduledEvent, SpotAction};
use blockwatch_core::time_text::Timestamp;

pub const SPOT_INSTANCE_ACTION: &str = "/latest/meta-data/spot/instance-action";
pub const SCHEDULED_EVENTS: &str = "/latest/meta-data/events/maintenance/scheduled";
pub const TARGET_LIFECYCLE_STATE: &str = "/latest/meta-data/autoscaling/target-lifecycle-state";
pub const REBALANCE: &str = "/latest/meta-data/events/recommendations/rebalance";

/// The short names of the notice sources, as in [`NoticeError::source`].
pub const SOURCES: [&str; 4] = ["spot", "scheduled-events", "autoscaling", "rebalance"];

/// A notice path that could not be read or parsed this time.
#[derive(Debug)]
pub struct NoticeError {
    /// Short source name for logs and metrics.
    pub source: &'static str,
    pub error: CallError,
    pub failure: NoticeFailure,
}

/// Why a notice could not be read, which decides what may heal it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeFailure {
    /// IMDS refused our session token (HTTP 401): a fresh client heals it.
    TokenRefused,
    /// IMDS did not answer, or answered an error status.
    Unreachable,
    /// IMDS answered something that is not a notice: never acted upon.
    Unreadable,
}

fn unreadable(path: &str, what: &str, err: impl std::fmt::Display) -> CallError {
    CallError::Imds {
        path: path.to_owned(),
        detail: format!("unreadable {what}: {err}"),
    }
}

/// `21 Jan 2019 09:00:43 GMT`, with or without a leading zero on the day.
pub fn parse_gmt(text: &str) -> Option<OffsetDateTime> {
    let padded =
        format_description!("[day] [month repr:short] [year] [hour]:[minute]:[second] GMT");
    let unpadded = format_description!(
        "[day padding:none] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    PrimitiveDateTime::parse(text.trim(), padded)
        .or_else(|_| PrimitiveDateTime::parse(text.trim(), unpadded))
        .ok()
        .map(PrimitiveDateTime::assume_utc)
}

/// How a spot action that is not a plain word is named.
pub const UNRECOGNISED_SPOT_ACTION: &str = "unrecognised";

/// The actions EC2 documents for `spot/instance-action`.
pub const SPOT_ACTIONS: [&str; 3] = ["terminate", "stop", "hibernate"];

pub fn parse_spot_action(text: &str) -> Result<SpotAction, String> {
    #[derive(Deserialize)]
    struct Raw {
        action: String,
        time: String,
    }
    let raw: Raw = serde_json::from_str(text).map_err(|e| e.to_string())?;
    // Garbage must never drain an instance: a notice needs a valid time.
    let time = raw
        .time
        .parse::<Timestamp>()
        .map_err(|e| format!("time: {e}"))?
        .0;
    // Any instance-action document is an interruption; an action EC2 may
    // add one day drains but never powers off (core::deadline::Fate). Its
    // name is kept only when it is a plain word, for the logs and the
    // event's identity.
    let action = if SPOT_ACTIONS.contains(&raw.action.as_str()) {
        raw.action
    } else {
        let plain = !raw.action.is_empty()
            && raw.action.len() <= 32
            && raw
                .action
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if plain {
            raw.action
        } else {
            UNRECOGNISED_SPOT_ACTION.to_owned()
        }
    };
    Ok(SpotAction { action, time })
}

/// The events that parse, and why the first bad one did not: one odd entry
/// must not hide the others.
pub fn parse_scheduled_events(text: &str) -> Result<(Vec<ScheduledEvent>, Option<String>), String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Raw {
        not_before: String,
        code: Option<String>,
        event_id: String,
        state: Option<String>,
    }
    let entries: Vec<serde_json::Value> = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut skipped = None;
    let mut events = Vec::new();
    for entry in entries {
        let parsed = serde_json::from_value::<Raw>(entry)
            .map_err(|e| e.to_string())
            .and_then(|e| {
                let not_before = parse_gmt(&e.not_before).ok_or_else(|| {
                    format!(
                        "NotBefore {:?} is not like 21 Jan 2019 09:00:43 GMT",
                        e.not_before
                    )
                })?;
                Ok(ScheduledEvent {
                    id: e.event_id,
                    code: e.code.unwrap_or_default(),
                    not_before,
                    state: e.state.unwrap_or_else(|| "active".to_owned()),
                })
            });
        match parsed {
            Ok(event) => events.push(event),
            Err(reason) => {
                skipped.get_or_insert(reason);
            }
        }
    }
    Ok((events, skipped))
}

pub fn parse_rebalance(text: &str) -> Result<OffsetDateTime, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Raw {
        notice_time: String,
    }
    let raw: Raw = serde_json::from_str(text).map_err(|e| e.to_string())?;
    raw.notice_time
        .parse::<Timestamp>()
        .map(|t| t.0)
        .map_err(|e| format!("noticeTime: {e}"))
}

/// Reads every notice into `observed`. A path that fails keeps its previous
/// value (an IMDS hiccup must not cancel a drain); its error is returned.
/// The four paths are asked at once, so a slow IMDS costs one timeout per
/// poll, not four.
pub async fn poll(
    imds: &Imds,
    observed: &mut Observations,
    now: OffsetDateTime,
) -> Vec<NoticeError> {
    let (spot, scheduled, lifecycle, rebalance) = tokio::join!(
        imds.get(SPOT_INSTANCE_ACTION),
        imds.get(SCHEDULED_EVENTS),
        imds.get(TARGET_LIFECYCLE_STATE),
        imds.get(REBALANCE),
    );
    let mut errors = Vec::new();
    let mut unreadable_notice = |source, error| {
        errors.push(NoticeError {
            source,
            error,
            failure: NoticeFailure::Unreadable,
        })
    };
    let mut failed = Vec::new();
    let mut fail = |source, fault: ImdsFault| {
        failed.push(NoticeError {
            source,
            failure: if fault.token_refused {
                NoticeFailure::TokenRefused
            } else {
                NoticeFailure::Unreachable
            },
            error: fault.error,
        })
    };

    match spot {
        Ok(None) => observed.spot_action = None,
        Ok(Some(text)) => match parse_spot_action(&text) {
            Ok(action) => {
                let new = observed.spot_action.as_ref() != Some(&action);
                if new && !SPOT_ACTIONS.contains(&action.action.as_str()) {
                    let raw = serde_json::from_str::<serde_json::Value>(&text)
                        .ok()
                        .and_then(|v| v["action"].as_str().map(str::to_owned))
                        .unwrap_or_default();
                    log::warn!(
                        "spot instance-action {} is none of {}: read as an interruption (draining; never powering off for it)",
                        blockwatch_core::escape::quoted(&raw),
                        SPOT_ACTIONS.join(", ")
                    );
                }
                observed.spot_action = Some(action);
            }
            Err(e) => unreadable_notice("spot", unreadable(SPOT_INSTANCE_ACTION, "spot notice", e)),
        },
        Err(e) => fail("spot", e),
    }
    match scheduled {
        Ok(None) => {
            observed.scheduled_events.clear();
            observed.scheduled_events_known = true;
        }
        Ok(Some(text)) => match parse_scheduled_events(&text) {
            Ok((events, skipped)) => {
                observed.scheduled_events = events;
                observed.scheduled_events_known = true;
                if let Some(reason) = skipped {
                    unreadable_notice(
                        "scheduled-events",
                        unreadable(SCHEDULED_EVENTS, "scheduled event (skipped)", reason),
                    );
                }
            }
            Err(e) => unreadable_notice(
                "scheduled-events",
                unreadable(SCHEDULED_EVENTS, "scheduled events", e),
            ),
        },
        Err(e) => fail("scheduled-events", e),
    }
    match lifecycle {
        Ok(state) => {
            let state = state.map(|s| s.trim().to_owned());
            if state.as_deref() == Some("Terminated") {
                observed.terminated_seen_at.get_or_insert(now);
            } else {
                observed.terminated_seen_at = None;
            }
            observed.target_lifecycle_state = state;
        }
        Err(e) => fail("autoscaling", e),
    }
    match rebalance {
        Ok(None) => observed.rebalance_notice = None,
        Ok(Some(text)) => match parse_rebalance(&text) {
            Ok(at) => observed.rebalance_notice = Some(at),
            Err(e) => unreadable_notice("rebalance", unreadable(REBALANCE, "rebalance notice", e)),
        },
        Err(e) => fail("rebalance", e),
    }
    errors.extend(failed);
    errors
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn parses_the_documented_formats() {
        assert_eq!(
            parse_gmt("21 Jan 2019 09:00:43 GMT"),
            Some(datetime!(2019-01-21 09:00:43 UTC))
        );
        assert_eq!(
            parse_gmt("01 Feb 2019 09:00:43 GMT"),
            Some(datetime!(2019-02-01 09:00:43 UTC))
        );
        assert_eq!(
            parse_gmt("1 Feb 2019 09:00:43 GMT"),
            Some(datetime!(2019-02-01 09:00:43 UTC))
        );
        assert_eq!(parse_gmt("2019-01-21T09:00:43Z"), None);
        let spot = parse_spot_action(r#"{"action": "terminate", "time": "2017-09-18T08:22:00Z"}"#);
        assert_eq!(
            spot,
            Ok(SpotAction {
                action: "terminate".into(),
                time: datetime!(2017-09-18 08:22:00 UTC)
            })
        );
        let events = parse_scheduled_events(
            r#"[{"NotBefore":"21 Jan 2019 09:00:43 GMT","Code":"system-reboot","Description":"x","EventId":"instance-event-1","NotAfter":"21 Jan 2019 09:17:23 GMT","State":"active"}]"#,
        );
        assert_eq!(
            events.map(|(e, skipped)| (e[0].id.clone(), e[0].not_before, skipped)),
            Ok((
                "instance-event-1".into(),
                datetime!(2019-01-21 09:00:43 UTC),
                None
            ))
        );
        let mixed = parse_scheduled_events(
            r#"[{"NotBefore":"soon","EventId":"bad"},{"NotBefore":"1 Feb 2019 09:00:43 GMT","EventId":"good","State":"active"}]"#,
        );
        let (events, skipped) = mixed.unwrap_or_default();
        assert_eq!(events.len(), 1, "a bad entry does not hide the good one");
        assert!(skipped.is_some_and(|s| s.contains("soon")));
        assert_eq!(
            parse_rebalance(r#"{"noticeTime":"2020-10-27T08:22:00Z"}"#),
            Ok(datetime!(2020-10-27 08:22:00 UTC))
        );
        assert!(parse_spot_action("{}").is_err());
        assert!(
            parse_spot_action(r#"{"action": "terminate", "time": "soon"}"#).is_err(),
            "no valid time, no notice"
        );
        let unknown =
            parse_spot_action(r#"{"action": "explode\nECS_X=1", "time": "2017-09-18T08:22:00Z"}"#);
        assert_eq!(
            unknown.map(|a| a.action),
            Ok(UNRECOGNISED_SPOT_ACTION.to_owned()),
            "an unknown action with a valid time is a notice; its odd name is not kept"
        );
        let new = parse_spot_action(r#"{"action": "pause", "time": "2017-09-18T08:22:00Z"}"#);
        assert_eq!(new.map(|a| a.action), Ok("pause".to_owned()));
    }
}
