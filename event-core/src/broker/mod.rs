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
//! The delivery loop that keeps these promises is written once, in core; a backend only
//! fetches bytes and acknowledges positions (see [`backend`](crate::backend)).
//!
#![cfg_attr(feature = "testkit", doc = "[testkit]: crate::testkit")]
#![cfg_attr(not(feature = "testkit"), doc = "[testkit]: crate#features")]

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

mod attributes;
mod error;
mod handler;
mod message;
mod options;
pub(crate) mod position;
mod retry;
mod subscription;
mod url;

pub use attributes::{AttributeSink, AttributeValue};
pub use error::{BrokerError, PublishError};
pub use handler::{Failure, FailureKind, HandlerPanicked, Outcome, RawHandler, handler_fn};
pub use message::{Delivery, Message, Receipt};
pub use options::{StartFrom, SubscribeOptions};
pub use position::Position;
pub use retry::RetryPolicy;
pub(crate) use subscription::Stop;
pub use subscription::{DrainReport, Subscription};
pub use url::{
    BrokerScheme, BrokerUrlError, DEFAULT_BROKER_URL, ENV_BROKER, connect, from_env, known_schemes,
    redact,
};

/// A boxed error, as handlers and backends return them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

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
    } else if !topic.bytes().all(|b| b.is_ascii_graphic())
        // checked per publish: printable ASCII (nearly every name) in one pass over the bytes,
        // the rest character by character
        && topic.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        "a topic name cannot contain whitespace or control characters"
    } else {
        return Ok(());
    };
    Err(BrokerError::InvalidTopic {
        topic: topic.to_owned(),
        reason,
    })
}

/// Checks a subscription's topic, its dead-letter topic and its queue group; backends call it
/// first in [`Broker::subscribe`].
///
/// # Errors
///
/// As [`validate_topic`], for the topic and for its dead-letter topic
/// ([`SubscribeOptions::dead_letter_topic_for`]: a topic of 246 bytes or more has no valid
/// default one), and [`BrokerError::InvalidQueue`] for an empty queue group name.
pub fn validate_subscription(topic: &str, options: &SubscribeOptions) -> Result<(), BrokerError> {
    validate_topic(topic)?;
    // checked now: a dead letter that can never be published would hold its message, and
    // the subscription behind it, for ever
    validate_topic(&options.dead_letter_topic_for(topic))?;
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

    /// Writes the backend's own OpenTelemetry attributes of a message published to or
    /// consumed from `topic` into `sink` (Kafka: the message key; RabbitMQ: the routing key).
    /// The attributes of the message's [`Position`] come from its
    /// [`PositionKind`](crate::backend::PositionKind). Called for the publish and process
    /// spans of the framework when they are exported to OpenTelemetry (the `opentelemetry`
    /// feature); the default writes nothing.
    fn message_attributes(&self, topic: &str, message: &Message, sink: &mut AttributeSink<'_>) {
        let _ = (topic, message, sink);
    }

    /// What the broker promises beyond the common contract.
    fn capabilities(&self) -> Capabilities;

    /// Connects (idempotent).
    async fn connect(&self) -> Result<(), BrokerError>;

    /// Drains subscriptions, flushes what is queued for publishing and closes (idempotent).
    async fn disconnect(&self) -> Result<(), BrokerError>;

    /// Publishes `message` to `topic`; resolves when the broker has it.
    ///
    /// The byte-level API: the headers are sent as they are, reserved names (`ce_*`,
    /// `x-event-*`, `content-type`, ...) included, since the framework's own dead letters
    /// and foreign-format messages go through here. Checked names are on the typed layer:
    /// [`Context`](crate::Context) metadata refuses reserved names, and
    /// [`Publisher`](crate::Publisher) writes its own headers.
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
    fn topic_validation() {
        // printable ASCII, and names past the ASCII fast path that are still fine
        for good in ["users.created", "commandes.créées", "注文.作成"] {
            assert!(validate_topic(good).is_ok(), "{good:?}");
        }
        // whitespace and control characters, ASCII or not
        for bad in [
            "",
            "a b",
            "tab\there",
            "bell\u{7}",
            "del\u{7f}",
            "no\u{a0}break",
            "ideographic\u{3000}space",
            "next\u{85}line",
            &"x".repeat(250),
        ] {
            let err = validate_topic(bad).unwrap_err();
            assert!(matches!(err, BrokerError::InvalidTopic { .. }), "{bad:?}");
        }
    }

    #[test]
    fn a_subscription_whose_dead_letters_have_nowhere_to_go_is_refused() {
        let long = "x".repeat(246);
        assert!(validate_subscription(&long[..245], &SubscribeOptions::new()).is_ok());
        match validate_subscription(&long, &SubscribeOptions::new()) {
            Err(BrokerError::InvalidTopic { topic, .. }) => {
                assert_eq!(topic, format!("{long}.dlq"))
            }
            other => panic!("{other:?}"),
        }
        let empty = SubscribeOptions::new().dead_letter_topic("");
        assert!(matches!(
            validate_subscription("orders", &empty),
            Err(BrokerError::InvalidTopic { topic, .. }) if topic.is_empty()
        ));
    }
}
