//! The [`SagaStore`](crate::saga::SagaStore) implementation of the SQL backends, stamped for
//! each store by [`saga_store!`] over the statements of [`super::SagaSql`] (see
//! [`crate::sql::read`] for why a macro).

/// Implements `SagaStore` for `$store` (with the fields `pool` and `sql`, whose `sagas` is a
/// [`SagaSql`](super::SagaSql), and the methods `claim_saga_timers`, `finish_transition`, `write_transition`,
/// `write_transitions`, `find_outcomes`, `record_outcomes`, `lock_many` and `register_many`
/// with the signatures of `claim_due_timers`, `finish_saga_transition`, `write_saga_transition`,
/// `write_saga_transitions`, `find_request_outcomes`, `record_request_outcomes`,
/// `lock_sagas_with_clock` and `register_sagas_with_clock`) and
/// its unit of work `$uow` (with `connection()`).
macro_rules! saga_store {
    ($store:ty, $uow:ty) => {
        const _: () = {
            use chrono::{DateTime, Utc};
            use uuid::Uuid;
            use $crate::error::StoreError;
            use $crate::saga::{SagaFilter, SagaRecord, SagaRegistration, SagaStore, SagaTimer};
            use $crate::sql::db_err;
            use $crate::sql::sagas as shared;

            impl SagaStore for $store {
                async fn database_now(&self, uow: &mut $uow) -> Result<DateTime<Utc>, StoreError> {
                    let sql = &self.sql.sagas;
                    let (now,): (DateTime<Utc>,) = sqlx::query_as(&sql.now)
                        .fetch_one(uow.connection())
                        .await
                        .map_err(db_err("reading the database clock", &sql.sagas))?;
                    Ok(now)
                }

                async fn register_saga(
                    &self,
                    uow: &mut $uow,
                    record: &SagaRecord,
                ) -> Result<Uuid, StoreError> {
                    Ok(match self.register_saga_with_clock(uow, record).await? {
                        SagaRegistration::Inserted { .. } => record.saga_id,
                        SagaRegistration::Taken { owner } => owner,
                    })
                }

                async fn register_saga_with_clock(
                    &self,
                    uow: &mut $uow,
                    record: &SagaRecord,
                ) -> Result<SagaRegistration, StoreError> {
                    let sql = &self.sql.sagas;
                    let inserted: Option<(DateTime<Utc>,)> = sqlx::query_as(&sql.register)
                        .bind(record.saga_id)
                        .bind(&record.saga_type)
                        .bind(&record.business_key)
                        .bind(&record.status)
                        .bind(record.detail.as_deref())
                        .bind(record.correlation_id)
                        .bind(i64::from(record.definition_version))
                        .bind(shared::version_of(record, &sql.sagas)?)
                        .fetch_optional(uow.connection())
                        .await
                        .map_err(db_err("registering a saga", &sql.sagas))?;
                    if let Some((now,)) = inserted {
                        return Ok(SagaRegistration::Inserted { now });
                    }
                    // The key is taken, by a committed instance or by one whose transaction the
                    // insert waited for: this new statement sees it (READ COMMITTED on
                    // PostgreSQL; SQLite's writers are serialized).
                    let owner: Option<(Uuid,)> = sqlx::query_as(&sql.owner)
                        .bind(&record.saga_type)
                        .bind(&record.business_key)
                        .fetch_optional(uow.connection())
                        .await
                        .map_err(db_err("finding a saga's owner", &sql.sagas))?;
                    owner
                        .map(|(owner,)| SagaRegistration::Taken { owner })
                        .ok_or_else(|| StoreError::Corrupt {
                            table: sql.sagas.clone(),
                            reason: format!(
                                "the key {} of saga type {} is taken, but no instance owns it",
                                record.business_key, record.saga_type
                            ),
                        })
                }

                async fn lock_saga(
                    &self,
                    uow: &mut $uow,
                    saga_id: Uuid,
                ) -> Result<Option<SagaRecord>, StoreError> {
                    let sql = &self.sql.sagas;
                    let row = sqlx::query_as(&sql.lock)
                        .bind(saga_id)
                        .fetch_optional(uow.connection())
                        .await;
                    shared::saga_of(row, "locking a saga", &sql.sagas)
                }

                async fn lock_saga_with_clock(
                    &self,
                    uow: &mut $uow,
                    saga_id: Uuid,
                ) -> Result<Option<(SagaRecord, DateTime<Utc>)>, StoreError> {
                    let sql = &self.sql.sagas;
                    let row = sqlx::query(&sql.lock_with_clock)
                        .bind(saga_id)
                        .fetch_optional(uow.connection())
                        .await
                        .map_err(db_err("locking a saga", &sql.sagas))?;
                    row.map(|r| shared::saga_record_with_clock(&r, &sql.sagas))
                        .transpose()
                }

                async fn register_sagas_with_clock(
                    &self,
                    uow: &mut $uow,
                    records: &[SagaRecord],
                ) -> Result<Vec<SagaRegistration>, StoreError> {
                    self.register_many(uow, records).await
                }

                async fn lock_sagas_with_clock(
                    &self,
                    uow: &mut $uow,
                    saga_ids: &[Uuid],
                ) -> Result<Vec<(SagaRecord, DateTime<Utc>)>, StoreError> {
                    self.lock_many(uow, saga_ids).await
                }

                async fn finish_saga_transition(
                    &self,
                    uow: &mut $uow,
                    write: $crate::saga::SagaTransitionWrite<'_>,
                ) -> Result<bool, StoreError> {
                    self.finish_transition(uow, write).await
                }

                async fn write_saga_transition(
                    &self,
                    uow: &mut $uow,
                    stream_id: &eventfold_core::StreamId,
                    expected: u64,
                    events: Vec<eventfold_core::NewEvent>,
                    messages: Vec<eventfold_core::OutboxMessage>,
                    write: $crate::saga::SagaTransitionWrite<'_>,
                ) -> Result<bool, StoreError> {
                    self.write_transition(uow, stream_id, expected, events, messages, write)
                        .await
                }

                async fn write_saga_transitions(
                    &self,
                    uow: &mut $uow,
                    transitions: Vec<$crate::saga::SagaTransitionItem<'_>>,
                ) -> Result<Vec<bool>, StoreError> {
                    self.write_transitions(uow, transitions).await
                }

                async fn update_saga(
                    &self,
                    uow: &mut $uow,
                    record: &SagaRecord,
                ) -> Result<bool, StoreError> {
                    let sql = &self.sql.sagas;
                    let done = sqlx::query(&sql.update)
                        .bind(record.saga_id)
                        .bind(&record.status)
                        .bind(record.detail.as_deref())
                        .bind(i64::from(record.definition_version))
                        .bind(shared::version_of(record, &sql.sagas)?)
                        .bind(record.last_event_id)
                        .execute(uow.connection())
                        .await
                        .map_err(db_err("updating a saga", &sql.sagas))?;
                    Ok(done.rows_affected() > 0)
                }

                async fn put_saga_timers(
                    &self,
                    uow: &mut $uow,
                    timers: &[SagaTimer],
                ) -> Result<(), StoreError> {
                    let sql = &self.sql.sagas;
                    for timer in timers {
                        shared::timer_query(&sql.put_timer, timer)
                            .bind(&timer.saga_type)
                            .bind(timer.due_at)
                            .execute(uow.connection())
                            .await
                            .map_err(db_err("storing a saga timer", &sql.timers))?;
                    }
                    Ok(())
                }

                async fn delete_saga_timer(
                    &self,
                    uow: &mut $uow,
                    saga_id: Uuid,
                    step: &str,
                    attempt: u32,
                    kind: &str,
                ) -> Result<bool, StoreError> {
                    let sql = &self.sql.sagas;
                    let done = sqlx::query(&sql.delete_timer)
                        .bind(saga_id)
                        .bind(step)
                        .bind(i64::from(attempt))
                        .bind(kind)
                        .execute(uow.connection())
                        .await
                        .map_err(db_err("deleting a saga timer", &sql.timers))?;
                    Ok(done.rows_affected() == 1)
                }

                async fn delete_all_saga_timers(
                    &self,
                    uow: &mut $uow,
                    saga_id: Uuid,
                ) -> Result<u64, StoreError> {
                    let sql = &self.sql.sagas;
                    let done = sqlx::query(&sql.delete_timers)
                        .bind(saga_id)
                        .execute(uow.connection())
                        .await
                        .map_err(db_err("deleting a saga's timers", &sql.timers))?;
                    Ok(done.rows_affected())
                }

                async fn find_request_outcome(
                    &self,
                    uow: &mut $uow,
                    participant: &str,
                    request_key: &str,
                ) -> Result<Option<serde_json::Value>, StoreError> {
                    let sql = &self.sql.sagas;
                    let row: Option<(String,)> = sqlx::query_as(&sql.find_outcome)
                        .bind(participant)
                        .bind(request_key)
                        .fetch_optional(uow.connection())
                        .await
                        .map_err(db_err("finding a request outcome", &sql.requests))?;
                    row.map(|(text,)| {
                        shared::outcome(&text, &sql.requests, participant, request_key)
                    })
                    .transpose()
                }

                async fn record_request_outcome(
                    &self,
                    uow: &mut $uow,
                    participant: &str,
                    request_key: &str,
                    outcome: &serde_json::Value,
                ) -> Result<bool, StoreError> {
                    let sql = &self.sql.sagas;
                    let done = sqlx::query(&sql.record_outcome)
                        .bind(participant)
                        .bind(request_key)
                        .bind(outcome.to_string())
                        .execute(uow.connection())
                        .await
                        .map_err(db_err("recording a request outcome", &sql.requests))?;
                    Ok(done.rows_affected() == 1)
                }

                async fn find_request_outcomes(
                    &self,
                    uow: &mut $uow,
                    participant: &str,
                    request_keys: &[&str],
                ) -> Result<Vec<Option<serde_json::Value>>, StoreError> {
                    self.find_outcomes(uow, participant, request_keys).await
                }

                async fn record_request_outcomes(
                    &self,
                    uow: &mut $uow,
                    participant: &str,
                    outcomes: &[(&str, &serde_json::Value)],
                ) -> Result<Vec<bool>, StoreError> {
                    self.record_outcomes(uow, participant, outcomes).await
                }

                async fn claim_due_timers(
                    &self,
                    saga_types: &[String],
                    limit: usize,
                    lease: std::time::Duration,
                ) -> Result<Vec<SagaTimer>, StoreError> {
                    if saga_types.is_empty() || limit == 0 {
                        return Ok(Vec::new());
                    }
                    self.claim_saga_timers(saga_types, limit, lease).await
                }

                async fn release_saga_timers(
                    &self,
                    timers: &[SagaTimer],
                ) -> Result<u64, StoreError> {
                    let sql = &self.sql.sagas;
                    let mut released = 0;
                    // One statement per timer, each a transaction of its own: a timer released
                    // is due again at once, whatever happens to the next one.
                    for timer in timers {
                        let _turn = self
                            .gate
                            .enter("releasing a claimed saga timer", &sql.timers)
                            .await?;
                        let done = shared::timer_query(&sql.release_timer, timer)
                            .bind(timer.due_at)
                            .execute(&self.pool)
                            .await
                            .map_err(db_err("releasing a claimed saga timer", &sql.timers))?;
                        released += done.rows_affected();
                    }
                    Ok(released)
                }

                async fn request_saga_timer(&self, timer: &SagaTimer) -> Result<bool, StoreError> {
                    let sql = &self.sql.sagas;
                    // One statement: a transaction of its own.
                    let _turn = self
                        .gate
                        .enter("requesting a saga timer", &sql.timers)
                        .await?;
                    let done = shared::timer_query(&sql.request_timer, timer)
                        .bind(timer.due_at)
                        .execute(&self.pool)
                        .await
                        .map_err(db_err("requesting a saga timer", &sql.timers))?;
                    Ok(done.rows_affected() > 0)
                }

                async fn saga(&self, saga_id: Uuid) -> Result<Option<SagaRecord>, StoreError> {
                    let sql = &self.sql.sagas;
                    let row = sqlx::query_as(&sql.saga)
                        .bind(saga_id)
                        .fetch_optional(&self.pool)
                        .await;
                    shared::saga_of(row, "reading a saga", &sql.sagas)
                }

                async fn saga_by_key(
                    &self,
                    saga_type: &str,
                    business_key: &str,
                ) -> Result<Option<SagaRecord>, StoreError> {
                    let sql = &self.sql.sagas;
                    let row = sqlx::query_as(&sql.saga_by_key)
                        .bind(saga_type)
                        .bind(business_key)
                        .fetch_optional(&self.pool)
                        .await;
                    shared::saga_of(row, "reading a saga by key", &sql.sagas)
                }

                async fn list_sagas(
                    &self,
                    filter: &SagaFilter,
                ) -> Result<Vec<SagaRecord>, StoreError> {
                    let sql = &self.sql.sagas;
                    let rows: Vec<shared::SagaRow> = sqlx::query_as(&sql.list)
                        .bind(filter.saga_type.as_deref())
                        .bind(filter.status.as_deref())
                        .bind(filter.correlation_id)
                        .bind(shared::list_limit(filter.limit))
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db_err("listing sagas", &sql.sagas))?;
                    rows.into_iter()
                        .map(|row| shared::saga_record(row, &sql.sagas))
                        .collect()
                }

                async fn count_sagas(&self) -> Result<Vec<(String, String, u64)>, StoreError> {
                    let sql = &self.sql.sagas;
                    let rows: Vec<(String, String, i64)> = sqlx::query_as(&sql.count)
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db_err("counting sagas", &sql.sagas))?;
                    shared::counts(rows, &sql.sagas)
                }

                async fn saga_timers(&self, saga_id: Uuid) -> Result<Vec<SagaTimer>, StoreError> {
                    let sql = &self.sql.sagas;
                    let rows: Vec<shared::TimerRow> = sqlx::query_as(&sql.timers_of)
                        .bind(saga_id)
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db_err("reading a saga's timers", &sql.timers))?;
                    let mut timers = rows
                        .into_iter()
                        .map(|row| shared::saga_timer(row, &sql.timers))
                        .collect::<Result<Vec<_>, StoreError>>()?;
                    shared::sort_timers(&mut timers);
                    Ok(timers)
                }
            }
        };
    };
}
pub(crate) use saga_store;
