//! What a schema is: the snapshot file, one event type at one version, its fields and the types
//! they use.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The format of the snapshot file this code reads and writes.
pub const FORMAT: u32 = 1;

/// A snapshot of event schemas: what a committed `event-schemas.json` holds.
///
/// One [`EventSchema`] per event type and version, sorted by type name then version: the current
/// versions of the code, and the older versions that upcasters still bring to a current one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The file's format, [`FORMAT`].
    pub format: u32,
    /// Every event type and version, sorted.
    pub events: Vec<EventSchema>,
}

impl Snapshot {
    /// A snapshot of these schemas, sorted (type name, then version).
    pub fn new(mut events: Vec<EventSchema>) -> Self {
        events.sort_by(|a, b| (&a.event_type, a.version).cmp(&(&b.event_type, b.version)));
        Snapshot {
            format: FORMAT,
            events,
        }
    }

    /// The schema of `event_type` at `version`, if the snapshot has it.
    pub fn get(&self, event_type: &str, version: u32) -> Option<&EventSchema> {
        self.events
            .iter()
            .find(|e| e.event_type == event_type && e.version == version)
    }

    /// The snapshot as the file holds it: pretty JSON, ending with a line break.
    pub fn to_json(&self) -> String {
        // Serializing plain strings, numbers and maps with string keys cannot fail.
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }
}

/// The schema of one event type at one schema version: how its payload is written.
///
/// Build one by hand in a hand-written `impl Event` ([`crate::Event::schemas`]); the derive
/// builds them for you.
///
/// ```
/// use eventfold_core::schema::{EventSchema, Field, Shape, TypeDefs};
///
/// let placed = EventSchema::new(
///     "order.placed",
///     1,
///     "json",
///     Shape::Fields(vec![
///         Field::new("customer", "String"),
///         Field::new("note", "Option<String>").with_default(true),
///     ]),
///     TypeDefs::new(),
/// );
/// assert_eq!(placed.version, 1);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EventSchema {
    /// The stable type name, `order.placed`.
    pub event_type: String,
    /// The schema version.
    pub version: u32,
    /// The codec of the payload: `json` or `protobuf`.
    pub codec: String,
    /// Protobuf: the full name of the payload's message (`shop.OrderPlaced`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The payload: its fields, or the type it is.
    #[serde(flatten)]
    pub shape: Shape,
    /// The described types the payload uses, by name.
    #[serde(default, skip_serializing_if = "TypeDefs::is_empty")]
    pub types: TypeDefs,
}

impl EventSchema {
    /// The schema of `event_type` at `version`, written with `codec` (`json`, `protobuf`).
    pub fn new(
        event_type: impl Into<String>,
        version: u32,
        codec: impl Into<String>,
        shape: Shape,
        types: TypeDefs,
    ) -> Self {
        EventSchema {
            event_type: event_type.into(),
            version,
            codec: codec.into(),
            message: None,
            shape,
            types,
        }
    }

    /// With the full name of the payload's Protobuf message.
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }
}

/// The shape of a payload or of a described type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Shape {
    /// An object with these fields (a struct variant, a unit variant with none, a struct).
    Fields(Vec<Field>),
    /// A value of this type (a newtype variant or struct): normalised type text, `PaymentInfo`.
    #[serde(rename = "payload")]
    Type(String),
    /// One of these variants (an enum).
    Variants(Vec<Variant>),
}

impl Shape {
    /// The fields sorted by name, the variants by name (the order the snapshot keeps).
    pub(crate) fn sorted(mut self) -> Self {
        match &mut self {
            Shape::Fields(fields) => fields.sort_by(|a, b| a.name.cmp(&b.name)),
            Shape::Variants(variants) => {
                variants.sort_by(|a, b| a.name.cmp(&b.name));
                for variant in variants.iter_mut() {
                    if let Some(shape) = variant.shape.take() {
                        variant.shape = Some(shape.sorted());
                    }
                }
            }
            Shape::Type(_) => {}
        }
        self
    }

    /// A few words for messages: `an object of 3 fields`, `` `PaymentInfo` ``, `an enum`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Shape::Fields(fields) => format!("an object of {} field(s)", fields.len()),
            Shape::Type(ty) => format!("`{ty}`"),
            Shape::Variants(variants) => format!("an enum of {} variant(s)", variants.len()),
        }
    }
}

/// One field of an object: its name in the payload, its type and whether it may be missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Field {
    /// The name in the payload (after `#[serde(rename)]` and `rename_all`).
    pub name: String,
    /// The type, as normalised text: paths reduced to their last segment (`DateTime<Utc>`),
    /// `Box`/`Arc`/`Rc` left out, ` with module` when `#[serde(with)]` changes the encoding.
    /// Protobuf: `[repeated |optional ]type = tag`.
    #[serde(rename = "type")]
    pub ty: String,
    /// Whether a payload without the field is read (`#[serde(default)]`, `Option<T>`, a container
    /// default; every Protobuf field but `required` ones).
    #[serde(default, skip_serializing_if = "is_false")]
    pub default: bool,
    /// Other names read as this field (`#[serde(alias)]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// The alias methods of a [`Field`] or a [`Variant`] (`$what` names it in their docs): both
/// have a `name` and `aliases`, in types of their own.
macro_rules! aliased {
    ($type:ty, $what:literal) => {
        impl $type {
            #[doc = concat!("Other names read as this ", $what, ".")]
            pub fn with_aliases(mut self, aliases: &[&str]) -> Self {
                self.aliases = aliases.iter().map(|&a| a.to_owned()).collect();
                self
            }

            #[doc = concat!("Whether `name` is read as this ", $what, ".")]
            pub(crate) fn answers_to(&self, name: &str) -> bool {
                self.name == name || self.aliases.iter().any(|a| a == name)
            }
        }
    };
}

aliased!(Field, "field");
aliased!(Variant, "variant");

impl Field {
    /// A field without a default.
    pub fn new(name: impl Into<String>, ty: impl Into<String>) -> Self {
        Field {
            name: name.into(),
            ty: ty.into(),
            default: false,
            aliases: Vec::new(),
        }
    }

    /// Whether the field has a default.
    pub fn with_default(mut self, default: bool) -> Self {
        self.default = default;
        self
    }
}

/// One variant of a described enum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Variant {
    /// The name in the payload (after `#[serde(rename)]` and `rename_all`).
    pub name: String,
    /// Other names read as this variant (`#[serde(alias)]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// What it holds; `None` for a unit variant.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub shape: Option<Shape>,
}

impl Variant {
    /// A variant holding `shape` (`None`: a unit variant).
    pub fn new(name: impl Into<String>, shape: Option<Shape>) -> Self {
        Variant {
            name: name.into(),
            aliases: Vec::new(),
            shape,
        }
    }
}

/// The definition of a described type (a struct or enum with `#[derive(PayloadSchema)]`, or a
/// Protobuf message or enum).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TypeDef {
    /// Its shape.
    #[serde(flatten)]
    pub shape: Shape,
    /// How an enum is written when serde's default (externally tagged) is not used:
    /// `tag = "type"`, `tag = "t", content = "c"`, `untagged`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub representation: Option<String>,
}

impl TypeDef {
    /// A type of this shape, written the default way.
    pub fn new(shape: Shape) -> Self {
        TypeDef {
            shape,
            representation: None,
        }
    }

    /// With a representation other than serde's default.
    pub fn with_representation(mut self, representation: impl Into<String>) -> Self {
        self.representation = Some(representation.into());
        self
    }
}

/// The described types a payload uses, by name (the text its fields' types mention).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TypeDefs(BTreeMap<String, TypeDef>);

impl TypeDefs {
    /// No types.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The definition of `name`.
    pub fn get(&self, name: &str) -> Option<&TypeDef> {
        self.0.get(name)
    }

    /// Every definition, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &TypeDef)> {
        self.0.iter().map(|(name, def)| (name.as_str(), def))
    }

    /// Starts the definition of `name`: `false` when it is already there (or being built, for a
    /// type that contains itself), so [`PayloadSchema::define`] stops.
    pub fn start(&mut self, name: &str) -> bool {
        if self.0.contains_key(name) {
            return false;
        }
        let _ = self
            .0
            .insert(name.to_owned(), TypeDef::new(Shape::Fields(Vec::new())));
        true
    }

    /// Every definition with its fields and variants sorted.
    pub(crate) fn sorted(self) -> Self {
        TypeDefs(
            self.0
                .into_iter()
                .map(|(name, mut def)| {
                    def.shape = def.shape.sorted();
                    (name, def)
                })
                .collect(),
        )
    }

    /// Sets the definition of `name` (its fields and variants sorted).
    pub fn define(&mut self, name: &str, mut def: TypeDef) {
        def.shape = def.shape.sorted();
        let _ = self.0.insert(name.to_owned(), def);
    }
}

/// A type that describes its schema, so the event schemas see inside it: derive it with
/// `#[derive(PayloadSchema)]` on the payload of a newtype variant, and on the structs and enums
/// that fields use.
///
/// A type that does not implement it is recorded by its name only: a change inside it goes
/// unnoticed. Implement it by hand for a type whose serde impl is hand-written:
///
/// ```
/// use eventfold_core::schema::{Field, PayloadSchema, Shape, TypeDef, TypeDefs};
///
/// struct Money { cents: i64, currency: String }
///
/// impl PayloadSchema for Money {
///     fn define(types: &mut TypeDefs) {
///         if types.start("Money") {
///             types.define("Money", TypeDef::new(Shape::Fields(vec![
///                 Field::new("cents", "i64"),
///                 Field::new("currency", "String"),
///             ])));
///         }
///     }
/// }
///
/// let mut types = TypeDefs::new();
/// Money::define(&mut types);
/// assert!(types.get("Money").is_some());
/// ```
pub trait PayloadSchema {
    /// Adds the definition of this type, under the name its users' fields mention (the type's
    /// name without its path), and of the described types it uses, to `types`.
    fn define(types: &mut TypeDefs);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_round_trips_through_its_json() {
        let mut types = TypeDefs::new();
        types.define(
            "Status",
            TypeDef::new(Shape::Variants(vec![
                Variant::new("open", None),
                Variant::new("closed", Some(Shape::Type("String".into()))).with_aliases(&["shut"]),
            ]))
            .with_representation("tag = \"t\""),
        );
        let snapshot = Snapshot::new(vec![
            EventSchema::new("b.b", 1, "json", Shape::Type("Status".into()), types),
            EventSchema::new(
                "a.a",
                2,
                "protobuf",
                Shape::Fields(vec![Field::new("x", "int32 = 1").with_default(true)]),
                TypeDefs::new(),
            )
            .with_message("pkg.A"),
        ]);
        assert_eq!(snapshot.events[0].event_type, "a.a");
        let text = snapshot.to_json();
        let back: Snapshot = serde_json::from_str(&text).unwrap();
        assert_eq!(back, snapshot);
        assert_eq!(back.to_json(), text);
        // Variants are kept sorted.
        let Some(Shape::Variants(variants)) = back.events[1].types.get("Status").map(|d| &d.shape)
        else {
            panic!("variants expected")
        };
        assert_eq!(variants[0].name, "closed");
    }

    #[test]
    fn a_type_that_contains_itself_is_defined_once() {
        struct Tree;
        impl PayloadSchema for Tree {
            fn define(types: &mut TypeDefs) {
                if types.start("Tree") {
                    Tree::define(types);
                    types.define(
                        "Tree",
                        TypeDef::new(Shape::Fields(vec![Field::new("children", "Vec<Tree>")])),
                    );
                }
            }
        }
        let mut types = TypeDefs::new();
        Tree::define(&mut types);
        assert_eq!(types.iter().count(), 1);
    }
}
