//! The outbox: its status and rows, the relay's store (leases, claims, dead letters; ADR 0009)
//! and the floor that keeps claims off the index entries of deleted rows (ADR 0017).

use std::time::{Duration, Instant};

use uuid::Uuid;

use super::*;
use crate::error::StoreError;
use crate::outbox::{OutboxRelayStore, OutboxRow, OutboxStatus, OutboxStore, fair_share};
use crate::sql::{self, db_err, to_u64};

/// How often a store's relays advance the outbox floor before a claim (ADR 0017). A claim walks
/// past the index entries of the rows deleted since then.
pub(super) const FLOOR_EVERY: Duration = Duration::from_millis(100);

pub(super) fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

pub(super) fn seqs_i64(seqs: &[u64]) -> Vec<i64> {
    seqs.iter()
        .map(|s| i64::try_from(*s).unwrap_or(i64::MAX))
        .collect()
}

impl PgStore {
    /// Whether the outbox floor is due to advance; if so, the next advance is `FLOOR_EVERY` away.
    pub(super) fn floor_due(&self) -> bool {
        let Ok(mut last) = self.floor_advanced.lock() else {
            return true;
        };
        let due = last.is_none_or(|at| at.elapsed() >= FLOOR_EVERY);
        if due {
            *last = Some(Instant::now());
        }
        due
    }

    /// Raises the outbox floor to the first row that is live and can be no other (ADR 0017).
    /// When another relay is advancing it (its row is locked), this one leaves it to them.
    pub(super) async fn advance_outbox_floor(&self) -> Result<(), StoreError> {
        let table = self.naming.table("outbox_floor");
        let err = |op| db_err(op, &table);
        let mut tx = sql::begin_owned(&self.pool, None)
            .await
            .map_err(err("starting to advance the outbox floor"))?;
        let locked: Option<(i64,)> = sqlx::query_as(&self.relay.floor_lock)
            .fetch_optional(&mut *tx)
            .await
            .map_err(err("locking the outbox floor"))?;
        if locked.is_none() {
            return Ok(());
        }
        sqlx::query(&self.relay.floor_advance)
            .bind(&self.sql.outbox)
            .execute(&mut *tx)
            .await
            .map_err(err("advancing the outbox floor"))?;
        tx.commit()
            .await
            .map_err(err("committing the outbox floor"))
    }
}

impl OutboxRelayStore for PgStore {
    async fn lease_slots(&self, owner: Uuid, ttl: Duration) -> Result<Vec<u32>, StoreError> {
        let r = &self.relay;
        let table = self.naming.table("outbox_leases");
        let err = |op| db_err(op, &table);
        let mut tx = sql::begin_owned(&self.pool, None)
            .await
            .map_err(err("starting a lease transaction"))?;
        sqlx::query(&r.heartbeat)
            .bind(owner)
            .execute(&mut *tx)
            .await
            .map_err(err("heartbeating"))?;
        let (live,): (i64,) = sqlx::query_as(&r.live)
            .bind(seconds(ttl))
            .fetch_one(&mut *tx)
            .await
            .map_err(err("counting live relays"))?;
        let share = fair_share(u64::try_from(live).unwrap_or(1));
        let mine: Vec<(i32,)> = sqlx::query_as(&r.mine)
            .bind(owner)
            .fetch_all(&mut *tx)
            .await
            .map_err(err("reading leases"))?;
        let mut mine: Vec<i32> = mine.into_iter().map(|(s,)| s).collect();
        if mine.len() > share {
            let extra = mine.split_off(share);
            sqlx::query(&r.release_some)
                .bind(owner)
                .bind(extra)
                .execute(&mut *tx)
                .await
                .map_err(err("releasing leases"))?;
        }
        sqlx::query(&r.renew)
            .bind(owner)
            .bind(seconds(ttl))
            .bind(&mine)
            .execute(&mut *tx)
            .await
            .map_err(err("renewing leases"))?;
        if mine.len() < share {
            let taken: Vec<(i32,)> = sqlx::query_as(&r.take)
                .bind(owner)
                .bind(seconds(ttl))
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
        let table = self.naming.table("outbox_leases");
        let mut tx = sql::begin_owned(&self.pool, None)
            .await
            .map_err(db_err("releasing leases", &table))?;
        // The relay's row first, then its leases: the order `lease_slots` takes its locks in
        // (relay rows, then lease rows), so a release and another relay's renewal (which may
        // delete this relay's row if it looks stale) never wait for each other in a cycle.
        sqlx::query(&self.relay.forget)
            .bind(owner)
            .execute(&mut *tx)
            .await
            .map_err(db_err("releasing leases", &table))?;
        sqlx::query(&self.relay.release_all)
            .bind(owner)
            .execute(&mut *tx)
            .await
            .map_err(db_err("releasing leases", &table))?;
        tx.commit()
            .await
            .map_err(db_err("releasing leases", &table))
    }

    async fn claim_outbox(
        &self,
        slots: &[u32],
        limit: usize,
        in_flight: &[&str],
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let slots: Vec<i32> = slots
            .iter()
            .filter_map(|s| i32::try_from(*s).ok())
            .collect();
        // The floor only makes claims cheaper: a claim does not fail because it could not
        // advance (the next advance is due in `FLOOR_EVERY`).
        if self.floor_due()
            && let Err(e) = self.advance_outbox_floor().await
        {
            tracing::warn!(error = %e, "advancing the outbox floor failed; claims walk from the old floor");
        }
        let rows: Vec<sql::OutboxDbRow> = sqlx::query_as(&self.relay.claim)
            .bind(slots)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(in_flight)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err("claiming outbox rows", &self.sql.outbox))?;
        sql::outbox::outbox_rows(rows, &self.sql.outbox)
    }

    async fn complete_outbox(&self, owner: Uuid, seqs: &[u64]) -> Result<u64, StoreError> {
        let done = sqlx::query(&self.relay.complete)
            .bind(owner)
            .bind(seqs_i64(seqs))
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
        sqlx::query(&self.relay.fail)
            .bind(i64::try_from(seq).unwrap_or(i64::MAX))
            .bind(error)
            .bind(seconds(retry_after))
            .execute(&self.pool)
            .await
            .map_err(db_err("recording a failed publish", &self.sql.outbox))?;
        Ok(())
    }

    async fn park_outbox(&self, seq: u64, error: &str) -> Result<(), StoreError> {
        sqlx::query(&self.relay.park)
            .bind(i64::try_from(seq).unwrap_or(i64::MAX))
            .bind(error)
            .execute(&self.pool)
            .await
            .map_err(db_err("parking an outbox row", &self.sql.outbox))?;
        Ok(())
    }

    crate::sql::outbox::dead_letter_reads!();

    async fn retry_dead_letter(&self, seq: u64) -> Result<bool, StoreError> {
        let done = sqlx::query(&self.relay.retry)
            .bind(i64::try_from(seq).unwrap_or(i64::MAX))
            .execute(&self.pool)
            .await
            .map_err(db_err("retrying a dead letter", &self.sql.outbox))?;
        Ok(done.rows_affected() == 1)
    }
}

impl OutboxStore for PgStore {
    crate::sql::outbox::outbox_reads!();

    async fn outbox_status(&self) -> Result<OutboxStatus, StoreError> {
        type Status = (i64, Option<chrono::DateTime<chrono::Utc>>, i64, Option<i64>);
        let (pending, oldest, dead, lag): Status = sqlx::query_as(&self.sql.outbox_status)
            .bind(&self.sql.outbox)
            .fetch_one(&self.pool)
            .await
            .map_err(db_err("reading the outbox status", &self.sql.outbox))?;
        Ok(OutboxStatus {
            pending: to_u64(pending, &self.sql.outbox, "count")?,
            oldest,
            dead_letters: to_u64(dead, &self.sql.outbox, "count")?,
            floor_lag: lag
                .map(|lag| to_u64(lag, &self.sql.outbox, "floor lag"))
                .transpose()?,
        })
    }
}
