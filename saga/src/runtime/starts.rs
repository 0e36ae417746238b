//! Shared commits for [`Orchestrator::start`]: sagas started at the same moment by different
//! callers, each in a unit of work of its own, are started by one transaction.
//!
//! A start queues its request and, when no batch is being written, spawns the writer; the
//! writer takes everything queued (up to [`MAX_STARTS`]) and starts it in one unit of work:
//! every business key registered with one call in key order (so two batches wait for each
//! other on a key instead of deadlocking; one statement on PostgreSQL), each new instance's
//! first transition decided at the database's clock of its insert, all of them written with one
//! call ([`SagaStore::write_saga_transitions`]: one statement on PostgreSQL), one commit. Each
//! caller is answered after the commit. Starts queued meanwhile form the next batch, so a lone
//! start waits for nobody, and batches grow with the load.
//!
//! A key started more than once in a batch is started once in it; its other starts run alone
//! after the commit and find that instance (`created: false`). When a batch fails as a whole (a
//! store error), each of its starts is started again alone, as without batching: a start is
//! idempotent on its business key, so a batch that committed although its commit reported an
//! error is found again, `created: false`.
//! [`Orchestrator::start_in`] (a start inside the caller's unit of work) is not batched.

use std::sync::{Mutex, PoisonError};

use eventfold_eventstore::{SagaStore, StoreError, UnitOfWork};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::definition::SagaData;
use crate::runtime::error::RuntimeError;
use crate::runtime::orchestrator::{Orchestrator, Registered, Started};
use crate::runtime::transition::{Known, Planned, Prepared};

/// The most starts one transaction writes.
pub(crate) const MAX_STARTS: usize = 128;

/// One queued start and where its answer goes.
struct Pending<D> {
    business_key: String,
    data: D,
    correlation_id: Option<Uuid>,
    answer: oneshot::Sender<Result<Started, RuntimeError>>,
}

/// The starts waiting for a batch, and whether a writer is running.
pub(crate) struct StartQueue<D> {
    state: Mutex<QueueState<D>>,
}

struct QueueState<D> {
    waiting: Vec<Pending<D>>,
    writing: bool,
}

impl<D> Default for StartQueue<D> {
    fn default() -> Self {
        Self {
            state: Mutex::new(QueueState {
                waiting: Vec::new(),
                writing: false,
            }),
        }
    }
}

/// Gives the queue back (no writer running) when the writer stops early (a panic, or its task
/// dropped at a runtime's shutdown), so that the next start spawns a writer again. A writer that
/// finds the queue empty gives it back itself, under the queue's lock, and forgets this guard:
/// a writer spawned after that must not be marked stopped by this one's drop.
struct Writing<'a, D>(&'a StartQueue<D>);

impl<D> Drop for Writing<'_, D> {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.writing = false;
    }
}

impl<S: SagaStore, D: SagaData> Orchestrator<S, D> {
    /// Queues a start; see the [module docs](self).
    pub(crate) async fn start_shared(
        &self,
        business_key: &str,
        data: D,
        correlation_id: Option<Uuid>,
    ) -> Result<Started, RuntimeError> {
        let (answer, answered) = oneshot::channel();
        let spawn = {
            let mut state = self
                .inner
                .starts
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            state.waiting.push(Pending {
                business_key: business_key.to_owned(),
                data,
                correlation_id,
                answer,
            });
            !std::mem::replace(&mut state.writing, true)
        };
        if spawn {
            let this = self.clone();
            tokio::spawn(async move { this.write_starts().await });
        }
        answered.await.unwrap_or_else(|_| {
            Err(RuntimeError::store(Uuid::nil())(StoreError::Database {
                operation: "starting a saga in a shared commit (its writer stopped before answering; the saga may have started)",
                table: self.saga_type().to_owned(),
                source: "shared start abandoned".into(),
            }))
        })
    }

    /// The writer: batches until the queue is empty.
    async fn write_starts(self) {
        let queue = &self.inner.starts;
        let writing = Writing(queue);
        loop {
            let batch: Vec<Pending<D>> = {
                let mut state = queue.state.lock().unwrap_or_else(PoisonError::into_inner);
                if state.waiting.is_empty() {
                    // Under the queue's lock: a start queued after this sees no writer and
                    // spawns one.
                    state.writing = false;
                    drop(state);
                    std::mem::forget(writing);
                    return;
                }
                let n = state.waiting.len().min(MAX_STARTS);
                state.waiting.drain(..n).collect()
            };
            self.start_batch(batch).await;
        }
    }

    /// Starts a batch: the first start of each key in one unit of work (or each alone when that
    /// fails), then a key's repeated starts alone, which find the instance the first one made.
    async fn start_batch(&self, mut batch: Vec<Pending<D>>) {
        // Stable: a key's starts keep their order, so its first caller is the one answered
        // `created`.
        batch.sort_by(|a, b| a.business_key.cmp(&b.business_key));
        let mut firsts = Vec::with_capacity(batch.len());
        let mut repeats = Vec::new();
        for pending in batch {
            let repeated = firsts
                .last()
                .is_some_and(|p: &Pending<D>| p.business_key == pending.business_key);
            if repeated {
                repeats.push(pending);
            } else {
                firsts.push(pending);
            }
        }
        if firsts.len() > 1 {
            match self.start_together(&firsts).await {
                Ok(started) => {
                    metrics::histogram!("eventfold_saga_start_batch_size", "saga_type" => self.saga_type().to_owned())
                        .record(firsts.len() as f64);
                    for (pending, started) in firsts.drain(..).zip(started) {
                        let _ = pending.answer.send(Ok(started));
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, starts = firsts.len(), "a shared start failed; starting each alone");
                }
            }
        }
        for pending in firsts.into_iter().chain(repeats) {
            let started = self
                .start_alone(&pending.business_key, pending.data, pending.correlation_id)
                .await;
            let _ = pending.answer.send(started);
        }
    }

    /// Every start of `batch` (distinct keys, in key order) in one unit of work.
    async fn start_together(&self, batch: &[Pending<D>]) -> Result<Vec<Started>, RuntimeError> {
        let mut uow = self.begin(Uuid::nil()).await?;
        let written = async {
            let (started, planned) = self.register_and_plan(&mut uow, batch).await?;
            self.write_planned(&mut uow, planned)
                .await
                .map_err(|(_, e)| e)?;
            Ok::<_, RuntimeError>(started)
        }
        .await;
        match written {
            Ok(started) => {
                uow.commit()
                    .await
                    .map_err(RuntimeError::store(Uuid::nil()))?;
                Ok(started)
            }
            Err(e) => {
                let _ = uow.rollback().await;
                Err(e)
            }
        }
    }

    /// Registers each start and decides the first transition of each new instance.
    async fn register_and_plan(
        &self,
        uow: &mut S::UnitOfWork,
        batch: &[Pending<D>],
    ) -> Result<(Vec<Started>, Vec<Planned>), RuntimeError> {
        let starts = batch
            .iter()
            .map(|p| (p.business_key.as_str(), p.data.clone(), p.correlation_id))
            .collect();
        let registered = self.register_all(uow, starts).await?;
        let mut started = Vec::with_capacity(batch.len());
        let mut planned = Vec::with_capacity(batch.len());
        for registered in registered {
            match registered {
                Registered::Taken(taken) => started.push(taken),
                Registered::New { locked, input } => {
                    let saga_id = locked.0.saga_id;
                    match self
                        .prepare_locked(uow, *locked, Known::New, input, None)
                        .await?
                    {
                        Prepared::Write(p) => planned.push(*p),
                        Prepared::Done(_) => {}
                    }
                    started.push(Started {
                        saga_id,
                        created: true,
                    });
                }
            }
        }
        Ok((started, planned))
    }
}
