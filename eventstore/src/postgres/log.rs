//! The global log: reading below the transaction horizon (ADR 0007), the head, and the wakeup
//! of log readers (NOTIFY from other processes, at once in this one).

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;

use super::*;
use crate::error::StoreError;
use crate::log::{BlockingTransaction, Checkpoint, LogBatch, LogFilter, LogHead};
use crate::sql::{self, db_err, to_u64};
use crate::store::Wakeup;

/// Shortest time between two NOTIFYs of one process. A NOTIFY is a small transaction of its
/// own (with a WAL flush), so a burst of appends sends one. Readers in the same process are woken
/// at once, without it.
pub(super) const NOTIFY_EVERY: Duration = Duration::from_millis(5);

/// Sends a NOTIFY on `channel` after appends made through this process's store handles, at most
/// one per [`NOTIFY_EVERY`]; ends when every handle is dropped. Its payload is the store's
/// `origin`, so that the store's own wake-ups, which `signals` woke already, skip it.
pub(super) async fn notify_pump(
    pool: PgPool,
    channel: String,
    origin: Arc<str>,
    mut signals: watch::Receiver<u64>,
) {
    while signals.changed().await.is_ok() {
        if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&channel)
            .bind(&*origin)
            .execute(&pool)
            .await
        {
            tracing::debug!(error = %e, "NOTIFY failed; other processes' readers will poll");
        }
        tokio::time::sleep(NOTIFY_EVERY).await;
    }
}

/// Wakes PostgreSQL log readers: appends through this process (at once) and NOTIFY from other
/// processes. Polling covers the rest (writers that do not notify, a lost connection). The
/// store's own NOTIFYs (their payload is its origin) are skipped: the appends they announce
/// woke the reader already, and a second wake-up would cost a reader (a relay, a subscription) a
/// query that finds nothing.
pub struct PgWakeup {
    pub(super) local: watch::Receiver<u64>,
    pub(super) listener: Option<PgListener>,
    pub(super) origin: Arc<str>,
}

impl std::fmt::Debug for PgWakeup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgWakeup")
            .field("listening", &self.listener.is_some())
            .finish()
    }
}

/// What woke a [`PgWakeup`] that listens.
enum Woken {
    /// An append of this process, the end of the wait, or another store's NOTIFY.
    Yes,
    /// This store's own NOTIFY: wait on.
    Own,
    /// The LISTEN connection failed.
    Failed,
}

impl Wakeup for PgWakeup {
    async fn wait(&mut self, max: Duration) {
        let deadline = tokio::time::Instant::now() + max;
        let local = &mut self.local;
        let origin = &*self.origin;
        loop {
            let Some(listener) = self.listener.as_mut() else {
                let _ = tokio::time::timeout_at(deadline, local.changed()).await;
                return;
            };
            let woken = tokio::select! {
                _ = local.changed() => Woken::Yes,
                received = listener.recv() => match received {
                    Ok(notification) if notification.payload() == origin => Woken::Own,
                    Ok(_) => Woken::Yes,
                    Err(_) => Woken::Failed,
                },
                () = tokio::time::sleep_until(deadline) => Woken::Yes,
            };
            match woken {
                Woken::Yes => return,
                Woken::Own => continue,
                Woken::Failed => {
                    tracing::warn!(
                        "the LISTEN connection failed; log readers fall back to polling"
                    );
                    self.listener = None;
                    return;
                }
            }
        }
    }
}

impl PgStore {
    /// Reads below the transaction horizon: events of transactions older than the oldest one
    /// still running. See [`crate::log`] and ADR 0007.
    pub(super) async fn read_log_below_horizon(
        &self,
        after: Checkpoint,
        max_count: usize,
        filter: &LogFilter,
    ) -> Result<LogBatch, StoreError> {
        let table = &self.sql.events;
        let mut conn = sql::acquire(&self.pool, table).await?;
        // The horizon first: every transaction below it had ended when it was taken, so the
        // read that follows sees all of their events.
        let (horizon,): (i64,) = sqlx::query_as(&self.sql.horizon)
            .fetch_one(&mut *conn)
            .await
            .map_err(db_err("reading the transaction horizon", table))?;
        let (key, position) = after.to_parts();
        let list = |l: &[String]| (!l.is_empty()).then(|| l.to_vec());
        let rows: Vec<sql::LogRow> = sqlx::query_as(&self.sql.read_log)
            .bind(key)
            .bind(position)
            .bind(horizon)
            .bind(list(&filter.event_types))
            .bind(list(&filter.stream_types))
            .bind(filter.tenant.as_deref())
            .bind(i64::try_from(max_count).unwrap_or(i64::MAX))
            .fetch_all(&mut *conn)
            .await
            .map_err(db_err("reading the log", table))?;
        let end = Checkpoint::new(to_u64(horizon, table, "transaction horizon")?, 0);
        let held_back = if rows.len() < max_count {
            let from = end.max(after).to_parts();
            let (held,): (bool,) = sqlx::query_as(&self.sql.held_back)
                .bind(horizon)
                .bind(from.0)
                .bind(from.1)
                .fetch_one(&mut *conn)
                .await
                .map_err(db_err("looking for held-back events", table))?;
            held
        } else {
            false
        };
        sql::log_batch(rows, after, max_count, end, held_back, table)
    }

    pub(super) async fn read_log_head(&self) -> Result<LogHead, StoreError> {
        let table = &self.sql.events;
        let (position, readable): (i64, i64) = sqlx::query_as(&self.sql.head)
            .fetch_one(&self.pool)
            .await
            .map_err(db_err("reading the log head", table))?;
        let position = to_u64(position, table, "global position")?;
        let readable_position = to_u64(readable, table, "global position")?;
        let blocked_by = if position > readable_position {
            let oldest: Option<(i32, f64, String)> = sqlx::query_as(
                "SELECT pid, EXTRACT(EPOCH FROM (clock_timestamp() - xact_start))::float8, \
                 COALESCE(state, '') || ': ' || left(query, 120) FROM pg_stat_activity \
                 WHERE backend_xid IS NOT NULL AND xact_start IS NOT NULL \
                 ORDER BY age(backend_xid) DESC LIMIT 1",
            )
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err(
                "looking for the oldest transaction",
                "pg_stat_activity",
            ))?;
            oldest
                .filter(|(_, secs, _)| *secs >= 1.0)
                .map(|(pid, secs, description)| BlockingTransaction {
                    pid,
                    running_for: Duration::from_secs_f64(secs.max(0.0)),
                    description,
                })
        } else {
            None
        };
        Ok(LogHead {
            position,
            readable_position,
            blocked_by,
        })
    }

    /// The LISTEN connection comes from a pool of its own (one connection, never lent to a
    /// query), not from the store's pool. When sqlx's `PgListener` loses its connection (a server
    /// restart) and re-establishes it, it can install the new connection without its notification
    /// buffer; given back to a shared pool (when the listener is dropped and its `UNLISTEN` fails),
    /// that connection still listens, and every statement run on it fails with a protocol error
    /// ("unexpected message: NotificationResponse") whenever a NOTIFY arrives, which the store's
    /// own appends send all the time. Seen after repeated `pg_ctl restart -m immediate` in
    /// `tests/faults_cluster.rs`: appends failed with `StoreError::Database` for good.
    pub(super) async fn open_wakeup(&self) -> Result<PgWakeup, StoreError> {
        let listen_pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(self.pool.options().get_acquire_timeout())
            .connect_lazy_with((*self.pool.connect_options()).clone());
        let listener = match PgListener::connect_with(&listen_pool).await {
            Ok(mut listener) => match listener.listen(&self.sql.channel).await {
                Ok(()) => Some(listener),
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN failed; log readers fall back to polling");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "no LISTEN connection; log readers fall back to polling");
                None
            }
        };
        Ok(PgWakeup {
            local: self.appended.subscribe(),
            listener,
            origin: Arc::clone(&self.origin),
        })
    }
}
