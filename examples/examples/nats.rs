//! The quickstart's story on NATS JetStream.
//!
//! ```text
//! cargo run --example nats
//! EVENT_BROKER='nats://127.0.0.1:4222?name=example&storage=memory' cargo run --example nats
//! ```
//!
//! Needs nats-server with JetStream at 127.0.0.1:4222 (`scripts/brokers.sh start nats`), or
//! the URL in `EVENT_BROKER`. What it shows, with the same handlers as on the in-memory broker:
//! - the streams made when missing: `EVENT_users_created`, `EVENT_emails_welcome-sent` and
//!   those of the dead-letter topics (`create_streams`, on by default);
//! - two queue groups (`mailer`, `analytics`): two durable pull consumers on the stream, each
//!   getting every `UserCreated`, acknowledged only after the handler;
//! - a handler that publishes a follow-up event: correlation and causation ids and user
//!   metadata travel on as NATS headers (`ce_*`, the names of Kafka record headers);
//! - a JSON message published with the raw Broker API onto the protobuf topic: diagnosed and
//!   dead-lettered to `users.created.dlq` (kept in its stream), not dropped.

use std::sync::Arc;

use event_core::broker::Broker;
use event_nats::NatsBroker;

mod signup;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("EVENT_BROKER").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let broker: Arc<dyn Broker> = Arc::new(
        NatsBroker::builder(&url)
            .connection_name("event example")
            .build()?,
    );
    broker.connect().await?;
    println!("connected to {}", broker.address());

    signup::run(broker).await
}
