//! Comparing the schemas of the code with a snapshot: what changed, and whether it breaks the
//! reading of stored events.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::model::{EventSchema, Field, Shape, Snapshot, TypeDefs, Variant};
use crate::upcast::{StepTarget, Upcasters};

/// Most upcaster steps the check follows from a version that left the code.
const MAX_HOPS: usize = 64;

/// One difference between the code and a snapshot, at one event type and version.
///
/// Its [`Display`](fmt::Display) names the event type, the version and the field, and says what
/// to do:
///
/// ```text
/// `order.placed` version 1, field `note`: removed or renamed (it was `Option<String>`): stored
/// payloads have it; keep it (read an old name with #[serde(alias)]), or bump the version and
/// register an upcaster
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SchemaChange {
    /// The event type.
    pub event_type: String,
    /// The schema version.
    pub version: u32,
    /// Where in the payload: a field (`note`), a field of a described type (`Line.qty`), a
    /// variant (`Status::Open`) or a type (`Line`); `None` for the whole event.
    pub field: Option<String>,
    /// What changed.
    #[serde(flatten)]
    pub kind: ChangeKind,
}

impl SchemaChange {
    /// A change at `event_type` and `version`, at `field` (see [`SchemaChange::field`]).
    pub fn new(
        event_type: impl Into<String>,
        version: u32,
        field: Option<&str>,
        kind: ChangeKind,
    ) -> Self {
        SchemaChange {
            event_type: event_type.into(),
            version,
            field: field.map(str::to_owned),
            kind,
        }
    }

    /// Whether stored events may no longer be read because of this change.
    pub fn is_breaking(&self) -> bool {
        self.kind.is_breaking()
    }
}

/// What changed. The first group breaks the reading of stored events; the second does not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ChangeKind {
    /// The code no longer has the event type, and no upcaster reads this version.
    EventTypeRemoved,
    /// The code has the type at another version, and no upcaster reads this one.
    VersionRemoved {
        /// The version the code has.
        current: u32,
    },
    /// The upcasters from this version stop at a type and version the code does not know.
    UpcastDeadEnd {
        /// Where the chain stops.
        event_type: String,
        /// At which version.
        version: u32,
    },
    /// The payload's codec changed.
    CodecChanged {
        /// Recorded.
        from: String,
        /// In the code.
        to: String,
    },
    /// The payload, a described type or a variant changed shape (`PaymentInfo` to `Invoice`,
    /// an object to a value).
    ShapeChanged {
        /// Recorded.
        from: String,
        /// In the code.
        to: String,
    },
    /// A field was removed or renamed.
    FieldRemoved {
        /// Its recorded type.
        #[serde(rename = "type")]
        ty: String,
    },
    /// A field's type changed.
    FieldTypeChanged {
        /// Recorded.
        from: String,
        /// In the code.
        to: String,
    },
    /// A field was added without a default.
    FieldAddedWithoutDefault {
        /// Its type.
        #[serde(rename = "type")]
        ty: String,
    },
    /// A field that had a default has none any more.
    DefaultRemoved {
        /// Its type.
        #[serde(rename = "type")]
        ty: String,
    },
    /// A variant of a described enum was removed or renamed.
    VariantRemoved,
    /// A described enum is written another way (`tag`, `content`, `untagged`).
    RepresentationChanged {
        /// Recorded (`None`: serde's default).
        from: Option<String>,
        /// In the code.
        to: Option<String>,
    },
    /// A new event type (compatible).
    EventTypeAdded,
    /// A new version of a known type (compatible).
    VersionAdded,
    /// A field added with a default (compatible).
    FieldAdded {
        /// Its type.
        #[serde(rename = "type")]
        ty: String,
    },
    /// A variant added to a described enum (compatible).
    VariantAdded,
    /// A description that differs without changing what is read: a described type's definition
    /// added, a default or an alias added, a message renamed (compatible).
    Redescribed,
}

impl ChangeKind {
    /// Whether stored events may no longer be read because of this change.
    pub fn is_breaking(&self) -> bool {
        !matches!(
            self,
            ChangeKind::EventTypeAdded
                | ChangeKind::VersionAdded
                | ChangeKind::FieldAdded { .. }
                | ChangeKind::VariantAdded
                | ChangeKind::Redescribed
        )
    }
}

impl fmt::Display for SchemaChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (event_type, version) = (&self.event_type, self.version);
        write!(f, "`{event_type}` version {version}")?;
        if let Some(at) = &self.field {
            let subject = match self.kind {
                ChangeKind::FieldRemoved { .. }
                | ChangeKind::FieldTypeChanged { .. }
                | ChangeKind::FieldAddedWithoutDefault { .. }
                | ChangeKind::DefaultRemoved { .. }
                | ChangeKind::FieldAdded { .. } => "field ",
                ChangeKind::VariantRemoved | ChangeKind::VariantAdded => "variant ",
                _ => "",
            };
            write!(f, ", {subject}`{at}`")?;
        }
        f.write_str(": ")?;
        match &self.kind {
            ChangeKind::EventTypeRemoved => write!(
                f,
                "the event type was removed from the code and no upcaster reads this version: \
                 keep its variant, or register an upcaster from (`{event_type}`, {version}) to a \
                 type the code knows (`Upcasters::rename` or `step`)"
            ),
            ChangeKind::VersionRemoved { current } => write!(
                f,
                "the code now has version {current} and no upcaster from version {version} is \
                 registered: stored events of version {version} could not be read; register one \
                 (`Upcasters::json(\"{event_type}\", {version}, ..)`)"
            ),
            ChangeKind::UpcastDeadEnd {
                event_type: to,
                version: to_version,
            } => write!(
                f,
                "the upcasters from this version stop at `{to}` version {to_version}, which the \
                 code does not know and no upcaster leaves"
            ),
            ChangeKind::CodecChanged { from, to } => write!(
                f,
                "the codec changed from {from} to {to}: bump the version and register an upcaster"
            ),
            ChangeKind::ShapeChanged { from, to } => write!(
                f,
                "changed from {from} to {to}: bump the version and register an upcaster"
            ),
            ChangeKind::FieldRemoved { ty } => write!(
                f,
                "removed or renamed (it was `{ty}`): stored payloads have it; keep it (read an \
                 old name with #[serde(alias)]), or bump the version and register an upcaster"
            ),
            ChangeKind::FieldTypeChanged { from, to } => write!(
                f,
                "type changed from `{from}` to `{to}`: bump the version and register an upcaster"
            ),
            ChangeKind::FieldAddedWithoutDefault { ty } => write!(
                f,
                "added without a default (`{ty}`): stored payloads lack it; add \
                 #[serde(default)] (or make it an `Option`), or bump the version and register an \
                 upcaster"
            ),
            ChangeKind::DefaultRemoved { ty } => write!(
                f,
                "lost its default (`{ty}`): stored payloads may lack it; keep #[serde(default)]"
            ),
            ChangeKind::VariantRemoved => f.write_str(
                "removed or renamed: stored payloads may hold it; keep it (read an old name with \
                 #[serde(alias)]), or bump the version and register an upcaster",
            ),
            ChangeKind::RepresentationChanged { from, to } => write!(
                f,
                "the enum representation changed from {} to {}: bump the version and register \
                 an upcaster",
                representation(from.as_deref()),
                representation(to.as_deref())
            ),
            ChangeKind::EventTypeAdded => f.write_str("new event type"),
            ChangeKind::VersionAdded => f.write_str("new version"),
            ChangeKind::FieldAdded { ty } => write!(f, "added with a default (`{ty}`)"),
            ChangeKind::VariantAdded => f.write_str("added"),
            ChangeKind::Redescribed => f.write_str(
                "described differently, without a change to what is read (a type's definition, \
                 a default or an alias added)",
            ),
        }
    }
}

fn representation(repr: Option<&str>) -> String {
    repr.map_or_else(|| "externally tagged".to_owned(), |r| format!("`{r}`"))
}

/// The code's current schemas, by type and version.
pub(crate) struct Code<'a> {
    schemas: BTreeMap<(&'a str, u32), &'a EventSchema>,
    current: BTreeMap<&'a str, u32>,
}

impl<'a> Code<'a> {
    pub(crate) fn new(schemas: &'a [EventSchema]) -> Self {
        Code {
            schemas: schemas
                .iter()
                .map(|s| ((s.event_type.as_str(), s.version), s))
                .collect(),
            current: schemas
                .iter()
                .map(|s| (s.event_type.as_str(), s.version))
                .collect(),
        }
    }

    fn get(&self, event_type: &str, version: u32) -> Option<&'a EventSchema> {
        self.schemas.get(&(event_type, version)).copied()
    }

    /// `Ok` when the upcasters bring `(event_type, version)`, which the code does not have, to a
    /// version it has (or to a general step whose result only running it tells); else where the
    /// chain stops (`None`: no step at all).
    pub(crate) fn reach(
        &self,
        event_type: &str,
        version: u32,
        upcasters: &[Upcasters],
    ) -> Result<(), Option<(String, u32)>> {
        let (mut at_type, mut at_version) = (event_type.to_owned(), version);
        for hop in 0..MAX_HOPS {
            match upcasters
                .iter()
                .find_map(|u| u.step_from(&at_type, at_version))
            {
                None if hop == 0 => return Err(None),
                None => return Err(Some((at_type, at_version))),
                Some(StepTarget::Unknown) => return Ok(()),
                Some(StepTarget::Known {
                    event_type,
                    version,
                }) => {
                    if self.current.get(event_type) == Some(&version) {
                        return Ok(());
                    }
                    (at_type, at_version) = (event_type.to_owned(), version);
                }
            }
        }
        Err(Some((at_type, at_version)))
    }
}

/// Every difference between `recorded` and the code, breaking or not.
pub(crate) fn changes(
    recorded: &Snapshot,
    code: &Code<'_>,
    upcasters: &[Upcasters],
) -> Vec<SchemaChange> {
    let mut out = Vec::new();
    for old in &recorded.events {
        let (event_type, version) = (old.event_type.as_str(), old.version);
        let mut at = Changes {
            event_type,
            version,
            out: &mut out,
            found: false,
        };
        if let Some(new) = code.get(event_type, version) {
            at.event(old, new);
            if !at.found && old != new {
                at.push(None, ChangeKind::Redescribed);
            }
            continue;
        }
        match code.reach(event_type, version, upcasters) {
            Ok(()) => {}
            Err(None) => match code.current.get(event_type) {
                Some(&current) => at.push(None, ChangeKind::VersionRemoved { current }),
                None => at.push(None, ChangeKind::EventTypeRemoved),
            },
            Err(Some((event_type, version))) => at.push(
                None,
                ChangeKind::UpcastDeadEnd {
                    event_type,
                    version,
                },
            ),
        }
    }
    for new in code.schemas.values() {
        if recorded.get(&new.event_type, new.version).is_none() {
            let known = recorded
                .events
                .iter()
                .any(|e| e.event_type == new.event_type);
            out.push(SchemaChange {
                event_type: new.event_type.clone(),
                version: new.version,
                field: None,
                kind: if known {
                    ChangeKind::VersionAdded
                } else {
                    ChangeKind::EventTypeAdded
                },
            });
        }
    }
    out
}

/// The changes found at one event type and version.
struct Changes<'a> {
    event_type: &'a str,
    version: u32,
    out: &'a mut Vec<SchemaChange>,
    found: bool,
}

impl Changes<'_> {
    fn push(&mut self, field: Option<String>, kind: ChangeKind) {
        self.found = true;
        self.out.push(SchemaChange {
            event_type: self.event_type.to_owned(),
            version: self.version,
            field,
            kind,
        });
    }

    fn event(&mut self, old: &EventSchema, new: &EventSchema) {
        if old.codec != new.codec {
            self.push(
                None,
                ChangeKind::CodecChanged {
                    from: old.codec.clone(),
                    to: new.codec.clone(),
                },
            );
            return;
        }
        let types = (&old.types, &new.types);
        self.shape(&old.shape, &new.shape, None, types);
        for (name, old_def) in old.types.iter() {
            let Some(new_def) = new.types.get(name) else {
                continue;
            };
            if old_def.representation != new_def.representation {
                self.push(
                    Some(name.to_owned()),
                    ChangeKind::RepresentationChanged {
                        from: old_def.representation.clone(),
                        to: new_def.representation.clone(),
                    },
                );
            }
            self.shape(&old_def.shape, &new_def.shape, Some(name), types);
        }
    }

    /// Compares two shapes at `at` (`None`: the payload itself).
    fn shape(&mut self, old: &Shape, new: &Shape, at: Option<&str>, types: (&TypeDefs, &TypeDefs)) {
        let prefix = at.map_or_else(String::new, |at| format!("{at}."));
        // An object and a described struct with the same fields are written alike.
        let fields_of = |shape: &Shape, types: &TypeDefs| -> Option<Vec<Field>> {
            match shape {
                Shape::Fields(fields) => Some(fields.clone()),
                Shape::Type(name) => match types.get(name).map(|def| &def.shape) {
                    Some(Shape::Fields(fields)) => Some(fields.clone()),
                    _ => None,
                },
                Shape::Variants(_) => None,
            }
        };
        match (old, new) {
            // The insides of described types are compared from the types table.
            (Shape::Type(a), Shape::Type(b)) if a == b => {}
            (Shape::Variants(a), Shape::Variants(b)) => {
                self.variants(a, b, at.unwrap_or("payload"), types);
            }
            (Shape::Fields(a), Shape::Fields(b)) => self.fields(a, b, &prefix),
            (Shape::Fields(_), Shape::Type(_)) | (Shape::Type(_), Shape::Fields(_)) => {
                match (fields_of(old, types.0), fields_of(new, types.1)) {
                    (Some(a), Some(b)) => self.fields(&a, &b, &prefix),
                    _ => self.shape_changed(at, old, new),
                }
            }
            _ => self.shape_changed(at, old, new),
        }
    }

    fn shape_changed(&mut self, at: Option<&str>, old: &Shape, new: &Shape) {
        self.push(
            at.map(str::to_owned),
            ChangeKind::ShapeChanged {
                from: old.describe(),
                to: new.describe(),
            },
        );
    }

    fn fields(&mut self, old: &[Field], new: &[Field], prefix: &str) {
        for o in old {
            let at = Some(format!("{prefix}{}", o.name));
            match new.iter().find(|n| n.answers_to(&o.name)) {
                None => self.push(at, ChangeKind::FieldRemoved { ty: o.ty.clone() }),
                Some(n) if n.ty != o.ty => self.push(
                    at,
                    ChangeKind::FieldTypeChanged {
                        from: o.ty.clone(),
                        to: n.ty.clone(),
                    },
                ),
                Some(n) if o.default && !n.default => {
                    self.push(at, ChangeKind::DefaultRemoved { ty: n.ty.clone() });
                }
                Some(_) => {}
            }
        }
        for n in new {
            if old.iter().any(|o| n.answers_to(&o.name)) {
                continue;
            }
            let at = Some(format!("{prefix}{}", n.name));
            let ty = n.ty.clone();
            if n.default {
                self.push(at, ChangeKind::FieldAdded { ty });
            } else {
                self.push(at, ChangeKind::FieldAddedWithoutDefault { ty });
            }
        }
    }

    fn variants(
        &mut self,
        old: &[Variant],
        new: &[Variant],
        owner: &str,
        types: (&TypeDefs, &TypeDefs),
    ) {
        for o in old {
            let at = format!("{owner}::{}", o.name);
            let Some(n) = new.iter().find(|n| n.answers_to(&o.name)) else {
                self.push(Some(at), ChangeKind::VariantRemoved);
                continue;
            };
            match (&o.shape, &n.shape) {
                (None, None) => {}
                (Some(a), Some(b)) => self.shape(a, b, Some(&at), types),
                (a, b) => {
                    let unit = || "a unit variant".to_owned();
                    self.push(
                        Some(at),
                        ChangeKind::ShapeChanged {
                            from: a.as_ref().map_or_else(unit, Shape::describe),
                            to: b.as_ref().map_or_else(unit, Shape::describe),
                        },
                    );
                }
            }
        }
        for n in new {
            let known = old.iter().any(|o| n.answers_to(&o.name));
            if !known {
                self.push(
                    Some(format!("{owner}::{}", n.name)),
                    ChangeKind::VariantAdded,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::TypeDef;

    fn json(event_type: &str, version: u32, shape: Shape, types: TypeDefs) -> EventSchema {
        EventSchema::new(event_type, version, "json", shape, types)
    }

    /// The messages of the changes from `recorded` to `code`, one event type each.
    fn kinds(recorded: EventSchema, code: EventSchema) -> Vec<String> {
        let recorded = Snapshot::new(vec![recorded]);
        let code = [code];
        changes(&recorded, &Code::new(&code), &[])
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn line(qty: &str) -> TypeDefs {
        let mut types = TypeDefs::new();
        types.define(
            "Line",
            TypeDef::new(Shape::Fields(vec![Field::new("qty", qty)])),
        );
        types
    }

    #[test]
    fn an_object_and_a_described_struct_with_the_same_fields_are_the_same_payload() {
        let object = json(
            "order.placed",
            1,
            Shape::Fields(vec![Field::new("qty", "u32")]),
            TypeDefs::new(),
        );
        let newtype = json("order.placed", 1, Shape::Type("Line".into()), line("u32"));
        // Written alike: only the description differs.
        assert_eq!(
            kinds(object.clone(), newtype.clone()),
            [
                "`order.placed` version 1: described differently, without a change to what is read (a type's definition, a default or an alias added)"
            ]
        );
        let retyped = json("order.placed", 1, Shape::Type("Line".into()), line("u64"));
        assert_eq!(
            kinds(object, retyped),
            [
                "`order.placed` version 1, field `qty`: type changed from `u32` to `u64`: bump the version and register an upcaster"
            ]
        );
        let other = json(
            "order.placed",
            1,
            Shape::Type("String".into()),
            TypeDefs::new(),
        );
        assert_eq!(
            kinds(newtype, other),
            [
                "`order.placed` version 1: changed from `Line` to `String`: bump the version and register an upcaster"
            ]
        );
    }

    #[test]
    fn codec_defaults_and_representations_are_part_of_the_contract() {
        let field =
            |default| Shape::Fields(vec![Field::new("note", "String").with_default(default)]);
        let with_default = json("a.b", 1, field(true), TypeDefs::new());
        let without = json("a.b", 1, field(false), TypeDefs::new());
        assert_eq!(
            kinds(with_default.clone(), without.clone()),
            [
                "`a.b` version 1, field `note`: lost its default (`String`): stored payloads may lack it; keep #[serde(default)]"
            ]
        );
        assert_eq!(
            kinds(without.clone(), with_default),
            [
                "`a.b` version 1: described differently, without a change to what is read (a type's definition, a default or an alias added)"
            ]
        );
        let mut protobuf = without.clone();
        protobuf.codec = "protobuf".into();
        assert_eq!(
            kinds(without, protobuf),
            [
                "`a.b` version 1: the codec changed from json to protobuf: bump the version and register an upcaster"
            ]
        );

        let status = |repr: Option<&str>, variants: &[&str]| {
            let mut def = TypeDef::new(Shape::Variants(
                variants.iter().map(|v| Variant::new(*v, None)).collect(),
            ));
            if let Some(repr) = repr {
                def = def.with_representation(repr);
            }
            let mut types = TypeDefs::new();
            types.define("Status", def);
            json(
                "a.b",
                1,
                Shape::Fields(vec![Field::new("status", "Status")]),
                types,
            )
        };
        assert_eq!(
            kinds(
                status(None, &["open"]),
                status(Some("untagged"), &["open", "closed"])
            ),
            [
                "`a.b` version 1, `Status`: the enum representation changed from externally tagged to `untagged`: bump the version and register an upcaster",
                "`a.b` version 1, variant `Status::closed`: added",
            ]
        );
    }

    #[test]
    fn a_dropped_version_is_followed_through_the_upcasters_to_a_current_one() {
        let v = |version| json("a.b", version, Shape::Fields(vec![]), TypeDefs::new());
        let code = [v(3)];
        let code = Code::new(&code);
        // 1 -> 2 -> 3 by json steps.
        let chain = Upcasters::new().json("a.b", 1, Ok).json("a.b", 2, Ok);
        assert_eq!(code.reach("a.b", 1, std::slice::from_ref(&chain)), Ok(()));
        // A chain spread over two sets of upcasters.
        let first = Upcasters::new().json("a.b", 1, Ok);
        let second = Upcasters::new().json("a.b", 2, Ok);
        assert_eq!(code.reach("a.b", 1, &[first.clone(), second]), Ok(()));
        // 1 -> 2, then nothing.
        assert_eq!(
            code.reach("a.b", 1, &[first]),
            Err(Some(("a.b".to_owned(), 2)))
        );
        // A general step: what it produces is known only when it runs, so it is trusted.
        let general = Upcasters::new().step("a.b", 1, Ok);
        assert_eq!(code.reach("a.b", 1, &[general]), Ok(()));
        // No step at all, and a loop.
        assert_eq!(code.reach("a.b", 1, &[]), Err(None));
        let looping = Upcasters::new()
            .rename("a.b", 1, "a.c", 1)
            .rename("a.c", 1, "a.b", 1);
        assert!(code.reach("a.b", 1, &[looping]).is_err());
    }

    #[test]
    fn the_kinds_say_whether_they_break() {
        assert!(ChangeKind::FieldRemoved { ty: "u8".into() }.is_breaking());
        assert!(ChangeKind::VersionRemoved { current: 2 }.is_breaking());
        assert!(!ChangeKind::FieldAdded { ty: "u8".into() }.is_breaking());
        assert!(!ChangeKind::EventTypeAdded.is_breaking());
        let change = SchemaChange::new("a.b", 1, Some("x"), ChangeKind::VariantRemoved);
        let json = serde_json::to_value(&change).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"event_type": "a.b", "version": 1, "field": "x", "kind": "variant_removed"})
        );
    }
}
