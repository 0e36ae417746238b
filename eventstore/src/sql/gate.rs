//! One writer at a time, queued in the process rather than in SQLite's busy handler (ADR 0027).
//!
//! A SQLite database has one writer. Without a queue of our own, every writer of a store takes a
//! pooled connection and waits inside `BEGIN IMMEDIATE` (SQLite's busy handler, which sleeps and
//! polls, unfairly). Two things then go wrong under load:
//!
//! - **the pool runs dry**: the writers waiting in the busy handler hold every connection, and the
//!   one transaction that holds the write lock cannot get a connection for a read beside it (a
//!   handler that loads an aggregate or a saga through the store while its unit of work is open);
//!   nothing moves until a waiter gives up after the busy timeout with "database is locked";
//! - **no fairness**: a waiter that polls every 100 ms loses to writers that arrive between its
//!   polls, for as long as they keep coming.
//!
//! The [`WriteGate`] of a SQLite store is a fair (first come, first served) semaphore of one
//! permit, taken *before* a connection is: the writers of the store queue on it without holding
//! connections, and the next one starts the moment the last one ends. Writers in other processes
//! (the CLI, a second service on the same file) still meet SQLite's busy timeout. PostgreSQL has
//! no gate: its writers of different rows run in parallel.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{StoreError, TransientKind};

/// How long a writer waits for the gate before it fails with a transient
/// [`TransientKind::Busy`] error: as long as SQLite's busy timeout of
/// [`SqliteStore::connect`](crate::sqlite::SqliteStore::connect).
pub(crate) const GATE_TIMEOUT: Duration = Duration::from_secs(30);

/// The writers of one store, one at a time (SQLite), or no gate at all (PostgreSQL, and a SQLite
/// pool of one connection, which queues its writers itself).
#[derive(Clone, Debug, Default)]
pub(crate) struct WriteGate(Option<Arc<Semaphore>>);

/// A writer's place through the [`WriteGate`], held until its transaction ends (dropped).
#[derive(Debug)]
pub(crate) struct WritePermit(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl WriteGate {
    /// No gate: every writer goes straight to the database.
    pub(crate) fn open() -> Self {
        Self(None)
    }

    /// One writer at a time.
    pub(crate) fn single() -> Self {
        Self(Some(Arc::new(Semaphore::new(1))))
    }

    /// Waits for this writer's turn (at most [`GATE_TIMEOUT`]); the permit ends it when dropped.
    /// `operation` and `table` name the write in the error.
    pub(crate) async fn enter(
        &self,
        operation: &'static str,
        table: &str,
    ) -> Result<WritePermit, StoreError> {
        self.enter_within(GATE_TIMEOUT, operation, table).await
    }

    async fn enter_within(
        &self,
        wait: Duration,
        operation: &'static str,
        table: &str,
    ) -> Result<WritePermit, StoreError> {
        let Some(gate) = &self.0 else {
            return Ok(WritePermit(None));
        };
        let busy = |why: String| StoreError::Transient {
            kind: TransientKind::Busy,
            operation,
            table: table.to_owned(),
            source: why.into(),
        };
        match tokio::time::timeout(wait, gate.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(WritePermit(Some(permit))),
            Ok(Err(closed)) => Err(busy(format!("the store's write gate is closed: {closed}"))),
            Err(_) => Err(busy(format!(
                "another writer of this store held the database for {wait:?} \
                 (a write started while the same task held a unit of work open?)"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writers_take_turns_in_the_order_they_came() {
        let gate = WriteGate::single();
        let first = gate.enter("writing", "t").await.expect("the gate is free");
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut waiting = Vec::new();
        for i in 0..5 {
            let (gate, order) = (gate.clone(), order.clone());
            waiting.push(tokio::spawn(async move {
                let _permit = gate.enter("writing", "t").await.expect("a turn");
                order.lock().expect("not poisoned").push(i);
            }));
            // Each waiter queues before the next one is spawned.
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(order.lock().expect("not poisoned").is_empty());
        drop(first);
        for w in waiting {
            w.await.expect("the writer ran");
        }
        assert_eq!(*order.lock().expect("not poisoned"), vec![0, 1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn a_writer_that_never_gets_its_turn_fails_as_busy_and_names_the_table() {
        let gate = WriteGate::single();
        let _held = gate.enter("writing", "t").await.expect("the gate is free");
        let error = gate
            .enter_within(
                Duration::from_millis(50),
                "starting a unit of work",
                "eventfold_events",
            )
            .await
            .expect_err("the gate stays held");
        assert_eq!(error.transient_kind(), Some(TransientKind::Busy));
        assert!(error.to_string().contains("eventfold_events"), "{error}");
    }

    #[tokio::test]
    async fn an_open_gate_never_waits() {
        let gate = WriteGate::open();
        let _a = gate.enter("writing", "t").await.expect("open");
        let _b = gate.enter("writing", "t").await.expect("open");
    }
}
