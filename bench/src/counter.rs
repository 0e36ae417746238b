//! The benchmark's aggregate: a counter whose events carry `{"n":1}`.

use crate::*;

/// Events of [`Counter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CounterEvent {
    Incremented { n: u64 },
}

pub(crate) const INCREMENTED: &str = "counter.incremented";

/// The raw baselines' fold of a loaded stream: checks that the versions run 1, 2, ... without a
/// gap, adds up the events' `n` (as the aggregate would) and returns the last version.
pub(crate) fn raw_fold(stream: &str, rows: &[RawRow]) -> Result<i64> {
    let mut total = 0u64;
    let mut version = 0i64;
    for row in rows {
        if row.1 != version + 1 {
            return Err(format!("stream {stream} jumps from {version} to {}", row.1).into());
        }
        version = row.1;
        total += decode_n(&row.5)?;
    }
    std::hint::black_box(total);
    Ok(version)
}

/// Reads `n` from a `{"n":..}` payload (shared by the library aggregate and the raw baseline).
pub(crate) fn decode_n(payload: &[u8]) -> Result<u64> {
    let value: serde_json::Value = serde_json::from_slice(payload)?;
    value
        .get("n")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| "payload has no numeric `n`".into())
}

impl Event for CounterEvent {
    const CONTENT_TYPE: &'static str = "application/json";

    fn event_type(&self) -> &'static str {
        INCREMENTED
    }

    fn schema_version(&self) -> u32 {
        1
    }

    fn event_types() -> &'static [EventTypeInfo] {
        &[EventTypeInfo {
            name: INCREMENTED,
            version: 1,
            variant: "Incremented",
        }]
    }

    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let CounterEvent::Incremented { n } = self;
        Ok(format!(r#"{{"n":{n}}}"#).into_bytes())
    }

    fn decode(event_type: &str, payload: &[u8]) -> Result<Self, CodecError> {
        if event_type != INCREMENTED {
            return Err(CodecError::UnknownEventType {
                event_type: event_type.to_owned(),
            });
        }
        decode_n(payload)
            .map(|n| CounterEvent::Incremented { n })
            .map_err(|source| CodecError::Decode {
                event_type: event_type.to_owned(),
                codec: "json",
                source,
            })
    }
}

/// The error of [`Counter`] (it never rejects).
#[derive(Debug)]
pub(crate) struct Never;

impl fmt::Display for Never {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("never")
    }
}

impl Error for Never {}

/// A running total (`Clone` for the repository's state cache).
#[derive(Debug, Default, Clone)]
pub(crate) struct Counter {
    pub(crate) total: u64,
}

/// Adds one.
pub(crate) struct Increment;

impl Aggregate for Counter {
    const TYPE: &'static str = "counter";
    type Command = Increment;
    type Event = CounterEvent;
    type Error = Never;

    fn handle(&self, _: &Increment) -> Result<Vec<CounterEvent>, Never> {
        Ok(vec![CounterEvent::Incremented { n: 1 }])
    }

    fn apply(&mut self, event: &CounterEvent) {
        let CounterEvent::Incremented { n } = event;
        self.total += n;
    }
}
