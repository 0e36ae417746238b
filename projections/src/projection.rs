//! The [`Projection`] trait, the [`Tables`] of a generation, and the type-erased form the
//! registry keeps.

use std::future::Future;

use eventfold_core::{BoxError, DecodeErrorKind, Envelope, Event, RecordedEvent, Upcasters};
use eventfold_eventstore::projection::{physical_table, qualified};
use eventfold_eventstore::store::BoxFuture;
use eventfold_eventstore::{LogEvent, LogFilter, UnitOfWork};

/// A read projection: folds events into tables of its own, inside the unit of work `U` that
/// also moves its checkpoint.
///
/// `U` is the store's unit of work: `PgUnitOfWork` and `SqliteUnitOfWork` hand out their `sqlx`
/// transaction (`uow.connection()`), so the projection's SQL commits together with the
/// checkpoint, and each event is applied exactly once.
///
/// Tables are declared by their **logical** name in [`Projection::tables`]; the physical tables
/// of a generation are `{table}__g{generation}` ([`Tables::table`]) and readers query a view
/// named after the logical table, which always points at the active generation. That is what
/// makes a blue/green rebuild invisible to readers.
pub trait Projection<U: UnitOfWork>: Send + Sync + 'static {
    /// The events it reads (decoded with the registry's upcasters).
    type Event: Event;

    /// A stable name (the key of its checkpoint).
    fn name(&self) -> &str;

    /// The version of this code. When it is higher than the version that built the stored
    /// model, the runner rebuilds the model blue/green (new tables, then an atomic switch).
    fn version(&self) -> u32 {
        1
    }

    /// Logical names of the tables it owns (lowercase ASCII, digits, `_`).
    fn tables(&self) -> Vec<String> {
        Vec::new()
    }

    /// The event types it wants (default: every type of [`Projection::Event`]).
    fn event_types(&self) -> Vec<String> {
        Self::Event::event_types()
            .iter()
            .map(|t| t.name.to_owned())
            .collect()
    }

    /// Creates the tables of one generation (`CREATE TABLE {tables.table("orders")} ...`).
    fn setup(
        &self,
        uow: &mut U,
        tables: &Tables,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = (uow, tables);
        async { Ok(()) }
    }

    /// Applies one event. An error rolls the batch back; the event is retried, then parked or
    /// the projection stops, per its [`ErrorPolicy`](crate::ErrorPolicy).
    fn apply(
        &self,
        uow: &mut U,
        tables: &Tables,
        event: &Envelope<Self::Event>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Applies the events of one batch (in log order, all in the batch's unit of work). The
    /// default calls [`Projection::apply`] for each; override it to write a batch at once, for
    /// example one multi-row upsert, which is what makes rebuilds fast.
    ///
    /// When it fails, the batch is rolled back and applied again event by event, to find the
    /// event at fault for the error policy (so `apply` must agree with `apply_batch`).
    fn apply_batch(
        &self,
        uow: &mut U,
        tables: &Tables,
        events: &[Envelope<Self::Event>],
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        async move {
            for event in events {
                self.apply(uow, tables, event).await?;
            }
            Ok(())
        }
    }
}

/// The physical tables of one generation of a projection.
///
/// ```
/// use eventfold_projections::Tables;
///
/// let tables = Tables::new(Some("shop".into()), 3);
/// assert_eq!(tables.table("orders"), "\"shop\".\"orders__g3\"");
/// assert_eq!(tables.view("orders"), "\"shop\".\"orders\"");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tables {
    schema: Option<String>,
    generation: u32,
}

impl Tables {
    /// The tables of `generation` in `schema` (PostgreSQL; `None` elsewhere).
    pub fn new(schema: Option<String>, generation: u32) -> Self {
        Self { schema, generation }
    }

    /// The generation.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The quoted, qualified physical name of logical table `name` in this generation.
    /// Use only names listed by [`Projection::tables`]: the others are not switched or dropped.
    pub fn table(&self, name: &str) -> String {
        qualified(
            self.schema.as_deref(),
            &physical_table(name, self.generation),
        )
    }

    /// The quoted, qualified name of the view readers query.
    pub fn view(&self, name: &str) -> String {
        qualified(self.schema.as_deref(), name)
    }
}

/// A projection without its types, as the registry keeps it.
pub(crate) trait ErasedProjection<U>: Send + Sync {
    fn name(&self) -> &str;
    fn version(&self) -> u32;
    fn tables(&self) -> &[String];
    fn event_types(&self) -> &[String];
    fn setup<'a>(
        &'a self,
        uow: &'a mut U,
        tables: &'a Tables,
    ) -> BoxFuture<'a, Result<(), BoxError>>;
    /// Decodes and applies; `Ok(false)` when the event is not for this projection.
    fn apply<'a>(
        &'a self,
        uow: &'a mut U,
        tables: &'a Tables,
        event: &'a RecordedEvent,
        upcasters: &'a Upcasters,
    ) -> BoxFuture<'a, Result<bool, BoxError>>;

    /// Decodes the events meant for this projection and applies them with one `apply_batch`.
    /// Returns how many were applied, or the index of an event that failed to decode, or
    /// `None` when the batch as a whole failed.
    fn apply_batch<'a>(
        &'a self,
        uow: &'a mut U,
        tables: &'a Tables,
        events: &'a [LogEvent],
        upcasters: &'a Upcasters,
    ) -> BoxFuture<'a, Result<u64, (Option<usize>, BoxError)>>;

    /// The log filter of this projection.
    fn filter(&self, upcasters: &Upcasters) -> LogFilter {
        if upcasters.is_empty() && !self.event_types().is_empty() {
            LogFilter::all().event_types(self.event_types().iter().cloned())
        } else {
            // Upcasters may rename types: read everything and let decoding decide.
            LogFilter::all()
        }
    }
}

pub(crate) struct Wrapped<P> {
    pub projection: P,
    name: String,
    version: u32,
    tables: Vec<String>,
    types: Vec<String>,
}

impl<P> Wrapped<P> {
    pub(crate) fn new<U: UnitOfWork>(projection: P) -> Self
    where
        P: Projection<U>,
    {
        Self {
            name: projection.name().to_owned(),
            version: projection.version(),
            tables: projection.tables(),
            types: projection.event_types(),
            projection,
        }
    }
}

/// Decodes `event` for `P`; `Ok(None)` when it is not one of `types`.
pub(crate) fn decode_for<E: Event>(
    event: &RecordedEvent,
    types: &[String],
    upcasters: &Upcasters,
) -> Result<Option<Envelope<E>>, BoxError> {
    match eventfold_core::decode_event_ref::<E>(event, upcasters) {
        Ok(envelope) if types.contains(&envelope.event_type) => Ok(Some(envelope)),
        Ok(_) => Ok(None),
        Err(e)
            if matches!(*e.kind, DecodeErrorKind::UnknownEventType { .. })
                && !types.contains(&event.event_type) =>
        {
            Ok(None)
        }
        Err(e) => Err(Box::new(e)),
    }
}

impl<U: UnitOfWork, P: Projection<U>> ErasedProjection<U> for Wrapped<P> {
    fn name(&self) -> &str {
        &self.name
    }

    fn version(&self) -> u32 {
        self.version
    }

    fn tables(&self) -> &[String] {
        &self.tables
    }

    fn event_types(&self) -> &[String] {
        &self.types
    }

    fn setup<'a>(
        &'a self,
        uow: &'a mut U,
        tables: &'a Tables,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(self.projection.setup(uow, tables))
    }

    fn apply<'a>(
        &'a self,
        uow: &'a mut U,
        tables: &'a Tables,
        event: &'a RecordedEvent,
        upcasters: &'a Upcasters,
    ) -> BoxFuture<'a, Result<bool, BoxError>> {
        Box::pin(async move {
            match decode_for::<P::Event>(event, &self.types, upcasters)? {
                Some(envelope) => {
                    self.projection.apply(uow, tables, &envelope).await?;
                    Ok(true)
                }
                None => Ok(false),
            }
        })
    }

    fn apply_batch<'a>(
        &'a self,
        uow: &'a mut U,
        tables: &'a Tables,
        events: &'a [LogEvent],
        upcasters: &'a Upcasters,
    ) -> BoxFuture<'a, Result<u64, (Option<usize>, BoxError)>> {
        Box::pin(async move {
            let mut decoded = Vec::with_capacity(events.len());
            for (index, event) in events.iter().enumerate() {
                match decode_for::<P::Event>(&event.event, &self.types, upcasters) {
                    Ok(Some(envelope)) => decoded.push(envelope),
                    Ok(None) => {}
                    Err(error) => return Err((Some(index), error)),
                }
            }
            if decoded.is_empty() {
                return Ok(0);
            }
            self.projection
                .apply_batch(uow, tables, &decoded)
                .await
                .map_err(|error| (None, error))?;
            Ok(decoded.len() as u64)
        })
    }
}
