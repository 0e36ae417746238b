//! `#[aggregate]`.

use heck::ToSnakeCase;
use proc_macro2::{Literal, Span, TokenStream};
use quote::{ToTokens, quote};
use syn::ext::IdentExt;
use syn::parse::Parser;
use syn::{
    FnArg, GenericArgument, ImplItem, ImplItemFn, Item, LitStr, Path, PathArguments, ReturnType,
    Signature, Type, Visibility,
};

use crate::util::{
    Errors, invalid_aggregate_name_reason, key_name, mentions_self_path, parse_crate_path,
    parse_version, pretty,
};

const HANDLE_SIGNATURE: &str = "fn handle(&self, command: &Command) -> Result<Vec<Event>, Error>";
const APPLY_SIGNATURE: &str = "fn apply(&mut self, event: &Event)";
const PLACEMENT: &str = "#[aggregate] goes on an inherent impl block holding `handle` and `apply`, \
                         like `#[aggregate] impl Order { fn handle(...) ... fn apply(...) ... }`";

/// Entry point: the inherent impl and the `Aggregate` impl, or the compile errors (followed by
/// the untouched input, so that the rest of the crate still sees the items it defines).
pub(crate) fn expand(args: TokenStream, input: TokenStream) -> TokenStream {
    match expand_inner(args, input.clone()) {
        Ok(tokens) => tokens,
        Err(error) => {
            let error = error.to_compile_error();
            quote!(#error #input)
        }
    }
}

/// `#[aggregate(...)]` arguments.
#[derive(Default)]
struct Args {
    name: Option<LitStr>,
    snapshot_version: Option<u32>,
    krate: Option<Path>,
}

fn parse_args(args: TokenStream) -> syn::Result<Args> {
    let mut out = Args::default();
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            let lit: LitStr = meta.value()?.parse()?;
            if let Some(reason) = invalid_aggregate_name_reason(&lit.value()) {
                return Err(syn::Error::new_spanned(&lit, reason));
            }
            if out.name.is_some() {
                return Err(duplicate_key(&meta.path, "name"));
            }
            out.name = Some(lit);
        } else if meta.path.is_ident("snapshot_version") {
            let (version, _) = parse_version(&meta, "snapshot", "snapshot_version")?;
            if out.snapshot_version.is_some() {
                return Err(duplicate_key(&meta.path, "snapshot_version"));
            }
            out.snapshot_version = Some(version);
        } else if meta.path.is_ident("crate") {
            let path = parse_crate_path(&meta)?;
            if out.krate.is_some() {
                return Err(duplicate_key(&meta.path, "crate"));
            }
            out.krate = Some(path);
        } else {
            let key = key_name(&meta.path);
            return Err(syn::Error::new_spanned(
                &meta.path,
                format!(
                    "unknown #[aggregate] argument `{key}`; expected one of name, \
                     snapshot_version, crate"
                ),
            ));
        }
        Ok(())
    });
    parser.parse2(args)?;
    Ok(out)
}

/// The placement error, on the keyword and name of an item that is not an impl block.
fn misplaced(token: &impl ToTokens, ident: &impl ToTokens) -> syn::Error {
    syn::Error::new_spanned(quote!(#token #ident), PLACEMENT)
}

fn duplicate_key(path: &Path, key: &str) -> syn::Error {
    syn::Error::new_spanned(path, format!("duplicate #[aggregate] argument `{key}`"))
}

fn expand_inner(args: TokenStream, input: TokenStream) -> syn::Result<TokenStream> {
    let mut errors = Errors::default();
    let args = match parse_args(args) {
        Ok(args) => args,
        Err(error) => {
            errors.push(error);
            Args::default()
        }
    };

    let item: Item = syn::parse2(input)?;
    let item_impl = match item {
        Item::Impl(item_impl) => item_impl,
        other => {
            let error = match &other {
                Item::Struct(item) => misplaced(&item.struct_token, &item.ident),
                Item::Enum(item) => misplaced(&item.enum_token, &item.ident),
                Item::Fn(item) => misplaced(&item.sig.fn_token, &item.sig.ident),
                Item::Trait(item) => misplaced(&item.trait_token, &item.ident),
                Item::Mod(item) => misplaced(&item.mod_token, &item.ident),
                _ => syn::Error::new(Span::call_site(), PLACEMENT),
            };
            return Err(errors.with(error));
        }
    };

    if let Some((bang, trait_path, for_token)) = &item_impl.trait_ {
        return Err(errors.with(syn::Error::new_spanned(
            quote!(#bang #trait_path #for_token),
            format!(
                "{PLACEMENT}; it writes the `Aggregate` impl itself, so it cannot be put on a \
                 trait impl"
            ),
        )));
    }

    if !item_impl.generics.params.is_empty() || item_impl.generics.where_clause.is_some() {
        errors.push(syn::Error::new_spanned(
            &item_impl.generics,
            "#[aggregate] does not support generic parameters or lifetimes: an aggregate is \
             stored under one fixed type name, so it must be a concrete type",
        ));
    }

    let type_name = match &*item_impl.self_ty {
        Type::Path(type_path) if type_path.qself.is_none() => type_path
            .path
            .segments
            .last()
            .map(|segment| segment.ident.unraw().to_string()),
        _ => None,
    };
    let name = match (&args.name, type_name) {
        (Some(lit), _) => Some(lit.value()),
        (None, Some(type_name)) => {
            let derived = type_name.to_snake_case();
            if let Some(reason) = invalid_aggregate_name_reason(&derived) {
                errors.push(syn::Error::new_spanned(
                    &item_impl.self_ty,
                    format!("{reason}; give a valid one with #[aggregate(name = \"...\")]"),
                ));
            }
            Some(derived)
        }
        (None, None) => {
            errors.push(syn::Error::new_spanned(
                &item_impl.self_ty,
                "#[aggregate] needs a named type (`impl Order { ... }`); or give the name with \
                 #[aggregate(name = \"...\")]",
            ));
            None
        }
    };

    let mut handle: Option<ImplItemFn> = None;
    let mut apply: Option<ImplItemFn> = None;
    let mut others: Vec<ImplItem> = Vec::new();
    for impl_item in &item_impl.items {
        match impl_item {
            ImplItem::Fn(function) if function.sig.ident == "handle" && handle.is_none() => {
                handle = Some(function.clone());
            }
            ImplItem::Fn(function) if function.sig.ident == "apply" && apply.is_none() => {
                apply = Some(function.clone());
            }
            other => others.push(other.clone()),
        }
    }

    let self_ty = &item_impl.self_ty;
    if handle.is_none() {
        errors.push(syn::Error::new_spanned(
            self_ty,
            format!(
                "#[aggregate] impl block has no `handle` method; expected `{HANDLE_SIGNATURE}`"
            ),
        ));
    }
    if apply.is_none() {
        errors.push(syn::Error::new_spanned(
            self_ty,
            format!("#[aggregate] impl block has no `apply` method; expected `{APPLY_SIGNATURE}`"),
        ));
    }

    let handle_types = handle
        .as_ref()
        .and_then(|function| check_handle(&function.sig, &mut errors));
    let apply_event = apply
        .as_ref()
        .and_then(|function| check_apply(&function.sig, &mut errors));

    if let (Some((_, handle_event, _)), Some(apply_event)) = (&handle_types, &apply_event) {
        let handle_str = handle_event.to_token_stream().to_string();
        let apply_str = apply_event.to_token_stream().to_string();
        if handle_str != apply_str {
            errors.push(syn::Error::new_spanned(
                apply_event,
                format!(
                    "apply takes `&{}` but handle returns events of type `{}`; both must use \
                     the same event type",
                    pretty(apply_event),
                    pretty(handle_event)
                ),
            ));
        }
    }

    errors.finish()?;

    let (Some(name), Some((command, event, error)), Some(mut handle), Some(mut apply)) =
        (name, handle_types, handle, apply)
    else {
        // Every `None` above was reported as an error.
        return Err(syn::Error::new(Span::call_site(), PLACEMENT));
    };

    // Trait items cannot have a visibility.
    handle.vis = Visibility::Inherited;
    apply.vis = Visibility::Inherited;

    let krate = args.krate.unwrap_or_else(|| syn::parse_quote!(::eventfold));
    let attrs = &item_impl.attrs;
    let snapshot = args.snapshot_version.map(|version| {
        let value = Literal::u32_unsuffixed(version);
        quote!(const SNAPSHOT_VERSION: u32 = #value;)
    });
    let inherent = if others.is_empty() {
        None
    } else {
        Some(quote! {
            #(#attrs)*
            impl #self_ty {
                #(#others)*
            }
        })
    };

    Ok(quote! {
        #inherent

        #(#attrs)*
        impl #krate::Aggregate for #self_ty {
            const TYPE: &'static str = #name;
            #snapshot
            type Command = #command;
            type Event = #event;
            type Error = #error;

            #handle

            #apply
        }
    })
}

/// Checks that `sig` is `fn NAME(<receiver>, &T)` without generics or qualifiers, and returns
/// `T`; `what` names the argument in the error of one that is not a reference.
fn check_plain_fn<'a>(
    sig: &'a Signature,
    mutable_receiver: bool,
    what: &str,
    expected: &str,
    errors: &mut Errors,
) -> Option<&'a Type> {
    let name = &sig.ident;
    if sig.constness.is_some()
        || sig.asyncness.is_some()
        || sig.unsafety.is_some()
        || sig.abi.is_some()
        || sig.variadic.is_some()
    {
        let (constness, asyncness, unsafety, abi) =
            (&sig.constness, &sig.asyncness, &sig.unsafety, &sig.abi);
        errors.push(syn::Error::new_spanned(
            quote!(#constness #asyncness #unsafety #abi),
            format!("`{name}` must be a plain synchronous fn; expected `{expected}`"),
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.push(syn::Error::new_spanned(
            &sig.generics,
            format!("`{name}` cannot be generic; expected `{expected}`"),
        ));
    }

    let wanted_receiver = if mutable_receiver {
        "&mut self"
    } else {
        "&self"
    };
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(receiver))
            if receiver.reference.is_some()
                && receiver.mutability.is_some() == mutable_receiver
                && receiver.colon_token.is_none() => {}
        Some(FnArg::Receiver(receiver)) => {
            errors.push(syn::Error::new_spanned(
                receiver,
                format!(
                    "`{name}` must take `{wanted_receiver}`, not `{}`; expected `{expected}`",
                    pretty(receiver)
                ),
            ));
        }
        Some(FnArg::Typed(_)) | None => {
            errors.push(syn::Error::new_spanned(
                name,
                format!("`{name}` must take `{wanted_receiver}`; expected `{expected}`"),
            ));
            return None;
        }
    }

    let argument = match inputs.next() {
        Some(FnArg::Typed(argument)) => argument,
        _ => {
            errors.push(syn::Error::new_spanned(
                &sig.inputs,
                format!(
                    "`{name}` takes one argument after `{wanted_receiver}`; expected `{expected}`"
                ),
            ));
            return None;
        }
    };
    if let Some(extra) = inputs.next() {
        let rest: Vec<&FnArg> = std::iter::once(extra).chain(inputs).collect();
        errors.push(syn::Error::new_spanned(
            quote!(#(#rest),*),
            format!("`{name}` takes exactly one argument after `{wanted_receiver}`; expected `{expected}`"),
        ));
        return None;
    }
    referenced(&argument.ty, what, expected, errors)
}

/// The referenced type of `&T`, or an error.
fn referenced<'a>(
    ty: &'a Type,
    what: &str,
    example: &str,
    errors: &mut Errors,
) -> Option<&'a Type> {
    match ty {
        Type::Reference(reference) if reference.mutability.is_none() => Some(&*reference.elem),
        Type::Reference(reference) => {
            let elem = &reference.elem;
            errors.push(syn::Error::new_spanned(
                ty,
                format!(
                    "{what} must be a shared reference, `&{}`, not `{}`; expected `{example}`",
                    pretty(elem),
                    pretty(ty)
                ),
            ));
            None
        }
        _ => {
            errors.push(syn::Error::new_spanned(
                ty,
                format!(
                    "{what} must be a reference, `&{}`; expected `{example}`",
                    pretty(ty)
                ),
            ));
            None
        }
    }
}

fn no_self_path(ty: &Type, errors: &mut Errors) -> bool {
    if mentions_self_path(&ty.to_token_stream()) {
        errors.push(syn::Error::new_spanned(
            ty,
            "write the concrete type here: #[aggregate] takes the `Aggregate` associated types \
             from these signatures, so they cannot refer to `Self::...`",
        ));
        false
    } else {
        true
    }
}

/// Checks `handle` and returns its command, event and error types.
fn check_handle(sig: &Signature, errors: &mut Errors) -> Option<(Type, Type, Type)> {
    let command = check_plain_fn(
        sig,
        false,
        "the command parameter of `handle`",
        HANDLE_SIGNATURE,
        errors,
    );

    let output = match &sig.output {
        ReturnType::Type(_, ty) => match result_of_vec(ty) {
            Some(types) => Some(types),
            None => {
                errors.push(syn::Error::new_spanned(
                    ty,
                    format!(
                        "`handle` must return `Result<Vec<Event>, Error>`, not `{}`; expected \
                         `{HANDLE_SIGNATURE}`",
                        pretty(ty)
                    ),
                ));
                None
            }
        },
        ReturnType::Default => {
            errors.push(syn::Error::new_spanned(
                &sig.ident,
                format!(
                    "`handle` must return `Result<Vec<Event>, Error>`; expected \
                     `{HANDLE_SIGNATURE}`"
                ),
            ));
            None
        }
    };

    let command = command.filter(|ty| no_self_path(ty, errors));
    let output = output.filter(|(event, error)| {
        let event_ok = no_self_path(event, errors);
        no_self_path(error, errors) && event_ok
    });
    match (command, output) {
        (Some(command), Some((event, error))) => Some((command.clone(), event, error)),
        _ => None,
    }
}

/// Checks `apply` and returns its event type.
fn check_apply(sig: &Signature, errors: &mut Errors) -> Option<Type> {
    let event = check_plain_fn(
        sig,
        true,
        "the event parameter of `apply`",
        APPLY_SIGNATURE,
        errors,
    );
    if let ReturnType::Type(_, ty) = &sig.output {
        let is_unit = matches!(&**ty, Type::Tuple(tuple) if tuple.elems.is_empty());
        if !is_unit {
            errors.push(syn::Error::new_spanned(
                ty,
                format!(
                    "`apply` must not return anything (events are facts: applying one cannot \
                     fail); expected `{APPLY_SIGNATURE}`"
                ),
            ));
        }
    }
    event.filter(|ty| no_self_path(ty, errors)).cloned()
}

/// The last segment of `ty` if it is a plain path (no `<T as Trait>::`) spelled one of `spellings`.
fn generic_args_of<'a>(ty: &'a Type, spellings: &[&[&str]]) -> Option<Vec<&'a Type>> {
    let Type::Path(type_path) = ty else {
        return None;
    };
    if type_path.qself.is_some() {
        return None;
    }
    let segments: Vec<String> = type_path
        .path
        .segments
        .iter()
        .map(|segment| segment.ident.to_string())
        .collect();
    if !spellings.iter().any(|spelling| {
        segments
            .iter()
            .map(String::as_str)
            .eq(spelling.iter().copied())
    }) {
        return None;
    }
    if type_path
        .path
        .segments
        .iter()
        .rev()
        .skip(1)
        .any(|s| !s.arguments.is_none())
    {
        return None;
    }
    let last = type_path.path.segments.last()?;
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    args.args
        .iter()
        .map(|arg| match arg {
            GenericArgument::Type(ty) => Some(ty),
            _ => None,
        })
        .collect()
}

/// `(E, Err)` from `Result<Vec<E>, Err>`.
fn result_of_vec(ty: &Type) -> Option<(Type, Type)> {
    let result_args = generic_args_of(
        ty,
        &[
            &["Result"],
            &["std", "result", "Result"],
            &["core", "result", "Result"],
        ],
    )?;
    let [ok, error] = result_args.as_slice() else {
        return None;
    };
    let vec_args = generic_args_of(
        ok,
        &[&["Vec"], &["std", "vec", "Vec"], &["alloc", "vec", "Vec"]],
    )?;
    let [event] = vec_args.as_slice() else {
        return None;
    };
    Some(((*event).clone(), (*error).clone()))
}
