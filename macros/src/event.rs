//! `#[derive(Event)]`.

use std::collections::HashMap;

use heck::ToSnakeCase;
use proc_macro2::{Literal, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{Attribute, Data, DeriveInput, Field, Fields, Ident, LitInt, LitStr, Path, Type};

use crate::schema;
use crate::util::{
    Errors, invalid_name_reason, key_name, parse_crate_path, parse_version, path_to_string,
    replace_self,
};

const EXPECTED_KEYS: &str = "expected one of name, version, prefix, codec, crate";

/// Entry point: the generated impl, or the compile errors.
pub(crate) fn expand(input: DeriveInput) -> TokenStream {
    match expand_inner(&input) {
        Ok(tokens) => tokens,
        Err(error) => error.to_compile_error(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Codec {
    Json,
    Protobuf,
}

/// `#[event(...)]` on the enum.
struct EnumAttrs {
    prefix: Option<LitStr>,
    codec: Codec,
    krate: Option<Path>,
}

/// `#[event(...)]` on a variant.
#[derive(Default)]
struct VariantAttrs {
    name: Option<LitStr>,
    version: Option<(u32, LitInt)>,
}

/// The shape of a variant's payload.
enum Shape<'a> {
    /// `Placed { a: A, b: B }` (at least one field).
    Struct(Vec<&'a Field>),
    /// `Paid(PaymentInfo)`.
    Newtype(&'a Field),
    /// `Cancelled`, `Cancelled {}` or `Cancelled()`; holds how to build the value.
    Unit(TokenStream),
}

/// One variant, checked.
struct Variant<'a> {
    ident: &'a Ident,
    name: String,
    version: u32,
    shape: Shape<'a>,
}

fn expand_inner(input: &DeriveInput) -> syn::Result<TokenStream> {
    let data = match &input.data {
        Data::Enum(data) => data,
        Data::Struct(data) => return Err(not_an_enum(&data.struct_token, &input.ident)),
        Data::Union(data) => return Err(not_an_enum(&data.union_token, &input.ident)),
    };

    let mut errors = Errors::default();

    if !input.generics.params.is_empty() || input.generics.where_clause.is_some() {
        errors.push(syn::Error::new_spanned(
            &input.generics,
            "#[derive(Event)] does not support generic parameters or lifetimes: an event enum \
             is stored and decoded by name, so it must be a concrete type",
        ));
    }
    if data.variants.is_empty() {
        errors.push(syn::Error::new_spanned(
            &input.ident,
            format!(
                "#[derive(Event)] needs at least one variant: `{}` has no event types",
                input.ident
            ),
        ));
    }

    let enum_attrs = parse_enum_attrs(&input.attrs, &mut errors);

    let prefix = match &enum_attrs.prefix {
        Some(lit) => {
            let value = lit.value();
            if let Some(reason) = invalid_name_reason("the event name prefix", &value) {
                errors.push(syn::Error::new_spanned(lit, reason));
            }
            value
        }
        None => default_prefix(&input.ident),
    };

    let mut variants = Vec::new();
    let mut seen: HashMap<String, &Ident> = HashMap::new();
    for variant in &data.variants {
        let attrs = parse_variant_attrs(&variant.attrs, &mut errors);
        let variant_name = variant.ident.unraw().to_string();
        let (name, name_span): (String, TokenStream) = match &attrs.name {
            Some(lit) => {
                let value = lit.value();
                if let Some(reason) = invalid_name_reason("an event type name", &value) {
                    errors.push(syn::Error::new_spanned(lit, reason));
                }
                (value, lit.to_token_stream())
            }
            None => (
                format!("{prefix}.{}", variant_name.to_snake_case()),
                variant.ident.to_token_stream(),
            ),
        };
        if let Some(first) = seen.get(&name) {
            errors.push(syn::Error::new_spanned(
                name_span,
                format!(
                    "duplicate event type name `{name}` (also used by variant `{}`); \
                     give one of them another name with #[event(name = \"...\")]",
                    first.unraw()
                ),
            ));
        } else {
            seen.insert(name.clone(), &variant.ident);
        }

        for field in &variant.fields {
            for attr in field
                .attrs
                .iter()
                .filter(|attr| attr.path().is_ident("event"))
            {
                errors.push(syn::Error::new_spanned(
                    attr,
                    "#[event(...)] goes on the enum or on a variant, not on a field",
                ));
            }
        }

        let shape = match &variant.fields {
            Fields::Named(fields) if fields.named.is_empty() => Shape::Unit({
                let ident = &variant.ident;
                quote!(Self::#ident {})
            }),
            Fields::Named(fields) => Shape::Struct(fields.named.iter().collect()),
            Fields::Unnamed(fields) if fields.unnamed.is_empty() => Shape::Unit({
                let ident = &variant.ident;
                quote!(Self::#ident())
            }),
            Fields::Unnamed(fields) if fields.unnamed.len() == 1 => {
                Shape::Newtype(&fields.unnamed[0])
            }
            Fields::Unnamed(fields) => {
                errors.push(syn::Error::new_spanned(
                    fields,
                    "tuple variants with more than one field are not supported by \
                     #[derive(Event)]; use named fields or wrap one type",
                ));
                continue;
            }
            Fields::Unit => Shape::Unit({
                let ident = &variant.ident;
                quote!(Self::#ident)
            }),
        };

        if enum_attrs.codec == Codec::Protobuf && !matches!(shape, Shape::Newtype(_)) {
            let ident = &variant.ident;
            errors.push(syn::Error::new_spanned(
                variant,
                format!(
                    "variant `{}` cannot be encoded with #[event(codec = \"protobuf\")]: every \
                     variant of a protobuf event enum must wrap exactly one prost::Message, \
                     like `{}({}Proto)`",
                    ident.unraw(),
                    ident.unraw(),
                    ident.unraw()
                ),
            ));
        }

        variants.push(Variant {
            ident: &variant.ident,
            name,
            version: attrs.version.map_or(1, |(version, _)| version),
            shape,
        });
    }

    errors.finish()?;

    let krate = enum_attrs
        .krate
        .unwrap_or_else(|| syn::parse_quote!(::eventfold));
    Ok(generate(&input.ident, &krate, enum_attrs.codec, &variants))
}

/// `OrderEvent` -> `order`, `InventoryItemEvent` -> `inventory_item`, `Foo` -> `foo`.
fn default_prefix(ident: &Ident) -> String {
    let name = ident.unraw().to_string();
    let stem = match name.strip_suffix("Event") {
        Some(stem) if !stem.is_empty() => stem,
        _ => name.as_str(),
    };
    stem.to_snake_case()
}

/// The error of `#[derive(Event)]` on a struct or union, spanning its `keyword` and `ident`.
fn not_an_enum(keyword: &impl ToTokens, ident: &Ident) -> syn::Error {
    syn::Error::new_spanned(
        quote!(#keyword #ident),
        "#[derive(Event)] can only be used on enums; write one variant per event type",
    )
}

fn parse_enum_attrs(attrs: &[Attribute], errors: &mut Errors) -> EnumAttrs {
    let mut prefix: Option<LitStr> = None;
    let mut codec: Option<(Codec, LitStr)> = None;
    let mut krate: Option<Path> = None;
    read_event_keys(attrs, errors, |meta| {
        if meta.path.is_ident("prefix") {
            let lit: LitStr = meta.value()?.parse()?;
            set_once(&mut prefix, lit, meta, "prefix")
        } else if meta.path.is_ident("codec") {
            let lit: LitStr = meta.value()?.parse()?;
            if codec.is_some() {
                return Err(duplicate_key(meta, "codec"));
            }
            let value = match lit.value().as_str() {
                "json" => Codec::Json,
                "protobuf" => Codec::Protobuf,
                other => {
                    return Err(syn::Error::new_spanned(
                        &lit,
                        format!(
                            "unknown codec `{other}`; expected \"json\" (the default) or \
                             \"protobuf\""
                        ),
                    ));
                }
            };
            codec = Some((value, lit));
            Ok(())
        } else if meta.path.is_ident("crate") {
            let path = parse_crate_path(meta)?;
            set_once(&mut krate, path, meta, "crate")
        } else if meta.path.is_ident("name") || meta.path.is_ident("version") {
            Err(misplaced_key(
                &meta.path,
                "a variant",
                "a variant",
                "the enum",
            ))
        } else {
            Err(unknown_key(meta))
        }
    });
    EnumAttrs {
        prefix,
        codec: codec.map_or(Codec::Json, |(codec, _)| codec),
        krate,
    }
}

fn parse_variant_attrs(attrs: &[Attribute], errors: &mut Errors) -> VariantAttrs {
    let mut out = VariantAttrs::default();
    read_event_keys(attrs, errors, |meta| {
        if meta.path.is_ident("name") {
            let lit: LitStr = meta.value()?.parse()?;
            set_once(&mut out.name, lit, meta, "name")
        } else if meta.path.is_ident("version") {
            let version = parse_version(meta, "event schema", "version")?;
            set_once(&mut out.version, version, meta, "version")
        } else if meta.path.is_ident("prefix")
            || meta.path.is_ident("codec")
            || meta.path.is_ident("crate")
        {
            Err(misplaced_key(
                &meta.path,
                "an enum",
                "the enum",
                "a variant",
            ))
        } else {
            Err(unknown_key(meta))
        }
    });
    out
}

/// Reads each key of the `#[event(...)]` attributes among `attrs` with `read`; the first error
/// in an attribute ends the reading of that attribute and is pushed to `errors`.
fn read_event_keys(
    attrs: &[Attribute],
    errors: &mut Errors,
    mut read: impl FnMut(&ParseNestedMeta<'_>) -> syn::Result<()>,
) {
    for attr in attrs.iter().filter(|attr| attr.path().is_ident("event")) {
        if let Err(error) = attr.parse_nested_meta(|meta| read(&meta)) {
            errors.push(error);
        }
    }
}

/// Keeps the `value` of `key` in `slot`, or refuses it as a duplicate when `slot` has one.
fn set_once<T>(
    slot: &mut Option<T>,
    value: T,
    meta: &ParseNestedMeta<'_>,
    key: &str,
) -> syn::Result<()> {
    if slot.is_some() {
        return Err(duplicate_key(meta, key));
    }
    *slot = Some(value);
    Ok(())
}

/// An attribute of `kind` ("a variant", "an enum") that belongs `put_on` its item but was put
/// `not_on` the other one.
fn misplaced_key(path: &Path, kind: &str, put_on: &str, not_on: &str) -> syn::Error {
    let key = key_name(path);
    syn::Error::new_spanned(
        path,
        format!(
            "`{key}` is {kind} attribute: put #[event({key} = ...)] on {put_on}, not on {not_on}"
        ),
    )
}

fn duplicate_key(meta: &ParseNestedMeta<'_>, key: &str) -> syn::Error {
    syn::Error::new_spanned(&meta.path, format!("duplicate #[event] attribute `{key}`"))
}

fn unknown_key(meta: &ParseNestedMeta<'_>) -> syn::Error {
    syn::Error::new_spanned(
        &meta.path,
        format!(
            "unknown #[event] attribute `{}`; {EXPECTED_KEYS}",
            key_name(&meta.path)
        ),
    )
}

/// `#[serde(...)]` attributes of a field, forwarded to the hidden structs.
fn serde_attrs(field: &Field) -> Vec<&Attribute> {
    field
        .attrs
        .iter()
        .filter(|attr| attr.path().is_ident("serde"))
        .collect()
}

fn generate(
    enum_ident: &Ident,
    krate: &Path,
    codec: Codec,
    variants: &[Variant<'_>],
) -> TokenStream {
    let serde_crate = format!("{}::__private::serde", path_to_string(krate));
    let serde_path = quote!(#krate::__private::serde);
    let hidden_attrs = quote! {
        #[serde(crate = #serde_crate)]
        #[allow(non_camel_case_types, non_snake_case, dead_code, unused_qualifications, clippy::all, clippy::pedantic)]
    };

    let content_type = match codec {
        Codec::Json => quote!(#krate::codec::json::CONTENT_TYPE),
        Codec::Protobuf => quote!(#krate::codec::protobuf::CONTENT_TYPE),
    };

    let idents: Vec<&Ident> = variants.iter().map(|v| v.ident).collect();
    let names: Vec<&str> = variants.iter().map(|v| v.name.as_str()).collect();
    let versions: Vec<Literal> = variants
        .iter()
        .map(|v| Literal::u32_unsuffixed(v.version))
        .collect();
    let variant_names: Vec<String> = variants
        .iter()
        .map(|v| v.ident.unraw().to_string())
        .collect();

    let field_ty = |ty: &Type| replace_self(ty.to_token_stream(), enum_ident);

    let mut encode_arms = Vec::new();
    let mut decode_arms = Vec::new();
    let schemas: Vec<TokenStream> = variants
        .iter()
        .map(|variant| variant_schema(variant, krate, codec))
        .collect();
    let schema_imports = match codec {
        Codec::Json => quote!(use #krate::schema::__private::{Described as _, Opaque as _};),
        Codec::Protobuf => quote!(use #krate::schema::__private::{Named as _, Unnamed as _};),
    };
    for variant in variants {
        let ident = variant.ident;
        let name = variant.name.as_str();
        match (&variant.shape, codec) {
            (Shape::Newtype(field), Codec::Protobuf) => {
                let ty = &field.ty;
                encode_arms.push(quote! {
                    Self::#ident(__eventfold_value) => #krate::codec::protobuf::encode(#name, __eventfold_value)
                });
                decode_arms.push(quote! {
                    #name => #krate::codec::protobuf::decode::<#ty>(event_type, payload).map(Self::#ident)
                });
            }
            (Shape::Newtype(field), Codec::Json) => {
                let ty = &field.ty;
                let attrs = serde_attrs(field);
                if attrs.is_empty() {
                    encode_arms.push(quote! {
                        Self::#ident(__eventfold_value) => #krate::codec::json::encode(#name, __eventfold_value)
                    });
                    decode_arms.push(quote! {
                        #name => #krate::codec::json::decode::<#ty>(event_type, payload).map(Self::#ident)
                    });
                } else {
                    // A newtype struct is serialized as its content: the attributes apply to the
                    // payload without changing its shape.
                    let hidden_ty = field_ty(ty);
                    let ref_ty = quote_spanned!(ty.span()=> &'__eventfold #hidden_ty);
                    encode_arms.push(quote! {
                        Self::#ident(__eventfold_value) => {
                            #[derive(#serde_path::Serialize)]
                            #hidden_attrs
                            struct __Ref<'__eventfold>(#(#attrs)* #ref_ty);
                            #krate::codec::json::encode(#name, &__Ref(__eventfold_value))
                        }
                    });
                    decode_arms.push(quote! {
                        #name => {
                            #[derive(#serde_path::Deserialize)]
                            #hidden_attrs
                            struct __Owned(#(#attrs)* #hidden_ty);
                            #krate::codec::json::decode::<__Owned>(event_type, payload)
                                .map(|__eventfold_value| Self::#ident(__eventfold_value.0))
                        }
                    });
                }
            }
            (Shape::Struct(fields), Codec::Json) => {
                let field_idents: Vec<&Ident> =
                    fields.iter().filter_map(|f| f.ident.as_ref()).collect();
                let bindings: Vec<Ident> = (0..fields.len())
                    .map(|i| format_ident!("__eventfold_{}", i))
                    .collect();
                let ref_fields = fields.iter().map(|field| {
                    let attrs = serde_attrs(field);
                    let field_ident = &field.ident;
                    let ty = field_ty(&field.ty);
                    let ref_ty = quote_spanned!(field.ty.span()=> &'__eventfold #ty);
                    quote!(#(#attrs)* #field_ident: #ref_ty)
                });
                let owned_fields = fields.iter().map(|field| {
                    let attrs = serde_attrs(field);
                    let field_ident = &field.ident;
                    let ty = field_ty(&field.ty);
                    quote!(#(#attrs)* #field_ident: #ty)
                });
                encode_arms.push(quote! {
                    Self::#ident { #(#field_idents: #bindings),* } => {
                        #[derive(#serde_path::Serialize)]
                        #hidden_attrs
                        struct __Ref<'__eventfold> { #(#ref_fields),* }
                        #krate::codec::json::encode(#name, &__Ref { #(#field_idents: #bindings),* })
                    }
                });
                decode_arms.push(quote! {
                    #name => {
                        #[derive(#serde_path::Deserialize)]
                        #hidden_attrs
                        struct __Owned { #(#owned_fields),* }
                        let __eventfold_value = #krate::codec::json::decode::<__Owned>(event_type, payload)?;
                        ::core::result::Result::Ok(Self::#ident {
                            #(#field_idents: __eventfold_value.#field_idents),*
                        })
                    }
                });
            }
            (Shape::Unit(build), Codec::Json) => {
                encode_arms.push(quote! {
                    Self::#ident { .. } => {
                        #[derive(#serde_path::Serialize)]
                        #hidden_attrs
                        struct __Unit {}
                        #krate::codec::json::encode(#name, &__Unit {})
                    }
                });
                decode_arms.push(quote! {
                    #name => {
                        #[derive(#serde_path::Deserialize)]
                        #hidden_attrs
                        struct __Unit {}
                        #krate::codec::json::decode::<__Unit>(event_type, payload)?;
                        ::core::result::Result::Ok(#build)
                    }
                });
            }
            // Rejected with an error before generation.
            (Shape::Struct(_) | Shape::Unit(_), Codec::Protobuf) => {}
        }
    }

    quote! {
        #[automatically_derived]
        #[allow(unused_qualifications, clippy::all, clippy::pedantic)]
        impl #krate::Event for #enum_ident {
            const CONTENT_TYPE: &'static str = #content_type;

            fn event_type(&self) -> &'static str {
                match self {
                    #(Self::#idents { .. } => #names,)*
                }
            }

            fn schema_version(&self) -> u32 {
                match self {
                    #(Self::#idents { .. } => #versions,)*
                }
            }

            fn event_types() -> &'static [#krate::EventTypeInfo] {
                &[
                    #(#krate::EventTypeInfo {
                        name: #names,
                        version: #versions,
                        variant: #variant_names,
                    },)*
                ]
            }

            fn encode(&self) -> ::core::result::Result<::std::vec::Vec<u8>, #krate::CodecError> {
                match self {
                    #(#encode_arms,)*
                }
            }

            #[allow(unused_mut)]
            fn schemas() -> ::core::option::Option<::std::vec::Vec<#krate::schema::EventSchema>> {
                #[allow(unused_imports)]
                #schema_imports
                ::core::option::Option::Some(::std::vec![#(#schemas,)*])
            }

            fn decode(
                event_type: &str,
                payload: &[u8],
            ) -> ::core::result::Result<Self, #krate::CodecError> {
                match event_type {
                    #(#decode_arms,)*
                    _ => ::core::result::Result::Err(#krate::CodecError::UnknownEventType {
                        event_type: ::std::string::String::from(event_type),
                    }),
                }
            }
        }
    }
}

/// The schema of one variant's payload, built when `Event::schemas` runs: the fields as serde
/// reads them, or the newtype's type (described further when it implements `PayloadSchema`).
fn variant_schema(variant: &Variant<'_>, krate: &Path, codec: Codec) -> TokenStream {
    let name = variant.name.as_str();
    let version = Literal::u32_unsuffixed(variant.version);
    let codec_name = match codec {
        Codec::Json => "json",
        Codec::Protobuf => "protobuf",
    };
    let shape = match &variant.shape {
        Shape::Struct(fields) => {
            let fields = schema::named_fields(fields.iter().copied());
            let pushes = schema::field_pushes(&fields, None, false, krate);
            quote! {{
                let mut __fields = ::std::vec::Vec::new();
                #pushes
                #krate::schema::Shape::Fields(__fields)
            }}
        }
        Shape::Unit(_) => quote!(#krate::schema::Shape::Fields(::std::vec::Vec::new())),
        Shape::Newtype(field) => {
            let (text, probes) = match codec {
                Codec::Json => schema::newtype(&field.ty, &field.attrs, krate),
                Codec::Protobuf => (schema::type_text(&field.ty), TokenStream::new()),
            };
            quote! {{
                #probes
                #krate::schema::Shape::Type(::std::string::String::from(#text))
            }}
        }
    };
    let schema = quote! {
        #krate::schema::EventSchema::new(#name, #version, #codec_name, __shape, __types_owned)
    };
    let schema = match (&variant.shape, codec) {
        (Shape::Newtype(field), Codec::Protobuf) => {
            let ty = &field.ty;
            quote! {
                match (&#krate::schema::__private::Probe::<#ty>::new()).message_name() {
                    ::core::option::Option::Some(__message) => #schema.with_message(__message),
                    ::core::option::Option::None => #schema,
                }
            }
        }
        _ => schema,
    };
    quote! {{
        let mut __types_owned = #krate::schema::TypeDefs::new();
        let __types = &mut __types_owned;
        let __shape = #shape;
        #schema
    }}
}
