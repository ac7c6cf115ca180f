//! Messages whose CloudEvents attributes travel as `ce-*` or `ce_*` headers, as some
//! CloudEvents SDKs write them on RabbitMQ, published with plain lapin: their id, type and
//! source are read, so the type is checked. A message of the right type is consumed as a
//! typed event with its id; one of another type is dead-lettered at once, its diagnosis naming
//! both types, and never reaches the handler.

mod common;

use std::time::Duration;

use event_amqp::AmqpBroker;
use event_core::broker::{Broker, Delivery, SubscribeOptions, Subscription};
use event_core::headers::names;
use event_core::testkit::{Collector, delivery_subscriber, is_marker, marker, unique};
use event_core::{Event, RunningService, Service, State};
use event_proto::shop::v1::OrderPlaced;
use event_proto::users::v1::UserCreated;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use prost::Message as _;

use common::url;

const WAIT: Duration = Duration::from_secs(15);
const EXCHANGE: &str = "event.test.cloudevents";

/// What the typed handler saw of one event.
#[derive(Debug)]
struct Seen {
    user: UserCreated,
    id: Option<String>,
    message_type: Option<String>,
    type_verified: bool,
    source: Option<String>,
}

#[derive(Clone)]
struct Calls(tokio::sync::mpsc::UnboundedSender<Seen>);

async fn on_user_created(event: Event<UserCreated>, State(calls): State<Calls>) {
    let seen = Seen {
        id: event.id().map(str::to_owned),
        message_type: event.message_type().map(str::to_owned),
        type_verified: event.type_verified(),
        source: event.source().map(str::to_owned),
        user: event.into_message(),
    };
    let _ = calls.0.send(seen);
}

/// A header table of long strings, each CloudEvents attribute under `prefix`.
fn cloudevents_headers(prefix: &str, id: &str, message_type: &str) -> FieldTable {
    let mut table = FieldTable::default();
    for (attribute, value) in [
        ("specversion", "1.0"),
        ("id", id),
        ("type", message_type),
        ("source", "spring-signup"),
        ("time", "2026-08-20T12:34:56.789Z"),
    ] {
        table.insert(
            format!("{prefix}{attribute}").as_str().into(),
            AMQPValue::LongString(LongString::from(value.as_bytes())),
        );
    }
    table
}

/// Publishes, with plain lapin, one message of the wrong type and one of the right type, both
/// with their attributes in `prefix` headers, to a typed `UserCreated` subscriber; checks
/// that the right one is handled with its id and the wrong one dead-lettered.
async fn wrong_type_is_dead_lettered_right_type_is_handled(prefix: &str) {
    let broker = AmqpBroker::builder(&url())
        .exchange(EXCHANGE)
        .queue_argument("x-expires", 600_000)
        .build()
        .expect("config");
    let broker = common::connected(broker).await;
    let topic = unique("users.created");
    let (dlq_tx, mut dead_letters) = Collector::<Delivery>::new(WAIT);
    let dlq_subscription: Subscription =
        delivery_subscriber(&broker, &format!("{topic}.dlq"), dlq_tx).await;
    let (calls_tx, mut calls) = Collector::new(WAIT);
    let service: RunningService = Service::builder("cloudevents-test")
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

    let connection = Connection::connect(&url(), ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ must be running at {}: {e}", url()));
    let channel = connection.create_channel().await.expect("channel");
    let publish = |body: Vec<u8>, headers: FieldTable| {
        let channel = channel.clone();
        let topic = topic.clone();
        async move {
            channel
                .basic_publish(
                    EXCHANGE.into(),
                    topic.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default()
                        .with_content_type("application/protobuf".into())
                        .with_headers(headers),
                )
                .await
                .expect("publish");
        }
    };

    let wrong_id = "0190f4c2-7b1e-7c3a-9d55-000000000001";
    let order = OrderPlaced {
        order_id: "o-1".into(),
        ..OrderPlaced::default()
    };
    publish(
        order.encode_to_vec(),
        cloudevents_headers(prefix, wrong_id, "shop.v1.OrderPlaced"),
    )
    .await;
    let right_id = "0190f4c2-7b1e-7c3a-9d55-000000000002";
    let user = UserCreated {
        user_id: "u-1".into(),
        email: "ada@example.com".into(),
        display_name: "Ada".into(),
    };
    publish(
        user.encode_to_vec(),
        cloudevents_headers(prefix, right_id, "users.v1.UserCreated"),
    )
    .await;

    let seen = calls.next("the message of the right type").await;
    assert_eq!(seen.user, user);
    assert_eq!(seen.id.as_deref(), Some(right_id), "{prefix}: {seen:?}");
    assert_eq!(seen.message_type.as_deref(), Some("users.v1.UserCreated"));
    assert!(seen.type_verified, "{prefix}: the type header was read");
    assert_eq!(seen.source.as_deref(), Some("spring-signup"));

    let dead = dead_letters.next("the message of the wrong type").await;
    let h = dead.headers();
    assert_eq!(
        h.get_str(names::X_EVENT_ERROR_KIND),
        Some("type-mismatch"),
        "{prefix}: {h:?}"
    );
    assert_eq!(
        h.get_str(names::X_EVENT_ATTEMPTS),
        Some("1"),
        "never retried"
    );
    assert_eq!(
        h.get_str(names::X_EVENT_ORIGINAL_TOPIC),
        Some(topic.as_str())
    );
    let error = h.get_str(names::X_EVENT_ERROR).unwrap_or_default();
    assert!(
        error.contains("users.v1.UserCreated") && error.contains("shop.v1.OrderPlaced"),
        "{prefix}: the diagnosis names both types: {error}"
    );
    assert!(
        error.contains(&format!("message id {wrong_id}")),
        "{prefix}: and the id: {error}"
    );
    assert_eq!(h.message_id(), Some(wrong_id), "{prefix}: {h:?}");
    assert_eq!(h.message_type(), Some("shop.v1.OrderPlaced"));
    assert_eq!(dead.payload().as_ref(), order.encode_to_vec(), "bytes kept");

    // no handler runs once the service stopped
    let report = calls
        .assert_empty_after("the handler sees only the right message", service.stop())
        .await;
    assert!(!report.timed_out, "{report:?}");
    // the stopped service published its dead letters before stop returned: the dead-letter
    // subscriber, which takes its queue in order, gets them before a marker published now
    broker
        .publish(&format!("{topic}.dlq"), marker())
        .await
        .expect("publish the marker");
    dead_letters
        .assert_empty_before("one dead letter", is_marker)
        .await;
    dlq_subscription.unsubscribe().await;
    let _ = connection.close(200, "done".into()).await;
    broker.disconnect().await.expect("disconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ce_dash_headers_are_read_and_type_checked() {
    wrong_type_is_dead_lettered_right_type_is_handled("ce-").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ce_underscore_headers_are_read_and_type_checked() {
    wrong_type_is_dead_lettered_right_type_is_handled("ce_").await;
}
