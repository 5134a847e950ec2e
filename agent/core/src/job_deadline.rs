//! The deadline files a job can read (`<deadline-dir>/deadline.json` and
//! `<deadline-dir>/deadline`): which fields, from the agent's state.
//!
//! A view of its own, apart from the state file, so that a job sees a small
//! stable contract and the files change only when something a job cares
//! about changes (not with every heartbeat).

use serde::Serialize;
use time::OffsetDateTime;

use crate::decision::AgentState;
use crate::time_text::rfc3339;

/// What the deadline files say, without the time they were last changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadlineView {
    pub instance_id: String,
    pub phase: &'static str,
    /// When the instance ends (RFC 3339), or `None` while no end is known.
    pub deadline: Option<String>,
    /// The kind of signal the deadline comes from (`lease`, `spot-interruption`, ...).
    pub deadline_source: Option<&'static str>,
    /// The signal's own identity (a tag, a notice's time, an event id).
    pub deadline_event: Option<String>,
    /// When the container instance is (or was) set to DRAINING.
    pub drain_at: Option<String>,
    /// When blockwatch stops what still runs, or `None`.
    pub stop_at: Option<String>,
    /// When opted-in containers get their checkpoint signal (or got it),
    /// or `None` when `checkpoint_lead` is off or no end is known.
    pub checkpoint_at: Option<String>,
}

impl DeadlineView {
    pub fn of(instance_id: &str, state: &AgentState) -> Self {
        let deadline = state.deadline.as_ref();
        Self {
            instance_id: instance_id.to_owned(),
            phase: state.phase.name(),
            deadline: deadline.map(|d| rfc3339(d.at)),
            deadline_source: deadline.map(|d| d.event.kind.name()),
            deadline_event: deadline.map(|d| d.event.id.clone()),
            drain_at: state.drain_at.map(rfc3339),
            stop_at: state.stop_at.map(rfc3339),
            checkpoint_at: state.checkpoint_at.map(rfc3339),
        }
    }

    /// The deadline as webhook events and the "joining" status carry it:
    /// the view without `instance_id`, which each names its own way, and
    /// without `deadline_event`.
    pub fn fields(&self) -> serde_json::Map<String, serde_json::Value> {
        // Serializing plain strings and options cannot fail.
        let mut fields = match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(fields)) => fields,
            _ => serde_json::Map::new(),
        };
        fields.remove("instance_id");
        fields.remove("deadline_event");
        fields
    }

    /// `deadline.json`: the view and `updated_at` (when the view last
    /// changed), one JSON object and a newline.
    pub fn json(&self, updated_at: OffsetDateTime) -> Vec<u8> {
        #[derive(Serialize)]
        struct File<'a> {
            #[serde(flatten)]
            view: &'a DeadlineView,
            updated_at: String,
        }
        let file = File {
            view: self,
            updated_at: rfc3339(updated_at),
        };
        // Serializing plain strings and options cannot fail.
        let mut bytes = serde_json::to_vec_pretty(&file).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    /// `deadline`: the RFC 3339 deadline and a newline, or nothing at all
    /// while no end is known (so `[ -s deadline ]` tells).
    pub fn plain(&self) -> Vec<u8> {
        self.deadline
            .as_ref()
            .map(|d| format!("{d}\n").into_bytes())
            .unwrap_or_default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::deadline::{EventKey, SourceKind};
    use crate::decision::{Deadline, Phase};

    fn watching_a_lease() -> AgentState {
        AgentState {
            phase: Phase::Watching,
            deadline: Some(Deadline {
                at: datetime!(2026-11-30 18:00:00 UTC),
                event: EventKey {
                    kind: SourceKind::Lease,
                    id: "tag:2026-11-30T18:00:00Z".into(),
                },
            }),
            drain_at: Some(datetime!(2026-11-30 17:50:00 UTC)),
            stop_at: Some(datetime!(2026-11-30 17:58:50 UTC)),
            checkpoint_at: Some(datetime!(2026-11-30 17:53:50 UTC)),
            ..AgentState::default()
        }
    }

    #[test]
    fn the_json_file_names_the_instance_the_deadline_and_when_it_changed() {
        let view = DeadlineView::of("i-0abc", &watching_a_lease());
        let json: serde_json::Value =
            serde_json::from_slice(&view.json(datetime!(2026-11-30 12:00:00 UTC))).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "instance_id": "i-0abc",
                "phase": "watching",
                "deadline": "2026-11-30T18:00:00Z",
                "deadline_source": "lease",
                "deadline_event": "tag:2026-11-30T18:00:00Z",
                "drain_at": "2026-11-30T17:50:00Z",
                "stop_at": "2026-11-30T17:58:50Z",
                "checkpoint_at": "2026-11-30T17:53:50Z",
                "updated_at": "2026-11-30T12:00:00Z",
            })
        );
        assert_eq!(view.plain(), b"2026-11-30T18:00:00Z\n");
    }

    #[test]
    fn the_shared_fields_are_the_view_without_instance_and_event() {
        let fields = DeadlineView::of("i-0abc", &watching_a_lease()).fields();
        assert_eq!(
            serde_json::Value::Object(fields),
            serde_json::json!({
                "phase": "watching",
                "deadline": "2026-11-30T18:00:00Z",
                "deadline_source": "lease",
                "drain_at": "2026-11-30T17:50:00Z",
                "stop_at": "2026-11-30T17:58:50Z",
                "checkpoint_at": "2026-11-30T17:53:50Z",
            })
        );
    }

    #[test]
    fn without_an_end_the_fields_are_null_and_the_plain_file_is_empty() {
        let view = DeadlineView::of("i-0abc", &AgentState::default());
        let json: serde_json::Value =
            serde_json::from_slice(&view.json(datetime!(2026-11-30 12:00:00 UTC))).unwrap();
        for key in [
            "deadline",
            "deadline_source",
            "deadline_event",
            "drain_at",
            "stop_at",
            "checkpoint_at",
        ] {
            assert!(json[key].is_null(), "{key}: {json}");
        }
        assert_eq!(json["phase"], "joining");
        assert!(view.plain().is_empty());
    }

    #[test]
    fn the_view_changes_with_a_moved_deadline_but_not_with_a_heartbeat_field() {
        let state = watching_a_lease();
        let mut moved = state.clone();
        if let Some(d) = moved.deadline.as_mut() {
            d.at = datetime!(2026-11-30 19:00:00 UTC);
        }
        assert_ne!(
            DeadlineView::of("i-0abc", &state),
            DeadlineView::of("i-0abc", &moved)
        );
        let mut counted = state.clone();
        counted.drains_started += 1;
        assert_eq!(
            DeadlineView::of("i-0abc", &state),
            DeadlineView::of("i-0abc", &counted)
        );
    }
}
