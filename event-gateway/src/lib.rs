//! `event-gateway`: a Redis-protocol server in front of any broker of the `event` framework.
//!
//! Applications in any language publish and consume events with the Redis client they already
//! have; the gateway turns their commands into the broker's publishes and subscriptions, so the
//! same gateway fronts Kafka, RabbitMQ, NATS or the in-memory broker and keeps the framework's
//! delivery contract.
//!
//! | Redis command | what it does here |
//! |---|---|
//! | `PUBLISH topic payload` | publishes; replies `1` once the broker has the message, an error with the reason otherwise |
//! | `SUBSCRIBE topic ...` | a broadcast subscription per topic: every message while connected (at most once) |
//! | `XADD topic * payload <bytes> [field value ...]` | publishes; the other fields become headers (`key` is the message key); replies an id |
//! | `XGROUP CREATE topic group $\|0` | joins the broker's queue group `group` (`$`: new messages, `0`: from the start) |
//! | `XREADGROUP GROUP group consumer [COUNT n] [BLOCK ms] [NOACK] STREAMS topic >` | hands out messages of the group; each is held until `XACK` |
//! | `XACK topic group id ...` | acknowledges to the broker |
//! | `XPENDING topic group [...]` | what each consumer holds |
//!
//! At least once through the stream commands: the broker's message is acknowledged only when a
//! client sent `XACK` for it. What a client holds when its connection ends stays its
//! consumer's for the reclaim delay ([`GatewayConfig::reclaim_after`]), then goes to the next
//! reader of the group; what nobody acknowledged when the gateway stops goes back to the
//! broker. Read messages carry their headers as fields next to `payload` (`ce_type`, `ce_id`,
//! `traceparent`, ...).
//!
//! With [`TypedTopics`], a topic accepts only payloads that a subscriber of its protobuf type
//! would decode: anything else is refused with the library's diagnosis, and nothing is
//! published.
//!
//! ```no_run
//! use event_gateway::{Gateway, GatewayConfig};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = event_core::broker::from_env()?; // EVENT_BROKER, memory:// when unset
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:6380").await?;
//! let gateway = Gateway::new(broker, GatewayConfig::default());
//! gateway.serve(listener, async { tokio::signal::ctrl_c().await.ok(); }).await?;
//! # Ok(()) }
//! ```
//!
//! # Features
//!
//! `kafka`, `amqp` and `nats` (all on by default) link the backends that `EVENT_BROKER` can
//! name; `memory://` is always there.

mod commands;
mod config;
mod connection;
mod frame;
mod groups;
mod serve;
mod typed;

pub use config::GatewayConfig;
pub use frame::ProtocolError;
pub use serve::{Gateway, ServeError};
pub use typed::{TypedTopics, TypedTopicsError};

// the backends, linked so that `EVENT_BROKER` can name any of them
#[cfg(feature = "amqp")]
use event_amqp as _;
#[cfg(feature = "kafka")]
use event_kafka as _;
#[cfg(feature = "nats")]
use event_nats as _;
