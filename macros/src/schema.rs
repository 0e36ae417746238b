//! Event schemas: what `#[derive(Event)]` and `#[derive(PayloadSchema)]` write to describe a
//! payload as serde reads it (field names after `rename`/`rename_all`, aliases, defaults, skipped
//! and flattened fields), and `#[derive(PayloadSchema)]` itself.

use proc_macro2::TokenStream;
use quote::{ToTokens, quote};
use syn::ext::IdentExt;
use syn::meta::ParseNestedMeta;
use syn::{
    Attribute, Data, DeriveInput, Fields, GenericArgument, LitStr, Path, PathArguments, Type,
};

use crate::util::{key_name, parse_crate_path, pretty};

/// `#[serde(...)]` on a field or an enum variant, as far as reading is concerned: each reads
/// the keys serde takes on it (a field `default`, `flatten` and `with`, a variant `rename_all`).
#[derive(Default)]
pub(crate) struct SerdeItem {
    rename: Option<String>,
    aliases: Vec<String>,
    rename_all: Option<String>,
    default: bool,
    skip: bool,
    flatten: bool,
    with: Option<String>,
}

/// `#[serde(...)]` on a struct or an enum.
#[derive(Default)]
struct SerdeContainer {
    rename_all: Option<String>,
    rename_all_fields: Option<String>,
    default: bool,
    transparent: bool,
    from: Option<Type>,
    tag: Option<String>,
    content: Option<String>,
    untagged: bool,
}

/// Reads every `#[serde(...)]` attribute into a `T`: `take` handles a key (`Ok(false)`: not
/// one it takes, skipped with its value). Malformed attributes are left to serde to report.
fn read_serde<T: Default>(
    attrs: &[Attribute],
    mut take: impl FnMut(&mut T, &str, &ParseNestedMeta<'_>) -> syn::Result<bool>,
) -> T {
    let mut out = T::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        let _ = attr.parse_nested_meta(|meta| {
            if !take(&mut out, &key_name(&meta.path), &meta)? {
                skip_value(&meta)?;
            }
            Ok(())
        });
    }
    out
}

fn skip_value(meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(syn::Token![=]) {
        let _: syn::Expr = meta.value()?.parse()?;
    } else if meta.input.peek(syn::token::Paren) {
        meta.parse_nested_meta(|inner| skip_value(&inner))?;
    }
    Ok(())
}

fn string(meta: &ParseNestedMeta<'_>) -> syn::Result<String> {
    Ok(meta.value()?.parse::<LitStr>()?.value())
}

/// `key = "x"`, or the `deserialize` half of `key(serialize = "a", deserialize = "x")`.
fn read_name(meta: &ParseNestedMeta<'_>) -> syn::Result<Option<String>> {
    if meta.input.peek(syn::Token![=]) {
        return string(meta).map(Some);
    }
    let mut name = None;
    meta.parse_nested_meta(|inner| {
        if inner.path.is_ident("deserialize") {
            name = Some(string(&inner)?);
        } else {
            skip_value(&inner)?;
        }
        Ok(())
    })?;
    Ok(name)
}

/// `default` or `default = "path"`.
fn read_default(meta: &ParseNestedMeta<'_>) -> syn::Result<bool> {
    if meta.input.peek(syn::Token![=]) {
        let _: LitStr = meta.value()?.parse()?;
    }
    Ok(true)
}

pub(crate) fn serde_item(attrs: &[Attribute]) -> SerdeItem {
    read_serde(attrs, |out: &mut SerdeItem, key, meta| {
        match key {
            "rename" => out.rename = read_name(meta)?.or(out.rename.take()),
            "alias" => out.aliases.push(string(meta)?),
            "rename_all" => out.rename_all = read_name(meta)?.or(out.rename_all.take()),
            "default" => out.default = read_default(meta)?,
            "skip" | "skip_deserializing" => out.skip = true,
            "flatten" => out.flatten = true,
            "with" | "deserialize_with" => out.with = Some(string(meta)?),
            _ => return Ok(false),
        }
        Ok(true)
    })
}

fn serde_container(attrs: &[Attribute]) -> SerdeContainer {
    read_serde(attrs, |out: &mut SerdeContainer, key, meta| {
        match key {
            "rename_all" => out.rename_all = read_name(meta)?.or(out.rename_all.take()),
            "rename_all_fields" => {
                out.rename_all_fields = read_name(meta)?.or(out.rename_all_fields.take());
            }
            "default" => out.default = read_default(meta)?,
            "transparent" => out.transparent = true,
            "from" | "try_from" => out.from = Some(meta.value()?.parse::<LitStr>()?.parse()?),
            "tag" => out.tag = Some(string(meta)?),
            "content" => out.content = Some(string(meta)?),
            "untagged" => out.untagged = true,
            _ => return Ok(false),
        }
        Ok(true)
    })
}

/// serde's `rename_all` on a field name (written in snake_case).
fn rename_field(rule: &str, field: &str) -> String {
    match rule {
        "UPPERCASE" | "SCREAMING_SNAKE_CASE" => field.to_ascii_uppercase(),
        "PascalCase" => pascal(field),
        "camelCase" => {
            let pascal = pascal(field);
            let mut chars = pascal.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_lowercase().to_string() + chars.as_str()
            })
        }
        "kebab-case" => field.replace('_', "-"),
        "SCREAMING-KEBAB-CASE" => field.to_ascii_uppercase().replace('_', "-"),
        _ => field.to_owned(),
    }
}

fn pascal(field: &str) -> String {
    let mut out = String::new();
    let mut capitalize = true;
    for ch in field.chars() {
        if ch == '_' {
            capitalize = true;
        } else if capitalize {
            out.push(ch.to_ascii_uppercase());
            capitalize = false;
        } else {
            out.push(ch);
        }
    }
    out
}

/// serde's `rename_all` on a variant name (written in PascalCase).
fn rename_variant(rule: &str, variant: &str) -> String {
    let snake = || {
        let mut out = String::new();
        for (i, ch) in variant.char_indices() {
            if i > 0 && ch.is_uppercase() {
                out.push('_');
            }
            out.push(ch.to_ascii_lowercase());
        }
        out
    };
    match rule {
        "lowercase" => variant.to_ascii_lowercase(),
        "UPPERCASE" => variant.to_ascii_uppercase(),
        "camelCase" => {
            let mut chars = variant.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_lowercase().to_string() + chars.as_str()
            })
        }
        "snake_case" => snake(),
        "SCREAMING_SNAKE_CASE" => snake().to_ascii_uppercase(),
        "kebab-case" => snake().replace('_', "-"),
        "SCREAMING-KEBAB-CASE" => snake().to_ascii_uppercase().replace('_', "-"),
        _ => variant.to_owned(),
    }
}

/// A type as the snapshot writes it: paths reduced to their last segment, lifetimes left out,
/// `Box`, `Arc`, `Rc` and references left out (serde writes their content), `str` as `String`.
pub(crate) fn type_text(ty: &Type) -> String {
    let text = match ty {
        Type::Path(path) if path.qself.is_none() => {
            let Some(last) = path.path.segments.last() else {
                return pretty(ty);
            };
            let name = last.ident.unraw().to_string();
            let args: Vec<String> = match &last.arguments {
                PathArguments::None => Vec::new(),
                PathArguments::AngleBracketed(args) => args
                    .args
                    .iter()
                    .filter_map(|arg| match arg {
                        GenericArgument::Type(ty) => Some(type_text(ty)),
                        GenericArgument::Lifetime(_) => None,
                        other => Some(pretty(other)),
                    })
                    .collect(),
                PathArguments::Parenthesized(_) => return pretty(ty),
            };
            match (name.as_str(), args.as_slice()) {
                ("Box" | "Arc" | "Rc", [inner]) => inner.clone(),
                (_, []) => name,
                _ => format!("{name}<{}>", args.join(", ")),
            }
        }
        Type::Reference(reference) => type_text(&reference.elem),
        Type::Paren(paren) => type_text(&paren.elem),
        Type::Group(group) => type_text(&group.elem),
        Type::Tuple(tuple) => format!(
            "({})",
            tuple
                .elems
                .iter()
                .map(type_text)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Type::Array(array) => format!("[{}; {}]", type_text(&array.elem), pretty(&array.len)),
        Type::Slice(slice) => format!("[{}]", type_text(&slice.elem)),
        other => pretty(other),
    };
    if text == "str" {
        "String".to_owned()
    } else {
        text
    }
}

/// Whether serde reads a missing field of this type as `None`: `Option<T>` (by its name).
fn is_option(ty: &Type) -> bool {
    match ty {
        Type::Path(path) => path.path.segments.last().is_some_and(|last| {
            last.ident == "Option"
                && matches!(&last.arguments, PathArguments::AngleBracketed(a) if a.args.len() == 1)
        }),
        Type::Group(group) => is_option(&group.elem),
        Type::Paren(paren) => is_option(&paren.elem),
        _ => false,
    }
}

/// Statements that add the definitions of every described type `ty` is made of (itself, its
/// generic arguments, tuple and array elements) to `__types`.
pub(crate) fn probes(ty: &Type, krate: &Path) -> TokenStream {
    fn collect<'a>(ty: &'a Type, out: &mut Vec<&'a Type>) {
        match ty {
            Type::Path(path) => {
                out.push(ty);
                for segment in &path.path.segments {
                    if let PathArguments::AngleBracketed(args) = &segment.arguments {
                        for arg in &args.args {
                            if let GenericArgument::Type(inner) = arg {
                                collect(inner, out);
                            }
                        }
                    }
                }
            }
            Type::Reference(reference) => collect(&reference.elem, out),
            Type::Paren(paren) => collect(&paren.elem, out),
            Type::Group(group) => collect(&group.elem, out),
            Type::Array(array) => collect(&array.elem, out),
            Type::Slice(slice) => collect(&slice.elem, out),
            Type::Tuple(tuple) => tuple.elems.iter().for_each(|t| collect(t, out)),
            _ => {}
        }
    }
    let mut types = Vec::new();
    collect(ty, &mut types);
    let mut seen = std::collections::HashSet::new();
    let calls = types
        .into_iter()
        .filter(|ty| seen.insert(ty.to_token_stream().to_string()))
        .map(|ty| quote!((&#krate::schema::__private::Probe::<#ty>::new()).define(__types);));
    quote!(#(#calls)*)
}

/// One named field: its name as serde reads it, its type and whether it may be missing.
pub(crate) struct FieldSchema<'a> {
    pub(crate) ident: &'a syn::Ident,
    pub(crate) ty: &'a Type,
    pub(crate) attrs: &'a [Attribute],
}

/// The named fields of a struct or variant.
pub(crate) fn named_fields<'a>(
    fields: impl IntoIterator<Item = &'a syn::Field>,
) -> Vec<FieldSchema<'a>> {
    fields
        .into_iter()
        .filter_map(|f| {
            Some(FieldSchema {
                ident: f.ident.as_ref()?,
                ty: &f.ty,
                attrs: &f.attrs,
            })
        })
        .collect()
}

/// Statements that push the description of `fields` onto `__fields` (a `Vec<Field>`), defining
/// the described types they use in `__types` (a `&mut TypeDefs`).
pub(crate) fn field_pushes(
    fields: &[FieldSchema<'_>],
    rename_all: Option<&str>,
    container_default: bool,
    krate: &Path,
) -> TokenStream {
    let mut out = TokenStream::new();
    for field in fields {
        let serde = serde_item(field.attrs);
        if serde.skip {
            continue;
        }
        let (text, probes) = newtype(field.ty, field.attrs, krate);
        if serde.flatten {
            out.extend(quote! {
                #probes
                #krate::schema::__private::flatten(&mut __fields, __types, #text);
            });
            continue;
        }
        let ident = field.ident.unraw().to_string();
        let name = serde
            .rename
            .unwrap_or_else(|| rename_all.map_or(ident.clone(), |rule| rename_field(rule, &ident)));
        let default =
            serde.default || container_default || (serde.with.is_none() && is_option(field.ty));
        let aliases = &serde.aliases;
        out.extend(quote! {
            #probes
            __fields.push(
                #krate::schema::Field::new(#name, #text)
                    .with_default(#default)
                    .with_aliases(&[#(#aliases),*]),
            );
        });
    }
    out
}

/// The type text and probes of a newtype payload with its `#[serde(...)]` attributes.
pub(crate) fn newtype(ty: &Type, attrs: &[Attribute], krate: &Path) -> (String, TokenStream) {
    let serde = serde_item(attrs);
    match serde.with {
        Some(with) => (format!("{} with {with}", type_text(ty)), TokenStream::new()),
        None => (type_text(ty), probes(ty, krate)),
    }
}

/// `#[derive(PayloadSchema)]`.
pub(crate) fn expand(input: DeriveInput) -> TokenStream {
    match expand_inner(&input) {
        Ok(tokens) => tokens,
        Err(error) => error.to_compile_error(),
    }
}

fn parse_attrs(attrs: &[Attribute]) -> syn::Result<Option<Path>> {
    let mut krate = None;
    for attr in attrs.iter().filter(|a| a.path().is_ident("payload_schema")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("crate") {
                if krate.is_some() {
                    return Err(meta.error("duplicate #[payload_schema] attribute `crate`"));
                }
                krate = Some(parse_crate_path(&meta)?);
                Ok(())
            } else {
                Err(syn::Error::new_spanned(
                    &meta.path,
                    format!(
                        "unknown #[payload_schema] attribute `{}`; expected crate",
                        key_name(&meta.path)
                    ),
                ))
            }
        })?;
    }
    Ok(krate)
}

fn expand_inner(input: &DeriveInput) -> syn::Result<TokenStream> {
    let krate = parse_attrs(&input.attrs)?.unwrap_or_else(|| syn::parse_quote!(::eventfold));
    let ident = &input.ident;
    if !input.generics.params.is_empty() || input.generics.where_clause.is_some() {
        return Err(syn::Error::new_spanned(
            &input.generics,
            format!(
                "#[derive(PayloadSchema)] does not support generic parameters or lifetimes: the \
                 snapshot names a described type by its name alone; describe the concrete types \
                 that use `{}` instead",
                ident.unraw()
            ),
        ));
    }
    let name = ident.unraw().to_string();
    let container = serde_container(&input.attrs);
    let tuple_text = |fields: &syn::FieldsUnnamed| -> (String, TokenStream) {
        let texts: Vec<String> = fields.unnamed.iter().map(|f| type_text(&f.ty)).collect();
        let probes: TokenStream = fields
            .unnamed
            .iter()
            .map(|f| probes(&f.ty, &krate))
            .collect();
        (format!("({})", texts.join(", ")), probes)
    };
    let value = |text: String, probes: TokenStream| {
        quote! {{
            #probes
            #krate::schema::Shape::Type(::std::string::String::from(#text))
        }}
    };
    // Named fields: their pushes, renamed by `rule`, all defaulted with `default`.
    let named = |fields: &syn::FieldsNamed, rule: Option<&str>, default: bool| {
        let pushes = field_pushes(&named_fields(&fields.named), rule, default, &krate);
        quote! {{
            let mut __fields = ::std::vec::Vec::new();
            #pushes
            #krate::schema::Shape::Fields(__fields)
        }}
    };
    // Unnamed fields: one is a newtype (with its field's attributes), more a tuple.
    let unnamed = |fields: &syn::FieldsUnnamed| {
        let (text, probes) = match fields.unnamed.first() {
            Some(field) if fields.unnamed.len() == 1 => newtype(&field.ty, &field.attrs, &krate),
            _ => tuple_text(fields),
        };
        value(text, probes)
    };

    let def = if let Some(from) = &container.from {
        let shape = value(type_text(from), probes(from, &krate));
        quote!(#krate::schema::TypeDef::new(#shape))
    } else {
        match &input.data {
            Data::Struct(data) => {
                let shape = match &data.fields {
                    Fields::Named(fields) if container.transparent => {
                        let field = fields
                            .named
                            .iter()
                            .find(|f| !serde_item(&f.attrs).skip)
                            .ok_or_else(|| {
                                syn::Error::new_spanned(ident, "a transparent struct needs a field")
                            })?;
                        let (text, probes) = newtype(&field.ty, &field.attrs, &krate);
                        value(text, probes)
                    }
                    Fields::Named(fields) => {
                        named(fields, container.rename_all.as_deref(), container.default)
                    }
                    Fields::Unnamed(fields) => unnamed(fields),
                    Fields::Unit => value("()".to_owned(), TokenStream::new()),
                };
                quote!(#krate::schema::TypeDef::new(#shape))
            }
            Data::Enum(data) => {
                let mut variants = Vec::new();
                for variant in &data.variants {
                    let serde = serde_item(&variant.attrs);
                    if serde.skip {
                        continue;
                    }
                    let variant_ident = variant.ident.unraw().to_string();
                    let variant_name = serde.rename.unwrap_or_else(|| {
                        container
                            .rename_all
                            .as_deref()
                            .map_or(variant_ident.clone(), |rule| {
                                rename_variant(rule, &variant_ident)
                            })
                    });
                    let shape = match &variant.fields {
                        Fields::Unit => quote!(::core::option::Option::None),
                        Fields::Named(fields) => {
                            let rule = serde
                                .rename_all
                                .as_deref()
                                .or(container.rename_all_fields.as_deref());
                            let shape = named(fields, rule, false);
                            quote!(::core::option::Option::Some(#shape))
                        }
                        Fields::Unnamed(fields) => {
                            let shape = unnamed(fields);
                            quote!(::core::option::Option::Some(#shape))
                        }
                    };
                    let aliases = &serde.aliases;
                    variants.push(quote! {
                        __variants.push(
                            #krate::schema::Variant::new(#variant_name, #shape)
                                .with_aliases(&[#(#aliases),*]),
                        );
                    });
                }
                let representation = match (&container.tag, &container.content, container.untagged)
                {
                    (_, _, true) => Some("untagged".to_owned()),
                    (Some(tag), Some(content), _) => {
                        Some(format!("tag = \"{tag}\", content = \"{content}\""))
                    }
                    (Some(tag), None, _) => Some(format!("tag = \"{tag}\"")),
                    _ => None,
                };
                let representation = representation.map(|r| quote!(.with_representation(#r)));
                quote! {{
                    let mut __variants = ::std::vec::Vec::new();
                    #(#variants)*
                    #krate::schema::TypeDef::new(#krate::schema::Shape::Variants(__variants))
                        #representation
                }}
            }
            Data::Union(data) => {
                return Err(syn::Error::new_spanned(
                    data.union_token,
                    "#[derive(PayloadSchema)] can only be used on structs and enums",
                ));
            }
        }
    };

    Ok(quote! {
        #[automatically_derived]
        #[allow(unused_qualifications, unused_mut, clippy::all, clippy::pedantic)]
        impl #krate::schema::PayloadSchema for #ident {
            fn define(__types: &mut #krate::schema::TypeDefs) {
                #[allow(unused_imports)]
                use #krate::schema::__private::{Described as _, Opaque as _};
                if !__types.start(#name) {
                    return;
                }
                let __def = #def;
                __types.define(#name, __def);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_normalised() {
        let text = |s: &str| type_text(&syn::parse_str::<Type>(s).unwrap());
        assert_eq!(text("std::string::String"), "String");
        assert_eq!(
            text("::std::collections::HashMap<String, Vec<crate::model::Line>>"),
            "HashMap<String, Vec<Line>>"
        );
        assert_eq!(
            text("Option<Box<chrono::DateTime<chrono::Utc>>>"),
            "Option<DateTime<Utc>>"
        );
        assert_eq!(text("&'static str"), "String");
        assert_eq!(text("(u8, [u32; 4])"), "(u8, [u32; 4])");
        assert!(is_option(
            &syn::parse_str::<Type>("std::option::Option<u8>").unwrap()
        ));
    }

    #[test]
    fn renames_follow_serde() {
        assert_eq!(rename_field("camelCase", "total_cents"), "totalCents");
        assert_eq!(rename_field("PascalCase", "total_cents"), "TotalCents");
        assert_eq!(rename_field("kebab-case", "total_cents"), "total-cents");
        assert_eq!(
            rename_field("SCREAMING_SNAKE_CASE", "total_cents"),
            "TOTAL_CENTS"
        );
        assert_eq!(rename_variant("snake_case", "ItemAdded"), "item_added");
        assert_eq!(rename_variant("camelCase", "ItemAdded"), "itemAdded");
        assert_eq!(
            rename_variant("SCREAMING-KEBAB-CASE", "ItemAdded"),
            "ITEM-ADDED"
        );
    }
}
