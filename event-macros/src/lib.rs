//! The `#[subscriber]` attribute. Use it through `event_core::subscriber`.
//!
//! The attribute keeps the function exactly as written (it stays callable in unit tests) and
//! registers it with `inventory`: topic, queue group, options, the function's path and source
//! location, and a constructor for its typed handler.
//! `ServiceBuilder::with_registered_subscribers()` collects the registrations.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{quote, quote_spanned};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, FnArg, ItemFn, Lit, LitInt, LitStr, MetaNameValue, Token};

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
    let pairs = Punctuated::<MetaNameValue, Token![,]>::parse_terminated.parse2(attr)?;
    let mut errors: Option<syn::Error> = None;
    let mut push = |e: syn::Error| match &mut errors {
        Some(all) => all.combine(e),
        None => errors = Some(e),
    };
    let mut seen: Vec<String> = Vec::new();
    let mut topic = None;
    let mut queue = None;
    let mut concurrency = None;
    let mut max_attempts = None;
    let mut dead_letter = None;
    for pair in pairs {
        let Some(key) = pair.path.get_ident().map(ToString::to_string) else {
            push(syn::Error::new(
                pair.path.span(),
                format!("expected one of: {}", KEYS.join(", ")),
            ));
            continue;
        };
        if seen.contains(&key) {
            push(syn::Error::new(
                pair.path.span(),
                format!("duplicate key `{key}`"),
            ));
            continue;
        }
        seen.push(key.clone());
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
            other => push(syn::Error::new(
                pair.path.span(),
                format!(
                    "unknown key `{other}`; expected one of: {}",
                    KEYS.join(", ")
                ),
            )),
        }
    }
    if topic.is_none() && !seen.iter().any(|k| k == "topic") {
        push(syn::Error::new(
            Span::call_site(),
            "missing `topic`: write #[subscriber(topic = \"...\")]",
        ));
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

fn string_literal(value: &Expr, key: &str) -> syn::Result<LitStr> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => Ok(lit.clone()),
        other => Err(syn::Error::new(
            other.span(),
            format!("`{key}` must be a string literal, like {key} = \"orders.placed\""),
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
            format!("`{key}` must be an integer literal, like {key} = 4"),
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
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.push(syn::Error::new(
            sig.generics.span(),
            "#[subscriber] functions cannot be generic: the registry needs one concrete message type",
        ));
    }
    if let Some(receiver) = sig.receiver() {
        errors.push(syn::Error::new(
            receiver.span(),
            "#[subscriber] functions cannot take `self`: use a free function, with shared data in a `State<S>` argument",
        ));
    }
    if sig.inputs.is_empty() {
        errors.push(syn::Error::new(
            sig.paren_token.span.join(),
            "a subscriber takes the message as its first argument, e.g. `user: UserCreated`",
        ));
    }
    if let Some(variadic) = &sig.variadic {
        errors.push(syn::Error::new(
            variadic.span(),
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
    let assertions = function
        .sig
        .inputs
        .iter()
        .skip(1)
        .filter_map(|arg| match arg {
            FnArg::Typed(pat) => {
                let ty = &pat.ty;
                Some(quote_spanned! {ty.span()=>
                    ::event_core::__private::assert_from_delivery::<#ty>();
                })
            }
            FnArg::Receiver(_) => None,
        });
    let message_assertion = function.sig.inputs.first().and_then(|arg| match arg {
        FnArg::Typed(pat) => {
            let ty = &pat.ty;
            Some(quote_spanned! {ty.span()=>
                ::event_core::__private::assert_message::<#ty>();
            })
        }
        FnArg::Receiver(_) => None,
    });
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

        const _: () = {
            #message_assertion
            #(#assertions)*
        };

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
                    fn __event_make_subscriber() -> ::event_core::__private::ErasedSubscriber {
                        ::event_core::__private::erase(
                            #name,
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
