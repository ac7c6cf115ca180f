//! go-micro interop on RabbitMQ, against go-micro itself: the peer in `interop/go-micro`
//! (go-micro v5, its built-in RabbitMQ broker, exchange `micro` not durable) publishes with
//! go-micro's client and subscribes with go-micro's server; our side runs in the `go-micro`
//! wire profile on the same exchange.
//!
//! - go-micro → us: `UserCreated` in both of go-micro's codecs (`application/protobuf` and
//!   its default `application/json`) with context metadata arrive as typed events, their id
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

use event_amqp::{AmqpBroker, WireProfile};
use event_core::broker::Broker;
use event_core::testkit::unique;

use scenarios::GoMicro;

/// A client of go-micro's exchange, as a service sharing it with go-micro configures it.
async fn go_micro_broker() -> AmqpBroker {
    let broker = AmqpBroker::builder(&common::url())
        .exchange("micro")
        .exchange_durable(false)
        .wire_profile(WireProfile::GO_MICRO)
        .queue_argument("x-expires", 600_000)
        .connection_name("event-amqp go-micro interop")
        .build()
        .expect("config");
    common::connected(broker).await
}

fn go_micro() -> GoMicro<'static> {
    GoMicro {
        broker: "rabbitmq",
        address: common::url(),
        // its OpenTelemetry wrapper (go-micro v5)
        traced: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_micro_publishes_typed_events_we_consume() {
    let broker = go_micro_broker().await;
    scenarios::go_micro_publishes_typed_events_we_consume(
        Arc::new(broker.clone()),
        &go_micro(),
        &unique("users.created"),
        &[("tenant", "acme"), ("Region", "eu-west")],
    )
    .await;
    broker.disconnect().await.expect("disconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_micro_subscribes_to_what_we_publish() {
    let broker = go_micro_broker().await;
    let topic = unique("users.created");
    // go-micro consumes from its queue, bound to the topic on its exchange
    let received = scenarios::go_micro_subscribes_to_what_we_publish(
        Arc::new(broker.clone()),
        &go_micro(),
        &topic,
        &unique("gomicro-mailer"),
    )
    .await;
    for (line, metadata) in received {
        assert_eq!(
            metadata.get("tenant").map(String::as_str),
            Some("acme"),
            "{line}"
        );
        // the trace context is checked by the scenario (go-micro's wrapper writes its own
        // span's `Traceparent` beside or over ours)
        let names: Vec<&str> = metadata
            .keys()
            .map(String::as_str)
            .filter(|name| !name.eq_ignore_ascii_case("traceparent"))
            .collect();
        assert_eq!(
            names,
            ["Content-Type", "Micro-ID", "Micro-Topic", "tenant"],
            "what go-micro's context holds: our headers (the type, source and time are AMQP \
             properties, which go-micro does not read) ({line})"
        );
    }
    broker.disconnect().await.expect("disconnect");
}
