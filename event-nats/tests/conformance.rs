//! The core conformance suite, run through `NatsBroker` on JetStream against the nats-server
//! at `127.0.0.1:4222` (or `EVENT_TEST_NATS`). Fails, never skips, when the server is missing.
//!
//! Every case uses unique subjects under `testkit.`, kept in the suites' memory stream
//! (`common::testkit_stream`), so the cases run in parallel on one server.

mod common;

use common::Factory;

event_core::conformance_suite!(nats, Factory);

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_core::broker::{Broker, Delivery, Message, Outcome, SubscribeOptions, handler_fn};
use event_core::testkit::{self, Collector};
use event_nats::NatsBroker;

/// `EVENT_BROKER=nats://...` selects this backend, with the query parameters applied; an
/// unknown parameter is an error that lists the known ones, without the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_url_selects_the_backend() {
    let broker = event_core::broker::connect(&format!(
        "{}?name=url-test&prefetch=4&ack_wait_ms=5000&create_streams=false",
        common::url()
    ))
    .expect("nats scheme registered");
    assert_eq!(broker.name(), "nats");
    assert_eq!(broker.messaging_system(), "nats");
    broker.connect().await.expect("connect");
    let capabilities = broker.capabilities();
    assert!(
        capabilities.persistent
            && capabilities.ordered_per_key
            && capabilities.replays_to_new_subscribers,
        "{capabilities:?}"
    );
    broker.disconnect().await.expect("disconnect");

    let err = event_core::broker::connect("nats://u:secret@127.0.0.1:4222?strem=x").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("unknown query parameter \"strem\""), "{text}");
    assert!(text.contains("known: mode, servers,"), "{text}");
    assert!(!text.contains("secret"), "{text}");
    let err = event_core::broker::connect("tls://127.0.0.1:4222?storage=disk").unwrap_err();
    assert!(err.to_string().contains("expected file or memory"), "{err}");
}

/// The receipt names the stream sequence JetStream stored the message at; the subscriber
/// sees the same position, and the key comes back from its header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receipt_is_the_stream_sequence() {
    let broker = Factory.broker_nats().await;
    let topic = testkit::unique("receipt");
    let (tx, mut rx) = Collector::new(Duration::from_secs(15));
    let sub = testkit::delivery_subscriber(&broker, &topic, tx).await;
    let first = broker
        .publish(&topic, Message::new("one").with_key("k-1"))
        .await
        .expect("publish");
    let second = broker
        .publish(&topic, Message::new("two"))
        .await
        .expect("publish");
    let text = first.position().to_string();
    assert!(text.starts_with("stream sequence "), "{text}");
    assert!(second.position().number() > first.position().number());
    let got = rx.next("the first message").await;
    assert_eq!(got.position(), first.position());
    assert_eq!(got.message().key.as_deref(), Some(&b"k-1"[..]));
    assert_eq!(got.attempt(), 1);
    assert_eq!(
        rx.next("the second message").await.position(),
        second.position()
    );
    sub.unsubscribe().await;
    broker.disconnect().await.expect("disconnect");
}

/// A message published again with its id (a retry after a lost PubAck, say) is kept once:
/// `Nats-Msg-Id` is the message id, and the second receipt names the first copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_published_twice_is_kept_once() {
    let broker = Factory.broker_nats().await;
    let topic = testkit::unique("dedup");
    let message = Message::new("once").with_header("ce_id", uuid::Uuid::now_v7().to_string());
    let first = broker
        .publish(&topic, message.clone())
        .await
        .expect("publish");
    let again = broker
        .publish(&topic, message)
        .await
        .expect("publish again");
    assert_eq!(
        first.position(),
        again.position(),
        "the duplicate was not stored"
    );
    let other = broker
        .publish(
            &topic,
            Message::new("other").with_header("ce_id", uuid::Uuid::now_v7().to_string()),
        )
        .await
        .expect("publish");
    assert!(other.position().number() > first.position().number());
    broker.disconnect().await.expect("disconnect");
}

/// A message without an id (a raw `Broker::publish`) is published with one of its own in
/// `Nats-Msg-Id`, so that a retry (the publisher's after a lost PubAck, or the caller's with
/// the message a failed publish gives back) is kept once as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_without_an_id_gets_one_for_deduplication() {
    let broker = Factory.broker_nats().await;
    let topic = testkit::unique("no-id");
    broker
        .publish(&topic, Message::new("no id"))
        .await
        .expect("publish");
    let js = async_nats::jetstream::new(common::raw_client().await);
    let stream = js
        .get_stream(common::TESTKIT_STREAM)
        .await
        .expect("the suites' stream");
    let stored = stream
        .get_last_raw_message_by_subject(&topic)
        .await
        .expect("the stored message");
    let id = stored
        .headers
        .get("Nats-Msg-Id")
        .map(|v| v.as_str().to_owned())
        .unwrap_or_else(|| panic!("no Nats-Msg-Id in {:?}", stored.headers));
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "a UUID: {id}");
    broker.disconnect().await.expect("disconnect");
}

impl Factory {
    async fn broker_nats(&self) -> NatsBroker {
        common::testkit_stream().await;
        common::connected(common::builder("event-nats extra").build().expect("config")).await
    }
}

/// Who handled each message, and at which attempt.
type Runs = HashMap<String, Vec<(&'static str, u32)>>;

/// Handlers slower than `AckWait`, and messages fetched ahead that wait longer than it: the
/// subscriber keeps them in progress (`+WPI`), so the server redelivers none of them to the
/// other member of the group, which would handle them a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_held_longer_than_ack_wait_are_not_redelivered() {
    const N: usize = 6;
    let ack_wait = Duration::from_millis(600);
    let broker = |name: &str| {
        common::builder(name)
            .ack_wait(ack_wait)
            .prefetch(3)
            .build()
            .expect("config")
    };
    common::testkit_stream().await;
    let slow = common::connected(broker("slow member")).await;
    let topic = testkit::unique("inprogress");
    let group = testkit::unique("g");
    let handled: Arc<Mutex<Runs>> = Arc::default();
    let done = Arc::new(tokio::sync::Notify::new());
    let member = |who: &'static str, hold: Duration| {
        let handled = handled.clone();
        let done = done.clone();
        handler_fn(who, move |d: Delivery| {
            let handled = handled.clone();
            let done = done.clone();
            async move {
                tokio::time::sleep(hold).await;
                let payload = String::from_utf8_lossy(d.payload()).into_owned();
                let mut handled = handled.lock().unwrap();
                handled.entry(payload).or_default().push((who, d.attempt()));
                if handled.len() == N {
                    done.notify_one();
                }
                Outcome::Ack
            }
        })
    };
    // each message takes 1.5 AckWait; the slow member fetches three at a time
    let slow_sub = slow
        .subscribe(
            &topic,
            SubscribeOptions::new().queue(&group),
            member("slow", ack_wait * 3 / 2),
        )
        .await
        .expect("subscribe");
    for i in 0..3 {
        slow.publish(&topic, Message::new(format!("m{i}")))
            .await
            .expect("publish");
    }
    // the other member joins once the server has handed the first three to the slow one
    let js = async_nats::jetstream::new(common::raw_client().await);
    let consumer_name = slow.group_consumer_name(&topic, &group);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
            .get_consumer_from_stream(&consumer_name, common::TESTKIT_STREAM)
            .await
            .expect("the group's consumer");
        if consumer
            .info()
            .await
            .expect("consumer info")
            .num_ack_pending
            == 3
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow member never held the first three messages"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let idle = common::connected(broker("idle member")).await;
    let idle_sub = idle
        .subscribe(
            &topic,
            SubscribeOptions::new().queue(&group),
            member("idle", Duration::ZERO),
        )
        .await
        .expect("subscribe");
    for i in 3..N {
        slow.publish(&topic, Message::new(format!("m{i}")))
            .await
            .expect("publish");
    }
    tokio::time::timeout(Duration::from_secs(30), done.notified())
        .await
        .expect("every message handled");
    // the server's own count: no message of the group was delivered a second time (a held
    // message whose AckWait ran out would be, to the idle member)
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream(&consumer_name, common::TESTKIT_STREAM)
        .await
        .expect("the group's consumer");
    let info = consumer.info().await.expect("consumer info");
    assert_eq!(info.num_redelivered, 0, "{info:?}");
    slow_sub.unsubscribe().await;
    idle_sub.unsubscribe().await;
    {
        let handled = handled.lock().unwrap();
        println!("handled: {handled:?}");
        for i in 0..3 {
            assert_eq!(
                handled[&format!("m{i}")],
                [("slow", 1)],
                "m{i} was held by the slow member for up to 4.5 AckWait: {handled:?}"
            );
        }
        for (message, runs) in handled.iter() {
            assert_eq!(runs.len(), 1, "{message} handled more than once: {runs:?}");
        }
    }
    slow.disconnect().await.expect("disconnect");
    idle.disconnect().await.expect("disconnect");
}

/// Handlers that finish out of order (concurrency 16, prefetch 64, uneven handler times):
/// every message is handled once, none is redelivered (`testkit::settle_out_of_order`), and
/// after unsubscribing the group's
/// consumer has nothing pending and nothing unacknowledged: every acknowledgement handed to
/// the client reached the server, and what was fetched ahead was given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_out_of_order_settle_every_message_once() {
    const N: usize = 3000;
    common::testkit_stream().await;
    let broker = common::connected(
        common::builder("acks")
            .prefetch(64)
            .build()
            .expect("config"),
    )
    .await;
    let topic = testkit::unique("acks");
    testkit::settle_out_of_order(&broker, &topic, "workers", N, Duration::from_secs(60)).await;

    let js = async_nats::jetstream::new(common::raw_client().await);
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream(
            broker.group_consumer_name(&topic, "workers"),
            common::TESTKIT_STREAM,
        )
        .await
        .expect("the group's consumer exists");
    let info = consumer.info().await.expect("consumer info");
    assert_eq!(
        (info.num_pending, info.num_ack_pending),
        (0, 0),
        "nothing left unacknowledged: {info:?}"
    );
    js.delete_consumer_from_stream(&info.name, common::TESTKIT_STREAM)
        .await
        .expect("delete the consumer");
    broker.disconnect().await.expect("disconnect");
}

/// proto3 JSON (go-micro's default content type), with and without a type header, is
/// consumed as a typed event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proto_json_is_a_typed_event() {
    event_core::codec::json::register_file_descriptor_set(event_proto::FILE_DESCRIPTOR_SET)
        .expect("the proto crate's descriptors");
    let expected = event_proto::users::v1::UserCreated {
        user_id: "u-1".into(),
        email: "ada@example.com".into(),
        display_name: "Ada".into(),
    };
    testkit::proto_json_is_typed(
        &Factory,
        r#"{"userId":"u-1","email":"ada@example.com","displayName":"Ada"}"#,
        expected,
    )
    .await;
}
