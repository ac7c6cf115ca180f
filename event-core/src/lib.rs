//! Protobuf-typed events over message brokers.
//!
//! Services exchange protobuf messages through Kafka, RabbitMQ or the in-memory broker.
//! Handlers are plain `async fn`s registered with `#[subscriber]`; publishers are typed; every
//! message carries CloudEvents-style headers (type, id, source, time), trace context and a
//! correlation chain; a message that does not decode is diagnosed (what the bytes look like,
//! expected vs found type, where it sat) and dead-lettered, never dropped.
//!
//! ```
//! use event_core::{memory::MemoryBroker, Context, Service};
//! # #[derive(Clone, PartialEq, prost::Message)] pub struct UserCreated { #[prost(string, tag = "1")] pub email: String }
//! # impl prost::Name for UserCreated { const NAME: &'static str = "UserCreated"; const PACKAGE: &'static str = "users.v1"; }
//!
//! async fn send_welcome(user: UserCreated, ctx: Context) {
//!     println!("welcome {} (correlation {:?})", user.email, ctx.correlation_id());
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let service = Service::builder("mailer")
//!     .broker(MemoryBroker::new())
//!     .subscribe("users.created", send_welcome)
//!     .build()?
//!     .start()
//!     .await?;
//! let users = service.publisher::<UserCreated>("users.created");
//! users.publish(&UserCreated { email: "ada@example.com".into() }).await?;
//! service.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Layers
//!
//! - [`broker`]: the raw byte [`Broker`] trait (go-micro's Broker in async
//!   Rust), the shared delivery loop, broker URLs.
//! - [`headers`], [`context`]: the wire header scheme and the task-local [`Context`].
//! - [`codec`]: protobuf encoding and the diagnosis of messages that do not decode.
//! - [`publish`], [`subscribe`]: typed publishers and handlers.
//! - [`service`]: the bootstrap that runs subscribers and drains on shutdown.
//! - [`memory`]: the in-memory broker.
//! - [`telemetry`]: `publish {topic}` / `process {topic}` spans, W3C trace context, metrics.
//! - `testkit`: the conformance suite every broker passes.
//!
//! # Features
//!
//! | feature   | default | what it enables |
//! |-----------|---------|-----------------|
//! | `memory`  | yes     | the in-memory broker, `memory://` |
//! | `macros`  | yes     | the `#[subscriber]` attribute |
//! | `opentelemetry` | no | W3C trace context injected into and extracted from headers, so one trace crosses services ([`telemetry`]) |
//! | `testkit` | no      | the broker conformance suite ([`testkit`]), and its telemetry cases with `opentelemetry` |
//!
#![doc = include_str!("../docs/wire.md")]
//!
// The conformance suite exists only with its feature; without it the link goes to the table.
#![cfg_attr(feature = "testkit", doc = "[`testkit`]: crate::testkit")]
#![cfg_attr(not(feature = "testkit"), doc = "[`testkit`]: crate#features")]

pub mod backend;
pub mod broker;
mod buffer;
mod clock;
pub mod codec;
pub mod context;
mod counted;
pub mod headers;
mod hex;
#[cfg(feature = "memory")]
pub mod memory;
pub mod publish;
mod ratelimit;
pub mod service;
pub mod subscribe;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use broker::{Broker, Message, Outcome, Receipt};
pub use context::{Context, Metadata};
pub use headers::Headers;
pub use publish::{Publisher, Topic};
pub use service::{RunningService, Service, ServiceBuilder, ServiceError};
pub use subscribe::{Event, State};

#[cfg(feature = "macros")]
pub use event_macros::subscriber;

/// An error and its sources joined by `: `.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Items generated code refers to. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use inventory;

    pub use crate::subscribe::{
        ErasedSubscriber, FromDelivery, FromMessage, Location, Registration,
    };

    /// Erases a handler for registration.
    pub fn erase<M, Args, H>(handler: H, name: &'static str) -> ErasedSubscriber
    where
        M: prost::Message + prost::Name + Default + Send + 'static,
        Args: 'static,
        H: crate::subscribe::Handler<M, Args>,
    {
        ErasedSubscriber::new::<M, Args, H>(handler, name)
    }

    /// Compile-time check that `A` can follow the message argument.
    pub const fn assert_from_delivery<A: FromDelivery>() {}

    /// Compile-time check that `A` can be the message argument.
    pub const fn assert_message<A: MessageArgument>() {}

    /// The types a subscriber's first argument may have: `T` or `Event<T>`.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be the message argument of a subscriber",
        label = "the first argument must be the message `T` or `Event<T>`",
        note = "`T` is a protobuf message type generated by prost with type names enabled (`prost::Message + prost::Name`)"
    )]
    pub trait MessageArgument {}
    impl<M: prost::Message + prost::Name> MessageArgument for M {}
    impl<M: prost::Message + prost::Name> MessageArgument for crate::Event<M> {}
}
