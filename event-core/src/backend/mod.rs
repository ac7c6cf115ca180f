//! Everything a backend implements or calls, in one place.
//!
//! Handler authors never need this module: it is the kit for writing a broker backend such as
//! the memory broker, `event-kafka` or `event-amqp`. A backend is a type that implements
//! [`Broker`]. Core runs the parts every backend shares, so that a backend only moves bytes:
//!
//! | the backend | core |
//! |---|---|
//! | publishes a [`Message`] and answers with a [`Receipt`] at a [`Position`] of its own [`PositionKind`] | the typed [`Publisher`](crate::Publisher): ids, time, headers, encoding, spans |
//! | opens a [`DeliverySource`] per subscription: fetch the next [`Incoming`] message | the delivery loop: concurrency, handler, retry with backoff, dead letters, drain |
//! | settles each message through its [`Acknowledge`] | calls ack only after the handler finished or the message was dead-lettered |
//! | keeps a [`Lifecycle`]: open, check before publishing, subscribe through it, close | validation, the closed state and its error, spawning and draining the loops |
//! | says what it promises ([`Capabilities`]) | the conformance suite tests each promise |
//! | names its span attributes ([`Broker::message_attributes`], [`PositionKind::with_attribute`]) | creates the spans and metrics |
//! | registers its URL scheme ([`register_broker_scheme!`](crate::register_broker_scheme)) | `EVENT_BROKER=scheme://...` ([`broker::from_env`](crate::broker::from_env)) |
//!
//! Helpers for a backend's own work: [`Backoff`] for reconnect loops, [`RateLimitedLog`] so
//! that a broker that keeps failing logs a line per interval rather than per attempt,
//! [`validate_topic`] before a publish touches the network, [`dead_letter_message`] for
//! a backend that must build a dead letter itself, and [`go_micro`] for a backend whose
//! go-micro counterpart wraps each message in its JSON envelope (Kafka, NATS).
//!
//! # A minimal backend
//!
//! ```
//! use std::collections::VecDeque;
//! use std::sync::{Arc, Mutex};
//!
//! use event_core::backend::{
//!     Acknowledge, Capabilities, DeliverySource, Incoming, Lifecycle, Position,
//! };
//! use event_core::broker::{
//!     Broker, BrokerError, Delivery, Message, PublishError, RawHandler, Receipt,
//!     SubscribeOptions, Subscription,
//! };
//!
//! /// Delivers what was published before the subscription, once (a toy).
//! #[derive(Clone, Debug)]
//! struct Replay {
//!     log: Arc<Mutex<Vec<(String, Message)>>>,
//!     lifecycle: Arc<Lifecycle>,
//! }
//!
//! struct Source(VecDeque<Delivery>);
//! struct Ack;
//!
//! impl Acknowledge for Ack {
//!     async fn ack(self) -> Result<(), BrokerError> { Ok(()) }
//!     async fn nack(self, _delivery: Delivery) -> Result<(), BrokerError> { Ok(()) }
//! }
//!
//! impl DeliverySource for Source {
//!     type Acker = Ack;
//!     async fn next(&mut self) -> Option<Incoming<Ack>> {
//!         match self.0.pop_front() {
//!             Some(delivery) => Some(Incoming { delivery, acker: Ack }),
//!             None => std::future::pending().await,
//!         }
//!     }
//!     async fn close(self) {}
//! }
//!
//! #[async_trait::async_trait]
//! impl Broker for Replay {
//!     fn name(&self) -> &'static str { "replay" }
//!     fn address(&self) -> String { "in-process".into() }
//!     fn capabilities(&self) -> Capabilities { Capabilities::none() }
//!     async fn connect(&self) -> Result<(), BrokerError> {
//!         self.lifecycle.open();
//!         Ok(())
//!     }
//!     async fn disconnect(&self) -> Result<(), BrokerError> {
//!         self.lifecycle.close().await;
//!         Ok(())
//!     }
//!     async fn publish(&self, topic: &str, message: Message) -> Result<Receipt, PublishError> {
//!         if let Err(error) = self.lifecycle.check_open() {
//!             return Err(PublishError::new(topic, message, error));
//!         }
//!         let mut log = self.log.lock().unwrap();
//!         log.push((topic.to_owned(), message));
//!         Ok(Receipt::new(Position::sequence(log.len() as u64)))
//!     }
//!     async fn subscribe(
//!         &self,
//!         topic: &str,
//!         options: SubscribeOptions,
//!         handler: Arc<dyn RawHandler>,
//!     ) -> Result<Subscription, BrokerError> {
//!         let open = async {
//!             let log = self.log.lock().unwrap();
//!             let deliveries = log.iter().enumerate().filter(|(_, (t, _))| t == topic).map(
//!                 |(i, (_, m))| Delivery::new(topic, m.clone(), Position::sequence(i as u64 + 1)),
//!             );
//!             Ok(Source(deliveries.collect()))
//!         };
//!         self.lifecycle
//!             .subscribe(Arc::new(self.clone()), topic, options, handler, open)
//!             .await
//!     }
//! }
//! # let _ = Replay { log: Arc::default(), lifecycle: Arc::new(Lifecycle::new("replay", "in-process")) };
//! ```

mod backoff;
pub(crate) mod delivery;
pub mod go_micro;
mod lifecycle;
mod source;

pub use backoff::Backoff;
pub use lifecycle::Lifecycle;
pub use source::{Acknowledge, DeliverySource, Incoming};

pub use crate::broker::position::{PositionKind, SEQUENCE};
pub use crate::broker::{
    AttributeSink, AttributeValue, Broker, BrokerScheme, Capabilities, Message, Position, Receipt,
    validate_subscription, validate_topic,
};
pub use crate::ratelimit::RateLimitedLog;
pub use crate::register_broker_scheme;
pub use delivery::dead_letter_message;

use crate::publish::id::{TIME_LEN, format_rfc3339_millis};

/// The last second RFC 3339 can write: 9999-12-31T23:59:59Z.
const LAST_RFC3339_SECOND: u64 = 253_402_300_799;

/// A time `secs` seconds and `millis` milliseconds after the Unix epoch as RFC 3339 text in
/// UTC with milliseconds, the form publishers write in `ce_time`: for a backend whose broker
/// carries the time as a number (AMQP's `timestamp` property, in seconds) and that hands it to
/// handlers as that header. Written in place, without an allocation.
///
/// `None` after 9999-12-31T23:59:59.999Z, which RFC 3339 cannot write, or for `millis`
/// above 999.
///
/// ```
/// let text = event_core::backend::rfc3339_millis(1_787_228_096, 5).unwrap();
/// assert_eq!(&text, b"2026-08-20T12:14:56.005Z");
/// let last = event_core::backend::rfc3339_millis(253_402_300_799, 999).unwrap();
/// assert_eq!(&last, b"9999-12-31T23:59:59.999Z");
/// assert_eq!(event_core::backend::rfc3339_millis(253_402_300_800, 0), None);
/// assert_eq!(event_core::backend::rfc3339_millis(0, 1000), None);
/// ```
pub fn rfc3339_millis(secs: u64, millis: u32) -> Option<[u8; 24]> {
    if secs > LAST_RFC3339_SECOND || millis > 999 {
        return None;
    }
    let mut text = [0; TIME_LEN];
    format_rfc3339_millis(secs, millis, &mut text);
    Some(text)
}
