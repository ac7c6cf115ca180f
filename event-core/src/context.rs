//! [`Context`]: metadata, trace context and correlation that travel with a chain of messages.
//!
//! While a handler runs, the context of the message it handles is *current* (task-local), so
//! every message the handler publishes carries the same user metadata, trace context and
//! correlation id, with the handled message's id as its causation id, without the handler
//! passing anything along:
//!
//! ```text
//! OrderPlaced  id=A  correlation-id=A                        (published by the web service)
//!   └ PaymentRequested  id=B  correlation-id=A  causation-id=A   (published in A's handler)
//!       └ PaymentCaptured  id=C  correlation-id=A  causation-id=B
//! ```
//!
//! Outside handlers, make a context current with [`Context::scope`] or pass it explicitly with
//! [`Publisher::publish_with`](crate::Publisher::publish_with).

use std::cell::Cell;
use std::fmt;
use std::pin::Pin;
use std::task::Poll;

use tokio::task::futures::TaskLocalFuture;

use crate::headers::{
    HeaderName, HeaderValue, Headers, InvalidHeaderName, Role, is_reserved, known, names,
};

tokio::task_local! {
    /// Boxed: a task-local value is moved into the thread and back out on every poll of the
    /// future that carries it, and a pointer moves cheaper than a whole context.
    static CURRENT: Box<Context>;
}

thread_local! {
    /// The allocation of a finished scope's context, emptied, for the next scope on this
    /// thread to write its context into (see [`Scoped`]): a handler's context then costs no
    /// allocation.
    static SPARE: Cell<Option<Box<Context>>> = const { Cell::new(None) };
}

/// A context written by `fill` (into an empty one), boxed: in this thread's spare allocation
/// when there is one.
fn boxed(fill: impl FnOnce(&mut Context)) -> Box<Context> {
    let mut context = SPARE
        .try_with(Cell::take)
        .ok()
        .flatten()
        .unwrap_or_default();
    fill(&mut context);
    context
}

/// Keeps `context`'s allocation for the next scope of this thread.
fn recycle(mut context: Box<Context>) {
    // emptied now: a value that shares a buffer would keep that buffer alive
    context.clear();
    let _ = SPARE.try_with(|spare| spare.set(Some(context)));
}

pin_project_lite::pin_project! {
    /// A future with a context current while it is polled ([`Context::scope`] and the
    /// handlers' scopes); gives the context's allocation back to its thread when done.
    pub(crate) struct Scoped<F> {
        #[pin]
        inner: TaskLocalFuture<Box<Context>, F>,
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        let mut inner = self.project().inner;
        let output = std::task::ready!(inner.as_mut().poll(cx));
        if let Some(context) = inner.take_value() {
            recycle(context);
        }
        Poll::Ready(output)
    }
}

/// User metadata: plain headers copied onto every message published in this context.
///
/// Names are validated and may not be reserved (see [`crate::headers::is_reserved`]).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    entries: Vec<(HeaderName, HeaderValue)>,
}

/// A metadata entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// The name belongs to the framework or a protocol it speaks.
    #[error(
        "metadata name {name:?} is reserved (ce_*, ce-*, cloudEvents*, content-type, traceparent, \
         tracestate, baggage, correlation-id, causation-id, micro-*, x-*, __*, kafka_*, spring_* \
         are written by the framework or the protocols it speaks); choose another name"
    )]
    Reserved {
        /// The refused name.
        name: String,
    },
    /// The name is not a valid header name.
    #[error("metadata name is not a valid header name")]
    InvalidName {
        /// Why.
        #[source]
        source: InvalidHeaderName,
    },
}

impl Metadata {
    /// No metadata.
    pub const fn new() -> Self {
        Metadata {
            entries: Vec::new(),
        }
    }

    /// Sets `name` to `value`, replacing an earlier value of the same name (any case).
    ///
    /// # Errors
    ///
    /// [`MetadataError::Reserved`] for reserved names, [`MetadataError::InvalidName`] for
    /// names that are not printable ASCII.
    pub fn insert(
        &mut self,
        name: &str,
        value: impl Into<HeaderValue>,
    ) -> Result<(), MetadataError> {
        if is_reserved(name) {
            return Err(MetadataError::Reserved {
                name: name.to_owned(),
            });
        }
        let name = HeaderName::new(name).map_err(|source| MetadataError::InvalidName { source })?;
        let value = value.into();
        match self.entries.iter_mut().find(|(n, _)| *n == name) {
            Some(entry) => *entry = (name, value),
            None => self.entries.push((name, value)),
        }
        Ok(())
    }

    /// The value of `name` (any case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| n.matches(name))
            .and_then(|(_, v)| v.to_str().ok())
    }

    /// Removes `name`; returns whether it was present.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(n, _)| !n.matches(name));
        before != self.entries.len()
    }

    /// All entries in insertion order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&HeaderName, &HeaderValue)> {
        self.entries.iter().map(|(n, v)| (n, v))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is no metadata.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// W3C trace context headers, passed through untouched.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TraceContext {
    /// `traceparent`.
    pub traceparent: Option<HeaderValue>,
    /// `tracestate`.
    pub tracestate: Option<HeaderValue>,
    /// `baggage`.
    pub baggage: Option<HeaderValue>,
}

impl TraceContext {
    /// Reads the trace headers of a message (any case: go-micro writes `Traceparent`).
    pub fn from_headers(headers: &Headers) -> Self {
        TraceContext {
            traceparent: headers.get(names::TRACEPARENT).cloned(),
            tracestate: headers.get(names::TRACESTATE).cloned(),
            baggage: headers.get(names::BAGGAGE).cloned(),
        }
    }

    /// Whether no trace header is set.
    pub fn is_empty(&self) -> bool {
        self.traceparent.is_none() && self.tracestate.is_none() && self.baggage.is_none()
    }
}

/// Metadata, trace context, correlation id and causation id of a chain of messages.
///
/// ```
/// use event_core::Context;
///
/// let ctx = Context::new().with_metadata("tenant", "t-42").unwrap();
/// assert_eq!(ctx.metadata().get("tenant"), Some("t-42"));
///
/// // reserved names are refused, not silently overwritten
/// let err = Context::new().with_metadata("ce_id", "x").unwrap_err();
/// assert!(err.to_string().contains("reserved"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Context {
    metadata: Metadata,
    trace: TraceContext,
    correlation_id: Option<HeaderValue>,
    causation_id: Option<HeaderValue>,
}

impl Context {
    /// An empty context: a new chain starts here.
    pub fn new() -> Self {
        Context::default()
    }

    /// The current context (inside a handler or [`Context::scope`]), or an empty one.
    pub fn current() -> Context {
        CURRENT
            .try_with(|ctx| Context::clone(ctx))
            .unwrap_or_default()
    }

    /// Runs `f` with the current context, if any, without cloning it.
    pub fn with_current<R>(f: impl FnOnce(Option<&Context>) -> R) -> R {
        let mut f = Some(f);
        match CURRENT.try_with(|ctx| (f.take().expect("called once"))(Some(ctx))) {
            Ok(r) => r,
            Err(_) => (f.take().expect("called once"))(None),
        }
    }

    /// Runs `future` with this context current.
    pub async fn scope<F: Future>(self, future: F) -> F::Output {
        Context::scoped(boxed(|context| *context = self), future).await
    }

    /// The context of a message with these headers (see [`Context::from_headers`]), for a
    /// handler's scope ([`Context::scoped`]): written into this thread's spare allocation,
    /// and not moved again.
    pub(crate) fn boxed_from_headers(headers: &Headers) -> Box<Context> {
        boxed(|context| context.read_headers(headers))
    }

    /// `future` with `context` current while it is polled: [`Context::scope`] without the
    /// async wrapper, for the delivery path (each wrapper moves the handler's future once
    /// more before it first runs).
    pub(crate) fn scoped<F: Future>(context: Box<Context>, future: F) -> Scoped<F> {
        Scoped {
            inner: CURRENT.scope(context, future),
        }
    }

    /// The user metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The user metadata, to change.
    pub fn metadata_mut(&mut self) -> &mut Metadata {
        &mut self.metadata
    }

    /// Adds a metadata entry (builder style).
    ///
    /// # Errors
    ///
    /// As [`Metadata::insert`].
    pub fn with_metadata(
        mut self,
        name: &str,
        value: impl Into<HeaderValue>,
    ) -> Result<Self, MetadataError> {
        self.metadata.insert(name, value)?;
        Ok(self)
    }

    /// The trace context.
    pub fn trace(&self) -> &TraceContext {
        &self.trace
    }

    /// Replaces the trace context.
    pub fn set_trace(&mut self, trace: TraceContext) {
        self.trace = trace;
    }

    /// The correlation id: the id of the first message of the chain.
    pub fn correlation_id(&self) -> Option<&str> {
        self.correlation_id.as_ref().and_then(|v| v.to_str().ok())
    }

    /// Sets the correlation id (builder style), e.g. to a request id at the edge.
    #[must_use]
    pub fn with_correlation_id(mut self, id: impl Into<HeaderValue>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// The causation id: the id of the message being handled.
    pub fn causation_id(&self) -> Option<&str> {
        self.causation_id.as_ref().and_then(|v| v.to_str().ok())
    }

    /// The context a handler of a message with these headers runs in.
    ///
    /// Metadata = every header that is not reserved; trace context = the W3C headers;
    /// correlation id = the `correlation-id` header, or the message's own id when it starts a
    /// chain; causation id = the message's id.
    pub fn from_headers(headers: &Headers) -> Context {
        let mut context = Context::default();
        context.read_headers(headers);
        context
    }

    /// Makes this empty context the one of a message with these headers (as
    /// [`Context::from_headers`]), writing in place: an emptied context's metadata keeps its
    /// capacity.
    fn read_headers(&mut self, headers: &Headers) {
        debug_assert_eq!(*self, Context::default(), "an empty context is filled");
        // one pass over the headers, comparing no strings: this runs for every delivery.
        // The id under the best-ranked alias present, as `Headers::message_id_value`:
        let mut id: Option<(u8, &HeaderValue)> = None;
        for (header, value) in headers.iter() {
            let first = |slot: &mut Option<HeaderValue>| {
                slot.get_or_insert_with(|| value.clone());
            };
            match header.role() {
                Role::Metadata => self.metadata.entries.push((header.clone(), value.clone())),
                Role::CorrelationId => first(&mut self.correlation_id),
                Role::Traceparent => first(&mut self.trace.traceparent),
                Role::Tracestate => first(&mut self.trace.tracestate),
                Role::Baggage => first(&mut self.trace.baggage),
                Role::Id(rank) if id.is_none_or(|(best, _)| rank < best) => {
                    id = Some((rank, value));
                }
                _ => {}
            }
        }
        if let Some((_, id)) = id {
            if self.correlation_id.is_none() {
                self.correlation_id = Some(id.clone());
            }
            self.causation_id = Some(id.clone());
        }
    }

    /// Empties this context, keeping the metadata's capacity.
    fn clear(&mut self) {
        self.metadata.entries.clear();
        self.trace = TraceContext::default();
        self.correlation_id = None;
        self.causation_id = None;
    }

    /// Writes this context into the headers of a message with id `message_id`.
    pub(crate) fn write_headers(&self, headers: &mut Headers, message_id: &[u8]) {
        match &self.correlation_id {
            Some(correlation) => headers.append_copy(known::CORRELATION_ID, correlation),
            None => headers.append_copied(known::CORRELATION_ID, message_id),
        }
        if let Some(cause) = &self.causation_id {
            headers.append_copy(known::CAUSATION_ID, cause);
        }
        for (name, value) in [
            (known::TRACEPARENT, &self.trace.traceparent),
            (known::TRACESTATE, &self.trace.tracestate),
            (known::BAGGAGE, &self.trace.baggage),
        ] {
            if let Some(value) = value {
                headers.append_copy(name, value);
            }
        }
        for (name, value) in self.metadata.iter() {
            headers.append_copy(name.clone(), value);
        }
    }

    /// Headers of a chain start published with no context at all.
    pub(crate) fn write_empty(headers: &mut Headers, message_id: &[u8]) {
        headers.append_copied(known::CORRELATION_ID, message_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_context_from_headers() {
        let mut h = Headers::new();
        h.append("ce_id", "id-1");
        h.append("ce_type", "x.v1.A");
        h.append("Traceparent", "00-aa-bb-01");
        h.append("tenant", "t-1");
        h.append("Micro-Topic", "t");
        let ctx = Context::from_headers(&h);
        assert_eq!(ctx.correlation_id(), Some("id-1"));
        assert_eq!(ctx.causation_id(), Some("id-1"));
        assert_eq!(
            ctx.trace().traceparent.as_ref().unwrap().to_str().unwrap(),
            "00-aa-bb-01"
        );
        assert_eq!(ctx.metadata().len(), 1);
        assert_eq!(ctx.metadata().get("TENANT"), Some("t-1"));

        h.append("correlation-id", "root");
        assert_eq!(Context::from_headers(&h).correlation_id(), Some("root"));
    }

    #[test]
    fn handler_context_takes_the_id_by_alias_order_and_first_values() {
        let mut h = Headers::new();
        h.append("Micro-ID", "micro");
        h.append("cloudEvents:id", "colon");
        h.append("TRACEPARENT", "first");
        h.append("traceparent", "second");
        h.append("Baggage", "k=v");
        h.append("tracestate", "vendor=1");
        let ctx = Context::from_headers(&h);
        // as Headers::message_id_value: the first alias present wins, not the first header
        assert_eq!(h.message_id(), Some("colon"));
        assert_eq!(ctx.causation_id(), Some("colon"));
        assert_eq!(ctx.correlation_id(), Some("colon"));
        h.append("ce_id", "ce");
        assert_eq!(Context::from_headers(&h).causation_id(), Some("ce"));
        let trace = ctx.trace();
        assert_eq!(trace.traceparent.as_ref().unwrap().to_str(), Ok("first"));
        assert_eq!(trace.tracestate.as_ref().unwrap().to_str(), Ok("vendor=1"));
        assert_eq!(trace.baggage.as_ref().unwrap().to_str(), Ok("k=v"));
        assert!(ctx.metadata().is_empty());
    }

    #[test]
    fn write_headers_carries_chain() {
        let mut h = Headers::new();
        h.append("ce_id", "parent");
        h.append("correlation-id", "root");
        h.append("tenant", "t-1");
        let ctx = Context::from_headers(&h);
        let mut out = Headers::new();
        ctx.write_headers(&mut out, b"child");
        assert_eq!(out.get_str("correlation-id"), Some("root"));
        assert_eq!(out.get_str("causation-id"), Some("parent"));
        assert_eq!(out.get_str("tenant"), Some("t-1"));
    }

    #[test]
    fn metadata_rejects_reserved_and_invalid_names() {
        let mut m = Metadata::new();
        assert!(matches!(
            m.insert("Traceparent", "x"),
            Err(MetadataError::Reserved { .. })
        ));
        assert!(matches!(
            m.insert("bad name", "x"),
            Err(MetadataError::InvalidName { .. })
        ));
        m.insert("Tenant", "a").unwrap();
        m.insert("tenant", "b").unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m.get("tenant"), Some("b"));
    }

    #[tokio::test]
    async fn handler_contexts_reuse_one_allocation_and_keep_nothing_of_the_last() {
        let mut first = Headers::new();
        first.append("ce_id", "first");
        first.append("correlation-id", "root");
        first.append("tenant", "t-1");
        first.append(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
        let mut second = Headers::new();
        second.append("ce_id", "second");

        let context = Context::boxed_from_headers(&first);
        let allocation: *const Context = &*context;
        let seen = Context::scoped(context, async { Context::current() }).await;
        assert_eq!(seen, Context::from_headers(&first));

        // kept by the thread (a check of the address alone could pass on a freed and
        // reallocated block)
        let spare = SPARE
            .with(Cell::take)
            .expect("the finished scope's context is kept");
        assert!(std::ptr::eq(&*spare, allocation));
        SPARE.with(|cell| cell.set(Some(spare)));
        let context = Context::boxed_from_headers(&second);
        assert!(
            std::ptr::eq(&*context, allocation),
            "a finished scope's allocation is written over"
        );
        let seen = Context::scoped(context, async { Context::current() }).await;
        assert_eq!(
            seen,
            Context::from_headers(&second),
            "nothing of the first message is left"
        );
        assert_eq!(seen.correlation_id(), Some("second"));
        assert!(seen.metadata().is_empty() && seen.trace().is_empty());
    }

    #[tokio::test]
    async fn scope_makes_context_current() {
        assert_eq!(Context::current(), Context::new());
        let ctx = Context::new().with_metadata("k", "v").unwrap();
        let seen = ctx
            .clone()
            .scope(async { Context::current().metadata().get("k").map(str::to_owned) })
            .await;
        assert_eq!(seen.as_deref(), Some("v"));
        assert!(Context::with_current(|c| c.is_none()));
    }
}
