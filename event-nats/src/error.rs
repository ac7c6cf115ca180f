//! Errors of the NATS backend.

use event_core::broker::BoxError;

/// An error of the NATS client or of the NATS mapping; the `source` of
/// [`BrokerError::Backend`](event_core::broker::BrokerError::Backend) for this backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsBackendError {
    /// The client could not connect to any of the configured servers.
    #[error("cannot connect to NATS at {servers}")]
    Connect {
        /// The servers tried, comma separated, without credentials.
        servers: String,
        /// async-nats's error.
        #[source]
        source: async_nats::ConnectError,
    },
    /// A request to the JetStream API (stream or consumer management) failed or was refused.
    #[error("the JetStream API refused to {operation} ({what})")]
    JetStream {
        /// What was asked (`create stream`, `create consumer`, `look up the stream of a
        /// subject`, ...).
        operation: &'static str,
        /// The stream, consumer or subject it was about.
        what: String,
        /// async-nats's or the server's error.
        #[source]
        source: BoxError,
    },
    /// JetStream refused a publish, or its acknowledgement did not come.
    #[error("JetStream did not store the message published to {subject:?}")]
    Publish {
        /// The subject (topic).
        subject: String,
        /// async-nats's error.
        #[source]
        source: async_nats::jetstream::context::PublishError,
    },
    /// A core NATS operation (publish, subscribe, flush) failed: the client is closed or its
    /// connection is gone for good.
    #[error("the NATS client failed to {operation}")]
    Client {
        /// What was attempted.
        operation: &'static str,
        /// async-nats's error.
        #[source]
        source: BoxError,
    },
    /// A header name NATS cannot carry (NATS header names are printable ASCII without `:`).
    #[error("header name {name:?} cannot travel in NATS headers: {reason}")]
    HeaderName {
        /// The name, cut to 64 characters.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A broker configuration that cannot be used: a bad URL, query parameter or builder value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NatsConfigError {
    /// The URL does not parse as a NATS URL.
    #[error("{url:?} is not a valid NATS URL: {reason}")]
    InvalidUrl {
        /// The URL, without its password or token.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A query parameter this backend does not understand.
    #[error("unknown query parameter {name:?} in the NATS URL; known: {known}")]
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
