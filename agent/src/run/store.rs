//! The state store: what a running agent keeps on disk (the state file and
//! the metrics, through [`Records`]), with the names every snapshot carries.
//!
//! The runtime is single-threaded, and an fsync on a full or slow disk can
//! take seconds: signals and the watchdog must not wait for it. So a save
//! or a tick is planned on the runtime (what is due, serialised) and written
//! on the blocking pool, one write at a time.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use time::OffsetDateTime;
use tokio::task::{JoinError, JoinHandle};

use super::node::Node;
use crate::host::job_deadline_files::{DeadlineFiles, DeadlineWrite};
use crate::host::state_dir::{Records, RecordsWrite, RecordsWritten};
use blockwatch_core::decision::AgentState;
use blockwatch_core::operator_view::Snapshot;

#[derive(Debug)]
pub(super) struct Store {
    records: Records,
    node: Node,
    /// The files a job reads its deadline from; none in unit tests.
    deadline_files: Option<DeadlineFiles>,
    /// A write on the blocking pool whose caller stopped waiting for it (a
    /// tick cut short by SIGTERM): settled before the next one starts, so
    /// that two writes of the same file never overlap.
    in_flight: Option<JoinHandle<Written>>,
}

/// The writes one save or tick decided on. The deadline files go first, so
/// that they exist once the state file does.
#[derive(Debug)]
struct Planned {
    deadline: Option<DeadlineWrite>,
    records: RecordsWrite,
}

#[derive(Debug)]
struct Written {
    deadline: Option<(DeadlineWrite, std::io::Result<()>)>,
    records: RecordsWritten,
}

impl Planned {
    fn is_empty(&self) -> bool {
        self.deadline.is_none() && self.records.is_empty()
    }

    /// Blocking: every write with its fsyncs.
    fn perform(self) -> Written {
        Written {
            deadline: self.deadline.map(|due| {
                let result = due.perform();
                (due, result)
            }),
            records: self.records.perform(),
        }
    }
}

impl Store {
    pub(super) fn new(records: Records, node: &Node) -> Self {
        Self {
            records,
            node: node.clone(),
            deadline_files: None,
            in_flight: None,
        }
    }

    /// Also keeps the deadline files in `dir`, from the first save or tick.
    pub(super) fn with_deadline_files(mut self, dir: PathBuf) -> Self {
        self.deadline_files = Some(DeadlineFiles::new(dir, &self.node.instance_id));
        self
    }

    /// `state` as `blockwatch status` reads it.
    pub(super) fn snapshot(&self, state: &AgentState, now: OffsetDateTime) -> Snapshot {
        Snapshot {
            instance_id: self.node.instance_id.clone(),
            cluster: self.node.cluster.clone(),
            degraded: self.node.degraded.clone(),
            compute_environment: self.node.compute_environment.clone(),
            agent: state.clone(),
            updated_at: now,
            heartbeat: Default::default(),
        }
    }

    /// Writes a state that changed (and the metrics); false when the state
    /// could not be saved.
    pub(super) async fn save(
        &mut self,
        state: &AgentState,
        errors: &BTreeMap<&'static str, u64>,
        now: OffsetDateTime,
    ) -> bool {
        self.settle_in_flight().await;
        let snapshot = self.snapshot(state, now);
        let planned = Planned {
            deadline: self.plan_deadline(state, now),
            records: self
                .records
                .plan_save(snapshot, errors, now, monotonic_now()),
        };
        self.write(planned).await
    }

    /// Once per poll: the heartbeat, a save that failed before, the metrics.
    pub(super) async fn tick(
        &mut self,
        state: &AgentState,
        errors: &BTreeMap<&'static str, u64>,
        now: OffsetDateTime,
    ) {
        self.settle_in_flight().await;
        let snapshot = self.snapshot(state, now);
        let planned = Planned {
            deadline: self.plan_deadline(state, now),
            records: self
                .records
                .plan_tick(snapshot, errors, now, monotonic_now()),
        };
        self.write(planned).await;
    }

    /// A few words for the STATUS line while the state is not saved.
    pub(super) fn problem(&self) -> Option<&'static str> {
        self.records.problem()
    }

    fn plan_deadline(&self, state: &AgentState, now: OffsetDateTime) -> Option<DeadlineWrite> {
        self.deadline_files.as_ref()?.plan(state, now)
    }

    /// Writes off the runtime and settles; false when the state file was due
    /// and not written.
    async fn write(&mut self, planned: Planned) -> bool {
        if planned.is_empty() {
            return true;
        }
        let handle = self
            .in_flight
            .insert(tokio::task::spawn_blocking(move || planned.perform()));
        let joined = handle.await;
        self.in_flight = None;
        self.settle(joined)
    }

    async fn settle_in_flight(&mut self) {
        if let Some(handle) = self.in_flight.as_mut() {
            let joined = handle.await;
            self.in_flight = None;
            self.settle(joined);
        }
    }

    fn settle(&mut self, joined: Result<Written, JoinError>) -> bool {
        match joined {
            Ok(written) => {
                if let (Some(files), Some((due, result))) =
                    (self.deadline_files.as_mut(), written.deadline)
                {
                    files.settle(due, result);
                }
                self.records.settle(written.records)
            }
            // The plan went down with the task: nothing is marked written,
            // so the deadline files are planned again; the state file is
            // counted as not saved and retried on the next tick.
            Err(err) => {
                log::error!("a write of the state files did not finish: {err}");
                self.records.write_lost(&err.to_string());
                false
            }
        }
    }
}

/// The monotonic clock the heartbeat and metrics timers run on (tokio's, so
/// that tests with a paused clock move it).
fn monotonic_now() -> Instant {
    tokio::time::Instant::now().into_std()
}
