//! go-micro interop on Kafka, against go-micro itself: the peer in `interop/go-micro`
//! (go-micro v4 and its Kafka broker plugin, `github.com/go-micro/plugins/v4/broker/kafka`,
//! which writes the whole message as a JSON envelope in the record value) publishes with
//! go-micro's client and subscribes with go-micro's server; our side reads and writes that
//! envelope (`KafkaBrokerBuilder::go_micro_envelope`, `wire=go-micro`).
//!
//! - go-micro → us: `UserCreated` in both of go-micro's codecs (`application/protobuf` and
//!   its default `application/json`, which go-micro v4 writes with `encoding/json`: proto
//!   field names) with context metadata arrive as typed events, their id
//!   go-micro's `Micro-ID` and the metadata in the handler's `Context`; a message of another
//!   type is dead-lettered with a diagnosis naming the expected type.
//! - us → go-micro: a typed publish with `Context` metadata is decoded by go-micro's server,
//!   with the metadata in its context and our message id as its `Micro-ID`.
//!
//! The peer is built by `interop/go-micro/build.sh` (`scripts/test.sh` runs it and exports
//! `EVENT_GO_MICRO_PEER`); without it these tests fail.

mod common;

#[path = "../../interop/go-micro/peer.rs"]
mod peer;
#[path = "../../interop/go-micro/scenarios.rs"]
mod scenarios;

use std::sync::Arc;

use event_core::broker::Broker;
use event_core::testkit::unique;
use event_kafka::KafkaBroker;

use scenarios::GoMicro;

async fn go_micro_broker() -> KafkaBroker {
    common::connected(common::builder(&common::bootstrap()).go_micro_envelope(true)).await
}

fn go_micro() -> GoMicro<'static> {
    GoMicro {
        broker: "kafka",
        address: common::bootstrap(),
        // the v4 peer has no tracing wrapper
        traced: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_micro_publishes_typed_events_we_consume() {
    let broker = go_micro_broker().await;
    let topic = unique("users.created");
    let dlq = format!("{topic}.dlq");
    // the topic, its dead letters, and theirs (the dead-letter subscriber's)
    common::create_topics_with(&broker, &[&topic, &dlq], 1).await;
    scenarios::go_micro_publishes_typed_events_we_consume(
        Arc::new(broker.clone()),
        &go_micro(),
        &topic,
        // go-micro v4's metadata.NewContext title-cases names (strings.Title)
        &[("Tenant", "acme"), ("Region", "eu-west")],
    )
    .await;
    broker.disconnect().await.expect("disconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_micro_subscribes_to_what_we_publish() {
    let broker = go_micro_broker().await;
    let topic = unique("users.created");
    common::create_topics_with(&broker, &[&topic], 1).await;
    // go-micro's consumer group reads the topic from its start (the peer's setting)
    let received = scenarios::go_micro_subscribes_to_what_we_publish(
        Arc::new(broker.clone()),
        &go_micro(),
        &topic,
        &unique("gomicro-mailer"),
    )
    .await;
    for (line, metadata) in received {
        let value = |name: &str| metadata.get(name).map(String::as_str);
        // go-micro v4's server title-cases names (strings.Title): tenant → Tenant
        assert_eq!(value("Tenant"), Some("acme"), "{line}");
        assert_eq!(value("Ce_type"), Some("users.v1.UserCreated"), "{line}");
        assert_eq!(value("Ce_source"), Some("signup"), "{line}");
        // a chain's first message: the correlation id would only repeat Micro-ID
        assert_eq!(value("Correlation-Id"), None, "{line}");
        let names: Vec<&str> = metadata.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "Ce_source",
                "Ce_specversion",
                "Ce_time",
                "Ce_type",
                "Content-Type",
                "Micro-ID",
                "Micro-Topic",
                "Tenant",
                "Traceparent",
            ],
            "what go-micro's context holds: every name of the envelope's header ({line})"
        );
        // our trace context reaches go-micro v4's context as it is (title-cased): a
        // go-micro service with a tracing wrapper continues it
        assert_eq!(
            value("Traceparent"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            "{line}"
        );
    }
    broker.disconnect().await.expect("disconnect");
}
