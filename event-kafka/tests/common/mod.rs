//! Shared by the Kafka integration tests: the broker address and a conformance factory.
//!
//! The tests run against Apache Kafka (`scripts/brokers.sh start` runs one on 127.0.0.1:9092);
//! `EVENT_TEST_KAFKA` overrides the address. A missing broker fails the tests, it does not
//! skip them. Tests that restart the broker start their own from the same jars
//! ([`node::KafkaNode`]).

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use event_core::broker::Broker;
use event_core::testkit::BrokerFactory;
use event_kafka::{KafkaBroker, KafkaBrokerBuilder, TopicSpec};
use tokio::sync::OnceCell;

pub mod node;
pub mod stream;

/// Partitions of every test topic: more than one, so that order and offsets are per partition.
pub const PARTITIONS: i32 = 3;

/// The broker under test.
pub fn bootstrap() -> String {
    std::env::var("EVENT_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// A connected client of the broker under test.
pub async fn connect() -> KafkaBroker {
    connect_to(&bootstrap()).await
}

/// A connected client of the broker at `servers`; panics with the reason when it is not there.
pub async fn connect_to(servers: &str) -> KafkaBroker {
    // a small read-ahead, so that the tests cross the read-ahead limit too
    connected(builder(servers).max_buffered_per_partition(64)).await
}

/// The tests' client configuration: a short linger and the default batching.
pub fn builder(servers: &str) -> KafkaBrokerBuilder {
    KafkaBroker::builder(servers)
        .client_id("event-kafka-tests")
        .linger(Duration::from_millis(1))
        .operation_timeout(Duration::from_secs(10))
}

/// Builds and connects; panics with the reason when the broker is not there.
pub async fn connected(builder: KafkaBrokerBuilder) -> KafkaBroker {
    let broker = builder.build().expect("valid configuration");
    broker.connect().await.unwrap_or_else(|e| {
        panic!(
            "no Kafka broker at {} (scripts/brokers.sh start runs one): {}",
            broker.address(),
            event_core::error_chain(&e)
        )
    });
    broker
}

/// Creates `topics` with [`PARTITIONS`] partitions, and the dead-letter topic of each
/// (`<topic>.dlq`, one partition, unless it is in `topics` too): subscribing needs it.
pub async fn create_topics(broker: &KafkaBroker, topics: &[&str]) {
    create_topics_with(broker, topics, PARTITIONS).await;
}

/// Creates `topics` with `partitions` partitions each, and as [`create_topics`] the
/// dead-letter topic of each.
pub async fn create_topics_with(broker: &KafkaBroker, topics: &[&str], partitions: i32) {
    let mut specs: Vec<TopicSpec> = topics
        .iter()
        .map(|t| TopicSpec::new(*t).partitions(partitions))
        .collect();
    for topic in topics {
        let dead_letters = format!("{topic}.dlq");
        if !topics.contains(&dead_letters.as_str()) {
            specs.push(TopicSpec::new(dead_letters));
        }
    }
    broker
        .ensure_topics(&specs)
        .await
        .unwrap_or_else(|e| panic!("create {topics:?}: {}", event_core::error_chain(&e)));
}

/// Runs the conformance suite against the broker under test.
#[derive(Default)]
pub struct KafkaFactory {
    admin: OnceCell<KafkaBroker>,
}

impl BrokerFactory for KafkaFactory {
    async fn broker(&self) -> Arc<dyn Broker> {
        Arc::new(connect().await)
    }

    async fn create_topic(&self, topic: &str) {
        let admin = self.admin.get_or_init(connect).await;
        create_topics(admin, &[topic]).await;
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(30)
    }
}
