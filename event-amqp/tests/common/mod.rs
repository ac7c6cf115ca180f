//! Shared by the RabbitMQ integration tests: where the broker is, and connecting to it.
//!
//! `scripts/test.sh` checks (or starts) RabbitMQ at 127.0.0.1:5672 and exports
//! `EVENT_TEST_AMQP`; a missing broker fails the tests, it does not skip them.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use event_amqp::{AmqpBroker, WireProfile};
use event_core::broker::Broker;
use event_core::testkit::BrokerFactory;

/// The broker under test.
pub fn url() -> String {
    std::env::var("EVENT_TEST_AMQP")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// The broker under test with `query` (`wire=go-micro`, ...) added to its URL.
pub fn url_with(query: &str) -> String {
    let url = url();
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{query}")
}

/// Connects `broker`; panics with the reason when RabbitMQ is not there.
pub async fn connected(broker: AmqpBroker) -> AmqpBroker {
    broker.connect().await.unwrap_or_else(|e| {
        panic!(
            "RabbitMQ must be running at {} (guest/guest): {}",
            broker.address(),
            event_core::error_chain(&e)
        )
    });
    broker
}

/// The text of a long-string entry of an AMQP header table; panics naming the entry when it is
/// missing or of another type.
pub fn long_string(table: &lapin::types::FieldTable, name: &str) -> String {
    match table.inner().get(name) {
        Some(lapin::types::AMQPValue::LongString(s)) => {
            String::from_utf8_lossy(s.as_bytes()).into_owned()
        }
        other => panic!("header {name} is not a long string: {other:?}"),
    }
}

/// Connected clients of the test RabbitMQ, on an exchange of the tests' own, in the default
/// (lean) wire profile; durable queues expire after ten idle minutes.
pub struct Factory;

impl BrokerFactory for Factory {
    async fn broker(&self) -> Arc<dyn Broker> {
        factory_broker(WireProfile::LEAN).await
    }
}

/// A builder for the suites' exchange, named `connection_name`: the queues the cases leave
/// behind expire after ten idle minutes.
pub fn suite_builder(connection_name: &str) -> event_amqp::AmqpBrokerBuilder {
    AmqpBroker::builder(&url())
        .exchange("event.test.conformance")
        .queue_argument("x-expires", 600_000)
        .connection_name(connection_name)
}

async fn factory_broker(wire: WireProfile) -> Arc<dyn Broker> {
    let broker = suite_builder("event-amqp conformance")
        .wire_profile(wire)
        .build()
        .expect("valid broker configuration");
    Arc::new(connected(broker).await)
}

/// Runs `rabbitmqctl args...` (default `/usr/sbin/rabbitmqctl`, or `RABBITMQCTL`) and returns
/// what it printed; panics unless it succeeds.
pub async fn rabbitmqctl(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || rabbitmqctl_blocking(&args))
        .await
        .expect("rabbitmqctl task")
}

/// [`rabbitmqctl`], blocking.
pub fn rabbitmqctl_blocking(args: &[String]) -> String {
    let program =
        std::env::var("RABBITMQCTL").unwrap_or_else(|_| "/usr/sbin/rabbitmqctl".to_owned());
    let output = std::process::Command::new(&program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
