//! The [`SagaStore`](crate::saga::SagaStore) of PostgreSQL: the shared one of
//! `crate::sql::sagas` (statements in the PostgreSQL dialect, in `statements.rs`; tables from
//! `migrations/0007_sagas.sql`) and the claim of due timers.
//!
//! Registering a taken business key waits, in the unique index on `(saga_type,
//! business_key)`, for the transaction that took it; once that one committed, the next
//! statement (READ COMMITTED) finds its owner. A claim is one statement (`UPDATE ... FROM
//! (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING`), so schedulers on several nodes never get
//! the same timer and never wait for each other. The clock is `statement_timestamp()` (see
//! `Pg::NOW` for why not `now()` or `clock_timestamp()`).

use std::time::Duration;

use super::{PgStore, PgUnitOfWork};
use crate::error::StoreError;
use crate::saga::{SagaTimer, SagaTransitionWrite};
use crate::sql::{db_err, sagas as shared};

crate::sql::sagas::saga_store!(PgStore, PgUnitOfWork);

impl PgStore {
    /// [`crate::saga::SagaStore::finish_saga_transition`] in one statement (see
    /// `Statements::finish_saga_transition`).
    pub(super) async fn finish_transition(
        &self,
        uow: &mut PgUnitOfWork,
        write: SagaTransitionWrite<'_>,
    ) -> Result<bool, StoreError> {
        let sql = &self.sql.sagas;
        let record = write.record;
        let (cancel, put) = shared::disjoint_timer_writes(&write);
        let done = sqlx::query(&self.sql.finish_saga_transition)
            .bind(record.saga_id)
            .bind(&record.status)
            .bind(record.detail.as_deref())
            .bind(i64::from(record.definition_version))
            .bind(shared::version_of(record, &sql.sagas)?)
            .bind(record.last_event_id)
            .bind(cancel.iter().map(|t| t.step.as_str()).collect::<Vec<_>>())
            .bind(
                cancel
                    .iter()
                    .map(|t| i64::from(t.attempt))
                    .collect::<Vec<_>>(),
            )
            .bind(cancel.iter().map(|t| t.kind.as_str()).collect::<Vec<_>>())
            .bind(write.clear)
            .bind(put.iter().map(|t| t.step.as_str()).collect::<Vec<_>>())
            .bind(put.iter().map(|t| i64::from(t.attempt)).collect::<Vec<_>>())
            .bind(put.iter().map(|t| t.kind.as_str()).collect::<Vec<_>>())
            .bind(put.iter().map(|t| t.saga_type.as_str()).collect::<Vec<_>>())
            .bind(put.iter().map(|t| t.due_at).collect::<Vec<_>>())
            .execute(uow.connection())
            .await
            .map_err(db_err("ending a saga transition", &sql.sagas))?;
        Ok(done.rows_affected() > 0)
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
        let rows: Vec<shared::TimerRow> = sqlx::query_as(&self.sql.claim_saga_timers)
            .bind(saga_types)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(lease.as_secs_f64())
            .fetch_all(&self.pool)
            .await
            .map_err(db_err("claiming saga timers", table))?;
        let mut claimed = rows
            .into_iter()
            .map(|row| shared::saga_timer(row, table))
            .collect::<Result<Vec<_>, StoreError>>()?;
        // RETURNING has no order.
        shared::sort_timers(&mut claimed);
        Ok(claimed)
    }
}
