//! The errors of broker operations: [`BrokerError`], and [`PublishError`], which gives the
//! message back.

use std::borrow::Cow;
use std::time::Duration;

use super::{BoxError, Message};

/// An error of a broker operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The broker was closed with [`Broker::disconnect`](super::Broker::disconnect).
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
    /// A typed publisher was given a message of another type to republish.
    #[error(
        "refusing to republish to {topic:?}: the message's type header names {found:?}, this \
         publisher publishes {expected}"
    )]
    WrongMessageType {
        /// The topic of the publisher.
        topic: String,
        /// The type the publisher publishes.
        expected: String,
        /// The type header the message carries (`None`: it has none).
        found: Option<String>,
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
            BrokerError::WrongMessageType { .. } => "wrong-message-type",
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
