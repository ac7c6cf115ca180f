//! The raw byte [`Broker`] contract every backend implements.
//!
//! This is go-micro's `Broker` in async Rust: connect, disconnect, publish bytes with headers,
//! subscribe with options and get a [`Subscription`] handle back. Code that wants bytes uses it
//! directly; the typed layer ([`Publisher`](crate::Publisher), [`Service`](crate::Service)) is
//! built on it.
//!
//! What every backend promises (the [conformance suite][testkit] checks each):
//!
//! - **Queue groups**: with [`SubscribeOptions::queue`] set, each message goes to exactly one
//!   member of the group; different groups each get every message. Without a queue, every
//!   subscriber gets every message (broadcast).
//! - **Ack after handler**: a message is acknowledged only after its handler finished with
//!   success, or after it was dead-lettered. Never before, never skipped past a failure.
//! - **Retry, then dead-letter**: a handler error is retried with backoff as the subscription's
//!   [`RetryPolicy`] says; after the last attempt the message goes to the dead-letter topic
//!   (`<topic>.dlq` by default) with `x-event-*` headers saying why. Undecodable messages go
//!   there at once. A panic counts as an error.
//! - **Publish resolves when the broker has the message**, returns a [`Receipt`], and on failure
//!   gives the message back inside the [`PublishError`].
//! - **Shutdown drains**: stop fetching, let in-flight handlers finish (bounded by
//!   [`SubscribeOptions::drain_timeout`]), acknowledge what finished, give the rest back to the
//!   broker. Nothing is dead-lettered because of shutdown.
//!
//! The delivery loop that keeps these promises is written once, in [`delivery`]; a backend
//! only fetches bytes and acknowledges positions.
//!
#![cfg_attr(feature = "testkit", doc = "[testkit]: crate::testkit")]
#![cfg_attr(not(feature = "testkit"), doc = "[testkit]: crate#features")]

use std::borrow::Cow;
use std::fmt;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::BoxFuture;

use crate::headers::Headers;

pub mod delivery;
mod retry;
mod subscription;
mod url;

pub use retry::RetryPolicy;
pub use subscription::{DrainReport, Subscription};
pub use url::{
    BrokerScheme, BrokerUrlError, DEFAULT_BROKER_URL, ENV_BROKER, connect, from_env, known_schemes,
    redact,
};

/// A boxed error, as handlers and backends return them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A raw message: ordered headers, an optional key and the payload bytes.
///
/// The payload is the encoded message and nothing else: no envelope.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// Headers, in order; names are read case-insensitively.
    pub headers: Headers,
    /// Partition key (Kafka) or routing hint; `None` when the producer gave none.
    pub key: Option<Bytes>,
    /// The payload bytes.
    pub payload: Bytes,
}

impl Message {
    /// A message with no headers and no key.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Message {
            headers: Headers::new(),
            key: None,
            payload: payload.into(),
        }
    }

    /// Adds a header (builder style).
    #[must_use]
    pub fn with_header(
        mut self,
        name: impl crate::headers::IntoHeaderName,
        value: impl Into<crate::headers::HeaderValue>,
    ) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Sets the key (builder style).
    #[must_use]
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }
}

/// Where a message sits in its broker.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Position {
    /// Sequence number of an in-memory topic.
    Sequence {
        /// Per-topic publish sequence, starting at 1.
        sequence: u64,
    },
    /// Partition and offset of a Kafka record.
    Offset {
        /// Partition number.
        partition: i32,
        /// Offset within the partition.
        offset: i64,
    },
    /// AMQP delivery tag of a consumed message.
    DeliveryTag {
        /// Channel-scoped delivery tag.
        delivery_tag: u64,
        /// Whether the broker flagged the message as redelivered.
        redelivered: bool,
    },
    /// The broker confirmed the message but reports no position (AMQP publisher confirms).
    Confirmed,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Sequence { sequence } => write!(f, "sequence {sequence}"),
            Position::Offset { partition, offset } => {
                write!(f, "partition {partition} offset {offset}")
            }
            Position::DeliveryTag {
                delivery_tag,
                redelivered,
            } => {
                write!(f, "delivery tag {delivery_tag}")?;
                if *redelivered {
                    f.write_str(" (redelivered)")?;
                }
                Ok(())
            }
            Position::Confirmed => f.write_str("confirmed"),
        }
    }
}

/// Proof that the broker has a published message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    position: Position,
    message_id: Option<crate::headers::HeaderValue>,
}

impl Receipt {
    /// A receipt for a message stored at `position`.
    pub fn new(position: Position) -> Self {
        Receipt {
            position,
            message_id: None,
        }
    }

    /// Attaches the message id (typed publishers do this).
    #[must_use]
    pub fn with_message_id(mut self, id: impl Into<crate::headers::HeaderValue>) -> Self {
        self.message_id = Some(id.into());
        self
    }

    /// Where the broker stored the message.
    pub fn position(&self) -> &Position {
        &self.position
    }

    /// The id of the published message, when it had one.
    pub fn message_id(&self) -> Option<&str> {
        self.message_id.as_ref().and_then(|id| id.to_str().ok())
    }
}

/// A message as a subscriber receives it.
#[derive(Clone, Debug)]
pub struct Delivery {
    topic: Arc<str>,
    message: Message,
    position: Position,
    attempt: u32,
    received_at: SystemTime,
    /// The subscription's schema drift counter, set by the delivery loop and counted by the
    /// typed handler. A handle, not the subscription's instruments: without a metrics
    /// recorder it is empty, and cloning it into every delivery costs nothing.
    pub(crate) drift: metrics::Counter,
}

impl Delivery {
    /// A first delivery of `message`, received now. Backends call this.
    pub fn new(topic: impl Into<Arc<str>>, message: Message, position: Position) -> Self {
        Delivery::received(topic, message, position, SystemTime::now())
    }

    /// A first delivery of `message`, received at `received_at`: for a backend that takes
    /// messages from its broker in batches and reads the clock once per batch.
    pub fn received(
        topic: impl Into<Arc<str>>,
        message: Message,
        position: Position,
        received_at: SystemTime,
    ) -> Self {
        Delivery {
            topic: topic.into(),
            message,
            position,
            attempt: 1,
            received_at,
            drift: metrics::Counter::noop(),
        }
    }

    /// Sets the attempt number (backends that carry attempts across redeliveries).
    #[must_use]
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.set_attempt(attempt);
        self
    }

    /// [`Delivery::with_attempt`] in place.
    pub(crate) fn set_attempt(&mut self, attempt: u32) {
        self.attempt = attempt.max(1);
    }

    /// The topic the message was consumed from.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The shared topic name.
    pub fn topic_arc(&self) -> &Arc<str> {
        &self.topic
    }

    /// The raw message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The headers of the raw message.
    pub fn headers(&self) -> &Headers {
        &self.message.headers
    }

    /// The payload of the raw message.
    pub fn payload(&self) -> &Bytes {
        &self.message.payload
    }

    /// Where the message sits in the broker.
    pub fn position(&self) -> &Position {
        &self.position
    }

    /// Which run of the handler this is, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When the message was received from the broker: when the backend took it, perhaps with
    /// others in one batch (the memory broker reads the clock once per batch taken from a
    /// queue, as a prefetch would).
    pub fn received_at(&self) -> SystemTime {
        self.received_at
    }

    /// Takes the raw message out.
    pub fn into_message(self) -> Message {
        self.message
    }

    pub(crate) fn next_attempt(&mut self) {
        self.attempt += 1;
    }
}

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

/// Where a new consumer group starts reading (brokers with persistence).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum StartFrom {
    /// Only messages published after the subscription started.
    #[default]
    Latest,
    /// Everything the broker still has.
    Earliest,
}

/// Options of one subscription.
///
/// ```
/// use std::time::Duration;
/// use event_core::broker::{RetryPolicy, SubscribeOptions};
///
/// let options = SubscribeOptions::new()
///     .queue("mailer")
///     .concurrency(8)
///     .retry(RetryPolicy::exponential(5, Duration::from_millis(50)));
/// assert_eq!(options.queue_name(), Some("mailer"));
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct SubscribeOptions {
    pub(crate) queue: Option<String>,
    pub(crate) concurrency: NonZeroUsize,
    pub(crate) retry: RetryPolicy,
    pub(crate) dead_letter_topic: Option<String>,
    pub(crate) drain_timeout: Duration,
    pub(crate) start_from: StartFrom,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions {
            queue: None,
            concurrency: NonZeroUsize::MIN,
            retry: RetryPolicy::default(),
            dead_letter_topic: None,
            drain_timeout: Duration::from_secs(30),
            start_from: StartFrom::Latest,
        }
    }
}

impl SubscribeOptions {
    /// Broadcast, one message at a time, the default retry policy, `<topic>.dlq`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Joins queue group `name`: each message goes to one member of the group.
    pub fn queue(mut self, name: impl Into<String>) -> Self {
        self.queue = Some(name.into());
        self
    }

    /// Sets the queue group, or broadcast with `None`.
    pub fn queue_opt(mut self, name: Option<String>) -> Self {
        self.queue = name;
        self
    }

    /// How many messages may be handled at once (at least 1). With more than one, messages of
    /// this subscription may finish out of order.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN);
        self
    }

    /// How failed handlers are retried before dead-lettering.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Dead-letter topic; `<topic>.dlq` when not set.
    pub fn dead_letter_topic(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter_topic = Some(topic.into());
        self
    }

    /// How long unsubscribe and shutdown wait for in-flight handlers.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Where a new consumer group starts (brokers with persistence).
    pub fn start_from(mut self, start: StartFrom) -> Self {
        self.start_from = start;
        self
    }

    /// The queue group, if any.
    pub fn queue_name(&self) -> Option<&str> {
        self.queue.as_deref()
    }

    /// The concurrency limit.
    pub fn concurrency_limit(&self) -> usize {
        self.concurrency.get()
    }

    /// The retry policy.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// The drain timeout.
    pub fn drain_timeout_value(&self) -> Duration {
        self.drain_timeout
    }

    /// Where a new group starts.
    pub fn start_position(&self) -> StartFrom {
        self.start_from
    }

    /// The dead-letter topic for messages consumed from `topic`.
    pub fn dead_letter_topic_for(&self, topic: &str) -> String {
        match &self.dead_letter_topic {
            Some(t) => t.clone(),
            None => format!("{topic}.dlq"),
        }
    }
}

/// What a broker promises beyond the common contract; the conformance suite reads it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Messages survive the subscriber (and the process): a group that reconnects resumes.
    pub persistent: bool,
    /// A new broadcast subscriber can replay messages published before it subscribed.
    pub replays_to_new_subscribers: bool,
    /// Messages with the same key are delivered in publish order to a subscription with
    /// concurrency 1.
    pub ordered_per_key: bool,
}

impl Capabilities {
    /// Nothing beyond the common contract.
    pub const fn none() -> Self {
        Capabilities {
            persistent: false,
            replays_to_new_subscribers: false,
            ordered_per_key: false,
        }
    }
}

/// An error of a broker operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The broker was closed with [`Broker::disconnect`].
    #[error("the {broker} broker at {address} is closed")]
    Closed {
        /// Backend name.
        broker: &'static str,
        /// Broker address.
        address: String,
    },
    /// The topic name is not usable.
    #[error("invalid topic {topic:?}: {reason}")]
    InvalidTopic {
        /// The rejected topic.
        topic: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The queue group name is not usable.
    #[error("invalid queue group {queue:?}: {reason}")]
    InvalidQueue {
        /// The rejected queue group.
        queue: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The topic does not exist and the broker does not create topics on demand.
    #[error("topic {topic:?} does not exist on the {broker} broker at {address}; {hint}")]
    TopicNotFound {
        /// Backend name.
        broker: &'static str,
        /// Broker address.
        address: String,
        /// The missing topic.
        topic: String,
        /// What the topic is for, when it is not the one asked for (a subscription's
        /// dead-letter topic), and how to create it.
        hint: Cow<'static, str>,
    },
    /// The broker accepted the message but no queue or subscription was bound to receive it.
    #[error("no queue on the {broker} broker receives messages for topic {topic:?}; {hint}")]
    Unroutable {
        /// Backend name.
        broker: &'static str,
        /// The topic the message was published to.
        topic: String,
        /// What usually causes it.
        hint: &'static str,
    },
    /// The connection to the broker is down and did not come back in time.
    #[error("the {broker} broker at {address} is unreachable; gave up after {waited:?}")]
    Unavailable {
        /// Backend name.
        broker: &'static str,
        /// Broker address.
        address: String,
        /// How long the operation waited for the connection.
        waited: Duration,
    },
    /// The operation did not finish in time.
    #[error("{operation} on the {broker} broker timed out after {timeout:?}")]
    Timeout {
        /// Backend name.
        broker: &'static str,
        /// What was attempted.
        operation: &'static str,
        /// How long it was given.
        timeout: Duration,
    },
    /// The client library reported an error.
    #[error("{operation} on the {broker} broker failed")]
    Backend {
        /// Backend name.
        broker: &'static str,
        /// What was attempted.
        operation: &'static str,
        /// The client library's error.
        #[source]
        source: BoxError,
    },
}

impl BrokerError {
    /// A short kebab-case name of the variant, for metrics labels and span attributes.
    pub fn kind(&self) -> &'static str {
        match self {
            BrokerError::Closed { .. } => "closed",
            BrokerError::InvalidTopic { .. } => "invalid-topic",
            BrokerError::InvalidQueue { .. } => "invalid-queue",
            BrokerError::TopicNotFound { .. } => "topic-not-found",
            BrokerError::Unroutable { .. } => "unroutable",
            BrokerError::Unavailable { .. } => "unavailable",
            BrokerError::Timeout { .. } => "timeout",
            BrokerError::Backend { .. } => "backend",
        }
    }
}

/// A failed publish; gives the message back so it can be retried with the same id.
#[derive(Debug, thiserror::Error)]
#[error("publishing to {topic:?} failed")]
pub struct PublishError {
    topic: String,
    message: Box<Message>,
    #[source]
    source: BrokerError,
}

impl PublishError {
    /// A failed publish of `message` to `topic`.
    pub fn new(topic: impl Into<String>, message: Message, source: BrokerError) -> Self {
        PublishError {
            topic: topic.into(),
            message: Box::new(message),
            source,
        }
    }

    /// The topic the message was for.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The message that was not published (headers included, so a retry keeps its id).
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// Takes the message back.
    pub fn into_message(self) -> Message {
        *self.message
    }

    /// The broker's error.
    pub fn broker_error(&self) -> &BrokerError {
        &self.source
    }
}

/// Checks a topic name; backends call it before touching the network.
///
/// # Errors
///
/// [`BrokerError::InvalidTopic`] when the name is empty, longer than 249 bytes (Kafka's limit)
/// or contains whitespace or control characters.
pub fn validate_topic(topic: &str) -> Result<(), BrokerError> {
    let reason = if topic.is_empty() {
        "a topic name cannot be empty"
    } else if topic.len() > 249 {
        "a topic name is at most 249 bytes"
    } else if topic.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "a topic name cannot contain whitespace or control characters"
    } else {
        return Ok(());
    };
    Err(BrokerError::InvalidTopic {
        topic: topic.to_owned(),
        reason,
    })
}

/// Checks a subscription's topic and queue group; backends call it first in
/// [`Broker::subscribe`].
///
/// # Errors
///
/// As [`validate_topic`], and [`BrokerError::InvalidQueue`] for an empty queue group name.
pub fn validate_subscription(topic: &str, options: &SubscribeOptions) -> Result<(), BrokerError> {
    validate_topic(topic)?;
    match options.queue_name() {
        Some("") => Err(BrokerError::InvalidQueue {
            queue: String::new(),
            reason: "a queue group name cannot be empty",
        }),
        _ => Ok(()),
    }
}

/// What [`Broker::try_publish`] did.
#[derive(Debug)]
#[must_use = "a message given back is not published"]
pub enum TryPublish {
    /// The broker took the message (or refused it for good): the result of the publish.
    Done(Result<Receipt, PublishError>),
    /// Publishing would have to wait: the message, untouched, for [`Broker::publish`].
    WouldWait(Message),
}

/// The raw byte broker, implemented by every backend.
///
/// Use it directly to move bytes, like go-micro's `broker.Publish`:
///
/// ```
/// use event_core::broker::{handler_fn, Broker, Message, Outcome, SubscribeOptions};
/// use event_core::memory::MemoryBroker;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let broker = MemoryBroker::new();
/// broker.connect().await?;
/// let (tx, mut rx) = tokio::sync::mpsc::channel(1);
/// let sub = broker
///     .subscribe("greetings", SubscribeOptions::new(), handler_fn("print", move |d| {
///         let tx = tx.clone();
///         async move {
///             tx.send(d.payload().clone()).await.ok();
///             Outcome::Ack
///         }
///     }))
///     .await?;
/// broker.publish("greetings", Message::new("hello").with_header("lang", "en")).await?;
/// assert_eq!(rx.recv().await.unwrap(), "hello");
/// sub.unsubscribe().await;
/// broker.disconnect().await?;
/// # Ok(()) }
/// ```
#[async_trait]
pub trait Broker: Send + Sync + fmt::Debug + 'static {
    /// Backend name for logs and metrics (`memory`, `kafka`, `amqp`).
    fn name(&self) -> &'static str;

    /// The OpenTelemetry `messaging.system` of this broker (`kafka`, `rabbitmq`); the backend
    /// name by default.
    fn messaging_system(&self) -> &'static str {
        self.name()
    }

    /// Address for logs (no credentials).
    fn address(&self) -> String;

    /// What the broker promises beyond the common contract.
    fn capabilities(&self) -> Capabilities;

    /// Connects (idempotent).
    async fn connect(&self) -> Result<(), BrokerError>;

    /// Drains subscriptions, flushes what is queued for publishing and closes (idempotent).
    async fn disconnect(&self) -> Result<(), BrokerError>;

    /// Publishes `message` to `topic`; resolves when the broker has it.
    async fn publish(&self, topic: &str, message: Message) -> Result<Receipt, PublishError>;

    /// Publishes `message` now if that needs no waiting, without the boxed future of
    /// [`Broker::publish`]; otherwise gives the message back untouched.
    ///
    /// An optional fast path: [`Publisher`](crate::Publisher) tries it first and falls back to
    /// [`Broker::publish`] on [`TryPublish::WouldWait`]. A broker that answers
    /// [`TryPublish::Done`] must have done exactly what `publish` would have done. The default
    /// always answers `WouldWait`; the memory broker takes the message when every queue of the
    /// topic has room and no publisher is waiting for room on that topic (so a message never
    /// overtakes one published before it).
    fn try_publish(&self, topic: &str, message: Message) -> TryPublish {
        let _ = topic;
        TryPublish::WouldWait(message)
    }

    /// Subscribes `handler` to `topic`.
    async fn subscribe(
        &self,
        topic: &str,
        options: SubscribeOptions,
        handler: Arc<dyn RawHandler>,
    ) -> Result<Subscription, BrokerError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_display() {
        assert_eq!(Position::Sequence { sequence: 4 }.to_string(), "sequence 4");
        assert_eq!(
            Position::Offset {
                partition: 2,
                offset: 17
            }
            .to_string(),
            "partition 2 offset 17"
        );
        assert_eq!(
            Position::DeliveryTag {
                delivery_tag: 9,
                redelivered: true
            }
            .to_string(),
            "delivery tag 9 (redelivered)"
        );
    }

    #[test]
    fn topic_validation() {
        assert!(validate_topic("users.created").is_ok());
        for bad in ["", "a b", "tab\there", &"x".repeat(250)] {
            let err = validate_topic(bad).unwrap_err();
            assert!(matches!(err, BrokerError::InvalidTopic { .. }), "{bad:?}");
        }
    }

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
