//! Appending through a unit of work: the checks, the positions and the staged events.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use eventfold_core::{NewEvent, RecordedEvent, StreamId};

use super::unit_of_work::MemoryUnitOfWork;
use crate::error::{ExpectedVersion, StoreError};
use crate::outbox::append_messages;
use crate::store::{AppendResult, ready_to_append};

/// What a unit of work appended to one stream: checked again and applied at its commit.
#[derive(Clone)]
pub(super) struct StagedStream {
    pub(super) base_version: u64,
    pub(super) any_only: bool,
    pub(super) events: Vec<RecordedEvent>,
}

impl MemoryUnitOfWork {
    /// Checks an append against the store and what this unit of work staged, then stages it.
    pub(super) async fn stage_append(
        &mut self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        let mut events = events;
        ready_to_append(stream_id, &mut events, &self.store.source)?;
        self.lock_writer().await;
        let state = self.store.lock();
        let (base_version, staged_count) = match self.staged(stream_id) {
            Some(staged) => (staged.base_version, staged.events.len() as u64),
            None => (state.version(stream_id), 0),
        };
        let current = base_version + staged_count;
        if !expected.matches(current) {
            return Err(StoreError::VersionConflict {
                stream_id: stream_id.clone(),
                expected,
                actual: Some(current),
            });
        }
        let mut seen = HashSet::new();
        for event in &events {
            let staged_dup = self
                .streams
                .iter()
                .any(|(_, s)| s.events.iter().any(|e| e.event_id == event.event_id));
            if state.event_ids.contains(&event.event_id)
                || staged_dup
                || !seen.insert(event.event_id)
            {
                return Err(StoreError::DuplicateEventId {
                    stream_id: stream_id.clone(),
                    event_id: event.event_id,
                });
            }
        }
        drop(state);
        let outbox = append_messages(
            self.store.routing.as_deref(),
            stream_id,
            current + 1,
            &events,
        );
        let count = events.len() as u64;
        let first = self
            .store
            .inner
            .next_position
            .fetch_add(count, Ordering::SeqCst);
        let recorded: Vec<_> = events
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                e.into_recorded(stream_id.clone(), current + 1 + i as u64, first + i as u64)
            })
            .collect();
        let positions = recorded.iter().map(|e| e.global_position).collect();
        self.outbox.extend(outbox);
        let any = expected == ExpectedVersion::Any;
        match self.streams.iter_mut().find(|(s, _)| s == stream_id) {
            Some((_, staged)) => {
                staged.any_only &= any;
                staged.events.extend(recorded);
            }
            None => self.streams.push((
                stream_id.clone(),
                StagedStream {
                    base_version,
                    any_only: any,
                    events: recorded,
                },
            )),
        }
        Ok(AppendResult {
            previous_version: current,
            version: current + count,
            positions,
        })
    }
}
