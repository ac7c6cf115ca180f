//! Errors of the AMQP backend.

/// An error of the RabbitMQ client or of the AMQP mapping; the `source` of
/// [`BrokerError::Backend`](event_core::broker::BrokerError::Backend) for this backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AmqpBackendError {
    /// lapin (the AMQP client) reported an error: the connection or channel failed, or the
    /// broker refused an operation (a queue declared with other arguments, a missing vhost).
    #[error("the AMQP client failed")]
    Client {
        /// lapin's error.
        #[source]
        source: lapin::Error,
    },
    /// The broker answered a publish with a negative confirm (`basic.nack`): it could not
    /// store the message.
    #[error("RabbitMQ refused the message for routing key {routing_key:?} (basic.nack)")]
    Nacked {
        /// The routing key (topic) of the refused message.
        routing_key: String,
    },
    /// A name is longer than AMQP allows (255 bytes for routing keys, queue and header names).
    #[error("{what} {name:?} is {len} bytes long; AMQP allows at most 255")]
    NameTooLong {
        /// What the name is (`header name`, `routing key`, `queue name`).
        what: &'static str,
        /// The name, cut to 64 characters.
        name: String,
        /// Its length in bytes.
        len: usize,
    },
}

impl From<lapin::Error> for AmqpBackendError {
    fn from(source: lapin::Error) -> Self {
        AmqpBackendError::Client { source }
    }
}

/// A broker configuration that cannot be used: a bad URI or query parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AmqpConfigError {
    /// The URI does not parse as an AMQP URI.
    #[error("{uri:?} is not a valid AMQP URI: {reason}")]
    InvalidUri {
        /// The URI, without its password.
        uri: String,
        /// What the parser said.
        reason: String,
    },
    /// A query parameter that neither this backend nor lapin understands.
    #[error("unknown query parameter {name:?} in the AMQP URI; known: {known}")]
    UnknownParameter {
        /// The parameter name.
        name: String,
        /// The parameters that are understood, comma separated.
        known: &'static str,
    },
    /// A query parameter or builder value with an unusable value.
    #[error("{name} = {value:?} is not valid: expected {expected}")]
    InvalidValue {
        /// The parameter or setting.
        name: &'static str,
        /// The rejected value.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
}
