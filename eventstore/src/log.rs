//! The global log: every committed event of the store, in one order that never skips.
//!
//! Projections, choreography handlers and tracing tools read "all events after checkpoint C".
//! The hard part is PostgreSQL: a sequence value is handed out when a row is inserted, but the
//! row becomes visible when its transaction commits, and transactions commit in another order
//! than they insert. A reader that remembers "the highest position I saw" silently skips an event
//! that was inserted earlier but committed later. eventfold never does that.
//!
//! * The log's order is a [`Checkpoint`]: a *commit key* and the global position. On SQLite and
//!   in memory, writers are serialized, the commit key is always 0 and the order is the position.
//!   On PostgreSQL the commit key is the writing transaction's id (raised, if needed, to the key
//!   of the stream's previous event, so each stream stays in version order), and a reader only
//!   reads events whose key is below the oldest transaction still running: those can no longer
//!   be joined by an earlier one. See `docs/adr/0007-global-log-transaction-horizon.md`.
//! * [`EventStore::read_log`](crate::EventStore::read_log) reads one batch after a checkpoint,
//!   optionally filtered; the batch's checkpoint moves past filtered-out events too.
//! * [`Subscription`] catches up from a checkpoint and then follows live appends, woken by the
//!   store (in-process signals; LISTEN/NOTIFY across PostgreSQL clients) with polling as a
//!   fallback. It never busy-loops.
//! * [`LogHead`] tells how far the log goes and what, if anything, holds readers back (a long
//!   transaction on PostgreSQL), for lag metrics.
//!
//! A checkpoint is a plain value: store it with [`Checkpoint::to_parts`] in two `BIGINT` columns
//! (or as its string form) in the same transaction as a read model, and resume from it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use eventfold_core::RecordedEvent;

use crate::error::StoreError;

/// A place in the global log: everything up to and including it has been read.
///
/// Opaque: compare, store and restore it, but do not compute with it.
///
/// ```
/// use eventfold_eventstore::Checkpoint;
///
/// let start = Checkpoint::START;
/// let stored = start.to_string();
/// assert_eq!(stored.parse::<Checkpoint>().unwrap(), start);
/// let (a, b) = start.to_parts();
/// assert_eq!(Checkpoint::from_parts(a, b).unwrap(), start);
/// assert!("not a checkpoint".parse::<Checkpoint>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Checkpoint {
    key: u64,
    position: u64,
}

/// A string or pair that is not a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid checkpoint `{0}`: expected two non-negative integers written `key:position`")]
pub struct InvalidCheckpoint(pub String);

impl Checkpoint {
    /// Before the first event.
    pub const START: Checkpoint = Checkpoint {
        key: 0,
        position: 0,
    };

    pub(crate) fn new(key: u64, position: u64) -> Self {
        Self { key, position }
    }

    pub(crate) fn position(self) -> u64 {
        self.position
    }

    /// The two numbers of this checkpoint, for two `BIGINT` columns.
    pub fn to_parts(self) -> (i64, i64) {
        (
            i64::try_from(self.key).unwrap_or(i64::MAX),
            i64::try_from(self.position).unwrap_or(i64::MAX),
        )
    }

    /// A checkpoint from [`Checkpoint::to_parts`].
    pub fn from_parts(key: i64, position: i64) -> Result<Self, InvalidCheckpoint> {
        match (u64::try_from(key), u64::try_from(position)) {
            (Ok(key), Ok(position)) => Ok(Self { key, position }),
            _ => Err(InvalidCheckpoint(format!("{key}:{position}"))),
        }
    }

    /// The global position of the last event read (0 at the start); for lag figures.
    pub fn global_position(self) -> u64 {
        self.position
    }
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.key, self.position)
    }
}

impl FromStr for Checkpoint {
    type Err = InvalidCheckpoint;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (key, position) = s
            .split_once(':')
            .ok_or_else(|| InvalidCheckpoint(s.to_owned()))?;
        match (key.parse(), position.parse()) {
            (Ok(key), Ok(position)) => Ok(Self { key, position }),
            _ => Err(InvalidCheckpoint(s.to_owned())),
        }
    }
}

/// Which events a log reader wants. Empty lists mean "all".
///
/// ```
/// use eventfold_eventstore::LogFilter;
///
/// let filter = LogFilter::all().event_types(["order.placed", "order.shipped"]).tenant("acme");
/// assert!(!filter.is_all());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFilter {
    /// Only these event types.
    pub event_types: Vec<String>,
    /// Only streams of these types.
    pub stream_types: Vec<String>,
    /// Only this tenant.
    pub tenant: Option<String>,
}

impl LogFilter {
    /// Every event.
    pub fn all() -> Self {
        Self::default()
    }

    /// Only these event types.
    pub fn event_types<I: IntoIterator<Item = T>, T: Into<String>>(mut self, types: I) -> Self {
        self.event_types = types.into_iter().map(Into::into).collect();
        self
    }

    /// Only streams of these types (aggregate types).
    pub fn stream_types<I: IntoIterator<Item = T>, T: Into<String>>(mut self, types: I) -> Self {
        self.stream_types = types.into_iter().map(Into::into).collect();
        self
    }

    /// Only events of this tenant.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Does this filter let everything through?
    pub fn is_all(&self) -> bool {
        self.event_types.is_empty() && self.stream_types.is_empty() && self.tenant.is_none()
    }

    /// Does `event` pass?
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        (self.event_types.is_empty() || self.event_types.contains(&event.event_type))
            && (self.stream_types.is_empty()
                || self
                    .stream_types
                    .iter()
                    .any(|t| t == event.stream_id.stream_type()))
            && self
                .tenant
                .as_ref()
                .is_none_or(|t| event.tenant_id.as_ref() == Some(t))
    }
}

/// An event read from the global log, with the checkpoint just after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEvent {
    /// Resume from here to continue after this event.
    pub checkpoint: Checkpoint,
    /// The event.
    pub event: RecordedEvent,
}

/// One read of the global log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogBatch {
    /// The events, in log order.
    pub events: Vec<LogEvent>,
    /// Where to resume: after the last event, or further when the read reached the end of what
    /// is readable (filtered-out events are skipped over too).
    pub checkpoint: Checkpoint,
    /// `true` when the read reached the end of what is readable now.
    pub reached_end: bool,
    /// `true` when committed events exist after the batch that are not readable yet because a
    /// transaction that started before them is still running (PostgreSQL only).
    pub held_back: bool,
}

/// How far the log goes, for lag figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogHead {
    /// The highest committed global position (0: empty log).
    pub position: u64,
    /// Events at or below this global position are readable now, except those of transactions
    /// still in flight; `position - readable_position` is how many a long transaction holds back.
    pub readable_position: u64,
    /// The oldest transaction still running that holds readers back, if one has run for
    /// longer than a second (PostgreSQL only).
    pub blocked_by: Option<BlockingTransaction>,
}

/// A transaction that holds the PostgreSQL log horizon back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockingTransaction {
    /// Server process id (for `pg_terminate_backend`).
    pub pid: i32,
    /// How long it has been running.
    pub running_for: Duration,
    /// Its state and the start of its current query, as `pg_stat_activity` shows them.
    pub description: String,
}

/// Follows the global log: catches up from a checkpoint, then waits for new events.
///
/// ```
/// use eventfold_eventstore::{memory::MemoryStore, EventStore, ExpectedVersion, LogFilter, Checkpoint};
/// use eventfold_core::{NewEvent, StreamId};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), eventfold_eventstore::StoreError> {
/// let store = MemoryStore::new();
/// let mut subscription = store.subscribe(Checkpoint::START, LogFilter::all());
/// let stream = StreamId::new("order", "1").unwrap();
/// let writer = store.clone();
/// tokio::spawn(async move {
///     writer.append(&stream, ExpectedVersion::Any, vec![NewEvent::raw("order.placed", 1, b"{}".to_vec())]).await
/// });
/// let first = subscription.next().await?;   // waits for the append, without polling in a loop
/// assert_eq!(first.event.event_type, "order.placed");
/// assert!(subscription.checkpoint() >= first.checkpoint);
/// # Ok(())
/// # }
/// ```
pub struct Subscription<S: crate::EventStore> {
    store: S,
    filter: LogFilter,
    /// After the last event handed out (or the filtered-out events skipped since).
    checkpoint: Checkpoint,
    /// Where the next read starts (ahead of `checkpoint` while events are buffered).
    read_from: Checkpoint,
    buffered: std::collections::VecDeque<LogEvent>,
    batch_size: usize,
    poll_interval: Duration,
    wakeup: Option<S::Wakeup>,
}

/// Default number of events read per query by a subscription.
pub const DEFAULT_BATCH_SIZE: usize = 1000;
/// Default longest wait between two reads when no wake-up arrives.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);
/// First wait when committed events are held back by a transaction in flight.
const HELD_BACK_RETRY: Duration = Duration::from_millis(2);

impl<S: crate::EventStore> Subscription<S> {
    pub(crate) fn new(store: S, from: Checkpoint, filter: LogFilter) -> Self {
        Self {
            store,
            filter,
            checkpoint: from,
            read_from: from,
            buffered: std::collections::VecDeque::new(),
            batch_size: DEFAULT_BATCH_SIZE,
            poll_interval: DEFAULT_POLL_INTERVAL,
            wakeup: None,
        }
    }

    /// Events read per query (default 1000).
    pub fn batch_size(mut self, size: usize) -> Self {
        self.batch_size = size.max(1);
        self
    }

    /// Longest wait between two reads when no wake-up arrives (default 500 ms): the fallback
    /// for writers that do not signal, such as another process writing to a SQLite file.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// The checkpoint after the last event returned by [`Subscription::next`] (or after the
    /// filtered-out events skipped since). Store it to resume later.
    pub fn checkpoint(&self) -> Checkpoint {
        self.checkpoint
    }

    /// The next event, waiting for it if the log has nothing new.
    pub async fn next(&mut self) -> Result<LogEvent, StoreError> {
        let mut held_back_wait = HELD_BACK_RETRY;
        loop {
            if let Some(event) = self.buffered.pop_front() {
                self.checkpoint = if self.buffered.is_empty() {
                    self.read_from
                } else {
                    event.checkpoint
                };
                return Ok(event);
            }
            if self.wakeup.is_none() {
                // Subscribe to wake-ups before reading, so that an append committed between the
                // read and the wait is not missed.
                self.wakeup = Some(self.store.wakeup().await?);
            }
            let batch = self
                .store
                .read_log(self.read_from, self.batch_size, &self.filter)
                .await?;
            self.read_from = batch.checkpoint;
            if !batch.events.is_empty() {
                self.buffered.extend(batch.events);
                held_back_wait = HELD_BACK_RETRY;
                continue;
            }
            self.checkpoint = self.read_from;
            if batch.held_back {
                // Committed events wait for an older transaction to end: look again soon,
                // backing off up to the poll interval.
                tokio::time::sleep(held_back_wait).await;
                held_back_wait = (held_back_wait * 2).min(self.poll_interval);
                continue;
            }
            if let Some(wakeup) = self.wakeup.as_mut() {
                crate::store::Wakeup::wait(wakeup, self.poll_interval).await;
            }
        }
    }
}
