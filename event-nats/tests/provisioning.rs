//! Streams: made at subscribe and at publish when a topic is in no stream (the topic and its
//! dead-letter topic, with the configured storage and limits), one shared stream collecting
//! the topics, clear errors naming the setting when streams are not made, and a server
//! without JetStream named as such. Against the nats-server at `127.0.0.1:4222` (or
//! `EVENT_TEST_NATS`), and one of the test's own without JetStream.

mod common;
#[path = "common/server.rs"]
mod server;

use std::time::Duration;

use async_nats::jetstream::stream::StorageType;
use event_core::broker::{Broker, BrokerError, Message, SubscribeOptions};
use event_core::testkit::{Collector, delivery_subscriber, unique};
use event_nats::{Mode, NatsBroker, Storage};

const WAIT: Duration = Duration::from_secs(15);

fn js(client: async_nats::Client) -> async_nats::jetstream::Context {
    async_nats::jetstream::new(client)
}

/// A topic outside the suites' stream.
fn topic(prefix: &str) -> String {
    format!("prov.{prefix}.{}", uuid::Uuid::now_v7().simple())
}

async fn stream_info(
    js: &async_nats::jetstream::Context,
    name: &str,
) -> async_nats::jetstream::stream::Info {
    js.get_stream(name)
        .await
        .unwrap_or_else(|e| panic!("stream {name}: {e}"))
        .info()
        .await
        .expect("info")
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_makes_the_streams_of_the_topic_and_its_dead_letters() {
    let broker = common::connected(
        NatsBroker::builder(&format!(
            "{}?storage=memory&max_age_ms=60000",
            common::url()
        ))
        .build()
        .expect("config"),
    )
    .await;
    let topic = topic("sub");
    let (tx, mut rx) = Collector::new(WAIT);
    let sub = delivery_subscriber(&broker, &topic, tx).await;
    let js = js(common::raw_client().await);
    let own = broker.stream_name_for(&topic);
    let dead = broker.stream_name_for(&format!("{topic}.dlq"));
    assert_eq!(own, format!("EVENT_{}", topic.replace('.', "_")));
    let info = stream_info(&js, &own).await;
    assert_eq!(info.config.subjects, std::slice::from_ref(&topic));
    assert_eq!(info.config.storage, StorageType::Memory);
    assert_eq!(info.config.max_age, Duration::from_secs(60));
    let info = stream_info(&js, &dead).await;
    assert_eq!(info.config.subjects, [format!("{topic}.dlq")]);
    broker
        .publish(&topic, Message::new("kept"))
        .await
        .expect("publish");
    assert_eq!(rx.next("the message").await.payload(), "kept");
    sub.unsubscribe().await;
    broker.disconnect().await.expect("disconnect");
    for name in [own, dead] {
        js.delete_stream(&name).await.expect("delete the stream");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_makes_the_stream_of_a_new_topic() {
    let broker = common::connected(
        NatsBroker::builder(&common::url())
            .storage(Storage::Memory)
            .build()
            .expect("config"),
    )
    .await;
    let topic = topic("pub");
    let receipt = broker
        .publish(&topic, Message::new("first"))
        .await
        .expect("the publish makes the stream, then publishes");
    assert_eq!(receipt.position().to_string(), "stream sequence 1");
    let js = js(common::raw_client().await);
    let name = broker.stream_name_for(&topic);
    let info = stream_info(&js, &name).await;
    assert_eq!(info.state.messages, 1);
    js.delete_stream(&name).await.expect("delete the stream");
    broker.disconnect().await.expect("disconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_create_streams_a_topic_in_no_stream_is_an_error_naming_the_setting() {
    let broker = common::connected(
        NatsBroker::builder(&format!("{}?create_streams=false", common::url()))
            .build()
            .expect("config"),
    )
    .await;
    let topic = topic("none");
    let err = broker
        .publish(&topic, Message::new("x"))
        .await
        .expect_err("no stream holds the subject");
    let text = event_core::error_chain(&err);
    assert!(
        matches!(err.broker_error(), BrokerError::TopicNotFound { topic: t, .. } if *t == topic),
        "{text}"
    );
    assert!(text.contains("create_streams=true"), "{text}");
    assert_eq!(err.into_message().payload, "x", "the message is given back");

    // the topic is in a stream of the operator's, its dead-letter topic is not
    let js = js(common::raw_client().await);
    let name = format!("PROV_{}", uuid::Uuid::now_v7().simple());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![topic.clone()],
        storage: StorageType::Memory,
        ..Default::default()
    })
    .await
    .expect("make the operator's stream");
    let err = broker
        .subscribe(
            &topic,
            SubscribeOptions::new().queue("g"),
            event_core::broker::handler_fn("never", |_| async { event_core::broker::Outcome::Ack }),
        )
        .await
        .expect_err("the dead-letter topic is in no stream");
    let text = event_core::error_chain(&err);
    assert!(
        matches!(&err, BrokerError::TopicNotFound { topic: t, .. } if *t == format!("{topic}.dlq")),
        "{text}"
    );
    assert!(
        text.contains("dead-letter topic of the subscription to"),
        "{text}"
    );
    assert!(text.contains("create_streams=true"), "{text}");
    // the topic itself was found: publishing to it works
    broker
        .publish(&topic, Message::new("y"))
        .await
        .expect("the operator's stream holds the topic");
    js.delete_stream(&name).await.expect("delete the stream");
    broker.disconnect().await.expect("disconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shared_stream_collects_the_topics() {
    let name = format!("PROV_SHARED_{}", uuid::Uuid::now_v7().simple());
    let broker = common::connected(
        NatsBroker::builder(&format!("{}?stream={name}&storage=memory", common::url()))
            .build()
            .expect("config"),
    )
    .await;
    let (a, b) = (topic("a"), topic("b"));
    let (tx, mut rx) = Collector::new(WAIT);
    let sub_a = delivery_subscriber(&broker, &a, tx.clone()).await;
    let sub_b = delivery_subscriber(&broker, &b, tx).await;
    assert_eq!(broker.stream_name_for(&a), name);
    broker
        .publish(&a, Message::new("to a"))
        .await
        .expect("publish");
    broker
        .publish(&b, Message::new("to b"))
        .await
        .expect("publish");
    let got = rx.until("both", |d| d.len() == 2).await;
    assert_eq!(got.len(), 2);
    let js = js(common::raw_client().await);
    let mut subjects = stream_info(&js, &name).await.config.subjects;
    subjects.sort();
    let mut expected = vec![a.clone(), format!("{a}.dlq"), b.clone(), format!("{b}.dlq")];
    expected.sort();
    assert_eq!(subjects, expected);
    sub_a.unsubscribe().await;
    sub_b.unsubscribe().await;
    broker.disconnect().await.expect("disconnect");
    js.delete_stream(&name).await.expect("delete the stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_jetstream_is_named_and_core_mode_works_there() {
    let dir = std::env::temp_dir().join(unique("nats-nojs"));
    let server = tokio::task::block_in_place(|| server::NatsServer::start(&dir, false));
    let broker =
        common::connected(NatsBroker::builder(&server.url()).build().expect("config")).await;
    let err = broker
        .publish("no.jetstream", Message::new("x"))
        .await
        .expect_err("no JetStream");
    let text = event_core::error_chain(&err);
    assert!(text.contains("-js") && text.contains("mode=core"), "{text}");
    broker.disconnect().await.expect("disconnect");

    let core = common::connected(
        NatsBroker::builder(&server.url())
            .mode(Mode::Core)
            .build()
            .expect("config"),
    )
    .await;
    let (tx, mut rx) = Collector::new(WAIT);
    let sub = delivery_subscriber(&core, "no.jetstream", tx).await;
    core.publish("no.jetstream", Message::new("core"))
        .await
        .expect("publish");
    assert_eq!(rx.next("the core message").await.payload(), "core");
    sub.unsubscribe().await;
    core.disconnect().await.expect("disconnect");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
