//! Errors of the Kafka backend.

use event_core::broker::BrokerError;

/// What went wrong inside the Kafka backend; the source of [`BrokerError::Backend`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaBackendError {
    /// librdkafka rejected the configuration.
    #[error("invalid Kafka client configuration")]
    Config {
        /// librdkafka's error (names the property).
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A client call failed.
    #[error("{operation} failed")]
    Client {
        /// What was attempted.
        operation: &'static str,
        /// librdkafka's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The broker refused to create a topic.
    #[error("creating topic {topic:?} failed: {code}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// The broker's error code.
        code: rdkafka::types::RDKafkaErrorCode,
    },
    /// A librdkafka call that blocks could not run on the blocking thread pool.
    #[error("{operation} was cancelled: the runtime is shutting down")]
    Cancelled {
        /// What was attempted.
        operation: &'static str,
    },
}

pub(crate) fn backend(operation: &'static str, source: rdkafka::error::KafkaError) -> BrokerError {
    BrokerError::Backend {
        broker: crate::NAME,
        operation,
        source: Box::new(KafkaBackendError::Client { operation, source }),
    }
}
