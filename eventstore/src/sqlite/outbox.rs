//! The outbox: its status and rows, and the relay's store (leases, claims, dead letters; ADR
//! 0009).

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::*;
use crate::error::StoreError;
use crate::outbox::{OutboxRelayStore, OutboxRow, OutboxStatus, OutboxStore, fair_share};
use crate::sql::{self, db_err, to_u64};

pub(super) fn json_list<T: serde::Serialize>(values: &[T]) -> String {
    serde_json::to_string(values).unwrap_or_else(|_| "[]".to_owned())
}

pub(super) fn after(duration: Duration) -> DateTime<Utc> {
    eventfold_core::metadata::now_micros()
        + chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

pub(super) fn before(duration: Duration) -> DateTime<Utc> {
    eventfold_core::metadata::now_micros()
        - chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

/// A statement that copies an outbox row or a dead letter, bound by the caller.
type RowCopy<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

impl SqliteStore {
    /// Moves row `seq` between the outbox and its dead letters in one `BEGIN IMMEDIATE`
    /// transaction: `copy`, then `delete` (bound to `seq`). Answers how many rows the copy wrote; an error names `operation` and `table`.
    async fn move_row(
        &self,
        operation: &'static str,
        table: &str,
        seq: i64,
        copy: RowCopy<'_>,
        delete: &str,
    ) -> Result<u64, StoreError> {
        let err = || db_err(operation, table);
        let (_turn, mut tx) = self.begin_immediate(operation, table).await?;
        let copied = copy.execute(&mut *tx).await.map_err(err())?;
        sqlx::query(delete)
            .bind(seq)
            .execute(&mut *tx)
            .await
            .map_err(err())?;
        tx.commit().await.map_err(err())?;
        Ok(copied.rows_affected())
    }
}

impl OutboxRelayStore for SqliteStore {
    async fn lease_slots(&self, owner: Uuid, ttl: Duration) -> Result<Vec<u32>, StoreError> {
        let r = &self.relay;
        let err = |op| db_err(op, &r.leases);
        let now = eventfold_core::metadata::now_micros();
        let (_turn, mut tx) = self
            .begin_immediate("starting a lease transaction", &r.leases)
            .await?;
        sqlx::query(&r.heartbeat)
            .bind(owner)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(err("heartbeating"))?;
        sqlx::query(&r.forget_old)
            .bind(before(ttl * 3))
            .execute(&mut *tx)
            .await
            .map_err(err("forgetting relays"))?;
        let (live,): (i64,) = sqlx::query_as(&r.live)
            .bind(before(ttl))
            .fetch_one(&mut *tx)
            .await
            .map_err(err("counting live relays"))?;
        let share = fair_share(u64::try_from(live).unwrap_or(1));
        let mine: Vec<(i64,)> = sqlx::query_as(&r.mine)
            .bind(owner)
            .bind(now)
            .fetch_all(&mut *tx)
            .await
            .map_err(err("reading leases"))?;
        let mut mine: Vec<i64> = mine.into_iter().map(|(s,)| s).collect();
        if mine.len() > share {
            let extra = mine.split_off(share);
            sqlx::query(&r.release_some)
                .bind(owner)
                .bind(json_list(&extra))
                .execute(&mut *tx)
                .await
                .map_err(err("releasing leases"))?;
        }
        sqlx::query(&r.renew)
            .bind(owner)
            .bind(after(ttl))
            .bind(json_list(&mine))
            .execute(&mut *tx)
            .await
            .map_err(err("renewing leases"))?;
        if mine.len() < share {
            let taken: Vec<(i64,)> = sqlx::query_as(&r.take)
                .bind(owner)
                .bind(after(ttl))
                .bind(now)
                .bind(i64::try_from(share - mine.len()).unwrap_or(0))
                .fetch_all(&mut *tx)
                .await
                .map_err(err("taking leases"))?;
            mine.extend(taken.into_iter().map(|(s,)| s));
        }
        tx.commit().await.map_err(err("committing leases"))?;
        Ok(sql::outbox::held_slots(mine))
    }

    async fn release_slots(&self, owner: Uuid) -> Result<(), StoreError> {
        let r = &self.relay;
        let (_turn, mut tx) = self.begin_immediate("releasing leases", &r.leases).await?;
        sqlx::query(&r.release_all)
            .bind(owner)
            .execute(&mut *tx)
            .await
            .map_err(db_err("releasing leases", &r.leases))?;
        sqlx::query(&r.forget)
            .bind(owner)
            .execute(&mut *tx)
            .await
            .map_err(db_err("releasing leases", &r.leases))?;
        tx.commit()
            .await
            .map_err(db_err("releasing leases", &r.leases))
    }

    async fn claim_outbox(
        &self,
        slots: &[u32],
        limit: usize,
        in_flight: &[&str],
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let _turn = self
            .gate
            .enter("claiming outbox rows", &self.sql.outbox)
            .await?;
        // Holding at least half of the slots, walk the outbox in `seq` order (it stops at the
        // limit); holding few, go through the slot index (it skips the others' rows).
        let claim = if slots.len().saturating_mul(2) >= crate::outbox::OUTBOX_SLOTS as usize {
            &self.relay.claim_by_seq
        } else {
            &self.relay.claim
        };
        let rows: Vec<sql::OutboxDbRow> = sqlx::query_as(claim)
            .bind(json_list(slots))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(eventfold_core::metadata::now_micros())
            .bind(json_list(in_flight))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err("claiming outbox rows", &self.sql.outbox))?;
        sql::outbox::outbox_rows(rows, &self.sql.outbox)
    }

    async fn complete_outbox(&self, owner: Uuid, seqs: &[u64]) -> Result<u64, StoreError> {
        let _turn = self
            .gate
            .enter("deleting published outbox rows", &self.sql.outbox)
            .await?;
        let done = sqlx::query(&self.relay.complete)
            .bind(owner)
            .bind(json_list(seqs))
            .bind(eventfold_core::metadata::now_micros())
            .execute(&self.pool)
            .await
            .map_err(db_err("deleting published outbox rows", &self.sql.outbox))?;
        Ok(done.rows_affected())
    }

    async fn fail_outbox(
        &self,
        seq: u64,
        error: &str,
        retry_after: Duration,
    ) -> Result<(), StoreError> {
        let _turn = self
            .gate
            .enter("recording a failed publish", &self.sql.outbox)
            .await?;
        sqlx::query(&self.relay.fail)
            .bind(i64::try_from(seq).unwrap_or(i64::MAX))
            .bind(error)
            .bind(after(retry_after))
            .execute(&self.pool)
            .await
            .map_err(db_err("recording a failed publish", &self.sql.outbox))?;
        Ok(())
    }

    async fn park_outbox(&self, seq: u64, error: &str) -> Result<(), StoreError> {
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        let copy = sqlx::query(&self.relay.park_copy)
            .bind(seq)
            .bind(error)
            .bind(eventfold_core::metadata::now_micros());
        let delete = &self.relay.park_delete;
        self.move_row("parking an outbox row", &self.sql.outbox, seq, copy, delete)
            .await?;
        Ok(())
    }

    crate::sql::outbox::dead_letter_reads!();

    async fn retry_dead_letter(&self, seq: u64) -> Result<bool, StoreError> {
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        let copy = sqlx::query(&self.relay.retry_copy).bind(seq);
        let (table, delete) = (&self.relay.dead_table, &self.relay.skip);
        let copied = self
            .move_row("retrying a dead letter", table, seq, copy, delete)
            .await?;
        Ok(copied == 1)
    }
}

impl OutboxStore for SqliteStore {
    crate::sql::outbox::outbox_reads!();

    async fn outbox_status(&self) -> Result<OutboxStatus, StoreError> {
        let (pending, oldest, dead): (i64, Option<DateTime<Utc>>, i64) =
            sqlx::query_as(&self.sql.outbox_status)
                .fetch_one(&self.pool)
                .await
                .map_err(db_err("reading the outbox status", &self.sql.outbox))?;
        Ok(OutboxStatus {
            pending: to_u64(pending, &self.sql.outbox, "count")?,
            oldest,
            dead_letters: to_u64(dead, &self.sql.outbox, "count")?,
            floor_lag: None,
        })
    }
}
