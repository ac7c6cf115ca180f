//! Raw messages: what a publisher hands the broker ([`Message`]), the broker's proof that it
//! has it ([`Receipt`]), and what a subscriber receives ([`Delivery`]).

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use super::Position;
use crate::headers::Headers;

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
    /// Why the broker gave up delivering this message, when it did
    /// ([`Delivery::undeliverable`]).
    undeliverable: Option<Arc<str>>,
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
            undeliverable: None,
        }
    }

    /// Marks a message its broker gave up delivering: one that reached the broker's delivery
    /// limit without an outcome. A backend that still gets such a message from its broker
    /// hands it to the delivery loop marked so, with `reason` saying why; the loop
    /// dead-letters it at once (kind [`Undeliverable`](crate::broker::FailureKind::Undeliverable),
    /// the error `reason`) without running the handler, and then acknowledges it.
    #[must_use]
    pub fn undeliverable(mut self, reason: impl Into<Arc<str>>) -> Self {
        self.undeliverable = Some(reason.into());
        self
    }

    /// Why the broker gave up delivering this message, when it did
    /// ([`Delivery::undeliverable`]).
    pub fn undeliverable_reason(&self) -> Option<&str> {
        self.undeliverable.as_deref()
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
