//! Upcasters: old stored payloads are converted to the current schema when they are read.
//!
//! History is never rewritten. When an event type's payload changes incompatibly, its schema
//! version is bumped (`#[event(version = 2)]`) and an upcaster from version 1 is registered. An
//! upcaster is keyed by `(event_type, from_version)` and produces the next version (or a renamed
//! type); the chain runs until the payload reaches the version the code knows.
//!
//! ```
//! use eventfold_core::Upcasters;
//! use serde_json::json;
//!
//! // version 1 of `order.placed` had `total` in euros; version 2 has `total_cents`.
//! let upcasters = Upcasters::new().json("order.placed", 1, |mut v| {
//!     let euros = v["total"].as_u64().ok_or("total missing")?;
//!     v["total_cents"] = json!(euros * 100);
//!     Ok(v)
//! });
//! let step = upcasters
//!     .upcast_to("order.placed", 1, br#"{"total":3}"#.to_vec(), |_| Some(2))
//!     .unwrap();
//! assert_eq!(step.schema_version, 2);
//! assert_eq!(serde_json::from_slice::<serde_json::Value>(&step.payload).unwrap()["total_cents"], 300);
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::error::{BoxError, DecodeError, DecodeErrorKind};
use crate::event::Event;
use crate::metadata::{Envelope, RecordedEvent};

/// One payload on its way through the upcaster chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpcastStep {
    /// The type name (an upcaster may rename it).
    pub event_type: String,
    /// The schema version of `payload`.
    pub schema_version: u32,
    /// The encoded payload.
    pub payload: Vec<u8>,
}

type UpcastFn = dyn Fn(UpcastStep) -> Result<UpcastStep, BoxError> + Send + Sync;

/// One registered step, and where it leads when that is known without running it.
#[derive(Clone)]
struct Step {
    run: Arc<UpcastFn>,
    to: Option<(String, u32)>,
}

/// Where the step registered from an `(event_type, from_version)` leads, as far as is known
/// without running it ([`Upcasters::step_from`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StepTarget<'a> {
    /// A [`Upcasters::json`], [`Upcasters::bytes`] or [`Upcasters::rename`] step: to this type and
    /// version.
    Known {
        /// The type name the step produces.
        event_type: &'a str,
        /// The version the step produces.
        version: u32,
    },
    /// A general [`Upcasters::step`]: its result is known only when it runs.
    Unknown,
}

/// A chain of upcasters keyed by `(event_type, from_version)`. Cheap to clone.
#[derive(Clone, Default)]
pub struct Upcasters {
    steps: HashMap<(String, u32), Step>,
}

impl fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<_> = self.steps.keys().collect();
        keys.sort();
        f.debug_struct("Upcasters").field("steps", &keys).finish()
    }
}

/// Most steps a payload may take through the chain.
const MAX_STEPS: usize = 64;

impl Upcasters {
    /// No upcasters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Is the chain empty?
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Registers a general step from `(event_type, from_version)`. The step receives the payload
    /// and returns it at a later version, or under another type name.
    pub fn step(
        self,
        event_type: impl Into<String>,
        from_version: u32,
        f: impl Fn(UpcastStep) -> Result<UpcastStep, BoxError> + Send + Sync + 'static,
    ) -> Self {
        self.insert(event_type.into(), from_version, None, f)
    }

    fn insert(
        mut self,
        event_type: String,
        from_version: u32,
        to: Option<(String, u32)>,
        f: impl Fn(UpcastStep) -> Result<UpcastStep, BoxError> + Send + Sync + 'static,
    ) -> Self {
        let run: Arc<UpcastFn> = Arc::new(f);
        self.steps
            .insert((event_type, from_version), Step { run, to });
        self
    }

    /// Where the step registered from `(event_type, from_version)` leads, without running it;
    /// `None` when there is no such step. The schema check ([`crate::schema`]) follows these to
    /// tell whether a version that left the code can still be read.
    ///
    /// ```
    /// use eventfold_core::upcast::{StepTarget, Upcasters};
    ///
    /// let upcasters = Upcasters::new()
    ///     .json("order.placed", 1, Ok)
    ///     .rename("order.created", 1, "order.placed", 1);
    /// assert_eq!(
    ///     upcasters.step_from("order.placed", 1),
    ///     Some(StepTarget::Known { event_type: "order.placed", version: 2 })
    /// );
    /// assert_eq!(upcasters.step_from("order.placed", 2), None);
    /// ```
    pub fn step_from(&self, event_type: &str, from_version: u32) -> Option<StepTarget<'_>> {
        let step = self.steps.get(&(event_type.to_owned(), from_version))?;
        Some(match &step.to {
            Some((event_type, version)) => StepTarget::Known {
                event_type,
                version: *version,
            },
            None => StepTarget::Unknown,
        })
    }

    /// Registers a step on raw bytes from `from_version` to `from_version + 1`. A step from
    /// `u32::MAX` has no next version: running it is an [`DecodeErrorKind::UpcastLoop`].
    pub fn bytes(
        self,
        event_type: impl Into<String>,
        from_version: u32,
        f: impl Fn(Vec<u8>) -> Result<Vec<u8>, BoxError> + Send + Sync + 'static,
    ) -> Self {
        let event_type = event_type.into();
        let to = Some((event_type.clone(), from_version.saturating_add(1)));
        self.insert(event_type, from_version, to, move |step: UpcastStep| {
            // Saturating: from `u32::MAX` the version stays, which the chain reports as a loop.
            Ok(UpcastStep {
                event_type: step.event_type,
                schema_version: step.schema_version.saturating_add(1),
                payload: f(step.payload)?,
            })
        })
    }

    /// Registers a step on a JSON payload from `from_version` to `from_version + 1`.
    pub fn json(
        self,
        event_type: impl Into<String>,
        from_version: u32,
        f: impl Fn(serde_json::Value) -> Result<serde_json::Value, BoxError> + Send + Sync + 'static,
    ) -> Self {
        self.bytes(event_type, from_version, move |payload| {
            let value: serde_json::Value = serde_json::from_slice(&payload)?;
            Ok(serde_json::to_vec(&f(value)?)?)
        })
    }

    /// Renames `(old_type, version)` to `(new_type, new_version)` without touching the payload.
    pub fn rename(
        self,
        old_type: impl Into<String>,
        version: u32,
        new_type: impl Into<String>,
        new_version: u32,
    ) -> Self {
        let new_type = new_type.into();
        let to = Some((new_type.clone(), new_version));
        self.insert(old_type.into(), version, to, move |step: UpcastStep| {
            Ok(UpcastStep {
                event_type: new_type.clone(),
                schema_version: new_version,
                payload: step.payload,
            })
        })
    }

    /// Runs the chain until the payload has the version `current(event_type)` returns.
    ///
    /// `current` tells the version the code knows for a type name (`None`: unknown type).
    pub fn upcast_to(
        &self,
        event_type: &str,
        schema_version: u32,
        payload: Vec<u8>,
        current: impl Fn(&str) -> Option<u32>,
    ) -> Result<UpcastStep, DecodeErrorKind> {
        let mut step = UpcastStep {
            event_type: event_type.to_owned(),
            schema_version,
            payload,
        };
        for _ in 0..MAX_STEPS {
            let known = current(&step.event_type);
            if known == Some(step.schema_version) {
                return Ok(step);
            }
            let upcaster = self
                .steps
                .get(&(step.event_type.clone(), step.schema_version))
                .map(|s| &s.run);
            match (known, upcaster) {
                (Some(known), _) if step.schema_version > known => {
                    return Err(DecodeErrorKind::SchemaTooNew {
                        event_type: step.event_type,
                        stored: step.schema_version,
                        known,
                    });
                }
                (_, Some(upcaster)) => {
                    let (from_type, from) = (step.event_type.clone(), step.schema_version);
                    let next = upcaster(step).map_err(|source| DecodeErrorKind::Upcast {
                        event_type: from_type.clone(),
                        from,
                        source,
                    })?;
                    if next.event_type == from_type && next.schema_version <= from {
                        return Err(DecodeErrorKind::UpcastLoop {
                            event_type: from_type,
                        });
                    }
                    step = next;
                }
                (Some(known), None) => {
                    return Err(DecodeErrorKind::MissingUpcaster {
                        event_type: step.event_type,
                        stored: step.schema_version,
                        known,
                    });
                }
                (None, None) => {
                    return Err(DecodeErrorKind::UnknownEventType {
                        event_type: step.event_type,
                    });
                }
            }
        }
        Err(DecodeErrorKind::UpcastLoop {
            event_type: event_type.to_owned(),
        })
    }
}

/// Like [`decode_event`], from a borrowed event: when the stored version is current, only the
/// metadata is copied, never the payload bytes (what readers of a shared batch want).
pub fn decode_event_ref<E: Event>(
    recorded: &RecordedEvent,
    upcasters: &Upcasters,
) -> Result<Envelope<E>, DecodeError> {
    if E::current_version(&recorded.event_type) == Some(recorded.schema_version)
        && let Ok(event) = E::decode(&recorded.event_type, &recorded.payload)
    {
        return Ok(recorded.map_payload_ref(event));
    }
    // Upcasting, or an error that names the stream and event.
    decode_event(recorded.clone(), upcasters)
}

/// Decodes a stored event into a typed envelope: upcasts, then decodes with `E`'s codec.
///
/// Errors name the stream, the event id and version, and what went wrong.
pub fn decode_event<E: Event>(
    recorded: RecordedEvent,
    upcasters: &Upcasters,
) -> Result<Envelope<E>, DecodeError> {
    let fail = |recorded: &RecordedEvent, kind| DecodeError {
        stream_id: recorded.stream_id.clone(),
        event_id: recorded.event_id,
        stream_version: recorded.stream_version,
        kind: Box::new(kind),
    };
    // Fast path: the stored version is the current one.
    if E::current_version(&recorded.event_type) == Some(recorded.schema_version) {
        return match E::decode(&recorded.event_type, &recorded.payload) {
            Ok(event) => Ok(recorded.with_payload(event)),
            Err(e) => Err(fail(&recorded, DecodeErrorKind::Payload(e))),
        };
    }
    let step = match upcasters.upcast_to(
        &recorded.event_type,
        recorded.schema_version,
        recorded.payload.clone(),
        E::current_version,
    ) {
        Ok(step) => step,
        Err(kind) => return Err(fail(&recorded, kind)),
    };
    match E::decode(&step.event_type, &step.payload) {
        Ok(event) => {
            let mut envelope = recorded.with_payload(event);
            envelope.event_type = step.event_type;
            envelope.schema_version = step.schema_version;
            Ok(envelope)
        }
        Err(e) => Err(fail(&recorded, DecodeErrorKind::Payload(e))),
    }
}
