//! The repository's retries: which errors are conflicts worth another attempt, and the pause
//! before it.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use eventfold_core::StreamId;

use crate::error::{ExecuteError, StoreError};

/// A version conflict becomes [`ExecuteError::Conflict`], anything else a store error.
pub(super) fn conflict_or_store<E: std::error::Error + 'static>(
    stream_id: &StreamId,
    e: StoreError,
) -> ExecuteError<E> {
    if e.is_conflict() {
        ExecuteError::Conflict {
            stream_id: stream_id.clone(),
            attempts: 1,
            source: e,
        }
    } else {
        ExecuteError::Store(e)
    }
}

/// A short random pause before retry `attempt` (1, 2, ...): up to 2^attempt ms, at most 100 ms.
pub(super) fn backoff(attempt: u32) -> Duration {
    let cap_ms = (1u64 << attempt.min(7)).min(100);
    let random = RandomState::new().build_hasher().finish();
    Duration::from_micros(random % (cap_ms * 1000 + 1))
}
