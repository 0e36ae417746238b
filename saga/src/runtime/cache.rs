//! The orchestrator's state cache (ADR 0029): the decoded history of the instances this process
//! moved last, so that the next transition of such an instance skips the read of its stream.
//!
//! An entry is used only when the instance's row, **locked** by the transition, names the same
//! committed state: the same stream version *and* the same last event id
//! ([`SagaRecord::last_event_id`](eventfold_eventstore::SagaRecord::last_event_id)). The version
//! alone would not do: an entry is stored when a transition has been written, before its unit of
//! work commits (the caller's, for a reply or a start), so it may describe a transition that was
//! rolled back, and another transition may then commit the same version with other events. Event
//! ids are new on every attempt, so the id of a rolled-back transition never appears in a row;
//! under the lock, no other transaction can change the row before this one ends.
//!
//! An entry is taken out while a transition runs and put back after it (with the events it
//! wrote), so a failed transition leaves none behind. Terminal instances are forgotten. The
//! cache holds at most `capacity` instances and [`MAX_BYTES`] of event payloads (an entry weighs
//! its payloads plus [`EVENT_OVERHEAD`] per event), and evicts the ones stored longest ago; a
//! history heavier than a quarter of the budget is not kept at all.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::event::SagaEvent;

/// A decoded history: each event with its time and id, oldest first.
pub(crate) type History = Vec<(SagaEvent, DateTime<Utc>, Uuid)>;

/// The most bytes of event payloads a cache holds (64 MiB).
pub(crate) const MAX_BYTES: usize = 64 << 20;

/// What an event weighs beyond its payload (the decoded event, its time and id, the vector).
pub(crate) const EVENT_OVERHEAD: usize = 256;

/// The instances an orchestrator moved last. See the [module docs](self).
pub(crate) struct StateCache {
    capacity: usize,
    max_bytes: usize,
    inner: Mutex<Entries>,
}

/// One cached instance.
struct Entry {
    /// When it was stored (a sequence number).
    seq: u64,
    version: u64,
    last_event_id: Uuid,
    history: History,
    /// The bytes of its events' payloads.
    payload_bytes: usize,
}

/// What a history weighs: its payload bytes plus [`EVENT_OVERHEAD`] per event.
fn weight_of(events: usize, payload_bytes: usize) -> usize {
    events
        .saturating_mul(EVENT_OVERHEAD)
        .saturating_add(payload_bytes)
}

impl Entry {
    fn weight(&self) -> usize {
        weight_of(self.history.len(), self.payload_bytes)
    }
}

#[derive(Default)]
struct Entries {
    by_saga: HashMap<Uuid, Entry>,
    /// The weight of all entries.
    weight: usize,
    /// Instances in the order they were stored; an instance stored again is in it again, and
    /// only the position with its current sequence number counts.
    order: VecDeque<(Uuid, u64)>,
    next: u64,
}

impl StateCache {
    /// A cache of at most `capacity` instances (0: none is kept).
    pub(crate) fn new(capacity: usize) -> Self {
        Self::with_max_bytes(capacity, MAX_BYTES)
    }

    /// A cache of at most `capacity` instances weighing at most `max_bytes`.
    fn with_max_bytes(capacity: usize, max_bytes: usize) -> Self {
        Self {
            capacity,
            max_bytes,
            inner: Mutex::new(Entries::default()),
        }
    }

    /// How many instances it keeps at most.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Takes out the history of `saga_id`, with the bytes of its payloads, if it is the
    /// committed state the locked row names: `version` and `last_event_id`. A stale entry is
    /// dropped.
    pub(crate) fn take(
        &self,
        saga_id: Uuid,
        version: u64,
        last_event_id: Option<Uuid>,
    ) -> Option<(History, usize)> {
        if self.capacity == 0 {
            return None;
        }
        let last_event_id = last_event_id?;
        let mut entries = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.by_saga.remove(&saga_id)?;
        entries.weight -= entry.weight();
        (entry.version == version && entry.last_event_id == last_event_id)
            .then_some((entry.history, entry.payload_bytes))
    }

    /// Stores the history of `saga_id` after a transition wrote it (`history` ends with the
    /// event `last_event_id` at `version`; its payloads weigh `payload_bytes`).
    pub(crate) fn put(
        &self,
        saga_id: Uuid,
        version: u64,
        last_event_id: Uuid,
        history: History,
        payload_bytes: usize,
    ) {
        let weight = weight_of(history.len(), payload_bytes);
        let mut entries = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = entries.by_saga.remove(&saga_id) {
            entries.weight -= old.weight();
        }
        if self.capacity == 0 || weight > self.max_bytes / 4 {
            return;
        }
        let seq = entries.next;
        entries.next += 1;
        entries.weight += weight;
        entries.by_saga.insert(
            saga_id,
            Entry {
                seq,
                version,
                last_event_id,
                history,
                payload_bytes,
            },
        );
        entries.order.push_back((saga_id, seq));
        while entries.by_saga.len() > self.capacity || entries.weight > self.max_bytes {
            let Some((oldest, seq)) = entries.order.pop_front() else {
                break;
            };
            if entries.by_saga.get(&oldest).is_some_and(|e| e.seq == seq) {
                if let Some(evicted) = entries.by_saga.remove(&oldest) {
                    entries.weight -= evicted.weight();
                }
            }
        }
        // Positions of instances taken out or stored again since: dropped when they pile up.
        if entries.order.len() > self.capacity.saturating_mul(2).max(64) {
            let Entries { by_saga, order, .. } = &mut *entries;
            order.retain(|(id, seq)| by_saga.get(id).is_some_and(|e| e.seq == *seq));
        }
    }

    /// How many instances it holds.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_saga
            .len()
    }

    /// What its entries weigh.
    #[cfg(test)]
    fn weight(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).weight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(n: usize) -> (History, Uuid) {
        let id = Uuid::now_v7();
        let events = (0..n)
            .map(|_| (SagaEvent::Completed, Utc::now(), Uuid::now_v7()))
            .chain(std::iter::once((SagaEvent::Completed, Utc::now(), id)))
            .collect();
        (events, id)
    }

    #[test]
    fn an_entry_is_used_only_for_its_version_and_last_event() {
        let cache = StateCache::new(8);
        let saga = Uuid::now_v7();
        let (h, last) = history(2);
        cache.put(saga, 3, last, h.clone(), 10);
        assert_eq!(cache.take(saga, 3, Some(last)), Some((h.clone(), 10)));
        assert_eq!(cache.take(saga, 3, Some(last)), None, "taken out");

        cache.put(saga, 3, last, h.clone(), 10);
        assert_eq!(
            cache.take(saga, 3, Some(Uuid::now_v7())),
            None,
            "the same version with another last event: another state"
        );
        assert_eq!(cache.len(), 0, "a stale entry is dropped");
        cache.put(saga, 3, last, h.clone(), 10);
        assert_eq!(cache.take(saga, 4, Some(last)), None, "another version");
        cache.put(saga, 3, last, h, 10);
        assert_eq!(
            cache.take(saga, 3, None),
            None,
            "a row without a last event id"
        );
    }

    #[test]
    fn it_keeps_at_most_its_capacity_and_evicts_the_oldest() {
        let cache = StateCache::new(4);
        let sagas: Vec<Uuid> = (0..6).map(|_| Uuid::now_v7()).collect();
        let (h, last) = history(0);
        for saga in &sagas {
            cache.put(*saga, 1, last, h.clone(), 10);
        }
        assert_eq!(cache.len(), 4);
        assert_eq!(cache.take(sagas[0], 1, Some(last)), None, "evicted");
        assert_eq!(cache.take(sagas[1], 1, Some(last)), None, "evicted");
        // Stored again, the second-oldest is now the newest.
        cache.put(sagas[2], 1, last, h.clone(), 10);
        cache.put(sagas[0], 1, last, h.clone(), 10);
        cache.put(sagas[1], 1, last, h.clone(), 10);
        assert_eq!(cache.len(), 4);
        assert!(
            cache.take(sagas[2], 1, Some(last)).is_some(),
            "stored again"
        );
        assert_eq!(cache.take(sagas[3], 1, Some(last)), None, "evicted");
        for _ in 0..1_000 {
            cache.put(sagas[5], 1, last, h.clone(), 10);
        }
        assert!(
            cache.inner.lock().expect("lock").order.len() <= 64,
            "stale positions do not pile up"
        );
        let off = StateCache::new(0);
        off.put(sagas[0], 1, last, h, 10);
        assert_eq!(
            off.take(sagas[0], 1, Some(last)),
            None,
            "capacity 0 keeps nothing"
        );
    }

    #[test]
    fn it_keeps_at_most_its_bytes() {
        // One event of 1,000 payload bytes weighs 1,256: four fit in 6,000 bytes, five do not.
        let cache = StateCache::with_max_bytes(100, 6_000);
        let sagas: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
        let (h, last) = history(0);
        for saga in &sagas {
            cache.put(*saga, 1, last, h.clone(), 1_000);
        }
        assert_eq!((cache.len(), cache.weight()), (4, 5_024));
        assert_eq!(cache.take(sagas[0], 1, Some(last)), None, "the oldest went");
        assert!(cache.take(sagas[4], 1, Some(last)).is_some());
        assert_eq!(
            cache.weight(),
            3_768,
            "taking an entry out takes its weight"
        );
        cache.put(sagas[2], 1, last, h.clone(), 1_000);
        assert_eq!(
            cache.weight(),
            3_768,
            "storing an instance again replaces its weight"
        );
        cache.put(sagas[1], 1, last, h, 1_300);
        assert_eq!(
            cache.take(sagas[1], 1, Some(last)),
            None,
            "a history over a quarter of the budget is not kept (nor its older entry)"
        );
        assert_eq!(cache.weight(), 2_512);
    }
}
