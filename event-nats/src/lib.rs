//! NATS backend for `event`: the core [`Broker`](event_core::Broker) contract over
//! [async-nats](https://docs.rs/async-nats), on JetStream (the default) or, opt-in, on core
//! NATS.
//!
//! Typed publishers and `#[subscriber]` handlers work unchanged when the broker is swapped
//! from memory, Kafka or RabbitMQ to NATS, in code:
//!
//! ```no_run
//! use event_nats::NatsBroker;
//! use event_core::Service;
//! # #[derive(Clone, PartialEq, prost::Message)] pub struct UserCreated { #[prost(string, tag = "1")] pub email: String }
//! # impl prost::Name for UserCreated { const NAME: &'static str = "UserCreated"; const PACKAGE: &'static str = "users.v1"; }
//!
//! async fn send_welcome(user: UserCreated) {
//!     println!("welcome {}", user.email);
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = NatsBroker::builder("nats://127.0.0.1:4222")
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
//! or by configuration, `EVENT_BROKER=nats://127.0.0.1:4222` with
//! [`event_core::broker::from_env`] (link the crate, e.g. `use event_nats as _;`, so that it
//! registers the `nats` and `tls` schemes).
//!
//! # URLs
//!
//! | URL | means |
//! |---|---|
//! | `nats://127.0.0.1:4222` | one server (port 4222 when left out) |
//! | `nats://a:4222,b:4222` or `nats://a:4222?servers=b:4222,c:4222` | several servers of a cluster; the client connects to one and fails over (use `servers=` where the URL must parse as one URL, e.g. in `EVENT_BROKER`) |
//! | `nats://user:password@host:4222` | user and password |
//! | `nats://token@host:4222` | a token |
//! | `tls://host:4222`, or `nats://host?tls=true`, `tls_ca=ca.pem`, `tls_cert=…&tls_key=…` | TLS (rustls; the platform's roots plus `tls_ca`; a client certificate) |
//! | `nats://host:4222?mode=core` | [core NATS](#core-nats-mode): at most once, no JetStream |
//!
//! The query parameters, each also a method of [`NatsBrokerBuilder`] (whose documentation
//! has the defaults): `mode` (`jetstream` or `js` \| `core`), `servers`, `name` (the connection name),
//! `stream` (one stream for every topic), `stream_prefix` (of the streams made per topic,
//! default `EVENT_`), `create_streams` (default `true`), `storage` (`file` \| `memory`),
//! `retention` (`limits` \| `interest` \| `workqueue`), `replicas`, `max_age_ms`, `max_bytes`,
//! `max_messages`, `duplicate_window_ms`, `ack_wait_ms` (default 30 000), `max_deliver`
//! (default 10 for a consumer made new, -1 unlimited), `prefetch`, `group_inactive_threshold_ms`,
//! `broadcast_inactive_threshold_ms`, `connect_timeout_ms`, `publish_timeout_ms`,
//! `request_timeout_ms`, `reconnect_min_ms`, `reconnect_max_ms`, `tls`, `tls_ca`, `tls_cert`,
//! `tls_key`, `wire` (`cloudevents`, the default, or `go-micro`: go-micro's JSON envelope as the
//! payload, see [`NatsBrokerBuilder::go_micro_envelope`]). An unknown parameter is an error
//! that lists the known ones.
//!
//! # The mapping (JetStream)
//!
//! | `event` | NATS JetStream |
//! |---|---|
//! | topic `users.created` | the subject `users.created` (a literal subject: no `*`, `>` or empty tokens) |
//! | where its messages are kept | the stream whose subjects hold it: any stream (one made by `nats stream add` with `users.>`, say); else, with `create_streams`, the stream `EVENT_users_created` ([`NatsBroker::stream_name_for`]), or the subject is added to the one stream of `stream=NAME` |
//! | publish | a JetStream publish; it resolves with the PubAck, and the receipt's position is the **stream sequence** |
//! | queue group `g` | the durable pull consumer `users_created_g` ([`NatsBroker::group_consumer_name`]) on the stream, filtered on the subject, explicit acks; every member pulls from it |
//! | broadcast (no queue group) | an ephemeral pull consumer per subscriber, from new messages on (`DeliverPolicy::New`; `StartFrom::Earliest`: from the stream's start), removed when the subscriber unsubscribes (or after `broadcast_inactive_threshold_ms` without it) |
//! | dead letters | published to `<topic>.dlq`, whose subject every subscribe puts in a stream too (with `create_streams`; otherwise the subscribe fails naming it), so they are kept whether or not anyone subscribes to them |
//! | message key | the header `x-event-key` (NATS has no key) |
//!
//! The streams and consumers are checked at subscribe (and a stream at the first publish that
//! finds none): a topic in no stream, with `create_streams=false`, is a
//! [`BrokerError::TopicNotFound`](event_core::broker::BrokerError::TopicNotFound) that names
//! the topic and the setting. Streams made here get the `storage`, `retention`, `replicas` and
//! limit settings; existing streams are used as they are. A server without JetStream is an
//! error that says to start it with `-js`, or to use `mode=core`.
//!
//! # On the wire
//!
//! Body = the encoded message. NATS headers carry our header scheme under the names Kafka
//! record headers have (`ce_id`, `ce_type`, `ce_source`, `ce_time`, `ce_specversion`,
//! `content-type`, `traceparent`, `tracestate`, `baggage`, `correlation-id`, `causation-id`,
//! user metadata as plain headers), plus:
//!
//! - `Nats-Msg-Id` = the message id (`ce_id`): JetStream drops a publish that repeats one
//!   within the stream's duplicate window, so a publish retried after a lost PubAck is kept
//!   once. A message without an id (a raw [`Broker::publish`](event_core::Broker::publish))
//!   gets one in `Nats-Msg-Id`, kept in the message a failed publish gives back. A dead
//!   letter's is `<id>@<dead-letter topic>#<handler>#<UUID v7 of that publish>`, so that a
//!   dead letter kept in the same stream as its original (a stream with `orders.>`) is not
//!   dropped as a duplicate of it, nor the dead letters of one message from two queue groups
//!   (whose handlers may have the same name) as duplicates of each other. (A message
//!   published again with its id, to the same subject, within the duplicate window, is
//!   dropped: that is what the window is for.)
//! - `x-event-key` = the key.
//! - NATS header values are lines of text that the client trims: a value that is not UTF-8,
//!   has a line break, or starts or ends with whitespace (a multi-line `x-event-error`, say)
//!   is percent-encoded and its name listed in `x-event-escaped`; receiving decodes it.
//!
//! Receiving reverses the mapping. A message from another NATS client is read from what it
//! has: its headers (any case: `Content-Type` is `content-type`), and no type header means
//! the typed subscriber decodes by content type, its type unverified; what cannot be decoded
//! is diagnosed and dead-lettered.
//!
//! # What is at-least-once
//!
//! - **Publish** (JetStream) resolves once the stream has the message (the PubAck); on
//!   failure the message is given back in the
//!   [`PublishError`](event_core::broker::PublishError). A PubAck that does not come
//!   (connection lost, server restarting) is awaited again with the same `Nats-Msg-Id` until
//!   `publish_timeout_ms`: kept once if it was stored. At most 5,000 publishes of one
//!   connection wait for their PubAck at once; more wait for room, within the same timeout.
//! - **Consume**: explicit acknowledgements, only after the handler's outcome (the shared
//!   delivery loop of `event-core`). A failing handler is retried in place with the
//!   subscription's backoff, then dead-lettered with the `x-event-*` headers and
//!   acknowledged: the server never loops a failing message. While a message is held (in a
//!   handler, in its backoff, or fetched ahead), the backend tells the server every half
//!   `AckWait` that it is in progress (`+WPI`), so it is not redelivered meanwhile.
//!   The server redelivers only what a member that went away held, what was given back at
//!   shutdown, or what the client could not read; a message delivered `max_deliver` times
//!   (default 10 for a consumer made new) is read from the stream and dead-lettered without
//!   a handler run (kind `undeliverable`; see [`NatsBrokerBuilder::max_deliver`]), so that
//!   no message comes back forever. The attempt number of a message is the server's delivery
//!   count.
//! - **Acknowledgements** are publishes into the client's outgoing buffer: done once handed
//!   to the client (bounded), flushed when the subscription closes. An acknowledgement lost
//!   with the connection means a redelivery `AckWait` later: handlers must tolerate
//!   duplicates.
//! - **Order**: a consumer delivers its subject in stream order. With concurrency 1 a
//!   subscriber handles them in that order (a retried message holds up those behind it); a
//!   queue group with several members, or a larger concurrency, trades order for throughput.
//! - **Prefetch**: a subscription pulls as many messages as its `prefetch`, or its concurrency
//!   if that is larger: a member of a queue group holds no more than that (for about a second
//!   after a reconnect, up to twice that: the pull requests sent before it may still bring
//!   messages).
//! - **Reconnection**: async-nats reconnects on its own (`reconnect_min_ms` …
//!   `reconnect_max_ms`); the pull consumers ask again when it does, and make their consumer
//!   again if the server lost it. Publishes wait meanwhile, at most `publish_timeout_ms`.
//! - **Shutdown**: [`disconnect`](event_core::Broker::disconnect) stops pulling, lets
//!   in-flight handlers finish (each subscription's drain timeout) and acknowledges what
//!   finished, gives back (`-NAK`) what was fetched and not handled, waits for outstanding
//!   PubAcks, flushes and closes the connection. Nothing is dead-lettered because of shutdown.
//!   What was given back goes to the other members of the group at once: a subscription that
//!   closes while messages are coming lets its inbox go only once its pull requests are over
//!   (filled, or expired: a request lasts 1 s), so that nothing the server sent is dropped
//!   on the way and left to `AckWait`. Closing an idle subscription asks the consumer whether
//!   anything is on the way and does not wait.
//!
//! What is not: a broadcast subscriber is a consumer of its own that lives as long as the
//! subscription; it sees what is published while it exists (or from the start of the stream,
//! with `StartFrom::Earliest`), not what was published before it subscribed. When the server
//! drops that consumer (the connection was away longer than
//! `broadcast_inactive_threshold_ms`, or a memory stream was lost), it is made again from the
//! message after the last one received, so the subscriber misses only what the stream no
//! longer holds by then.
//!
//! # Core NATS mode
//!
//! `mode=core` ([`Mode::Core`]) uses plain subjects: a queue group is a NATS queue
//! subscription, broadcast a plain subscription, and nothing touches JetStream. It is
//! **at most once**, and its [`Capabilities`](event_core::broker::Capabilities) say so
//! (`persistent` and `replays_to_new_subscribers` are false):
//!
//! - nothing is stored: a message published while no subscriber is connected is gone, and a
//!   queue group whose members are all down misses what is published meanwhile;
//! - a publish resolves after a round trip through the server (it then has the message and
//!   forwarded it to the subscriptions it had), not after any subscriber got it;
//! - acknowledgements do nothing, and a message given back (shutdown, a handler cut off by
//!   the drain timeout) is lost; a message lost with a connection is not redelivered;
//! - failures are still retried in place and then dead-lettered to `<topic>.dlq`, a plain
//!   subject: the dead letter reaches only the subscribers of that subject connected then;
//! - a subscriber slower than the publishers drops messages once its buffer is full (NATS's
//!   slow consumer; logged);
//! - order: the messages of one publishing connection arrive in the order it sent them.
//!
//! Use it where NATS's own at-most-once fan-out is what is wanted (telemetry, caches,
//! notifications that are sent again anyway), and JetStream for everything else.
//!
//! # Limits
//!
//! The JetStream API is addressed at its default prefix `$JS.API` (no JetStream domains);
//! authentication is user and password or a token (no NKeys or credential files).

mod broker;
mod config;
mod consume;
mod error;
mod produce;
mod streams;
mod wire;

pub use broker::NatsBroker;
pub use config::{
    DEFAULT_MAX_DELIVER, DEFAULT_PORT, DEFAULT_STREAM_PREFIX, Mode, NatsBrokerBuilder, Retention,
    Storage,
};
pub use error::{NatsBackendError, NatsConfigError};
pub use wire::UNREADABLE_HEADERS;

/// The backend name, as [`Broker::name`](event_core::Broker::name) returns it.
pub(crate) const BROKER_NAME: &str = "nats";

/// Entry points for the benchmark (`benches/nats.rs`), which publishes with raw async-nats
/// exactly what this backend sends; not part of the API.
#[doc(hidden)]
pub mod __bench {
    use event_core::broker::Message;

    /// `wire::to_nats`: the NATS headers `message` is published to `topic` with on JetStream.
    ///
    /// # Errors
    ///
    /// Those of `wire::to_nats` (a header name NATS cannot carry).
    pub fn to_nats(
        topic: &str,
        message: &Message,
    ) -> Result<Option<async_nats::HeaderMap>, crate::NatsBackendError> {
        crate::wire::to_nats(topic, message, true)
    }
}

/// Entry points for the fuzz targets in `fuzz/`; not part of the API.
#[doc(hidden)]
pub mod __fuzz {
    use bytes::Bytes;
    use event_core::broker::Message;

    /// A message JetStream gave up delivering, as read back from the stream with the header
    /// block `block` (`given_up::read_header_block`, then `given_up::recovered_message`),
    /// and the lines of the block that could not be read.
    pub fn recovered(topic: &str, block: &[u8], payload: Bytes) -> (Message, Vec<Vec<u8>>) {
        let block = crate::consume::given_up::read_header_block(block);
        let message =
            crate::consume::given_up::recovered_message(topic, Some(&block), payload, false);
        (message, block.unreadable)
    }

    /// `wire::to_nats` then `wire::from_nats`: `message` published to `topic` on JetStream
    /// (as its dead letter is) and consumed again.
    ///
    /// # Errors
    ///
    /// Those of `wire::to_nats` (a header name NATS cannot carry).
    pub fn republished(topic: &str, message: &Message) -> Result<Message, crate::NatsBackendError> {
        let headers = crate::wire::to_nats(topic, message, true)?;
        Ok(crate::wire::from_nats(
            headers.as_ref(),
            message.payload.clone(),
        ))
    }
}
