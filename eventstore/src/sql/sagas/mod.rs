//! The [`SagaStore`](crate::saga::SagaStore) of the SQL backends, written once (see
//! [`crate::saga`]): the statements of the three saga tables over a [`Dialect`] ([`SagaSql`]),
//! their rows' conversion, and the trait's implementation stamped for each store by
//! [`saga_store!`] (in `store.rs`; see [`super::read`] for why a macro).
//!
//! What differs between the backends is the database clock ([`Dialect::NOW`]), how a JSON
//! value is written ([`Dialect::json`]) and read ([`Dialect::text`]), and the claim of due
//! timers, which each backend writes in its own `sagas.rs`: one `UPDATE ... FROM (SELECT ...
//! FOR UPDATE SKIP LOCKED) RETURNING` on PostgreSQL, a select and per-timer updates in a
//! `BEGIN IMMEDIATE` transaction on SQLite.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::dialect::Dialect;
use crate::error::StoreError;
use crate::naming::Naming;
use crate::saga::{SagaRecord, SagaTimer};
#[cfg(feature = "postgres")]
use crate::saga::{SagaTimerId, SagaTransitionWrite};

/// The columns of [`SagaRow`], in order.
pub(crate) const SAGA_COLUMNS: &str = "saga_id, saga_type, business_key, status, detail, \
    correlation_id, definition_version, version, started_at, updated_at, last_event_id";

/// How many columns [`SAGA_COLUMNS`] lists: [`SagaSql::lock_with_clock`]'s clock follows them.
const SAGA_COLUMN_COUNT: usize = 11;

/// Storing a timer whose identity is stored already moves its deadline and resets its claims
/// (every statement that stores timers ends with it).
pub(crate) const UPSERT_TIMER: &str = "ON CONFLICT (saga_id, step, attempt, kind) DO UPDATE SET \
     saga_type = EXCLUDED.saga_type, due_at = EXCLUDED.due_at, claims = 0";

/// The columns of [`TimerRow`], in order.
pub(crate) const TIMER_COLUMNS: &str = "saga_id, saga_type, step, attempt, kind, due_at";

/// The saga statements of one naming, in one dialect.
pub(crate) struct SagaSql {
    /// `{prefix}sagas`.
    pub sagas: String,
    /// `{prefix}saga_timers`.
    pub timers: String,
    /// `{prefix}saga_requests`.
    pub requests: String,
    /// The database's clock.
    pub now: String,
    /// Inserts an instance unless its key is taken: `$1`..`$8` the columns up to `version`;
    /// returns the database's clock when it inserted (no row when the key was taken).
    pub register: String,
    /// The id of the instance that owns a key: `$1` type, `$2` key.
    pub owner: String,
    /// `$1` id, `$2` status, `$3` detail, `$4` definition version, `$5` version, `$6` last
    /// event id.
    pub update: String,
    /// Stores a timer, or moves it and resets its claims: `$1` id, `$2` step, `$3` attempt,
    /// `$4` kind, `$5` type, `$6` deadline.
    pub put_timer: String,
    /// `$1` id, `$2` step, `$3` attempt, `$4` kind.
    pub delete_timer: String,
    /// `$1` id.
    pub delete_timers: String,
    /// Gives a claimed timer back: `$1` id, `$2` step, `$3` attempt, `$4` kind, `$5` the
    /// deadline it had when claimed; only while it is still claimed (`claims > 0`: a timer
    /// stored again since has its claims reset and is left alone).
    pub release_timer: String,
    /// `$1` participant, `$2` request key.
    pub find_outcome: String,
    /// `$1` participant, `$2` request key, `$3` outcome (JSON text).
    pub record_outcome: String,
    /// Stores a timer under the instance's type if the instance is registered: `$1` id,
    /// `$2` step, `$3` attempt, `$4` kind, `$5` deadline.
    pub request_timer: String,
    /// `$1` id.
    pub saga: String,
    /// `$1` id; the row locked until the transaction ends (PostgreSQL).
    pub lock: String,
    /// [`lock`](Self::lock) with the database's clock as a last column.
    pub lock_with_clock: String,
    /// `$1` type, `$2` key.
    pub saga_by_key: String,
    /// `$1` type, `$2` status, `$3` correlation id (each NULL for any), `$4` limit.
    pub list: String,
    /// Instances per type and status.
    pub count: String,
    /// `$1` id.
    pub timers_of: String,
}

impl SagaSql {
    pub(crate) fn new<D: Dialect>(naming: &Naming) -> Self {
        let sagas = naming.table("sagas");
        let timers = naming.table("saga_timers");
        let requests = naming.table("saga_requests");
        let now = D::NOW;
        let p = D::placeholders;
        let upsert_timer = UPSERT_TIMER;
        Self {
            now: format!("SELECT {now}"),
            register: p(&format!(
                "INSERT INTO {sagas} ({SAGA_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, {now}, {now}, NULL) \
                 ON CONFLICT (saga_type, business_key) DO NOTHING RETURNING {now}"
            )),
            owner: p(&format!(
                "SELECT saga_id FROM {sagas} WHERE saga_type = $1 AND business_key = $2"
            )),
            update: p(&format!(
                "UPDATE {sagas} SET status = $2, detail = $3, definition_version = $4, version = $5, \
                 last_event_id = $6, updated_at = {now} WHERE saga_id = $1"
            )),
            put_timer: p(&format!(
                "INSERT INTO {timers} (saga_id, step, attempt, kind, saga_type, due_at, claims) \
                 VALUES ($1, $2, $3, $4, $5, $6, 0) {upsert_timer}"
            )),
            delete_timer: p(&format!(
                "DELETE FROM {timers} WHERE saga_id = $1 AND step = $2 AND attempt = $3 AND kind = $4"
            )),
            delete_timers: p(&format!("DELETE FROM {timers} WHERE saga_id = $1")),
            release_timer: p(&format!(
                "UPDATE {timers} SET due_at = $5, claims = claims - 1 WHERE saga_id = $1 \
                 AND step = $2 AND attempt = $3 AND kind = $4 AND claims > 0"
            )),
            find_outcome: p(&format!(
                "SELECT {} FROM {requests} WHERE participant = $1 AND request_key = $2",
                D::text("outcome")
            )),
            record_outcome: p(&format!(
                "INSERT INTO {requests} (participant, request_key, outcome, recorded_at) \
                 VALUES ($1, $2, {}, {now}) ON CONFLICT (participant, request_key) DO NOTHING",
                D::json("$3")
            )),
            // SQLite needs the WHERE to read `ON CONFLICT` as the upsert, not a join's `ON`.
            request_timer: p(&format!(
                "INSERT INTO {timers} (saga_id, step, attempt, kind, saga_type, due_at, claims) \
                 SELECT s.saga_id, $2, $3, $4, s.saga_type, $5, 0 FROM {sagas} s WHERE s.saga_id = $1 \
                 {upsert_timer}"
            )),
            saga: p(&format!(
                "SELECT {SAGA_COLUMNS} FROM {sagas} WHERE saga_id = $1"
            )),
            lock: p(&format!(
                "SELECT {SAGA_COLUMNS} FROM {sagas} WHERE saga_id = $1{}",
                D::FOR_UPDATE
            )),
            lock_with_clock: p(&format!(
                "SELECT {SAGA_COLUMNS}, {now} FROM {sagas} WHERE saga_id = $1{}",
                D::FOR_UPDATE
            )),
            saga_by_key: p(&format!(
                "SELECT {SAGA_COLUMNS} FROM {sagas} WHERE saga_type = $1 AND business_key = $2"
            )),
            list: p(&format!(
                "SELECT {SAGA_COLUMNS} FROM {sagas} WHERE ($1 IS NULL OR saga_type = $1) \
                 AND ($2 IS NULL OR status = $2) AND ($3 IS NULL OR correlation_id = $3) \
                 ORDER BY updated_at DESC, saga_id DESC LIMIT $4"
            )),
            count: format!(
                "SELECT saga_type, status, COUNT(*) FROM {sagas} GROUP BY saga_type, status"
            ),
            timers_of: p(&format!(
                "SELECT {TIMER_COLUMNS} FROM {timers} WHERE saga_id = $1 ORDER BY due_at"
            )),
            sagas,
            timers,
            requests,
        }
    }
}

/// An instance's row: the columns of [`SAGA_COLUMNS`].
pub(crate) type SagaRow = (
    Uuid,
    String,
    String,
    String,
    Option<String>,
    Uuid,
    i64,
    i64,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<Uuid>,
);

/// An instance's row and, after its columns, the database's clock
/// ([`SagaSql::lock_with_clock`]).
pub(crate) fn saga_record_with_clock<R: sqlx::Row>(
    row: &R,
    table: &str,
) -> Result<(SagaRecord, DateTime<Utc>), StoreError>
where
    SagaRow: for<'r> sqlx::FromRow<'r, R>,
    usize: sqlx::ColumnIndex<R>,
    for<'r> DateTime<Utc>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let read = |e| super::db_err("reading a locked saga", table)(e);
    let columns = <SagaRow as sqlx::FromRow<R>>::from_row(row).map_err(read)?;
    let now = row.try_get(SAGA_COLUMN_COUNT).map_err(read)?;
    Ok((saga_record(columns, table)?, now))
}

pub(crate) fn saga_record(row: SagaRow, table: &str) -> Result<SagaRecord, StoreError> {
    let (
        saga_id,
        saga_type,
        business_key,
        status,
        detail,
        correlation_id,
        definition_version,
        version,
        started_at,
        updated_at,
        last_event_id,
    ) = row;
    let corrupt = |reason: String| StoreError::Corrupt {
        table: table.to_owned(),
        reason: format!("saga {saga_id}: {reason}"),
    };
    Ok(SagaRecord {
        saga_id,
        saga_type,
        business_key,
        status,
        detail,
        correlation_id,
        definition_version: u32::try_from(definition_version)
            .map_err(|_| corrupt(format!("definition version {definition_version}")))?,
        version: u64::try_from(version).map_err(|_| corrupt(format!("version {version}")))?,
        started_at,
        updated_at,
        last_event_id,
    })
}

/// The instance an optional-row query found (`operation` names the query in its error).
pub(crate) fn saga_of(
    row: Result<Option<SagaRow>, sqlx::Error>,
    operation: &'static str,
    table: &str,
) -> Result<Option<SagaRecord>, StoreError> {
    row.map_err(super::db_err(operation, table))?
        .map(|row| saga_record(row, table))
        .transpose()
}

/// A timer's row: the columns of [`TIMER_COLUMNS`].
pub(crate) type TimerRow = (Uuid, String, String, i64, String, DateTime<Utc>);

pub(crate) fn saga_timer(row: TimerRow, table: &str) -> Result<SagaTimer, StoreError> {
    let (saga_id, saga_type, step, attempt, kind, due_at) = row;
    Ok(SagaTimer {
        attempt: u32::try_from(attempt).map_err(|_| StoreError::Corrupt {
            table: table.to_owned(),
            reason: format!("timer {kind} of step {step} of saga {saga_id}: attempt {attempt}"),
        })?,
        saga_id,
        saga_type,
        step,
        kind,
        due_at,
    })
}

/// Timers in the order the trait lists them: soonest first (then by identity, so that equal
/// deadlines come out the same on every backend).
pub(crate) fn sort_timers(timers: &mut [SagaTimer]) {
    timers.sort_by(|a, b| {
        (a.due_at, a.saga_id, &a.step, a.attempt, &a.kind)
            .cmp(&(b.due_at, b.saga_id, &b.step, b.attempt, &b.kind))
    });
}

/// A stored outcome (JSON text) as a value.
pub(crate) fn outcome(
    text: &str,
    table: &str,
    participant: &str,
    request_key: &str,
) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        table: table.to_owned(),
        reason: format!("outcome of request {request_key} of {participant} is not JSON: {e}"),
    })
}

/// Counts per `(saga_type, status)`, ordered by both (byte order, whatever the collation).
pub(crate) fn counts(
    rows: Vec<(String, String, i64)>,
    table: &str,
) -> Result<Vec<(String, String, u64)>, StoreError> {
    let mut counts = rows
        .into_iter()
        .map(|(saga_type, status, n)| Ok((saga_type, status, super::to_u64(n, table, "count")?)))
        .collect::<Result<Vec<_>, StoreError>>()?;
    counts.sort();
    Ok(counts)
}

/// A listing's limit as SQL: 0 is the default of 100.
pub(crate) fn list_limit(limit: usize) -> i64 {
    if limit == 0 {
        100
    } else {
        i64::try_from(limit).unwrap_or(i64::MAX)
    }
}

/// An instance's stream version as a `BIGINT`.
pub(crate) fn version_of(record: &SagaRecord, table: &str) -> Result<i64, StoreError> {
    i64::try_from(record.version).map_err(|_| StoreError::Corrupt {
        table: table.to_owned(),
        reason: format!(
            "version {} of saga {} does not fit a BIGINT",
            record.version, record.saga_id
        ),
    })
}

/// The timers a transition cancels and stores, made disjoint for one statement
/// (`finish_saga_transition` of PostgreSQL, whose parts must not write a row twice): nothing
/// when the instance's timers are all deleted; else the cancelled ones that are not stored
/// again (storing replaces them anyway) and the stored ones, the last of each identity.
#[cfg(feature = "postgres")]
pub(crate) fn disjoint_timer_writes<'a>(
    write: &SagaTransitionWrite<'a>,
) -> (Vec<&'a SagaTimerId>, Vec<&'a SagaTimer>) {
    if write.clear {
        return (Vec::new(), Vec::new());
    }
    let mut put: Vec<&SagaTimer> = Vec::with_capacity(write.put.len());
    for timer in write.put {
        put.retain(|t| {
            !(t.step == timer.step && t.attempt == timer.attempt && t.kind == timer.kind)
        });
        put.push(timer);
    }
    let cancel = write
        .cancel
        .iter()
        .filter(|id| !put.iter().any(|t| id.is(t)))
        .collect();
    (cancel, put)
}

/// A statement on one timer with its identity bound: `$1` saga id, `$2` step, `$3` attempt, `$4`
/// kind (the caller binds the rest).
pub(crate) fn timer_query<'q, DB: sqlx::Database>(
    sql: &'q str,
    timer: &'q SagaTimer,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    Uuid: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    sqlx::query(sql)
        .bind(timer.saga_id)
        .bind(&timer.step)
        .bind(i64::from(timer.attempt))
        .bind(&timer.kind)
}

mod store;
pub(crate) use store::saga_store;

#[cfg(test)]
mod tests {
    use super::*;

    /// The clock of `lock_with_clock` is read right after the row's columns.
    #[test]
    fn the_column_count_matches_the_columns() {
        assert_eq!(SAGA_COLUMNS.split(',').count(), SAGA_COLUMN_COUNT);
    }
}
