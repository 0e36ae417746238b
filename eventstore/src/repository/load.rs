//! Loading an aggregate: from the latest usable snapshot and the events after it, read page by
//! page from the store (committed data) or from a unit of work.

use eventfold_core::{Aggregate, CommandMetadata, RecordedEvent, StreamId, decode_event};

use super::retry::conflict_or_store;
use super::{Executed, Loaded, Repository, apply_all};
use crate::error::{ExecuteError, ExpectedVersion, StoreError};
use crate::store::{EventStore, Snapshot, UnitOfWork};

/// Events read per query while loading a stream.
const PAGE: u64 = 1000;

/// Where a load reads from, and a decided command appends to: the store (committed data) or a
/// unit of work.
pub(super) enum Source<'a, S: EventStore> {
    Store(&'a S),
    Uow(&'a mut S::UnitOfWork),
}

impl<S: EventStore> Source<'_, S> {
    async fn snapshot(&mut self, stream_id: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        match self {
            Source::Store(store) => store.load_snapshot(stream_id).await,
            Source::Uow(uow) => uow.load_snapshot(stream_id).await,
        }
    }

    async fn read(
        &mut self,
        stream_id: &StreamId,
        from_version: u64,
        max_count: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        match self {
            Source::Store(store) => store.read_stream(stream_id, from_version, max_count).await,
            Source::Uow(uow) => uow.read_stream(stream_id, from_version, max_count).await,
        }
    }
}

impl<A: Aggregate, S: EventStore> Repository<A, S> {
    /// Loads the state (from the state cache when it holds the stream, else from `source`),
    /// handles the command, and appends the events it decided through `source` expecting the
    /// version it was loaded at (nothing when it decided none), applied to the state: the
    /// version before the command, and what it executed.
    pub(super) async fn decide_and_append(
        &self,
        source: &mut Source<'_, S>,
        stream_id: &StreamId,
        command: &A::Command,
        meta: &CommandMetadata,
    ) -> Result<(u64, Executed<A>), ExecuteError<A::Error>> {
        let cached = self.cache.as_ref().and_then(|cache| cache.get(stream_id));
        let Loaded { state, version } = match cached {
            Some(loaded) => loaded,
            None => self.load_from(source, stream_id, None).await?,
        };
        let events = state
            .handle(command)
            .map_err(|source| ExecuteError::Rejected {
                stream_id: stream_id.clone(),
                source,
            })?;
        let mut executed = Executed {
            stream_id: stream_id.clone(),
            version,
            events: Vec::new(),
            state,
            deduplicated: false,
        };
        if events.is_empty() {
            return Ok((version, executed));
        }
        let encoded = self.encode(stream_id, &events, meta)?;
        let expected = ExpectedVersion::Exact(version);
        let appended = match source {
            Source::Store(store) => store.append(stream_id, expected, encoded.clone()).await,
            Source::Uow(uow) => uow.append(stream_id, expected, encoded.clone()).await,
        }
        .map_err(|e| conflict_or_store(stream_id, e))?;
        executed.events = apply_all(
            &mut executed.state,
            stream_id,
            version,
            events,
            encoded,
            appended.positions,
        );
        executed.version = appended.version;
        Ok((version, executed))
    }

    /// Loads the state from the latest usable snapshot and the events after it, up to
    /// `up_to` (inclusive) when given.
    pub(super) async fn load_from(
        &self,
        source: &mut Source<'_, S>,
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
