//! Loading an aggregate: from the latest usable snapshot and the events after it, read page by
//! page from the store (committed data) or from a unit of work.

use std::future::Future;

use eventfold_core::{Aggregate, RecordedEvent, StreamId, decode_event};

use super::{Loaded, Repository};
use crate::error::{ExecuteError, StoreError};
use crate::store::{EventStore, Snapshot, UnitOfWork};

/// Events read per query while loading a stream.
const PAGE: u64 = 1000;

/// Where a load reads from: the store (committed data) or a unit of work.
pub(super) trait Source: Send {
    fn snapshot(
        &mut self,
        stream_id: &StreamId,
    ) -> impl Future<Output = Result<Option<Snapshot>, StoreError>> + Send;
    fn read(
        &mut self,
        stream_id: &StreamId,
        from_version: u64,
        max_count: u64,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;
}

pub(super) struct FromStore<'a, S>(pub(super) &'a S);

impl<S: EventStore> Source for FromStore<'_, S> {
    fn snapshot(
        &mut self,
        stream_id: &StreamId,
    ) -> impl Future<Output = Result<Option<Snapshot>, StoreError>> + Send {
        self.0.load_snapshot(stream_id)
    }
    fn read(
        &mut self,
        stream_id: &StreamId,
        from_version: u64,
        max_count: u64,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send {
        self.0.read_stream(stream_id, from_version, max_count)
    }
}

pub(super) struct FromUow<'a, U>(pub(super) &'a mut U);

impl<U: UnitOfWork> Source for FromUow<'_, U> {
    fn snapshot(
        &mut self,
        stream_id: &StreamId,
    ) -> impl Future<Output = Result<Option<Snapshot>, StoreError>> + Send {
        self.0.load_snapshot(stream_id)
    }
    fn read(
        &mut self,
        stream_id: &StreamId,
        from_version: u64,
        max_count: u64,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send {
        self.0.read_stream(stream_id, from_version, max_count)
    }
}

impl<A: Aggregate, S: EventStore> Repository<A, S> {
    /// Loads the state (from the state cache when it holds the stream, else from `source`) and
    /// handles the command: the loaded state and the events the command decided.
    pub(super) async fn decide(
        &self,
        source: &mut impl Source,
        stream_id: &StreamId,
        command: &A::Command,
    ) -> Result<(Loaded<A>, Vec<A::Event>), ExecuteError<A::Error>> {
        let cached = self.cache.as_ref().and_then(|cache| cache.get(stream_id));
        let loaded = match cached {
            Some(loaded) => loaded,
            None => self.load_from(source, stream_id, None).await?,
        };
        let events = loaded
            .state
            .handle(command)
            .map_err(|source| ExecuteError::Rejected {
                stream_id: stream_id.clone(),
                source,
            })?;
        Ok((loaded, events))
    }

    /// Loads the state from the latest usable snapshot and the events after it, up to
    /// `up_to` (inclusive) when given.
    pub(super) async fn load_from(
        &self,
        source: &mut impl Source,
        stream_id: &StreamId,
        up_to: Option<u64>,
    ) -> Result<Loaded<A>, StoreError> {
        let mut state = A::default();
        let mut version = 0;
        if let Some(policy) = &self.snapshots {
            if let Some(snapshot) = source.snapshot(stream_id).await? {
                let usable = snapshot.snapshot_version == A::SNAPSHOT_VERSION
                    && up_to.is_none_or(|limit| snapshot.version <= limit);
                if usable {
                    match (policy.decode)(&snapshot.state) {
                        Ok(restored) => {
                            state = restored;
                            version = snapshot.version;
                        }
                        Err(e) => tracing::warn!(
                            stream = %stream_id,
                            version = snapshot.version,
                            error = %e,
                            "snapshot does not decode, replaying the stream instead"
                        ),
                    }
                }
            }
        }
        loop {
            let want = up_to.map_or(PAGE, |limit| PAGE.min(limit.saturating_sub(version)));
            if want == 0 {
                break;
            }
            let page = source.read(stream_id, version + 1, want).await?;
            let got = page.len() as u64;
            for recorded in page {
                if recorded.stream_version != version + 1 {
                    return Err(StoreError::Corrupt {
                        table: "events".to_owned(),
                        reason: format!(
                            "stream {stream_id} jumps from version {version} to {} (event {})",
                            recorded.stream_version, recorded.event_id
                        ),
                    });
                }
                version = recorded.stream_version;
                let envelope = decode_event::<A::Event>(recorded, &self.upcasters)?;
                state.apply(&envelope.payload);
            }
            if got < want {
                break;
            }
        }
        Ok(Loaded { state, version })
    }
}
