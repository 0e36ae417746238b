//! The repository's snapshots: the policy (every N events, as JSON), when one is due, and saving
//! one beside a committed append.

use eventfold_core::{Aggregate, BoxError, StreamId, metadata::now_micros};

use super::Repository;
use crate::error::StoreError;
use crate::store::{EventStore, Snapshot, UnitOfWork};

type EncodeState<A> = fn(&A) -> Result<Vec<u8>, BoxError>;
type DecodeState<A> = fn(&[u8]) -> Result<A, BoxError>;

/// When the repository saves a snapshot, and how it encodes and decodes the state.
pub(super) struct SnapshotPolicy<A> {
    pub(super) every: u64,
    pub(super) encode: EncodeState<A>,
    pub(super) decode: DecodeState<A>,
}

impl<A> Clone for SnapshotPolicy<A> {
    fn clone(&self) -> Self {
        Self {
            every: self.every,
            encode: self.encode,
            decode: self.decode,
        }
    }
}

impl<A: Aggregate, S: EventStore> Repository<A, S> {
    /// The snapshot to save when an append moved the stream from `before` to `after` across a
    /// multiple of the snapshot interval.
    pub(super) fn snapshot_due(
        &self,
        stream_id: &StreamId,
        state: &A,
        before: u64,
        after: u64,
    ) -> Result<Option<Snapshot>, StoreError> {
        let Some(policy) = &self.snapshots else {
            return Ok(None);
        };
        if after / policy.every <= before / policy.every {
            return Ok(None);
        }
        let bytes = (policy.encode)(state).map_err(|source| StoreError::Snapshot {
            stream_id: stream_id.clone(),
            version: after,
            source,
        })?;
        Ok(Some(Snapshot {
            stream_id: stream_id.clone(),
            version: after,
            snapshot_version: A::SNAPSHOT_VERSION,
            state: bytes,
            taken_at: now_micros(),
        }))
    }

    /// Saves a snapshot in a unit of work of its own (after a direct append committed).
    pub(super) async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        let mut uow = self.store.begin().await?;
        uow.save_snapshot(snapshot).await?;
        uow.commit().await
    }
}
