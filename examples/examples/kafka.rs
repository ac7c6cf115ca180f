//! The quickstart's story on Kafka.
//!
//! ```text
//! cargo run --example kafka
//! EVENT_BROKER='kafka://127.0.0.1:9092?client_id=example' cargo run --example kafka
//! ```
//!
//! Needs a Kafka-protocol broker at 127.0.0.1:9092 (`scripts/test.sh` starts one), or the
//! address in `EVENT_BROKER`. What it shows, with the same handlers as on the in-memory broker:
//! - the topics created through the admin API when missing (many clusters do not create
//!   topics on demand);
//! - two queue groups (`mailer`, `analytics`): two Kafka consumer groups, each getting every
//!   `UserCreated`, committing offsets only after the handler;
//! - a handler that publishes a follow-up event: correlation and causation ids and user
//!   metadata travel on as record headers (`ce_*`, CloudEvents binary mode);
//! - a JSON message published with the raw Broker API onto the protobuf topic: diagnosed and
//!   dead-lettered to `users.created.dlq`, not dropped.

use std::sync::Arc;

use event_core::broker::Broker;
use event_kafka::{KafkaBrokerBuilder, TopicSpec};

mod signup;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("EVENT_BROKER").unwrap_or_else(|_| "kafka://127.0.0.1:9092".to_owned());
    let broker: Arc<dyn Broker> = Arc::new(
        KafkaBrokerBuilder::parse(&url)?
            .client_id("event-example")
            .ensure_topic(TopicSpec::new(signup::USERS_CREATED.name()).partitions(3))
            .ensure_topic(TopicSpec::new("users.created.dlq"))
            // the dead-letter topic of the subscription that prints the dead letters
            .ensure_topic(TopicSpec::new("users.created.dlq.dlq"))
            .ensure_topic(TopicSpec::new(signup::WELCOME_SENT.name()).partitions(3))
            .ensure_topic(TopicSpec::new("emails.welcome-sent.dlq"))
            .build()?,
    );
    broker.connect().await?;
    println!("connected to {}", broker.address());

    signup::run(broker).await
}
