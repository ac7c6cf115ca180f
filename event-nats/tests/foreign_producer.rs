//! Messages from another NATS client, the Python `nats-py` (in the virtualenv
//! `scripts/brokers.sh` makes; `EVENT_TEST_PYTHON`), published with its JetStream API:
//!
//! - without our headers (raw protobuf of another type, JSON, text) or with only a
//!   `Content-Type`: the typed subscriber's diagnosis dead-letters them at once with the right
//!   classification, and the dead letter keeps the original bytes;
//! - protobuf with a `Content-Type` and a `ce_type` header of its own: consumed as a typed
//!   event, its type verified;
//! - and the other way round: what our typed publisher stores, nats-py reads with our header
//!   names and the message id as `Nats-Msg-Id`;
//! - a message written with the protocol itself (`HPUB`) whose header block async-nats
//!   cannot read (a name that is not ASCII): the client drops its connection at each
//!   delivery, so the message never reaches the handler; once the consumer's `max_deliver`
//!   is reached, it is read from the stream and dead-lettered (kind `undeliverable`) with its
//!   readable headers and its unreadable line kept, and acknowledged; and one that reached
//!   it because every member it went to left it unsettled (another client's member that
//!   fetched it twice and went away), dead-lettered the same way when our member joins;
//! - a group consumer made unlimited before keeps its limit when our member joins; one made
//!   new gets `DEFAULT_MAX_DELIVER`.

mod common;

use std::process::Command;
use std::time::Duration;

use event_core::broker::{Broker, Delivery, SubscribeOptions, Subscription};
use event_core::headers::names;
use event_core::testkit::{Collector, delivery_subscriber, is_marker, marker, unique};
use event_core::{Event, Publisher, RunningService, Service, State};
use event_nats::NatsBroker;
use event_proto::bench::v1::Tick;
use event_proto::users::v1::UserCreated;
use prost::Message as _;

const WAIT: Duration = Duration::from_secs(15);

/// nats-py: publishes `argv[3]` (base64) to subject `argv[2]` with the headers of `argv[4]`
/// (JSON) through JetStream, or reads the last message of a subject from a stream.
const CLIENT: &str = r#"
import asyncio, base64, json, sys
import nats

async def main():
    command, url = sys.argv[1], sys.argv[2]
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    js = nc.jetstream()
    if command == "publish":
        subject, body, headers = sys.argv[3], base64.b64decode(sys.argv[4]), json.loads(sys.argv[5])
        ack = await js.publish(subject, body, headers=headers or None)
        print(json.dumps({"stream": ack.stream, "seq": ack.seq}))
    else:
        stream, subject = sys.argv[3], sys.argv[4]
        msg = await js.get_last_msg(stream, subject)
        print(json.dumps({"headers": dict(msg.headers or {}), "data": base64.b64encode(msg.data).decode()}))
    await nc.close()

asyncio.run(main())
"#;

fn python() -> String {
    std::env::var("EVENT_TEST_PYTHON").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".to_owned());
        format!("{home}/.cache/event-brokers/venv/bin/python")
    })
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Runs the nats-py client; panics with its output unless it succeeds.
async fn nats_py(args: Vec<String>) -> serde_json::Value {
    tokio::task::spawn_blocking(move || {
        let python = python();
        let output = Command::new(&python)
            .arg("-c")
            .arg(CLIENT)
            .args(&args)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run {python} (scripts/brokers.sh makes the virtualenv): {e}")
            });
        assert!(
            output.status.success(),
            "nats-py {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("nats-py prints JSON")
    })
    .await
    .expect("nats-py task")
}

async fn foreign_publish(subject: &str, body: &[u8], headers: &[(&str, &str)]) {
    let headers: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .map(|(n, v)| ((*n).to_owned(), serde_json::Value::from(*v)))
        .collect();
    let ack = nats_py(vec![
        "publish".into(),
        common::url(),
        subject.to_owned(),
        b64(body),
        serde_json::Value::Object(headers).to_string(),
    ])
    .await;
    assert_eq!(ack["stream"], common::TESTKIT_STREAM, "{ack}");
}

fn user() -> UserCreated {
    UserCreated {
        user_id: "u-1".into(),
        email: "ada@example.com".into(),
        display_name: "Ada".into(),
    }
}

#[derive(Debug)]
struct Seen {
    user: UserCreated,
    type_verified: bool,
    content_type: Option<String>,
}

#[derive(Clone)]
struct Calls(tokio::sync::mpsc::UnboundedSender<Seen>);

async fn on_user_created(event: Event<UserCreated>, State(calls): State<Calls>) {
    let seen = Seen {
        type_verified: event.type_verified(),
        content_type: event.headers().content_type().map(str::to_owned),
        user: event.into_message(),
    };
    let _ = calls.0.send(seen);
}

/// A typed `UserCreated` subscriber (queue group `mailer`) and a dead-letter collector.
struct Harness {
    broker: NatsBroker,
    topic: String,
    service: RunningService,
    dlq_subscription: Subscription,
    dead_letters: Collector<Delivery>,
    calls: Collector<Seen>,
}

impl Harness {
    async fn start() -> Harness {
        Harness::start_with(common::builder("foreign-test")).await
    }

    async fn start_with(builder: event_nats::NatsBrokerBuilder) -> Harness {
        Harness::start_on(builder, unique("users.created")).await
    }

    async fn start_on(builder: event_nats::NatsBrokerBuilder, topic: String) -> Harness {
        common::testkit_stream().await;
        let broker = common::connected(builder.build().expect("config")).await;
        let (dlq_tx, dead_letters) = Collector::new(WAIT);
        let dlq_subscription = delivery_subscriber(&broker, &format!("{topic}.dlq"), dlq_tx).await;
        let (calls_tx, calls) = Collector::new(WAIT);
        let service = Service::builder("foreign-test")
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
        Harness {
            broker,
            topic,
            service,
            dlq_subscription,
            dead_letters,
            calls,
        }
    }

    async fn stop(mut self) {
        let report = self
            .calls
            .assert_empty_after("handler calls after the test", self.service.stop())
            .await;
        assert!(!report.timed_out, "{report:?}");
        self.broker
            .publish(&format!("{}.dlq", self.topic), marker())
            .await
            .expect("publish the marker");
        self.dead_letters
            .assert_empty_before("dead letters after the test", is_marker)
            .await;
        self.dlq_subscription.unsubscribe().await;
        self.broker.disconnect().await.expect("disconnect");
    }
}

/// Publishes `body` with nats-py and checks the dead letter's diagnosis.
async fn expect_diagnosis(
    body: &[u8],
    headers: &[(&str, &str)],
    error_kind: &str,
    payload_kind: &str,
    fragments: &[&str],
) {
    let mut harness = Harness::start().await;
    foreign_publish(&harness.topic, body, headers).await;
    let dead = harness
        .calls
        .assert_empty_after(
            "the typed handler must not see an undecodable message",
            harness.dead_letters.next("the dead letter"),
        )
        .await;
    let h = dead.headers();
    let error = h
        .get_str(names::X_EVENT_ERROR)
        .unwrap_or_default()
        .to_owned();
    println!("{payload_kind}: {error}");
    assert_eq!(
        h.get_str(names::X_EVENT_ERROR_KIND),
        Some(error_kind),
        "{h:?}"
    );
    assert_eq!(
        h.get_str(names::X_EVENT_PAYLOAD_KIND),
        Some(payload_kind),
        "{h:?}"
    );
    assert_eq!(
        h.get_str(names::X_EVENT_ATTEMPTS),
        Some("1"),
        "never retried"
    );
    assert_eq!(
        h.get_str(names::X_EVENT_ORIGINAL_TOPIC),
        Some(harness.topic.as_str())
    );
    assert!(
        h.get_str(names::X_EVENT_ORIGINAL_POSITION)
            .is_some_and(|p| p.starts_with("stream sequence ")),
        "{h:?}"
    );
    assert!(
        h.get_str(names::X_EVENT_HANDLER)
            .is_some_and(|n| n.ends_with("on_user_created")),
        "{h:?}"
    );
    assert!(
        error.contains("expected type users.v1.UserCreated"),
        "{error}"
    );
    assert!(
        error.contains(&format!("topic {:?}, stream sequence", harness.topic)),
        "{error}"
    );
    for fragment in fragments {
        assert!(
            error.contains(fragment),
            "x-event-error lacks {fragment:?}:\n{error}"
        );
    }
    assert_eq!(dead.payload().as_ref(), body, "original bytes kept");
    for (name, value) in headers {
        assert_eq!(
            h.get_str(name),
            Some(*value),
            "the producer's header {name} kept"
        );
    }
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_protobuf_of_another_type_is_diagnosed() {
    let tick = Tick {
        seq: 7,
        payload: vec![0xca, 0xfe].into(),
    };
    expect_diagnosis(
        &tick.encode_to_vec(),
        &[],
        "decode-error",
        "protobuf",
        &[
            "payload is not a valid users.v1.UserCreated",
            "protobuf wire format with fields [1, 2]",
            "no type header",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_type_named_in_its_header_is_diagnosed() {
    let tick = Tick {
        seq: 7,
        payload: vec![0xca, 0xfe].into(),
    };
    expect_diagnosis(
        &tick.encode_to_vec(),
        &[
            ("ce_type", "bench.v1.Tick"),
            ("Content-Type", "application/protobuf"),
        ],
        "type-mismatch",
        "protobuf",
        &["bench.v1.Tick"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_without_headers_is_diagnosed() {
    expect_diagnosis(
        br#"{"user_id":"u-1","email":"ada@example.com","display_name":"Ada"}"#,
        &[],
        "decode-error",
        "json",
        &[
            "JSON object with keys [\"user_id\", \"email\", \"display_name\"]",
            "the producer sent JSON",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_with_a_content_type_header_is_diagnosed() {
    expect_diagnosis(
        br#"{"userId":"u-1","email":"ada@example.com"}"#,
        &[("Content-Type", "application/json")],
        "unsupported-content-type",
        "json",
        &["cannot decode content type application/json as protobuf"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_bytes_and_text_are_diagnosed() {
    expect_diagnosis(
        b"New user signed up: ada@example.com (display name Ada Lovelace)",
        &[],
        "decode-error",
        "text",
        &[
            "text \"New user signed up: ada@example.com (dis…\"",
            "the producer sent plain text",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_with_a_type_header_is_a_typed_event() {
    let mut harness = Harness::start().await;
    foreign_publish(
        &harness.topic,
        &user().encode_to_vec(),
        &[
            ("Content-Type", "application/protobuf"),
            ("ce_type", "users.v1.UserCreated"),
        ],
    )
    .await;
    let seen = harness.calls.next("the nats-py message").await;
    assert_eq!(seen.user, user());
    assert!(seen.type_verified, "the ce_type header was checked");
    assert_eq!(seen.content_type.as_deref(), Some("application/protobuf"));
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_py_reads_our_headers() {
    common::testkit_stream().await;
    let broker = common::connected(common::builder("to-nats-py").build().expect("config")).await;
    let topic = unique("users.created");
    let publisher = Publisher::<UserCreated>::new(
        std::sync::Arc::new(broker.clone()),
        "signup",
        topic.as_str(),
    );
    let receipt = publisher.publish(&user()).await.expect("publish");
    let read = nats_py(vec![
        "read".into(),
        common::url(),
        common::TESTKIT_STREAM.into(),
        topic.clone(),
    ])
    .await;
    let header = |name: &str| read["headers"][name].as_str().map(str::to_owned);
    assert_eq!(
        header("ce_type").as_deref(),
        Some("users.v1.UserCreated"),
        "{read}"
    );
    assert_eq!(header("ce_specversion").as_deref(), Some("1.0"));
    assert_eq!(header("ce_source").as_deref(), Some("signup"));
    assert_eq!(
        header("content-type").as_deref(),
        Some("application/protobuf")
    );
    assert_eq!(header("ce_id").as_deref(), receipt.message_id());
    assert_eq!(header("Nats-Msg-Id").as_deref(), receipt.message_id());
    let data = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(read["data"].as_str().expect("data"))
            .expect("base64")
    };
    assert_eq!(
        UserCreated::decode(&data[..]).expect("raw protobuf body"),
        user()
    );
    broker.disconnect().await.expect("disconnect");
}

/// Publishes a message the way a client that writes the protocol itself does (`HPUB`, with
/// `header_block` as it is) and returns its stream sequence from the PubAck.
async fn raw_hpub(subject: &str, header_block: &[u8], payload: &[u8]) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = common::url().trim_start_matches("nats://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&address)
        .await
        .unwrap_or_else(|e| panic!("connect to nats-server at {address}: {e}"));
    let mut frame =
        br#"CONNECT {"verbose":false,"pedantic":false,"headers":true,"protocol":1}"#.to_vec();
    frame.extend_from_slice(b"\r\nSUB raw.puback 1\r\n");
    frame.extend_from_slice(
        format!(
            "HPUB {subject} raw.puback {} {}\r\n",
            header_block.len(),
            header_block.len() + payload.len()
        )
        .as_bytes(),
    );
    frame.extend_from_slice(header_block);
    frame.extend_from_slice(payload);
    frame.extend_from_slice(b"\r\n");
    socket.write_all(&frame).await.expect("write HPUB");
    // INFO, then the PubAck: MSG raw.puback 1 <n>, {"stream":…,"seq":…}
    let mut read = Vec::new();
    let ack = tokio::time::timeout(WAIT, async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = socket.read(&mut chunk).await.expect("read");
            assert!(n > 0, "the server closed: {}", read.escape_ascii());
            read.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&read).into_owned();
            assert!(!text.contains("-ERR"), "{text}");
            if let Some(at) = text.find("MSG raw.puback 1 ")
                && let Some(json) = text[at..].split("\r\n").nth(1)
                && json.ends_with('}')
            {
                break serde_json::from_str::<serde_json::Value>(json).expect("PubAck");
            }
        }
    })
    .await
    .expect("a PubAck");
    assert_eq!(ack["stream"], common::TESTKIT_STREAM, "{ack}");
    ack["seq"].as_u64().expect("seq")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_block_the_client_cannot_read_is_dead_lettered_at_max_deliver() {
    let mut harness = Harness::start_with(
        common::builder("unreadable-headers")
            .ack_wait(Duration::from_millis(200))
            .max_deliver(2),
    )
    .await;
    let publisher = Publisher::<UserCreated>::new(
        std::sync::Arc::new(harness.broker.clone()),
        "signup",
        harness.topic.as_str(),
    );
    let before = UserCreated {
        user_id: "before".into(),
        ..user()
    };
    publisher.publish(&before).await.expect("publish");
    assert_eq!(harness.calls.next("the first event").await.user, before);
    let body = user().encode_to_vec();
    let sequence = raw_hpub(
        &harness.topic,
        b"NATS/1.0\r\nce_type: users.v1.UserCreated\r\n\xff\xfename: v\r\ntenant: t-1\r\n\r\n",
        &body,
    )
    .await;
    let after = UserCreated {
        user_id: "after".into(),
        ..user()
    };
    publisher.publish(&after).await.expect("publish");
    let dead = harness
        .dead_letters
        .next("the dead letter of the unreadable message")
        .await;
    let h = dead.headers();
    let error = h.get_str(names::X_EVENT_ERROR).unwrap_or_default();
    assert_eq!(
        h.get_str(names::X_EVENT_ERROR_KIND),
        Some("undeliverable"),
        "{h:?}"
    );
    for fragment in [
        "after 2 deliveries (the consumer's max_deliver)",
        "cannot read its header block",
        r"header 1 (\xff\xfename: v): the name is not printable ASCII",
    ] {
        assert!(
            error.contains(fragment),
            "x-event-error lacks {fragment:?}: {error}"
        );
    }
    assert_eq!(dead.payload().as_ref(), &body[..], "original bytes kept");
    assert_eq!(h.get_str("ce_type"), Some("users.v1.UserCreated"));
    assert_eq!(h.get_str("tenant"), Some("t-1"), "readable headers kept");
    assert_eq!(
        h.get(event_nats::UNREADABLE_HEADERS).map(|v| v.as_bytes()),
        Some(&b"\xff\xfename: v"[..]),
        "the unreadable line kept as it was"
    );
    assert_eq!(h.get_str(names::X_EVENT_ATTEMPTS), Some("2"));
    assert_eq!(
        h.get_str(names::X_EVENT_ORIGINAL_POSITION),
        Some(format!("stream sequence {sequence} (redelivered)").as_str())
    );
    assert!(
        h.get_str(names::X_EVENT_HANDLER)
            .is_some_and(|n| n.ends_with("on_user_created")),
        "{h:?}"
    );
    // the handler never saw it; the event behind it was handled
    assert_eq!(harness.calls.next("the event behind it").await.user, after);
    // and the consumer settled it: nothing pending and, on nats-server 2.9 (whose ack of a
    // message past its limit moves the floor), the acknowledgement floor past it (the
    // acknowledgements are flushed when the service stops)
    let report = harness
        .calls
        .assert_empty_after("handler calls after the test", harness.service.stop())
        .await;
    assert!(!report.timed_out, "{report:?}");
    let info = mailer_consumer(&harness.topic).await;
    let version = common::raw_client().await.server_info().version;
    assert_eq!(info.num_ack_pending, 0, "{info:?}");
    if version.starts_with("2.9.") {
        assert!(info.ack_floor.stream_sequence > sequence, "{info:?}");
    }
    harness.dlq_subscription.unsubscribe().await;
    harness.broker.disconnect().await.expect("disconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_left_unsettled_max_deliver_times_is_dead_lettered_when_a_member_joins() {
    use async_nats::jetstream::consumer::{AckPolicy, pull};
    use futures_util::StreamExt as _;
    common::testkit_stream().await;
    let topic = unique("users.created");
    let builder = common::builder("unsettled")
        .ack_wait(Duration::from_millis(200))
        .max_deliver(2);
    // the group's consumer, and a member of another client that takes the message twice and
    // never settles it (as a process that crashes on it would)
    let js = async_nats::jetstream::new(common::raw_client().await);
    let stream = js.get_stream(common::TESTKIT_STREAM).await.expect("stream");
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(mailer_consumer_name(&topic)),
            filter_subject: topic.clone(),
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_millis(200),
            max_deliver: 2,
            inactive_threshold: Duration::from_secs(600),
            ..Default::default()
        })
        .await
        .expect("the group's consumer");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("ce_type", "users.v1.UserCreated");
    headers.insert("content-type", "application/protobuf");
    js.publish_with_headers(topic.clone(), headers, user().encode_to_vec().into())
        .await
        .expect("publish")
        .await
        .expect("PubAck");
    for delivery in 1..=2 {
        let mut batch = consumer
            .fetch()
            .max_messages(1)
            .expires(Duration::from_secs(5))
            .messages()
            .await
            .expect("fetch");
        let message = batch.next().await.expect("a message").expect("a message");
        assert_eq!(message.info().expect("info").delivered, delivery);
    }
    // our member joins; the server gives up on the message at its next pull
    let mut harness = Harness::start_on(builder, topic).await;
    let dead = harness
        .calls
        .assert_empty_after(
            "no handler runs on a message given up on",
            harness.dead_letters.next("the dead letter"),
        )
        .await;
    let h = dead.headers();
    let error = h.get_str(names::X_EVENT_ERROR).unwrap_or_default();
    assert_eq!(h.get_str(names::X_EVENT_ERROR_KIND), Some("undeliverable"));
    assert!(
        error.contains("after 2 deliveries (the consumer's max_deliver) without an outcome"),
        "{error}"
    );
    assert_eq!(h.get_str(names::X_EVENT_ATTEMPTS), Some("2"));
    assert_eq!(h.get_str("ce_type"), Some("users.v1.UserCreated"));
    assert!(h.get(event_nats::UNREADABLE_HEADERS).is_none(), "{h:?}");
    assert_eq!(
        UserCreated::decode(dead.payload().clone()).expect("the original bytes"),
        user()
    );
    harness.stop().await;
}

/// The name of the queue group `mailer`'s consumer on `topic`.
fn mailer_consumer_name(topic: &str) -> String {
    NatsBroker::builder(&common::url())
        .build()
        .expect("config")
        .group_consumer_name(topic, "mailer")
}

/// The configuration and state of the queue group `mailer`'s consumer on `topic`.
async fn mailer_consumer(topic: &str) -> async_nats::jetstream::consumer::Info {
    let consumer = mailer_consumer_name(topic);
    let js = async_nats::jetstream::new(common::raw_client().await);
    js.get_stream(common::TESTKIT_STREAM)
        .await
        .expect("stream")
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&consumer)
        .await
        .expect("the group's consumer")
        .info()
        .await
        .expect("consumer info")
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_consumer_that_exists_keeps_its_max_deliver_and_a_new_one_gets_the_default() {
    use async_nats::jetstream::consumer::{AckPolicy, pull};
    common::testkit_stream().await;
    // made unlimited (by an older version, or by hand, with what cannot change as the
    // backend makes it: the server would update the limit otherwise), an upgrade must not
    // limit it
    let topic = unique("users.created");
    let js = async_nats::jetstream::new(common::raw_client().await);
    js.get_stream(common::TESTKIT_STREAM)
        .await
        .expect("stream")
        .create_consumer(pull::Config {
            durable_name: Some(mailer_consumer_name(&topic)),
            filter_subject: topic.clone(),
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::New,
            ack_policy: AckPolicy::Explicit,
            inactive_threshold: Duration::from_secs(600),
            ..Default::default()
        })
        .await
        .expect("the group's consumer");
    assert_eq!(mailer_consumer(&topic).await.config.max_deliver, -1);
    let harness = Harness::start_on(common::builder("limits"), topic.clone()).await;
    assert_eq!(
        mailer_consumer(&topic).await.config.max_deliver,
        -1,
        "kept unlimited"
    );
    harness.stop().await;
    // made new: the default
    let harness = Harness::start_with(common::builder("limits")).await;
    assert_eq!(
        mailer_consumer(&harness.topic).await.config.max_deliver,
        event_nats::DEFAULT_MAX_DELIVER
    );
    harness.stop().await;
}
