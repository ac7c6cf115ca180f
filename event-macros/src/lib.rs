//! The `#[subscriber]` attribute. Use it through `event_core::subscriber`.
//!
//! The attribute keeps the function exactly as written (it stays callable in unit tests) and
//! registers it with `inventory`: topic, queue group, options, the function's path and source
//! location, and a constructor for its typed handler.
//! `ServiceBuilder::with_registered_subscribers()` collects the registrations.
//!
//! Mistakes are compile errors at the user's own tokens: the offending key or value of the
//! attribute, the missing `async`, the generics, the `self`, the type of an argument that cannot
//! be extracted or a return type that is not an outcome; one error per mistake, without
//! follow-on errors from the generated code. `tests/ui` holds an example of each.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2, TokenTree};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{
    Expr, ExprLit, FnArg, GenericArgument, ItemFn, Lit, LitInt, LitStr, Meta, PathArguments,
    ReturnType, Token, Type, TypeImplTrait,
};

const KEYS: &[&str] = &[
    "topic",
    "queue",
    "concurrency",
    "max_attempts",
    "dead_letter",
];

/// Registers an `async fn` as a subscriber of a topic.
///
/// ```ignore
/// #[event_core::subscriber(topic = "users.created", queue = "mailer")]
/// async fn send_welcome(user: UserCreated, ctx: Context) -> Result<(), MailError> { ... }
/// ```
///
/// Keys: `topic` (required, string), `queue` (string; omit for broadcast), `concurrency`
/// (integer ≥ 1), `max_attempts` (integer ≥ 1: handler runs before dead-lettering),
/// `dead_letter` (string: the dead-letter topic, `<topic>.dlq` by default).
///
/// The function must be a free `async fn` without generics whose first argument is the
/// message (`T` or `Event<T>`) and whose other arguments are `Context`, `State<S>` or
/// `Headers`.
#[proc_macro_attribute]
pub fn subscriber(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item2: TokenStream2 = item.clone().into();
    match expand(attr.into(), item.into()) {
        Ok(tokens) => tokens.into(),
        Err(error) => {
            // Keep the function so that IDEs and other errors still see it.
            let error = error.to_compile_error();
            quote!(#item2 #error).into()
        }
    }
}

struct Args {
    topic: LitStr,
    queue: Option<LitStr>,
    concurrency: Option<LitInt>,
    max_attempts: Option<LitInt>,
    dead_letter: Option<LitStr>,
}

fn parse_args(attr: TokenStream2) -> syn::Result<Args> {
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated
        .parse2(attr.clone())
        .map_err(|e| syntax_error(&attr, e))?;
    let mut errors: Option<syn::Error> = None;
    let mut push = |e: syn::Error| match &mut errors {
        Some(all) => all.combine(e),
        None => errors = Some(e),
    };
    let mut seen: Vec<String> = Vec::new();
    let mut unknown_keys = false;
    let mut topic = None;
    let mut queue = None;
    let mut concurrency = None;
    let mut max_attempts = None;
    let mut dead_letter = None;
    for meta in metas {
        let path = meta.path();
        let Some(key) = path.get_ident().map(ToString::to_string) else {
            unknown_keys = true;
            push(syn::Error::new_spanned(
                path,
                format!("expected one of: {}", KEYS.join(", ")),
            ));
            continue;
        };
        if !KEYS.contains(&key.as_str()) {
            unknown_keys = true;
            let keys = KEYS.join(", ");
            let message = match KEYS.iter().find(|k| edit_distance(&key, k) <= 2) {
                Some(known) => {
                    format!("unknown key `{key}`: did you mean `{known}`? (keys: {keys})")
                }
                None => format!("unknown key `{key}`; expected one of: {keys}"),
            };
            push(syn::Error::new(path.span(), message));
            continue;
        }
        if seen.contains(&key) {
            push(syn::Error::new(
                path.span(),
                format!("duplicate key `{key}`: each key may be given once"),
            ));
            continue;
        }
        seen.push(key.clone());
        let pair = match meta {
            Meta::NameValue(pair) => pair,
            Meta::Path(path) => {
                push(syn::Error::new_spanned(
                    &path,
                    format!("`{key}` needs a value: {key} = {}", example(&key)),
                ));
                continue;
            }
            Meta::List(list) => {
                push(syn::Error::new_spanned(
                    &list,
                    format!("expected `{key} = value`, like {key} = {}", example(&key)),
                ));
                continue;
            }
        };
        match key.as_str() {
            "topic" => match string_literal(&pair.value, "topic") {
                Ok(lit) if lit.value().trim().is_empty() => {
                    push(syn::Error::new(lit.span(), "`topic` cannot be empty"))
                }
                Ok(lit) => topic = Some(lit),
                Err(e) => push(e),
            },
            "queue" => match string_literal(&pair.value, "queue") {
                Ok(lit) if lit.value().trim().is_empty() => push(syn::Error::new(
                    lit.span(),
                    "`queue` cannot be empty; omit it for a broadcast subscriber",
                )),
                Ok(lit) => queue = Some(lit),
                Err(e) => push(e),
            },
            "dead_letter" => match string_literal(&pair.value, "dead_letter") {
                Ok(lit) => dead_letter = Some(lit),
                Err(e) => push(e),
            },
            "concurrency" => match positive_integer(&pair.value, "concurrency") {
                Ok(lit) => concurrency = Some(lit),
                Err(e) => push(e),
            },
            "max_attempts" => match positive_integer(&pair.value, "max_attempts") {
                Ok(lit) => max_attempts = Some(lit),
                Err(e) => push(e),
            },
            _ => unreachable!("keys are checked above"),
        }
    }
    // After a misspelt key, "missing `topic`" would only repeat the same mistake.
    if topic.is_none() && !seen.iter().any(|k| k == "topic") && !unknown_keys {
        let message = "missing `topic`: write #[subscriber(topic = \"...\")]";
        push(if attr.is_empty() {
            syn::Error::new(Span::call_site(), message)
        } else {
            syn::Error::new_spanned(&attr, message)
        });
    }
    if let Some(errors) = errors {
        return Err(errors);
    }
    Ok(Args {
        topic: topic.expect("checked above"),
        queue,
        concurrency,
        max_attempts,
        dead_letter,
    })
}

/// An example value for a key, for error messages.
fn example(key: &str) -> &'static str {
    match key {
        "topic" => "\"orders.placed\"",
        "queue" => "\"billing\"",
        "dead_letter" => "\"orders.placed.dlq\"",
        "concurrency" => "4",
        _ => "5",
    }
}

/// A clearer message than syn's for arguments that are not `key = value` pairs.
fn syntax_error(attr: &TokenStream2, error: syn::Error) -> syn::Error {
    // `#[subscriber("users.created")]`: the topic without its key.
    let mut tokens = attr.clone().into_iter();
    if let (Some(first @ TokenTree::Literal(_)), None | Some(TokenTree::Punct(_))) =
        (tokens.next(), tokens.next())
        && let Ok(Lit::Str(topic)) = syn::parse2::<Lit>(first.into())
    {
        return syn::Error::new(
            topic.span(),
            format!(
                "the topic is a named key: write `topic = \"{}\"`",
                topic.value()
            ),
        );
    }
    syn::Error::new(
        error.span(),
        format!(
            "{error}: #[subscriber] takes `key = value` pairs, like #[subscriber(topic = \"orders.placed\", queue = \"billing\")]"
        ),
    )
}

fn string_literal(value: &Expr, key: &str) -> syn::Result<LitStr> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => Ok(lit.clone()),
        other => Err(syn::Error::new(
            other.span(),
            format!(
                "`{key}` must be a string literal, like {key} = {}",
                example(key)
            ),
        )),
    }
}

fn positive_integer(value: &Expr, key: &str) -> syn::Result<LitInt> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(lit), ..
        }) => match lit.base10_parse::<u32>() {
            Ok(n) if n >= 1 => Ok(lit.clone()),
            _ => Err(syn::Error::new(
                lit.span(),
                format!("`{key}` must be a whole number of at least 1"),
            )),
        },
        other => Err(syn::Error::new(
            other.span(),
            format!(
                "`{key}` must be an integer literal, like {key} = {}",
                example(key)
            ),
        )),
    }
}

fn check_function(function: &ItemFn) -> syn::Result<()> {
    let sig = &function.sig;
    let mut errors: Vec<syn::Error> = Vec::new();
    if sig.asyncness.is_none() {
        errors.push(syn::Error::new(
            sig.fn_token.span(),
            "#[subscriber] functions must be `async fn`",
        ));
    }
    // `new_spanned` covers every token of the node (a joined span needs nightly).
    if !sig.generics.params.is_empty() {
        errors.push(syn::Error::new_spanned(&sig.generics, GENERIC));
    } else if let Some(where_clause) = &sig.generics.where_clause {
        errors.push(syn::Error::new_spanned(where_clause, GENERIC));
    }
    for arg in &sig.inputs {
        match arg {
            FnArg::Receiver(receiver) => errors.push(syn::Error::new_spanned(
                receiver,
                "#[subscriber] functions cannot take `self`: use a free function, with shared data in a `State<S>` argument",
            )),
            FnArg::Typed(pat) => {
                if let Some(impl_trait) = find_impl_trait(&pat.ty) {
                    errors.push(syn::Error::new_spanned(impl_trait, GENERIC));
                }
            }
        }
    }
    if sig.inputs.is_empty() {
        errors.push(syn::Error::new(
            sig.paren_token.span.join(),
            "a subscriber takes the message as its first argument, e.g. `user: UserCreated`",
        ));
    }
    if let Some(variadic) = &sig.variadic {
        errors.push(syn::Error::new_spanned(
            variadic,
            "variadic functions cannot be subscribers",
        ));
    }
    let mut iter = errors.into_iter();
    match iter.next() {
        None => Ok(()),
        Some(mut first) => {
            for e in iter {
                first.combine(e);
            }
            Err(first)
        }
    }
}

const GENERIC: &str =
    "#[subscriber] functions cannot be generic: the registry needs one concrete message type";

/// The first `impl Trait` in an argument type: it makes the function generic.
fn find_impl_trait(ty: &Type) -> Option<&TypeImplTrait> {
    match ty {
        Type::ImplTrait(impl_trait) => Some(impl_trait),
        Type::Array(t) => find_impl_trait(&t.elem),
        Type::Group(t) => find_impl_trait(&t.elem),
        Type::Paren(t) => find_impl_trait(&t.elem),
        Type::Ptr(t) => find_impl_trait(&t.elem),
        Type::Reference(t) => find_impl_trait(&t.elem),
        Type::Slice(t) => find_impl_trait(&t.elem),
        Type::Tuple(t) => t.elems.iter().find_map(find_impl_trait),
        Type::Path(t) => t
            .qself
            .iter()
            .map(|q| &*q.ty)
            .find_map(find_impl_trait)
            .or_else(|| {
                t.path
                    .segments
                    .iter()
                    .find_map(|segment| match &segment.arguments {
                        PathArguments::AngleBracketed(args) => {
                            args.args.iter().find_map(|arg| match arg {
                                GenericArgument::Type(ty) => find_impl_trait(ty),
                                _ => None,
                            })
                        }
                        _ => None,
                    })
            }),
        _ => None,
    }
}

/// Whether a type has a reference or a lifetime.
fn borrows(tokens: TokenStream2) -> bool {
    tokens.into_iter().any(|token| match token {
        TokenTree::Punct(punct) => matches!(punct.as_char(), '&' | '\''),
        TokenTree::Group(group) => borrows(group.stream()),
        _ => false,
    })
}

/// Levenshtein distance, to suggest a key for a misspelt one.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

fn expand(attr: TokenStream2, item: TokenStream2) -> syn::Result<TokenStream2> {
    let function: ItemFn = syn::parse2(item.clone())
        .map_err(|e| syn::Error::new(e.span(), "#[subscriber] goes on an `async fn`"))?;
    let args = parse_args(attr);
    let checked = check_function(&function);
    let args = match (args, checked) {
        (Ok(args), Ok(())) => args,
        (Err(mut a), Err(b)) => {
            a.combine(b);
            return Err(a);
        }
        (Err(e), _) | (_, Err(e)) => return Err(e),
    };

    let name = &function.sig.ident;
    let name_str = name.to_string();

    // The handler is wrapped in a closure whose parameters carry the function's argument
    // types, each checked where the user wrote it. The check sits in the const argument of
    // `__EventChecked`: when it fails, the type becomes an error, so rustc reports that one
    // error at the user's type and not the follow-on "is not a subscriber handler" of `erase`.
    // The return type is checked with the first argument (the trait path, unlike a helper
    // function's bound, adds no note pointing into generated code).
    let output_check = match &function.sig.output {
        ReturnType::Type(_, ty) if find_impl_trait(ty).is_none() => {
            quote_spanned! {ty.span()=>
                let _ = <#ty as ::event_core::subscribe::IntoOutcome>::into_outcome;
            }
        }
        _ => quote!(),
    };
    // A future that is not `Send` gets rustc's precise diagnostic (which value lives across
    // which `.await`) from this bound; `erase` alone says only "not a subscriber handler".
    // Borrowed argument types are skipped: they are rejected above, and the `Fn` bound would
    // add a lifetime error of its own.
    let types: Vec<&Type> = function
        .sig
        .inputs
        .iter()
        .filter_map(|arg| match arg {
            FnArg::Typed(pat) => Some(&*pat.ty),
            FnArg::Receiver(_) => None,
        })
        .collect();
    let send_check = if types.iter().any(|ty| borrows(ty.to_token_stream())) {
        quote!()
    } else {
        quote_spanned! {name.span()=>
            const fn __event_future_is_send<F, Fut>(_: &F)
            where
                F: ::core::ops::Fn(#(#types),*) -> Fut,
                Fut: ::core::marker::Send,
            {
            }
            __event_future_is_send(&#name);
        }
    };
    let params: Vec<_> = function
        .sig
        .inputs
        .iter()
        .enumerate()
        .filter_map(|(index, arg)| match arg {
            FnArg::Typed(pat) => Some((index, &pat.ty)),
            FnArg::Receiver(_) => None,
        })
        .map(|(index, ty)| {
            let param = format_ident!("__event_arg{index}");
            let check = if index == 0 {
                quote_spanned! {ty.span()=>
                    ::event_core::__private::assert_message::<#ty>();
                    #output_check
                    #send_check
                }
            } else {
                quote_spanned! {ty.span()=>
                    ::event_core::__private::assert_from_delivery::<#ty>();
                }
            };
            (
                quote! { #param: <#ty as __EventChecked<{ #check true }>>::Type },
                param,
            )
        })
        .collect();
    let param_decls = params.iter().map(|(decl, _)| decl);
    let param_names = params.iter().map(|(_, name)| name);
    // What remains for `erase` to reject (more arguments than handlers take) is reported on
    // the closure: give it the function's name as its span.
    let handler = quote_spanned! {name.span()=>
        |#(#param_decls),*| #name(#(#param_names),*)
    };

    let topic = &args.topic;
    let queue = option_tokens(args.queue.as_ref().map(|q| quote!(#q)));
    let dead_letter = option_tokens(args.dead_letter.as_ref().map(|d| quote!(#d)));
    let concurrency = option_tokens(args.concurrency.as_ref().map(|n| {
        let n = n.base10_parse::<usize>().unwrap_or(1);
        quote!(#n)
    }));
    let max_attempts = option_tokens(args.max_attempts.as_ref().map(|n| {
        let n = n.base10_parse::<u32>().unwrap_or(1);
        quote!(#n)
    }));
    let location = quote_spanned! {name.span()=>
        ::event_core::__private::Location {
            file: ::core::file!(),
            line: ::core::line!(),
            column: ::core::column!(),
        }
    };

    Ok(quote! {
        #function

        ::event_core::__private::inventory::submit! {
            ::event_core::__private::Registration {
                topic: #topic,
                queue: #queue,
                handler: ::core::concat!(::core::module_path!(), "::", #name_str),
                location: #location,
                concurrency: #concurrency,
                max_attempts: #max_attempts,
                dead_letter: #dead_letter,
                make: {
                    trait __EventChecked<const VALID: bool> {
                        type Type: ?::core::marker::Sized;
                    }
                    impl<T: ?::core::marker::Sized> __EventChecked<true> for T {
                        type Type = T;
                    }
                    fn __event_make_subscriber() -> ::event_core::__private::ErasedSubscriber {
                        ::event_core::__private::erase(
                            #handler,
                            ::core::concat!(::core::module_path!(), "::", #name_str),
                        )
                    }
                    __event_make_subscriber
                },
            }
        }
    })
}

fn option_tokens(value: Option<TokenStream2>) -> TokenStream2 {
    match value {
        Some(v) => quote!(::core::option::Option::Some(#v)),
        None => quote!(::core::option::Option::None),
    }
}
