//! Shared commits (ADR 0024): the appends a [`Coalescer`](crate::coalesce) gathered, written by
//! one statement; written again one by one when that statement fails as a whole.

use std::collections::HashMap;
use std::sync::Arc;

use eventfold_core::{NewEvent, OutboxMessage, StreamId};
use sqlx::{PgConnection, PgPool, Postgres};
use tokio::sync::watch;
use uuid::Uuid;

use super::append::{Binds, append_pooled, prepare_append};
use super::*;
use crate::coalesce::{BatchWriter, Reply};
use crate::error::{ExpectedVersion, StoreError};
use crate::sql::unit_of_work::{Savepoint, SavepointOf::Append, savepoint};
use crate::sql::{self, to_i64, to_u64};
use crate::store::{AppendResult, StreamAppend};

/// One queued append: checked, with its source and its outbox rows.
pub(super) struct PgAppend {
    pub(super) stream_id: StreamId,
    pub(super) expected: ExpectedVersion,
    pub(super) events: Vec<NewEvent>,
    pub(super) outbox: Vec<OutboxMessage>,
}

/// Writes batches of appends for a [`PgStore`](super::PgStore).
pub(super) struct PgBatchWriter {
    pub(super) pool: PgPool,
    pub(super) sql: Arc<Statements>,
    pub(super) appended: Arc<watch::Sender<u64>>,
}

/// A row of the batch statement: an appended event (`None`, its id, position, version) or an
/// append whose version did not match (its 1-based index, -, -, the version found).
pub(super) type BatchRow = (Option<i64>, Option<Uuid>, Option<i64>, i64);

impl BatchWriter for PgBatchWriter {
    crate::coalesce::append_writer_head!(PgAppend);

    fn table(&self) -> &str {
        &self.sql.events
    }

    /// Wakes the log readers once per batch.
    fn written(&self) {
        self.appended.send_modify(|n| *n += 1);
    }

    /// One append on its own (one statement, as without coalescing).
    async fn alone(&self, a: PgAppend) -> Result<AppendResult, StoreError> {
        let (sql, events, outbox) = (&self.sql, &a.events, &a.outbox);
        append_pooled(&self.pool, sql, &a.stream_id, a.expected, events, outbox).await
    }

    /// Every append of the batch in one statement: each append's result, or the statement's
    /// error (then nothing of the batch was written).
    async fn shared(
        &self,
        batch: &[(PgAppend, Reply)],
    ) -> Result<Vec<Result<AppendResult, StoreError>>, StoreError> {
        let appends: Vec<&PgAppend> = batch.iter().map(|(a, _)| a).collect();
        let mut conn = sql::acquire(&self.pool, &self.sql.events).await?;
        write_batch(&mut conn, &self.sql, &appends).await
    }
}

/// Writes `appends` (of distinct streams) with the batch statement on `conn`: each append's
/// result (a version that did not match is its [`StoreError::VersionConflict`], and writes
/// nothing of that append), or the statement's error (then nothing of them was written).
pub(super) async fn write_batch(
    conn: &mut PgConnection,
    sql: &Statements,
    appends: &[&PgAppend],
) -> Result<Vec<Result<AppendResult, StoreError>>, StoreError> {
    let encode = |e| sql::db_err("appending events", &sql.events)(sqlx::Error::Encode(e));
    let args = batch_binds(appends).finish().map_err(encode)?;
    let rows: Vec<BatchRow> = sqlx::query_as_with(&sql.append_batch, args)
        .fetch_all(conn)
        .await
        .map_err(sql::db_err("appending events", &sql.events))?;
    batch_results(sql, appends, rows)
}

/// Each append's result from the rows of the batch statement (see [`write_batch`]).
pub(super) fn batch_results(
    sql: &Statements,
    appends: &[&PgAppend],
    rows: Vec<BatchRow>,
) -> Result<Vec<Result<AppendResult, StoreError>>, StoreError> {
    let mut appended: HashMap<Uuid, (i64, i64)> = HashMap::with_capacity(rows.len());
    let mut found: HashMap<usize, i64> = HashMap::new();
    for (index, id, position, version) in rows {
        match (index, id, position) {
            (None, Some(id), Some(position)) => {
                appended.insert(id, (position, version));
            }
            (Some(index), _, _) => {
                found.insert(usize::try_from(index).unwrap_or(usize::MAX), version);
            }
            _ => {}
        }
    }
    Ok(appends
        .iter()
        .enumerate()
        .map(|(i, a)| match found.get(&(i + 1)) {
            Some(&actual) => Err(StoreError::VersionConflict {
                stream_id: a.stream_id.clone(),
                expected: a.expected,
                actual: Some(to_u64(actual, &sql.events, "stream version")?),
            }),
            None => result_of(&sql.events, a, &appended),
        })
        .collect())
}

/// An append's result from the positions and versions its events were given.
fn result_of(
    table: &str,
    a: &PgAppend,
    appended: &HashMap<Uuid, (i64, i64)>,
) -> Result<AppendResult, StoreError> {
    let mut rows = Vec::with_capacity(a.events.len());
    for e in &a.events {
        let Some(&(position, version)) = appended.get(&e.event_id) else {
            return Err(StoreError::Corrupt {
                table: table.to_owned(),
                reason: format!(
                    "the shared append of stream {} did not return event {}",
                    a.stream_id, e.event_id
                ),
            });
        };
        rows.push((
            to_u64(position, table, "global position")?,
            to_u64(version, table, "stream version")?,
        ));
    }
    rows.sort_by_key(|(_, version)| *version);
    let version = rows.last().map_or(0, |r| r.1);
    Ok(AppendResult {
        previous_version: version.saturating_sub(a.events.len() as u64),
        version,
        positions: rows.into_iter().map(|(p, _)| p).collect(),
    })
}

/// The batch statement's parameters: one array per column (see `Statements::append_batch`).
pub(super) fn batch_binds(batch: &[&PgAppend]) -> Binds {
    let mut binds = Binds::default();
    let (mut types, mut ids, mut expected) = (Vec::new(), Vec::new(), Vec::new());
    let (mut e_cmd, mut e_n, mut m_cmd) = (Vec::new(), Vec::new(), Vec::new());
    for (i, a) in batch.iter().enumerate() {
        let cmd = i as i64 + 1;
        types.push(a.stream_id.stream_type());
        ids.push(a.stream_id.id());
        match a.expected.exact().map(|v| to_i64(v, &a.stream_id)) {
            Some(Ok(v)) => expected.push(Some(v)),
            // Refused before queueing (`check_append`); a version past i64 matches nothing.
            Some(Err(_)) => expected.push(Some(-1)),
            None => expected.push(None),
        }
        for n in 0..a.events.len() {
            e_cmd.push(cmd);
            e_n.push(n as i64 + 1);
        }
        m_cmd.extend(a.outbox.iter().map(|_| cmd));
    }
    binds
        .add(types)
        .add(ids)
        .add(expected)
        .add(e_cmd)
        .add(e_n)
        .events(batch.iter().flat_map(|a| &a.events))
        .add(m_cmd);
    binds.outbox(batch.iter().flat_map(|a| &a.outbox));
    binds
}

/// How many appends from the start of `appends` write to distinct streams: one statement's run.
fn distinct_run(appends: &[PgAppend]) -> usize {
    let mut seen = std::collections::HashSet::with_capacity(appends.len());
    appends
        .iter()
        .take_while(|a| seen.insert(&a.stream_id))
        .count()
}

impl PgUnitOfWork {
    /// [`UnitOfWork::append_many`](crate::store::UnitOfWork::append_many): the appends cut into
    /// runs of distinct streams, in order, each run one batch statement inside a savepoint. A
    /// run whose statement fails (a concurrent writer of one of its streams) is rolled back to
    /// the savepoint and written again one append at a time, each with its own error.
    pub(super) async fn append_runs(
        &mut self,
        appends: Vec<StreamAppend>,
    ) -> Result<Vec<AppendResult>, StoreError> {
        let routing = self.routing.as_deref();
        let mut prepared = Vec::with_capacity(appends.len());
        for a in appends {
            let (events, outbox) =
                prepare_append(&a.stream_id, a.expected, a.events, &self.source, routing)?;
            prepared.push(PgAppend {
                stream_id: a.stream_id,
                expected: a.expected,
                events,
                outbox,
            });
        }
        let mut results = Vec::with_capacity(prepared.len());
        let mut rest = prepared.as_slice();
        while !rest.is_empty() {
            let (run, later) = rest.split_at(distinct_run(rest));
            rest = later;
            if let [a] = run {
                results.push(self.append_one(a).await?);
                continue;
            }
            let table = &self.sql.events;
            savepoint::<Postgres>(&mut self.tx, Append, Savepoint::Open, table).await?;
            let refs: Vec<&PgAppend> = run.iter().collect();
            match write_batch(&mut self.tx, &self.sql, &refs).await {
                Ok(written) => {
                    savepoint::<Postgres>(&mut self.tx, Append, Savepoint::Release, table).await?;
                    self.wrote_events = true;
                    for result in written {
                        results.push(result?);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, appends = run.len(), "a shared append failed; appending one at a time");
                    savepoint::<Postgres>(&mut self.tx, Append, Savepoint::RollBack, table).await?;
                    for a in run {
                        results.push(self.append_one(a).await?);
                    }
                }
            }
        }
        Ok(results)
    }

    /// One prepared append on its own.
    async fn append_one(&mut self, a: &PgAppend) -> Result<AppendResult, StoreError> {
        self.append_prepared(&a.stream_id, a.expected, &a.events, &a.outbox)
            .await
    }
}
