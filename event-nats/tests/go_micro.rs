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

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use event_core::broker::{Broker, Delivery, SubscribeOptions};
use event_core::headers::names;
use event_core::testkit::{Collector, delivery_subscriber, unique};
use event_core::{Context, Event, Publisher, Service, State};
use event_nats::NatsBroker;
use event_proto::users::v1::UserCreated;

use peer::{Peer, str_field, string_map};

const WAIT: Duration = Duration::from_secs(30);
/// Messages per codec.
const N: usize = 3;

/// A JetStream client that shares subjects with go-micro's NATS broker; its topics are in the
/// suites' stream.
async fn go_micro_broker(name: &str) -> NatsBroker {
    common::testkit_stream().await;
    let broker = common::builder(name)
        .go_micro_envelope(true)
        .build()
        .expect("config");
    common::connected(broker).await
}

fn register_json() {
    event_core::codec::json::register_file_descriptor_set(event_proto::FILE_DESCRIPTOR_SET)
        .expect("the proto crate's descriptors");
}

/// A `UserCreated` from a line's proto3 JSON `fields` (the peer prints them with protojson).
fn user_of(line: &serde_json::Value) -> UserCreated {
    let fields = &line["fields"];
    let text = |name: &str| fields[name].as_str().unwrap_or_default().to_owned();
    UserCreated {
        user_id: text("userId"),
        email: text("email"),
        display_name: text("displayName"),
    }
}

/// What the typed handler saw.
#[derive(Debug)]
struct Seen {
    user: UserCreated,
    id: Option<String>,
    content_type: Option<String>,
    metadata: BTreeMap<String, String>,
}

#[derive(Clone)]
struct Calls(tokio::sync::mpsc::UnboundedSender<Seen>);

async fn on_user_created(event: Event<UserCreated>, ctx: Context, State(calls): State<Calls>) {
    let metadata = ctx
        .metadata()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let seen = Seen {
        id: event.id().map(str::to_owned),
        content_type: event.headers().content_type().map(str::to_owned),
        metadata,
        user: event.into_message(),
    };
    let _ = calls.0.send(seen);
}

fn address() -> String {
    common::url()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_micro_publishes_typed_events_we_consume() {
    register_json();
    let broker = go_micro_broker("event-nats go-micro interop (consume)").await;
    let topic = unique("users.created");
    let (dlq_tx, mut dead_letters) = Collector::<Delivery>::new(WAIT);
    let dlq_subscription = delivery_subscriber(&broker, &format!("{topic}.dlq"), dlq_tx).await;
    let (calls_tx, mut calls) = Collector::new(WAIT);
    let service = Service::builder("gomicro-interop")
        .broker(broker.clone())
        .state(Calls(calls_tx))
        .subscribe_with(
            topic.as_str(),
            SubscribeOptions::new().queue("mailer"),
            on_user_created,
        )
        .build()
        .expect("build")
        .start()
        .await
        .expect("start");

    // go-micro's client, both codecs, with context metadata
    let address = address();
    let mut published = Vec::new();
    for (content_type, prefix) in [("application/protobuf", "pb"), ("application/json", "json")] {
        let count = N.to_string();
        let mut args = vec![
            "publish",
            "--broker",
            "nats",
            "--address",
            &address,
            "--topic",
            &topic,
            "--count",
            &count,
            "--id-prefix",
            prefix,
            "--meta",
            "tenant=acme",
            "--meta",
            "Region=eu-west",
        ];
        if content_type == "application/protobuf" {
            // application/json is go-micro's default: not asked for
            args.extend(["--content-type", content_type]);
        }
        let mut peer = Peer::spawn(&args);
        for line in peer.events("published", N).await {
            assert_eq!(
                string_map(&line, "header")
                    .get("Content-Type")
                    .map(String::as_str),
                Some(content_type),
                "{line}"
            );
            published.push(line);
        }
        peer.exit().await;
    }

    let mut seen = BTreeMap::new();
    for _ in 0..published.len() {
        let call = calls.next("a go-micro message").await;
        let id = call.id.clone().expect("an id");
        assert!(seen.insert(id, call).is_none(), "each message once");
    }
    for line in &published {
        let micro_id = str_field(line, "micro_id");
        let header = string_map(line, "header");
        let call = seen.get(micro_id).unwrap_or_else(|| {
            panic!("no message with id {micro_id} (go-micro's Micro-ID): {seen:#?}")
        });
        assert_eq!(call.user, user_of(line), "{line}");
        assert_eq!(
            call.content_type.as_deref(),
            Some(header["Content-Type"].as_str())
        );
        let expected: BTreeMap<String, String> = [
            ("tenant".to_owned(), "acme".to_owned()),
            ("Region".to_owned(), "eu-west".to_owned()),
        ]
        .into();
        assert_eq!(
            call.metadata, expected,
            "go-micro's metadata in the Context ({line})"
        );
    }

    // another type, in go-micro's default codec: diagnosed, dead-lettered once
    let mut peer = Peer::spawn(&[
        "publish",
        "--broker",
        "nats",
        "--address",
        &address,
        "--topic",
        &topic,
        "--type",
        "shop.v1.OrderPlaced",
    ]);
    let order = peer.event("published").await;
    peer.exit().await;
    let dead = calls
        .assert_empty_after(
            "the typed handler must not see an OrderPlaced",
            dead_letters.next("the dead letter"),
        )
        .await;
    let h = dead.headers();
    let error = h
        .get_str(names::X_EVENT_ERROR)
        .unwrap_or_default()
        .to_owned();
    println!("go-micro OrderPlaced: {error}");
    assert!(
        error.contains("expected type users.v1.UserCreated"),
        "{error}"
    );
    assert_eq!(h.message_id(), Some(str_field(&order, "micro_id")), "{h:?}");
    assert_eq!(
        h.get_str(names::X_EVENT_ATTEMPTS),
        Some("1"),
        "never retried"
    );
    assert_eq!(
        h.get_str(names::X_EVENT_ORIGINAL_TOPIC),
        Some(topic.as_str())
    );

    let report = service.stop().await;
    assert!(!report.timed_out, "{report:?}");
    dlq_subscription.unsubscribe().await;
    broker.disconnect().await.expect("disconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_micro_subscribes_to_what_we_publish() {
    let broker = go_micro_broker("event-nats go-micro interop (publish)").await;
    let topic = unique("users.created");
    let queue = unique("gomicro-mailer");
    let count = N.to_string();
    let address = address();
    let mut peer = Peer::spawn(&[
        "subscribe",
        "--broker",
        "nats",
        "--address",
        &address,
        "--topic",
        &topic,
        "--queue",
        &queue,
        "--count",
        &count,
    ]);
    // go-micro's core NATS queue subscription is on the server (a round trip after it)
    peer.event("ready").await;

    let publisher =
        Publisher::<UserCreated>::new(Arc::new(broker.clone()), "signup", topic.as_str());
    let ctx = Context::new()
        .with_metadata("tenant", "acme")
        .expect("metadata");
    let mut sent = BTreeMap::new();
    for i in 0..N {
        let user = UserCreated {
            user_id: format!("rs-{i}"),
            email: format!("rs{i}@example.com"),
            display_name: format!("Rust <{i}>"),
        };
        let receipt = publisher.publish_with(&ctx, &user).await.expect("publish");
        let id = receipt.message_id().expect("an id").to_owned();
        sent.insert(id, user);
    }

    for line in peer.events("received", N).await {
        assert_eq!(str_field(&line, "type"), "users.v1.UserCreated");
        let id = str_field(&line, "micro_id");
        let user = sent
            .remove(id)
            .unwrap_or_else(|| panic!("go-micro's Micro-ID {id} is none of our ids: {line}"));
        assert_eq!(user_of(&line), user, "{line}");
        let metadata = string_map(&line, "metadata");
        let value = |name: &str| metadata.get(name).map(String::as_str);
        assert_eq!(value("tenant"), Some("acme"), "{line}");
        assert_eq!(
            value("Content-Type"),
            Some("application/protobuf"),
            "{line}"
        );
        assert_eq!(value("Micro-Topic"), Some(topic.as_str()), "{line}");
        assert_eq!(value("ce_type"), Some("users.v1.UserCreated"), "{line}");
        assert_eq!(value("ce_source"), Some("signup"), "{line}");
        // a chain's first message: the correlation id would only repeat Micro-ID
        assert_eq!(value("Correlation-Id"), None, "{line}");
        let names: Vec<&str> = metadata.keys().map(String::as_str).collect();
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
    peer.exit().await;
    broker.disconnect().await.expect("disconnect");
}
