//! go-micro's Kafka format (`wire=go-micro`, `KafkaBrokerBuilder::go_micro_envelope`) against
//! the real broker: what we publish is the JSON envelope go-micro's Kafka broker plugin reads,
//! and envelopes in the form that plugin writes arrive as typed events with their headers.
//! (The exchange with go-micro itself is in the interop tests.)

mod common;

use std::time::Duration;

use base64::Engine as _;
use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

use event_core::broker::Broker as _;
use event_core::testkit::{Collector, unique};
use event_core::{Context, Event, Publisher, Service, State};
use event_kafka::KafkaBroker;
use event_proto::users::v1::UserCreated;

const WAIT: Duration = Duration::from_secs(30);

fn user() -> UserCreated {
    UserCreated {
        user_id: "u-1".into(),
        email: "ada@example.com".into(),
        display_name: "Ada".into(),
    }
}

async fn envelope_broker() -> KafkaBroker {
    common::connected(common::builder(&common::bootstrap()).go_micro_envelope(true)).await
}

/// The records of `topic` (one partition), read from the start by a plain rdkafka consumer.
async fn raw_records(topic: &str, n: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", common::bootstrap())
        .set("group.id", unique("raw"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("raw consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut records = Vec::new();
    while records.len() < n {
        let record = tokio::time::timeout(WAIT, consumer.recv())
            .await
            .expect("a record in time")
            .expect("a record");
        records.push(record.detach());
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_publish_writes_the_envelope_go_micro_reads() {
    let broker = envelope_broker().await;
    let topic = unique("gomicro-out");
    common::create_topics_with(&broker, &[&topic], 1).await;
    let publisher: Publisher<UserCreated> = Publisher::new(
        std::sync::Arc::new(broker.clone()),
        "signup",
        topic.as_str(),
    );
    let ctx = Context::new()
        .with_metadata("tenant", "acme")
        .expect("metadata");
    let receipt = publisher
        .publish_with(&ctx, &user())
        .await
        .expect("publish");

    let records = raw_records(&topic, 1).await;
    let record = &records[0];
    assert!(
        record.headers().is_none(),
        "go-micro reads the value only: no record headers"
    );
    let envelope: serde_json::Value =
        serde_json::from_slice(record.payload().expect("a value")).expect("a JSON envelope");
    let header = envelope["Header"].as_object().expect("a Header object");
    assert_eq!(header["Content-Type"], "application/protobuf");
    assert_eq!(
        header["Micro-ID"].as_str(),
        receipt.message_id(),
        "our id is go-micro's"
    );
    assert_eq!(header["Micro-Topic"], topic.as_str());
    assert_eq!(header["tenant"], "acme", "metadata as go-micro metadata");
    assert_eq!(header["ce_type"], "users.v1.UserCreated");
    assert!(
        header.values().all(serde_json::Value::is_string),
        "{header:?}"
    );
    let body = base64::engine::general_purpose::STANDARD
        .decode(envelope["Body"].as_str().expect("a Body string"))
        .expect("standard base64");
    assert_eq!(UserCreated::decode(&body[..]).expect("protobuf"), user());
    broker.disconnect().await.expect("disconnect");
}

/// What the typed handler saw.
#[derive(Clone)]
struct Seen(tokio::sync::mpsc::UnboundedSender<(UserCreated, Option<String>, Option<String>)>);

async fn on_user(event: Event<UserCreated>, ctx: Context, State(seen): State<Seen>) {
    let id = event.id().map(str::to_owned);
    let tenant = ctx.metadata().get("tenant").map(str::to_owned);
    let _ = seen.0.send((event.into_message(), id, tenant));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_as_go_micro_writes_them_are_typed_events() {
    let broker = envelope_broker().await;
    let topic = unique("gomicro-in");
    common::create_topics_with(&broker, &[&topic], 1).await;
    let (seen_tx, mut seen) = Collector::new(WAIT);
    let service = Service::builder("gomicro-test")
        .broker(broker.clone())
        .state(Seen(seen_tx))
        .subscribe(topic.as_str(), on_user)
        .build()
        .expect("build")
        .start()
        .await
        .expect("start");

    // as go-micro's Kafka plugin writes them: no record headers, no key, keys of the header
    // map as go-micro spells them, the body in padded base64
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", common::bootstrap())
        .create()
        .expect("foreign producer");
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let protobuf = format!(
        r#"{{"Header":{{"Content-Type":"application/protobuf","Micro-ID":"go-1","Micro-Topic":"{topic}","Tenant":"acme"}},"Body":"{}"}}"#,
        b64(&user().encode_to_vec())
    );
    // go-micro's default content type: proto3 JSON
    event_core::codec::json::register_file_descriptor_set(event_proto::FILE_DESCRIPTOR_SET)
        .expect("the proto crate's descriptors");
    let json = format!(
        r#"{{"Header":{{"Content-Type":"application/json","Micro-ID":"go-2","Micro-Topic":"{topic}","Tenant":"acme"}},"Body":"{}"}}"#,
        b64(br#"{"userId":"u-1","email":"ada@example.com","displayName":"Ada"}"#)
    );
    for value in [&protobuf, &json] {
        producer
            .send(
                FutureRecord::<(), _>::to(&topic).payload(value.as_bytes()),
                WAIT,
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
    }
    for id in ["go-1", "go-2"] {
        let (got, got_id, tenant) = seen.next(id).await;
        assert_eq!(got, user(), "{id}");
        assert_eq!(got_id.as_deref(), Some(id), "Micro-ID is the message id");
        assert_eq!(tenant.as_deref(), Some("acme"), "go-micro metadata is ours");
    }
    let report = service.stop().await;
    assert!(!report.timed_out, "{report:?}");
}
