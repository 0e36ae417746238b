//! The [`SagaStore`](crate::saga::SagaStore) of SQLite: the shared one of `crate::sql::sagas`
//! (statements in the SQLite dialect, in `statements.rs`; tables from
//! `migrations/0006_sagas.sql`) and the claim of due timers.
//!
//! Writers are serialized by `BEGIN IMMEDIATE`: two units of work that register the same
//! business key run one after the other (the second finds the first's row), and a claim, in a
//! `BEGIN IMMEDIATE` transaction of its own, reads the clock, selects the due timers and moves
//! their deadlines with no other writer in between, so two claimers never get the same timer.
//! The clock is SQLite's, in milliseconds (`Lite::NOW`); timestamps are text that sorts in time
//! order.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{SqliteStore, SqliteUnitOfWork};
use crate::error::StoreError;
use crate::saga::{SagaTimer, SagaTransitionWrite, claimed_until};
use crate::sql::{self, db_err, sagas as shared};

crate::sql::sagas::saga_store!(SqliteStore, SqliteUnitOfWork);

/// A due timer and its claims so far.
type ClaimRow = (Uuid, String, String, i64, String, DateTime<Utc>, i64);

impl SqliteStore {
    /// [`crate::saga::SagaStore::finish_saga_transition`]: one statement at a time (in-process,
    /// they cost no round trip).
    pub(super) async fn finish_transition(
        &self,
        uow: &mut SqliteUnitOfWork,
        write: SagaTransitionWrite<'_>,
    ) -> Result<bool, StoreError> {
        crate::saga::finish_in_steps(self, uow, write).await
    }

    /// [`crate::saga::SagaStore::write_saga_transition`]: one call after the other.
    pub(super) async fn write_transition(
        &self,
        uow: &mut SqliteUnitOfWork,
        stream_id: &eventfold_core::StreamId,
        expected: u64,
        events: Vec<eventfold_core::NewEvent>,
        messages: Vec<eventfold_core::OutboxMessage>,
        write: SagaTransitionWrite<'_>,
    ) -> Result<bool, StoreError> {
        crate::saga::write_in_steps(self, uow, stream_id, expected, events, messages, write).await
    }

    /// [`crate::saga::SagaStore::write_saga_transitions`]: one transition after the other.
    pub(super) async fn write_transitions(
        &self,
        uow: &mut SqliteUnitOfWork,
        transitions: Vec<crate::saga::SagaTransitionItem<'_>>,
    ) -> Result<Vec<bool>, StoreError> {
        crate::saga::write_transitions_one_by_one(self, uow, transitions).await
    }

    /// [`crate::saga::SagaStore::register_sagas_with_clock`]: one instance at a time
    /// (in-process statements; a SQLite writer holds the database already).
    pub(super) async fn register_many(
        &self,
        uow: &mut SqliteUnitOfWork,
        records: &[crate::saga::SagaRecord],
    ) -> Result<Vec<crate::saga::SagaRegistration>, StoreError> {
        crate::saga::register_sagas_one_by_one(self, uow, records).await
    }

    /// [`crate::saga::SagaStore::lock_sagas_with_clock`]: one instance at a time (a SQLite
    /// writer holds the database already).
    pub(super) async fn lock_many(
        &self,
        uow: &mut SqliteUnitOfWork,
        saga_ids: &[Uuid],
    ) -> Result<Vec<(crate::saga::SagaRecord, DateTime<Utc>)>, StoreError> {
        crate::saga::lock_sagas_one_by_one(self, uow, saga_ids).await
    }

    /// [`crate::saga::SagaStore::find_request_outcomes`]: one statement per key (in-process).
    pub(super) async fn find_outcomes(
        &self,
        uow: &mut SqliteUnitOfWork,
        participant: &str,
        request_keys: &[&str],
    ) -> Result<Vec<Option<serde_json::Value>>, StoreError> {
        crate::saga::find_outcomes_one_by_one(self, uow, participant, request_keys).await
    }

    /// [`crate::saga::SagaStore::record_request_outcomes`]: one statement per outcome.
    pub(super) async fn record_outcomes(
        &self,
        uow: &mut SqliteUnitOfWork,
        participant: &str,
        outcomes: &[(&str, &serde_json::Value)],
    ) -> Result<Vec<bool>, StoreError> {
        crate::saga::record_outcomes_one_by_one(self, uow, participant, outcomes).await
    }

    /// Claims up to `limit` due timers of `saga_types` (not empty) for `lease`; see
    /// [`crate::saga::SagaStore::claim_due_timers`].
    pub(super) async fn claim_saga_timers(
        &self,
        saga_types: &[String],
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<SagaTimer>, StoreError> {
        let table = &self.sql.sagas.timers;
        let Some(types) = sql::filter_list(saga_types) else {
            return Ok(Vec::new());
        };
        let (_turn, mut tx) = self
            .begin_immediate("starting a timer claim", table)
            .await?;
        let (now,): (DateTime<Utc>,) = sqlx::query_as(&self.sql.sagas.now)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err("reading the database clock", table))?;
        let rows: Vec<ClaimRow> = sqlx::query_as(&self.sql.claim_saga_timers)
            .bind(types)
            .bind(now)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err("claiming saga timers", table))?;
        let mut claimed = Vec::with_capacity(rows.len());
        for (saga_id, saga_type, step, attempt, kind, due_at, claims) in rows {
            let claims = u32::try_from(claims).map_err(|_| StoreError::Corrupt {
                table: table.clone(),
                reason: format!("timer {kind} of step {step} of saga {saga_id}: claims {claims}"),
            })?;
            sqlx::query(&self.sql.claim_saga_timer)
                .bind(saga_id)
                .bind(&step)
                .bind(attempt)
                .bind(&kind)
                .bind(claimed_until(now, lease, claims.saturating_add(1)))
                .execute(&mut *tx)
                .await
                .map_err(db_err("claiming a saga timer", table))?;
            claimed.push(shared::saga_timer(
                (saga_id, saga_type, step, attempt, kind, due_at),
                table,
            )?);
        }
        tx.commit()
            .await
            .map_err(db_err("committing a timer claim", table))?;
        Ok(claimed)
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, SecondsFormat, Utc};

    use crate::sql::dialect::{Dialect, Lite};

    /// SQLite's clock is written exactly as the driver writes a bound `DateTime<Utc>`, so that
    /// the text of both sorts in time order (with and without a fraction of a second).
    #[tokio::test]
    async fn the_clock_is_written_like_a_bound_timestamp() {
        let pool = sqlx::SqlitePool::connect("sqlite::memory:")
            .await
            .expect("connect");
        for (at, expected) in [
            ("2024-03-05 06:07:08", "2024-03-05T06:07:08+00:00"),
            ("2024-03-05 06:07:08.250", "2024-03-05T06:07:08.250+00:00"),
            ("now", ""),
        ] {
            let expression = Lite::NOW.replace("'now'", &format!("'{at}'"));
            let (text, parsed): (String, DateTime<Utc>) =
                sqlx::query_as(&format!("SELECT {expression}, {expression}"))
                    .fetch_one(&pool)
                    .await
                    .expect("the clock");
            if !expected.is_empty() {
                assert_eq!(text, expected);
            }
            assert_eq!(
                text,
                parsed.to_rfc3339_opts(SecondsFormat::AutoSi, false),
                "written as sqlx writes it"
            );
        }
        let (now,): (DateTime<Utc>,) = sqlx::query_as(&format!("SELECT {}", Lite::NOW))
            .fetch_one(&pool)
            .await
            .expect("the clock");
        let skew = (Utc::now() - now).num_milliseconds().abs();
        assert!(skew < 5_000, "the host's clock, in UTC: {now}");
    }
}
