//! proto3 JSON through the memory broker: raw JSON messages (go-micro's default content type)
//! and a JSON publisher, read by a typed `Service` subscriber that picks the codec of each
//! message by its content type; and what is dead-lettered, with which hint.

use std::time::Duration;

use tokio::sync::mpsc;

use event_core::broker::{Broker, Delivery, Message, SubscribeOptions, Subscription};
use event_core::codec::json;
use event_core::headers::names;
use event_core::memory::MemoryBroker;
use event_core::telemetry::{label, metric};
use event_core::testkit::{self, Collector};
use event_core::{Event, RunningService, Service, State};
use event_proto::users::v1::UserCreated;

const TOPIC: &str = "users.created";
const DLQ: &str = "users.created.dlq";
/// Upper bound of every wait; nothing here is expected to take more than milliseconds.
const WAIT: Duration = Duration::from_secs(5);

const USER_JSON: &str = r#"{"userId":"u-1","email":"ada@example.com","displayName":"Ada"}"#;

fn user() -> UserCreated {
    UserCreated {
        user_id: "u-1".into(),
        email: "ada@example.com".into(),
        display_name: "Ada".into(),
    }
}

/// What the typed handler saw.
#[derive(Debug)]
struct Seen {
    user: UserCreated,
    type_verified: bool,
    content_type: Option<String>,
}

#[derive(Clone)]
struct Calls(mpsc::UnboundedSender<Seen>);

async fn on_user_created(event: Event<UserCreated>, State(calls): State<Calls>) {
    let seen = Seen {
        type_verified: event.type_verified(),
        content_type: event.headers().content_type().map(str::to_owned),
        user: event.into_message(),
    };
    let _ = calls.0.send(seen);
}

/// A memory broker with a typed `UserCreated` service subscriber and a dead-letter observer.
struct Harness {
    broker: MemoryBroker,
    group: String,
    service: RunningService,
    dlq_subscription: Subscription,
    dead_letters: Collector<Delivery>,
    calls: Collector<Seen>,
}

impl Harness {
    async fn start() -> Harness {
        testkit::metrics::install();
        json::register_file_descriptor_set(event_proto::FILE_DESCRIPTOR_SET)
            .expect("register event-proto's descriptors");
        let group = testkit::unique("json");
        let broker = MemoryBroker::new();
        let (dlq_tx, dead_letters) = Collector::new(WAIT);
        let dlq_subscription = testkit::delivery_subscriber(&broker, DLQ, dlq_tx).await;
        let (calls_tx, calls) = Collector::new(WAIT);
        let service = Service::builder("json-test")
            .broker(broker.clone())
            .state(Calls(calls_tx))
            .subscribe_with(
                TOPIC,
                SubscribeOptions::new().queue(group.as_str()),
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
    async fn publish_raw(&self, message: Message) {
        self.broker
            .publish(TOPIC, message)
            .await
            .expect("raw publish");
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

#[tokio::test]
async fn raw_proto3_json_with_a_type_header_is_a_verified_typed_event() {
    let mut harness = Harness::start().await;
    harness
        .publish_raw(
            Message::new(USER_JSON)
                .with_header("ce_type", "users.v1.UserCreated")
                .with_header("Content-Type", "application/json"),
        )
        .await;
    let seen = harness.calls.next("the typed handler").await;
    assert_eq!(seen.user, user());
    assert!(seen.type_verified);
    assert_eq!(seen.content_type.as_deref(), Some("application/json"));
    harness.stop().await;
}

/// go-micro's `broker.Publish` with its default JSON codec: a content type, no type header.
#[tokio::test]
async fn raw_proto3_json_without_a_type_header_is_an_unverified_typed_event() {
    let mut harness = Harness::start().await;
    harness
        .publish_raw(
            Message::new(r#"{"user_id":"u-1","email":"ada@example.com","display_name":"Ada"}"#)
                .with_header("Content-Type", "application/json; charset=utf-8")
                .with_header("Micro-Topic", TOPIC),
        )
        .await;
    let seen = harness.calls.next("the typed handler").await;
    assert_eq!(seen.user, user());
    assert!(!seen.type_verified, "no type header vouched for the type");
    harness.stop().await;
}

#[tokio::test]
async fn a_json_publisher_and_a_binary_one_feed_the_same_typed_subscriber() {
    let mut harness = Harness::start().await;
    let binary = harness.service.publisher::<UserCreated>(TOPIC);
    let json = binary.clone().json().expect("the descriptor is registered");
    json.publish(&user()).await.expect("publish JSON");
    let seen = harness.calls.next("the JSON event").await;
    assert_eq!(seen.user, user());
    assert!(seen.type_verified);
    assert_eq!(seen.content_type.as_deref(), Some("application/json"));

    binary.publish(&user()).await.expect("publish protobuf");
    let seen = harness.calls.next("the protobuf event").await;
    assert_eq!(seen.user, user());
    assert_eq!(seen.content_type.as_deref(), Some("application/protobuf"));
    harness.stop().await;
}

#[tokio::test]
async fn json_of_another_shape_is_dead_lettered_with_its_keys() {
    let mut harness = Harness::start().await;
    let body = r#"{"orderId":"o-1","userId":"u-1","totalCents":"240"}"#;
    harness
        .publish_raw(Message::new(body).with_header("content-type", "application/json"))
        .await;
    // the handler would have run before the message was dead-lettered
    let dead = harness
        .calls
        .assert_empty_after(
            "the typed handler must not see it",
            harness.dead_letters.next("the dead letter"),
        )
        .await;
    let header = |name: &str| dead.headers().get_str(name).unwrap_or_default().to_owned();
    assert_eq!(header(names::X_EVENT_ERROR_KIND), "decode-error");
    assert_eq!(header(names::X_EVENT_PAYLOAD_KIND), "json");
    assert_eq!(header(names::X_EVENT_ATTEMPTS), "1");
    let error = header(names::X_EVENT_ERROR);
    for fragment in [
        "payload is not the proto3 JSON of users.v1.UserCreated",
        r#"JSON object with keys ["orderId", "userId", "totalCents"]"#,
        r#"whose fields are ["userId", "email", "displayName"]"#,
        "orderId",
    ] {
        assert!(
            error.contains(fragment),
            "x-event-error lacks {fragment:?}:\n{error}"
        );
    }
    assert_eq!(dead.payload(), body.as_bytes(), "original payload kept");
    harness.stop().await;
}

#[tokio::test]
async fn json_keys_a_type_header_vouches_for_are_schema_drift() {
    let mut harness = Harness::start().await;
    harness
        .publish_raw(
            Message::new(r#"{"userId":"u-1","referralCode":"friends-2024"}"#)
                .with_header("ce_type", "users.v1.UserCreated")
                .with_header("content-type", "application/json"),
        )
        .await;
    let seen = harness.calls.next("the typed handler").await;
    assert_eq!(seen.user.user_id, "u-1");
    let group = harness.group.clone();
    harness.stop().await;
    let metrics = testkit::metrics::install();
    let of = [(label::GROUP, group.as_str())];
    assert_eq!(metrics.counter(metric::SCHEMA_DRIFT, &of), 1);
    assert_eq!(metrics.counter(metric::DECODE_ERRORS, &of), 0);
}

/// A type whose descriptor no one registers.
#[derive(Clone, PartialEq, prost::Message)]
struct AuditEntry {
    #[prost(string, tag = "1")]
    action: String,
}

impl prost::Name for AuditEntry {
    const NAME: &'static str = "AuditEntry";
    const PACKAGE: &'static str = "audit.v1";
}

#[tokio::test]
async fn json_of_a_type_without_a_registered_descriptor_is_dead_lettered_with_the_fix() {
    testkit::metrics::install();
    let broker = MemoryBroker::new();
    let (dlq_tx, mut dead_letters) = Collector::new(WAIT);
    let dlq = testkit::delivery_subscriber(&broker, "audit.dlq", dlq_tx).await;
    let (calls_tx, mut calls) = Collector::<AuditEntry>::new(WAIT);
    let service = Service::builder("json-test")
        .broker(broker.clone())
        .state(calls_tx)
        .subscribe(
            "audit",
            |entry: AuditEntry, State(calls): State<mpsc::UnboundedSender<AuditEntry>>| async move {
                let _ = calls.send(entry);
            },
        )
        .build()
        .expect("build")
        .start()
        .await
        .expect("start");
    broker
        .publish(
            "audit",
            Message::new(r#"{"action":"login"}"#).with_header("content-type", "application/json"),
        )
        .await
        .expect("raw publish");
    // the handler would have run before the message was dead-lettered
    let dead = calls
        .assert_empty_after(
            "the handler must not see it",
            dead_letters.next("the dead letter"),
        )
        .await;
    let headers = dead.headers();
    assert_eq!(
        headers.get_str(names::X_EVENT_ERROR_KIND),
        Some("unsupported-content-type")
    );
    let error = headers.get_str(names::X_EVENT_ERROR).unwrap_or_default();
    for fragment in [
        "nor as proto3 JSON without a registered descriptor of audit.v1.AuditEntry",
        "call event_core::codec::json::register_file_descriptor_set",
    ] {
        assert!(
            error.contains(fragment),
            "x-event-error lacks {fragment:?}:\n{error}"
        );
    }
    // and a publisher cannot be made to send it either
    assert!(service.publisher::<AuditEntry>("audit").json().is_err());
    let report = service.stop().await;
    assert!(!report.timed_out, "{report:?}");
    dlq.unsubscribe().await;
}
