//! The [`EventStore`] and [`UnitOfWork`] traits that every backend implements.
//!
//! A store appends events to streams with an expected version, reads streams back, keeps the
//! latest snapshot of each stream and remembers executed command ids. All writes go through a
//! [`UnitOfWork`]: one database transaction. On the SQL backends the unit of work also hands out
//! its `sqlx` transaction, so the application's own SQL commits or rolls back together with the
//! events (and, in later releases, with outbox rows, saga state and inbox marks).
//!
//! The traits use `async fn` with `Send` futures and are implemented by
//! [`crate::memory::MemoryStore`], `SqliteStore` (feature `sqlite`) and `PgStore` (feature
//! `postgres`). Code that wants a trait object for reading uses [`DynEventReader`].

use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use eventfold_core::{NewEvent, RecordedEvent, StreamId};
use uuid::Uuid;

use crate::error::{ExpectedVersion, StoreError};
use crate::log::{Checkpoint, LogBatch, LogFilter, LogHead, Subscription};

/// Where an append landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendResult {
    /// Version of the stream before the append (0: it did not exist).
    pub previous_version: u64,
    /// Version of the stream after the append: the version of the last event.
    pub version: u64,
    /// Global position of each appended event, in order.
    pub positions: Vec<u64>,
}

/// One append of [`UnitOfWork::append_many`]: `events` for `stream_id` if it is at `expected`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAppend {
    /// The stream written to.
    pub stream_id: StreamId,
    /// The version the stream must be at (checked after the earlier appends of the same call).
    pub expected: ExpectedVersion,
    /// The events, in order.
    pub events: Vec<NewEvent>,
}

impl StreamAppend {
    /// `events` for `stream_id` if it is at `expected`.
    pub fn new(stream_id: StreamId, expected: ExpectedVersion, events: Vec<NewEvent>) -> Self {
        Self {
            stream_id,
            expected,
            events,
        }
    }
}

/// The latest saved state of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The stream.
    pub stream_id: StreamId,
    /// The stream version the state includes.
    pub version: u64,
    /// The aggregate's `SNAPSHOT_VERSION` when it was taken.
    pub snapshot_version: u32,
    /// The serialized state.
    pub state: Vec<u8>,
    /// When it was taken.
    pub taken_at: DateTime<Utc>,
}

/// The record of an executed command (idempotency).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRecord {
    /// The command id.
    pub command_id: Uuid,
    /// The stream it was executed on.
    pub stream_id: StreamId,
    /// Stream version before the command.
    pub version_before: u64,
    /// Stream version after the command (equal when it produced no event).
    pub version_after: u64,
    /// When it was executed.
    pub recorded_at: DateTime<Utc>,
}

/// A transaction of the event store. Dropping it without [`UnitOfWork::commit`] rolls it back.
pub trait UnitOfWork: Send {
    /// Appends `events` to `stream_id` if the stream is at `expected`.
    ///
    /// Fails with [`StoreError::VersionConflict`] when it is not, [`StoreError::EmptyAppend`]
    /// when `events` is empty. On failure nothing of this call is written; the unit of work
    /// should then be rolled back (PostgreSQL aborts the transaction).
    fn append(
        &mut self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> impl Future<Output = Result<AppendResult, StoreError>> + Send;

    /// Reads up to `max_count` events of a stream from `from_version` (inclusive, 1-based),
    /// as this transaction sees them.
    fn read_stream(
        &mut self,
        stream_id: &StreamId,
        from_version: u64,
        max_count: u64,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    /// The current version of a stream (0: it does not exist).
    fn stream_version(
        &mut self,
        stream_id: &StreamId,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// The latest snapshot of a stream.
    fn load_snapshot(
        &mut self,
        stream_id: &StreamId,
    ) -> impl Future<Output = Result<Option<Snapshot>, StoreError>> + Send;

    /// Saves a snapshot, replacing an older one (a newer stored one is kept).
    fn save_snapshot(
        &mut self,
        snapshot: Snapshot,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Looks up an executed command.
    fn find_command(
        &mut self,
        command_id: Uuid,
    ) -> impl Future<Output = Result<Option<CommandRecord>, StoreError>> + Send;

    /// Records an executed command. Returns `false` when the id was already recorded (by a
    /// concurrent execution); the caller should then roll back.
    fn record_command(
        &mut self,
        record: CommandRecord,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Marks `message_id` as processed by `consumer`, in this transaction. Returns `false` when
    /// it was already marked (a duplicate delivery): the caller skips the handler and rolls back.
    ///
    /// The mark keeps nothing for the trace of a flow; consumers use
    /// [`UnitOfWork::mark_received`].
    fn mark_inbox(
        &mut self,
        consumer: &str,
        message_id: Uuid,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        async move {
            self.mark_received(consumer, &crate::trace::InboxEntry::id(message_id))
                .await
        }
    }

    /// Marks `message.message_id` as processed by `consumer`, in this transaction, keeping what
    /// the message was (type, topic, correlation and causation ids, sender) and which service
    /// received it (the store's source), for the trace of its flow. Returns `false` when it was
    /// already marked (a duplicate delivery): the caller skips the handler and rolls back.
    ///
    /// A consumer name that is empty, longer than [`MAX_CONSUMER_NAME_LEN`] bytes or holds a
    /// control character is refused with [`StoreError::InvalidIdentifier`] on every backend.
    fn mark_received(
        &mut self,
        consumer: &str,
        message: &crate::trace::InboxEntry,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// [`mark_received`](UnitOfWork::mark_received) for several messages at once, in this
    /// transaction: whether each one was newly marked, in the order given. A message already
    /// marked, or given twice (all but its first), is `false`. PostgreSQL marks them all in one
    /// statement, SQLite in statements of up to 32 marks, the memory store one after the other.
    /// A consumer with shared commits marks a polled batch this way before it runs the handlers.
    ///
    /// ```
    /// # use eventfold_eventstore::{memory::MemoryStore, EventStore, UnitOfWork, trace::InboxEntry};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = MemoryStore::new();
    /// let (a, b) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    /// let mut uow = store.begin().await?;
    /// assert!(uow.mark_received("billing", &InboxEntry::id(a)).await?);
    /// let entries = [InboxEntry::id(a), InboxEntry::id(b), InboxEntry::id(b)];
    /// assert_eq!(uow.mark_received_all("billing", &entries).await?, [false, true, false]);
    /// uow.commit().await?;
    /// # Ok(())
    /// # }
    /// ```
    fn mark_received_all(
        &mut self,
        consumer: &str,
        messages: &[crate::trace::InboxEntry],
    ) -> impl Future<Output = Result<Vec<bool>, StoreError>> + Send {
        async move {
            let mut marked = Vec::with_capacity(messages.len());
            for message in messages {
                marked.push(self.mark_received(consumer, message).await?);
            }
            Ok(marked)
        }
    }

    /// Writes application messages to the outbox, in this transaction. A message with a NUL
    /// character in its topic, key, types, ids or headers (PostgreSQL cannot store it), or with
    /// a key over [`MAX_MESSAGE_KEY_LEN`] bytes, is refused with [`StoreError::InvalidMessage`]
    /// on every backend.
    fn enqueue(
        &mut self,
        messages: Vec<eventfold_core::OutboxMessage>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// [`append`](Self::append) `events`, then [`enqueue`](Self::enqueue) `messages` (after
    /// the events' own outbox rows), in one call: what a transition that records its events and
    /// sends commands does. On PostgreSQL, with an exact expected version, it is one statement
    /// (the events, their outbox rows, the messages and their journal rows), and a version
    /// conflict writes none of them; elsewhere it is the two calls. On any error, roll the unit of
    /// work back, as after a failed append.
    ///
    /// ```
    /// # use eventfold_core::{NewEvent, OutboxMessage, StreamId};
    /// # use eventfold_eventstore::{memory::MemoryStore, EventStore, ExpectedVersion, UnitOfWork};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = MemoryStore::new();
    /// let order = StreamId::new("order", "o-1")?;
    /// let mut uow = store.begin().await?;
    /// let placed = NewEvent::raw("order.placed", 1, b"{}".to_vec());
    /// let reserve = OutboxMessage::new("inventory.commands", "o-1", "inventory.reserve", b"{}".to_vec());
    /// uow.append_and_enqueue(&order, ExpectedVersion::NoStream, vec![placed], vec![reserve]).await?;
    /// uow.commit().await?;
    /// assert_eq!(store.read_stream(&order, 1, 10).await?.len(), 1);
    /// # Ok(()) }
    /// ```
    fn append_and_enqueue(
        &mut self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        messages: Vec<eventfold_core::OutboxMessage>,
    ) -> impl Future<Output = Result<AppendResult, StoreError>> + Send {
        async move {
            let result = self.append(stream_id, expected, events).await?;
            if !messages.is_empty() {
                self.enqueue(messages).await?;
            }
            Ok(result)
        }
    }

    /// Appends to several streams at once: each [`StreamAppend`] as [`append`](Self::append)
    /// would, in the order given (the appends of one stream in that order, each checked against
    /// the version the earlier ones left), and their results in that order. What a consumer
    /// that handles a batch of messages in one transaction writes ([`eventfold-outbox`'s
    /// `Handler::handle_batch`]): on PostgreSQL, each run of appends to distinct streams is one
    /// statement instead of one per stream; elsewhere it is the appends one by one.
    ///
    /// Fails with the first failing append's error ([`StoreError::VersionConflict`] names its
    /// stream). Appends before it, and on PostgreSQL the other appends of its statement, may
    /// have been written: roll the unit of work back, as after a failed append.
    ///
    /// [`eventfold-outbox`'s `Handler::handle_batch`]: https://docs.rs/eventfold-outbox
    ///
    /// ```
    /// # use eventfold_core::{NewEvent, StreamId};
    /// # use eventfold_eventstore::{memory::MemoryStore, EventStore, ExpectedVersion, StreamAppend, UnitOfWork};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = MemoryStore::new();
    /// let (a, b) = (StreamId::new("acct", "a")?, StreamId::new("acct", "b")?);
    /// let noted = || vec![NewEvent::raw("acct.noted", 1, b"{}".to_vec())];
    /// let mut uow = store.begin().await?;
    /// let results = uow
    ///     .append_many(vec![
    ///         StreamAppend::new(a.clone(), ExpectedVersion::NoStream, noted()),
    ///         StreamAppend::new(b.clone(), ExpectedVersion::Any, noted()),
    ///         StreamAppend::new(a.clone(), ExpectedVersion::Exact(1), noted()),
    ///     ])
    ///     .await?;
    /// uow.commit().await?;
    /// let versions: Vec<u64> = results.iter().map(|r| r.version).collect();
    /// assert_eq!(versions, [1, 1, 2]);
    /// assert_eq!(store.stream_version(&a).await?, 2);
    /// # Ok(()) }
    /// ```
    fn append_many(
        &mut self,
        appends: Vec<StreamAppend>,
    ) -> impl Future<Output = Result<Vec<AppendResult>, StoreError>> + Send {
        async move {
            let mut results = Vec::with_capacity(appends.len());
            for a in appends {
                results.push(self.append(&a.stream_id, a.expected, a.events).await?);
            }
            Ok(results)
        }
    }

    /// Marks a point this unit of work can go back to: [`UnitOfWork::rollback_to_savepoint`]
    /// undoes what was written after it, [`UnitOfWork::release_savepoint`] keeps it. Savepoints
    /// nest (the latest one is the one rolled back to or released). A consumer uses one per
    /// message to handle a batch of messages in one transaction, each failure undone alone.
    ///
    /// ```
    /// # use eventfold_core::{NewEvent, StreamId};
    /// # use eventfold_eventstore::{memory::MemoryStore, EventStore, ExpectedVersion, UnitOfWork};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = MemoryStore::new();
    /// let (kept, undone) = (StreamId::new("note", "kept")?, StreamId::new("note", "undone")?);
    /// let mut uow = store.begin().await?;
    /// uow.append(&kept, ExpectedVersion::NoStream, vec![NewEvent::raw("noted", 1, b"{}".to_vec())]).await?;
    /// uow.savepoint().await?;
    /// uow.append(&undone, ExpectedVersion::NoStream, vec![NewEvent::raw("noted", 1, b"{}".to_vec())]).await?;
    /// uow.rollback_to_savepoint().await?;
    /// uow.commit().await?;
    /// assert_eq!(store.read_stream(&kept, 1, 10).await?.len(), 1);
    /// assert!(store.read_stream(&undone, 1, 10).await?.is_empty());
    /// # Ok(()) }
    /// ```
    fn savepoint(&mut self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Undoes everything written since the latest savepoint, and removes it.
    fn rollback_to_savepoint(&mut self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Keeps what was written since the latest savepoint, and removes it.
    fn release_savepoint(&mut self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Commits everything written in this unit of work.
    fn commit(self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Rolls everything back.
    fn rollback(self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Waits for a sign that something was appended or enqueued in the outbox. A hint only:
/// readers and the relay always re-read.
pub trait Wakeup: Send {
    /// Returns when an append may have happened since the last call, or after `max`.
    fn wait(&mut self, max: std::time::Duration) -> impl Future<Output = ()> + Send;
}

/// A wake-up from appends made through this process's store handles.
#[derive(Debug)]
pub struct LocalWakeup(pub(crate) tokio::sync::watch::Receiver<u64>);

impl Wakeup for LocalWakeup {
    async fn wait(&mut self, max: std::time::Duration) {
        let _ = tokio::time::timeout(max, self.0.changed()).await;
    }
}

/// An event store backend. Cheap to clone (it holds a pool).
pub trait EventStore: Clone + Send + Sync + 'static {
    /// This backend's transaction.
    type UnitOfWork: UnitOfWork;

    /// This backend's wake-up signal for log readers.
    type Wakeup: Wakeup;

    /// Reads up to `max_count` events of the global log after `after`, in log order, keeping
    /// those that pass `filter`. Never skips a committed event: see [`crate::log`].
    fn read_log(
        &self,
        after: Checkpoint,
        max_count: usize,
        filter: &LogFilter,
    ) -> impl Future<Output = Result<LogBatch, StoreError>> + Send;

    /// How far the log goes and what holds readers back, for lag figures.
    fn log_head(&self) -> impl Future<Output = Result<LogHead, StoreError>> + Send;

    /// A wake-up signal for appends (in-process signals, LISTEN/NOTIFY on PostgreSQL).
    fn wakeup(&self) -> impl Future<Output = Result<Self::Wakeup, StoreError>> + Send;

    /// Follows the global log from `from`: catch up, then live.
    fn subscribe(&self, from: Checkpoint, filter: LogFilter) -> Subscription<Self> {
        Subscription::new(self.clone(), from, filter)
    }

    /// Starts a unit of work.
    fn begin(&self) -> impl Future<Output = Result<Self::UnitOfWork, StoreError>> + Send;

    /// The service name recorded as `source` on new events.
    fn source(&self) -> &str;

    /// Reads up to `max_count` committed events of a stream from `from_version` (1-based).
    fn read_stream(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        max_count: u64,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    /// The committed version of a stream (0: it does not exist).
    fn stream_version(
        &self,
        stream_id: &StreamId,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// The latest committed snapshot of a stream.
    fn load_snapshot(
        &self,
        stream_id: &StreamId,
    ) -> impl Future<Output = Result<Option<Snapshot>, StoreError>> + Send;

    /// Looks up an executed command.
    fn find_command(
        &self,
        command_id: Uuid,
    ) -> impl Future<Output = Result<Option<CommandRecord>, StoreError>> + Send;

    /// Appends in a unit of work of its own and commits it.
    fn append(
        &self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> impl Future<Output = Result<AppendResult, StoreError>> + Send {
        append_alone(self, stream_id, expected, events)
    }
}

/// Appends in a unit of work of its own and commits it, or rolls it back when the append fails:
/// the default [`EventStore::append`], and the path of a store that overrides it when it does
/// not share the commit.
pub(crate) async fn append_alone<S: EventStore>(
    store: &S,
    stream_id: &StreamId,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
) -> Result<AppendResult, StoreError> {
    let mut uow = store.begin().await?;
    match uow.append(stream_id, expected, events).await {
        Ok(result) => {
            uow.commit().await?;
            Ok(result)
        }
        Err(e) => {
            // The append's error is the one worth reporting.
            let _ = uow.rollback().await;
            Err(e)
        }
    }
}

/// A boxed future, for the object-safe reader.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The object-safe reading half of an event store: `Arc<dyn DynEventReader>` works for every
/// backend (tools, admin endpoints, the CLI).
pub trait DynEventReader: Send + Sync {
    /// See [`EventStore::read_stream`].
    fn read_stream<'a>(
        &'a self,
        stream_id: &'a StreamId,
        from_version: u64,
        max_count: u64,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>, StoreError>>;

    /// See [`EventStore::stream_version`].
    fn stream_version<'a>(
        &'a self,
        stream_id: &'a StreamId,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;
}

impl<S: EventStore> DynEventReader for S {
    fn read_stream<'a>(
        &'a self,
        stream_id: &'a StreamId,
        from_version: u64,
        max_count: u64,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>, StoreError>> {
        Box::pin(EventStore::read_stream(
            self,
            stream_id,
            from_version,
            max_count,
        ))
    }

    fn stream_version<'a>(
        &'a self,
        stream_id: &'a StreamId,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(EventStore::stream_version(self, stream_id))
    }
}

/// Gives events without a source (for example [`NewEvent::raw`]) the store's source.
pub(crate) fn fill_source(events: &mut [NewEvent], source: &str) {
    for event in events.iter_mut().filter(|e| e.source.is_empty()) {
        event.source = source.to_owned();
    }
}

/// Makes `events` ready to append to `stream_id`: the store's `source` filled in where an event
/// has none (first, so that it is checked too), then [`validate_append`].
pub(crate) fn ready_to_append(
    stream_id: &StreamId,
    events: &mut [NewEvent],
    source: &str,
) -> Result<(), StoreError> {
    fill_source(events, source);
    validate_append(stream_id, events)
}

/// Largest payload of an event or an outbox message, in bytes (64 MiB). Every backend refuses a
/// larger one before any statement, with [`StoreError::InvalidEvent`] or
/// [`StoreError::InvalidMessage`] naming its size: PostgreSQL's limit (1 GB per value, less
/// once a row is encoded on the wire) and SQLite's (`SQLITE_MAX_LENGTH`, 1 GB) would otherwise
/// fail late with a generic error, and a broker refuses far smaller messages (Kafka: 1 MB by
/// default), which the relay parks as dead letters.
pub const MAX_PAYLOAD_LEN: usize = 64 * 1024 * 1024;

/// Checks the parts of an append that do not need the database: a non-empty batch, schema
/// versions from 1, event types of 1 to 200 bytes, payloads of at most [`MAX_PAYLOAD_LEN`]
/// bytes, and no NUL character in any text (type,
/// source, tenant, header names and values), which PostgreSQL cannot store; every backend refuses
/// it alike.
pub(crate) fn validate_append(stream_id: &StreamId, events: &[NewEvent]) -> Result<(), StoreError> {
    if events.is_empty() {
        return Err(StoreError::EmptyAppend {
            stream_id: stream_id.clone(),
        });
    }
    for event in events {
        let reason = if event.schema_version == 0 {
            Some("schema version must be at least 1".to_owned())
        } else if event.event_type.is_empty() || event.event_type.len() > 200 {
            Some("event type must be 1 to 200 bytes".to_owned())
        } else if event.payload.len() > MAX_PAYLOAD_LEN {
            Some(format!(
                "the payload is {} bytes, more than {MAX_PAYLOAD_LEN}",
                event.payload.len()
            ))
        } else {
            nul_in_event(event).map(|field| format!("the {field} holds a NUL character"))
        };
        if let Some(reason) = reason {
            return Err(StoreError::InvalidEvent {
                stream_id: stream_id.clone(),
                event_id: event.event_id,
                event_type: event.event_type.clone(),
                reason,
            });
        }
    }
    Ok(())
}

/// The first text field of `event` that holds a NUL character, if any.
fn nul_in_event(event: &NewEvent) -> Option<String> {
    if event.event_type.contains('\0') {
        return Some("event type".to_owned());
    }
    if event.source.contains('\0') {
        return Some("source".to_owned());
    }
    if event.tenant_id.as_deref().is_some_and(|t| t.contains('\0')) {
        return Some("tenant id".to_owned());
    }
    nul_in_headers(&event.headers)
}

/// The first header whose name or value holds a NUL character, if any.
fn nul_in_headers(headers: &eventfold_core::Headers) -> Option<String> {
    headers.iter().find_map(|(name, value)| {
        if name.contains('\0') {
            Some("header name".to_owned())
        } else if value.contains('\0') {
            Some(format!("header `{name}`"))
        } else {
            None
        }
    })
}

/// Longest consumer name, in bytes (it is part of the inbox's primary key).
pub const MAX_CONSUMER_NAME_LEN: usize = 200;

/// Checks the name of a consumer before it marks the inbox: 1 to [`MAX_CONSUMER_NAME_LEN`] bytes
/// without control characters (PostgreSQL cannot store a NUL, and a long name would not fit the
/// inbox's index). Anything else printable, quotes included, is stored verbatim.
pub(crate) fn validate_consumer_name(name: &str) -> Result<(), StoreError> {
    check_name("consumer name", name)
}

/// Checks a name the store keeps in a key column (a consumer, a projection): 1 to 200 bytes
/// without control characters; [`StoreError::InvalidIdentifier`] naming `what` otherwise.
pub(crate) fn check_name(what: &'static str, name: &str) -> Result<(), StoreError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_CONSUMER_NAME_LEN {
        "it is longer than 200 bytes"
    } else if name.chars().any(char::is_control) {
        "it holds a control character"
    } else {
        return Ok(());
    };
    Err(StoreError::InvalidIdentifier {
        what,
        value: name.chars().take(64).collect(),
        reason,
    })
}

/// Longest key of an application message in the outbox, in bytes. PostgreSQL indexes the key
/// of rows that wait for a retry and of dead letters, and an index entry holds at most about
/// 2.7 kB: a longer key would be written, then fail the first retry.
pub const MAX_MESSAGE_KEY_LEN: usize = 1024;

/// Checks application messages before they are written to the outbox: a key of at most
/// [`MAX_MESSAGE_KEY_LEN`] bytes, a payload of at most [`MAX_PAYLOAD_LEN`] bytes, no NUL character in the topic, key, aggregate type and id,
/// message type, header names and values (PostgreSQL cannot store it); every backend refuses it
/// alike.
pub(crate) fn validate_messages(
    messages: &[eventfold_core::OutboxMessage],
) -> Result<(), StoreError> {
    for message in messages {
        let oversized = [
            ("key", message.key.len(), MAX_MESSAGE_KEY_LEN),
            ("payload", message.payload.len(), MAX_PAYLOAD_LEN),
        ]
        .into_iter()
        .find(|(_, len, max)| len > max);
        if let Some((what, len, max)) = oversized {
            return Err(StoreError::InvalidMessage {
                message_id: message.id,
                topic: message.topic.clone(),
                reason: format!("the {what} is {len} bytes, more than {max}"),
            });
        }
        let field = [
            ("topic", &message.topic),
            ("key", &message.key),
            ("aggregate type", &message.aggregate_type),
            ("aggregate id", &message.aggregate_id),
            ("message type", &message.message_type),
        ]
        .into_iter()
        .find(|(_, value)| value.contains('\0'))
        .map(|(field, _)| field.to_owned())
        .or_else(|| nul_in_headers(&message.headers));
        if let Some(field) = field {
            return Err(StoreError::InvalidMessage {
                message_id: message.id,
                topic: message.topic.clone(),
                reason: format!("the {field} holds a NUL character"),
            });
        }
    }
    Ok(())
}
