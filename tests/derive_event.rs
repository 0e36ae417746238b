//! Integration tests of `#[derive(Event)]` and `#[aggregate]` through the `eventfold` facade.
//!
//! The `deny` list makes sure the generated code is warning-free in a strict user crate.
#![deny(
    warnings,
    unused_qualifications,
    unused_lifetimes,
    single_use_lifetimes,
    unused_results,
    rust_2018_idioms,
    missing_debug_implementations,
    unsafe_code
)]

use eventfold::{Aggregate, CodecError, Event, EventTypeInfo};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Parses a payload as JSON, to compare shapes rather than bytes.
fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("payload is JSON")
}

/// Encodes then decodes under the event's own type name.
fn round_trip<E: Event + std::fmt::Debug + PartialEq>(event: &E) -> E {
    let bytes = event.encode().expect("encode");
    E::decode(event.event_type(), &bytes).expect("decode")
}

mod as_string {
    //! `#[serde(with = "as_string")]`: a number written as a JSON string.
    use serde::{Deserialize, Deserializer, Serializer};

    #[allow(clippy::trivially_copy_pass_by_ref)] // the signature serde expects
    pub fn serialize<S: Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&value.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PaymentInfo {
    method: String,
    amount_cents: u64,
}

#[derive(Debug, Clone, PartialEq, Event)]
enum OrderEvent {
    Placed {
        customer: String,
        total_cents: u64,
    },
    ItemAdded {
        sku: String,
        #[serde(default)]
        quantity: u32,
        #[serde(rename = "note_text", default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    Paid(PaymentInfo),
    #[event(name = "order.shipped.v2", version = 3)]
    Shipped {
        carrier: String,
    },
    #[event(version = 2)]
    Refunded(#[serde(with = "as_string")] u64),
    Discounted {
        #[serde(with = "as_string")]
        cents: u64,
        r#type: String,
    },
    Cancelled,
}

fn all_order_events() -> Vec<OrderEvent> {
    vec![
        OrderEvent::Placed {
            customer: "ada".into(),
            total_cents: 1250,
        },
        OrderEvent::ItemAdded {
            sku: "SKU-1".into(),
            quantity: 2,
            note: Some("gift".into()),
        },
        OrderEvent::ItemAdded {
            sku: "SKU-2".into(),
            quantity: 1,
            note: None,
        },
        OrderEvent::Paid(PaymentInfo {
            method: "card".into(),
            amount_cents: 1250,
        }),
        OrderEvent::Shipped {
            carrier: "ups".into(),
        },
        OrderEvent::Refunded(42),
        OrderEvent::Discounted {
            cents: 7,
            r#type: "coupon".into(),
        },
        OrderEvent::Cancelled,
    ]
}

#[test]
fn default_names_are_prefix_dot_snake_case_variant() {
    let names: Vec<&str> = all_order_events().iter().map(Event::event_type).collect();
    assert_eq!(
        names,
        [
            "order.placed",
            "order.item_added",
            "order.item_added",
            "order.paid",
            "order.shipped.v2",
            "order.refunded",
            "order.discounted",
            "order.cancelled",
        ]
    );
}

#[test]
fn versions_default_to_one_and_can_be_overridden() {
    let versions: Vec<u32> = all_order_events()
        .iter()
        .map(Event::schema_version)
        .collect();
    assert_eq!(versions, [1, 1, 1, 1, 3, 2, 1, 1]);
    assert_eq!(OrderEvent::current_version("order.shipped.v2"), Some(3));
    assert_eq!(OrderEvent::current_version("order.placed"), Some(1));
    assert_eq!(OrderEvent::current_version("order.shipped"), None);
}

#[test]
fn event_types_lists_every_variant_in_order() {
    let info = |name, version, variant| EventTypeInfo {
        name,
        version,
        variant,
    };
    assert_eq!(
        OrderEvent::event_types(),
        [
            info("order.placed", 1, "Placed"),
            info("order.item_added", 1, "ItemAdded"),
            info("order.paid", 1, "Paid"),
            info("order.shipped.v2", 3, "Shipped"),
            info("order.refunded", 2, "Refunded"),
            info("order.discounted", 1, "Discounted"),
            info("order.cancelled", 1, "Cancelled"),
        ]
    );
}

#[test]
fn json_content_type_by_default() {
    assert_eq!(OrderEvent::CONTENT_TYPE, "application/json");
    assert_eq!(
        OrderEvent::CONTENT_TYPE,
        eventfold::codec::json::CONTENT_TYPE
    );
}

#[test]
fn every_variant_round_trips() {
    for event in all_order_events() {
        assert_eq!(round_trip(&event), event, "round trip of {event:?}");
    }
}

#[test]
fn struct_variant_payload_is_an_object_of_its_fields() {
    let event = OrderEvent::Placed {
        customer: "ada".into(),
        total_cents: 1250,
    };
    assert_eq!(
        json_of(&event.encode().unwrap()),
        json!({"customer": "ada", "total_cents": 1250})
    );
    let decoded =
        OrderEvent::decode("order.placed", br#"{"total_cents": 5, "customer": "bob"}"#).unwrap();
    assert_eq!(
        decoded,
        OrderEvent::Placed {
            customer: "bob".into(),
            total_cents: 5
        }
    );
}

#[test]
fn newtype_variant_payload_is_the_inner_value() {
    let event = OrderEvent::Paid(PaymentInfo {
        method: "cash".into(),
        amount_cents: 300,
    });
    assert_eq!(
        json_of(&event.encode().unwrap()),
        json!({"method": "cash", "amount_cents": 300})
    );
}

#[test]
fn unit_variant_payload_is_an_empty_object() {
    assert_eq!(OrderEvent::Cancelled.encode().unwrap(), b"{}");
    assert_eq!(
        OrderEvent::decode("order.cancelled", b"{}").unwrap(),
        OrderEvent::Cancelled
    );
    // Extra fields (added by a later schema, say) are ignored.
    assert_eq!(
        OrderEvent::decode("order.cancelled", br#"{"reason": "late"}"#).unwrap(),
        OrderEvent::Cancelled
    );
}

#[test]
fn serde_field_attributes_are_forwarded() {
    // `default`: a payload without `quantity` (nor `note_text`) decodes.
    let decoded = OrderEvent::decode("order.item_added", br#"{"sku": "SKU-9"}"#).unwrap();
    assert_eq!(
        decoded,
        OrderEvent::ItemAdded {
            sku: "SKU-9".into(),
            quantity: 0,
            note: None
        }
    );

    // `rename` and `skip_serializing_if` on encode.
    let with_note = OrderEvent::ItemAdded {
        sku: "A".into(),
        quantity: 1,
        note: Some("gift".into()),
    };
    assert_eq!(
        json_of(&with_note.encode().unwrap()),
        json!({"sku": "A", "quantity": 1, "note_text": "gift"})
    );
    let without_note = OrderEvent::ItemAdded {
        sku: "A".into(),
        quantity: 1,
        note: None,
    };
    assert_eq!(
        json_of(&without_note.encode().unwrap()),
        json!({"sku": "A", "quantity": 1})
    );

    // `with` on a struct field and on a newtype field; raw identifiers keep their plain name.
    let discounted = OrderEvent::Discounted {
        cents: 7,
        r#type: "coupon".into(),
    };
    assert_eq!(
        json_of(&discounted.encode().unwrap()),
        json!({"cents": "7", "type": "coupon"})
    );
    assert_eq!(OrderEvent::Refunded(42).encode().unwrap(), br#""42""#);
    assert_eq!(
        OrderEvent::decode("order.refunded", br#""17""#).unwrap(),
        OrderEvent::Refunded(17)
    );
}

#[test]
fn unknown_event_type_is_reported() {
    let err = OrderEvent::decode("order.teleported", b"{}").unwrap_err();
    assert!(
        matches!(&err, CodecError::UnknownEventType { event_type } if event_type == "order.teleported"),
        "{err:?}"
    );
    // The variant's old default name is not accepted once it is renamed.
    let err = OrderEvent::decode("order.shipped", br#"{"carrier": "ups"}"#).unwrap_err();
    assert!(
        matches!(err, CodecError::UnknownEventType { .. }),
        "{err:?}"
    );
}

#[test]
fn bad_payload_is_a_decode_error_naming_the_type() {
    let err = OrderEvent::decode("order.placed", b"not json").unwrap_err();
    assert!(
        matches!(&err, CodecError::Decode { event_type, codec: "json", .. } if event_type == "order.placed"),
        "{err:?}"
    );
    assert!(err.to_string().contains("order.placed"), "{err}");

    // A missing field without `#[serde(default)]`.
    let err = OrderEvent::decode("order.placed", br#"{"customer": "ada"}"#).unwrap_err();
    assert!(matches!(err, CodecError::Decode { .. }), "{err:?}");
    assert!(err.to_string().contains("total_cents"), "{err}");

    // Newtype and unit variants go through the same error.
    let err = OrderEvent::decode("order.paid", b"[1, 2]").unwrap_err();
    assert!(
        matches!(&err, CodecError::Decode { event_type, .. } if event_type == "order.paid"),
        "{err:?}"
    );
    let err = OrderEvent::decode("order.cancelled", b"42").unwrap_err();
    assert!(
        matches!(&err, CodecError::Decode { event_type, .. } if event_type == "order.cancelled"),
        "{err:?}"
    );
}

/// The default prefix drops a trailing `Event` and is `snake_case`.
#[derive(Debug, Clone, PartialEq, Event)]
enum InventoryItemEvent {
    StockCounted { on_hand: u32 },
}

/// No `Event` suffix: the whole name is the prefix.
#[derive(Debug, Clone, PartialEq, Event)]
enum Foo {
    BarHappened,
}

/// An explicit prefix, and an explicit name that ignores it.
#[derive(Debug, Clone, PartialEq, Event)]
#[event(prefix = "inv")]
enum InventoryEvent {
    Received {
        quantity: u32,
    },
    #[event(name = "legacy-adjusted", version = 2)]
    Adjusted {
        delta: i64,
    },
}

#[test]
fn default_prefix_comes_from_the_enum_name() {
    assert_eq!(
        InventoryItemEvent::StockCounted { on_hand: 3 }.event_type(),
        "inventory_item.stock_counted"
    );
    assert_eq!(Foo::BarHappened.event_type(), "foo.bar_happened");
    assert_eq!(round_trip(&Foo::BarHappened), Foo::BarHappened);
}

#[test]
fn prefix_and_names_can_be_overridden() {
    let received = InventoryEvent::Received { quantity: 4 };
    let adjusted = InventoryEvent::Adjusted { delta: -2 };
    assert_eq!(received.event_type(), "inv.received");
    assert_eq!(adjusted.event_type(), "legacy-adjusted");
    assert_eq!(adjusted.schema_version(), 2);
    assert_eq!(round_trip(&received), received);
    assert_eq!(round_trip(&adjusted), adjusted);
    let names: Vec<&str> = InventoryEvent::event_types()
        .iter()
        .map(|info| info.name)
        .collect();
    assert_eq!(names, ["inv.received", "legacy-adjusted"]);
}

/// The enum also derives serde (both derives declare the `serde` helper attribute), and a field
/// type mentions `Self`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(prefix = "tree")]
enum TreeEvent {
    Grown {
        #[serde(default)]
        children: Vec<Self>,
    },
    Cut {},
    Pruned(),
}

#[test]
fn coexists_with_serde_derives_and_self_types() {
    let event = TreeEvent::Grown {
        children: vec![TreeEvent::Cut {}, TreeEvent::Pruned()],
    };
    assert_eq!(round_trip(&event), event);
    assert_eq!(round_trip(&TreeEvent::Cut {}), TreeEvent::Cut {});
    assert_eq!(round_trip(&TreeEvent::Pruned()), TreeEvent::Pruned());
    assert_eq!(TreeEvent::Cut {}.encode().unwrap(), b"{}");
    assert_eq!(
        TreeEvent::decode("tree.grown", b"{}").unwrap(),
        TreeEvent::Grown { children: vec![] }
    );
}

/// `crate = "..."` points the generated code at a re-export of the facade.
pub mod reexport {
    pub use eventfold as ef;
}

#[derive(Debug, Clone, PartialEq, Event)]
#[event(crate = "crate::reexport::ef", prefix = "moved")]
enum MovedEvent {
    Arrived { at: String },
}

#[test]
fn crate_path_can_be_overridden() {
    let event = MovedEvent::Arrived { at: "here".into() };
    assert_eq!(event.event_type(), "moved.arrived");
    assert_eq!(round_trip(&event), event);
}

#[cfg(feature = "proto")]
mod protobuf {
    //! `#[event(codec = "protobuf")]`: every variant wraps a `prost::Message`.
    use eventfold::{CodecError, Event};
    use prost::Message;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Registered {
        #[prost(string, tag = "1")]
        pub email: String,
        #[prost(uint32, tag = "2")]
        pub age: u32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Renamed {
        #[prost(string, tag = "1")]
        pub name: String,
    }

    #[derive(Debug, Clone, PartialEq, Event)]
    #[event(codec = "protobuf")]
    enum UserEvent {
        Registered(Registered),
        #[event(name = "user.renamed.v2", version = 2)]
        Renamed(Renamed),
    }

    fn registered() -> UserEvent {
        UserEvent::Registered(Registered {
            email: "ada@example.com".into(),
            age: 36,
        })
    }

    #[test]
    fn content_type_and_names() {
        assert_eq!(UserEvent::CONTENT_TYPE, "application/protobuf");
        assert_eq!(registered().event_type(), "user.registered");
        let renamed = UserEvent::Renamed(Renamed { name: "x".into() });
        assert_eq!(renamed.event_type(), "user.renamed.v2");
        assert_eq!(renamed.schema_version(), 2);
    }

    #[test]
    fn payload_is_the_protobuf_message() {
        let event = registered();
        let bytes = event.encode().unwrap();
        let UserEvent::Registered(inner) = &event else {
            unreachable!()
        };
        assert_eq!(bytes, inner.encode_to_vec());
        assert_eq!(Registered::decode(bytes.as_slice()).unwrap(), *inner);
        assert_eq!(UserEvent::decode("user.registered", &bytes).unwrap(), event);

        let renamed = UserEvent::Renamed(Renamed {
            name: "grace".into(),
        });
        let bytes = renamed.encode().unwrap();
        assert_eq!(
            UserEvent::decode("user.renamed.v2", &bytes).unwrap(),
            renamed
        );
    }

    #[test]
    fn errors() {
        let err = UserEvent::decode("user.deleted", &[]).unwrap_err();
        assert!(
            matches!(&err, CodecError::UnknownEventType { event_type } if event_type == "user.deleted"),
            "{err:?}"
        );
        // Field 1, length-delimited, announces 5 bytes but only 1 follows.
        let err = UserEvent::decode("user.registered", &[0x0a, 0x05, b'a']).unwrap_err();
        assert!(
            matches!(&err, CodecError::Decode { event_type, codec: "protobuf", .. } if event_type == "user.registered"),
            "{err:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// #[aggregate]
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Event)]
enum CartEvent {
    ItemAdded { sku: String },
    CheckedOut,
}

#[derive(Debug)]
enum CartCommand {
    Add(String),
    CheckOut,
}

#[derive(Debug, PartialEq, thiserror::Error)]
enum CartError {
    #[error("the cart is checked out")]
    AlreadyCheckedOut,
    #[error("the cart is empty")]
    Empty,
    #[error("the cart is full")]
    Full,
}

#[derive(Debug, Default)]
struct ShoppingCart {
    items: Vec<String>,
    checked_out: bool,
}

#[eventfold::aggregate]
impl ShoppingCart {
    /// Other items of the block stay inherent.
    const MAX_ITEMS: usize = 2;

    /// Doc comments and `pub` are accepted on `handle` and `apply`.
    pub fn handle(&self, command: &CartCommand) -> Result<Vec<CartEvent>, CartError> {
        if self.checked_out {
            return Err(CartError::AlreadyCheckedOut);
        }
        match command {
            CartCommand::Add(_) if self.is_full() => Err(CartError::Full),
            CartCommand::Add(sku) => Ok(vec![CartEvent::ItemAdded { sku: sku.clone() }]),
            CartCommand::CheckOut if self.items.is_empty() => Err(CartError::Empty),
            CartCommand::CheckOut => Ok(vec![CartEvent::CheckedOut]),
        }
    }

    fn apply(&mut self, event: &CartEvent) {
        match event {
            CartEvent::ItemAdded { sku } => self.items.push(sku.clone()),
            CartEvent::CheckedOut => self.checked_out = true,
        }
    }

    fn is_full(&self) -> bool {
        self.items.len() >= Self::MAX_ITEMS
    }

    pub fn item_count(&self) -> usize {
        self.items.len()
    }
}

#[derive(Debug, Clone, PartialEq, Event)]
enum LedgerEvent {
    Posted { amount: i64 },
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("an entry of zero")]
struct ZeroEntry;

#[derive(Debug, Default)]
struct Ledger {
    balance: i64,
}

#[eventfold::aggregate(name = "ledger_account", snapshot_version = 4)]
#[allow(unused_qualifications)] // `std::result::Result` is spelled out on purpose
impl Ledger {
    fn handle(&self, amount: &i64) -> std::result::Result<Vec<LedgerEvent>, ZeroEntry> {
        if *amount == 0 {
            Err(ZeroEntry)
        } else {
            Ok(vec![LedgerEvent::Posted { amount: *amount }])
        }
    }

    fn apply(&mut self, event: &LedgerEvent) {
        let LedgerEvent::Posted { amount } = event;
        self.balance += amount;
    }
}

#[derive(Debug, Default)]
struct OrderLine {
    total: u64,
}

#[eventfold::aggregate(crate = "crate::reexport::ef")]
#[allow(unused_qualifications)] // `core::result::Result` is spelled out on purpose
impl OrderLine {
    fn handle(&self, (): &()) -> core::result::Result<Vec<Foo>, std::convert::Infallible> {
        Ok(vec![Foo::BarHappened])
    }

    fn apply(&mut self, _: &Foo) {
        self.total += 1;
    }
}

#[test]
fn aggregate_type_defaults_to_snake_case_type_name() {
    assert_eq!(ShoppingCart::TYPE, "shopping_cart");
    assert_eq!(OrderLine::TYPE, "order_line");
    assert_eq!(Ledger::TYPE, "ledger_account");
}

#[test]
fn snapshot_version_defaults_to_one_and_can_be_set() {
    assert_eq!(ShoppingCart::SNAPSHOT_VERSION, 1);
    assert_eq!(OrderLine::SNAPSHOT_VERSION, 1);
    assert_eq!(Ledger::SNAPSHOT_VERSION, 4);
}

#[test]
fn associated_types_come_from_the_signatures() {
    fn types<A: Aggregate>() -> [&'static str; 3] {
        [
            std::any::type_name::<A::Command>(),
            std::any::type_name::<A::Event>(),
            std::any::type_name::<A::Error>(),
        ]
    }
    assert_eq!(
        types::<ShoppingCart>().map(|name| name.rsplit("::").next().unwrap_or(name)),
        ["CartCommand", "CartEvent", "CartError"]
    );
    assert_eq!(types::<Ledger>()[0], "i64");
    assert!(types::<OrderLine>()[2].ends_with("Infallible"));
}

#[test]
fn other_items_stay_inherent_and_the_trait_methods_work() {
    let cart = ShoppingCart::fold(&[
        CartEvent::ItemAdded { sku: "a".into() },
        CartEvent::ItemAdded { sku: "b".into() },
    ]);
    assert_eq!(cart.item_count(), 2);
    assert!(cart.is_full());
    assert_eq!(ShoppingCart::MAX_ITEMS, 2);
    assert_eq!(
        cart.handle(&CartCommand::Add("c".into())),
        Err(CartError::Full)
    );
    assert_eq!(
        cart.handle(&CartCommand::CheckOut),
        Ok(vec![CartEvent::CheckedOut])
    );

    let ledger = Ledger::fold(&[
        LedgerEvent::Posted { amount: 10 },
        LedgerEvent::Posted { amount: -3 },
    ]);
    assert_eq!(ledger.balance, 7);
    assert_eq!(ledger.handle(&0), Err(ZeroEntry));

    let line = OrderLine::fold(&[Foo::BarHappened]);
    assert_eq!(line.total, 1);
    assert_eq!(line.handle(&()), Ok(vec![Foo::BarHappened]));
}

#[cfg(feature = "test-util")]
mod given_when_then {
    use eventfold::testing::given;

    use super::*;

    #[test]
    fn adding_items() {
        given::<ShoppingCart>([])
            .when(CartCommand::Add("sku-1".into()))
            .then_expect_events([CartEvent::ItemAdded {
                sku: "sku-1".into(),
            }]);
        given::<ShoppingCart>([CartEvent::ItemAdded { sku: "a".into() }])
            .when(CartCommand::Add("b".into()))
            .then_expect_state(|cart| {
                assert_eq!(cart.item_count(), 2);
                assert!(cart.is_full());
            });
        given::<ShoppingCart>([
            CartEvent::ItemAdded { sku: "a".into() },
            CartEvent::ItemAdded { sku: "b".into() },
        ])
        .when(CartCommand::Add("c".into()))
        .then_expect_error(CartError::Full);
    }

    #[test]
    fn checking_out() {
        given::<ShoppingCart>([])
            .when(CartCommand::CheckOut)
            .then_expect_error(CartError::Empty);
        given::<ShoppingCart>([CartEvent::ItemAdded { sku: "a".into() }])
            .when(CartCommand::CheckOut)
            .then_expect_events([CartEvent::CheckedOut]);
        given::<ShoppingCart>([
            CartEvent::ItemAdded { sku: "a".into() },
            CartEvent::CheckedOut,
        ])
        .when(CartCommand::Add("b".into()))
        .then_expect_error_message("the cart is checked out");
    }

    #[test]
    fn ledger() {
        given::<Ledger>([LedgerEvent::Posted { amount: 5 }])
            .when(-2)
            .then_expect_state(|ledger| assert_eq!(ledger.balance, 3));
        given::<Ledger>([]).when(0).then_expect_error(ZeroEntry);
    }
}
