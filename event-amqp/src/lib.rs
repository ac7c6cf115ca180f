//! RabbitMQ (AMQP 0-9-1) backend for `event`: the core [`Broker`](event_core::Broker)
//! contract over [lapin](https://docs.rs/lapin).
//!
//! Typed publishers and `#[subscriber]` handlers work unchanged when the broker is swapped
//! from memory or Kafka to RabbitMQ, in code:
//!
//! ```no_run
//! use event_amqp::AmqpBroker;
//! use event_core::Service;
//! # #[derive(Clone, PartialEq, prost::Message)] pub struct UserCreated { #[prost(string, tag = "1")] pub email: String }
//! # impl prost::Name for UserCreated { const NAME: &'static str = "UserCreated"; const PACKAGE: &'static str = "users.v1"; }
//!
//! async fn send_welcome(user: UserCreated) {
//!     println!("welcome {}", user.email);
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = AmqpBroker::builder("amqp://guest:guest@127.0.0.1:5672/%2f")
//!     .connection_name("mailer")
//!     .build()?;
//! let service = Service::builder("mailer")
//!     .broker(broker)
//!     .subscribe_with(
//!         "users.created",
//!         event_core::broker::SubscribeOptions::new().queue("mailer"),
//!         send_welcome,
//!     )
//!     .build()?
//!     .start()
//!     .await?;
//! service
//!     .publisher::<UserCreated>("users.created")
//!     .publish(&UserCreated { email: "ada@example.com".into() })
//!     .await?;
//! service.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! or by configuration, `EVENT_BROKER=amqp://guest:guest@127.0.0.1:5672/%2f?connection_name=mailer`
//! with [`event_core::broker::from_env`] (link the crate, e.g. `use event_amqp as _;`, so that
//! it registers the `amqp` and `amqps` schemes).
//!
//! # Topology
//!
//! - One **topic exchange** (default `event`, see [`AmqpBrokerBuilder::exchange`]); the
//!   **routing key is the topic**. go-micro's RabbitMQ broker uses the exchange `micro`
//!   (declared non-durable by default): configure `.exchange("micro").exchange_durable(false)`
//!   and the go-micro wire profile (`.wire_profile(WireProfile::GO_MICRO)`, or
//!   `?exchange=micro&exchange_durable=false&wire=go-micro`), and go-micro services and ours
//!   share events.
//! - **Queue group** `g` on topic `t`: the durable queue **`t.g`**, bound to `t`, shared by
//!   every member of the group. It exists until deleted, so a group that is down keeps its
//!   messages (queue arguments such as `x-queue-type=quorum` or `x-message-ttl` apply to it).
//! - **Broadcast** (no queue group): an exclusive, auto-delete, server-named queue per
//!   subscription; it lives as long as the subscription's connection, so a broadcast
//!   subscriber misses what is published while it reconnects.
//! - **Dead letters**: the dead-letter topic (`t.dlq` by default) is published through the
//!   same exchange with routing key `t.dlq`. Every subscription also declares the durable queue
//!   **`t.dlq`** bound to that routing key, so dead letters are kept even when nobody
//!   subscribes to the dead-letter topic (inspect or shovel them from there), and the
//!   mandatory dead-letter publish always has a route. (Both queues are durable unless
//!   `durable_queues=false`.)
//!
//! Everything is declared idempotently when subscribing, and again after a reconnection.
//!
//! # On the wire
//!
//! Body = the encoded message. Each fact travels once by default (the **lean**
//! [`WireProfile`]): in its AMQP property where AMQP has one, in the header table (long
//! strings) otherwise. Profiles, combinable, add copies for other readers (DESIGN.md §3):
//!
//! | `Message` header | lean (default) | `go-micro` adds | `cloudevents` adds |
//! |---|---|---|---|
//! | `ce_id` | property `message_id` | header `Micro-ID` | header `cloudEvents_id` |
//! | `ce_type` | property `type` | | header `cloudEvents_type` |
//! | `ce_source` | property `app_id` | | header `cloudEvents_source` |
//! | `ce_time` | property `timestamp` (whole seconds) | | header `cloudEvents_time` (full value) |
//! | `ce_specversion` | left out when `1.0` | | header `cloudEvents_specversion` |
//! | other `ce_*` | header `cloudEvents_*` | | |
//! | `content-type` | property `content_type` | header `Content-Type` | |
//! | `correlation-id` | property `correlation_id`, left out when it repeats the id | | |
//! | (the topic) | routing key | header `Micro-Topic` | |
//! | [key](event_core::broker::Message::key) | header `x-event-key` | | |
//! | anything else | header of the same name | | |
//!
//! Messages are persistent (`delivery_mode` 2). A value that does not fit its property (over
//! 255 bytes, not UTF-8, a time that is not RFC 3339 in UTC, several values) goes to the header
//! (`cloudEvents_*`, `Content-Type`, `correlation-id`) instead, so nothing is lost. The lean
//! profile carries the time at second resolution (AMQP's `timestamp`) and leaves out
//! `ce_specversion` `1.0`, which nothing in the consumer reads; `cloudevents` keeps the full
//! RFC 3339 value and the spec version, and with it a consumed message has exactly the headers
//! that were published. Choose the profile with [`AmqpBrokerBuilder::wire_profile`] or the URL
//! parameter `wire` (`wire=go-micro`, `wire=cloudevents`, `wire=go-micro,cloudevents`,
//! `wire=lean`).
//!
//! On receipt the mapping is reversed whatever the profile, so a subscriber sees `ce_type`,
//! `ce_id`, ... on every backend (the typed layer also accepts the `cloudEvents_`/
//! `cloudEvents:` names), from our messages of any profile, of older versions, and of other
//! producers; `Micro-ID` and `Micro-Topic` are dropped when they only repeat the id and the
//! routing key. A message from another AMQP client is read from what it has: header values of
//! any AMQP type are turned into text, and properties fill in missing headers
//! (`content_type`, `message_id`, `type`, `app_id`, `timestamp`, `correlation_id`). A go-micro
//! message (headers `Content-Type`, `Micro-ID`, `Micro-Topic`, raw protobuf body) is therefore
//! consumed as a typed event, its type unverified.
//!
//! # Delivery
//!
//! - **Publish** waits for the publisher confirm of its own message; all publishes share one
//!   channel, so many are in flight at once. Publishes are `mandatory`: a message no queue
//!   receives is returned by RabbitMQ and the publish fails with
//!   [`BrokerError::Unroutable`](event_core::broker::BrokerError::Unroutable), giving the
//!   message back. [`AmqpBrokerBuilder::mandatory`] turns that off (such a message is then
//!   confirmed and dropped), except for dead letters.
//! - **Consume**: manual acks, after the handler's outcome (the delivery loop of
//!   `event-core`), sent by a settle worker per channel so that the loop never waits for one:
//!   a run of settled delivery tags goes out as one `basic.ack` with `multiple` (once it
//!   covers half the prefetch, or 1 ms after it began), an ack above a
//!   message still in a handler on its own, and closing a subscription sends what is queued
//!   before the channel closes. `basic.qos` prefetch = [`AmqpBrokerBuilder::prefetch`]
//!   ([`DEFAULT_PREFETCH`] unless set), or the subscription's concurrency if larger. A failing handler is retried in place with
//!   the subscription's backoff (the message stays unacknowledged, nothing hot-loops through
//!   the broker), then dead-lettered with the `x-event-*` headers and acknowledged. A message
//!   given back (shutdown, handler cut off) is `basic.nack`ed with requeue. The attempt number
//!   of a redelivered message is RabbitMQ's `x-delivery-count` + 1 on quorum queues, at least
//!   2 on classic queues.
//! - **Order**: with concurrency 1 a queue's messages are handled one at a time in queue
//!   order; a larger concurrency trades order for throughput.
//!
//! # Reconnection
//!
//! A lost connection (broker restart, `rabbitmqctl close_all_connections`, network) is
//! re-established with exponential backoff ([`AmqpBrokerBuilder::reconnect_backoff`]). The
//! publishing channel, the exchange, every subscription's queues, bindings, `basic.qos` and
//! consumer come back without user code. Meanwhile publishes wait (at most
//! [`AmqpBrokerBuilder::publish_timeout`], then fail with
//! [`BrokerError::Unavailable`](event_core::broker::BrokerError::Unavailable) and the message
//! given back); a publish whose confirm was lost with the connection is sent again on the new
//! one (at-least-once). RabbitMQ redelivers what was unacknowledged; acknowledgements of
//! messages from the lost connection are dropped, never sent on the new one. Handlers must
//! therefore tolerate duplicates.
//!
//! A connection lost within 10 s of being made counts as a failed attempt, so the next one
//! waits longer. One message is known to cause this: lapin cannot parse a message whose
//! properties or headers hold text that is not UTF-8, such as a header name another client
//! sent as raw bytes. lapin then closes the connection, and RabbitMQ puts the message back
//! at the head of its queue. The subscription cannot get past such a message, and the log
//! says so. RabbitMQ can move it aside: on a quorum queue with a delivery limit and a
//! dead-letter exchange (queue arguments `x-queue-type=quorum`, `x-delivery-limit=N`,
//! `x-dead-letter-exchange=<the exchange>`, `x-dead-letter-routing-key=<topic>.dlq`, through
//! [`AmqpBrokerBuilder::queue_argument`] or the URL), it goes to the subscription's
//! dead-letter queue after N deliveries, and the subscription goes on (tested in
//! `event-amqp/tests/foreign_producer.rs`). Queue arguments apply to every durable queue of
//! a broker handle, so with that routing key this takes a handle per topic; a dead-letter
//! exchange of your own, with a queue bound to it, serves every topic.
//!
//! # Shutdown
//!
//! [`disconnect`](event_core::Broker::disconnect) cancels the consumers, lets in-flight
//! handlers finish (each subscription's drain timeout) and acknowledges what finished, waits
//! for outstanding publisher confirms, then closes the channels and the connection. Nothing is
//! dead-lettered because of shutdown; prefetched messages that were not handled go back to
//! their queue.

mod broker;
mod config;
mod connection;
mod consume;
mod error;
mod produce;
mod settle;
mod wire;

pub use broker::AmqpBroker;
pub use config::{AmqpBrokerBuilder, DEFAULT_EXCHANGE, DEFAULT_PREFETCH, QueueArgument};
pub use error::{AmqpBackendError, AmqpConfigError};
pub use wire::WireProfile;

/// The backend name, as [`Broker::name`](event_core::Broker::name) returns it.
pub(crate) const BROKER_NAME: &str = "amqp";

/// Entry points for the fuzz targets in `fuzz/`; not part of the API.
#[doc(hidden)]
pub mod __fuzz {
    use event_core::broker::Message;
    use lapin::BasicProperties;

    /// `wire::from_amqp`: a consumed message as the delivery loop sees it, and its attempt
    /// number.
    pub fn from_amqp(
        routing_key: &str,
        redelivered: bool,
        props: &BasicProperties,
        payload: Vec<u8>,
    ) -> (Message, u32) {
        let received = crate::wire::from_amqp(routing_key, redelivered, props, payload);
        (received.message, received.attempt)
    }

    /// `wire::to_amqp`: the properties and header table `message` is published with, in the
    /// default (lean) profile.
    ///
    /// # Errors
    ///
    /// Those of `wire::to_amqp` (a header name too long for AMQP).
    pub fn to_amqp(
        topic: &str,
        message: &Message,
    ) -> Result<BasicProperties, crate::AmqpBackendError> {
        crate::wire::to_amqp(topic, message, crate::WireProfile::LEAN)
    }

    /// `wire::to_amqp` in `profile`.
    ///
    /// # Errors
    ///
    /// Those of `wire::to_amqp` (a header name too long for AMQP).
    pub fn to_amqp_with(
        topic: &str,
        message: &Message,
        profile: crate::WireProfile,
    ) -> Result<BasicProperties, crate::AmqpBackendError> {
        crate::wire::to_amqp(topic, message, profile)
    }
}
