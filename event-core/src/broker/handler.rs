//! What a raw handler is ([`RawHandler`], [`handler_fn`]) and what it decides about a delivery
//! ([`Outcome`], [`Failure`], [`FailureKind`]).

use std::fmt;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::{BoxError, Delivery};

/// What a handler decided about a delivery.
#[derive(Debug)]
#[non_exhaustive]
pub enum Outcome {
    /// Done: acknowledge the message.
    Ack,
    /// Failed: run the handler again after a backoff, or dead-letter once the retry policy is
    /// exhausted.
    Retry(Failure),
    /// Give up now: send the message to the dead-letter topic, then acknowledge it.
    DeadLetter(Failure),
}

impl Outcome {
    /// Retry because of `error`.
    pub fn retry(error: impl Into<BoxError>) -> Self {
        Outcome::Retry(Failure::new(FailureKind::Handler, error))
    }

    /// Dead-letter now because of `error`.
    pub fn dead_letter(error: impl Into<BoxError>) -> Self {
        Outcome::DeadLetter(Failure::new(FailureKind::Rejected, error))
    }
}

/// Why a message failed; becomes the `x-event-error*` headers when it is dead-lettered.
#[derive(Debug)]
pub struct Failure {
    kind: FailureKind,
    error: BoxError,
    payload_kind: Option<String>,
}

impl Failure {
    /// A failure of `kind` caused by `error`.
    pub fn new(kind: FailureKind, error: impl Into<BoxError>) -> Self {
        Failure {
            kind,
            error: error.into(),
            payload_kind: None,
        }
    }

    /// Records what the payload looked like (decode failures).
    #[must_use]
    pub fn with_payload_kind(mut self, kind: impl Into<String>) -> Self {
        self.payload_kind = Some(kind.into());
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// The error.
    pub fn error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.error
    }

    /// The payload classification, for decode failures.
    pub fn payload_kind(&self) -> Option<&str> {
        self.payload_kind.as_deref()
    }

    /// The error and its sources joined by `: `, as written into `x-event-error`.
    pub fn describe(&self) -> String {
        let mut text = self.error.to_string();
        let mut source = self.error.source();
        while let Some(s) = source {
            let next = s.to_string();
            if !text.contains(&next) {
                text.push_str(": ");
                text.push_str(&next);
            }
            source = s.source();
        }
        text
    }
}

/// The kind of a [`Failure`], written into `x-event-error-kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// The handler returned an error.
    Handler,
    /// The handler panicked.
    Panic,
    /// The handler asked for the message to be dead-lettered.
    Rejected,
    /// The type header names another message type than the subscriber expects.
    TypeMismatch,
    /// The payload could not be decoded as the expected type.
    Decode,
    /// The content type is not one the subscriber can decode.
    UnsupportedContentType,
    /// A handler argument could not be extracted from the delivery.
    Extract,
    /// The broker gave up delivering the message (it reached its delivery limit): the
    /// backend handed it over with [`Delivery::undeliverable`](crate::broker::Delivery::undeliverable),
    /// and no handler ran on it.
    Undeliverable,
}

impl FailureKind {
    /// The kebab-case name used in headers and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Handler => "handler-error",
            FailureKind::Panic => "panic",
            FailureKind::Rejected => "rejected",
            FailureKind::TypeMismatch => "type-mismatch",
            FailureKind::Decode => "decode-error",
            FailureKind::UnsupportedContentType => "unsupported-content-type",
            FailureKind::Extract => "extract-error",
            FailureKind::Undeliverable => "undeliverable",
        }
    }

    /// Whether this failure is about the bytes, so retrying cannot help.
    pub fn is_permanent(self) -> bool {
        matches!(
            self,
            FailureKind::TypeMismatch
                | FailureKind::Decode
                | FailureKind::UnsupportedContentType
                | FailureKind::Rejected
                | FailureKind::Extract
                | FailureKind::Undeliverable
        )
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Handles raw deliveries. The typed layer implements it; raw users wrap a closure with
/// [`handler_fn`].
pub trait RawHandler: Send + Sync + 'static {
    /// Handles one delivery and says what to do with it.
    fn handle<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Outcome>;

    /// A name for logs and the `x-event-handler` dead-letter header.
    fn name(&self) -> &str;

    /// The protobuf full name this handler decodes, for metrics labels; `None` for raw
    /// handlers.
    fn message_type(&self) -> Option<&str> {
        None
    }
}

/// Wraps an async closure as a [`RawHandler`].
///
/// The closure receives its own copy of the [`Delivery`] (cheap: payload and header values are
/// reference-counted).
///
/// ```
/// use event_core::broker::{handler_fn, Delivery, Outcome};
///
/// let handler = handler_fn("print", |delivery: Delivery| async move {
///     println!("{} bytes on {}", delivery.payload().len(), delivery.topic());
///     Outcome::Ack
/// });
/// # let _ = handler;
/// ```
pub fn handler_fn<F, Fut>(name: impl Into<String>, f: F) -> Arc<dyn RawHandler>
where
    F: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    struct FnHandler<F> {
        name: String,
        f: F,
    }
    impl<F, Fut> RawHandler for FnHandler<F>
    where
        F: Fn(Delivery) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        fn handle<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Outcome> {
            Box::pin((self.f)(delivery.clone()))
        }
        fn name(&self) -> &str {
            &self.name
        }
    }
    Arc::new(FnHandler {
        name: name.into(),
        f,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_describe_joins_sources() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let f = Failure::new(
            FailureKind::Handler,
            Outer(std::io::Error::other("disk full")),
        );
        assert_eq!(f.describe(), "outer: disk full");
        assert_eq!(f.kind().as_str(), "handler-error");
    }
}

/// A handler panicked; the panic message is kept.
#[derive(Debug, thiserror::Error)]
#[error("handler panicked: {message}")]
pub struct HandlerPanicked {
    message: String,
}

impl HandlerPanicked {
    pub(crate) fn new(message: String) -> Self {
        HandlerPanicked { message }
    }
}
