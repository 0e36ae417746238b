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
use super::batch::{BatchRow, PgAppend, batch_binds, batch_results};
use super::{PgStore, PgUnitOfWork};
use crate::error::{ExpectedVersion, StoreError};
use crate::saga::{SagaTimer, SagaTransitionItem, SagaTransitionWrite};
use crate::sql::{db_err, sagas as shared, to_i64};

crate::sql::sagas::saga_store!(PgStore, PgUnitOfWork);

impl PgStore {
    /// [`crate::saga::SagaStore::register_sagas_with_clock`]: the new instances inserted with one
    /// statement (in the order given, so the keys' index entries are taken in that order), then
    /// the owner of each taken key looked up alone (a key is rarely started twice).
    pub(super) async fn register_many(
        &self,
        uow: &mut PgUnitOfWork,
        records: &[crate::saga::SagaRecord],
    ) -> Result<Vec<crate::saga::SagaRegistration>, StoreError> {
        use crate::saga::{SagaRegistration, SagaStore};
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let table = &self.sql.sagas.sagas;
        let mut versions = Vec::with_capacity(records.len());
        for record in records {
            versions.push(shared::version_of(record, table)?);
        }
        let column = |f: fn(&crate::saga::SagaRecord) -> &str| -> Vec<&str> {
            records.iter().map(f).collect()
        };
        let inserted: Vec<(uuid::Uuid, chrono::DateTime<chrono::Utc>)> =
            sqlx::query_as(&self.sql.register_sagas)
                .bind(records.iter().map(|r| r.saga_id).collect::<Vec<_>>())
                .bind(column(|r| &r.saga_type))
                .bind(column(|r| &r.business_key))
                .bind(column(|r| &r.status))
                .bind(
                    records
                        .iter()
                        .map(|r| r.detail.as_deref())
                        .collect::<Vec<_>>(),
                )
                .bind(records.iter().map(|r| r.correlation_id).collect::<Vec<_>>())
                .bind(
                    records
                        .iter()
                        .map(|r| i64::from(r.definition_version))
                        .collect::<Vec<_>>(),
                )
                .bind(versions)
                .fetch_all(uow.connection())
                .await
                .map_err(db_err("registering sagas", table))?;
        let inserted: std::collections::HashMap<uuid::Uuid, chrono::DateTime<chrono::Utc>> =
            inserted.into_iter().collect();
        let mut registered = Vec::with_capacity(records.len());
        for record in records {
            registered.push(match inserted.get(&record.saga_id) {
                Some(&now) => SagaRegistration::Inserted { now },
                // Taken before this statement, or by an earlier record of this batch: the
                // single registration finds its owner (the insert waited for it).
                None => self.register_saga_with_clock(uow, record).await?,
            });
        }
        Ok(registered)
    }

    /// [`crate::saga::SagaStore::lock_sagas_with_clock`] in one statement.
    pub(super) async fn lock_many(
        &self,
        uow: &mut PgUnitOfWork,
        saga_ids: &[uuid::Uuid],
    ) -> Result<Vec<(crate::saga::SagaRecord, chrono::DateTime<chrono::Utc>)>, StoreError> {
        let table = &self.sql.sagas.sagas;
        let mut ids = saga_ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let rows = sqlx::query(&self.sql.lock_sagas)
            .bind(ids)
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

    /// [`crate::saga::SagaStore::write_saga_transitions`]: with events in every transition and
    /// more than one, one statement (`Statements::write_saga_transitions`); else one after the
    /// other.
    pub(super) async fn write_transitions(
        &self,
        uow: &mut PgUnitOfWork,
        transitions: Vec<SagaTransitionItem<'_>>,
    ) -> Result<Vec<bool>, StoreError> {
        if transitions.len() < 2 || transitions.iter().any(|t| t.events.is_empty()) {
            return crate::saga::write_transitions_one_by_one(self, uow, transitions).await;
        }
        let routing = uow.routing.as_deref();
        let mut appends = Vec::with_capacity(transitions.len());
        let mut journal = Vec::new();
        let mut writes = Vec::with_capacity(transitions.len());
        for t in transitions {
            let version = ExpectedVersion::Exact(t.expected);
            let (events, outbox, rows) = prepare_with_messages(
                &t.stream_id,
                version,
                t.events,
                t.messages,
                &uow.source,
                routing,
            )?;
            journal.extend(rows);
            writes.push(t.write);
            appends.push(PgAppend {
                stream_id: t.stream_id,
                expected: version,
                events,
                outbox,
            });
        }
        let table = &self.sql.sagas.sagas;
        let refs: Vec<&PgAppend> = appends.iter().collect();
        let mut binds = batch_binds(&refs);
        binds.journal(&journal);
        bind_transition_ends(&mut binds, &writes, table)?;
        let args = binds
            .finish()
            .map_err(|e| db_err("writing saga transitions", table)(sqlx::Error::Encode(e)))?;
        let rows: Vec<BatchRow> = sqlx::query_as_with(&self.sql.write_saga_transitions, args)
            .fetch_all(&mut *uow.tx)
            .await
            .map_err(db_err("writing saga transitions", table))?;
        let mut updated = vec![false; appends.len()];
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            match row.0 {
                Some(n) if n < 0 => {
                    if let Some(u) = usize::try_from(-n)
                        .ok()
                        .and_then(|n| updated.get_mut(n - 1))
                    {
                        *u = true;
                    }
                }
                _ => events.push(row),
            }
        }
        // Every transition's events, or the first conflict (the caller rolls back).
        for result in batch_results(&self.sql, &refs, events)? {
            result?;
        }
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

/// The saga parts of `Statements::write_saga_transitions` (`$30`..`$46`): each transition's
/// row and whether its timers all go, its cancelled timers and its stored ones (made disjoint,
/// [`shared::disjoint_timer_writes`]), each timer with its transition's 1-based index.
fn bind_transition_ends(
    binds: &mut Binds,
    writes: &[SagaTransitionWrite<'_>],
    table: &str,
) -> Result<(), StoreError> {
    let n = writes.len();
    let (mut ids, mut statuses, mut details) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut definitions, mut versions, mut last_ids, mut clears) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut c_cmd, mut c_step, mut c_attempt, mut c_kind) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut p_cmd, mut p_step, mut p_attempt, mut p_kind, mut p_type, mut p_due) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for (i, write) in writes.iter().enumerate() {
        let cmd = i as i64 + 1;
        let record = write.record;
        ids.push(record.saga_id);
        statuses.push(record.status.as_str());
        details.push(record.detail.as_deref());
        definitions.push(i64::from(record.definition_version));
        versions.push(shared::version_of(record, table)?);
        last_ids.push(record.last_event_id);
        clears.push(write.clear);
        let (cancel, put) = shared::disjoint_timer_writes(write);
        for t in cancel {
            c_cmd.push(cmd);
            c_step.push(t.step.as_str());
            c_attempt.push(i64::from(t.attempt));
            c_kind.push(t.kind.as_str());
        }
        for t in put {
            p_cmd.push(cmd);
            p_step.push(t.step.as_str());
            p_attempt.push(i64::from(t.attempt));
            p_kind.push(t.kind.as_str());
            p_type.push(t.saga_type.as_str());
            p_due.push(t.due_at);
        }
    }
    binds
        .add(ids)
        .add(statuses)
        .add(details)
        .add(definitions)
        .add(versions)
        .add(last_ids)
        .add(clears)
        .add(c_cmd)
        .add(c_step)
        .add(c_attempt)
        .add(c_kind)
        .add(p_cmd)
        .add(p_step)
        .add(p_attempt)
        .add(p_kind)
        .add(p_type)
        .add(p_due);
    Ok(())
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
