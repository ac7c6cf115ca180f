//! go-micro interop on NATS, against go-micro itself: the peer in `interop/go-micro`
//! (go-micro v5 and its built-in NATS broker, which speaks core NATS and writes the whole
//! message as a JSON envelope in the payload, without NATS headers) publishes with go-micro's
//! client and subscribes with go-micro's server; our side reads and writes that envelope
//! (`NatsBrokerBuilder::go_micro_envelope`, `wire=go-micro`) in JetStream mode: the suites'
//! stream (`EVENT_TESTKIT`, `testkit.>`) keeps go-micro's core NATS publishes, and our
//! JetStream publishes reach go-micro's core NATS queue subscription.
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

use event_core::broker::Broker;
use event_core::testkit::unique;
use event_nats::NatsBroker;

use scenarios::GoMicro;

async fn go_micro_broker(name: &str) -> NatsBroker {
    common::testkit_stream().await;
    let broker = common::builder(name)
        .go_micro_envelope(true)
        .build()
        .expect("config");
    common::connected(broker).await
}

fn go_micro() -> GoMicro<'static> {
    GoMicro {
        broker: "nats",
        address: common::url(),
        // its OpenTelemetry wrapper (go-micro v5)
        traced: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_micro_publishes_typed_events_we_consume() {
    let broker = go_micro_broker("event-nats go-micro interop (consume)").await;
    // go-micro publishes on core NATS; the testkit stream holds the subject
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
    let broker = go_micro_broker("event-nats go-micro interop (publish)").await;
    // go-micro's core NATS queue subscription is on the server (a round trip after it)
    let received = scenarios::go_micro_subscribes_to_what_we_publish(
        Arc::new(broker.clone()),
        &go_micro(),
        &unique("users.created"),
        &unique("gomicro-mailer"),
    )
    .await;
    for (line, metadata) in received {
        let value = |name: &str| metadata.get(name).map(String::as_str);
        assert_eq!(value("tenant"), Some("acme"), "{line}");
        assert_eq!(value("ce_type"), Some("users.v1.UserCreated"), "{line}");
        assert_eq!(value("ce_source"), Some("signup"), "{line}");
        // a chain's first message: the correlation id would only repeat Micro-ID
        assert_eq!(value("Correlation-Id"), None, "{line}");
        // the trace context is checked by the scenario (go-micro's wrapper writes its own
        // span's `Traceparent` beside or over ours)
        let names: Vec<&str> = metadata
            .keys()
            .map(String::as_str)
            .filter(|name| !name.eq_ignore_ascii_case("traceparent"))
            .collect();
        assert_eq!(
            names,
            [
                "Content-Type",
                "Micro-ID",
                "Micro-Topic",
                "ce_source",
                "ce_specversion",
                "ce_time",
                "ce_type",
                "tenant",
            ],
            "what go-micro's context holds: every name of the envelope's header, as we spell \
             it (go-micro v5 keeps names as they are; the JetStream Nats-Msg-Id is a NATS \
             header, which go-micro does not read) ({line})"
        );
    }
    broker.disconnect().await.expect("disconnect");
}
