//! The in-memory outbox: its status and rows ([`OutboxStore`]), and the relay's side
//! ([`OutboxRelayStore`]).

use std::collections::HashSet;

use uuid::Uuid;

use super::store::MemoryStore;
use crate::error::StoreError;
use crate::outbox::{
    DeadLetter, OUTBOX_SLOTS, OutboxRelayStore, OutboxRouting, OutboxRow, OutboxStatus,
    OutboxStore, fair_share,
};

impl OutboxStore for MemoryStore {
    fn with_outbox(self, routing: OutboxRouting) -> Self {
        MemoryStore::with_outbox(self, routing)
    }

    async fn outbox_status(&self) -> Result<OutboxStatus, StoreError> {
        let state = self.lock();
        Ok(OutboxStatus {
            pending: state.outbox.len() as u64,
            oldest: state.outbox.first().map(|r| r.created_at),
            dead_letters: state.dead.len() as u64,
            floor_lag: None,
        })
    }

    async fn read_outbox(&self, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        Ok(self.lock().outbox.iter().take(limit).cloned().collect())
    }
}

impl OutboxRelayStore for MemoryStore {
    async fn lease_slots(
        &self,
        owner: Uuid,
        ttl: std::time::Duration,
    ) -> Result<Vec<u32>, StoreError> {
        let now = std::time::Instant::now();
        let mut state = self.lock();
        state
            .relays
            .retain(|_, seen| now.duration_since(*seen) < ttl);
        state.relays.insert(owner, now);
        let share = fair_share(state.relays.len() as u64);
        let mut mine: Vec<u32> = state
            .leases
            .iter()
            .filter(|(_, (o, expires))| *o == owner && *expires > now)
            .map(|(slot, _)| *slot)
            .collect();
        mine.sort_unstable();
        while mine.len() > share {
            if let Some(slot) = mine.pop() {
                state.leases.remove(&slot);
            }
        }
        for slot in 0..OUTBOX_SLOTS {
            if mine.len() >= share {
                break;
            }
            let free = state
                .leases
                .get(&slot)
                .is_none_or(|(_, expires)| *expires <= now);
            if free {
                mine.push(slot);
            }
        }
        for slot in &mine {
            state.leases.insert(*slot, (owner, now + ttl));
        }
        mine.sort_unstable();
        Ok(mine)
    }

    async fn release_slots(&self, owner: Uuid) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.leases.retain(|_, (o, _)| *o != owner);
        state.relays.remove(&owner);
        Ok(())
    }

    async fn claim_outbox(
        &self,
        slots: &[u32],
        limit: usize,
        in_flight: &[&str],
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let now = eventfold_core::metadata::now_micros();
        let state = self.lock();
        // As in the SQL backends: keys that are in flight, parked or waiting for a retry are
        // left out of the window, so they cannot starve the others; then the first row of
        // each key.
        let blocked: HashSet<&str> = in_flight
            .iter()
            .copied()
            .chain(state.dead.iter().map(|d| d.row.message.key.as_str()))
            .chain(
                state
                    .outbox
                    .iter()
                    .filter(|r| r.next_attempt_at.is_some_and(|at| at > now))
                    .map(|r| r.message.key.as_str()),
            )
            .collect();
        let mut seen = HashSet::new();
        let claimed = state
            .outbox
            .iter()
            .filter(|r| slots.contains(&r.slot) && !blocked.contains(r.message.key.as_str()))
            .take(limit)
            .filter(|r| seen.insert(r.message.key.as_str()))
            .cloned()
            .collect();
        Ok(claimed)
    }

    async fn complete_outbox(&self, owner: Uuid, seqs: &[u64]) -> Result<u64, StoreError> {
        let now = std::time::Instant::now();
        let mut state = self.lock();
        let leased: HashSet<u32> = state
            .leases
            .iter()
            .filter(|(_, (o, expires))| *o == owner && *expires > now)
            .map(|(slot, _)| *slot)
            .collect();
        let before = state.outbox.len();
        state
            .outbox
            .retain(|r| !(seqs.contains(&r.seq) && leased.contains(&r.slot)));
        Ok((before - state.outbox.len()) as u64)
    }

    async fn fail_outbox(
        &self,
        seq: u64,
        error: &str,
        retry_after: std::time::Duration,
    ) -> Result<(), StoreError> {
        let retry_at = eventfold_core::metadata::now_micros()
            + chrono::Duration::from_std(retry_after).unwrap_or(chrono::Duration::MAX);
        let mut state = self.lock();
        if let Some(row) = state.outbox.iter_mut().find(|r| r.seq == seq) {
            row.attempts += 1;
            row.last_error = Some(error.to_owned());
            row.next_attempt_at = Some(retry_at);
        }
        Ok(())
    }

    async fn park_outbox(&self, seq: u64, error: &str) -> Result<(), StoreError> {
        let mut state = self.lock();
        if let Some(index) = state.outbox.iter().position(|r| r.seq == seq) {
            let mut row = state.outbox.remove(index);
            row.attempts += 1;
            row.last_error = Some(error.to_owned());
            state.dead.push(DeadLetter {
                row,
                error: error.to_owned(),
                parked_at: eventfold_core::metadata::now_micros(),
            });
            state.dead.sort_by_key(|d| d.row.seq);
        }
        Ok(())
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        Ok(self.lock().dead.iter().take(limit).cloned().collect())
    }

    async fn retry_dead_letter(&self, seq: u64) -> Result<bool, StoreError> {
        let mut state = self.lock();
        let Some(index) = state.dead.iter().position(|d| d.row.seq == seq) else {
            return Ok(false);
        };
        let mut row = state.dead.remove(index).row;
        row.attempts = 0;
        row.last_error = None;
        row.next_attempt_at = None;
        let at = state.outbox.partition_point(|r| r.seq < row.seq);
        state.outbox.insert(at, row);
        Ok(true)
    }

    async fn skip_dead_letter(&self, seq: u64) -> Result<bool, StoreError> {
        let mut state = self.lock();
        let before = state.dead.len();
        state.dead.retain(|d| d.row.seq != seq);
        Ok(state.dead.len() < before)
    }
}
