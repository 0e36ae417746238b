//! The relay: publishes committed outbox rows, in order per key, from any number of instances.
//!
//! A [`Relay`] leases its share of the outbox's slots (keys are hashed into slots), claims the
//! first due row of each key in those slots, publishes the batch, and records each outcome:
//!
//! - delivered: the row is deleted (only while the relay still leases its slot);
//! - retriable failure: `attempts + 1`, the row is due again after an exponential backoff; after
//!   `max_attempts` it is parked in the dead letters;
//! - non-retriable failure (for example "message too large"): parked at once.
//!
//! A parked row blocks the later rows of its key (order is never broken) until an operator
//! retries or skips it (`retry_dead_letter`, `skip_dead_letter` on the store); other keys keep
//! flowing. Several relays split the slots between them without a leader, and the slots of one
//! that stops are taken over when its leases expire. Delivery is at-least-once: a crash or a
//! lost lease can publish a row twice, never lose one. See ADR 0009.
//!
//! Metrics (through the `metrics` facade; install any recorder, for example a Prometheus
//! exporter): counters `eventfold_outbox_published_total`, `eventfold_outbox_retried_total`,
//! `eventfold_outbox_parked_total`; gauges `eventfold_outbox_backlog` (waiting rows),
//! `eventfold_outbox_oldest_age_seconds` (age of the oldest waiting row: the relay's lag),
//! `eventfold_outbox_dead_letters`, `eventfold_outbox_slots` (slots this instance leases) and,
//! on PostgreSQL, `eventfold_outbox_floor_lag` (how far the claim's lower bound trails the
//! oldest waiting row, [`OutboxStatus::floor_lag`](eventfold_eventstore::OutboxStatus::floor_lag)),
//! refreshed at every lease renewal.
//!
//! ```
//! use std::time::Duration;
//! use eventfold_eventstore::{memory::MemoryStore, EventStore, ExpectedVersion, OutboxRouting, OutboxStore};
//! use eventfold_core::{NewEvent, StreamId};
//! use eventfold_outbox::{InProcessBroker, Relay};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), eventfold_eventstore::StoreError> {
//! let store = MemoryStore::new().with_outbox(OutboxRouting::new());
//! let stream = StreamId::new("order", "1").unwrap();
//! store.append(&stream, ExpectedVersion::NoStream, vec![NewEvent::raw("order.placed", 1, b"{}".to_vec())]).await?;
//!
//! let broker = InProcessBroker::new();
//! let mut relay = Relay::new(store.clone(), broker.clone());
//! let report = relay.run_once().await?;
//! assert_eq!(report.published, 1);
//! assert_eq!(broker.records("order").len(), 1);
//! assert_eq!(store.outbox_status().await?.pending, 0);
//! # Ok(())
//! # }
//! ```

use std::collections::HashSet;
use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use eventfold_core::OutboxMessage;
use eventfold_eventstore::{OutboxRelayStore, StoreError, Wakeup};
use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use uuid::Uuid;

use crate::publisher::{Delivery, PublishError, Publisher};

/// How a relay works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// Rows claimed at once (at most one per key).
    pub batch_size: usize,
    /// How long a slot lease lasts; leases are renewed every third of it.
    pub lease_ttl: Duration,
    /// Attempts before a retriable failure is parked.
    pub max_attempts: u32,
    /// First retry delay; doubles with every attempt.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Longest wait for new rows when the outbox has nothing due.
    pub idle_wait: Duration,
    /// Batches [`Relay::run`] publishes at once (at least 1; 3 by default). The relay claims the
    /// next batch while earlier ones wait for their acknowledgements, leaving out the keys that
    /// have a row in flight, so per-key order holds and a new row is published without waiting
    /// for a round to end. More batches in flight overlap more broker time with database time,
    /// but hold more rows in memory (`in_flight_batches × batch_size`). ADRs 0013 and 0015.
    pub in_flight_batches: usize,
    /// How long a claim that a wake-up asked for waits first, so that rows committed meanwhile
    /// are claimed with it (Kafka's `linger.ms`, on the outbox side). Zero (the default) claims
    /// at once: the lowest latency, and under a steady stream of small commits a claim of one or
    /// two rows each time. A millisecond or two trades that much latency per message for fewer,
    /// fuller claims and settles (ADR 0032). A backlog (a full claim) is claimed at once either
    /// way.
    pub claim_linger: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            lease_ttl: Duration::from_secs(15),
            max_attempts: 10,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(60),
            idle_wait: Duration::from_millis(500),
            in_flight_batches: 3,
            claim_linger: Duration::ZERO,
        }
    }
}

/// What one round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RoundReport {
    /// Slots this relay leases.
    pub slots: usize,
    /// Rows delivered (and deleted).
    pub published: usize,
    /// Rows that failed and will be retried.
    pub retried: usize,
    /// Rows parked in the dead letters.
    pub parked: usize,
}

impl RoundReport {
    fn add(&mut self, other: RoundReport) {
        self.published += other.published;
        self.retried += other.retried;
        self.parked += other.parked;
    }

    fn settled(&self) -> usize {
        self.published + self.retried + self.parked
    }
}

/// The slots a relay leases and when it renewed them.
#[derive(Debug, Default)]
struct Leases {
    slots: Vec<u32>,
    renewed_at: Option<Instant>,
    /// Renewals that failed in a row, and when to try again.
    failures: u32,
    retry_at: Option<Instant>,
}

/// A claimed row while its message is published: what settling its outcome needs.
#[derive(Debug)]
struct Claimed {
    seq: u64,
    attempts: u32,
}

/// A published batch: its rows, their messages and one result per message.
type Published = (
    Vec<Claimed>,
    Vec<OutboxMessage>,
    Vec<Result<Delivery, PublishError>>,
);

/// Publishes `rows` (the messages are moved out of the rows, not copied).
async fn publish_rows<P: Publisher>(
    publisher: &P,
    rows: Vec<eventfold_eventstore::OutboxRow>,
) -> Published {
    let (claimed, messages): (Vec<_>, Vec<_>) = rows
        .into_iter()
        .map(|row| {
            (
                Claimed {
                    seq: row.seq,
                    attempts: row.attempts,
                },
                row.message,
            )
        })
        .unzip();
    let results = publisher.publish(&messages).await;
    (claimed, messages, results)
}

/// Publishes the outbox of `S` with `P`. See the [module docs](self).
pub struct Relay<S, P> {
    store: S,
    publisher: P,
    config: RelayConfig,
    owner: Uuid,
    leases: Leases,
}

impl<S: OutboxRelayStore, P: Publisher> Relay<S, P> {
    /// A relay with the default [`RelayConfig`] and a new instance id.
    pub fn new(store: S, publisher: P) -> Self {
        Self {
            store,
            publisher,
            config: RelayConfig::default(),
            owner: Uuid::now_v7(),
            leases: Leases::default(),
        }
    }

    /// Sets the configuration.
    pub fn with_config(mut self, config: RelayConfig) -> Self {
        self.config = config;
        self
    }

    /// This instance's id (the owner of its leases).
    pub fn owner(&self) -> Uuid {
        self.owner
    }

    /// The slots leased at the last renewal.
    pub fn slots(&self) -> &[u32] {
        &self.leases.slots
    }

    /// One round, one batch at a time: renew the leases when due, claim, publish, record the
    /// outcomes. [`Relay::run`] does the same with several batches in flight.
    pub async fn run_once(&mut self) -> Result<RoundReport, StoreError> {
        renew(&self.store, &self.config, self.owner, &mut self.leases).await?;
        let mut report = RoundReport {
            slots: self.leases.slots.len(),
            ..RoundReport::default()
        };
        if self.leases.slots.is_empty() {
            return Ok(report);
        }
        let rows = self
            .store
            .claim_outbox(&self.leases.slots, self.config.batch_size.max(1), &[])
            .await?;
        if rows.is_empty() {
            return Ok(report);
        }
        let published = publish_rows(&self.publisher, rows).await;
        report.add(settle(&self.store, &self.config, self.owner, vec![published]).await?);
        record(&report);
        Ok(report)
    }

    /// Runs until `shutdown` completes, waiting for appends when nothing is due; then waits
    /// for the batches in flight, records their outcomes and releases the leases, so other
    /// relays take over at once.
    ///
    /// Up to [`RelayConfig::in_flight_batches`] batches are published at once: while earlier
    /// batches wait for the broker, the relay claims new rows (leaving out the keys with a row
    /// in flight), so a row committed now is published now, not after the round in progress.
    /// Finished batches are recorded (delivered rows deleted) on a task beside the claims; their
    /// keys count as in flight until that ends, so a claim leaves out a delivered row whose
    /// deletion has not committed yet instead of publishing it again (ADR 0016).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), StoreError> {
        let Relay {
            store,
            publisher,
            config,
            owner,
            mut leases,
        } = self;
        tokio::pin!(shutdown);
        let mut wakeup = store.wakeup().await?;
        let batch_size = config.batch_size.max(1);
        let max_batches = config.in_flight_batches.max(1);
        let mut in_flight = FuturesUnordered::new();
        // The keys of the rows in flight: a claim leaves them out.
        let mut flying: HashSet<String> = HashSet::new();
        let mut finished: Vec<Published> = Vec::new();
        let mut settling: Option<Settling> = None;
        let mut failures = 0u32;
        let mut renewal: Option<Renewal> = None;
        let mut renew_failed = false;
        let mut settle_failed = false;
        // Whether a claim could find rows the last one did not: set by what can make rows
        // claimable (a wake-up or the idle poll, a settle that freed keys, a full claim, a lease
        // renewal, a failure to retry, room after the batches were at their limit, when
        // wake-ups were not listened to), so that a finished batch alone costs no claim.
        let mut claim_due = true;
        // Whether the claim due was asked for by a wake-up (it lingers first).
        let mut woken = false;
        loop {
            // The leases are renewed beside the publishing; only the first claim waits for them.
            if renewal.is_none() && leases.due(&config) {
                let (store, config) = (store.clone(), config.clone());
                let task = tokio::spawn(async move { lease(&store, &config, owner).await });
                renewal = Some((Instant::now(), task));
            }
            if renewal.as_ref().is_some_and(|(_, task)| task.is_finished()) {
                let renewed = renewal_done(&mut renewal).await;
                if let Some((started, _)) = renewal.take() {
                    renew_failed = leases.apply(renewed, started, &config, owner).is_err();
                }
                claim_due = true;
            }
            if settling.as_ref().is_some_and(|s| s.task.is_finished()) {
                let settled = settling_done(&mut settling).await;
                settle_failed = settled_apply(&mut settling, &mut flying, settled, owner);
                claim_due = true;
            }
            let was_full = in_flight.len() >= max_batches;
            while let Some(Some(done)) = in_flight.next().now_or_never() {
                finished.push(done);
                claim_due |= was_full;
            }
            // Finished batches are recorded (delivered rows deleted) on a task beside the next
            // claim; their keys stay in flight until that ends, so the claim leaves those
            // rows out rather than seeing them before their deletion commits.
            if settling.is_none() && !finished.is_empty() {
                settling = Some(Settling::spawn(
                    &store,
                    &config,
                    owner,
                    std::mem::take(&mut finished),
                ));
            }
            let mut failed = renew_failed || std::mem::take(&mut settle_failed);
            let mut full = false;
            if !failed && claim_due && !leases.slots.is_empty() && in_flight.len() < max_batches {
                claim_due = false;
                if std::mem::take(&mut woken) && !config.claim_linger.is_zero() {
                    tokio::time::sleep(config.claim_linger).await;
                }
                let exclude: Vec<&str> = flying.iter().map(String::as_str).collect();
                match store
                    .claim_outbox(&leases.slots, batch_size, &exclude)
                    .await
                {
                    Ok(rows) => {
                        full = rows.len() >= batch_size;
                        claim_due = full;
                        if !rows.is_empty() {
                            flying.extend(rows.iter().map(|r| r.message.key.clone()));
                            in_flight.push(publish_rows(&publisher, rows));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, %owner, "claiming outbox rows failed");
                        failed = true;
                    }
                }
            }
            failures = if failed { failures + 1 } else { 0 };
            claim_due |= failed;
            let room = in_flight.len() < max_batches;
            if full && room && failures == 0 {
                // A backlog: claim the next batch at once.
                continue;
            }
            let wait = if failures > 0 {
                backoff(&config, failures)
            } else {
                config.idle_wait.min(config.lease_ttl / 3)
            };
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                    finished.push(done);
                    claim_due |= !room;
                }
                settled = settling_done(&mut settling) => {
                    settle_failed = settled_apply(&mut settling, &mut flying, settled, owner);
                    claim_due = true;
                }
                renewed = renewal_done(&mut renewal) => {
                    if let Some((started, _)) = renewal.take() {
                        renew_failed = leases.apply(renewed, started, &config, owner).is_err();
                    }
                    claim_due = true;
                }
                () = wakeup.wait(wait), if room || in_flight.is_empty() => {
                    claim_due = true;
                    woken = true;
                }
            }
        }
        // A renewal in progress ends before the release: it must not lease the slots again
        // afterwards, and aborting it would leave its statement waiting in the database for
        // the release's locks (the release waiting for its) until the deadlock detector fires.
        if let Some((_, task)) = renewal.take() {
            let _ = task.await;
        }
        // Graceful shutdown: the batches in flight are settled, not abandoned.
        if settling.is_some() {
            let settled = settling_done(&mut settling).await;
            settled_apply(&mut settling, &mut flying, settled, owner);
        }
        while let Some(done) = in_flight.next().await {
            finished.push(done);
        }
        if !finished.is_empty() {
            match settle(&store, &config, owner, finished).await {
                Ok(report) => record(&report),
                Err(e) => {
                    tracing::warn!(error = %e, %owner, "recording the last published rows failed; they will be published again")
                }
            }
        }
        store.release_slots(owner).await
    }
}

/// Finished batches being recorded on a task of their own, with the keys of their rows (which
/// stay in flight, left out of claims, until the task ends).
struct Settling {
    keys: Vec<String>,
    task: tokio::task::JoinHandle<Result<RoundReport, StoreError>>,
}

impl Settling {
    fn spawn<S: OutboxRelayStore>(
        store: &S,
        config: &RelayConfig,
        owner: Uuid,
        batches: Vec<Published>,
    ) -> Self {
        let keys = batches
            .iter()
            .flat_map(|(_, messages, _)| messages.iter().map(|m| m.key.clone()))
            .collect();
        let (store, config) = (store.clone(), config.clone());
        let task = tokio::spawn(async move { settle(&store, &config, owner, batches).await });
        Self { keys, task }
    }
}

/// The outcome of the settle in progress; never completes when there is none.
async fn settling_done(settling: &mut Option<Settling>) -> Result<RoundReport, StoreError> {
    match settling {
        Some(settling) => (&mut settling.task).await.unwrap_or_else(|e| {
            Err(StoreError::Database {
                operation: "recording published outbox rows (the task ended abnormally)",
                table: "outbox".to_owned(),
                source: Box::new(e),
            })
        }),
        None => std::future::pending().await,
    }
}

/// Ends the settle in progress with its outcome `settled`: its keys leave the flight, its
/// counts go to the metrics. Returns whether it failed (its delivered rows stay in the outbox
/// and will be published again).
fn settled_apply(
    settling: &mut Option<Settling>,
    flying: &mut HashSet<String>,
    settled: Result<RoundReport, StoreError>,
    owner: Uuid,
) -> bool {
    if let Some(done) = settling.take() {
        for key in &done.keys {
            flying.remove(key);
        }
    }
    match settled {
        Ok(report) => {
            record(&report);
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, %owner, "recording published outbox rows failed; they will be published again");
            true
        }
    }
}

impl Leases {
    /// Whether a third of the leases' time has passed since the last renewal.
    fn due(&self, config: &RelayConfig) -> bool {
        match self.retry_at {
            Some(at) => Instant::now() >= at,
            None => self
                .renewed_at
                .is_none_or(|at| at.elapsed() >= config.lease_ttl / 3),
        }
    }

    /// Takes the outcome of a renewal started at `started`: the slots held now, or (on a
    /// failure) no slots once the old leases may be about to expire.
    fn apply(
        &mut self,
        renewed: Result<Vec<u32>, StoreError>,
        started: Instant,
        config: &RelayConfig,
        owner: Uuid,
    ) -> Result<(), StoreError> {
        match renewed {
            Ok(slots) => {
                self.slots = slots;
                self.renewed_at = Some(started);
                self.failures = 0;
                self.retry_at = None;
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, %owner, "renewing relay leases failed");
                self.failures += 1;
                self.retry_at = Some(Instant::now() + backoff(config, self.failures));
                // Leases may be about to expire: stop claiming until renewed.
                if self
                    .renewed_at
                    .is_none_or(|at| at.elapsed() >= config.lease_ttl / 2)
                {
                    self.slots.clear();
                }
                Err(e)
            }
        }
    }
}

/// Heartbeats and (re)leases the slots, then refreshes the backlog gauges.
async fn lease<S: OutboxRelayStore>(
    store: &S,
    config: &RelayConfig,
    owner: Uuid,
) -> Result<Vec<u32>, StoreError> {
    let slots = store.lease_slots(owner, config.lease_ttl).await?;
    record_status(store, slots.len()).await;
    Ok(slots)
}

/// Renews the leases when a third of their time has passed.
async fn renew<S: OutboxRelayStore>(
    store: &S,
    config: &RelayConfig,
    owner: Uuid,
    leases: &mut Leases,
) -> Result<(), StoreError> {
    if !leases.due(config) {
        return Ok(());
    }
    let started = Instant::now();
    let renewed = lease(store, config, owner).await;
    leases.apply(renewed, started, config, owner)
}

/// A renewal in progress on a task of its own (so it never holds up a claim, and a claim never
/// holds up its transaction), with the instant it started.
type Renewal = (
    Instant,
    tokio::task::JoinHandle<Result<Vec<u32>, StoreError>>,
);

/// The outcome of the renewal in progress; never completes when there is none.
async fn renewal_done(renewal: &mut Option<Renewal>) -> Result<Vec<u32>, StoreError> {
    match renewal {
        Some((_, task)) => task.await.unwrap_or_else(|e| {
            Err(StoreError::Database {
                operation: "renewing relay leases (the task ended abnormally)",
                table: "outbox leases".to_owned(),
                source: Box::new(e),
            })
        }),
        None => std::future::pending().await,
    }
}

/// Records the outcomes of published batches: delivered rows are deleted (one statement for
/// all of them, fenced by the leases), failed ones are retried later or parked.
async fn settle<S: OutboxRelayStore>(
    store: &S,
    config: &RelayConfig,
    owner: Uuid,
    batches: Vec<Published>,
) -> Result<RoundReport, StoreError> {
    let mut report = RoundReport::default();
    let mut delivered = Vec::with_capacity(batches.iter().map(|b| b.0.len()).sum());
    for (claimed, messages, results) in batches {
        let span = tracing::debug_span!("eventfold.relay.batch", rows = claimed.len(), %owner);
        let _guard = span.enter();
        for ((row, message), result) in claimed.iter().zip(&messages).zip(results) {
            match result {
                Ok(_) => delivered.push(row.seq),
                Err(e) if e.retriable && row.attempts + 1 < config.max_attempts => {
                    let delay = backoff(config, row.attempts + 1);
                    store.fail_outbox(row.seq, &e.to_string(), delay).await?;
                    report.retried += 1;
                }
                Err(e) => {
                    tracing::warn!(seq = row.seq, key = %message.key, error = %e, "parking an outbox row");
                    store.park_outbox(row.seq, &e.to_string()).await?;
                    report.parked += 1;
                }
            }
        }
    }
    if !delivered.is_empty() {
        let deleted = store.complete_outbox(owner, &delivered).await?;
        if (deleted as usize) < delivered.len() {
            tracing::warn!(%owner, "lost a lease mid-batch; another relay will publish those rows again");
        }
    }
    report.published = delivered.len();
    Ok(report)
}

/// Counts settled rows in the relay's metrics.
fn record(report: &RoundReport) {
    if report.settled() == 0 {
        return;
    }
    metrics::counter!("eventfold_outbox_published_total").increment(report.published as u64);
    metrics::counter!("eventfold_outbox_retried_total").increment(report.retried as u64);
    metrics::counter!("eventfold_outbox_parked_total").increment(report.parked as u64);
}

/// Refreshes the backlog gauges (best effort: a failure is logged, the relay goes on).
async fn record_status<S: OutboxRelayStore>(store: &S, slots: usize) {
    metrics::gauge!("eventfold_outbox_slots").set(slots as f64);
    match store.outbox_status().await {
        Ok(status) => {
            metrics::gauge!("eventfold_outbox_backlog").set(status.pending as f64);
            metrics::gauge!("eventfold_outbox_dead_letters").set(status.dead_letters as f64);
            let age = status.oldest.map_or(0.0, |oldest| {
                (chrono::Utc::now() - oldest).num_milliseconds().max(0) as f64 / 1000.0
            });
            metrics::gauge!("eventfold_outbox_oldest_age_seconds").set(age);
            if let Some(lag) = status.floor_lag {
                metrics::gauge!("eventfold_outbox_floor_lag").set(lag as f64);
            }
        }
        Err(e) => tracing::debug!(error = %e, "reading the outbox status for metrics failed"),
    }
}

/// The delay before retry `attempt` (1, 2, ...): base * 2^(attempt-1), capped, with up to 20%
/// jitter.
fn backoff(config: &RelayConfig, attempt: u32) -> Duration {
    let exponent = attempt.saturating_sub(1).min(20);
    let delay = config
        .backoff_base
        .saturating_mul(1u32 << exponent)
        .min(config.backoff_max);
    let jitter = RandomState::new().build_hasher().finish() % 1000;
    delay + delay.mul_f64(jitter as f64 / 5000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let config = RelayConfig {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            ..RelayConfig::default()
        };
        let first = backoff(&config, 1);
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(120));
        let third = backoff(&config, 3);
        assert!(third >= Duration::from_millis(400) && third <= Duration::from_millis(480));
        let late = backoff(&config, 30);
        assert!(late >= Duration::from_secs(1) && late <= Duration::from_millis(1200));
    }
}
