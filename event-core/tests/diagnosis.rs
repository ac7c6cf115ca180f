//! Codec mismatch diagnosis (event-core/docs/wire.md): every payload classification has a
//! test that publishes real bytes through the raw `Broker` to a typed `UserCreated` subscriber
//! and checks the diagnosis and the dead-letter headers.
//!
//! Each case runs on its own in-memory broker: a [`Service`] with one typed subscriber (which
//! would retry a failing handler five times, so `x-event-attempts: 1` shows that decode failures
//! are not retried) and a raw subscriber on `users.created.dlq` collecting dead letters.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prost::{Message as _, Name as _};
use tokio::sync::mpsc;

use event_core::broker::{
    Broker, Delivery, Message, Receipt, RetryPolicy, SubscribeOptions, Subscription,
};
use event_core::codec::{PayloadKind, classify};
use event_core::headers::{HeaderValue, names};
use event_core::memory::MemoryBroker;
use event_core::telemetry::{label, metric};
use event_core::testkit::{self, Collector};
use event_core::{Event, Publisher, RunningService, Service, State};
use event_proto::bench::v1::Tick;
use event_proto::shop::v1::{LineItem, OrderPlaced};
use event_proto::users::v1::UserCreated;

const TOPIC: &str = "users.created";
const DLQ: &str = "users.created.dlq";
const EXPECTED_TYPE: &str = "users.v1.UserCreated";
/// Upper bound of every wait; nothing here is expected to take more than milliseconds.
const WAIT: Duration = Duration::from_secs(5);
/// The suffix the diagnosis adds to the hint when the message carries no type header.
const NO_TYPE_HEADER_HINT: &str = "(the message has no type header: published with the raw \
                                   Broker API or by another framework?)";

// ---- helpers ------------------------------------------------------------------------------

/// What the typed handler saw.
#[derive(Debug)]
struct Seen {
    user: UserCreated,
    type_verified: bool,
    message_type: Option<String>,
}

/// The typed handler's way to report, as service state.
#[derive(Clone)]
struct Calls(mpsc::UnboundedSender<Seen>);

async fn on_user_created(event: Event<UserCreated>, State(calls): State<Calls>) {
    let seen = Seen {
        type_verified: event.type_verified(),
        message_type: event.message_type().map(str::to_owned),
        user: event.into_message(),
    };
    let _ = calls.0.send(seen);
}

/// A broker with the typed `UserCreated` subscriber and a dead-letter collector.
struct Harness {
    broker: MemoryBroker,
    /// The subscriber's queue group, unique per harness so that its metrics are its own.
    group: String,
    service: RunningService,
    dlq_subscription: Subscription,
    dead_letters: Collector<Delivery>,
    calls: Collector<Seen>,
}

impl Harness {
    async fn start() -> Harness {
        testkit::metrics::install();
        let group = testkit::unique("mailer");
        let broker = MemoryBroker::new();
        let (dlq_tx, dead_letters) = Collector::new(WAIT);
        let dlq_subscription = testkit::delivery_subscriber(&broker, DLQ, dlq_tx).await;
        let (calls_tx, calls) = Collector::new(WAIT);
        let service = Service::builder("diagnosis-test")
            .broker(broker.clone())
            .state(Calls(calls_tx))
            .subscribe_with(
                TOPIC,
                SubscribeOptions::new()
                    .queue(group.as_str())
                    // A handler error would be retried: decode failures must not be.
                    .retry(RetryPolicy::exponential(5, Duration::from_millis(1)).with_jitter(0.0)),
                on_user_created,
            )
            .build()
            .expect("build the service")
            .start()
            .await
            .expect("start the service");
        Harness {
            broker,
            group,
            service,
            dlq_subscription,
            dead_letters,
            calls,
        }
    }

    /// Publishes through the raw Broker API, as go-micro's `broker.Publish` would.
    async fn publish(&self, message: Message) -> Receipt {
        self.broker
            .publish(TOPIC, message)
            .await
            .expect("raw publish")
    }

    async fn stop(mut self) {
        // no handler runs once the service stopped
        let report = self
            .calls
            .assert_empty_after("handler calls after the test", self.service.stop())
            .await;
        assert!(!report.timed_out, "{report:?}");
        // the stopped service published its dead letters before stop returned: the dead-letter
        // subscriber, which takes them in publish order, gets them before a marker sent now
        self.broker
            .publish(DLQ, testkit::marker())
            .await
            .expect("publish the marker");
        self.dead_letters
            .assert_empty_before("dead letters after the test", testkit::is_marker)
            .await;
        self.dlq_subscription.unsubscribe().await;
    }
}

/// One way a message can fail to become a `UserCreated`.
struct Case {
    /// The message as published.
    message: Message,
    /// Expected `x-event-error-kind`.
    error_kind: &'static str,
    /// What the payload is expected to be classified as.
    payload_kind: PayloadKind,
    /// Further fragments `x-event-error` must contain: the error's own wording and the hint.
    fragments: &'static [&'static str],
}

/// Publishes `case.message` through the raw broker, waits for its dead letter, checks what
/// every decode failure must say, and returns the dead letter.
async fn expect_dead_letter(case: Case) -> Delivery {
    let Case {
        message,
        error_kind,
        payload_kind,
        fragments,
    } = case;
    assert_eq!(
        classify(&message.headers, &message.payload),
        payload_kind,
        "classification of the published bytes"
    );

    let mut harness = Harness::start().await;
    let receipt = harness.publish(message.clone()).await;
    let position = receipt.position().to_string();
    assert_eq!(position, "sequence 1");

    // the handler would have run before the message was dead-lettered
    let dead = harness
        .calls
        .assert_empty_after(
            "the typed handler must not see an undecodable message",
            harness.dead_letters.next("the dead letter"),
        )
        .await;

    let headers = dead.headers();
    let header = |name: &str| {
        headers
            .get_str(name)
            .unwrap_or_else(|| panic!("dead letter without {name}: {headers:?}"))
            .to_owned()
    };
    assert_eq!(dead.topic(), DLQ);
    assert_eq!(header(names::X_EVENT_ERROR_KIND), error_kind);
    assert_eq!(header(names::X_EVENT_PAYLOAD_KIND), payload_kind.as_str());
    assert_eq!(header(names::X_EVENT_ORIGINAL_TOPIC), TOPIC);
    assert_eq!(header(names::X_EVENT_ORIGINAL_POSITION), position);
    assert_eq!(
        header(names::X_EVENT_ATTEMPTS),
        "1",
        "decode failures are dead-lettered at once, never retried"
    );
    assert!(
        header(names::X_EVENT_HANDLER).ends_with("on_user_created"),
        "{headers:?}"
    );

    // The diagnosis.
    let error = header(names::X_EVENT_ERROR);
    let mut expected = vec![
        format!("topic {TOPIC:?}, {position}"),
        format!("expected type {EXPECTED_TYPE}"),
        format!("payload: {payload_kind} ({} bytes", message.payload.len()),
    ];
    expected.push(match message.headers.message_type() {
        Some(found) => format!(", type header {found}"),
        None => ", no type header".to_owned(),
    });
    expected.push(match message.headers.content_type() {
        Some(content_type) => format!(", content type {content_type}"),
        None => ", no content type".to_owned(),
    });
    match message.headers.message_id() {
        Some(id) => expected.push(format!(", message id {id}")),
        None => assert!(!error.contains("message id"), "{error}"),
    }
    // the "no type header" remark, unless the classification's own hint already says it
    if message.headers.message_type().is_none()
        && !classify(&message.headers, &message.payload)
            .hint()
            .contains("raw Broker API")
    {
        expected.push(NO_TYPE_HEADER_HINT.to_owned());
    }
    expected.extend(fragments.iter().map(|f| (*f).to_owned()));
    for fragment in &expected {
        assert!(
            error.contains(fragment.as_str()),
            "x-event-error lacks {fragment:?}:\n{error}"
        );
    }

    // The original message, unchanged, then exactly the seven x-event-* headers.
    assert_eq!(dead.payload(), &message.payload, "original payload kept");
    assert_eq!(dead.message().key, message.key, "original key kept");
    let original: Vec<_> = message.headers.iter().collect();
    let kept: Vec<_> = headers.iter().take(original.len()).collect();
    assert_eq!(kept, original, "original headers kept, in order");
    let added: Vec<&str> = headers
        .iter()
        .skip(original.len())
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(
        added,
        [
            names::X_EVENT_ERROR,
            names::X_EVENT_ERROR_KIND,
            names::X_EVENT_ORIGINAL_TOPIC,
            names::X_EVENT_ORIGINAL_POSITION,
            names::X_EVENT_HANDLER,
            names::X_EVENT_ATTEMPTS,
            names::X_EVENT_PAYLOAD_KIND,
        ]
    );

    let group = harness.group.clone();
    harness.stop().await;

    // The metrics: one message consumed, dead-lettered and counted as a decode error of its
    // classification, none acked or retried.
    let metrics = testkit::metrics::install();
    let of = [(label::GROUP, group.as_str()), (label::TOPIC, TOPIC)];
    let with = |name: &'static str, value: &'static str| {
        let mut labels = of.to_vec();
        labels.push((name, value));
        labels
    };
    assert_eq!(metrics.counter(metric::CONSUMED, &of), 1);
    assert_eq!(metrics.counter(metric::ACKED, &of), 0);
    assert_eq!(metrics.counter(metric::RETRIED, &of), 0);
    assert_eq!(
        metrics.counter(metric::DEAD_LETTERED, &with(label::ERROR_KIND, error_kind)),
        1
    );
    assert_eq!(
        metrics.counter(
            metric::DECODE_ERRORS,
            &with(label::PAYLOAD_KIND, payload_kind.as_str())
        ),
        1,
        "decode errors of kind {}",
        payload_kind.as_str()
    );
    assert_eq!(metrics.counter(metric::DECODE_ERRORS, &of), 1);
    assert_eq!(metrics.gauge(metric::IN_FLIGHT, &of), 0.0);
    dead
}

fn user() -> UserCreated {
    UserCreated {
        user_id: "u-1".into(),
        email: "ada@example.com".into(),
        display_name: "Ada".into(),
    }
}

/// A message of another type; its bytes happen to decode as a `UserCreated` too (fields 1 and
/// 2 are strings in both, field 3 is length-delimited in both, field 4 is unknown).
fn order() -> OrderPlaced {
    OrderPlaced {
        order_id: "o-1".into(),
        user_id: "u-1".into(),
        items: vec![LineItem {
            sku: "sku-1".into(),
            quantity: 2,
            unit_price_cents: 120,
        }],
        total_cents: 240,
    }
}

/// A message of another shape: field 1 is a varint, where `UserCreated` has a string.
fn tick() -> Tick {
    Tick {
        seq: 7,
        payload: Bytes::from_static(&[0xca, 0xfe]),
    }
}

/// Standard padded base64, as Go's `encoding/json` writes `[]byte`.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 0x3f) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_helper_matches_rfc_4648() {
    for (plain, encoded) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64(plain.as_bytes()), encoded);
    }
    assert_eq!(base64(&[0xfb, 0xff, 0xbf]), "+/+/");
}

/// A real gzip member holding `data` in one stored (uncompressed) deflate block.
fn gzip(data: &[u8]) -> Vec<u8> {
    let len = u16::try_from(data.len()).expect("small payload");
    let mut out = vec![0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0, 0x00, 0xff];
    out.push(0x01); // final block, stored
    out.extend(len.to_le_bytes());
    out.extend((!len).to_le_bytes());
    out.extend(data);
    out.extend(crc32(data).to_le_bytes());
    out.extend(u32::from(len).to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

// ---- one test per classification ---------------------------------------------------------

#[tokio::test]
async fn cloudevents_structured_is_an_unsupported_content_type() {
    let body = br#"{"specversion":"1.0","type":"users.v1.UserCreated","source":"signup","id":"ev-1","datacontenttype":"application/json","data":{"userId":"u-1","email":"ada@example.com"}}"#;
    expect_dead_letter(Case {
        message: Message::new(&body[..]).with_header(
            "content-type",
            "application/cloudevents+json; charset=utf-8",
        ),
        error_kind: "unsupported-content-type",
        payload_kind: PayloadKind::CloudEventsStructured {
            format: "json".into(),
        },
        fragments: &[
            "cannot decode content type application/cloudevents+json; charset=utf-8 as protobuf",
            "CloudEvents structured-mode event (format \"json\")",
            "decode the CloudEvents envelope first",
        ],
    })
    .await;
}

#[tokio::test]
async fn go_micro_kafka_envelope_is_diagnosed() {
    let inner = user().encode_to_vec();
    let body = format!(
        r#"{{"Header":{{"Content-Type":"application/protobuf","Micro-ID":"9b5d0c4e-1f0a-4c55-8d0e-6f1b2a3c4d5e","Micro-Topic":"users.created"}},"Body":"{}"}}"#,
        base64(&inner)
    );
    expect_dead_letter(Case {
        // go-micro's Kafka broker puts everything into the record value: no record headers.
        message: Message::new(body).with_key("u-1"),
        error_kind: "decode-error",
        payload_kind: PayloadKind::GoMicroEnvelope {
            content_type: Some("application/protobuf".into()),
            topic: Some("users.created".into()),
            body_len: Some(inner.len()),
        },
        fragments: &[
            "go-micro JSON envelope (content type \"application/protobuf\", topic \"users.created\"",
            "which this subscription did not unwrap: add wire=go-micro",
        ],
    })
    .await;
}

#[tokio::test]
async fn confluent_schema_registry_frame_is_diagnosed() {
    let mut payload = vec![0x00];
    payload.extend(42u32.to_be_bytes());
    payload.push(0x00); // message indexes: the shorthand for [0]
    payload.extend(user().encode_to_vec());
    expect_dead_letter(Case {
        message: Message::new(payload).with_key("u-1"),
        error_kind: "decode-error",
        payload_kind: PayloadKind::ConfluentFramed {
            schema_id: Some(42),
            message_indexes: vec![0],
            header_mode: false,
        },
        fragments: &[
            "payload is not a valid users.v1.UserCreated",
            "Confluent Schema Registry frame (schema id 42, message indexes [0])",
            "the producer uses the Confluent Schema Registry serializer: enable schema-registry framing",
        ],
    })
    .await;
}

#[tokio::test]
async fn confluent_header_mode_is_diagnosed() {
    // Header mode: the payload is plain protobuf, the schema is named by the header
    // (0x01, a 16-byte GUID, message indexes). Here the schema's second message (index 1)
    // was serialized: another shape than `UserCreated`.
    let mut schema_id = vec![0x01];
    schema_id.extend(*b"\x5a\x1d\x0b\x7e\x33\x4c\x4e\x91\x8f\x02\xc4\x6b\x1a\x9d\x77\x10");
    schema_id.extend([0x02, 0x02]); // zigzag: one index, 1
    let message = Message::new(tick().encode_to_vec())
        .with_header("__value_schema_id", HeaderValue::from_bytes(schema_id));
    expect_dead_letter(Case {
        message,
        error_kind: "decode-error",
        payload_kind: PayloadKind::ConfluentFramed {
            schema_id: None,
            message_indexes: vec![1],
            header_mode: true,
        },
        fragments: &[
            "payload is not a valid users.v1.UserCreated",
            "Confluent Schema Registry header-mode message (schema GUID in the __value_schema_id header, message indexes [1])",
            "header-mode serializer",
        ],
    })
    .await;
}

#[tokio::test]
async fn grpc_length_prefix_is_diagnosed() {
    let inner = user().encode_to_vec();
    let mut payload = vec![0x00];
    payload.extend(u32::try_from(inner.len()).unwrap().to_be_bytes());
    payload.extend(&inner);
    let message = Message::new(payload)
        .with_header("Content-Type", "application/grpc")
        .with_header("Micro-ID", "grpc-7");
    let case = Case {
        message,
        error_kind: "decode-error",
        payload_kind: PayloadKind::GrpcFramed {
            compressed: false,
            inner_len: inner.len(),
        },
        fragments: &[
            "payload is not a valid users.v1.UserCreated",
            "gRPC length-prefixed frame (uncompressed, ",
            "strip the prefix",
        ],
    };
    expect_dead_letter(case).await;
}

#[tokio::test]
async fn json_object_without_headers_is_diagnosed() {
    // go-micro `broker.Publish` of a JSON-marshalled struct: no headers at all.
    let body = br#"{"user_id":"u-1","email":"ada@example.com","display_name":"Ada"}"#;
    expect_dead_letter(Case {
        message: Message::new(&body[..]),
        error_kind: "decode-error",
        payload_kind: PayloadKind::Json {
            top_level_keys: vec!["user_id".into(), "email".into(), "display_name".into()],
        },
        fragments: &[
            "JSON object with keys [\"user_id\", \"email\", \"display_name\"]",
            "the producer sent JSON",
        ],
    })
    .await;
}

#[tokio::test]
async fn utf8_text_is_diagnosed() {
    let text = "New user signed up: ada@example.com (display name Ada Lovelace)";
    expect_dead_letter(Case {
        message: Message::new(text),
        error_kind: "decode-error",
        payload_kind: PayloadKind::Text {
            preview: "New user signed up: ada@example.com (dis…".into(),
        },
        fragments: &[
            "payload is not a valid users.v1.UserCreated",
            "text \"New user signed up: ada@example.com (dis…\"",
            "the producer sent plain text",
        ],
    })
    .await;
}

#[tokio::test]
async fn gzip_is_diagnosed() {
    let payload = gzip(&user().encode_to_vec());
    let message = Message::new(payload)
        .with_header("content-type", "application/protobuf")
        .with_header("content-encoding", "gzip");
    expect_dead_letter(Case {
        message,
        error_kind: "decode-error",
        payload_kind: PayloadKind::Gzip,
        fragments: &[
            "payload is not a valid users.v1.UserCreated",
            "gzip-compressed data",
            "decompress it before decoding",
        ],
    })
    .await;
}

#[tokio::test]
async fn empty_payload_is_diagnosed() {
    let message = Message::new(Bytes::new()).with_header("content-type", "application/json");
    expect_dead_letter(Case {
        message,
        error_kind: "unsupported-content-type",
        payload_kind: PayloadKind::Empty,
        fragments: &[
            "cannot decode content type application/json as protobuf",
            "an empty payload (0 bytes: -)",
            "a tombstone or a producer that sent nothing",
        ],
    })
    .await;
}

#[tokio::test]
async fn empty_payload_without_headers_is_a_tombstone_not_a_default_message() {
    expect_dead_letter(Case {
        message: Message::new(Bytes::new()),
        error_kind: "decode-error",
        payload_kind: PayloadKind::Empty,
        fragments: &[
            "payload is an empty payload, not protobuf",
            "a tombstone or a producer that sent nothing",
        ],
    })
    .await;
}

#[tokio::test]
async fn another_type_with_a_type_header_is_a_type_mismatch() {
    let orders = Publisher::<OrderPlaced>::new(Arc::new(MemoryBroker::new()), "shop", TOPIC);
    let message = orders.encode(&order(), None);
    assert_eq!(message.headers.message_type(), Some("shop.v1.OrderPlaced"));
    assert!(message.headers.message_id().is_some());
    // The bytes would decode as a UserCreated: only the type header can refuse them.
    assert!(UserCreated::decode(message.payload.clone()).is_ok());
    expect_dead_letter(Case {
        message,
        error_kind: "type-mismatch",
        payload_kind: PayloadKind::Protobuf {
            field_numbers: vec![1, 2, 3, 4],
        },
        fragments: &[
            "type mismatch: expected users.v1.UserCreated, the message is shop.v1.OrderPlaced",
            "protobuf wire format with fields [1, 2, 3, 4]",
            "the publisher sends shop.v1.OrderPlaced on this topic but this subscriber expects \
             users.v1.UserCreated: share one typed Topic<T> constant",
        ],
    })
    .await;
}

#[tokio::test]
async fn protobuf_of_another_shape_without_type_header_is_diagnosed() {
    let message = Message::new(tick().encode_to_vec())
        .with_header("content-type", "application/protobuf")
        .with_header("ce_id", "tick-7");
    assert!(UserCreated::decode(message.payload.clone()).is_err());
    expect_dead_letter(Case {
        message,
        error_kind: "decode-error",
        payload_kind: PayloadKind::Protobuf {
            field_numbers: vec![1, 2],
        },
        fragments: &[
            "payload is not a valid users.v1.UserCreated",
            "protobuf wire format with fields [1, 2]",
            "protobuf of another message type: check that producer and subscriber agree",
        ],
    })
    .await;
}

#[tokio::test]
async fn random_binary_is_diagnosed() {
    let payload: &[u8] = &[
        0xf7, 0x3c, 0x91, 0x0e, 0xa8, 0x5d, 0xff, 0x42, 0x19, 0xc6, 0x7b, 0xe0, 0x03, 0x9a, 0x64,
        0xd1, 0x2f, 0xb8,
    ];
    let dead = expect_dead_letter(Case {
        message: Message::new(payload),
        error_kind: "decode-error",
        payload_kind: PayloadKind::Binary,
        fragments: &[
            "payload is not a valid users.v1.UserCreated",
            "binary data that is not protobuf wire format (18 bytes: f73c910ea85dff4219c67be0039a64d1…)",
            "neither protobuf nor a known framing",
        ],
    })
    .await;
    assert_eq!(dead.payload().as_ref(), payload);
}

// ---- what is delivered -------------------------------------------------------------------

/// go-micro's raw `broker.Publish` of protobuf bytes: no type header, no content type.
#[tokio::test]
async fn protobuf_without_type_header_is_delivered_unverified() {
    let mut harness = Harness::start().await;
    harness
        .publish(Message::new(user().encode_to_vec()).with_header("Micro-Topic", TOPIC))
        .await;
    let seen = harness.calls.next("the typed handler").await;
    assert_eq!(seen.user, user());
    assert!(!seen.type_verified, "no type header vouched for the type");
    assert_eq!(seen.message_type, None);
    harness.stop().await;
}

/// A newer producer's `UserCreated`, with a field this build does not know.
#[derive(Clone, PartialEq, prost::Message)]
struct UserCreatedV2 {
    #[prost(string, tag = "1")]
    user_id: String,
    #[prost(string, tag = "2")]
    email: String,
    #[prost(string, tag = "3")]
    display_name: String,
    #[prost(string, tag = "15")]
    referral_code: String,
}

/// Captures what the test's tracing subscriber writes.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn unknown_fields_are_schema_drift_not_an_error() {
    // current_thread runtime: the handler runs on this thread, under this subscriber.
    let logs = LogBuffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let newer = UserCreatedV2 {
        user_id: "u-1".into(),
        email: "ada@example.com".into(),
        display_name: "Ada".into(),
        referral_code: "friends-2024".into(),
    };
    let message = Message::new(newer.encode_to_vec())
        .with_header("ce_type", UserCreated::full_name())
        .with_header("ce_id", "drift-1")
        .with_header("content-type", "application/protobuf");
    let mut harness = Harness::start().await;
    harness.publish(message).await;
    let seen = harness.calls.next("the typed handler").await;
    assert_eq!(seen.user, user());
    assert!(seen.type_verified);
    assert_eq!(seen.message_type.as_deref(), Some(EXPECTED_TYPE));
    let group = harness.group.clone();
    harness.stop().await;

    let metrics = testkit::metrics::install();
    let of = [(label::GROUP, group.as_str())];
    assert_eq!(metrics.counter(metric::SCHEMA_DRIFT, &of), 1);
    assert_eq!(metrics.counter(metric::ACKED, &of), 1);
    assert_eq!(metrics.counter(metric::DECODE_ERRORS, &of), 0);

    let logs = logs.text();
    let warning = logs
        .lines()
        .find(|line| line.contains("the producer's schema is newer"))
        .unwrap_or_else(|| panic!("no schema drift warning in:\n{logs}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("unknown_fields=[15]"), "{warning}");
    assert!(warning.contains(EXPECTED_TYPE), "{warning}");
    assert!(!logs.contains("dead-lettering"), "{logs}");
}
