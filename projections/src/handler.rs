//! Projections fed from broker topics (other services' events): a projection as a consumer
//! [`Handler`].
//!
//! [`ProjectionHandler`] decodes each record with `Record::decode` (upcasting like a stored
//! event) and applies it in the consumer's unit of work. The consumer's inbox mark commits in
//! that same transaction, so each message takes effect once; the broker offset is the
//! checkpoint. The projection is registered in the store like a log projection (its row, its
//! generation 1 tables and views), so `projections status` lists it; its stored checkpoint does
//! not move (the broker keeps it) and it cannot be rebuilt from the log.

use std::str::FromStr;

use eventfold_core::{BoxError, Envelope, Event, StreamId, Upcasters};
use eventfold_eventstore::{ProjectionStore, UnitOfWork};
use eventfold_outbox::{Handler, Record, headers};

use crate::engine::Ctx;
use crate::error::ProjectionError;
use crate::options::ProjectionOptions;
use crate::projection::{Projection, Tables, Wrapped};

/// A projection applied to broker records. See the [module docs](self).
pub struct ProjectionHandler<P> {
    projection: P,
    tables: Tables,
    types: Vec<String>,
    upcasters: Upcasters,
}

impl<P> ProjectionHandler<P> {
    /// Registers `projection` in `store` (creating its tables on first use) and wraps it.
    pub async fn new<S>(store: &S, projection: P) -> Result<Self, ProjectionError>
    where
        S: ProjectionStore,
        P: Projection<S::UnitOfWork>,
    {
        Self::with_upcasters(store, projection, Upcasters::new()).await
    }

    /// Like [`ProjectionHandler::new`], decoding with `upcasters`.
    pub async fn with_upcasters<S>(
        store: &S,
        projection: P,
        upcasters: Upcasters,
    ) -> Result<Self, ProjectionError>
    where
        S: ProjectionStore,
        P: Projection<S::UnitOfWork>,
    {
        let types = projection.event_types();
        let wrapped = std::sync::Arc::new(Wrapped::new::<S::UnitOfWork>(projection));
        let ctx = Ctx::new(
            store.clone(),
            wrapped.clone(),
            std::sync::Arc::new(upcasters.clone()),
            ProjectionOptions::default(),
        );
        let state = ctx.ensure().await?;
        drop(ctx);
        let projection = match std::sync::Arc::try_unwrap(wrapped) {
            Ok(wrapped) => wrapped.projection,
            Err(_) => {
                return Err(ProjectionError::NotRunning {
                    projection: state.name,
                    reason: "the projection is still shared".to_owned(),
                });
            }
        };
        Ok(Self {
            projection,
            tables: Tables::new(store.projection_schema(), state.generation),
            types,
            upcasters,
        })
    }

    /// The tables it writes.
    pub fn tables(&self) -> &Tables {
        &self.tables
    }
}

/// The envelope of a record: metadata from its CloudEvents headers.
fn envelope<E>(record: &Record, event: E, schema_version: u32) -> Result<Envelope<E>, BoxError> {
    let h = |name: &str| record.headers.get(name);
    let stream_type = h(headers::STREAM_TYPE)
        .cloned()
        .unwrap_or_else(|| record.topic.replace(['.', '/'], "_"));
    Ok(Envelope {
        event_id: record.message_id,
        event_type: h(headers::TYPE)
            .cloned()
            .unwrap_or_else(|| record.message_type.clone()),
        schema_version,
        stream_id: StreamId::new(stream_type, record.key.clone())?,
        stream_version: h(headers::STREAM_VERSION)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        global_position: record.offset,
        timestamp: h(headers::TIME)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map_or(record.timestamp, |t| t.with_timezone(&chrono::Utc)),
        source: h(headers::SOURCE).cloned().unwrap_or_default(),
        correlation_id: h(headers::CORRELATION_ID)
            .and_then(|v| uuid::Uuid::from_str(v).ok())
            .unwrap_or(record.message_id),
        causation_id: h(headers::CAUSATION_ID).and_then(|v| uuid::Uuid::from_str(v).ok()),
        tenant_id: h(headers::TENANT_ID).cloned(),
        headers: record.headers.clone(),
        payload: event,
    })
}

impl<U: UnitOfWork, P: Projection<U>> Handler<U> for ProjectionHandler<P> {
    async fn handle(&self, uow: &mut U, record: &Record) -> Result<(), BoxError> {
        let event_type = record
            .headers
            .get(headers::TYPE)
            .unwrap_or(&record.message_type);
        let event: P::Event = match record.decode(&self.upcasters) {
            Ok(event) => event,
            // Not a type of this projection: nothing to do (the inbox still marks it).
            Err(_) if !self.types.contains(event_type) => return Ok(()),
            Err(e) => return Err(Box::new(e)),
        };
        if !self.types.iter().any(|t| t == event.event_type()) {
            return Ok(());
        }
        let version = event.schema_version();
        let envelope = envelope(record, event, version)?;
        self.projection.apply(uow, &self.tables, &envelope).await
    }
}
