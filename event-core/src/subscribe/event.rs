//! `Event<T>`: a decoded message with its metadata, for handlers that want both.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use crate::broker::{Delivery, Position};
use crate::headers::Headers;

/// A typed message with everything the broker said about it.
///
/// Take `Event<T>` instead of `T` as a handler's first argument to see the id, type, time,
/// headers, topic, position and attempt. It dereferences to the message.
pub struct Event<T> {
    message: T,
    topic: Arc<str>,
    headers: Headers,
    key: Option<Bytes>,
    position: Position,
    attempt: u32,
    received_at: SystemTime,
    type_verified: bool,
}

impl<T> Event<T> {
    pub(crate) fn new(message: T, delivery: &Delivery, type_verified: bool) -> Self {
        Event {
            message,
            topic: delivery.topic_arc().clone(),
            headers: delivery.headers().clone(),
            key: delivery.message().key.clone(),
            position: *delivery.position(),
            attempt: delivery.attempt(),
            received_at: delivery.received_at(),
            type_verified,
        }
    }

    /// The message.
    pub fn message(&self) -> &T {
        &self.message
    }

    /// Takes the message out.
    pub fn into_message(self) -> T {
        self.message
    }

    /// The message id (`ce_id`, or the AMQP / go-micro spellings).
    pub fn id(&self) -> Option<&str> {
        self.headers.message_id()
    }

    /// The type header, when the producer sent one (see [`Event::type_verified`]).
    pub fn message_type(&self) -> Option<&str> {
        self.headers.message_type()
    }

    /// Whether a type header vouched for the message type. `false` for messages from producers
    /// that send no type header (the raw Broker API, go-micro): they were decoded by content
    /// type alone.
    pub fn type_verified(&self) -> bool {
        self.type_verified
    }

    /// The producer (`ce_source`).
    pub fn source(&self) -> Option<&str> {
        self.headers.source()
    }

    /// When the message was published (`ce_time`).
    pub fn time(&self) -> Option<SystemTime> {
        self.headers.time()
    }

    /// When it was received.
    pub fn received_at(&self) -> SystemTime {
        self.received_at
    }

    /// All headers, in wire order.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The record key, if any.
    pub fn key(&self) -> Option<&Bytes> {
        self.key.as_ref()
    }

    /// The topic it was consumed from.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Where it sits in the broker.
    pub fn position(&self) -> &Position {
        &self.position
    }

    /// Which run of the handler this is, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

impl<T> Deref for Event<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.message
    }
}

impl<T> DerefMut for Event<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.message
    }
}

impl<T: fmt::Debug> fmt::Debug for Event<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("id", &self.id())
            .field("topic", &self.topic)
            .field("position", &self.position)
            .field("attempt", &self.attempt)
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}
