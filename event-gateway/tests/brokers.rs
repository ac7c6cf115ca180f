//! Typed events through the gateway on each broker: a Redis client (redis-py) publishes a
//! protobuf payload, a typed Rust `#[subscriber]` receives it as its message type with the
//! client's other fields as metadata; a typed Rust publisher publishes, a Redis client reads it
//! from a queue group with the type headers as fields. Over the in-memory broker, Apache Kafka,
//! RabbitMQ and NATS JetStream (the real brokers `scripts/brokers.sh` starts; a missing one
//! fails the test).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestGateway, blocking, config, py};
use event_core::broker::Broker;
use event_core::memory::MemoryBroker;
use event_core::{Context, Service, State, Topic, subscriber};
use event_gateway::TypedTopics;
use event_proto::users::v1::UserCreated;
use prost::Message as _;
use tokio::sync::mpsc;

/// The topic the Rust service subscribes to, typed in the gateway.
const INBOX: &str = "gateway.users";

/// What the service saw: the user and the `tenant` metadata.
#[derive(Clone)]
struct Seen(mpsc::UnboundedSender<(UserCreated, Option<String>)>);

#[subscriber(topic = "gateway.users", queue = "rust-service")]
async fn on_user(user: UserCreated, ctx: Context, State(seen): State<Seen>) {
    let _ = seen
        .0
        .send((user, ctx.metadata().get("tenant").map(str::to_owned)));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn run_id() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

fn typed(out_topic: &str) -> TypedTopics {
    TypedTopics::new()
        .add_descriptor_set(event_proto::FILE_DESCRIPTOR_SET)
        .expect("the event-proto descriptors")
        .topic(INBOX, "users.v1.UserCreated")
        .expect("a known type")
        .topic(out_topic, "users.v1.UserCreated")
        .expect("a known type")
}

/// Both directions over `broker`.
async fn both_ways(broker: Arc<dyn Broker>, out_topic: &str) {
    let run = run_id();
    let gw = TestGateway::start(broker.clone(), config().typed_topics(typed(out_topic))).await;
    let addr = gw.addr;

    // a Redis client publishes, the typed #[subscriber] receives
    let (seen, mut received) = mpsc::unbounded_channel();
    let service = Service::builder("gateway-test")
        .broker(broker.clone())
        .state(Seen(seen))
        .with_registered_subscribers()
        .build()
        .expect("a valid service")
        .start()
        .await
        .expect("the service starts");
    // a new group may start at the end of the topic only once it has its partitions: probes
    // go until one arrives, then the real message (what came before from other runs is skipped)
    let probe = |n: u32| UserCreated {
        user_id: format!("probe-{run}-{n}"),
        email: String::new(),
        ..Default::default()
    };
    let mut n = 0;
    'probing: loop {
        let bytes = hex(&probe(n).encode_to_vec());
        let reply = blocking(move || py(addr, 2, &["xadd-hex", INBOX, &bytes])).await;
        assert!(reply[0]["id"].is_string(), "{reply:?}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(Some((user, _))) = tokio::time::timeout_at(deadline, received.recv()).await {
            if user.user_id.starts_with(&format!("probe-{run}-")) {
                break 'probing;
            }
        }
        n += 1;
        assert!(n < 30, "no probe arrived in 60 s");
    }
    let user = UserCreated {
        user_id: format!("u-{run}"),
        email: "ada@example.com".to_owned(),
        display_name: "Ada".to_owned(),
    };
    let bytes = hex(&user.encode_to_vec());
    let reply = blocking(move || py(addr, 2, &["xadd-hex", INBOX, &bytes, "tenant=acme"])).await;
    assert!(reply[0]["id"].is_string(), "{reply:?}");
    let got = loop {
        let (got, tenant) = tokio::time::timeout(Duration::from_secs(30), received.recv())
            .await
            .expect("the subscriber receives it")
            .expect("open");
        if got.user_id == user.user_id {
            break (got, tenant);
        }
    };
    assert_eq!(got, (user, Some("acme".to_owned())));

    // a typed Rust publisher publishes, a Redis client reads it from a group
    let out = out_topic.to_owned();
    let created = blocking(move || py(addr, 2, &["xgroup", &out, "redis-readers", "0"])).await;
    assert_eq!(created[0]["created"], true, "{created:?}");
    let publisher = service.publisher(Topic::<UserCreated>::new(out_topic_static(out_topic)));
    let sent = UserCreated {
        user_id: format!("out-{run}"),
        email: "grace@example.com".to_owned(),
        display_name: "Grace".to_owned(),
    };
    publisher.publish(&sent).await.expect("published");
    let out = out_topic.to_owned();
    let read = blocking(move || {
        py(
            addr,
            2,
            &["xconsume", &out, "redis-readers", "r1", "1", "--hex"],
        )
    })
    .await;
    let fields = &read[0]["fields"];
    assert_eq!(fields["ce_type"], "users.v1.UserCreated", "{fields}");
    assert_eq!(fields["ce_source"], "gateway-test", "{fields}");
    assert!(fields["ce_id"].is_string(), "{fields}");
    let payload: Vec<u8> = (0..fields["payload"].as_str().unwrap().len() / 2)
        .map(|i| {
            u8::from_str_radix(&fields["payload"].as_str().unwrap()[2 * i..2 * i + 2], 16).unwrap()
        })
        .collect();
    assert_eq!(UserCreated::decode(payload.as_slice()).unwrap(), sent);

    let out = out_topic.to_owned();
    let pending = blocking(move || py(addr, 2, &["xpending", &out, "redis-readers"])).await;
    assert_eq!(pending[0]["count"], 0);
    gw.stop().await;
    service.shutdown().await;
}

/// `Topic::new` wants a `&'static str`: the test topics live for the test process.
fn out_topic_static(topic: &str) -> &'static str {
    Box::leak(topic.to_owned().into_boxed_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_both_ways_over_memory() {
    both_ways(Arc::new(MemoryBroker::new()), "gateway.out.memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_both_ways_over_kafka() {
    let servers = std::env::var("EVENT_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    let out = format!("gateway.out.{}", run_id());
    let kafka = event_kafka::KafkaBroker::builder(&servers)
        .client_id("event-gateway-tests")
        .linger(Duration::from_millis(1))
        .build()
        .expect("a valid configuration");
    kafka.connect().await.unwrap_or_else(|e| {
        panic!(
            "no Kafka at {servers} (scripts/brokers.sh start runs one): {}",
            event_core::error_chain(&e)
        )
    });
    let specs: Vec<_> = [INBOX, &format!("{INBOX}.dlq"), &out, &format!("{out}.dlq")]
        .iter()
        .map(|t| event_kafka::TopicSpec::new(*t))
        .collect();
    kafka.ensure_topics(&specs).await.expect("topics created");
    both_ways(Arc::new(kafka), &out).await;
}

/// The broker `env` names (else `default`), connected; fails the test with the reason when it
/// is not there.
async fn connected(env: &str, default: &str) -> Arc<dyn Broker> {
    let url = std::env::var(env).unwrap_or_else(|_| default.to_owned());
    let broker = event_core::broker::connect(&url).expect("a broker URL");
    broker.connect().await.unwrap_or_else(|e| {
        panic!(
            "no broker at {url} (scripts/brokers.sh start runs one): {}",
            event_core::error_chain(&e)
        )
    });
    broker
}

const AMQP: (&str, &str) = ("EVENT_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2f");
const NATS: (&str, &str) = ("EVENT_TEST_NATS", "nats://127.0.0.1:4222");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_both_ways_over_rabbitmq() {
    let broker = connected(AMQP.0, AMQP.1).await;
    both_ways(broker, &format!("gateway.out.{}", run_id())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_both_ways_over_nats() {
    let broker = connected(NATS.0, NATS.1).await;
    both_ways(broker, &format!("gateway.out.{}", run_id())).await;
}

/// A publish the broker refuses gets an error reply with the broker's reason, not silence:
/// RabbitMQ returns a mandatory message that no queue is bound for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_publish_gets_an_error_reply_with_the_reason() {
    let broker = connected(AMQP.0, AMQP.1).await;
    let gw = TestGateway::start(broker, config()).await;
    let addr = gw.addr;
    let topic = format!("gateway.nobody-listens.{}", run_id());
    let replies = blocking(move || {
        let published = py(addr, 2, &["publish-hex", &topic, "00"]);
        let added = py(addr, 2, &["xadd-hex", &topic, "00"]);
        (topic, published, added)
    })
    .await;
    let (topic, published, added) = replies;
    for reply in [&published[0], &added[0]] {
        let error = reply["error"]
            .as_str()
            .unwrap_or_else(|| panic!("an error reply: {reply}"));
        assert!(
            error.contains(&format!("publishing to \"{topic}\" failed")),
            "{error}"
        );
        assert!(
            error.contains("no queue is bound to this routing key"),
            "the broker's reason: {error}"
        );
    }
    gw.stop().await;
}
