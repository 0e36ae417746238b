//! The repository's retries: which errors are worth another attempt, the pause before it, and
//! the metric that counts them.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use eventfold_core::StreamId;

use crate::error::{ExecuteError, StoreError, TransientKind};

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

/// The transient failure of a command that is worth a new attempt: every
/// [`StoreError::Transient`] except a lost connection of a command without an id (its append
/// may have committed before the connection dropped; a command with an id finds its record on
/// the next attempt and returns the first result).
pub(super) fn retriable_transient<E: std::error::Error + 'static>(
    e: &ExecuteError<E>,
    idempotent: bool,
) -> Option<TransientKind> {
    let ExecuteError::Store(store) = e else {
        return None;
    };
    match store.transient_kind()? {
        TransientKind::ConnectionLost if !idempotent => None,
        kind => Some(kind),
    }
}

/// Counts a retry of the repository in `eventfold_repository_retries_total{reason}`; `reason`
/// is `version_conflict` or a [`TransientKind::as_str`].
pub(super) fn count_retry(reason: &'static str) {
    metrics::counter!("eventfold_repository_retries_total", "reason" => reason).increment(1);
}

/// A short random pause before retry `attempt` (1, 2, ...) after a version conflict: up to
/// 2^attempt ms, at most 100 ms.
pub(super) fn backoff(attempt: u32) -> Duration {
    let cap_ms = (1u64 << attempt.min(7)).min(100);
    Duration::from_micros(random() % (cap_ms * 1000 + 1))
}

/// The pause before retry `attempt` (1, 2, ...) after a transient failure: exponential from
/// 10 ms, at most 1 s, half of it random (so that the two sides of a deadlock do not meet
/// again in step).
pub(super) fn transient_backoff(attempt: u32) -> Duration {
    let cap_us = (10_000u64 << attempt.saturating_sub(1).min(7)).min(1_000_000);
    Duration::from_micros(cap_us / 2 + random() % (cap_us / 2 + 1))
}

fn random() -> u64 {
    RandomState::new().build_hasher().finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_backoff_grows_and_is_bounded() {
        for attempt in 1..20 {
            let d = transient_backoff(attempt);
            let cap = (10_000u64 << (attempt - 1).min(7)).min(1_000_000);
            assert!(
                d >= Duration::from_micros(cap / 2),
                "attempt {attempt}: {d:?}"
            );
            assert!(d <= Duration::from_micros(cap), "attempt {attempt}: {d:?}");
        }
    }
}
