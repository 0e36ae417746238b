//! Event schemas as contracts: the snapshot of a release's event types, and the code of the next
//! release checked against it. Each module below is one "next release" of the same `OrderEvent`
//! (the names are stable: `order.placed`, `order.paid`, `order.cancelled`); the check must accept
//! the compatible changes and refuse each breaking one with a message naming the event type, the
//! version and the field.
#![deny(warnings, unused_results, rust_2018_idioms)]

use std::path::{Path, PathBuf};

use eventfold::schema::{
    ChangeKind, EventSchemas, SchemaChange, SchemaCheckError, SchemaError, Snapshot,
};
use eventfold::{CodecError, Event, EventTypeInfo, Upcasters};

/// The recorded release.
mod v1 {
    use eventfold::{Event, PayloadSchema};
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, PayloadSchema)]
    pub struct Line {
        pub sku: String,
        pub qty: u32,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, PayloadSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum Method {
        Card,
        BankTransfer { iban: String },
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, PayloadSchema)]
    pub struct PaymentInfo {
        pub method: Method,
        #[serde(rename = "amount")]
        pub cents: u64,
    }

    #[derive(Debug, Clone, PartialEq, Event)]
    pub enum OrderEvent {
        Placed {
            customer: String,
            total_cents: u64,
            #[serde(default)]
            note: Option<String>,
            lines: Vec<Line>,
        },
        Paid(PaymentInfo),
        Cancelled,
    }
}

/// `Placed` gains two fields with defaults: compatible.
mod added_with_default {
    use eventfold::Event;

    pub use super::v1::{Line, PaymentInfo};

    #[derive(Debug, Clone, PartialEq, Event)]
    pub enum OrderEvent {
        Placed {
            customer: String,
            total_cents: u64,
            #[serde(default)]
            note: Option<String>,
            lines: Vec<Line>,
            #[serde(default)]
            gift: bool,
            coupon: Option<String>,
        },
        Paid(PaymentInfo),
        Cancelled,
    }
}

/// `Placed` lost `note`, and `customer` is now `buyer`: refused.
mod removed_and_renamed {
    use eventfold::Event;

    pub use super::v1::{Line, PaymentInfo};

    #[derive(Debug, Clone, PartialEq, Event)]
    pub enum OrderEvent {
        Placed {
            buyer: String,
            total_cents: u64,
            lines: Vec<Line>,
        },
        Paid(PaymentInfo),
        Cancelled,
    }
}

/// `customer` renamed in Rust only, or read under its old name with an alias: compatible.
mod renamed_compatibly {
    use eventfold::Event;

    pub use super::v1::{Line, PaymentInfo};

    #[derive(Debug, Clone, PartialEq, Event)]
    pub enum OrderEvent {
        Placed {
            #[serde(rename = "customer")]
            buyer: String,
            #[serde(rename = "total", alias = "total_cents")]
            total_cents: u64,
            #[serde(default)]
            note: Option<String>,
            lines: Vec<Line>,
        },
        Paid(PaymentInfo),
        Cancelled,
    }
}

/// `total_cents` is now signed, `currency` is new without a default, a line's `qty` is a `u64`
/// and the bank transfer is gone: refused.
mod retyped {
    use eventfold::{Event, PayloadSchema};
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, PayloadSchema)]
    pub struct Line {
        pub sku: String,
        pub qty: u64,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, PayloadSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum Method {
        Card,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, PayloadSchema)]
    pub struct PaymentInfo {
        pub method: Method,
        #[serde(rename = "amount")]
        pub cents: u64,
    }

    #[derive(Debug, Clone, PartialEq, Event)]
    pub enum OrderEvent {
        Placed {
            customer: String,
            total_cents: i64,
            #[serde(default)]
            note: Option<String>,
            lines: Vec<Line>,
            currency: String,
        },
        Paid(PaymentInfo),
        Cancelled,
    }
}

/// `order.placed` version 2 (totals in a `Money` object), `order.cancelled` gone, `order.refunded`
/// new. Compatible only with upcasters from `order.placed` v1 and `order.cancelled` v1.
mod version_2 {
    use eventfold::Event;

    pub use super::v1::{Line, PaymentInfo};

    #[derive(Debug, Clone, PartialEq, Event)]
    pub enum OrderEvent {
        #[event(version = 2)]
        Placed {
            customer: String,
            total: String,
            lines: Vec<Line>,
        },
        Paid(PaymentInfo),
        Refunded {
            cents: u64,
        },
    }
}

fn upcasters_to_v2() -> Upcasters {
    Upcasters::new()
        .json("order.placed", 1, |mut payload| {
            payload["total"] = serde_json::json!(payload["total_cents"].to_string());
            Ok(payload)
        })
        .rename("order.cancelled", 1, "order.refunded", 1)
}

/// A snapshot file in the temporary directory, removed at the end of the test.
struct TempSnapshot(PathBuf);

impl TempSnapshot {
    /// The snapshot of `schemas`, written.
    fn of(schemas: &EventSchemas) -> Self {
        let path = std::env::temp_dir().join(format!(
            "eventfold-schemas-{}.json",
            uuid::Uuid::now_v7().simple()
        ));
        let written = schemas.write_file(&path).expect("write the snapshot");
        assert!(written.created);
        TempSnapshot(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn read(&self) -> Snapshot {
        Snapshot::read(&self.0).expect("read the snapshot")
    }
}

impl Drop for TempSnapshot {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn release_1() -> TempSnapshot {
    TempSnapshot::of(&EventSchemas::new().register::<v1::OrderEvent>())
}

/// The check's error when it must refuse a breaking change.
fn breaking(schemas: &EventSchemas, snapshot: &TempSnapshot) -> (Vec<SchemaChange>, String) {
    match schemas.check_file(snapshot.path()) {
        Err(e @ SchemaCheckError::Breaking { .. }) => {
            let message = e.to_string();
            let changes = e
                .changes()
                .iter()
                .filter(|c| c.is_breaking())
                .cloned()
                .collect();
            (changes, message)
        }
        other => panic!("expected a breaking change, got {other:?}"),
    }
}

fn change(event_type: &str, version: u32, field: Option<&str>, kind: ChangeKind) -> SchemaChange {
    SchemaChange::new(event_type, version, field, kind)
}

#[test]
fn the_snapshot_of_a_release_is_sorted_stable_json() {
    let snapshot = release_1();
    let text = std::fs::read_to_string(snapshot.path()).unwrap();
    assert_eq!(
        text,
        r#"{
  "format": 1,
  "events": [
    {
      "event_type": "order.cancelled",
      "version": 1,
      "codec": "json",
      "fields": []
    },
    {
      "event_type": "order.paid",
      "version": 1,
      "codec": "json",
      "payload": "PaymentInfo",
      "types": {
        "Method": {
          "variants": [
            {
              "name": "bank_transfer",
              "fields": [
                {
                  "name": "iban",
                  "type": "String"
                }
              ]
            },
            {
              "name": "card"
            }
          ]
        },
        "PaymentInfo": {
          "fields": [
            {
              "name": "amount",
              "type": "u64"
            },
            {
              "name": "method",
              "type": "Method"
            }
          ]
        }
      }
    },
    {
      "event_type": "order.placed",
      "version": 1,
      "codec": "json",
      "fields": [
        {
          "name": "customer",
          "type": "String"
        },
        {
          "name": "lines",
          "type": "Vec<Line>"
        },
        {
          "name": "note",
          "type": "Option<String>",
          "default": true
        },
        {
          "name": "total_cents",
          "type": "u64"
        }
      ],
      "types": {
        "Line": {
          "fields": [
            {
              "name": "qty",
              "type": "u32"
            },
            {
              "name": "sku",
              "type": "String"
            }
          ]
        }
      }
    }
  ]
}
"#
    );
    // It reads back as it was written, and the same code checks clean against it.
    let schemas = EventSchemas::new().register::<v1::OrderEvent>();
    assert_eq!(snapshot.read(), schemas.snapshot(None).unwrap());
    assert_eq!(snapshot.read().to_json(), text);
    schemas.check_file(snapshot.path()).unwrap();
    schemas.assert_compatible(snapshot.path());
    // Writing again leaves the file alone.
    let written = schemas.write_file(snapshot.path()).unwrap();
    assert!(written.unchanged && !written.created && written.changes.is_empty());
}

#[test]
fn a_schema_field_added_with_a_default_is_compatible_and_recorded_on_purpose() {
    let snapshot = release_1();
    let schemas = EventSchemas::new().register::<added_with_default::OrderEvent>();
    let changes = schemas.changes(&snapshot.read()).unwrap();
    assert_eq!(
        changes,
        [
            change(
                "order.placed",
                1,
                Some("coupon"),
                ChangeKind::FieldAdded {
                    ty: "Option<String>".into()
                }
            ),
            change(
                "order.placed",
                1,
                Some("gift"),
                ChangeKind::FieldAdded { ty: "bool".into() }
            ),
        ]
    );
    // Compatible, but not recorded yet: the check says so, and `write_file` records it.
    let err = schemas.check_file(snapshot.path()).unwrap_err();
    assert!(matches!(err, SchemaCheckError::Unrecorded { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("`order.placed` version 1, field `coupon`: added with a default"),
        "{err}"
    );
    let written = schemas.write_file(snapshot.path()).unwrap();
    assert_eq!(written.changes, changes);
    schemas.check_file(snapshot.path()).unwrap();
}

#[test]
fn a_schema_field_removed_or_renamed_is_refused() {
    let snapshot = release_1();
    let schemas = EventSchemas::new().register::<removed_and_renamed::OrderEvent>();
    let (changes, message) = breaking(&schemas, &snapshot);
    assert_eq!(
        changes,
        [
            change(
                "order.placed",
                1,
                Some("customer"),
                ChangeKind::FieldRemoved {
                    ty: "String".into()
                }
            ),
            change(
                "order.placed",
                1,
                Some("note"),
                ChangeKind::FieldRemoved {
                    ty: "Option<String>".into()
                }
            ),
            change(
                "order.placed",
                1,
                Some("buyer"),
                ChangeKind::FieldAddedWithoutDefault {
                    ty: "String".into()
                }
            ),
        ]
    );
    for expected in [
        "`order.placed` version 1, field `customer`: removed or renamed (it was `String`)",
        "`order.placed` version 1, field `note`: removed or renamed (it was `Option<String>`)",
        "`order.placed` version 1, field `buyer`: added without a default (`String`)",
    ] {
        assert!(
            message.contains(expected),
            "{expected:?} not in:\n{message}"
        );
    }
}

#[test]
fn a_schema_field_renamed_in_rust_only_or_with_an_alias_is_compatible() {
    let snapshot = release_1();
    let schemas = EventSchemas::new().register::<renamed_compatibly::OrderEvent>();
    let changes = schemas.changes(&snapshot.read()).unwrap();
    // `total_cents` is written as `total` now, and read under both names.
    assert_eq!(
        changes,
        [change("order.placed", 1, None, ChangeKind::Redescribed)]
    );
    assert!(!changes[0].is_breaking());
}

#[test]
fn a_schema_type_change_or_a_field_without_default_is_refused_down_to_described_types() {
    let snapshot = release_1();
    let schemas = EventSchemas::new().register::<retyped::OrderEvent>();
    let (changes, message) = breaking(&schemas, &snapshot);
    assert_eq!(
        changes,
        [
            change(
                "order.paid",
                1,
                Some("Method::bank_transfer"),
                ChangeKind::VariantRemoved
            ),
            change(
                "order.placed",
                1,
                Some("total_cents"),
                ChangeKind::FieldTypeChanged {
                    from: "u64".into(),
                    to: "i64".into()
                }
            ),
            change(
                "order.placed",
                1,
                Some("currency"),
                ChangeKind::FieldAddedWithoutDefault {
                    ty: "String".into()
                }
            ),
            change(
                "order.placed",
                1,
                Some("Line.qty"),
                ChangeKind::FieldTypeChanged {
                    from: "u32".into(),
                    to: "u64".into()
                }
            ),
        ]
    );
    for expected in [
        "`order.placed` version 1, field `total_cents`: type changed from `u64` to `i64`",
        "`order.placed` version 1, field `currency`: added without a default (`String`)",
        "`order.placed` version 1, field `Line.qty`: type changed from `u32` to `u64`",
        "`order.paid` version 1, variant `Method::bank_transfer`: removed or renamed",
    ] {
        assert!(
            message.contains(expected),
            "{expected:?} not in:\n{message}"
        );
    }
}

#[test]
fn a_schema_version_or_type_dropped_without_an_upcaster_is_refused() {
    let snapshot = release_1();
    let schemas = EventSchemas::new().register::<version_2::OrderEvent>();
    let (changes, message) = breaking(&schemas, &snapshot);
    assert_eq!(
        changes,
        [
            change("order.cancelled", 1, None, ChangeKind::EventTypeRemoved),
            change(
                "order.placed",
                1,
                None,
                ChangeKind::VersionRemoved { current: 2 }
            ),
        ]
    );
    assert!(message.contains(
        "`order.placed` version 1: the code now has version 2 and no upcaster from version 1 is registered"
    ), "{message}");
    assert!(message.contains(
        "`order.cancelled` version 1: the event type was removed from the code and no upcaster reads this version"
    ), "{message}");
    // Only half of the chain: `order.cancelled` is renamed to a type the code does not have.
    let schemas =
        schemas.upcasters(&Upcasters::new().rename("order.cancelled", 1, "order.voided", 1));
    let (changes, _) = breaking(&schemas, &snapshot);
    assert_eq!(
        changes[0],
        change(
            "order.cancelled",
            1,
            None,
            ChangeKind::UpcastDeadEnd {
                event_type: "order.voided".into(),
                version: 1
            }
        )
    );
}

#[test]
fn a_schema_version_dropped_with_an_upcaster_is_compatible_and_stays_known() {
    let snapshot = release_1();
    let upcasters = upcasters_to_v2();
    let schemas = EventSchemas::new()
        .register::<version_2::OrderEvent>()
        .upcasters(&upcasters);
    let changes = schemas.changes(&snapshot.read()).unwrap();
    assert_eq!(
        changes,
        [
            change("order.placed", 2, None, ChangeKind::VersionAdded),
            change("order.refunded", 1, None, ChangeKind::EventTypeAdded),
        ]
    );
    let written = schemas.write_file(snapshot.path()).unwrap();
    assert_eq!(written.changes, changes);
    schemas.check_file(snapshot.path()).unwrap();
    // The snapshot keeps the versions the upcasters read, so they stay known.
    let kept: Vec<(String, u32)> = snapshot
        .read()
        .events
        .iter()
        .map(|e| (e.event_type.clone(), e.version))
        .collect();
    let expected = [
        ("order.cancelled", 1),
        ("order.paid", 1),
        ("order.placed", 1),
        ("order.placed", 2),
        ("order.refunded", 1),
    ];
    assert_eq!(kept, expected.map(|(t, v)| (t.to_owned(), v)).to_vec());
    // Dropping the upcaster later is refused against the kept version.
    let without = EventSchemas::new()
        .register::<version_2::OrderEvent>()
        .upcasters(&Upcasters::new().rename("order.cancelled", 1, "order.refunded", 1));
    let (changes, _) = breaking(&without, &snapshot);
    assert_eq!(
        changes,
        [change(
            "order.placed",
            1,
            None,
            ChangeKind::VersionRemoved { current: 2 }
        )]
    );
    // Writing on purpose accepts it: the version is dropped from the snapshot, and the check
    // passes again.
    let written = without.write_file(snapshot.path()).unwrap();
    assert_eq!(
        written.changes.iter().filter(|c| c.is_breaking()).count(),
        1
    );
    assert!(
        written
            .to_string()
            .contains("accepted 1 BREAKING change(s)"),
        "{written}"
    );
    without.check_file(snapshot.path()).unwrap();
    assert!(snapshot.read().get("order.placed", 1).is_none());
}

#[test]
fn a_schema_event_type_added_is_compatible() {
    let snapshot = TempSnapshot::of(&EventSchemas::new().register::<v1::OrderEvent>());
    let schemas = EventSchemas::new()
        .register::<v1::OrderEvent>()
        .register::<CustomerEvent>();
    assert_eq!(
        schemas.changes(&snapshot.read()).unwrap(),
        [change(
            "customer.registered",
            1,
            None,
            ChangeKind::EventTypeAdded
        )]
    );
}

#[derive(Debug, Clone, PartialEq, Event)]
enum CustomerEvent {
    Registered {
        email: String,
        #[serde(flatten)]
        address: Address,
        #[serde(skip)]
        cached: u8,
        #[serde(with = "as_text")]
        since: u64,
        id: CustomerId,
        kind: Kind,
    },
}

#[derive(
    Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, eventfold::PayloadSchema,
)]
#[serde(transparent)]
struct CustomerId(String);

#[derive(
    Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, eventfold::PayloadSchema,
)]
#[serde(tag = "type", rename_all = "kebab-case")]
enum Kind {
    PrivatePerson,
    #[serde(alias = "firm")]
    Company {
        #[serde(rename = "VAT")]
        vat: String,
    },
}

#[derive(
    Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, eventfold::PayloadSchema,
)]
#[serde(rename_all = "camelCase", default)]
struct Address {
    street_name: String,
    zip: String,
}

impl Default for Address {
    fn default() -> Self {
        Address {
            street_name: String::new(),
            zip: "00000".into(),
        }
    }
}

mod as_text {
    use serde::{Deserialize, Deserializer, Serializer};

    #[allow(clippy::trivially_copy_pass_by_ref)] // the signature serde expects
    pub(crate) fn serialize<S: Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&value.to_string())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[test]
fn a_schema_follows_serde_flatten_skip_with_and_container_defaults() {
    let snapshot = EventSchemas::new()
        .register::<CustomerEvent>()
        .snapshot(None)
        .unwrap();
    let text = snapshot.to_json();
    let registered: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        registered["events"][0]["fields"],
        serde_json::json!([
            { "name": "email", "type": "String" },
            { "name": "id", "type": "CustomerId" },
            { "name": "kind", "type": "Kind" },
            { "name": "since", "type": "u64 with as_text" },
            { "name": "streetName", "type": "String", "default": true },
            { "name": "zip", "type": "String", "default": true },
        ])
    );
    assert_eq!(
        registered["events"][0]["types"]["CustomerId"],
        serde_json::json!({ "payload": "String" })
    );
    assert_eq!(
        registered["events"][0]["types"]["Kind"],
        serde_json::json!({
            "variants": [
                { "name": "company", "aliases": ["firm"], "fields": [{ "name": "VAT", "type": "String" }] },
                { "name": "private-person" },
            ],
            "representation": "tag = \"type\"",
        })
    );
    // What the schema says is what serde reads.
    let event = CustomerEvent::decode(
        "customer.registered",
        br#"{"email":"a@b","since":"7","id":"c-1","kind":{"type":"firm","VAT":"x"}}"#,
    )
    .unwrap();
    let CustomerEvent::Registered { address, since, .. } = event;
    assert_eq!((address.zip.as_str(), since), ("00000", 7));
}

/// A hand-written `impl Event` without `schemas()`.
#[derive(Debug)]
struct Legacy;

impl Event for Legacy {
    const CONTENT_TYPE: &'static str = "application/json";
    fn event_type(&self) -> &'static str {
        "legacy.happened"
    }
    fn schema_version(&self) -> u32 {
        1
    }
    fn event_types() -> &'static [EventTypeInfo] {
        &[EventTypeInfo {
            name: "legacy.happened",
            version: 1,
            variant: "Legacy",
        }]
    }
    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        Ok(b"{}".to_vec())
    }
    fn decode(_: &str, _: &[u8]) -> Result<Self, CodecError> {
        Ok(Legacy)
    }
}

#[test]
fn a_schema_that_cannot_be_known_or_read_is_reported_clearly() {
    let snapshot = release_1();
    let schemas = EventSchemas::new()
        .register::<v1::OrderEvent>()
        .register::<Legacy>();
    let err = schemas.check_file(snapshot.path()).unwrap_err();
    assert!(
        matches!(&err, SchemaCheckError::Schema(SchemaError::NoSchema { rust_type }) if rust_type.ends_with("Legacy")),
        "{err:?}"
    );
    assert!(err.to_string().contains(
        "does not describe its event schemas (a hand-written `impl Event` without `schemas()`)"
    ));

    // Two enums defining one type differently.
    let err = EventSchemas::new()
        .register::<v1::OrderEvent>()
        .register::<version_2::OrderEvent>()
        .snapshot(None)
        .unwrap_err();
    assert!(
        matches!(&err, SchemaError::Conflict { event_type, .. } if event_type == "order.paid" || event_type == "order.placed"),
        "{err}"
    );

    // No snapshot yet, or a file that is not one.
    let missing = std::env::temp_dir().join("eventfold-no-such-snapshot.json");
    let err = EventSchemas::new().check_file(&missing).unwrap_err();
    assert!(matches!(
        err,
        SchemaCheckError::Schema(SchemaError::NoSnapshot { .. })
    ));
    assert!(
        err.to_string().contains("create it with `schema write`"),
        "{err}"
    );
    std::fs::write(snapshot.path(), "<<<<<<< HEAD").unwrap();
    let err = EventSchemas::new().write_file(snapshot.path()).unwrap_err();
    assert!(matches!(err, SchemaError::Parse { .. }), "{err}");
}

#[test]
#[should_panic(expected = "`order.placed` version 1, field `customer`: removed or renamed")]
fn a_schema_assertion_panics_with_the_report() {
    let snapshot = release_1();
    EventSchemas::new()
        .register::<removed_and_renamed::OrderEvent>()
        .assert_compatible(snapshot.path());
}

#[cfg(feature = "proto")]
mod protobuf {
    //! Protobuf events are described from the `FileDescriptorSet` of their build. The tests
    //! build that set by hand (what `protoc` would emit), one per release of the `.proto` file.
    use eventfold::Event;
    use eventfold::schema::{ChangeKind, EventSchemas, SchemaError, Shape};

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct UserRegistered {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub email: String,
    }

    #[derive(Debug, Clone, PartialEq, Event)]
    #[event(codec = "protobuf")]
    enum UserEvent {
        Registered(UserRegistered),
    }

    // The part of descriptor.proto a FileDescriptorSet needs here.
    #[derive(Clone, PartialEq, prost::Message)]
    struct FileDescriptorSet {
        #[prost(message, repeated, tag = "1")]
        file: Vec<FileDescriptorProto>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct FileDescriptorProto {
        #[prost(string, tag = "2")]
        package: String,
        #[prost(message, repeated, tag = "4")]
        message_type: Vec<DescriptorProto>,
        #[prost(string, tag = "12")]
        syntax: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct DescriptorProto {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(message, repeated, tag = "2")]
        field: Vec<FieldDescriptorProto>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct FieldDescriptorProto {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(int32, tag = "3")]
        number: i32,
        #[prost(int32, tag = "4")]
        label: i32,
        #[prost(int32, tag = "5")]
        r#type: i32,
    }

    const STRING: i32 = 9;
    const BYTES: i32 = 12;
    const INT64: i32 = 3;

    /// `message UserRegistered { ... }` in package `users`, proto3.
    fn descriptors(fields: &[(&str, i32, i32)]) -> Vec<u8> {
        let message = DescriptorProto {
            name: "UserRegistered".into(),
            field: fields
                .iter()
                .map(|&(name, number, ty)| FieldDescriptorProto {
                    name: name.into(),
                    number,
                    label: 1,
                    r#type: ty,
                })
                .collect(),
        };
        prost::Message::encode_to_vec(&FileDescriptorSet {
            file: vec![FileDescriptorProto {
                package: "users".into(),
                message_type: vec![message],
                syntax: "proto3".into(),
            }],
        })
    }

    fn schemas(fields: &[(&str, i32, i32)]) -> EventSchemas {
        EventSchemas::new()
            .register::<UserEvent>()
            .protobuf_descriptors(&descriptors(fields))
            .unwrap()
    }

    #[test]
    fn a_protobuf_schema_comes_from_the_descriptors_and_refuses_breaking_changes() {
        let release_1 = schemas(&[("name", 1, STRING), ("email", 2, STRING)])
            .snapshot(None)
            .unwrap();
        let event = &release_1.events[0];
        assert_eq!(
            (event.codec.as_str(), event.message.as_deref()),
            ("protobuf", Some("users.UserRegistered"))
        );
        let Shape::Fields(fields) = &event.shape else {
            panic!("fields expected: {event:?}")
        };
        let fields: Vec<(&str, &str)> = fields
            .iter()
            .map(|f| (f.name.as_str(), f.ty.as_str()))
            .collect();
        assert_eq!(fields, [("email", "string = 2"), ("name", "string = 1")]);

        // A field added (every proto3 field has a default): compatible.
        let added = schemas(&[("name", 1, STRING), ("email", 2, STRING), ("age", 3, INT64)]);
        let changes = added.changes(&release_1).unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(
            changes[0].kind,
            ChangeKind::FieldAdded {
                ty: "int64 = 3".into()
            }
        );

        // Removed, retyped, renumbered: refused, each naming the field.
        let changed = schemas(&[("name", 3, STRING), ("email", 2, BYTES)]);
        let messages: Vec<String> = changed
            .changes(&release_1)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            messages,
            [
                "`user.registered` version 1, field `email`: type changed from `string = 2` to `bytes = 2`: bump the version and register an upcaster",
                "`user.registered` version 1, field `name`: type changed from `string = 1` to `string = 3`: bump the version and register an upcaster",
            ]
        );
        let removed = schemas(&[("name", 1, STRING)]);
        let change = &removed.changes(&release_1).unwrap()[0];
        assert!(change.is_breaking());
        assert_eq!(change.field.as_deref(), Some("email"));
    }

    /// A message type named otherwise in Rust, found by its `prost::Name`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SignedUp {
        #[prost(string, tag = "1")]
        pub name: String,
    }

    impl prost::Name for SignedUp {
        const NAME: &'static str = "UserRegistered";
        const PACKAGE: &'static str = "users";
    }

    #[derive(Debug, Clone, PartialEq, Event)]
    #[event(codec = "protobuf", prefix = "account")]
    enum AccountEvent {
        SignedUp(SignedUp),
    }

    #[test]
    fn a_protobuf_schema_message_is_found_by_its_prost_name() {
        let snapshot = EventSchemas::new()
            .register::<AccountEvent>()
            .protobuf_descriptors(&descriptors(&[("name", 1, STRING)]))
            .unwrap()
            .snapshot(None)
            .unwrap();
        assert_eq!(snapshot.events[0].event_type, "account.signed_up");
        assert_eq!(
            snapshot.events[0].message.as_deref(),
            Some("users.UserRegistered")
        );
    }

    #[test]
    fn a_protobuf_schema_without_descriptors_is_reported() {
        let err = EventSchemas::new()
            .register::<UserEvent>()
            .snapshot(None)
            .unwrap_err();
        assert!(matches!(err, SchemaError::Protobuf { .. }));
        assert!(
            err.to_string().starts_with(
                "`user.registered` version 1 (protobuf): no protobuf descriptors were given"
            ),
            "{err}"
        );
    }
}

#[cfg(feature = "cli")]
mod cli {
    //! `schema check` and `schema write` from an application's binary (the embedded command
    //! line), and the standalone binary, which has no event types.
    use clap::Parser;
    use eventfold::cli::{Cli, CliError};
    use eventfold::eventstore::memory::MemoryStore;
    use eventfold::projections::Projections;
    use eventfold::schema::EventSchemas;
    use serde_json::Value;

    use super::{TempSnapshot, removed_and_renamed, v1};

    async fn admin(schemas: &EventSchemas, args: &[&str]) -> (Result<(), CliError>, String) {
        let projections = Projections::new(MemoryStore::new());
        let cli =
            Cli::try_parse_from(std::iter::once("orders-service").chain(args.iter().copied()))
                .expect("parse");
        let mut out = Vec::new();
        let result = cli
            .command
            .execute_with_schemas(&projections, schemas, &mut out)
            .await;
        (result, String::from_utf8(out).expect("utf-8"))
    }

    #[tokio::test]
    async fn schema_write_then_check_from_the_application_binary() {
        let release_1 = EventSchemas::new().register::<v1::OrderEvent>();
        let file = TempSnapshot(std::env::temp_dir().join(format!(
            "eventfold-cli-schemas-{}.json",
            uuid::Uuid::now_v7().simple()
        )));
        let path = file.path().to_str().unwrap();

        let (result, out) = admin(&release_1, &["schema", "write", "--path", path]).await;
        result.unwrap();
        assert_eq!(out, format!("wrote {path}: 3 event schema(s)\n"));

        let (result, out) = admin(&release_1, &["schema", "check", "--path", path]).await;
        result.unwrap();
        assert_eq!(
            out,
            format!("{path}: the code's 3 event schema(s) match the snapshot\n")
        );

        // The next release removes a field: refused, with the report on stdout under --json.
        let next = EventSchemas::new().register::<removed_and_renamed::OrderEvent>();
        let (result, out) = admin(&next, &["schema", "check", "--path", path, "--json"]).await;
        let err = result.unwrap_err();
        assert!(matches!(
            err,
            CliError::Schema {
                command: "check",
                ..
            }
        ));
        assert!(
            err.to_string().starts_with(&format!(
                "schema check: 3 breaking change(s) to the event schemas recorded in {path}:"
            )),
            "{err}"
        );
        let report: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(report["status"], "breaking");
        assert_eq!(report["schemas"], 3);
        assert_eq!(report["changes"][0]["event_type"], "order.placed");
        assert_eq!(report["changes"][0]["version"], 1);
        assert_eq!(report["changes"][0]["field"], "customer");
        assert_eq!(report["changes"][0]["kind"], "field_removed");
        assert_eq!(report["changes"][0]["type"], "String");
        assert_eq!(report["changes"][0]["breaking"], true);

        // Writing on purpose accepts it.
        let (result, out) = admin(&next, &["schema", "write", "--path", path, "--json"]).await;
        result.unwrap();
        let written: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(written["changes"].as_array().map(Vec::len), Some(3));
        let (result, _) = admin(&next, &["schema", "check", "--path", path]).await;
        result.unwrap();
    }

    #[tokio::test]
    async fn schema_commands_without_the_application_schemas_say_so() {
        let projections = Projections::new(MemoryStore::new());
        let cli = Cli::try_parse_from(["admin", "schema", "check"]).unwrap();
        let err = cli
            .command
            .execute(&projections, &mut Vec::new())
            .await
            .unwrap_err();
        assert!(matches!(err, CliError::NoEventSchemas));
    }

    #[cfg(all(feature = "postgres", feature = "sqlite"))]
    #[test]
    fn schema_check_from_the_standalone_binary_explains_that_it_has_no_event_types() {
        let output = assert_cmd::Command::cargo_bin("eventfold")
            .expect("the eventfold binary")
            .env_remove("DATABASE_URL")
            .args(["schema", "check"])
            .output()
            .expect("run eventfold");
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(
            stderr,
            "eventfold: error: `schema` needs the application's event types: run it from the \
             application's binary, which passes its `EventSchemas` to \
             `Command::run_with_schemas` (this program has none)\n"
        );
    }
}
