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
//! still unfinished, so a rebalance redelivers at most what was in flight (and finished
//! records behind an unfinished one, with `parallel_keys`), and a crash also what finished
//! since the last auto-commit (every second). Records
//! of one partition are handled in order (of one key, with
//! [`parallel_keys`](KafkaBrokerBuilder::parallel_keys)); give a subscription a concurrency of
//! at least its partition count to handle all partitions at once. A retry holds only its own
//! partition (or key) for its backoff.
//!
//! Topics are not created on demand unless asked for (many clusters forbid it): publishing to
//! a missing topic, subscribing to one, or subscribing to a topic whose dead-letter topic
//! (`<topic>.dlq`) is missing fails at once with
//! [`BrokerError::TopicNotFound`](event_core::broker::BrokerError::TopicNotFound) naming the
//! missing topic. Create topics, dead-letter topics included, with
//! [`KafkaBroker::ensure_topics`] or [`KafkaBrokerBuilder::ensure_topic`]; or let the client
//! create what is missing with [`KafkaBrokerBuilder::create_topics`] (`create_topics=true` on
//! the URL, with `partitions=N` and `replication=N`): a subscribe then creates its topic and
//! its dead-letter topic, a publish the topic it publishes to.
//!
//! A handler that runs longer than librdkafka's `max.poll.interval.ms` (5 minutes by default)
//! is not a problem: records are read by a thread of each subscription's own, so the consumer
//! keeps polling.
//!
//! # Backpressure and rebalancing
//!
//! When [`max_buffered_per_partition`](KafkaBrokerBuilder::max_buffered_per_partition) records
//! of one partition wait for a handler, only that partition is paused; the others keep
//! flowing, so a slow or stuck key holds its own partition and nothing else. When a rebalance
//! takes partitions away, their handlers get
//! [`revoke_timeout`](KafkaBrokerBuilder::revoke_timeout) to finish, what finished is
//! committed, and only then does the next owner start, so a hand-over redelivers at most what
//! was still running at the deadline. The eager assignors (`range`, `roundrobin`, the default)
//! and the cooperative one (`partition.assignment.strategy=cooperative-sticky`, through
//! [`set_consumer`](KafkaBrokerBuilder::set_consumer) or the URL) both work; with the
//! cooperative one a rebalance revokes only the partitions that move, and the others keep
//! their place (their new records wait while the revoked partitions' handlers finish).
//!
//! Payloads and keys of up to 2 KiB are copied out of librdkafka into shared buffers of
//! 16 KiB (one allocation for many records); a buffer is freed when the last payload in it
//! is dropped, so a payload (or a decoded message that borrows its bytes) kept after its
//! handler returned keeps at most 16 KiB alive.
//!
//! # The wire
//!
//! A record's value is the encoded message, and its headers are CloudEvents binary-mode
//! headers (`event-core/docs/wire.md` in the repository). go-micro's Kafka broker plugin reads
//! and writes another format, a JSON envelope in the value with the headers inside: with
//! [`go_micro_envelope`](KafkaBrokerBuilder::go_micro_envelope) (`wire=go-micro` on the URL)
//! this broker publishes that envelope and unwraps the envelopes it consumes, so a topic is
//! shared with go-micro services both ways.
//!
//! A record header whose name is not UTF-8 text cannot be read through rdkafka: the record is
//! delivered without it, and with [`UNREADABLE_HEADERS`] naming its place among the record's
//! headers. (rdkafka reports such a name by panicking; the poller catches it, and the
//! process's panic hook prints the panic message to standard error.)

mod admin;
mod broker;
mod config;
mod consume;
mod error;
mod produce;
mod wire;

pub use admin::TopicSpec;
pub use broker::KafkaBroker;
pub use config::{Acks, Compression, KafkaBrokerBuilder};
pub use error::KafkaBackendError;
pub use wire::UNREADABLE_HEADERS;

/// Backend name in logs, metrics and errors.
pub(crate) const NAME: &str = "kafka";

event_core::register_broker_scheme!("kafka", |url| Ok(std::sync::Arc::new(
    KafkaBroker::from_url(url)?
)));
event_core::register_broker_scheme!("kafkas", |url| Ok(std::sync::Arc::new(
    KafkaBroker::from_url(url)?
)));
