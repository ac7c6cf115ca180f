//! The wire profiles through a real RabbitMQ: a typed message (with a trace context, metadata
//! and a key) is published in each profile (`wire=lean`, `go-micro`, `cloudevents`, both),
//! read raw with plain lapin, where its exact header table and properties are checked, and
//! consumed by our own subscriber, which gets the same facts and context whatever the profile.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use event_amqp::AmqpBroker;
use event_core::broker::Broker;
use event_core::context::TraceContext;
use event_core::headers::Headers;
use event_core::testkit::{Collector, delivery_subscriber, unique};
use event_core::{Context, Publisher};
use event_proto::users::v1::UserCreated;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};

const WAIT: Duration = Duration::from_secs(15);
const EXCHANGE: &str = "event.test.wire";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Each profile, and the header table it writes for the test's message, in name order.
const PROFILES: [(&str, &[&str]); 4] = [
    ("lean", &["tenant", "traceparent", "x-event-key"]),
    (
        "go-micro",
        &[
            "Content-Type",
            "Micro-ID",
            "Micro-Topic",
            "tenant",
            "traceparent",
            "x-event-key",
        ],
    ),
    (
        "cloudevents",
        &[
            "cloudEvents_id",
            "cloudEvents_source",
            "cloudEvents_specversion",
            "cloudEvents_time",
            "cloudEvents_type",
            "tenant",
            "traceparent",
            "x-event-key",
        ],
    ),
    (
        "go-micro,cloudevents",
        &[
            "Content-Type",
            "Micro-ID",
            "Micro-Topic",
            "cloudEvents_id",
            "cloudEvents_source",
            "cloudEvents_specversion",
            "cloudEvents_time",
            "cloudEvents_type",
            "tenant",
            "traceparent",
            "x-event-key",
        ],
    ),
];

fn seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_profile_writes_its_names_and_every_one_is_consumed_alike() {
    let connection = Connection::connect(&common::url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ must be running");
    let channel = connection.create_channel().await.expect("channel");
    let mut trace = Headers::default();
    trace.append("traceparent", TRACEPARENT);
    let mut context = Context::new()
        .with_metadata("tenant", "t-42")
        .expect("metadata");
    context.set_trace(TraceContext::from_headers(&trace));

    for (profile, header_names) in PROFILES {
        let broker = AmqpBroker::builder(&common::url_with(&format!(
            "exchange={EXCHANGE}&wire={profile}"
        )))
        .build()
        .expect("config");
        let broker = common::connected(broker).await;
        let topic = unique("users.created");
        // a raw reader: its own queue bound to the topic
        let queue = channel
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
        channel
            .queue_bind(
                queue.name().clone(),
                EXCHANGE.into(),
                topic.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
        let mut raw = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        // and our own subscriber
        let (tx, mut ours) = Collector::new(WAIT);
        let subscription = delivery_subscriber(&broker, &topic, tx).await;

        let publisher = Publisher::<UserCreated>::new(
            std::sync::Arc::new(broker.clone()),
            "signup",
            topic.as_str(),
        );
        let user = UserCreated {
            user_id: "u-1".into(),
            email: "ada@example.com".into(),
            display_name: "Ada".into(),
        };
        let message = publisher.encode(&user, Some(&context)).with_key("u-1");
        let sent = message.headers.clone();
        let id = sent.message_id().expect("an id").to_owned();
        let time = sent.time().expect("a time");
        broker.publish(&topic, message).await.expect("publish");

        let delivery = tokio::time::timeout(WAIT, raw.next())
            .await
            .expect("delivered")
            .expect("consumer open")
            .expect("delivery");
        let props = &delivery.properties;
        let table = props.headers().clone().expect("a header table");
        let names: Vec<_> = table.inner().keys().map(ShortString::as_str).collect();
        assert_eq!(names, header_names, "{profile}: the header table");
        let text = |name: &str| common::long_string(&table, name);
        assert_eq!(text("traceparent"), TRACEPARENT);
        assert_eq!(text("tenant"), "t-42");
        assert_eq!(text("x-event-key"), "u-1");
        if profile.contains("go-micro") {
            assert_eq!(text("Content-Type"), "application/protobuf");
            assert_eq!(text("Micro-ID"), id);
            assert_eq!(text("Micro-Topic"), topic);
        }
        let cloudevents = profile.contains("cloudevents");
        if cloudevents {
            assert_eq!(text("cloudEvents_id"), id);
            assert_eq!(text("cloudEvents_type"), "users.v1.UserCreated");
            assert_eq!(text("cloudEvents_source"), "signup");
            assert_eq!(text("cloudEvents_specversion"), "1.0");
            assert_eq!(
                Some(text("cloudEvents_time").as_str()),
                sent.get_str("ce_time"),
                "the full value"
            );
        }
        // every property, and no other
        let expected = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(id.as_str().into())
            .with_type("users.v1.UserCreated".into())
            .with_app_id("signup".into())
            .with_timestamp(seconds(time))
            .with_content_type("application/protobuf".into())
            // no correlation_id: it only repeats the message id of a chain's first message
            .with_headers(table.clone());
        assert_eq!(*props, expected, "{profile}: the properties");
        assert!(
            table
                .inner()
                .values()
                .all(|v| matches!(v, AMQPValue::LongString(_))),
            "{profile}: long strings"
        );
        delivery.ack(BasicAckOptions::default()).await.expect("ack");

        // our subscriber reads the same facts from every profile
        let got = ours.next("our delivery").await;
        let h = got.headers();
        assert_eq!(h.message_id(), Some(id.as_str()), "{profile}: {h:?}");
        assert_eq!(h.message_type(), Some("users.v1.UserCreated"), "{profile}");
        assert_eq!(h.source(), Some("signup"), "{profile}");
        assert_eq!(h.content_type(), Some("application/protobuf"), "{profile}");
        assert_eq!(got.message().key.as_deref(), Some(&b"u-1"[..]), "{profile}");
        assert_eq!(
            Context::from_headers(h),
            Context::from_headers(&sent),
            "{profile}: the context"
        );
        if cloudevents {
            assert_eq!(h.time(), Some(time), "{profile}: the full time");
            assert_eq!(h.get_str("ce_specversion"), Some("1.0"));
        } else {
            assert_eq!(h.time().map(seconds), Some(seconds(time)), "{profile}");
        }
        assert!(
            !h.contains("Micro-ID") && !h.contains("Micro-Topic"),
            "{h:?}"
        );
        assert_eq!(got.payload(), &prost::Message::encode_to_vec(&user));

        subscription.unsubscribe().await;
        broker.disconnect().await.expect("disconnect");
    }
    let _ = connection.close(200, "done".into()).await;
}
