//! Shared commits (ADR 0024): the appends a [`Coalescer`](crate::coalesce) gathered, written by
//! one statement; written again one by one when that statement fails as a whole.

use std::collections::HashMap;
use std::sync::Arc;

use eventfold_core::{NewEvent, OutboxMessage, StreamId};
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;
use uuid::Uuid;

use super::append::{Binds, append_pooled};
use super::*;
use crate::coalesce::{BatchWriter, Reply};
use crate::error::{ExpectedVersion, StoreError};
use crate::sql::{self, to_i64, to_u64};
use crate::store::AppendResult;

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
type BatchRow = (Option<i64>, Option<Uuid>, Option<i64>, i64);

impl BatchWriter for PgBatchWriter {
    type Request = PgAppend;

    fn stream(request: &PgAppend) -> &StreamId {
        &request.stream_id
    }

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
        let encode = |e| sql::db_err("appending events", &self.sql.events)(sqlx::Error::Encode(e));
        let args = binds(batch).finish().map_err(encode)?;
        let mut conn = sql::acquire(&self.pool, &self.sql.events).await?;
        let rows: Vec<BatchRow> = sqlx::query_as_with(&self.sql.append_batch, args)
            .fetch_all(&mut *conn as &mut PgConnection)
            .await
            .map_err(sql::db_err("appending events", &self.sql.events))?;
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
        Ok(batch
            .iter()
            .enumerate()
            .map(|(i, (a, _))| match found.get(&(i + 1)) {
                Some(&actual) => Err(StoreError::VersionConflict {
                    stream_id: a.stream_id.clone(),
                    expected: a.expected,
                    actual: Some(to_u64(actual, &self.sql.events, "stream version")?),
                }),
                None => self.result_of(a, &appended),
            })
            .collect())
    }
}

impl PgBatchWriter {
    /// An append's result from the positions and versions its events were given.
    fn result_of(
        &self,
        a: &PgAppend,
        appended: &HashMap<Uuid, (i64, i64)>,
    ) -> Result<AppendResult, StoreError> {
        let table = &self.sql.events;
        let mut rows = Vec::with_capacity(a.events.len());
        for e in &a.events {
            let Some(&(position, version)) = appended.get(&e.event_id) else {
                return Err(StoreError::Corrupt {
                    table: table.clone(),
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
}

/// The batch statement's parameters: one array per column (see `Statements::append_batch`).
fn binds(batch: &[(PgAppend, Reply)]) -> Binds {
    let mut binds = Binds::default();
    let (mut types, mut ids, mut expected) = (Vec::new(), Vec::new(), Vec::new());
    let (mut e_cmd, mut e_n, mut m_cmd) = (Vec::new(), Vec::new(), Vec::new());
    for (i, (a, _)) in batch.iter().enumerate() {
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
        .events(batch.iter().flat_map(|(a, _)| &a.events))
        .add(m_cmd);
    binds.outbox(batch.iter().flat_map(|(a, _)| &a.outbox));
    binds
}
