//! Shared by the NATS integration tests: where the server is, and connecting to it.
//!
//! `scripts/test.sh` checks (or starts) nats-server with JetStream at 127.0.0.1:4222 and
//! exports `EVENT_TEST_NATS`; a missing server fails the tests, it does not skip them.
//!
//! The suites' topics are `testkit.<case>.<uuid>` (and their `.dlq`): they are kept in one
//! memory stream, `EVENT_TESTKIT`, with the subjects `testkit.>` and a ten-minute age limit,
//! made here the way an operator makes a stream (`nats stream add`). The brokers of the
//! suites do not make streams (`create_streams=false`), so every case also checks that a
//! topic is found in a stream another client made, dead letters in the same stream as their
//! originals included.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use event_core::broker::Broker;
use event_core::testkit::BrokerFactory;
use event_nats::{Mode, NatsBroker, NatsBrokerBuilder};

/// The stream of the suites' topics.
pub const TESTKIT_STREAM: &str = "EVENT_TESTKIT";

/// The server under test.
pub fn url() -> String {
    std::env::var("EVENT_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A raw async-nats client of the server under test; panics with the reason when it is not
/// there.
pub async fn raw_client() -> async_nats::Client {
    async_nats::connect(url().trim_start_matches("nats://"))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "nats-server with JetStream must be running at {} (scripts/brokers.sh start \
                 nats): {e}",
                url()
            )
        })
}

/// Makes the suites' stream, `testkit.>` in memory, unless it exists.
pub async fn testkit_stream() {
    static MADE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    MADE.get_or_init(|| async {
        let js = async_nats::jetstream::new(raw_client().await);
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: TESTKIT_STREAM.to_owned(),
            subjects: vec!["testkit.>".to_owned()],
            storage: async_nats::jetstream::stream::StorageType::Memory,
            max_age: Duration::from_secs(600),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("make the {TESTKIT_STREAM} stream: {e}"));
    })
    .await;
}

/// Connects `broker`; panics with the reason when the server is not there.
pub async fn connected(broker: NatsBroker) -> NatsBroker {
    broker.connect().await.unwrap_or_else(|e| {
        panic!(
            "nats-server with JetStream must be running at {} (scripts/brokers.sh start nats): {}",
            broker.address(),
            event_core::error_chain(&e)
        )
    });
    broker
}

/// A builder for the server under test, for the suites' topics: the queue groups' durable
/// consumers the cases leave behind go away after ten idle minutes.
pub fn builder(name: &str) -> NatsBrokerBuilder {
    NatsBroker::builder(&url())
        .connection_name(name)
        .create_streams(false)
        .group_inactive_threshold(Duration::from_secs(600))
}

/// Connected JetStream clients of the test server; topics in the suites' stream.
pub struct Factory;

impl BrokerFactory for Factory {
    async fn broker(&self) -> Arc<dyn Broker> {
        testkit_stream().await;
        Arc::new(connected(builder("event-nats conformance").build().expect("config")).await)
    }
}

/// Connected core NATS clients of the test server.
pub struct CoreFactory;

impl BrokerFactory for CoreFactory {
    async fn broker(&self) -> Arc<dyn Broker> {
        let broker = builder("event-nats core conformance")
            .mode(Mode::Core)
            .build()
            .expect("config");
        Arc::new(connected(broker).await)
    }
}
