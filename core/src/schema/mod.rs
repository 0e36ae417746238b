//! Event schemas as contracts: a committed snapshot of the schema of every event type and version
//! an application defines, and a check that refuses a change which would stop stored events from
//! being read.
//!
//! The rules are those of event-driven systems: **fields may be added with defaults, never
//! removed**. Against the snapshot, the check refuses
//!
//! * a removed or renamed field, a field whose type changed, a field added without a default, a
//!   field that lost its default;
//! * a removed event type, or a removed version, unless the [`Upcasters`] bring that version to
//!   one the code knows (then the snapshot keeps the old version, so it stays known);
//! * inside described types (`#[derive(PayloadSchema)]`): the same for their fields, and a removed
//!   enum variant.
//!
//! Adding an event type, a field with a default, a variant, or a new version with an upcaster from
//! the previous one is compatible. The check still fails until the snapshot records such a change
//! ([`SchemaCheckError::Unrecorded`]), so that the snapshot never falls behind the code; writing
//! it ([`EventSchemas::write_file`], or `schema write` on the command line) is the deliberate step.
//!
//! The schemas come from the code: `#[derive(Event)]` implements [`Event::schemas`], from the
//! fields as serde reads them (names after `rename`, `alias`, defaults from `#[serde(default)]`
//! and `Option`); Protobuf events are described from the `FileDescriptorSet` of their build
//! ([`EventSchemas::protobuf_descriptors`], feature `proto`).
//!
//! ```
//! use eventfold_core::schema::{EventSchema, EventSchemas, Field, Shape, Snapshot, TypeDefs};
//! use eventfold_core::{CodecError, Event, EventTypeInfo};
//!
//! # #[derive(Debug)] struct OrderPlaced;
//! // What `#[derive(Event)]` writes for `enum OrderEvent { Placed { customer: String } }`.
//! impl Event for OrderPlaced {
//!     const CONTENT_TYPE: &'static str = "application/json";
//!     fn event_type(&self) -> &'static str { "order.placed" }
//!     fn schema_version(&self) -> u32 { 1 }
//!     fn event_types() -> &'static [EventTypeInfo] {
//!         &[EventTypeInfo { name: "order.placed", version: 1, variant: "Placed" }]
//!     }
//!     fn encode(&self) -> Result<Vec<u8>, CodecError> { Ok(b"{}".to_vec()) }
//!     fn decode(_: &str, _: &[u8]) -> Result<Self, CodecError> { Ok(OrderPlaced) }
//!     fn schemas() -> Option<Vec<EventSchema>> {
//!         let fields = vec![Field::new("customer", "String")];
//!         Some(vec![EventSchema::new("order.placed", 1, "json", Shape::Fields(fields), TypeDefs::new())])
//!     }
//! }
//!
//! let schemas = EventSchemas::new().register::<OrderPlaced>();
//! let snapshot = schemas.snapshot(None)?;
//! assert_eq!(schemas.changes(&snapshot)?, vec![]);
//!
//! // A snapshot that recorded a `note` field which the code no longer has.
//! let mut recorded: Snapshot = serde_json::from_str(&snapshot.to_json())?;
//! let Shape::Fields(fields) = &mut recorded.events[0].shape else { unreachable!() };
//! fields.push(Field::new("note", "String"));
//! let changes = schemas.changes(&recorded)?;
//! assert!(changes[0].is_breaking());
//! assert!(changes[0].to_string().starts_with("`order.placed` version 1, field `note`: removed or renamed"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # The snapshot file
//!
//! Pretty JSON, sorted so that a diff shows exactly what changed: `{"format": 1, "events": [...]}`
//! with one entry per event type and version, sorted by type name then version:
//!
//! ```json
//! {
//!   "event_type": "order.placed",
//!   "version": 2,
//!   "codec": "json",
//!   "fields": [
//!     { "name": "customer", "type": "String" },
//!     { "name": "lines", "type": "Vec<Line>" },
//!     { "name": "note", "type": "Option<String>", "default": true }
//!   ],
//!   "types": {
//!     "Line": { "fields": [ { "name": "qty", "type": "u32" }, { "name": "sku", "type": "String" } ] }
//!   }
//! }
//! ```
//!
//! A payload that is a value rather than an object (a newtype variant) has `"payload": "Type"`
//! instead of `"fields"`; a described enum has `"variants": [{"name", ...}]`; a Protobuf event has
//! `"message": "shop.OrderPlaced"` and fields typed `[repeated |optional ]type = tag`. Fields are
//! sorted by name; `default` and `aliases` appear only when set. Types are normalised text: paths
//! reduced to their last segment, `Box`, `Arc` and `Rc` left out.

mod check;
mod model;
#[cfg(feature = "proto")]
mod proto;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub use check::{ChangeKind, SchemaChange};
pub use model::{
    EventSchema, FORMAT, Field, PayloadSchema, Shape, Snapshot, TypeDef, TypeDefs, Variant,
};

use crate::error::BoxError;
use crate::event::Event;
use crate::upcast::Upcasters;

/// The environment variable that makes [`EventSchemas::assert_compatible`] write the snapshot
/// instead of checking it: `EVENTFOLD_SCHEMAS=write cargo test`.
pub const WRITE_ENV: &str = "EVENTFOLD_SCHEMAS";

/// The event schemas of an application: the event enums it defines, the upcasters that read
/// their old versions and, for Protobuf events, the descriptors of their messages.
///
/// Build it once (a function of the application returns it) and use it from a test
/// ([`assert_compatible`](Self::assert_compatible)) and the command line (`schema check`,
/// `schema write`).
///
/// ```
/// # use eventfold_core::{Event, EventTypeInfo, CodecError, Upcasters};
/// # use eventfold_core::schema::EventSchemas;
/// # #[derive(Debug)] struct OrderEvent;
/// # impl Event for OrderEvent {
/// #     const CONTENT_TYPE: &'static str = "application/json";
/// #     fn event_type(&self) -> &'static str { "order.placed" }
/// #     fn schema_version(&self) -> u32 { 1 }
/// #     fn event_types() -> &'static [EventTypeInfo] { &[] }
/// #     fn encode(&self) -> Result<Vec<u8>, CodecError> { Ok(vec![]) }
/// #     fn decode(_: &str, _: &[u8]) -> Result<Self, CodecError> { Ok(OrderEvent) }
/// #     fn schemas() -> Option<Vec<eventfold_core::schema::EventSchema>> { Some(vec![]) }
/// # }
/// let upcasters = Upcasters::new();
/// let schemas = EventSchemas::new().register::<OrderEvent>().upcasters(&upcasters);
/// # let _ = schemas;
/// ```
#[derive(Debug, Clone, Default)]
pub struct EventSchemas {
    sets: Vec<Registered>,
    upcasters: Vec<Upcasters>,
    #[cfg(feature = "proto")]
    descriptors: proto::Descriptors,
}

#[derive(Debug, Clone)]
struct Registered {
    rust_type: &'static str,
    schemas: Option<Vec<EventSchema>>,
}

impl EventSchemas {
    /// No event enums.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the event types of `E` at their current versions.
    pub fn register<E: Event>(mut self) -> Self {
        self.sets.push(Registered {
            rust_type: std::any::type_name::<E>(),
            schemas: E::schemas(),
        });
        self
    }

    /// Adds upcasters: a version that left the code is still readable when they bring it to a
    /// version the code has. Several sets of upcasters may be added (one per repository).
    pub fn upcasters(mut self, upcasters: &Upcasters) -> Self {
        self.upcasters.push(upcasters.clone());
        self
    }

    /// Adds the messages of a `FileDescriptorSet` (the bytes prost-build writes with
    /// `file_descriptor_set_path`, or `protoc --descriptor_set_out`), from which the Protobuf
    /// events are described (feature `proto`).
    ///
    /// A Protobuf event's message is found by its full name when its type implements
    /// `prost::Name` (prost-build's `enable_type_names()`), else by the Rust type's name among the
    /// messages' names.
    #[cfg(feature = "proto")]
    pub fn protobuf_descriptors(mut self, file_descriptor_set: &[u8]) -> Result<Self, SchemaError> {
        self.descriptors
            .add(file_descriptor_set)
            .map_err(|source| SchemaError::Descriptors {
                source: Box::new(source),
            })?;
        Ok(self)
    }

    /// The schemas of the code: every registered event type at its current version, sorted.
    fn current(&self) -> Result<Vec<EventSchema>, SchemaError> {
        let mut by_type: BTreeMap<String, (EventSchema, &'static str)> = BTreeMap::new();
        for set in &self.sets {
            let schemas = set.schemas.as_ref().ok_or_else(|| SchemaError::NoSchema {
                rust_type: set.rust_type.to_owned(),
            })?;
            for schema in schemas {
                let schema = self.resolve(schema.clone())?;
                match by_type.get(&schema.event_type) {
                    Some((known, _)) if *known == schema => {}
                    Some((known, first)) => {
                        return Err(SchemaError::Conflict {
                            event_type: schema.event_type,
                            first: format!("{first} (version {})", known.version),
                            second: format!("{} (version {})", set.rust_type, schema.version),
                        });
                    }
                    None => {
                        let _ = by_type.insert(schema.event_type.clone(), (schema, set.rust_type));
                    }
                }
            }
        }
        Ok(by_type.into_values().map(|(schema, _)| schema).collect())
    }

    /// A schema as the snapshot keeps it: sorted, and a Protobuf payload described from its
    /// descriptor.
    fn resolve(&self, mut schema: EventSchema) -> Result<EventSchema, SchemaError> {
        if schema.codec == "protobuf" && matches!(schema.shape, Shape::Type(_)) {
            #[cfg(feature = "proto")]
            {
                if let Err(reason) = self.descriptors.describe(&mut schema) {
                    return Err(SchemaError::Protobuf {
                        event_type: schema.event_type,
                        version: schema.version,
                        reason,
                    });
                }
            }
            #[cfg(not(feature = "proto"))]
            return Err(SchemaError::Protobuf {
                event_type: schema.event_type,
                version: schema.version,
                reason: "eventfold was built without the `proto` feature".to_owned(),
            });
        }
        schema.shape = schema.shape.sorted();
        schema.types = schema.types.sorted();
        Ok(schema)
    }

    /// The snapshot of the code's schemas. With `previous` (the recorded snapshot), it also keeps
    /// those of its versions that the code no longer has but the upcasters still read, so they
    /// stay known: what [`write_file`](Self::write_file) writes.
    pub fn snapshot(&self, previous: Option<&Snapshot>) -> Result<Snapshot, SchemaError> {
        let mut events = self.current()?;
        if let Some(previous) = previous {
            let code = check::Code::new(&events);
            let kept: Vec<EventSchema> = previous
                .events
                .iter()
                .filter(|old| {
                    !events
                        .iter()
                        .any(|e| e.event_type == old.event_type && e.version == old.version)
                        && code
                            .reach(&old.event_type, old.version, &self.upcasters)
                            .is_ok()
                })
                .cloned()
                .collect();
            events.extend(kept);
        }
        Ok(Snapshot::new(events))
    }

    /// Every difference between `recorded` and the code, breaking
    /// ([`SchemaChange::is_breaking`]) or not, in the snapshot's order; empty when the snapshot
    /// is up to date.
    pub fn changes(&self, recorded: &Snapshot) -> Result<Vec<SchemaChange>, SchemaError> {
        let current = self.current()?;
        let code = check::Code::new(&current);
        Ok(check::changes(recorded, &code, &self.upcasters))
    }

    /// Compares the code with the snapshot at `path`: `Ok` when the snapshot records exactly the
    /// code's schemas (and the old versions the upcasters read);
    /// [`SchemaCheckError::Breaking`] with every breaking change when there is one;
    /// [`SchemaCheckError::Unrecorded`] when the changes are all compatible but not recorded yet.
    pub fn check_file(&self, path: impl AsRef<Path>) -> Result<(), SchemaCheckError> {
        let path = path.as_ref();
        let recorded = Snapshot::read(path)?;
        let changes = self.changes(&recorded)?;
        if changes.iter().any(SchemaChange::is_breaking) {
            Err(SchemaCheckError::Breaking {
                path: path.to_owned(),
                changes,
            })
        } else if changes.is_empty() {
            Ok(())
        } else {
            Err(SchemaCheckError::Unrecorded {
                path: path.to_owned(),
                changes,
            })
        }
    }

    /// Writes the snapshot to `path` on purpose: the code's schemas, and the old versions of the
    /// previous file that the upcasters still read. Accepts every change, breaking ones included,
    /// and returns them ([`Written::changes`]) so that the caller can show what it accepted. A
    /// previous file that cannot be read is an error (it may keep old versions): fix or delete it.
    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<Written, SchemaError> {
        let path = path.as_ref();
        let previous = match Snapshot::read(path) {
            Ok(previous) => Some(previous),
            Err(SchemaError::NoSnapshot { .. }) => None,
            Err(e) => return Err(e),
        };
        let snapshot = self.snapshot(previous.as_ref())?;
        let changes = match &previous {
            Some(previous) => self.changes(previous)?,
            None => Vec::new(),
        };
        let text = snapshot.to_json();
        let unchanged = previous.as_ref().is_some_and(|p| *p == snapshot);
        if !unchanged {
            std::fs::write(path, text).map_err(|source| SchemaError::Write {
                path: path.to_owned(),
                source,
            })?;
        }
        Ok(Written {
            path: path.to_owned(),
            schemas: snapshot.events.len(),
            created: previous.is_none(),
            unchanged,
            changes,
        })
    }

    /// The one-line test of an application's event contracts: checks the code against the
    /// snapshot at `path` and panics with a readable report when they differ. With
    /// `EVENTFOLD_SCHEMAS=write` in the environment ([`WRITE_ENV`]) it writes the snapshot
    /// instead (on purpose: breaking changes included) and prints what changed.
    ///
    /// ```no_run
    /// # use eventfold_core::schema::EventSchemas;
    /// # fn schemas() -> EventSchemas { EventSchemas::new() }
    /// #[test]
    /// fn event_schemas_are_compatible() {
    ///     schemas().assert_compatible(concat!(env!("CARGO_MANIFEST_DIR"), "/event-schemas.json"));
    /// }
    /// ```
    ///
    /// # Panics
    ///
    /// When the check fails, or the snapshot cannot be written: it is meant for tests.
    #[track_caller]
    pub fn assert_compatible(&self, path: impl AsRef<Path>) {
        let path = path.as_ref();
        if std::env::var(WRITE_ENV).is_ok_and(|v| v == "write") {
            match self.write_file(path) {
                Ok(written) => eprintln!("{written}"),
                Err(e) => panic!("{WRITE_ENV}=write: {e}"),
            }
            return;
        }
        if let Err(e) = self.check_file(path) {
            panic!("{e}\n(to record the code's schemas on purpose: {WRITE_ENV}=write cargo test)");
        }
    }
}

impl Snapshot {
    /// Reads a snapshot file.
    pub fn read(path: impl AsRef<Path>) -> Result<Snapshot, SchemaError> {
        let path = path.as_ref();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SchemaError::NoSnapshot {
                    path: path.to_owned(),
                });
            }
            Err(source) => {
                return Err(SchemaError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        #[derive(serde::Deserialize)]
        struct Header {
            format: u32,
        }
        let header: Header = serde_json::from_str(&text).map_err(|source| SchemaError::Parse {
            path: path.to_owned(),
            source,
        })?;
        if header.format != FORMAT {
            return Err(SchemaError::Format {
                path: path.to_owned(),
                found: header.format,
            });
        }
        serde_json::from_str(&text).map_err(|source| SchemaError::Parse {
            path: path.to_owned(),
            source,
        })
    }
}

/// What [`EventSchemas::write_file`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Written {
    /// The file.
    pub path: PathBuf,
    /// How many event types and versions it holds.
    pub schemas: usize,
    /// Whether there was no file before.
    pub created: bool,
    /// Whether the file already held this snapshot (it was not rewritten).
    pub unchanged: bool,
    /// The changes against the previous file (breaking ones included), now recorded.
    pub changes: Vec<SchemaChange>,
}

impl std::fmt::Display for Written {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = self.path.display();
        let schemas = self.schemas;
        if self.created {
            return write!(f, "wrote {path}: {schemas} event schema(s)");
        }
        if self.unchanged {
            return write!(f, "{path} is up to date: {schemas} event schema(s)");
        }
        write!(f, "wrote {path}: {schemas} event schema(s)")?;
        let breaking = self.changes.iter().filter(|c| c.is_breaking()).count();
        if breaking > 0 {
            write!(f, "; accepted {breaking} BREAKING change(s)")?;
        }
        write!(f, "; recorded:{}", list(&self.changes))
    }
}

/// The code's schemas cannot be known, or the snapshot cannot be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// A registered event enum does not describe its schemas (a hand-written `impl Event`).
    #[error(
        "`{rust_type}` does not describe its event schemas (a hand-written `impl Event` without \
         `schemas()`): derive `Event`, or implement `Event::schemas`"
    )]
    NoSchema {
        /// The enum.
        rust_type: String,
    },
    /// Two registered enums define the same event type differently.
    #[error(
        "event type `{event_type}` is defined differently by {first} and {second}: register one \
         of them, or make them agree"
    )]
    Conflict {
        /// The type.
        event_type: String,
        /// The first enum and its version.
        first: String,
        /// The other one.
        second: String,
    },
    /// A Protobuf event could not be described from the descriptors.
    #[error("`{event_type}` version {version} (protobuf): {reason}")]
    Protobuf {
        /// The type.
        event_type: String,
        /// Its version.
        version: u32,
        /// Why.
        reason: String,
    },
    /// The bytes given as a `FileDescriptorSet` are not one.
    #[error("the protobuf descriptors are not a FileDescriptorSet: {source}")]
    Descriptors {
        /// The decoding error.
        source: BoxError,
    },
    /// There is no snapshot file.
    #[error(
        "no event schema snapshot at {}: create it with `schema write` (or \
         `EVENTFOLD_SCHEMAS=write cargo test`) and commit it",
        path.display()
    )]
    NoSnapshot {
        /// The path.
        path: PathBuf,
    },
    /// The snapshot file could not be read.
    #[error("reading the event schema snapshot {}: {source}", path.display())]
    Read {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The snapshot file is not a snapshot.
    #[error("the event schema snapshot {} is not valid: {source}", path.display())]
    Parse {
        /// The path.
        path: PathBuf,
        /// The error.
        source: serde_json::Error,
    },
    /// The snapshot file has another format.
    #[error(
        "the event schema snapshot {} has format {found}; this version of eventfold reads format {FORMAT}",
        path.display()
    )]
    Format {
        /// The path.
        path: PathBuf,
        /// The format it has.
        found: u32,
    },
    /// The snapshot file could not be written.
    #[error("writing the event schema snapshot {}: {source}", path.display())]
    Write {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The code does not match the snapshot.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaCheckError {
    /// The schemas or the snapshot could not be read.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// At least one change would stop stored events from being read. `changes` holds every
    /// change, the compatible ones too.
    #[error("{}", breaking_report(path, changes))]
    Breaking {
        /// The snapshot.
        path: PathBuf,
        /// Every change.
        changes: Vec<SchemaChange>,
    },
    /// Every change is compatible, but the snapshot does not record them yet.
    #[error(
        "{} does not record {} compatible change(s) of the event schemas:{}\nrecord them with \
         `schema write` (or `EVENTFOLD_SCHEMAS=write cargo test`) and commit the file",
        path.display(),
        changes.len(),
        list(changes)
    )]
    Unrecorded {
        /// The snapshot.
        path: PathBuf,
        /// The changes.
        changes: Vec<SchemaChange>,
    },
}

impl SchemaCheckError {
    /// The changes found (empty when the schemas or the snapshot could not be read).
    pub fn changes(&self) -> &[SchemaChange] {
        match self {
            SchemaCheckError::Breaking { changes, .. }
            | SchemaCheckError::Unrecorded { changes, .. } => changes,
            SchemaCheckError::Schema(_) => &[],
        }
    }
}

fn list(changes: &[SchemaChange]) -> String {
    let mut out = String::new();
    for change in changes {
        let _ = write!(out, "\n  - {change}");
    }
    out
}

fn breaking_report(path: &Path, changes: &[SchemaChange]) -> String {
    let (breaking, compatible): (Vec<SchemaChange>, Vec<SchemaChange>) =
        changes.iter().cloned().partition(SchemaChange::is_breaking);
    let mut out = format!(
        "{} breaking change(s) to the event schemas recorded in {}:{}\nstored events could no \
         longer be read. Fix the code; or, if no stored event is affected, accept the change on \
         purpose with `schema write` (or `EVENTFOLD_SCHEMAS=write cargo test`)",
        breaking.len(),
        path.display(),
        list(&breaking)
    );
    if !compatible.is_empty() {
        let _ = write!(
            out,
            "\nalso not recorded yet, compatible:{}",
            list(&compatible)
        );
    }
    out
}

/// Used by the code `#[derive(Event)]` and `#[derive(PayloadSchema)]` generate. Not a public API.
#[doc(hidden)]
pub mod __private {
    use std::marker::PhantomData;

    use super::{Field, PayloadSchema, Shape, TypeDefs};

    /// Asks a type whether it describes itself: `(&Probe::<T>::new()).define(types)` calls
    /// [`PayloadSchema::define`] when `T` implements it, and does nothing otherwise.
    pub struct Probe<T: ?Sized>(PhantomData<T>);

    impl<T: ?Sized> Probe<T> {
        #[allow(clippy::new_without_default)]
        pub fn new() -> Self {
            Probe(PhantomData)
        }
    }

    pub trait Described {
        fn define(&self, types: &mut TypeDefs);
    }

    impl<T: PayloadSchema + ?Sized> Described for Probe<T> {
        fn define(&self, types: &mut TypeDefs) {
            T::define(types);
        }
    }

    pub trait Opaque {
        fn define(&self, types: &mut TypeDefs);
    }

    impl<T: ?Sized> Opaque for &Probe<T> {
        fn define(&self, _: &mut TypeDefs) {}
    }

    /// The full name of a Protobuf message, when its type implements `prost::Name`.
    #[cfg(feature = "proto")]
    pub trait Named {
        fn message_name(&self) -> Option<String>;
    }

    #[cfg(feature = "proto")]
    impl<T: prost::Name> Named for Probe<T> {
        fn message_name(&self) -> Option<String> {
            Some(T::full_name())
        }
    }

    #[cfg(feature = "proto")]
    pub trait Unnamed {
        fn message_name(&self) -> Option<String>;
    }

    #[cfg(feature = "proto")]
    impl<T: ?Sized> Unnamed for &Probe<T> {
        fn message_name(&self) -> Option<String> {
            None
        }
    }

    /// A `#[serde(flatten)]` field of type `ty`: the fields of its definition, or one field
    /// standing for it when the type is not described.
    pub fn flatten(fields: &mut Vec<Field>, types: &TypeDefs, ty: &str) {
        match types.get(ty).map(|def| &def.shape) {
            Some(Shape::Fields(inner)) => fields.extend(inner.iter().cloned()),
            _ => fields.push(Field::new("(flattened)", ty)),
        }
    }
}
