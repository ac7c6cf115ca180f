//! The quickstart's story on RabbitMQ.
//!
//! ```text
//! cargo run --example amqp
//! EVENT_BROKER='amqp://guest:guest@127.0.0.1:5672/%2f?connection_name=example' cargo run --example amqp
//! ```
//!
//! Needs RabbitMQ at 127.0.0.1:5672 (guest/guest), or the URL in `EVENT_BROKER`. What it shows,
//! with the same handlers as on the in-memory broker:
//! - two queue groups (`mailer`, `analytics`) that each get every `UserCreated`: each is a
//!   durable queue `users.created.<group>` on the topic exchange `event`;
//! - a handler that publishes a follow-up event: correlation and causation ids and user
//!   metadata travel on through RabbitMQ's header table;
//! - a JSON message published with the raw Broker API onto the protobuf topic: diagnosed and
//!   dead-lettered to `users.created.dlq` (a durable queue that keeps it), not dropped.

use std::sync::Arc;

use event_amqp::AmqpBroker;
use event_core::broker::Broker;

mod signup;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("EVENT_BROKER")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let broker: Arc<dyn Broker> = Arc::new(
        AmqpBroker::builder(&url)
            .connection_name("event example")
            .build()?,
    );
    broker.connect().await?;
    println!("connected to {}", broker.address());

    signup::run(broker).await
}
