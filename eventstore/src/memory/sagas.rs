//! The saga store of the in-memory backend ([`SagaStore`]): instances, timers and participant
//! outcomes, with the same behaviour as the SQL backends' three tables.
//!
//! What a unit of work writes is staged in its [`StagedSagas`] (under the store's write lock,
//! like every other write of a memory unit of work) and applied at commit; a rollback or a
//! dropped unit of work discards it. Two units of work that register the same business key are
//! serialized by the write lock, so the second sees the first's instance once it committed.
//! Claims ([`SagaStore::claim_due_timers`]) and the reads take only the state's mutex: a claim
//! is one atomic step over the committed timers, so two claimers never get the same timer, and
//! a scheduler never waits for an open unit of work. The clock is the host's (there is no
//! database), in microseconds like every stored time.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::store::MemoryStore;
use super::unit_of_work::MemoryUnitOfWork;
use crate::error::StoreError;
use crate::saga::{SagaFilter, SagaRecord, SagaStore, SagaTimer, claimed_until};

/// A timer's identity: saga id, step, attempt, kind.
type TimerKey = (Uuid, String, u32, String);

/// The rest of a timer's row.
#[derive(Debug, Clone)]
pub(super) struct MemTimer {
    saga_type: String,
    due_at: DateTime<Utc>,
    claims: u32,
}

/// The committed saga tables.
#[derive(Debug, Default)]
pub(super) struct SagaTables {
    sagas: HashMap<Uuid, SagaRecord>,
    keys: HashMap<(String, String), Uuid>,
    timers: BTreeMap<TimerKey, MemTimer>,
    requests: HashMap<(String, String), serde_json::Value>,
}

/// What one unit of work wrote to the saga tables, applied at its commit.
#[derive(Debug, Default, Clone)]
pub(super) struct StagedSagas {
    /// Registered or updated instances (whole rows).
    sagas: HashMap<Uuid, SagaRecord>,
    /// Stored (`Some`) or deleted (`None`) timers.
    timers: BTreeMap<TimerKey, Option<MemTimer>>,
    /// Recorded outcomes.
    requests: HashMap<(String, String), serde_json::Value>,
}

impl SagaTables {
    /// The pending timers of the instances of flow `correlation_id` (the trace).
    pub(super) fn timers_of_flow(&self, correlation_id: Uuid) -> Vec<SagaTimer> {
        self.timers
            .iter()
            .filter(|((saga_id, ..), _)| {
                self.sagas
                    .get(saga_id)
                    .is_some_and(|s| s.correlation_id == correlation_id)
            })
            .map(|((saga_id, step, attempt, kind), t)| SagaTimer {
                saga_id: *saga_id,
                saga_type: t.saga_type.clone(),
                step: step.clone(),
                attempt: *attempt,
                kind: kind.clone(),
                due_at: t.due_at,
            })
            .collect()
    }

    /// Applies a committed unit of work's saga writes.
    pub(super) fn apply(&mut self, staged: StagedSagas) {
        for (saga_id, record) in staged.sagas {
            self.keys.insert(
                (record.saga_type.clone(), record.business_key.clone()),
                saga_id,
            );
            self.sagas.insert(saga_id, record);
        }
        for (key, timer) in staged.timers {
            match timer {
                Some(timer) => {
                    self.timers.insert(key, timer);
                }
                None => {
                    self.timers.remove(&key);
                }
            }
        }
        self.requests.extend(staged.requests);
    }

    /// The committed timers of one instance.
    fn timers_of(&self, saga_id: Uuid) -> impl Iterator<Item = (&TimerKey, &MemTimer)> {
        self.timers
            .range((saga_id, String::new(), 0, String::new())..)
            .take_while(move |(key, _)| key.0 == saga_id)
    }
}

fn key_of(timer: &SagaTimer) -> TimerKey {
    (
        timer.saga_id,
        timer.step.clone(),
        timer.attempt,
        timer.kind.clone(),
    )
}

fn timer_of((saga_id, step, attempt, kind): &TimerKey, timer: &MemTimer) -> SagaTimer {
    SagaTimer {
        saga_id: *saga_id,
        saga_type: timer.saga_type.clone(),
        step: step.clone(),
        attempt: *attempt,
        kind: kind.clone(),
        due_at: timer.due_at,
    }
}

fn now() -> DateTime<Utc> {
    eventfold_core::metadata::now_micros()
}

/// The instance a unit of work sees: its own write, else the committed row.
fn saga_seen(store: &MemoryStore, uow: &MemoryUnitOfWork, saga_id: Uuid) -> Option<SagaRecord> {
    uow.sagas
        .sagas
        .get(&saga_id)
        .cloned()
        .or_else(|| store.lock().sagas.sagas.get(&saga_id).cloned())
}

impl SagaStore for MemoryStore {
    async fn database_now(&self, _uow: &mut MemoryUnitOfWork) -> Result<DateTime<Utc>, StoreError> {
        Ok(now())
    }

    async fn register_saga(
        &self,
        uow: &mut MemoryUnitOfWork,
        record: &SagaRecord,
    ) -> Result<Uuid, StoreError> {
        // Held until the unit of work ends: a concurrent registration of the key waits here.
        uow.lock_writer().await;
        if let Some(owner) = uow
            .sagas
            .sagas
            .values()
            .find(|s| s.saga_type == record.saga_type && s.business_key == record.business_key)
        {
            return Ok(owner.saga_id);
        }
        {
            let state = self.lock();
            let key = (record.saga_type.clone(), record.business_key.clone());
            if let Some(owner) = state.sagas.keys.get(&key) {
                return Ok(*owner);
            }
            if state.sagas.sagas.contains_key(&record.saga_id) {
                return Err(taken_id(record.saga_id));
            }
        }
        if uow.sagas.sagas.contains_key(&record.saga_id) {
            return Err(taken_id(record.saga_id));
        }
        let at = now();
        let mut row = record.clone();
        row.started_at = at;
        row.updated_at = at;
        uow.sagas.sagas.insert(row.saga_id, row);
        Ok(record.saga_id)
    }

    async fn lock_saga(
        &self,
        uow: &mut MemoryUnitOfWork,
        saga_id: Uuid,
    ) -> Result<Option<SagaRecord>, StoreError> {
        // One writer at a time: the write lock, held until the unit of work ends, is the lock.
        uow.lock_writer().await;
        Ok(saga_seen(self, uow, saga_id))
    }

    async fn update_saga(
        &self,
        uow: &mut MemoryUnitOfWork,
        record: &SagaRecord,
    ) -> Result<bool, StoreError> {
        uow.lock_writer().await;
        let Some(mut row) = saga_seen(self, uow, record.saga_id) else {
            return Ok(false);
        };
        row.status.clone_from(&record.status);
        row.detail.clone_from(&record.detail);
        row.definition_version = record.definition_version;
        row.version = record.version;
        row.last_event_id = record.last_event_id;
        row.updated_at = now();
        uow.sagas.sagas.insert(row.saga_id, row);
        Ok(true)
    }

    async fn put_saga_timers(
        &self,
        uow: &mut MemoryUnitOfWork,
        timers: &[SagaTimer],
    ) -> Result<(), StoreError> {
        uow.lock_writer().await;
        for timer in timers {
            uow.sagas.timers.insert(
                key_of(timer),
                Some(MemTimer {
                    saga_type: timer.saga_type.clone(),
                    due_at: timer.due_at,
                    claims: 0,
                }),
            );
        }
        Ok(())
    }

    async fn delete_saga_timer(
        &self,
        uow: &mut MemoryUnitOfWork,
        saga_id: Uuid,
        step: &str,
        attempt: u32,
        kind: &str,
    ) -> Result<bool, StoreError> {
        uow.lock_writer().await;
        let key = (saga_id, step.to_owned(), attempt, kind.to_owned());
        let exists = match uow.sagas.timers.get(&key) {
            Some(staged) => staged.is_some(),
            None => self.lock().sagas.timers.contains_key(&key),
        };
        if exists {
            uow.sagas.timers.insert(key, None);
        }
        Ok(exists)
    }

    async fn delete_all_saga_timers(
        &self,
        uow: &mut MemoryUnitOfWork,
        saga_id: Uuid,
    ) -> Result<u64, StoreError> {
        uow.lock_writer().await;
        // Under the write lock no other unit of work adds or removes timers (claims only move
        // deadlines), so the committed keys read here are the ones this deletes at commit.
        let mut keys: Vec<TimerKey> = self
            .lock()
            .sagas
            .timers_of(saga_id)
            .map(|(key, _)| key.clone())
            .filter(|key| !uow.sagas.timers.contains_key(key))
            .collect();
        keys.extend(
            uow.sagas
                .timers
                .iter()
                .filter(|(key, timer)| key.0 == saga_id && timer.is_some())
                .map(|(key, _)| key.clone()),
        );
        let deleted = u64::try_from(keys.len()).unwrap_or(u64::MAX);
        for key in keys {
            uow.sagas.timers.insert(key, None);
        }
        Ok(deleted)
    }

    async fn find_request_outcome(
        &self,
        uow: &mut MemoryUnitOfWork,
        participant: &str,
        request_key: &str,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        let key = (participant.to_owned(), request_key.to_owned());
        if let Some(outcome) = uow.sagas.requests.get(&key) {
            return Ok(Some(outcome.clone()));
        }
        Ok(self.lock().sagas.requests.get(&key).cloned())
    }

    async fn record_request_outcome(
        &self,
        uow: &mut MemoryUnitOfWork,
        participant: &str,
        request_key: &str,
        outcome: &serde_json::Value,
    ) -> Result<bool, StoreError> {
        uow.lock_writer().await;
        let key = (participant.to_owned(), request_key.to_owned());
        if uow.sagas.requests.contains_key(&key) || self.lock().sagas.requests.contains_key(&key) {
            return Ok(false);
        }
        uow.sagas.requests.insert(key, outcome.clone());
        Ok(true)
    }

    async fn claim_due_timers(
        &self,
        saga_types: &[String],
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<SagaTimer>, StoreError> {
        if saga_types.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let now = now();
        let mut state = self.lock();
        let mut due: Vec<(DateTime<Utc>, TimerKey)> = state
            .sagas
            .timers
            .iter()
            .filter(|(_, t)| t.due_at <= now && saga_types.contains(&t.saga_type))
            .map(|(key, t)| (t.due_at, key.clone()))
            .collect();
        due.sort();
        due.truncate(limit);
        let mut claimed = Vec::with_capacity(due.len());
        for (_, key) in due {
            if let Some(timer) = state.sagas.timers.get_mut(&key) {
                claimed.push(timer_of(&key, timer));
                timer.claims = timer.claims.saturating_add(1);
                timer.due_at = claimed_until(now, lease, timer.claims);
            }
        }
        Ok(claimed)
    }

    async fn release_saga_timers(&self, timers: &[SagaTimer]) -> Result<u64, StoreError> {
        let mut state = self.lock();
        let mut released = 0;
        for timer in timers {
            if let Some(held) = state.sagas.timers.get_mut(&key_of(timer)) {
                if held.claims > 0 {
                    held.claims -= 1;
                    held.due_at = timer.due_at;
                    released += 1;
                }
            }
        }
        Ok(released)
    }

    async fn request_saga_timer(&self, timer: &SagaTimer) -> Result<bool, StoreError> {
        // A transaction of its own: after the open units of work, like the SQL backends.
        let _writer = self.inner.writer.clone().lock_owned().await;
        let mut state = self.lock();
        let Some(saga_type) = state
            .sagas
            .sagas
            .get(&timer.saga_id)
            .map(|s| s.saga_type.clone())
        else {
            return Ok(false);
        };
        state.sagas.timers.insert(
            key_of(timer),
            MemTimer {
                saga_type,
                due_at: timer.due_at,
                claims: 0,
            },
        );
        Ok(true)
    }

    async fn saga(&self, saga_id: Uuid) -> Result<Option<SagaRecord>, StoreError> {
        Ok(self.lock().sagas.sagas.get(&saga_id).cloned())
    }

    async fn saga_by_key(
        &self,
        saga_type: &str,
        business_key: &str,
    ) -> Result<Option<SagaRecord>, StoreError> {
        let state = self.lock();
        let key = (saga_type.to_owned(), business_key.to_owned());
        Ok(state
            .sagas
            .keys
            .get(&key)
            .and_then(|id| state.sagas.sagas.get(id))
            .cloned())
    }

    async fn list_sagas(&self, filter: &SagaFilter) -> Result<Vec<SagaRecord>, StoreError> {
        let state = self.lock();
        let mut rows: Vec<SagaRecord> = state
            .sagas
            .sagas
            .values()
            .filter(|s| filter.saga_type.as_ref().is_none_or(|t| *t == s.saga_type))
            .filter(|s| filter.status.as_ref().is_none_or(|st| *st == s.status))
            .filter(|s| filter.correlation_id.is_none_or(|c| c == s.correlation_id))
            .cloned()
            .collect();
        rows.sort_by_key(|s| std::cmp::Reverse((s.updated_at, s.saga_id)));
        rows.truncate(if filter.limit == 0 { 100 } else { filter.limit });
        Ok(rows)
    }

    async fn count_sagas(&self) -> Result<Vec<(String, String, u64)>, StoreError> {
        let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
        for s in self.lock().sagas.sagas.values() {
            *counts
                .entry((s.saga_type.clone(), s.status.clone()))
                .or_default() += 1;
        }
        Ok(counts
            .into_iter()
            .map(|((saga_type, status), n)| (saga_type, status, n))
            .collect())
    }

    async fn saga_timers(&self, saga_id: Uuid) -> Result<Vec<SagaTimer>, StoreError> {
        let state = self.lock();
        let mut timers: Vec<SagaTimer> = state
            .sagas
            .timers_of(saga_id)
            .map(|(key, t)| timer_of(key, t))
            .collect();
        timers.sort_by(|a, b| {
            (a.due_at, &a.step, a.attempt, &a.kind).cmp(&(b.due_at, &b.step, b.attempt, &b.kind))
        });
        Ok(timers)
    }
}

/// A saga id registered under another key (the SQL backends' primary key refuses it too).
fn taken_id(saga_id: Uuid) -> StoreError {
    StoreError::Database {
        operation: "registering a saga",
        table: "sagas".to_owned(),
        source: format!("saga id {saga_id} is already registered under another key").into(),
    }
}
