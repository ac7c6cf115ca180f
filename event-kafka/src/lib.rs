//! Kafka backend for `event`: the core [`Broker`](event_core::broker::Broker) contract over
//! [rdkafka](https://docs.rs/rdkafka) with a bundled librdkafka (no system library needed).
//!
//! Select it in code with [`KafkaBroker::builder`], or by URL: linking this crate registers
//! the `kafka://` (and `kafkas://`, TLS) scheme, so `EVENT_BROKER=kafka://127.0.0.1:9092`
//! works with [`event_core::broker::from_env`]. Name the crate somewhere in the program
//! (`use event_kafka as _;`) so the linker keeps the registration.
//!
//! ```no_run
//! use event_core::Service;
//! use event_kafka::{KafkaBroker, TopicSpec};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = KafkaBroker::builder("127.0.0.1:9092")
//!     .client_id("mailer")
//!     .ensure_topic(TopicSpec::new("users.created").partitions(6))
//!     .ensure_topic(TopicSpec::new("users.created.dlq"))
//!     .build()?;
//! let service = Service::builder("mailer")
//!     .broker(broker)
//!     .with_registered_subscribers()
//!     .build()?;
//! service.run().await?;
//! # Ok(()) }
//! ```
//!
//! # Delivery guarantees
//!
//! At least once. Offsets are stored only after a handler's outcome (acknowledged, or
//! dead-lettered to `<topic>.dlq`), and the stored offset of a partition is the lowest record
//! still unfinished, so a crash or a rebalance redelivers at most what was in flight. Records
//! of one partition are handled in order (of one key, with
//! [`parallel_keys`](KafkaBrokerBuilder::parallel_keys)); give a subscription a concurrency of
//! at least its partition count to handle all partitions at once. A retry holds only its own
//! partition (or key) for its backoff.
//!
//! Topics are not created on demand (many clusters forbid it): publishing or subscribing to a
//! missing topic fails at once with [`BrokerError::TopicNotFound`](event_core::broker::BrokerError::TopicNotFound).
//! Create topics, dead-letter topics included, with [`KafkaBroker::ensure_topics`] or
//! [`KafkaBrokerBuilder::ensure_topic`].
//!
//! A handler that runs longer than librdkafka's `max.poll.interval.ms` (5 minutes by default)
//! is not a problem: records are read by a separate task, so the consumer keeps polling.

mod admin;
mod broker;
mod config;
mod consumer;
mod error;

pub use admin::TopicSpec;
pub use broker::KafkaBroker;
pub use config::{Acks, Compression, KafkaBrokerBuilder};
pub use error::KafkaBackendError;

/// Backend name in logs, metrics and errors.
pub(crate) const NAME: &str = "kafka";

event_core::register_broker_scheme!("kafka", |url| Ok(std::sync::Arc::new(
    KafkaBroker::from_url(url)?
)));
event_core::register_broker_scheme!("kafkas", |url| Ok(std::sync::Arc::new(
    KafkaBroker::from_url(url)?
)));
