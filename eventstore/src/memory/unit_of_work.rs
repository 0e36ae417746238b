//! The in-memory unit of work: changes are staged, then checked and applied at commit.

use std::collections::BTreeMap;

use eventfold_core::{NewEvent, OutboxMessage, RecordedEvent, StreamId};
use tokio::sync::OwnedMutexGuard;
use uuid::Uuid;

use super::append::StagedStream;
use super::projections::MemProjection;
use super::sagas::StagedSagas;
use super::store::MemoryStore;
use crate::error::{ExpectedVersion, StoreError};
use crate::outbox::{OUTBOX_SLOTS, OutboxRow};
use crate::store::{AppendResult, CommandRecord, Snapshot, UnitOfWork};
use crate::trace::{InboxEntry, SentEntry};

/// A unit of work of the [`MemoryStore`]: changes are staged and applied at commit.
pub struct MemoryUnitOfWork {
    pub(super) store: MemoryStore,
    write_lock: Option<OwnedMutexGuard<()>>,
    pub(super) streams: Vec<(StreamId, StagedStream)>,
    snapshots: Vec<Snapshot>,
    commands: Vec<CommandRecord>,
    pub(super) outbox: Vec<OutboxMessage>,
    inbox: Vec<(String, Uuid)>,
    /// What the inbox keeps of the marked messages, for the trace.
    received: Vec<(String, InboxEntry)>,
    /// The messages of flows enqueued, for the trace.
    sent: Vec<SentEntry>,
    /// A copy of the projections' bookkeeping, changed by this unit of work (under the write
    /// lock) and put in place at commit.
    pub(super) projections: Option<BTreeMap<String, MemProjection>>,
    /// The saga instances, timers and outcomes this unit of work wrote.
    pub(super) sagas: StagedSagas,
    /// What was staged at each open savepoint, the latest last.
    savepoints: Vec<Staged>,
}

/// A copy of what a unit of work staged, kept by a savepoint.
struct Staged {
    streams: Vec<(StreamId, StagedStream)>,
    snapshots: Vec<Snapshot>,
    commands: Vec<CommandRecord>,
    outbox: Vec<OutboxMessage>,
    inbox: Vec<(String, Uuid)>,
    received: Vec<(String, InboxEntry)>,
    sent: Vec<SentEntry>,
    projections: Option<BTreeMap<String, MemProjection>>,
    sagas: StagedSagas,
}

impl MemoryUnitOfWork {
    /// An empty unit of work on `store`; it takes the write lock at its first write.
    pub(super) fn new(store: MemoryStore) -> Self {
        Self {
            store,
            write_lock: None,
            streams: Vec::new(),
            snapshots: Vec::new(),
            commands: Vec::new(),
            outbox: Vec::new(),
            inbox: Vec::new(),
            received: Vec::new(),
            sent: Vec::new(),
            projections: None,
            sagas: StagedSagas::default(),
            savepoints: Vec::new(),
        }
    }

    fn staged_copy(&self) -> Staged {
        Staged {
            streams: self.streams.clone(),
            snapshots: self.snapshots.clone(),
            commands: self.commands.clone(),
            outbox: self.outbox.clone(),
            inbox: self.inbox.clone(),
            received: self.received.clone(),
            sent: self.sent.clone(),
            projections: self.projections.clone(),
            sagas: self.sagas.clone(),
        }
    }

    pub(super) async fn lock_writer(&mut self) {
        if self.write_lock.is_none() {
            self.write_lock = Some(self.store.inner.writer.clone().lock_owned().await);
        }
    }

    pub(super) fn staged(&self, stream_id: &StreamId) -> Option<&StagedStream> {
        self.streams
            .iter()
            .find(|(s, _)| s == stream_id)
            .map(|(_, staged)| staged)
    }
}

impl UnitOfWork for MemoryUnitOfWork {
    async fn append(
        &mut self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        self.stage_append(stream_id, expected, events).await
    }

    async fn read_stream(
        &mut self,
        stream_id: &StreamId,
        from_version: u64,
        max_count: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut events = self.store.lock().read(stream_id, from_version, u64::MAX);
        if let Some(staged) = self.staged(stream_id) {
            events.retain(|e| e.stream_version <= staged.base_version);
            events.extend(
                staged
                    .events
                    .iter()
                    .filter(|e| e.stream_version >= from_version)
                    .cloned(),
            );
        }
        events.truncate(usize::try_from(max_count).unwrap_or(usize::MAX));
        Ok(events)
    }

    async fn stream_version(&mut self, stream_id: &StreamId) -> Result<u64, StoreError> {
        Ok(match self.staged(stream_id) {
            Some(staged) => staged.base_version + staged.events.len() as u64,
            None => self.store.lock().version(stream_id),
        })
    }

    async fn load_snapshot(
        &mut self,
        stream_id: &StreamId,
    ) -> Result<Option<Snapshot>, StoreError> {
        if let Some(s) = self
            .snapshots
            .iter()
            .rev()
            .find(|s| &s.stream_id == stream_id)
        {
            return Ok(Some(s.clone()));
        }
        Ok(self.store.lock().snapshots.get(stream_id).cloned())
    }

    async fn save_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StoreError> {
        self.lock_writer().await;
        self.snapshots.push(snapshot);
        Ok(())
    }

    async fn find_command(
        &mut self,
        command_id: Uuid,
    ) -> Result<Option<CommandRecord>, StoreError> {
        if let Some(c) = self.commands.iter().find(|c| c.command_id == command_id) {
            return Ok(Some(c.clone()));
        }
        Ok(self.store.lock().commands.get(&command_id).cloned())
    }

    async fn record_command(&mut self, record: CommandRecord) -> Result<bool, StoreError> {
        self.lock_writer().await;
        let exists = self
            .commands
            .iter()
            .any(|c| c.command_id == record.command_id)
            || self.store.lock().commands.contains_key(&record.command_id);
        if exists {
            return Ok(false);
        }
        self.commands.push(record);
        Ok(true)
    }

    async fn mark_received(
        &mut self,
        consumer: &str,
        message: &InboxEntry,
    ) -> Result<bool, StoreError> {
        crate::store::validate_consumer_name(consumer)?;
        self.lock_writer().await;
        let key = (consumer.to_owned(), message.message_id);
        if self.inbox.contains(&key) || self.store.lock().inbox.contains(&key) {
            return Ok(false);
        }
        self.inbox.push(key);
        if message.correlation_id.is_some() {
            self.received.push((consumer.to_owned(), message.clone()));
        }
        Ok(true)
    }

    async fn enqueue(&mut self, messages: Vec<OutboxMessage>) -> Result<(), StoreError> {
        crate::store::validate_messages(&messages)?;
        self.lock_writer().await;
        let source = self.store.source.clone();
        self.sent
            .extend(messages.iter().filter_map(|m| SentEntry::of(m, &source)));
        self.outbox.extend(messages);
        Ok(())
    }

    async fn commit(self) -> Result<(), StoreError> {
        let mut state = self.store.lock();
        // Check everything first, then apply: a failed commit changes nothing.
        let mut renumber = Vec::new();
        for (stream_id, staged) in &self.streams {
            let now = state.version(stream_id);
            if now != staged.base_version {
                if !staged.any_only {
                    return Err(StoreError::VersionConflict {
                        stream_id: stream_id.clone(),
                        expected: ExpectedVersion::Exact(staged.base_version),
                        actual: Some(now),
                    });
                }
                renumber.push((stream_id.clone(), now));
            }
            if let Some(e) = staged
                .events
                .iter()
                .find(|e| state.event_ids.contains(&e.event_id))
            {
                return Err(StoreError::DuplicateEventId {
                    stream_id: stream_id.clone(),
                    event_id: e.event_id,
                });
            }
        }
        if let Some(c) = self
            .commands
            .iter()
            .find(|c| state.commands.contains_key(&c.command_id))
        {
            return Err(StoreError::VersionConflict {
                stream_id: c.stream_id.clone(),
                expected: ExpectedVersion::Exact(c.version_before),
                actual: None,
            });
        }
        // Appends and outbox messages wake log readers and the relay.
        let appended = !self.streams.is_empty() || !self.outbox.is_empty();
        for (stream_id, staged) in self.streams {
            let base = renumber
                .iter()
                .find(|(s, _)| *s == stream_id)
                .map_or(staged.base_version, |(_, now)| *now);
            for (i, mut event) in staged.events.into_iter().enumerate() {
                event.stream_version = base + 1 + i as u64;
                state.event_ids.insert(event.event_id);
                state
                    .streams
                    .entry(stream_id.clone())
                    .or_default()
                    .push(event.global_position);
                state.log.insert(event.global_position, event);
            }
        }
        for snapshot in self.snapshots {
            let keep_existing = state
                .snapshots
                .get(&snapshot.stream_id)
                .is_some_and(|s| s.version > snapshot.version);
            if !keep_existing {
                state.snapshots.insert(snapshot.stream_id.clone(), snapshot);
            }
        }
        for command in self.commands {
            state.commands.insert(command.command_id, command);
        }
        for mark in self.inbox {
            state.inbox.insert(mark);
        }
        let now = eventfold_core::metadata::now_micros();
        for (consumer, entry) in self.received {
            state.received.push(super::trace::Received {
                consumer,
                entry,
                received_by: self.store.source.to_string(),
                at: now,
            });
        }
        for entry in self.sent {
            if !state.sent.iter().any(|(s, _)| s.id == entry.id) {
                state.sent.push((entry, now));
            }
        }
        if let Some(projections) = self.projections {
            state.projections = projections;
        }
        state.sagas.apply(self.sagas);
        let created_at = eventfold_core::metadata::now_micros();
        for message in self.outbox {
            state.outbox_seq += 1;
            let row = OutboxRow {
                seq: state.outbox_seq,
                slot: OutboxMessage::slot_of(&message.key, OUTBOX_SLOTS),
                message,
                created_at,
                attempts: 0,
                last_error: None,
                next_attempt_at: None,
            };
            state.outbox.push(row);
        }
        drop(state);
        if appended {
            self.store.inner.appended.send_modify(|n| *n += 1);
        }
        Ok(())
    }

    async fn rollback(self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn savepoint(&mut self) -> Result<(), StoreError> {
        let staged = self.staged_copy();
        self.savepoints.push(staged);
        Ok(())
    }

    async fn rollback_to_savepoint(&mut self) -> Result<(), StoreError> {
        let Some(staged) = self.savepoints.pop() else {
            return Err(StoreError::Database {
                operation: "rolling back to a savepoint",
                table: "memory".to_owned(),
                source: "no savepoint is open".into(),
            });
        };
        let Staged {
            streams,
            snapshots,
            commands,
            outbox,
            inbox,
            received,
            sent,
            projections,
            sagas,
        } = staged;
        (self.streams, self.snapshots, self.commands, self.outbox) =
            (streams, snapshots, commands, outbox);
        (self.inbox, self.received, self.sent) = (inbox, received, sent);
        (self.projections, self.sagas) = (projections, sagas);
        Ok(())
    }

    async fn release_savepoint(&mut self) -> Result<(), StoreError> {
        self.savepoints.pop();
        Ok(())
    }
}
