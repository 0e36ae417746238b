//! The global log of the in-memory store: reading it, its head, and the wakeup on appends.

use super::store::MemoryStore;
use crate::log::{Checkpoint, LogBatch, LogEvent, LogFilter, LogHead};
use crate::store::LocalWakeup;

impl MemoryStore {
    /// The events after `after`, at most `max_count` of them looked at, those `filter` keeps.
    pub(super) fn log_batch(
        &self,
        after: Checkpoint,
        max_count: usize,
        filter: &LogFilter,
    ) -> LogBatch {
        let state = self.lock();
        let mut events = Vec::new();
        let mut checkpoint = after;
        let mut reached_end = true;
        for (position, event) in state.log.range(after.position() + 1..) {
            if events.len() >= max_count {
                reached_end = false;
                break;
            }
            checkpoint = Checkpoint::new(0, *position);
            if filter.matches(event) {
                events.push(LogEvent {
                    checkpoint,
                    event: event.clone(),
                });
            }
        }
        LogBatch {
            events,
            checkpoint,
            reached_end,
            held_back: false,
        }
    }

    /// The highest position in the log; every committed event is readable.
    pub(super) fn head(&self) -> LogHead {
        let position = self.lock().log.keys().next_back().copied().unwrap_or(0);
        LogHead {
            position,
            readable_position: position,
            blocked_by: None,
        }
    }

    /// A wakeup that fires when a unit of work commits appends or outbox messages.
    pub(super) fn subscribe(&self) -> LocalWakeup {
        LocalWakeup(self.inner.appended.subscribe())
    }
}
