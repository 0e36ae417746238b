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

use eventfold_core::{NewEvent, OutboxMessage, StreamId};

use super::append::{
    Binds, Statement, append_binds, append_error, append_result, prepare_with_messages,
};
use super::{PgStore, PgUnitOfWork};
use crate::error::{ExpectedVersion, StoreError};
use crate::saga::{SagaTimer, SagaTransitionWrite};
use crate::sql::{db_err, sagas as shared, to_i64};

crate::sql::sagas::saga_store!(PgStore, PgUnitOfWork);

impl PgStore {
    /// [`crate::saga::SagaStore::lock_sagas_with_clock`] in one statement.
    pub(super) async fn lock_many(
        &self,
        uow: &mut PgUnitOfWork,
        saga_ids: &[uuid::Uuid],
    ) -> Result<Vec<(crate::saga::SagaRecord, chrono::DateTime<chrono::Utc>)>, StoreError> {
        let table = &self.sql.sagas.sagas;
        let rows = sqlx::query(&self.sql.lock_sagas)
            .bind(saga_ids)
            .fetch_all(uow.connection())
            .await
            .map_err(db_err("locking sagas", table))?;
        rows.iter()
            .map(|row| shared::saga_record_with_clock(row, table))
            .collect()
    }

    /// [`crate::saga::SagaStore::find_request_outcomes`] in one statement.
    pub(super) async fn find_outcomes(
        &self,
        uow: &mut PgUnitOfWork,
        participant: &str,
        request_keys: &[&str],
    ) -> Result<Vec<Option<serde_json::Value>>, StoreError> {
        let table = &self.sql.sagas.requests;
        let rows: Vec<(String, String)> = sqlx::query_as(&self.sql.find_outcomes)
            .bind(participant)
            .bind(request_keys)
            .fetch_all(uow.connection())
            .await
            .map_err(db_err("finding request outcomes", table))?;
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for (key, text) in rows {
            let outcome = shared::outcome(&text, table, participant, &key)?;
            found.insert(key, outcome);
        }
        Ok(request_keys
            .iter()
            .map(|key| found.get(*key).cloned())
            .collect())
    }

    /// [`crate::saga::SagaStore::record_request_outcomes`] in one statement.
    pub(super) async fn record_outcomes(
        &self,
        uow: &mut PgUnitOfWork,
        participant: &str,
        outcomes: &[(&str, &serde_json::Value)],
    ) -> Result<Vec<bool>, StoreError> {
        if outcomes.is_empty() {
            return Ok(Vec::new());
        }
        let table = &self.sql.sagas.requests;
        let keys: Vec<&str> = outcomes.iter().map(|(key, _)| *key).collect();
        let texts: Vec<String> = outcomes.iter().map(|(_, o)| o.to_string()).collect();
        let written: Vec<String> = sqlx::query_scalar(&self.sql.record_outcomes)
            .bind(participant)
            .bind(&keys)
            .bind(&texts)
            .fetch_all(uow.connection())
            .await
            .map_err(db_err("recording request outcomes", table))?;
        let mut written: std::collections::HashSet<String> = written.into_iter().collect();
        // Of a key given twice, the first is the one written.
        Ok(keys.iter().map(|key| written.remove(*key)).collect())
    }

    /// [`crate::saga::SagaStore::finish_saga_transition`] in one statement (see
    /// `Statements::finish_saga_transition`).
    pub(super) async fn finish_transition(
        &self,
        uow: &mut PgUnitOfWork,
        write: SagaTransitionWrite<'_>,
    ) -> Result<bool, StoreError> {
        let table = &self.sql.sagas.sagas;
        let mut binds = Binds::default();
        bind_transition_end(&mut binds, &write, table)?;
        let args = binds
            .finish()
            .map_err(|e| db_err("ending a saga transition", table)(sqlx::Error::Encode(e)))?;
        let done = sqlx::query_with(&self.sql.finish_saga_transition, args)
            .execute(uow.connection())
            .await
            .map_err(db_err("ending a saga transition", table))?;
        Ok(done.rows_affected() > 0)
    }

    /// [`crate::saga::SagaStore::write_saga_transition`]: with events, one statement (the
    /// events, their outbox rows, the messages with their journal rows, the timers and the
    /// instance's row; `Statements::write_saga_transition`); without, the calls one after the
    /// other.
    pub(super) async fn write_transition(
        &self,
        uow: &mut PgUnitOfWork,
        stream_id: &StreamId,
        expected: u64,
        events: Vec<NewEvent>,
        messages: Vec<OutboxMessage>,
        write: SagaTransitionWrite<'_>,
    ) -> Result<bool, StoreError> {
        if events.is_empty() {
            return crate::saga::write_in_steps(
                self, uow, stream_id, expected, events, messages, write,
            )
            .await;
        }
        let version = ExpectedVersion::Exact(expected);
        let routing = uow.routing.as_deref();
        let (events, outbox, journal) =
            prepare_with_messages(stream_id, version, events, messages, &uow.source, routing)?;
        let sql = &self.sql.sagas;
        let (mut binds, statement) = append_binds(
            &self.sql,
            stream_id,
            Some(to_i64(expected, stream_id)?),
            &events,
            &outbox,
            Statement::SagaTransition(&journal),
        );
        // The saga part: `finish_saga_transition`'s parameters, after the events' part.
        bind_transition_end(&mut binds, &write, &sql.sagas)?;
        let args = binds
            .finish()
            .map_err(|e| db_err("writing a saga transition", &sql.sagas)(sqlx::Error::Encode(e)))?;
        let rows: Vec<(i64, i64, i64)> = sqlx::query_as_with(statement, args)
            .fetch_all(&mut *uow.tx)
            .await
            .map_err(|e| append_error(&self.sql, e, stream_id, version, &events))?;
        let updated = rows.first().is_some_and(|r| r.2 > 0);
        let rows = rows.into_iter().map(|(p, v, _)| (p, v)).collect();
        // No row: the version did not match (the error names the version found).
        append_result(
            &mut uow.tx,
            &self.sql,
            stream_id,
            version,
            rows,
            events.len(),
        )
        .await?;
        // Wakes the relay at commit.
        uow.wrote_events = true;
        Ok(updated)
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

/// The parameters of a transition's end (`Statements::finish_saga_transition`'s `$1`..`$15`):
/// the instance's row as `SagaSql::update` writes it, the cancelled timers, whether all go, and
/// the stored timers (made disjoint, [`shared::disjoint_timer_writes`]).
fn bind_transition_end(
    binds: &mut Binds,
    write: &SagaTransitionWrite<'_>,
    table: &str,
) -> Result<(), StoreError> {
    let record = write.record;
    let (cancel, put) = shared::disjoint_timer_writes(write);
    binds
        .add(record.saga_id)
        .add(record.status.as_str())
        .add(record.detail.as_deref())
        .add(i64::from(record.definition_version))
        .add(shared::version_of(record, table)?)
        .add(record.last_event_id)
        .add(cancel.iter().map(|t| t.step.as_str()).collect::<Vec<_>>())
        .add(
            cancel
                .iter()
                .map(|t| i64::from(t.attempt))
                .collect::<Vec<_>>(),
        )
        .add(cancel.iter().map(|t| t.kind.as_str()).collect::<Vec<_>>())
        .add(write.clear)
        .add(put.iter().map(|t| t.step.as_str()).collect::<Vec<_>>())
        .add(put.iter().map(|t| i64::from(t.attempt)).collect::<Vec<_>>())
        .add(put.iter().map(|t| t.kind.as_str()).collect::<Vec<_>>())
        .add(put.iter().map(|t| t.saga_type.as_str()).collect::<Vec<_>>())
        .add(put.iter().map(|t| t.due_at).collect::<Vec<_>>());
    Ok(())
}
