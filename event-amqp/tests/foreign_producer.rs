//! Messages from other AMQP producers, published with plain lapin (and pika):
//!
//! - without our headers (raw protobuf of another type, JSON, text): the typed subscriber's
//!   diagnosis dead-letters them at once with the right classification;
//! - exactly as go-micro's RabbitMQ broker publishes (exchange `micro`, routing key = topic,
//!   headers `Content-Type`/`Micro-ID`/`Micro-Topic` as long strings, raw protobuf body):
//!   consumed as a typed event;
//! - and the other way round: what our typed publisher sends in the `go-micro` wire profile
//!   (`wire=go-micro`) carries go-micro's headers as long strings, so a go-micro subscriber
//!   reads it as it is;
//! - a message lapin cannot parse (a header name that is not UTF-8, published with pika):
//!   the connections lapin closes on it are made again with a growing pause, and a quorum
//!   queue with a delivery limit moves the message to the dead-letter queue.

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

/// Publishes, with pika, a message whose header name is not UTF-8 (pika sends a name as the
/// bytes it is given; lapin cannot parse it).
fn publish_unparsable(url: &str, exchange: &str, topic: &str) {
    let python = std::env::var("EVENT_TEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "EVENT_TEST_PYTHON is not set: scripts/brokers.sh env exports it (scripts/test.sh does)"
        )
    });
    let script = format!(
        r#"
import pika
connection = pika.BlockingConnection(pika.URLParameters("{url}"))
channel = connection.channel()
channel.confirm_delivery()
channel.basic_publish("{exchange}", "{topic}", b"body",
    pika.BasicProperties(headers={{b"\xff\xfename": "v"}}))
connection.close()
"#
    );
    let status = std::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .status()
        .unwrap_or_else(|e| panic!("run {python}: {e}"));
    assert!(status.success(), "pika could not publish the message");
}

/// RabbitMQ's address in `url`, `host:port`.
fn address(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest)
}

/// A TCP proxy to RabbitMQ on a port of its own; reports the time of each connection it
/// accepts.
async fn counting_proxy(
    upstream: String,
) -> (
    u16,
    tokio::sync::mpsc::UnboundedReceiver<std::time::Instant>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the proxy");
    let port = listener.local_addr().expect("proxy address").port();
    let (tx, accepted) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let _ = tx.send(std::time::Instant::now());
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (port, accepted)
}

/// A message lapin cannot parse (here, a header name that is not UTF-8, which pika sends as
/// it is given) makes lapin close the connection, and RabbitMQ puts the message back, so
/// each new connection meets it again. The connections are made with a growing pause
/// between them, not back to back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_lapin_cannot_parse_does_not_make_the_connection_spin() {
    let url = url();
    let (port, mut accepted) = counting_proxy(address(&url).to_owned()).await;
    let through_proxy = url.replacen(address(&url), &format!("127.0.0.1:{port}"), 1);
    let exchange = "event.test.foreign";
    let min = Duration::from_millis(100);
    let broker = AmqpBroker::builder(&through_proxy)
        .exchange(exchange)
        .queue_argument("x-expires", 600_000)
        .reconnect_backoff(min, Duration::from_secs(2))
        .build()
        .expect("config");
    let broker = common::connected(broker).await;
    let topic = unique("users.created");
    let group = "mailer";
    let subscription = broker
        .subscribe(
            &topic,
            SubscribeOptions::new().queue(group),
            event_core::broker::handler_fn("never-reached", |_d: Delivery| async {
                event_core::broker::Outcome::Ack
            }),
        )
        .await
        .expect("subscribe");
    let first = accepted.recv().await.expect("the first connection");

    publish_unparsable(&url, exchange, &topic);

    // the connection that received it is lost; the next ones wait 100, 200, 400, 800 ms
    let mut times = vec![first];
    for n in 1..=5 {
        let next = tokio::time::timeout(Duration::from_secs(30), accepted.recv())
            .await
            .unwrap_or_else(|_| panic!("connection #{n} was not made in 30 s"))
            .expect("the proxy runs");
        times.push(next);
    }
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // the first gap is the subscription's life before the message came
    for (i, gap) in gaps[1..].iter().enumerate() {
        let delay = min * 2u32.pow(u32::try_from(i).expect("few"));
        assert!(
            *gap >= delay.mul_f64(0.9),
            "reconnect #{} came {gap:?} after the one before, not after the backoff of {delay:?} (all gaps: {gaps:?})",
            i + 2
        );
    }

    // the message stays at the head of its queue: delete the queue with it
    subscription.unsubscribe().await;
    broker.disconnect().await.expect("disconnect");
    let foreign = Foreign::connect().await;
    foreign
        .channel
        .queue_delete(
            format!("{topic}.{group}").as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .expect("delete the queue");
    foreign.close().await;
}

/// The way past such a message that RabbitMQ offers: a quorum queue with a delivery limit
/// and a dead-letter exchange moves it to the subscription's dead-letter queue once it was
/// delivered that many times, and the subscription goes on with the next message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_with_a_delivery_limit_moves_such_a_message_aside() {
    let exchange = "event.test.foreign";
    let topic = unique("users.created");
    let group = "mailer";
    let broker = AmqpBroker::builder(&url())
        .exchange(exchange)
        .queue_argument("x-queue-type", "quorum")
        .queue_argument("x-delivery-limit", 2)
        .queue_argument("x-dead-letter-exchange", exchange)
        .queue_argument("x-dead-letter-routing-key", format!("{topic}.dlq"))
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200))
        .build()
        .expect("config");
    let broker = common::connected(broker).await;
    let (tx, mut handled) = Collector::new(Duration::from_secs(60));
    let subscription = broker
        .subscribe(
            &topic,
            SubscribeOptions::new().queue(group),
            event_core::broker::handler_fn("collect", move |d: Delivery| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(d.payload().clone());
                    event_core::broker::Outcome::Ack
                }
            }),
        )
        .await
        .expect("subscribe");
    let foreign = Foreign::connect().await;
    publish_unparsable(&url(), exchange, &topic);
    foreign
        .publish(exchange, &topic, b"after", BasicProperties::default())
        .await;
    let first = handled.next("the message after it").await;
    assert_eq!(&first[..], b"after", "the first message handled");
    // the subscription's dead-letter queue, `<topic>.dlq`, keeps it (a subscriber of the
    // dead-letter topic would meet the same message); it counts it once its process has
    // it: asked until then
    let parked = format!("{topic}.dlq");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let kept = foreign
            .channel
            .queue_declare(
                parked.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("the dead-letter queue");
        if kept.message_count() == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the message did not reach the dead-letter queue in {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    subscription.unsubscribe().await;
    broker.disconnect().await.expect("disconnect");
    for queue in [format!("{topic}.{group}"), parked] {
        foreign
            .channel
            .queue_delete(
                queue.as_str().into(),
                lapin::options::QueueDeleteOptions::default(),
            )
            .await
            .expect("delete the queue");
    }
    foreign.close().await;
}
