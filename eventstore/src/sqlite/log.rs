//! The global log: writers are serialized, so the log is read by position up to the highest
//! one; readers are woken by appends through this process.

use super::*;
use crate::error::StoreError;
use crate::log::{Checkpoint, LogBatch, LogFilter, LogHead};
use crate::sql::{self, db_err, to_u64};
use crate::store::LocalWakeup;

impl SqliteStore {
    /// Writers are serialized (`BEGIN IMMEDIATE`), so the log is in position order and every
    /// committed position up to the highest one is readable.
    pub(super) async fn read_log_by_position(
        &self,
        after: Checkpoint,
        max_count: usize,
        filter: &LogFilter,
    ) -> Result<LogBatch, StoreError> {
        let mut conn = sql::acquire(&self.pool, &self.sql.events).await?;
        let (end,): (i64,) = sqlx::query_as(&self.sql.log_end)
            .fetch_one(&mut *conn)
            .await
            .map_err(db_err("reading the log head", &self.sql.events))?;
        let rows: Vec<sql::LogRow> = sqlx::query_as(&self.sql.read_log)
            .bind(i64::try_from(after.position()).unwrap_or(i64::MAX))
            .bind(end)
            .bind(sql::filter_list(&filter.event_types))
            .bind(sql::filter_list(&filter.stream_types))
            .bind(filter.tenant.as_deref())
            .bind(i64::try_from(max_count).unwrap_or(i64::MAX))
            .fetch_all(&mut *conn)
            .await
            .map_err(db_err("reading the log", &self.sql.events))?;
        let end = Checkpoint::new(0, to_u64(end, &self.sql.events, "global position")?);
        sql::log_batch(rows, after, max_count, end, false, &self.sql.events)
    }

    pub(super) async fn read_log_head(&self) -> Result<LogHead, StoreError> {
        let (end,): (i64,) = sqlx::query_as(&self.sql.log_end)
            .fetch_one(&self.pool)
            .await
            .map_err(db_err("reading the log head", &self.sql.events))?;
        let position = to_u64(end, &self.sql.events, "global position")?;
        Ok(LogHead {
            position,
            readable_position: position,
            blocked_by: None,
        })
    }

    pub(super) async fn open_wakeup(&self) -> Result<LocalWakeup, StoreError> {
        Ok(LocalWakeup(self.appended.subscribe()))
    }
}
