//! Hostile input: proptest fuzzing of every decoder that reads bytes or strings from outside
//! (payload codecs, stored envelopes, the upcaster chain, checkpoints, headers, Kafka records),
//! and hostile identifiers appended to SQLite and PostgreSQL.
//!
//! The property of every fuzz target: no panic; a typed error or a value; valid input round-trips.
//! `EVENTFOLD_FUZZ_CASES` (default 2000) and `EVENTFOLD_FUZZ_SECS` set the budget per target (see
//! `common::fuzz`): `EVENTFOLD_FUZZ_SECS=600 cargo nextest run --all-features --test
//! hostile_input` fuzzes each target for ten minutes.
mod common;

use eventfold::codec::json;
use eventfold::eventstore::{
    Checkpoint, EventStore, ExpectedVersion, Naming, StoreError, UnitOfWork,
};
use eventfold::outbox::Record;
use eventfold::{
    DecodeErrorKind, Event, Headers, NewEvent, OutboxMessage, StreamId, Upcasters, decode_event,
    decode_event_ref,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Event)]
enum ParcelEvent {
    Sent {
        to: String,
        grams: u64,
    },
    #[event(version = 3)]
    Noted {
        text: String,
        #[serde(default)]
        tags: Vec<String>,
    },
    Lost,
}

/// Type names: the known ones, near misses and arbitrary text.
fn event_type() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("parcel.sent".to_owned()),
        Just("parcel.noted".to_owned()),
        Just("parcel.lost".to_owned()),
        Just("parcel.unknown".to_owned()),
        "[a-z.]{0,12}",
        any::<String>(),
    ]
}

/// Versions around the interesting edges.
fn version() -> impl Strategy<Value = u32> {
    prop_oneof![
        0u32..5,
        Just(u32::MAX),
        Just(u32::MAX - 1),
        Just(i32::MAX as u32),
        any::<u32>(),
    ]
}

/// Arbitrary JSON values, nested a few levels.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        any::<String>().prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map("[a-z_]{0,8}|.{0,8}", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Payload bytes: arbitrary, arbitrary JSON, or JSON shaped like the events.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        json_value().prop_map(|v| serde_json::to_vec(&v).expect("a JSON value encodes")),
        (any::<String>(), any::<u64>()).prop_map(|(to, grams)| {
            serde_json::to_vec(&serde_json::json!({ "to": to, "grams": grams }))
                .expect("a JSON value encodes")
        }),
        Just(b"null".to_vec()),
        Just(b"{\"text\":\"\\u0000\",\"tags\":[\"\\ud800\"]}".to_vec()),
    ]
}

fn parcel_event() -> impl Strategy<Value = ParcelEvent> {
    prop_oneof![
        (any::<String>(), any::<u64>()).prop_map(|(to, grams)| ParcelEvent::Sent { to, grams }),
        (
            any::<String>(),
            proptest::collection::vec(any::<String>(), 0..4)
        )
            .prop_map(|(text, tags)| ParcelEvent::Noted { text, tags }),
        Just(ParcelEvent::Lost),
    ]
}

fn recorded(event_type: String, schema_version: u32, payload: Vec<u8>) -> eventfold::RecordedEvent {
    let stream = StreamId::new("parcel", "p-1").expect("a valid stream id");
    NewEvent::raw(event_type, schema_version, payload).into_recorded(stream, 1, 1)
}

/// Payload codecs: arbitrary bytes decode to a value or a typed error; events round-trip.
#[test]
fn fuzz_payload_codecs() {
    common::fuzz::run(
        "json codec",
        (event_type(), payload()),
        |(event_type, bytes)| {
            let _ = json::decode::<serde_json::Value>(&event_type, &bytes);
            if let Err(e) = ParcelEvent::decode(&event_type, &bytes) {
                // Typed, and it names the type it was asked for.
                let _ = e.to_string();
            }
            Ok(())
        },
    );
    common::fuzz::round_trip("event round trip", parcel_event(), |event| {
        let bytes = event
            .encode()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back = ParcelEvent::decode(event.event_type(), &bytes)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, event);
        Ok(())
    });
}

#[cfg(feature = "proto")]
#[derive(Clone, PartialEq, prost::Message)]
struct Parcel {
    #[prost(string, tag = "1")]
    to: String,
    #[prost(uint64, tag = "2")]
    grams: u64,
    #[prost(bytes = "vec", repeated, tag = "3")]
    labels: Vec<Vec<u8>>,
}

#[cfg(feature = "proto")]
#[test]
fn fuzz_protobuf_codec() {
    use eventfold::codec::protobuf;
    common::fuzz::run(
        "protobuf codec",
        proptest::collection::vec(any::<u8>(), 0..256),
        |bytes| {
            let _ = protobuf::decode::<Parcel>("parcel.sent", &bytes);
            Ok(())
        },
    );
    let parcel = (
        any::<String>(),
        any::<u64>(),
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..8), 0..4),
    )
        .prop_map(|(to, grams, labels)| Parcel { to, grams, labels });
    common::fuzz::round_trip("protobuf round trip", parcel, |parcel| {
        let bytes = protobuf::encode("parcel.sent", &parcel)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back = protobuf::decode::<Parcel>("parcel.sent", &bytes)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, parcel);
        Ok(())
    });
}

/// One registered upcaster step.
#[derive(Debug, Clone)]
enum StepSpec {
    Json {
        event_type: String,
        from: u32,
    },
    Bytes {
        event_type: String,
        from: u32,
    },
    Rename {
        from_type: String,
        from: u32,
        to_type: String,
        to: u32,
    },
    Failing {
        event_type: String,
        from: u32,
    },
    Backwards {
        event_type: String,
        from: u32,
    },
}

fn step_spec() -> impl Strategy<Value = StepSpec> {
    prop_oneof![
        (event_type(), version())
            .prop_map(|(event_type, from)| StepSpec::Json { event_type, from }),
        (event_type(), version())
            .prop_map(|(event_type, from)| StepSpec::Bytes { event_type, from }),
        (event_type(), version(), event_type(), version()).prop_map(
            |(from_type, from, to_type, to)| StepSpec::Rename {
                from_type,
                from,
                to_type,
                to
            }
        ),
        (event_type(), version())
            .prop_map(|(event_type, from)| StepSpec::Failing { event_type, from }),
        (event_type(), version())
            .prop_map(|(event_type, from)| StepSpec::Backwards { event_type, from }),
    ]
}

fn upcasters(specs: &[StepSpec]) -> Upcasters {
    specs
        .iter()
        .cloned()
        .fold(Upcasters::new(), |upcasters, spec| match spec {
            // A JSON step that wraps the old value: it fails on anything that is not JSON.
            StepSpec::Json { event_type, from } => upcasters.json(event_type, from, |v| {
                Ok(serde_json::json!({ "text": v.to_string(), "tags": [] }))
            }),
            StepSpec::Bytes { event_type, from } => upcasters.bytes(event_type, from, Ok),
            StepSpec::Rename {
                from_type,
                from,
                to_type,
                to,
            } => upcasters.rename(from_type, from, to_type, to),
            StepSpec::Failing { event_type, from } => {
                upcasters.bytes(event_type, from, |_| Err("refused".into()))
            }
            StepSpec::Backwards { event_type, from } => {
                upcasters.step(event_type, from, |mut step| {
                    step.schema_version = step.schema_version.saturating_sub(1);
                    Ok(step)
                })
            }
        })
}

/// The upcaster chain: arbitrary steps (versions up to `u32::MAX`), stored versions, current
/// versions and payloads end in the current version or a typed error, never a panic or a hang.
#[test]
fn fuzz_upcaster_chain() {
    let input = (
        proptest::collection::vec(step_spec(), 0..8),
        event_type(),
        version(),
        payload(),
        proptest::collection::btree_map(event_type(), version(), 0..4),
    );
    common::fuzz::run(
        "upcaster chain",
        input,
        |(specs, event_type, stored, bytes, current)| {
            let chain = upcasters(&specs);
            let known = |t: &str| current.get(t).copied();
            match chain.upcast_to(&event_type, stored, bytes, known) {
                Ok(step) => prop_assert_eq!(known(&step.event_type), Some(step.schema_version)),
                Err(
                    DecodeErrorKind::SchemaTooNew { .. }
                    | DecodeErrorKind::MissingUpcaster { .. }
                    | DecodeErrorKind::UnknownEventType { .. }
                    | DecodeErrorKind::Upcast { .. }
                    | DecodeErrorKind::UpcastLoop { .. },
                ) => {}
                Err(other) => return Err(TestCaseError::fail(format!("unexpected error {other}"))),
            }
            Ok(())
        },
    );
}

/// Stored envelopes: any type, version and payload decode into an event or a typed error naming
/// the stream and the event; the borrowed decoder agrees with the owned one.
#[test]
fn fuzz_envelope_decoding() {
    let input = (
        proptest::collection::vec(step_spec(), 0..4),
        event_type(),
        version(),
        payload(),
    );
    common::fuzz::run(
        "envelope decoding",
        input,
        |(specs, event_type, stored, bytes)| {
            let chain = upcasters(&specs).json("parcel.noted", 2, |v| {
                Ok(serde_json::json!({ "text": v.to_string() }))
            });
            let event = recorded(event_type, stored, bytes);
            let owned = decode_event::<ParcelEvent>(event.clone(), &chain);
            let borrowed = decode_event_ref::<ParcelEvent>(&event, &chain);
            match (&owned, &borrowed) {
                (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                (Err(a), Err(b)) => {
                    prop_assert_eq!(&a.stream_id, &event.stream_id);
                    prop_assert_eq!(a.event_id, event.event_id);
                    prop_assert_eq!(a.to_string(), b.to_string());
                }
                _ => return Err(TestCaseError::fail(format!("{owned:?} but {borrowed:?}"))),
            }
            Ok(())
        },
    );
    common::fuzz::round_trip("envelope round trip", parcel_event(), |event| {
        let bytes = event
            .encode()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let stored = recorded(event.event_type().to_owned(), event.schema_version(), bytes);
        let back = decode_event::<ParcelEvent>(stored, &Upcasters::new())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back.payload, event);
        Ok(())
    });
}

/// Checkpoints: any string parses or is refused; every checkpoint round-trips through its string
/// and its two columns.
#[test]
fn fuzz_checkpoint_parsing() {
    let text = prop_oneof![
        any::<String>(),
        "[0-9:+ -]{0,30}",
        (any::<u64>(), any::<u64>()).prop_map(|(a, b)| format!("{a}:{b}")),
        (any::<i128>(), any::<i128>()).prop_map(|(a, b)| format!("{a}:{b}")),
    ];
    common::fuzz::run("checkpoint parsing", text, |text| {
        if let Ok(checkpoint) = text.parse::<Checkpoint>() {
            prop_assert_eq!(checkpoint.to_string().parse::<Checkpoint>(), Ok(checkpoint));
        }
        Ok(())
    });
    common::fuzz::run(
        "checkpoint columns",
        (any::<i64>(), any::<i64>()),
        |(key, position)| {
            match Checkpoint::from_parts(key, position) {
                Ok(checkpoint) => {
                    prop_assert_eq!(checkpoint.to_parts(), (key, position));
                    prop_assert_eq!(checkpoint.to_string(), format!("{key}:{position}"));
                    prop_assert_eq!(checkpoint.to_string().parse::<Checkpoint>(), Ok(checkpoint));
                }
                Err(_) => prop_assert!(key < 0 || position < 0),
            }
            Ok(())
        },
    );
}

/// Header maps: the known CloudEvents names with hostile values, duplicates of one name, and
/// arbitrary names.
fn headers() -> impl Strategy<Value = Headers> {
    let name = prop_oneof![
        Just("ce_id".to_owned()),
        Just("ce_type".to_owned()),
        Just("ce_schemaversion".to_owned()),
        Just("ce_correlationid".to_owned()),
        Just("ce_causationid".to_owned()),
        Just("ce_tenantid".to_owned()),
        Just("ce_time".to_owned()),
        Just("ce_streamversion".to_owned()),
        Just("traceparent".to_owned()),
        Just("tracestate".to_owned()),
        any::<String>(),
    ];
    let value = prop_oneof![
        any::<String>(),
        Just(Uuid::now_v7().to_string()),
        version().prop_map(|v| v.to_string()),
        Just("-1".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()),
        "[0-9a-f-]{50,60}",
    ];
    proptest::collection::btree_map(name, value, 0..8)
}

fn record(headers: Headers, payload: Vec<u8>, message_type: String) -> Record {
    Record {
        topic: "parcels".to_owned(),
        partition: 0,
        offset: 0,
        key: "p-1".to_owned(),
        message_id: Uuid::now_v7(),
        message_type,
        payload,
        headers,
        timestamp: chrono::Utc::now(),
    }
}

/// Headers as consumers read them: a record's `ce_type` and `ce_schemaversion` with its payload,
/// a flow's correlation and causation, the trace context. A value or a typed error, never a panic.
#[test]
fn fuzz_header_parsing() {
    let input = (
        headers(),
        payload(),
        event_type(),
        proptest::collection::vec(step_spec(), 0..3),
    );
    common::fuzz::run(
        "record headers",
        input,
        |(headers, bytes, message_type, specs)| {
            let record = record(headers, bytes, message_type);
            if let Err(e) = record.decode::<ParcelEvent>(&upcasters(&specs)) {
                prop_assert_eq!(e.message_id, record.message_id);
            }
            let (correlation, causation) = eventfold::eventstore::trace::flow_of(&record.headers);
            if let Some(id) = correlation {
                let header = record.headers.get("ce_correlationid");
                prop_assert_eq!(header.and_then(|v| Uuid::parse_str(v).ok()), Some(id));
            }
            let _ = causation;
            let flow = eventfold::saga::choreography::Flow::of_record(&record);
            prop_assert_eq!(flow.causation_id, record.message_id);
            #[cfg(feature = "otel")]
            {
                use eventfold::trace_context::{
                    format_traceparent, parent_context, parse_traceparent,
                };
                let _ = parent_context(&record.headers);
                if let Some(traceparent) = record.headers.get("traceparent") {
                    let tracestate = record.headers.get("tracestate").map(String::as_str);
                    if let Some(cx) = parse_traceparent(traceparent, tracestate) {
                        let again = parse_traceparent(&format_traceparent(&cx), None);
                        prop_assert_eq!(
                            again.map(|c| (c.trace_id(), c.span_id())),
                            Some((cx.trace_id(), cx.span_id()))
                        );
                    }
                }
            }
            Ok(())
        },
    );
    common::fuzz::run(
        "outbox message headers",
        (any::<String>(), any::<u32>(), headers()),
        |(key, slots, headers)| {
            prop_assert!(OutboxMessage::slot_of(&key, slots) < slots.max(1));
            let mut message = OutboxMessage::new("parcels", key, "parcel.sent", Vec::new());
            message.headers.extend(headers);
            let _ = eventfold::eventstore::trace::flow_of(&message.headers);
            Ok(())
        },
    );
}

/// Table prefixes and schemas: accepted only when they are safe to put into SQL.
#[test]
fn fuzz_identifiers() {
    let text = prop_oneof![any::<String>(), "[a-z_0-9\"';. -]{0,40}"];
    common::fuzz::run(
        "table prefix and schema",
        (text.clone(), text),
        |(prefix, schema)| {
            let safe = |s: &str, empty: bool| {
                (empty || !s.is_empty())
                    && s.len() <= 32
                    && s.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                    && !s.as_bytes().first().is_some_and(u8::is_ascii_digit)
            };
            match Naming::new(prefix.clone()) {
                Ok(naming) => {
                    prop_assert!(safe(&prefix, true), "accepted prefix {prefix:?}");
                    match naming.with_schema(schema.clone()) {
                        Ok(_) => prop_assert!(safe(&schema, false), "accepted schema {schema:?}"),
                        Err(e) => {
                            prop_assert!(matches!(e, StoreError::InvalidIdentifier { .. }), "{e:?}")
                        }
                    }
                }
                Err(e) => prop_assert!(matches!(e, StoreError::InvalidIdentifier { .. }), "{e:?}"),
            }
            Ok(())
        },
    );
    common::fuzz::run(
        "stream ids",
        (any::<String>(), any::<String>()),
        |(stream_type, id)| {
            match StreamId::new(stream_type.clone(), id.clone()) {
                Ok(stream) => {
                    prop_assert_eq!(stream.id(), id.as_str());
                    // A stream id read from JSON is validated like a new one.
                    let json = serde_json::to_string(&stream).expect("a stream id serializes");
                    prop_assert_eq!(serde_json::from_str::<StreamId>(&json).ok(), Some(stream));
                }
                Err(_) => {
                    let json = serde_json::json!({ "stream_type": stream_type, "id": id });
                    prop_assert!(serde_json::from_value::<StreamId>(json).is_err());
                }
            }
            Ok(())
        },
    );
}

/// Kafka records: arbitrary keys, payloads and headers (values not UTF-8, names repeated, names
/// not UTF-8) become a `Record` or a typed `InvalidRecord`, never a panic.
#[cfg(feature = "kafka")]
mod kafka {
    use super::*;
    use eventfold::outbox::kafka::rdkafka;
    use eventfold::outbox::kafka_source::{RecordProblem, record_from_message};
    use eventfold::outbox::{KafkaSourceError, headers as names};
    use rdkafka::Timestamp;
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};

    /// A header as bytes: its name and its value, if any.
    type RawHeader = (Vec<u8>, Option<Vec<u8>>);

    /// Headers with raw names: librdkafka takes any bytes, rdkafka's `Header` only `&str`.
    fn raw_headers(headers: &[RawHeader]) -> OwnedHeaders {
        let owned = OwnedHeaders::new();
        // `as_borrowed` is a reference to the native `rd_kafka_headers_t` itself.
        let native = owned.as_borrowed() as *const rdkafka::message::BorrowedHeaders
            as *mut rdkafka::bindings::rd_kafka_headers_t;
        for (name, value) in headers {
            let (value_ptr, value_len) = match value {
                Some(v) => (v.as_ptr().cast::<std::ffi::c_void>(), v.len() as isize),
                None => (std::ptr::null(), 0),
            };
            // SAFETY: `native` is the live, writable header list of `owned`; librdkafka copies
            // the name and value (lengths given, no terminator needed).
            let err = unsafe {
                rdkafka::bindings::rd_kafka_header_add(
                    native,
                    name.as_ptr().cast(),
                    name.len() as isize,
                    value_ptr,
                    value_len,
                )
            };
            assert_eq!(
                err,
                rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            );
        }
        owned
    }

    fn header_name() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            3 => Just(b"ce_id".to_vec()),
            2 => Just(b"ce_type".to_vec()),
            1 => Just(b"traceparent".to_vec()),
            2 => "[a-z_]{1,10}".prop_map(String::into_bytes),
            1 => proptest::collection::vec(1u8.., 1..12),
        ]
    }

    fn header_value() -> impl Strategy<Value = Option<Vec<u8>>> {
        proptest::option::of(prop_oneof![
            Just(Uuid::now_v7().to_string().into_bytes()),
            any::<String>().prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..40),
            Just(vec![0xff, 0xfe, 0x00]),
        ])
    }

    fn timestamp() -> impl Strategy<Value = Timestamp> {
        prop_oneof![
            Just(Timestamp::NotAvailable),
            any::<i64>().prop_map(Timestamp::CreateTime),
            any::<i64>().prop_map(Timestamp::LogAppendTime),
        ]
    }

    #[derive(Debug, Clone)]
    struct RawMessage {
        key: Option<Vec<u8>>,
        payload: Option<Vec<u8>>,
        headers: Option<Vec<RawHeader>>,
        partition: i32,
        offset: i64,
        timestamp: Timestamp,
    }

    fn raw_message() -> impl Strategy<Value = RawMessage> {
        (
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..128)),
            proptest::option::of(proptest::collection::vec(
                (header_name(), header_value()),
                0..8,
            )),
            prop_oneof![
                Just(0),
                Just(-1),
                Just(i32::MIN),
                Just(i32::MAX),
                any::<i32>()
            ],
            prop_oneof![
                Just(0),
                Just(-1),
                Just(i64::MIN),
                Just(i64::MAX),
                any::<i64>()
            ],
            timestamp(),
        )
            .prop_map(
                |(key, payload, headers, partition, offset, timestamp)| RawMessage {
                    key,
                    payload,
                    headers,
                    partition,
                    offset,
                    timestamp,
                },
            )
    }

    fn owned(raw: &RawMessage) -> OwnedMessage {
        OwnedMessage::new(
            raw.payload.clone(),
            raw.key.clone(),
            "parcels".to_owned(),
            raw.timestamp,
            raw.partition,
            raw.offset,
            raw.headers.as_deref().map(raw_headers),
        )
    }

    /// rdkafka's panics on names that are not UTF-8 are expected here (and caught by
    /// `record_from_message`): they are not printed, any other panic is.
    fn quiet_rdkafka_panics() {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_rdkafka = info
                .location()
                .is_some_and(|l| l.file().contains("rdkafka") && l.file().ends_with("message.rs"));
            if !in_rdkafka {
                default(info);
            }
        }));
    }

    #[test]
    fn fuzz_kafka_record_decoding() {
        quiet_rdkafka_panics();
        common::fuzz::run("kafka record", raw_message(), |raw| {
            let message = owned(&raw);
            match record_from_message(&message) {
                Ok(record) => {
                    prop_assert!(raw.partition >= 0 && raw.offset >= 0);
                    prop_assert_eq!(i64::from(record.partition), i64::from(raw.partition));
                    prop_assert_eq!(record.offset as i64, raw.offset);
                    prop_assert_eq!(record.payload, raw.payload.unwrap_or_default());
                    prop_assert_eq!(
                        record.key,
                        String::from_utf8_lossy(&raw.key.unwrap_or_default()).into_owned()
                    );
                    // The last `ce_id` counts.
                    let last_id = raw
                        .headers
                        .unwrap_or_default()
                        .into_iter()
                        .rev()
                        .find(|(name, _)| name == b"ce_id")
                        .and_then(|(_, value)| value);
                    let parsed =
                        last_id.and_then(|v| Uuid::parse_str(&String::from_utf8_lossy(&v)).ok());
                    prop_assert_eq!(parsed, Some(record.message_id));
                }
                Err(KafkaSourceError::InvalidRecord {
                    topic,
                    partition,
                    offset,
                    problem,
                }) => {
                    prop_assert_eq!(topic, "parcels");
                    prop_assert_eq!((partition, offset), (raw.partition, raw.offset));
                    let _ = problem.to_string();
                }
                Err(other) => return Err(TestCaseError::fail(format!("untyped: {other}"))),
            }
            Ok(())
        });
    }

    /// What the relay publishes comes back as the same record.
    #[test]
    fn fuzz_kafka_record_round_trip() {
        let input = (
            "[^\u{0}]{0,40}",
            "[^\u{0}]{0,20}",
            proptest::collection::vec(any::<u8>(), 0..128),
            proptest::collection::btree_map("[^\u{0}]{1,12}", "[^\u{0}]{0,40}", 0..6),
            0i32..=i32::MAX,
            0i64..=i64::MAX,
        );
        common::fuzz::round_trip(
            "kafka round trip",
            input,
            |(key, message_type, payload, extra, partition, offset)| {
                let mut message = OutboxMessage::new("parcels", key, message_type, payload);
                for (name, value) in extra {
                    message.headers.entry(name).or_insert(value);
                }
                let headers =
                    message
                        .headers
                        .iter()
                        .fold(OwnedHeaders::new(), |headers, (name, value)| {
                            headers.insert(Header {
                                key: name.as_str(),
                                value: Some(value.as_str()),
                            })
                        });
                let kafka = OwnedMessage::new(
                    Some(message.payload.clone()),
                    Some(message.key.clone().into_bytes()),
                    message.topic.clone(),
                    Timestamp::CreateTime(1_700_000_000_000),
                    partition,
                    offset,
                    Some(headers),
                );
                let record =
                    record_from_message(&kafka).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(record.message_id, message.id);
                prop_assert_eq!(&record.key, &message.key);
                prop_assert_eq!(&record.message_type, &message.message_type);
                prop_assert_eq!(&record.payload, &message.payload);
                prop_assert_eq!(&record.headers, &message.headers);
                prop_assert_eq!(
                    (i64::from(record.partition), record.offset as i64),
                    (i64::from(partition), offset)
                );
                Ok(())
            },
        );
    }

    /// rdkafka panics on a header name that is not UTF-8 (`CStr::to_str().unwrap()`): the record
    /// is refused with a typed error instead.
    #[test]
    fn a_header_name_that_is_not_utf8_is_a_typed_error() {
        let id = Uuid::now_v7().to_string().into_bytes();
        let raw = RawMessage {
            key: Some(b"p-1".to_vec()),
            payload: Some(b"{}".to_vec()),
            headers: Some(vec![
                (b"ce_id".to_vec(), Some(id)),
                (vec![0xc3, 0x28], Some(b"x".to_vec())),
            ]),
            partition: 2,
            offset: 9,
            timestamp: Timestamp::NotAvailable,
        };
        let error = record_from_message(&owned(&raw)).expect_err("an unreadable header");
        assert!(
            matches!(
                &error,
                KafkaSourceError::InvalidRecord {
                    partition: 2,
                    offset: 9,
                    problem: RecordProblem::Unreadable {
                        what: "headers",
                        ..
                    },
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(error.to_string().contains("parcels/2@9"), "{error}");
    }

    /// Repeated, valueless and non-UTF-8 headers: the last of a name wins, no value is empty,
    /// bad bytes are replaced; a NUL in the key or a header is refused.
    #[test]
    fn duplicated_and_odd_headers() {
        let (first, last) = (Uuid::now_v7(), Uuid::now_v7());
        let mut raw = RawMessage {
            key: Some(vec![b'k', 0xff]),
            payload: None,
            headers: Some(vec![
                (
                    names::ID.as_bytes().to_vec(),
                    Some(first.to_string().into_bytes()),
                ),
                (b"x-empty".to_vec(), None),
                (b"x-bytes".to_vec(), Some(vec![b'a', 0xff, b'b'])),
                (
                    names::ID.as_bytes().to_vec(),
                    Some(last.to_string().into_bytes()),
                ),
            ]),
            partition: 0,
            offset: 0,
            timestamp: Timestamp::CreateTime(i64::MAX),
        };
        let record = record_from_message(&owned(&raw)).expect("a record");
        assert_eq!(record.message_id, last);
        assert_eq!(record.key, "k\u{fffd}");
        assert_eq!(record.headers["x-empty"], "");
        assert_eq!(record.headers["x-bytes"], "a\u{fffd}b");
        assert!(record.payload.is_empty());

        raw.key = Some(b"k\0".to_vec());
        let error = record_from_message(&owned(&raw)).expect_err("a NUL in the key");
        assert!(
            matches!(&error, KafkaSourceError::InvalidRecord { problem: RecordProblem::Nul { field }, .. } if field == "key"),
            "{error:?}"
        );
    }
}

// ---- hostile identifiers and text, stored on SQLite and PostgreSQL ----

/// Stream ids that are valid but hostile to SQL are stored verbatim; ids with NUL, newlines or
/// 10 kB are refused with `InvalidStreamId` before anything is written; NUL in any other text of
/// an event or an outbox message is refused with a typed error naming the stream or message.
async fn hostile_text_is_stored_verbatim_or_refused<S: EventStore>(store: S, nul_source: S) {
    let verbatim = [
        "o'brien",
        "\"quoted\"",
        "x'; DROP TABLE eventfold_events; --",
        "back\\slash",
        "emoji 🦀 and ünïcödé",
        "%_wildcards_%",
        "$1 $$ $tag$",
    ];
    for id in verbatim {
        let stream = StreamId::new("parcel", id).expect("a printable id is valid");
        let mut event = NewEvent::raw("parcel.lost", 1, b"{}".to_vec());
        event.tenant_id = Some(format!("{id}{}", "t".repeat(10_000)));
        event.headers.insert(format!("h-{id}"), "v".repeat(10_000));
        event.source = format!("svc-{id}");
        store
            .append(&stream, ExpectedVersion::NoStream, vec![event.clone()])
            .await
            .unwrap_or_else(|e| panic!("append to {id:?}: {e}"));
        let back = store
            .read_stream(&stream, 1, u64::MAX)
            .await
            .expect("read back");
        assert_eq!(back.len(), 1, "{id:?}");
        assert_eq!(back[0].stream_id.id(), id);
        assert_eq!(back[0].tenant_id, event.tenant_id);
        assert_eq!(back[0].headers, event.headers);
        assert_eq!(back[0].source, event.source);
    }

    let long = "x".repeat(10_000);
    for id in [
        "nul\0id",
        "new\nline",
        "carriage\rreturn",
        long.as_str(),
        "",
    ] {
        assert!(
            StreamId::new("parcel", id).is_err(),
            "{:?} accepted",
            &id[..id.len().min(20)]
        );
    }
    for stream_type in ["Parcel", "par'cel", "parcel\0", "", &long] {
        assert!(StreamId::new(stream_type, "1").is_err());
    }

    let stream = StreamId::new("parcel", "nul-text").expect("a valid id");
    let nul_cases: Vec<(&str, NewEvent)> = vec![
        (
            "event type",
            NewEvent::raw("parcel.\0lost", 1, b"{}".to_vec()),
        ),
        ("source", {
            let mut e = NewEvent::raw("parcel.lost", 1, b"{}".to_vec());
            e.source = "svc\0".into();
            e
        }),
        ("tenant id", {
            let mut e = NewEvent::raw("parcel.lost", 1, b"{}".to_vec());
            e.tenant_id = Some("acme\0".into());
            e
        }),
        ("header name", {
            let mut e = NewEvent::raw("parcel.lost", 1, b"{}".to_vec());
            e.headers.insert("h\0".into(), "v".into());
            e
        }),
        ("header `h`", {
            let mut e = NewEvent::raw("parcel.lost", 1, b"{}".to_vec());
            e.headers.insert("h".into(), "v\0".into());
            e
        }),
    ];
    for (field, event) in nul_cases {
        let error = store
            .append(&stream, ExpectedVersion::Any, vec![event])
            .await
            .expect_err("a NUL is refused");
        match &error {
            StoreError::InvalidEvent {
                stream_id, reason, ..
            } => {
                assert_eq!(stream_id, &stream);
                assert!(reason.contains(field) && reason.contains("NUL"), "{reason}");
                assert!(error.to_string().contains("parcel-nul-text"), "{error}");
            }
            other => panic!("a NUL in the {field}: {other:?}"),
        }
    }
    // The store's own source is checked like an event's.
    {
        let error = nul_source
            .append(
                &stream,
                ExpectedVersion::Any,
                vec![NewEvent::raw("parcel.lost", 1, b"{}".to_vec())],
            )
            .await
            .expect_err("a NUL in the store's source");
        assert!(
            matches!(&error, StoreError::InvalidEvent { reason, .. } if reason.contains("source")),
            "{error:?}"
        );
    }
    // Payloads are opaque bytes: NUL and invalid UTF-8 included, they are stored as they are.
    let payload = b"\0\xff\x00 binary".to_vec();
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![NewEvent::raw("parcel.lost", 1, payload.clone())],
        )
        .await
        .expect("payload bytes are opaque");
    assert_eq!(
        store.read_stream(&stream, 1, 1).await.expect("read")[0].payload,
        payload
    );

    // Outbox messages of the application.
    let mut uow = store.begin().await.expect("begin");
    let message = OutboxMessage::new("parcels", "p\0", "parcel.lost", Vec::new());
    let error = uow
        .enqueue(vec![message.clone()])
        .await
        .expect_err("a NUL key");
    assert!(
        matches!(&error, StoreError::InvalidMessage { message_id, reason, .. }
            if *message_id == message.id && reason.contains("key")),
        "{error:?}"
    );
    // A long key would be stored, then fail PostgreSQL's index when the row is retried.
    let long_key = OutboxMessage::new("parcels", "k".repeat(1025), "parcel.lost", Vec::new());
    let error = uow
        .enqueue(vec![long_key])
        .await
        .expect_err("a 1025-byte key");
    assert!(
        matches!(&error, StoreError::InvalidMessage { reason, .. } if reason.contains("1025 bytes")),
        "{error:?}"
    );
    let fine = OutboxMessage::new("parcels", "o'brien \"x\"", "parcel.lost", Vec::new())
        .header("x-long", "y".repeat(10_000));
    let longest = OutboxMessage::new("parcels", "é".repeat(512), "parcel.lost", Vec::new());
    uow.enqueue(vec![fine, longest])
        .await
        .expect("a hostile but NUL-free message is stored");
    uow.commit().await.expect("commit");
}

common::named_backend_tests!(2 => |store| {
        let nul_source = store.clone().with_source("svc\0");
        hostile_text_is_stored_verbatim_or_refused(store, nul_source)
    };
    hostile_text_on_sqlite: sqlite,
    hostile_text_on_postgres: postgres,
    hostile_text_in_memory: memory,
);

/// The builders take names only through `Naming`, which refuses anything that is not a plain
/// identifier: hostile prefixes and schemas never reach SQL.
#[test]
fn hostile_prefixes_and_schemas_are_refused() {
    let long = "a".repeat(33);
    for prefix in [
        "x\"; DROP TABLE users; --",
        "Upper_",
        "with space",
        "nul\0",
        "new\nline",
        "é_",
        "1abc",
        long.as_str(),
    ] {
        let error = Naming::new(prefix).expect_err("a hostile prefix");
        assert!(
            matches!(
                error,
                StoreError::InvalidIdentifier {
                    what: "table prefix",
                    ..
                }
            ),
            "{error:?}"
        );
    }
    for schema in ["", "public\"", "a.b", "nul\0", long.as_str()] {
        let error = Naming::new("ok_")
            .expect("a prefix")
            .with_schema(schema)
            .expect_err("a hostile schema");
        assert!(
            matches!(error, StoreError::InvalidIdentifier { what: "schema", .. }),
            "{error:?}"
        );
    }
}

/// The names a consumer or a projection (`kind`) is tried with, and whether each is valid:
/// printable ones up to 200 bytes, quotes and SQL included; one of 201 bytes, one of 10 kB, one
/// with a newline, one with a NUL and the empty one are not.
fn hostile_names(kind: &str) -> Vec<(String, bool)> {
    let long = "x".repeat(10_000);
    vec![
        (format!("o'brien \"{kind}\"; --"), true),
        ("é".repeat(100), true),
        (long[..201].to_owned(), false),
        (long, false),
        ("line\nbreak".to_owned(), false),
        ("nul\0name".to_owned(), false),
        (String::new(), false),
    ]
}

/// What became of the hostile `name`: `Some` of what `result` returned when it was accepted,
/// which it must be when `valid`; `None` when the store refused it as an invalid `what` (the
/// [`StoreError`] of an error, found by `store_error`), which it must do when it is not valid.
/// Any other error fails the test.
fn accepted<T: std::fmt::Debug, E: std::fmt::Debug>(
    name: &str,
    valid: bool,
    what: &str,
    result: Result<T, E>,
    store_error: impl Fn(&E) -> Option<&StoreError>,
) -> Option<T> {
    let shown = &name[..name.len().min(24)];
    match result {
        Ok(done) => {
            assert!(valid, "{shown:?} accepted: {done:?}");
            Some(done)
        }
        Err(error) => match store_error(&error) {
            Some(StoreError::InvalidIdentifier { what: refused, .. }) => {
                assert!(!valid, "{shown:?} refused");
                assert_eq!(*refused, what);
                None
            }
            _ => panic!("{shown:?}: {error:?}"),
        },
    }
}

/// A consumer name goes into the inbox's key: printable names up to 200 bytes, quotes included,
/// are stored verbatim; a name with a NUL or a newline, or of 10 kB, is refused with a typed
/// error before the database is asked.
async fn hostile_consumer_names<S: eventfold::eventstore::InboxStore>(store: S) {
    use eventfold::outbox::{Consumer, ConsumerError, InProcessBroker, Publisher};
    for (name, valid) in hostile_names("consumer") {
        let name = name.as_str();
        let broker = InProcessBroker::new();
        let message = OutboxMessage::new("payments", "p-1", "payment.captured", b"{}".to_vec());
        assert!(broker.publish(&[message]).await[0].is_ok());
        let mut consumer = Consumer::new(
            name,
            store.clone(),
            broker.consumer("group", &["payments"]),
            common::Ledger::default(),
        )
        .max_attempts(1);
        let ran = consumer
            .run_once(std::time::Duration::from_millis(200))
            .await;
        fn store_error(e: &ConsumerError) -> Option<&StoreError> {
            match e {
                ConsumerError::Store { source, .. } => Some(source),
                _ => None,
            }
        }
        if let Some(report) = accepted(name, valid, "consumer name", ran, store_error) {
            let shown = &name[..name.len().min(24)];
            assert_eq!(report.handled, 1, "{shown:?}: {report:?}");
        }
    }
}

common::named_backend_tests!(2 => |store| hostile_consumer_names(store);
    hostile_consumer_names_on_sqlite: sqlite,
    hostile_consumer_names_on_postgres: postgres,
    hostile_consumer_names_in_memory: memory,
);

/// A projection with any name and nothing to do.
struct Named(String);

impl<U: UnitOfWork> eventfold::projections::Projection<U> for Named {
    type Event = ParcelEvent;

    fn name(&self) -> &str {
        &self.0
    }

    async fn apply(
        &self,
        _uow: &mut U,
        _tables: &eventfold::projections::Tables,
        _event: &eventfold::Envelope<ParcelEvent>,
    ) -> Result<(), eventfold::BoxError> {
        Ok(())
    }
}

/// A projection name is the key of its state and checkpoint: printable names up to 200 bytes,
/// quotes included, are stored verbatim; a name with a NUL or a newline, or of 10 kB, is refused
/// with a typed error before the database is asked.
async fn hostile_projection_names<S: eventfold::eventstore::ProjectionStore>(store: S) {
    use eventfold::projections::{ProjectionError, Projections, RebuildMode};
    let parcel = StreamId::new("parcel", "1").expect("a stream id");
    let event = NewEvent::raw("parcel.lost", 1, b"{}".to_vec());
    store
        .append(&parcel, ExpectedVersion::Any, vec![event])
        .await
        .expect("append");
    for (name, valid) in hostile_names("projection") {
        let name = name.as_str();
        let projections = Projections::new(store.clone()).register(Named(name.to_owned()));
        let rebuilt = projections
            .rebuild(name, RebuildMode::BlueGreen { drop_old: false }, |_| {})
            .await;
        fn store_error(e: &ProjectionError) -> Option<&StoreError> {
            match e {
                ProjectionError::Store(source) => Some(source),
                _ => None,
            }
        }
        if let Some(report) = accepted(name, valid, "projection name", rebuilt, store_error) {
            assert_eq!(report.name, name);
            let status = projections.status().await.expect("status");
            assert_eq!(status[0].name, name);
        }
    }
}

common::named_backend_tests!(2 => |store| hostile_projection_names(store);
    hostile_projection_names_on_sqlite: sqlite,
    hostile_projection_names_on_postgres: postgres,
    hostile_projection_names_in_memory: memory,
);

/// A reaction that checks what it is given and writes nothing.
struct Checks;

impl<U: UnitOfWork> eventfold::saga::choreography::Reaction<U> for Checks {
    type Event = ParcelEvent;

    fn name(&self) -> &str {
        "checks"
    }

    async fn react(
        &self,
        ctx: &mut eventfold::saga::choreography::FlowContext<'_, U>,
        event: &eventfold::Envelope<ParcelEvent>,
    ) -> Result<(), eventfold::BoxError> {
        if ctx.flow().correlation_id != event.correlation_id {
            return Err("the flow and the envelope disagree".into());
        }
        Ok(())
    }
}

/// Records with hostile CloudEvents headers (`ce_streamtype`, `ce_streamversion`, `ce_time`,
/// `ce_schemaversion`, ids), keys and topics through the handlers that turn a record into an
/// envelope: a projection's `ProjectionHandler` and a reaction's `ReactionHandler`. Each handles
/// it or returns an error, never panics.
#[test]
fn fuzz_consumer_handlers() {
    use eventfold::eventstore::memory::MemoryStore;
    use eventfold::outbox::Handler;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let store = MemoryStore::new();
    let projection = runtime
        .block_on(eventfold::projections::ProjectionHandler::new(
            &store,
            Named("fuzzed".to_owned()),
        ))
        .expect("the projection handler");
    let reaction = eventfold::saga::choreography::ReactionHandler::new(Checks);
    let handled = std::cell::Cell::new(0usize);
    let hostile = proptest::collection::btree_map(
        prop_oneof![
            Just("ce_streamtype".to_owned()),
            Just("ce_streamversion".to_owned()),
            Just("ce_time".to_owned()),
            Just("ce_schemaversion".to_owned()),
            Just("ce_correlationid".to_owned()),
            Just("ce_causationid".to_owned()),
            Just("ce_tenantid".to_owned()),
            Just("ce_source".to_owned()),
        ],
        prop_oneof![
            any::<String>(),
            Just("parcel".to_owned()),
            Just("2026-12-05T08:00:00.123456Z".to_owned()),
            Just("+262143-12-31T23:59:59Z".to_owned()),
            Just("99999999999999999999".to_owned()),
            version().prop_map(|v| v.to_string()),
            Just(Uuid::now_v7().to_string()),
        ],
        0..6,
    );
    let input = (
        headers(),
        hostile,
        event_type(),
        payload(),
        prop_oneof![Just("p-1".to_owned()), any::<String>()],
        prop_oneof![Just("parcels".to_owned()), any::<String>()],
    );
    common::fuzz::run(
        "consumer handlers",
        input,
        |(mut headers, hostile, event_type, bytes, key, topic)| {
            headers.extend(hostile);
            headers.insert("ce_type".to_owned(), event_type.clone());
            let mut record = record(headers, bytes, event_type);
            record.key = key;
            record.topic = topic;
            runtime.block_on(async {
                let mut uow = store.begin().await.expect("begin");
                let projected = projection.handle(&mut uow, &record).await;
                let reacted = reaction.handle(&mut uow, &record).await;
                handled.set(handled.get() + usize::from(projected.is_ok() && reacted.is_ok()));
                uow.rollback().await.expect("rollback");
            });
            Ok(())
        },
    );
    assert!(
        handled.get() > 0,
        "some records are handled, not all refused"
    );
}
