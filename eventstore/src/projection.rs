//! The projection store: what the store keeps about read projections.
//!
//! A read projection folds the global log into tables of its own (the read model). The store
//! keeps, per projection:
//!
//! * one row in `{prefix}projections`: the **active generation** (the physical tables readers
//!   see through views), whether it is paused, its status words and last error, and whether an
//!   in-place rebuild was requested from outside the application (`reset_requested`);
//! * one row per **generation** in `{prefix}projection_checkpoints`: the version of the
//!   projection code that builds it and its [`Checkpoint`]. A generation above the active one is
//!   a blue/green build in progress;
//! * the events it gave up on, in `{prefix}projection_dead` ([`ParkedEvent`]).
//!
//! The checkpoint is written by [`ProjectionStore::save_projection_checkpoint`] **inside the
//! unit of work that applies the events**, after [`ProjectionStore::lock_projection_checkpoint`]
//! locked it: two appliers (a zombie runner, a CLI rebuild and the service) are serialized on
//! that lock, and the one that finds another checkpoint than it expected rolls back. Each event is
//! therefore applied exactly once to each generation.
//!
//! The `eventfold-projections` crate builds the runner and the rebuilds on this trait; the
//! administrative half (states, pause, reset requests, parked events) needs no application types,
//! which is what the standalone CLI uses.

use std::future::Future;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::StoreError;
use crate::log::Checkpoint;
use crate::store::EventStore;

/// The stored state of one projection.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProjectionState {
    /// The projection's name.
    pub name: String,
    /// The version of the projection code that built the active generation.
    pub version: u32,
    /// The active generation (physical tables `{table}__g{generation}`).
    pub generation: u32,
    /// The checkpoint of the active generation.
    #[serde(serialize_with = "as_string")]
    pub checkpoint: Checkpoint,
    /// The highest global position applied (on PostgreSQL a checkpoint at the end of the log
    /// carries no position, so this is kept beside it).
    pub position: u64,
    /// Paused (by the application or the CLI).
    pub paused: bool,
    /// `running`, `paused`, `failed`, `rebuilding` or `idle`.
    pub status: String,
    /// The last error that stopped or slowed it.
    pub last_error: Option<String>,
    /// Events of the active generation parked in `{prefix}projection_dead`.
    pub parked: u64,
    /// An in-place rebuild was requested (by the standalone CLI) and not done yet.
    pub reset_requested: bool,
    /// A blue/green build in progress.
    pub building: Option<BuildState>,
    /// When the row last changed.
    pub updated_at: DateTime<Utc>,
}

/// A blue/green build in progress: a generation above the active one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BuildState {
    /// The generation being built.
    pub generation: u32,
    /// The version of the projection code that builds it.
    pub version: u32,
    /// Its checkpoint.
    #[serde(serialize_with = "as_string")]
    pub checkpoint: Checkpoint,
    /// The highest global position applied.
    pub position: u64,
}

/// An event a projection gave up on (policy `Park`), kept with its error.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ParkedEvent {
    /// The projection.
    pub projection: String,
    /// The generation it was applied to.
    pub generation: u32,
    /// The event.
    pub event_id: Uuid,
    /// Its global position.
    pub global_position: u64,
    /// Its stream (`type-id`).
    pub stream_id: String,
    /// Its type.
    pub event_type: String,
    /// The error.
    pub error: String,
    /// When it was parked (set by the store).
    pub parked_at: DateTime<Utc>,
}

/// A generation's checkpoint, locked in a unit of work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockedCheckpoint {
    /// The projection's active generation when the lock was taken.
    pub active_generation: u32,
    /// The version of the code that builds the locked generation.
    pub version: u32,
    /// The locked generation's checkpoint.
    pub checkpoint: Checkpoint,
    /// The highest global position it applied.
    pub position: u64,
}

fn as_string<S: serde::Serializer>(c: &Checkpoint, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(c)
}

/// Longest logical table name of a projection (the physical name adds `__g` and a generation).
pub const MAX_TABLE_NAME_LEN: usize = 48;

/// Checks a projection's logical table name: lowercase ASCII letters, digits and `_`, starting
/// with a letter or `_`, at most [`MAX_TABLE_NAME_LEN`] bytes.
pub fn validate_table_name(name: &str) -> Result<(), StoreError> {
    crate::naming::check_identifier(
        "projection table",
        name,
        MAX_TABLE_NAME_LEN,
        "it is longer than 48 bytes",
    )
}

/// Longest projection name, in bytes.
pub const MAX_PROJECTION_NAME_LEN: usize = 200;

/// Checks a projection's name (the key of its state and checkpoints): 1 to
/// [`MAX_PROJECTION_NAME_LEN`] bytes without control characters. Quotes and any other printable
/// text are fine: the name is always a bound parameter, never SQL text.
///
/// ```
/// use eventfold_eventstore::projection::validate_projection_name;
///
/// assert!(validate_projection_name("order \"summary\"").is_ok());
/// assert!(validate_projection_name("orders\0").is_err());
/// assert!(validate_projection_name(&"x".repeat(201)).is_err());
/// ```
pub fn validate_projection_name(name: &str) -> Result<(), StoreError> {
    crate::store::check_name("projection name", name)
}

/// The physical name of generation `generation` of logical table `table`: `{table}__g{n}`.
pub fn physical_table(table: &str, generation: u32) -> String {
    format!("{table}__g{generation}")
}

/// Quotes `name` (a validated identifier) and qualifies it with `schema`.
pub fn qualified(schema: Option<&str>, name: &str) -> String {
    match schema {
        Some(schema) => format!("\"{schema}\".\"{name}\""),
        None => format!("\"{name}\""),
    }
}

/// Projection bookkeeping, per backend. See the [module docs](self).
///
/// The methods that take a unit of work run inside it, so that they commit (or roll back)
/// together with the projection's own writes.
pub trait ProjectionStore: EventStore {
    /// Every stored projection, by name.
    fn projection_states(
        &self,
    ) -> impl Future<Output = Result<Vec<ProjectionState>, StoreError>> + Send;

    /// One stored projection.
    fn projection_state(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<ProjectionState>, StoreError>> + Send;

    /// Pauses or resumes a projection; `false` when it does not exist.
    fn set_projection_paused(
        &self,
        name: &str,
        paused: bool,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Asks the running service to rebuild `name` in place; `false` when it does not exist.
    fn request_projection_reset(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Up to `limit` parked events of the active generation of `name`, oldest first.
    fn parked_projection_events(
        &self,
        name: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<ParkedEvent>, StoreError>> + Send;

    /// Records the status words and last error of a projection; `false` when it does not
    /// exist.
    fn set_projection_status(
        &self,
        name: &str,
        status: &str,
        last_error: Option<&str>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The log checkpoint just after the event at global position `position` (`None`: no such
    /// committed event). Used by read-your-writes waits: on PostgreSQL positions alone do not
    /// order the log.
    fn checkpoint_at(
        &self,
        position: u64,
    ) -> impl Future<Output = Result<Option<Checkpoint>, StoreError>> + Send;

    /// The schema the projections' tables and views live in (PostgreSQL), if any.
    fn projection_schema(&self) -> Option<String>;

    /// Does this backend keep projection tables in SQL (views, DDL)? `false` for memory.
    fn has_sql_tables(&self) -> bool;

    /// Can the log be read while a unit of work is open in the same task? `false` for a
    /// pool of one connection (an in-memory SQLite database).
    fn reads_beside_unit_of_work(&self) -> bool {
        true
    }

    /// Creates the projection with generation 1 at `version` if it does not exist; `true` when
    /// this call created it (the caller then creates its tables in the same unit of work). A
    /// name refused by [`validate_projection_name`] is a [`StoreError::InvalidIdentifier`].
    fn create_projection(
        &self,
        uow: &mut Self::UnitOfWork,
        name: &str,
        version: u32,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Locks the projection's row for administrative changes (a switch, a reset, starting a
    /// build) and returns its state.
    fn lock_projection(
        &self,
        uow: &mut Self::UnitOfWork,
        name: &str,
    ) -> impl Future<Output = Result<Option<ProjectionState>, StoreError>> + Send;

    /// Locks the checkpoint of one generation for a batch (the projection's row in shared
    /// mode, so that a switch waits for the batch). `None`: no such generation.
    fn lock_projection_checkpoint(
        &self,
        uow: &mut Self::UnitOfWork,
        name: &str,
        generation: u32,
    ) -> impl Future<Output = Result<Option<LockedCheckpoint>, StoreError>> + Send;

    /// Writes the checkpoint of one generation and the highest global position it applied.
    fn save_projection_checkpoint(
        &self,
        uow: &mut Self::UnitOfWork,
        name: &str,
        generation: u32,
        checkpoint: Checkpoint,
        position: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Creates (or restarts) generation `generation` at `version` from the start of the log,
    /// forgetting its parked events.
    fn start_projection_generation(
        &self,
        uow: &mut Self::UnitOfWork,
        name: &str,
        generation: u32,
        version: u32,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Makes `generation` the active one and clears `reset_requested`.
    fn activate_projection_generation(
        &self,
        uow: &mut Self::UnitOfWork,
        name: &str,
        generation: u32,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Forgets a generation: its checkpoint and its parked events.
    fn remove_projection_generation(
        &self,
        uow: &mut Self::UnitOfWork,
        name: &str,
        generation: u32,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The generations of `name` below the active one whose checkpoints are still kept.
    fn old_projection_generations(
        &self,
        uow: &mut Self::UnitOfWork,
        name: &str,
    ) -> impl Future<Output = Result<Vec<u32>, StoreError>> + Send;

    /// Parks an event (in the unit of work that moves the checkpoint past it).
    fn park_projection_event(
        &self,
        uow: &mut Self::UnitOfWork,
        event: ParkedEvent,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Points the views named after `tables` at generation `generation` (DDL in the unit of
    /// work; nothing on backends without SQL tables).
    ///
    /// `Ok(false)`: readers held the views past a short lock timeout (taking them one by one
    /// could deadlock with a reader of several views); nothing was changed, the unit of work is
    /// usable, and the caller should roll back and try again.
    fn point_projection_views(
        &self,
        uow: &mut Self::UnitOfWork,
        tables: &[String],
        generation: u32,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Drops the physical tables of `generation` (and, on PostgreSQL, what depends on them).
    /// `Ok(false)` as for [`ProjectionStore::point_projection_views`].
    fn drop_projection_tables(
        &self,
        uow: &mut Self::UnitOfWork,
        tables: &[String],
        generation: u32,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_validated() {
        assert!(validate_table_name("orders").is_ok());
        assert!(validate_table_name("Orders").is_err());
        assert!(validate_table_name("x\"; drop").is_err());
        assert!(validate_table_name("").is_err());
        assert_eq!(physical_table("orders", 3), "orders__g3");
        assert_eq!(qualified(Some("s"), "t"), "\"s\".\"t\"");
    }
}

/// Pieces shared by the SQL backends' projection stores.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) mod sql {
    use chrono::{DateTime, Utc};

    use super::{BuildState, ProjectionState};
    use crate::error::StoreError;
    use crate::log::Checkpoint;
    use crate::naming::Naming;

    /// The projection tables of one naming.
    pub(crate) struct Names {
        pub p: String,
        pub c: String,
        pub d: String,
    }

    impl Names {
        pub(crate) fn new(naming: &Naming) -> Self {
            Self {
                p: naming.table("projections"),
                c: naming.table("projection_checkpoints"),
                d: naming.table("projection_dead"),
            }
        }

        /// `projection row + active checkpoint + parked count`, filtered by `$1` (name or NULL).
        pub(crate) fn states(&self) -> String {
            let Names { p, c, d } = self;
            format!(
                "SELECT p.name, CAST(p.active_generation AS BIGINT), p.paused, p.status, p.last_error, \
                 p.reset_requested, p.updated_at, CAST(COALESCE(c.version, 0) AS BIGINT), \
                 COALESCE(c.commit_key, 0), COALESCE(c.log_position, 0), COALESCE(c.position, 0), \
                 (SELECT COUNT(*) FROM {d} d WHERE d.name = p.name AND d.generation = p.active_generation) \
                 FROM {p} p LEFT JOIN {c} c ON c.name = p.name AND c.generation = p.active_generation \
                 WHERE (CAST($1 AS TEXT) IS NULL OR p.name = $1) ORDER BY p.name"
            )
        }

        /// Generations above the active one, filtered by `$1` (name or NULL).
        pub(crate) fn builds(&self) -> String {
            let Names { p, c, .. } = self;
            format!(
                "SELECT c.name, CAST(c.generation AS BIGINT), CAST(c.version AS BIGINT), c.commit_key, \
                 c.log_position, c.position FROM {c} c JOIN {p} p ON p.name = c.name \
                 WHERE (CAST($1 AS TEXT) IS NULL OR c.name = $1) AND c.generation > p.active_generation \
                 ORDER BY c.name, c.generation"
            )
        }
    }

    pub(crate) type StateRow = (
        String,
        i64,
        bool,
        String,
        Option<String>,
        bool,
        DateTime<Utc>,
        i64,
        i64,
        i64,
        i64,
        i64,
    );

    pub(crate) type BuildRow = (String, i64, i64, i64, i64, i64);

    /// generation, event_id, global_position, stream_id, event_type, error, parked_at
    pub(crate) type ParkedRow = (i64, uuid::Uuid, i64, String, String, String, DateTime<Utc>);

    /// A parked event of projection `name` from its row in `table`.
    pub(crate) fn parked_event(
        name: &str,
        (generation, event_id, position, stream_id, event_type, error, parked_at): ParkedRow,
        table: &str,
    ) -> Result<super::ParkedEvent, StoreError> {
        Ok(super::ParkedEvent {
            projection: name.to_owned(),
            generation: u32_of(generation, table, "generation")?,
            event_id,
            global_position: u64_of(position, table, "global position")?,
            stream_id,
            event_type,
            error,
            parked_at,
        })
    }

    fn corrupt(table: &str, what: &str, value: i64) -> StoreError {
        StoreError::Corrupt {
            table: table.to_owned(),
            reason: format!("{what} {value} is out of range"),
        }
    }

    pub(crate) fn u32_of(value: i64, table: &str, what: &str) -> Result<u32, StoreError> {
        u32::try_from(value).map_err(|_| corrupt(table, what, value))
    }

    pub(crate) fn u64_of(value: i64, table: &str, what: &str) -> Result<u64, StoreError> {
        u64::try_from(value).map_err(|_| corrupt(table, what, value))
    }

    pub(crate) fn checkpoint_of(
        key: i64,
        position: i64,
        table: &str,
    ) -> Result<Checkpoint, StoreError> {
        Checkpoint::from_parts(key, position).map_err(|e| StoreError::Corrupt {
            table: table.to_owned(),
            reason: e.to_string(),
        })
    }

    pub(crate) fn to_i64(value: u64) -> i64 {
        i64::try_from(value).unwrap_or(i64::MAX)
    }

    /// Joins state rows with their builds (the highest generation above the active one).
    pub(crate) fn states(
        rows: Vec<StateRow>,
        builds: Vec<BuildRow>,
        table: &str,
    ) -> Result<Vec<ProjectionState>, StoreError> {
        let mut out = Vec::with_capacity(rows.len());
        for (
            name,
            generation,
            paused,
            status,
            last_error,
            reset_requested,
            updated_at,
            version,
            key,
            log_pos,
            position,
            parked,
        ) in rows
        {
            let mut building = None;
            for (n, g, v, k, lp, pos) in builds.iter().filter(|b| b.0 == name) {
                let _ = n;
                building = Some(BuildState {
                    generation: u32_of(*g, table, "generation")?,
                    version: u32_of(*v, table, "version")?,
                    checkpoint: checkpoint_of(*k, *lp, table)?,
                    position: u64_of(*pos, table, "position")?,
                });
            }
            out.push(ProjectionState {
                version: u32_of(version, table, "version")?,
                generation: u32_of(generation, table, "generation")?,
                checkpoint: checkpoint_of(key, log_pos, table)?,
                position: u64_of(position, table, "position")?,
                paused,
                status,
                last_error,
                parked: u64_of(parked, table, "parked count")?,
                reset_requested,
                building,
                updated_at,
                name,
            });
        }
        Ok(out)
    }
}
