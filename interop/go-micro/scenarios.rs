//! The two interop scenarios every broker runs against the go-micro peer, included (`#[path]`)
//! beside `peer.rs` by `event-amqp/tests/go_micro.rs`, `event-kafka/tests/go_micro_peer.rs` and
//! `event-nats/tests/go_micro.rs`; each test sets its broker up and checks what its broker's
//! go-micro carries on top.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use event_core::broker::{Broker, Delivery, SubscribeOptions};
use event_core::headers::names;
use event_core::testkit::{Collector, delivery_subscriber};
use event_core::{Context, Event, Publisher, Service, State};
use event_proto::users::v1::UserCreated;
use serde_json::Value;

use super::peer::{Peer, str_field, string_map};

const WAIT: Duration = Duration::from_secs(30);
/// Messages per codec, and messages we publish.
pub const N: usize = 3;

/// Where the peer finds the broker, and which of its brokers it uses.
pub struct GoMicro<'a> {
    /// `--broker`: `rabbitmq`, `kafka` or `nats`.
    pub broker: &'a str,
    /// `--address`.
    pub address: String,
    /// Whether this go-micro traces: publishes carry a W3C `Traceparent`, and its subscriber
    /// continues the trace a message carries (the v5 peer uses go-micro's OpenTelemetry
    /// wrapper; go-micro without it carries no trace context).
    pub traced: bool,
}

impl GoMicro<'_> {
    fn args<'b>(&'b self, command: &'b str, topic: &'b str) -> Vec<&'b str> {
        vec![
            command,
            "--broker",
            self.broker,
            "--address",
            &self.address,
            "--topic",
            topic,
        ]
    }
}

fn register_json() {
    event_core::codec::json::register_file_descriptor_set(event_proto::FILE_DESCRIPTOR_SET)
        .expect("the proto crate's descriptors");
}

/// A `UserCreated` from a line's proto3 JSON `fields`.
pub fn user_of(line: &Value) -> UserCreated {
    let fields = &line["fields"];
    let text = |name: &str| fields[name].as_str().unwrap_or_default().to_owned();
    UserCreated {
        user_id: text("userId"),
        email: text("email"),
        display_name: text("displayName"),
    }
}

/// The trace id of a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`).
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    traceparent.split('-').nth(1).filter(|id| id.len() == 32)
}

/// What the typed handler saw.
#[derive(Debug)]
struct Seen {
    user: UserCreated,
    id: Option<String>,
    /// The trace its `Context` continues.
    trace_id: Option<String>,
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
    let trace_id = ctx
        .trace()
        .traceparent
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .and_then(trace_id_of)
        .map(str::to_owned);
    let seen = Seen {
        id: event.id().map(str::to_owned),
        trace_id,
        content_type: event.headers().content_type().map(str::to_owned),
        metadata,
        user: event.into_message(),
    };
    let _ = calls.0.send(seen);
}

/// go-micro → us: the peer publishes `N` `UserCreated` with `application/protobuf` and `N` in
/// its default `application/json`, with the metadata `tenant=acme` and `Region=eu-west`; a
/// typed subscriber of `broker` gets each once, its id go-micro's `Micro-ID`, its content type,
/// and in its `Context` exactly `expected_metadata` (what that go-micro hands over). Then an
/// `OrderPlaced` is dead-lettered once, with a diagnosis naming the expected type.
pub async fn go_micro_publishes_typed_events_we_consume(
    broker: Arc<dyn Broker>,
    go_micro: &GoMicro<'_>,
    topic: &str,
    expected_metadata: &[(&str, &str)],
) {
    register_json();
    let dlq = format!("{topic}.dlq");
    let (dlq_tx, mut dead_letters) = Collector::<Delivery>::new(WAIT);
    let dlq_subscription = delivery_subscriber(&*broker, &dlq, dlq_tx).await;
    let (calls_tx, mut calls) = Collector::new(WAIT);
    let service = Service::builder("gomicro-interop")
        .broker(broker.clone())
        .state(Calls(calls_tx))
        .subscribe_with(
            topic,
            SubscribeOptions::new().queue("mailer"),
            on_user_created,
        )
        .build()
        .expect("build")
        .start()
        .await
        .expect("start");

    // go-micro's client, both codecs, with context metadata
    let count = N.to_string();
    let mut published = Vec::new();
    for (content_type, prefix) in [("application/protobuf", "pb"), ("application/json", "json")] {
        let mut args = go_micro.args("publish", topic);
        args.extend([
            "--count",
            &count,
            "--id-prefix",
            prefix,
            "--meta",
            "tenant=acme",
            "--meta",
            "Region=eu-west",
        ]);
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
    let expected: BTreeMap<String, String> = expected_metadata
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
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
        assert_eq!(
            call.metadata, expected,
            "go-micro's metadata in the Context ({line})"
        );
        // one trace across the Go and the Rust service
        let traceparent = header.get("Traceparent");
        if go_micro.traced {
            let traceparent = traceparent.unwrap_or_else(|| panic!("a Traceparent: {line}"));
            let go_trace = trace_id_of(traceparent).expect("a W3C traceparent");
            assert_eq!(
                call.trace_id.as_deref(),
                Some(go_trace),
                "the Rust handler continues go-micro's trace ({line})"
            );
        } else {
            assert_eq!(traceparent, None, "{line}");
        }
    }

    // another type, in go-micro's default codec: diagnosed, dead-lettered once
    let mut args = go_micro.args("publish", topic);
    args.extend(["--type", "shop.v1.OrderPlaced"]);
    let mut peer = Peer::spawn(&args);
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
    assert_eq!(h.get_str(names::X_EVENT_ORIGINAL_TOPIC), Some(topic));

    let report = service.stop().await;
    assert!(!report.timed_out, "{report:?}");
    dlq_subscription.unsubscribe().await;
}

/// us → go-micro: go-micro's server subscribes to `topic` in the queue `queue`; `N` typed
/// publishes of `broker` with the `Context` metadata `tenant=acme` reach it, each decoded as a
/// `UserCreated` with our message id as its `Micro-ID`. Returns the metadata go-micro's
/// context held for each, for the caller's broker-specific checks.
pub async fn go_micro_subscribes_to_what_we_publish(
    broker: Arc<dyn Broker>,
    go_micro: &GoMicro<'_>,
    topic: &str,
    queue: &str,
) -> Vec<(Value, BTreeMap<String, String>)> {
    let count = N.to_string();
    let mut args = go_micro.args("subscribe", topic);
    args.extend(["--queue", queue, "--count", &count]);
    let mut peer = Peer::spawn(&args);
    peer.event("ready").await;

    let publisher = Publisher::<UserCreated>::new(broker, "signup", topic);
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut ctx = Context::new()
        .with_metadata("tenant", "acme")
        .expect("metadata");
    let mut trace = event_core::context::TraceContext::default();
    trace.traceparent = Some(format!("00-{TRACE}-00f067aa0ba902b7-01").into());
    ctx.set_trace(trace);
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

    let mut received = Vec::new();
    for line in peer.events("received", N).await {
        assert_eq!(str_field(&line, "type"), "users.v1.UserCreated");
        let id = str_field(&line, "micro_id");
        let user = sent
            .remove(id)
            .unwrap_or_else(|| panic!("go-micro's Micro-ID {id} is none of our ids: {line}"));
        assert_eq!(user_of(&line), user, "{line}");
        let metadata = string_map(&line, "metadata");
        assert_eq!(
            metadata.get("Content-Type").map(String::as_str),
            Some("application/protobuf"),
            "{line}"
        );
        assert_eq!(
            metadata.get("Micro-Topic").map(String::as_str),
            Some(topic),
            "{line}"
        );
        if go_micro.traced {
            assert_eq!(
                str_field(&line, "trace_id"),
                TRACE,
                "go-micro's handler continues our trace ({line})"
            );
        }
        received.push((line, metadata));
    }
    peer.exit().await;
    received
}
