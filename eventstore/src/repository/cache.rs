//! The repository's state cache: aggregate states kept in memory with their versions.

use std::collections::HashMap;
use std::sync::Mutex;

use eventfold_core::StreamId;

use super::Loaded;

/// A bounded cache of aggregate states with their versions. A stale entry is harmless: the
/// append expects the cached version, fails with a conflict, and the entry is dropped.
pub(super) struct StateCache<A> {
    capacity: usize,
    clone: fn(&A) -> A,
    entries: Mutex<HashMap<StreamId, (A, u64)>>,
}

impl<A> StateCache<A> {
    /// An empty cache of up to `capacity` states, copied with `clone`.
    pub(super) fn new(capacity: usize, clone: fn(&A) -> A) -> Self {
        Self {
            capacity,
            clone,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<StreamId, (A, u64)>> {
        // Entries are replaced whole, so a poisoned map is still consistent.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn get(&self, stream_id: &StreamId) -> Option<Loaded<A>> {
        self.lock().get(stream_id).map(|(state, version)| Loaded {
            state: (self.clone)(state),
            version: *version,
        })
    }

    pub(super) fn put(&self, stream_id: &StreamId, state: &A, version: u64) {
        let mut entries = self.lock();
        if entries.len() >= self.capacity && !entries.contains_key(stream_id) {
            // Evict an arbitrary entry (the map's iteration order is random).
            if let Some(victim) = entries.keys().next().cloned() {
                entries.remove(&victim);
            }
        }
        entries.insert(stream_id.clone(), ((self.clone)(state), version));
    }

    pub(super) fn evict(&self, stream_id: &StreamId) {
        self.lock().remove(stream_id);
    }
}
