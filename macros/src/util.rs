//! Helpers shared by the two macros.

use proc_macro2::{Group, Ident, TokenStream, TokenTree};
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::meta::ParseNestedMeta;
use syn::{LitInt, LitStr, Path};

/// Collects several errors so that one expansion reports all of them at once.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    /// Adds an error.
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(first) => first.combine(error),
            None => self.0 = Some(error),
        }
    }

    /// `error` together with the errors collected before it.
    pub(crate) fn with(self, error: syn::Error) -> syn::Error {
        match self.0 {
            Some(mut first) => {
                first.combine(error);
                first
            }
            None => error,
        }
    }

    /// `Err` with every collected error, or `Ok(())`.
    pub(crate) fn finish(self) -> syn::Result<()> {
        match self.0 {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// The path written as Rust source, without the spaces that `to_string` puts between tokens:
/// `::eventfold`, `crate::reexports::eventfold`.
pub(crate) fn path_to_string(path: &Path) -> String {
    let mut out = String::new();
    if path.leading_colon.is_some() {
        out.push_str("::");
    }
    for (i, segment) in path.segments.iter().enumerate() {
        if i > 0 {
            out.push_str("::");
        }
        out.push_str(&segment.ident.to_string());
    }
    out
}

/// Tokens printed for a human: `Vec<OrderEvent>` rather than `Vec < OrderEvent >`.
pub(crate) fn pretty(tokens: &impl ToTokens) -> String {
    let raw = tokens.to_token_stream().to_string();
    let mut out = raw
        .replace(" :: ", "::")
        .replace(":: ", "::")
        .replace(" < ", "<")
        .replace("< ", "<")
        .replace(" <", "<")
        .replace(" >", ">")
        .replace(" ,", ",")
        .replace("& ", "&")
        .replace("' ", "'")
        .replace("[ ", "[")
        .replace(" ]", "]")
        .replace("( ", "(")
        .replace(" )", ")");
    if out.starts_with(" ::") {
        out = out.trim_start().to_owned();
    }
    out
}

/// Why an event type name (or prefix) is not acceptable, if it is not.
pub(crate) fn invalid_name_reason(what: &str, name: &str) -> Option<String> {
    if name.is_empty() {
        Some(format!("{what} must not be empty"))
    } else if name.chars().any(char::is_whitespace) {
        Some(format!("{what} `{name}` must not contain whitespace"))
    } else {
        None
    }
}

/// Why `name` cannot be an aggregate (stream) type name, if it cannot: the rules of
/// `eventfold_core::StreamId` (1 to 64 bytes of lowercase ASCII letters, digits, `_`, `.` or `-`,
/// starting with a letter), checked at compile time instead of failing at run time.
pub(crate) fn invalid_aggregate_name_reason(name: &str) -> Option<String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_lowercase() || (i > 0 && (b.is_ascii_digit() || b"_.-".contains(&b)))
        });
    (!valid).then(|| {
        format!(
            "the aggregate name `{name}` is used as the stream type: it must be 1 to 64 bytes of \
             lowercase ASCII letters, digits, `_`, `.` or `-`, starting with a letter"
        )
    })
}

/// Replaces every `Self` in `tokens` with `replacement` (keeping the original span), so that a
/// type written inside the enum can be used in an item nested in a generated function, where
/// `Self` of the outer impl is not available.
pub(crate) fn replace_self(tokens: TokenStream, replacement: &Ident) -> TokenStream {
    tokens
        .into_iter()
        .map(|tree| match tree {
            TokenTree::Ident(ident) if ident == "Self" => {
                let mut replaced = replacement.clone();
                replaced.set_span(ident.span());
                TokenTree::Ident(replaced)
            }
            TokenTree::Group(group) => {
                let mut new =
                    Group::new(group.delimiter(), replace_self(group.stream(), replacement));
                new.set_span(group.span());
                TokenTree::Group(new)
            }
            other => other,
        })
        .collect()
}

/// Whether `tokens` contain `Self ::` (an associated item of `Self`).
pub(crate) fn mentions_self_path(tokens: &TokenStream) -> bool {
    let trees: Vec<TokenTree> = tokens.clone().into_iter().collect();
    trees.iter().enumerate().any(|(i, tree)| match tree {
        TokenTree::Ident(ident) if ident == "Self" => {
            matches!(trees.get(i + 1), Some(TokenTree::Punct(p)) if p.as_char() == ':')
        }
        TokenTree::Group(group) => mentions_self_path(&group.stream()),
        _ => false,
    })
}

/// The key of an attribute argument as written (`r#` removed), for messages.
pub(crate) fn key_name(path: &Path) -> String {
    path.get_ident()
        .map_or_else(|| path_to_string(path), |ident| ident.unraw().to_string())
}

/// The value of `key = N`, a version that starts at 1: 0 is refused with "`{what}` versions start
/// at 1".
pub(crate) fn parse_version(
    meta: &ParseNestedMeta<'_>,
    what: &str,
    key: &str,
) -> syn::Result<(u32, LitInt)> {
    let lit: LitInt = meta.value()?.parse()?;
    let version: u32 = lit.base10_parse()?;
    if version == 0 {
        return Err(syn::Error::new_spanned(
            &lit,
            format!("{what} versions start at 1: `{key} = 0` is not allowed"),
        ));
    }
    Ok((version, lit))
}

/// The value of `crate = path`, written as a path or as a string holding one.
pub(crate) fn parse_crate_path(meta: &ParseNestedMeta<'_>) -> syn::Result<Path> {
    let value = meta.value()?;
    if value.peek(LitStr) {
        let lit: LitStr = value.parse()?;
        lit.parse::<Path>()
    } else {
        value.parse::<Path>()
    }
}
