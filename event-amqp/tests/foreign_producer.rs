//! Messages from other AMQP producers, published with plain lapin:
//!
//! - without our headers (raw protobuf of another type, JSON, text): the typed subscriber's
//!   diagnosis dead-letters them at once with the right classification;
//! - exactly as go-micro's RabbitMQ broker publishes (exchange `micro`, routing key = topic,
//!   headers `Content-Type`/`Micro-ID`/`Micro-Topic` as long strings, raw protobuf body):
//!   consumed as a typed event;
//! - and the other way round: what our typed publisher sends in the `go-micro` wire profile
//!   (`wire=go-micro`) carries go-micro's headers as long strings, so a go-micro subscriber
//!   reads it as it is.

mod common;

use std::sync::Arc;
use std::time::Duration;

use event_amqp::AmqpBroker;
use event_core::broker::{Broker, Delivery, SubscribeOptions, Subscription};
use event_core::headers::names;
use event_core::testkit::{Collector, delivery_subscriber, is_marker, marker, unique};
use event_core::{Event, Publisher, RunningService, Service, State};
use event_proto::bench::v1::Tick;
use event_proto::users::v1::UserCreated;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use prost::Message as _;

const WAIT: Duration = Duration::from_secs(15);

use common::url;

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
    id: Option<String>,
    content_type: Option<String>,
}

#[derive(Clone)]
struct Calls(tokio::sync::mpsc::UnboundedSender<Seen>);

async fn on_user_created(event: Event<UserCreated>, State(calls): State<Calls>) {
    let seen = Seen {
        type_verified: event.type_verified(),
        id: event.id().map(str::to_owned),
        content_type: event.headers().content_type().map(str::to_owned),
        user: event.into_message(),
    };
    let _ = calls.0.send(seen);
}

/// The other client: a plain lapin connection.
struct Foreign {
    connection: Connection,
    channel: Channel,
}

impl Foreign {
    async fn connect() -> Foreign {
        let connection = Connection::connect(&url(), ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ must be running at 127.0.0.1:5672: {e}"));
        let channel = connection.create_channel().await.expect("channel");
        Foreign {
            connection,
            channel,
        }
    }

    async fn publish(&self, exchange: &str, topic: &str, body: &[u8], properties: BasicProperties) {
        self.channel
            .basic_publish(
                exchange.into(),
                topic.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .expect("publish");
    }

    async fn close(self) {
        let _ = self.connection.close(200, "done".into()).await;
    }
}

/// A typed `UserCreated` subscriber (queue group `mailer`) and a dead-letter collector.
struct Harness {
    broker: AmqpBroker,
    topic: String,
    service: RunningService,
    dlq_subscription: Subscription,
    dead_letters: Collector<Delivery>,
    calls: Collector<Seen>,
}

impl Harness {
    async fn start(exchange: &str, durable_exchange: bool) -> Harness {
        let broker = AmqpBroker::builder(&url())
            .exchange(exchange)
            .exchange_durable(durable_exchange)
            .queue_argument("x-expires", 600_000)
            .build()
            .expect("config");
        let broker = common::connected(broker).await;
        let topic = unique("users.created");
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
        // no handler runs once the service stopped
        let report = self
            .calls
            .assert_empty_after("handler calls after the test", self.service.stop())
            .await;
        assert!(!report.timed_out, "{report:?}");
        // the stopped service published its dead letters before stop returned: the dead-letter
        // subscriber, which takes its queue in order, gets them before a marker published now
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

/// Publishes `body` with plain lapin and checks the dead letter's diagnosis.
async fn expect_diagnosis(
    body: &[u8],
    properties: BasicProperties,
    error_kind: &str,
    payload_kind: &str,
    fragments: &[&str],
) {
    let mut harness = Harness::start("event.test.foreign", true).await;
    let foreign = Foreign::connect().await;
    foreign
        .publish("event.test.foreign", &harness.topic, body, properties)
        .await;
    // the handler would have run before the message was dead-lettered
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
            .is_some_and(|p| p.starts_with("delivery tag ")),
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
        error.contains(&format!("topic {:?}, delivery tag", harness.topic)),
        "{error}"
    );
    for fragment in fragments {
        assert!(
            error.contains(fragment),
            "x-event-error lacks {fragment:?}:\n{error}"
        );
    }
    assert_eq!(dead.payload().as_ref(), body, "original bytes kept");
    foreign.close().await;
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
        BasicProperties::default(),
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
async fn json_without_headers_is_diagnosed() {
    expect_diagnosis(
        br#"{"user_id":"u-1","email":"ada@example.com","display_name":"Ada"}"#,
        BasicProperties::default(),
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
async fn json_with_a_content_type_property_is_diagnosed() {
    // another AMQP client that says what it sends, in the content_type property
    expect_diagnosis(
        br#"{"userId":"u-1","email":"ada@example.com"}"#,
        BasicProperties::default().with_content_type("application/json".into()),
        "unsupported-content-type",
        "json",
        &["cannot decode content type application/json as protobuf"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_is_diagnosed() {
    expect_diagnosis(
        b"New user signed up: ada@example.com (display name Ada Lovelace)",
        BasicProperties::default(),
        "decode-error",
        "text",
        &[
            "text \"New user signed up: ada@example.com (dis…\"",
            "the producer sent plain text",
        ],
    )
    .await;
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes()))
}

/// go-micro's exchange, declared as go-micro declares it (topic, not durable).
const MICRO: &str = "micro";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_micro_message_is_consumed_as_a_typed_event() {
    let mut harness = Harness::start(MICRO, false).await;
    let foreign = Foreign::connect().await;
    // what go-micro's rabbitmq broker sends for client.Publish with the protobuf codec:
    // headers Content-Type, Micro-Topic, Micro-ID (all long strings), raw body, no properties
    let mut headers = FieldTable::default();
    headers.insert("Content-Type".into(), long("application/protobuf"));
    headers.insert("Micro-Topic".into(), long(&harness.topic));
    headers.insert(
        "Micro-ID".into(),
        long("9b5d0c4e-1f0a-4c55-8d0e-6f1b2a3c4d5e"),
    );
    headers.insert(
        "Traceparent".into(),
        long("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    foreign
        .publish(
            MICRO,
            &harness.topic,
            &user().encode_to_vec(),
            BasicProperties::default().with_headers(headers),
        )
        .await;
    let seen = harness.calls.next("the go-micro message").await;
    assert_eq!(seen.user, user());
    assert!(!seen.type_verified, "go-micro sends no type header");
    assert_eq!(
        seen.id.as_deref(),
        Some("9b5d0c4e-1f0a-4c55-8d0e-6f1b2a3c4d5e")
    );
    assert_eq!(seen.content_type.as_deref(), Some("application/protobuf"));
    foreign.close().await;
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_messages_carry_go_micro_headers() {
    // go-micro's exchange and headers, as a go-micro-facing service configures them
    let broker = AmqpBroker::builder(&common::url_with(
        "exchange=micro&exchange_durable=false&wire=go-micro",
    ))
    .build()
    .expect("config");
    broker.connect().await.expect("RabbitMQ must be running");
    let topic = unique("users.created");
    // a go-micro subscriber: its own queue bound to the topic on the micro exchange
    let foreign = Foreign::connect().await;
    let queue = foreign
        .channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare");
    foreign
        .channel
        .queue_bind(
            queue.name().clone(),
            MICRO.into(),
            topic.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    let mut consumer = foreign
        .channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let publisher =
        Publisher::<UserCreated>::new(Arc::new(broker.clone()), "signup", topic.as_str());
    let receipt = publisher.publish(&user()).await.expect("publish");
    let delivery = tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("delivered")
        .expect("consumer open")
        .expect("delivery");
    let table = delivery.properties.headers().clone().expect("headers");
    let text = |name: &str| common::long_string(&table, name);
    assert_eq!(text("Content-Type"), "application/protobuf");
    assert_eq!(text("Micro-Topic"), topic);
    assert_eq!(Some(text("Micro-ID").as_str()), receipt.message_id());
    let names: Vec<_> = table.inner().keys().map(|k| k.as_str()).collect();
    assert_eq!(
        names,
        ["Content-Type", "Micro-ID", "Micro-Topic"],
        "go-micro's headers; the other facts are in the properties"
    );
    let p = &delivery.properties;
    assert_eq!(
        p.content_type().as_ref().map(|s| s.as_str()),
        Some("application/protobuf")
    );
    assert_eq!(
        p.kind().as_ref().map(|s| s.as_str()),
        Some("users.v1.UserCreated")
    );
    assert_eq!(
        p.message_id().as_ref().map(|s| s.as_str()),
        receipt.message_id()
    );
    assert_eq!(p.app_id().as_ref().map(|s| s.as_str()), Some("signup"));
    assert_eq!(*p.delivery_mode(), Some(2));
    assert!(p.timestamp().is_some());
    assert_eq!(
        UserCreated::decode(&delivery.data[..]).expect("raw protobuf body"),
        user()
    );
    delivery.ack(BasicAckOptions::default()).await.expect("ack");
    foreign.close().await;
    broker.disconnect().await.expect("disconnect");
}
