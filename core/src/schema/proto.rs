//! Protobuf events described from a `FileDescriptorSet`: the part of `descriptor.proto` the
//! schema needs, decoded with prost (no further dependency), and turned into fields typed
//! `[repeated |optional |required ]type = tag`.

use std::collections::BTreeMap;

use super::model::{EventSchema, Field, Shape, TypeDef, TypeDefs, Variant};

#[derive(Clone, PartialEq, prost::Message)]
struct FileDescriptorSet {
    #[prost(message, repeated, tag = "1")]
    file: Vec<FileDescriptorProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct FileDescriptorProto {
    #[prost(string, optional, tag = "2")]
    package: Option<String>,
    #[prost(message, repeated, tag = "4")]
    message_type: Vec<DescriptorProto>,
    #[prost(message, repeated, tag = "5")]
    enum_type: Vec<EnumDescriptorProto>,
    #[prost(string, optional, tag = "12")]
    syntax: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct DescriptorProto {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(message, repeated, tag = "2")]
    field: Vec<FieldDescriptorProto>,
    #[prost(message, repeated, tag = "3")]
    nested_type: Vec<DescriptorProto>,
    #[prost(message, repeated, tag = "4")]
    enum_type: Vec<EnumDescriptorProto>,
    #[prost(message, optional, tag = "7")]
    options: Option<MessageOptions>,
    #[prost(message, repeated, tag = "8")]
    oneof_decl: Vec<OneofDescriptorProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct FieldDescriptorProto {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(int32, optional, tag = "3")]
    number: Option<i32>,
    #[prost(int32, optional, tag = "4")]
    label: Option<i32>,
    #[prost(int32, optional, tag = "5")]
    r#type: Option<i32>,
    #[prost(string, optional, tag = "6")]
    type_name: Option<String>,
    #[prost(int32, optional, tag = "9")]
    oneof_index: Option<i32>,
    #[prost(bool, optional, tag = "17")]
    proto3_optional: Option<bool>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct OneofDescriptorProto {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct EnumDescriptorProto {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(message, repeated, tag = "2")]
    value: Vec<EnumValueDescriptorProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct EnumValueDescriptorProto {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(int32, optional, tag = "2")]
    number: Option<i32>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct MessageOptions {
    #[prost(bool, optional, tag = "7")]
    map_entry: Option<bool>,
}

const LABEL_REQUIRED: i32 = 2;
const LABEL_REPEATED: i32 = 3;
const TYPE_MESSAGE: i32 = 11;
const TYPE_ENUM: i32 = 14;

/// A message and whether its file is proto2 (where a field's `optional` is written).
#[derive(Debug, Clone)]
struct Message {
    proto: DescriptorProto,
    proto2: bool,
}

/// The messages and enums of every file given, by full name (`shop.OrderPlaced`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Descriptors {
    messages: BTreeMap<String, Message>,
    enums: BTreeMap<String, EnumDescriptorProto>,
}

impl Descriptors {
    /// Adds the messages and enums of a `FileDescriptorSet`.
    pub(crate) fn add(&mut self, bytes: &[u8]) -> Result<(), prost::DecodeError> {
        let set = <FileDescriptorSet as prost::Message>::decode(bytes)?;
        for file in set.file {
            let proto2 = !matches!(file.syntax.as_deref(), Some("proto3" | "editions"));
            let package = file.package.unwrap_or_default();
            for e in file.enum_type {
                let name = join(&package, e.name.as_deref().unwrap_or_default());
                let _ = self.enums.insert(name, e);
            }
            for m in file.message_type {
                self.add_message(&package, m, proto2);
            }
        }
        Ok(())
    }

    fn add_message(&mut self, scope: &str, mut proto: DescriptorProto, proto2: bool) {
        let name = join(scope, proto.name.as_deref().unwrap_or_default());
        for e in std::mem::take(&mut proto.enum_type) {
            let _ = self
                .enums
                .insert(join(&name, e.name.as_deref().unwrap_or_default()), e);
        }
        for nested in std::mem::take(&mut proto.nested_type) {
            self.add_message(&name, nested, proto2);
        }
        let _ = self.messages.insert(name, Message { proto, proto2 });
    }

    /// Describes the schema's payload from its message's descriptor, or says why it cannot.
    pub(crate) fn describe(&self, schema: &mut EventSchema) -> Result<(), String> {
        let name = self.message_name(schema)?;
        let mut types = TypeDefs::new();
        let fields = self.fields(&name, &mut types);
        schema.message = Some(name);
        schema.shape = Shape::Fields(fields);
        schema.types = types;
        Ok(())
    }

    /// The full name of the schema's message: the one `prost::Name` gave, or the only message
    /// whose name is the Rust type's.
    fn message_name(&self, schema: &EventSchema) -> Result<String, String> {
        if self.messages.is_empty() {
            return Err(
                "no protobuf descriptors were given: pass the FileDescriptorSet of the \
                        build (prost-build's `file_descriptor_set_path`) to \
                        `EventSchemas::protobuf_descriptors`"
                    .to_owned(),
            );
        }
        if let Some(name) = &schema.message {
            let name = name.trim_start_matches('.');
            return if self.messages.contains_key(name) {
                Ok(name.to_owned())
            } else {
                Err(format!("no message `{name}` in the protobuf descriptors"))
            };
        }
        let Shape::Type(rust_type) = &schema.shape else {
            return Err("the payload is not a protobuf message".to_owned());
        };
        let wanted = simplified(rust_type);
        let found: Vec<&String> = self
            .messages
            .keys()
            .filter(|full| simplified(full.rsplit('.').next().unwrap_or(full)) == wanted)
            .collect();
        match found.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(format!(
                "no message named like `{rust_type}` in the protobuf descriptors"
            )),
            many => Err(format!(
                "several messages are named like `{rust_type}` ({}): implement `prost::Name` for \
                 it (prost-build's `enable_type_names()`) to say which",
                many.iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// The fields of a message, defining the messages and enums they use in `types`.
    fn fields(&self, name: &str, types: &mut TypeDefs) -> Vec<Field> {
        let Some(message) = self.messages.get(name) else {
            return Vec::new();
        };
        let proto = &message.proto;
        proto
            .field
            .iter()
            .map(|field| {
                let label = field.label.unwrap_or_default();
                let map = self.map_entry(field);
                let mut ty = String::new();
                if map.is_none() {
                    if label == LABEL_REPEATED {
                        ty.push_str("repeated ");
                    } else if label == LABEL_REQUIRED {
                        ty.push_str("required ");
                    } else if field.proto3_optional == Some(true) || message.proto2 {
                        ty.push_str("optional ");
                    }
                }
                match map {
                    Some((key, value)) => {
                        let key = self.type_text(key, types);
                        let value = self.type_text(value, types);
                        ty.push_str(&format!("map<{key}, {value}>"));
                    }
                    None => ty.push_str(&self.type_text(field, types)),
                }
                ty.push_str(&format!(" = {}", field.number.unwrap_or_default()));
                if field.proto3_optional != Some(true)
                    && let Some(oneof) = field
                        .oneof_index
                        .and_then(|i| usize::try_from(i).ok())
                        .and_then(|i| proto.oneof_decl.get(i))
                {
                    ty.push_str(&format!(
                        " (oneof {})",
                        oneof.name.as_deref().unwrap_or_default()
                    ));
                }
                Field::new(field.name.clone().unwrap_or_default(), ty)
                    .with_default(label != LABEL_REQUIRED)
            })
            .collect()
    }

    /// The key and value fields of a map field's entry message.
    fn map_entry<'a>(
        &'a self,
        field: &FieldDescriptorProto,
    ) -> Option<(&'a FieldDescriptorProto, &'a FieldDescriptorProto)> {
        if field.r#type != Some(TYPE_MESSAGE) {
            return None;
        }
        let entry = self.messages.get(type_name(field))?;
        let is_entry = entry
            .proto
            .options
            .as_ref()
            .and_then(|o| o.map_entry)
            .unwrap_or(false);
        match (is_entry, entry.proto.field.as_slice()) {
            (true, [key, value]) => Some((key, value)),
            _ => None,
        }
    }

    /// A field's type: a scalar's name, or a message's or enum's full name (defined in `types`).
    fn type_text(&self, field: &FieldDescriptorProto, types: &mut TypeDefs) -> String {
        let ty = field.r#type.unwrap_or_default();
        if ty == TYPE_MESSAGE || ty == TYPE_ENUM {
            let name = type_name(field).to_owned();
            if types.start(&name) {
                let shape = if ty == TYPE_ENUM {
                    let values = self.enums.get(&name).map_or(&[][..], |e| &e.value[..]);
                    Shape::Variants(
                        values
                            .iter()
                            .map(|v| {
                                let value_name = v.name.as_deref().unwrap_or_default();
                                let number = v.number.unwrap_or_default();
                                Variant::new(format!("{value_name} = {number}"), None)
                            })
                            .collect(),
                    )
                } else {
                    Shape::Fields(self.fields(&name, types))
                };
                types.define(&name, TypeDef::new(shape));
            }
            return name;
        }
        SCALARS
            .get(usize::try_from(ty).unwrap_or(0))
            .copied()
            .unwrap_or("unknown")
            .to_owned()
    }
}

/// `FieldDescriptorProto.Type` numbers to names (message and enum are looked up).
const SCALARS: [&str; 19] = [
    "unknown", "double", "float", "int64", "uint64", "int32", "fixed64", "fixed32", "bool",
    "string", "group", "message", "bytes", "uint32", "enum", "sfixed32", "sfixed64", "sint32",
    "sint64",
];

fn type_name(field: &FieldDescriptorProto) -> &str {
    field
        .type_name
        .as_deref()
        .unwrap_or_default()
        .trim_start_matches('.')
}

fn join(scope: &str, name: &str) -> String {
    if scope.is_empty() {
        name.to_owned()
    } else {
        format!("{scope}.{name}")
    }
}

/// A name compared without case and underscores: prost-build turns `order_placed` into
/// `OrderPlaced`.
fn simplified(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '_')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str, number: i32, ty: i32, label: i32) -> FieldDescriptorProto {
        FieldDescriptorProto {
            name: Some(name.to_owned()),
            number: Some(number),
            label: Some(label),
            r#type: Some(ty),
            ..Default::default()
        }
    }

    fn set() -> Vec<u8> {
        let mut line = field("line", 3, TYPE_MESSAGE, LABEL_REPEATED);
        line.type_name = Some(".shop.Line".to_owned());
        let mut tags = field("tags", 4, TYPE_MESSAGE, LABEL_REPEATED);
        tags.type_name = Some(".shop.OrderPlaced.TagsEntry".to_owned());
        let mut status = field("status", 5, TYPE_ENUM, 1);
        status.type_name = Some(".shop.Status".to_owned());
        let entry = DescriptorProto {
            name: Some("TagsEntry".to_owned()),
            field: vec![field("key", 1, 9, 1), field("value", 2, 5, 1)],
            options: Some(MessageOptions {
                map_entry: Some(true),
            }),
            ..Default::default()
        };
        let placed = DescriptorProto {
            name: Some("OrderPlaced".to_owned()),
            field: vec![
                field("customer", 1, 9, 1),
                field("total_cents", 2, 3, 1),
                line,
                tags,
                status,
            ],
            nested_type: vec![entry],
            ..Default::default()
        };
        let line = DescriptorProto {
            name: Some("Line".to_owned()),
            field: vec![field("sku", 1, 9, 1)],
            ..Default::default()
        };
        let status = EnumDescriptorProto {
            name: Some("Status".to_owned()),
            value: vec![EnumValueDescriptorProto {
                name: Some("OPEN".to_owned()),
                number: Some(0),
            }],
        };
        let set = FileDescriptorSet {
            file: vec![FileDescriptorProto {
                package: Some("shop".to_owned()),
                message_type: vec![placed, line],
                enum_type: vec![status],
                syntax: Some("proto3".to_owned()),
            }],
        };
        prost::Message::encode_to_vec(&set)
    }

    /// The descriptors of [`set`], and the schema of a protobuf event `event_type` whose
    /// payload is the message named `message`, not described yet.
    fn shop_and(event_type: &str, message: &str) -> (Descriptors, EventSchema) {
        let mut descriptors = Descriptors::default();
        descriptors.add(&set()).unwrap();
        let schema = EventSchema::new(
            event_type,
            1,
            "protobuf",
            Shape::Type(message.to_owned()),
            TypeDefs::new(),
        );
        (descriptors, schema)
    }

    #[test]
    fn a_message_is_described_by_its_fields_and_the_types_they_use() {
        let (descriptors, mut schema) = shop_and("order.placed", "OrderPlaced");
        descriptors.describe(&mut schema).unwrap();
        assert_eq!(schema.message.as_deref(), Some("shop.OrderPlaced"));
        let Shape::Fields(fields) = &schema.shape else {
            panic!("fields expected")
        };
        let types: Vec<(&str, &str)> = fields
            .iter()
            .map(|f| (f.name.as_str(), f.ty.as_str()))
            .collect();
        assert_eq!(
            types,
            [
                ("customer", "string = 1"),
                ("total_cents", "int64 = 2"),
                ("line", "repeated shop.Line = 3"),
                ("tags", "map<string, int32> = 4"),
                ("status", "shop.Status = 5"),
            ]
        );
        assert!(fields.iter().all(|f| f.default));
        assert!(schema.types.get("shop.Line").is_some());
        assert!(schema.types.get("shop.Status").is_some());
        assert!(schema.types.get("shop.OrderPlaced.TagsEntry").is_none());
    }

    #[test]
    fn an_unknown_message_is_named() {
        let (descriptors, mut schema) = shop_and("order.paid", "OrderPaid");
        let reason = descriptors.describe(&mut schema).unwrap_err();
        assert_eq!(
            reason,
            "no message named like `OrderPaid` in the protobuf descriptors"
        );
        assert!(Descriptors::default().add(b"\xff\xff").is_err());
    }
}
