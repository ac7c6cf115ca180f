//! Kafka behaviour against the real broker: poison messages, foreign producers (rdkafka, and
//! sarama through the go-micro peer's `record`, for header names rdkafka cannot read),
//! shutdown with handlers in flight, a consumer joining mid-stream, missing topics, URL
//! selection. The peer is built by `interop/go-micro/build.sh` (`EVENT_GO_MICRO_PEER`, which
//! `scripts/test.sh` exports).

mod common;
#[path = "../../interop/go-micro/peer.rs"]
mod peer;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use tokio::sync::Semaphore;

use event_core::broker::{
    Broker, BrokerError, Delivery, Message, Outcome, SubscribeOptions, handler_fn,
};
use event_core::headers::names;
use event_core::testkit::{self, Collector, fast_retry, unique};
use event_core::{Event, Service, State};
use event_kafka::KafkaBroker;
use event_proto::bench::v1::Tick;
use event_proto::users::v1::UserCreated;
use rdkafka::producer::{FutureProducer, FutureRecord};

const WAIT: Duration = Duration::from_secs(30);

fn seq(d: &Delivery) -> u64 {
    std::str::from_utf8(d.payload())
        .expect("utf-8 payload")
        .parse()
        .expect("sequence payload")
}

async fn publish_keyed(broker: &KafkaBroker, topic: &str, range: std::ops::Range<u64>) {
    let sends: Vec<_> = range
        .map(|i| {
            broker.publish(
                topic,
                Message::new(i.to_string()).with_key(format!("key-{}", i % 7)),
            )
        })
        .collect();
    for (i, result) in futures_util::future::join_all(sends)
        .await
        .into_iter()
        .enumerate()
    {
        result.unwrap_or_else(|e| panic!("publish #{i}: {}", event_core::error_chain(&e)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_message_is_dead_lettered_and_the_partition_keeps_flowing() {
    let broker = common::connect().await;
    let topic = unique("poison");
    let dlq = format!("{topic}.dlq");
    common::create_topics(&broker, &[&topic, &dlq]).await;
    let (dlq_tx, mut dead) = Collector::new(WAIT);
    let dlq_sub = testkit::delivery_subscriber(&broker, &dlq, dlq_tx).await;

    let attempts = Arc::new(AtomicUsize::new(0));
    let (tx, mut handled) = Collector::new(WAIT);
    let sub = broker
        .subscribe(
            &topic,
            SubscribeOptions::new()
                .queue(unique("g"))
                .concurrency(3)
                .retry(fast_retry(4)),
            handler_fn("always-fails-on-poison", {
                let attempts = attempts.clone();
                move |d: Delivery| {
                    let tx = tx.clone();
                    let attempts = attempts.clone();
                    async move {
                        if d.payload() == "poison" {
                            attempts.fetch_add(1, Ordering::SeqCst);
                            return Outcome::retry(std::io::Error::other("cannot handle poison"));
                        }
                        let _ = tx.send(seq(&d));
                        Outcome::Ack
                    }
                }
            }),
        )
        .await
        .expect("subscribe");

    // the poison and 50 messages behind it, all with one key: one partition
    let receipt = broker
        .publish(&topic, Message::new("poison").with_key("same"))
        .await
        .expect("publish poison");
    for i in 0..50u64 {
        broker
            .publish(&topic, Message::new(i.to_string()).with_key("same"))
            .await
            .expect("publish");
    }
    let got = handled
        .until("messages behind the poison", |s| s.len() >= 50)
        .await;
    assert_eq!(
        got,
        (0..50).collect::<Vec<_>>(),
        "order within the partition"
    );

    let dead_letter = dead.next("dead letter").await;
    assert_eq!(dead_letter.payload(), "poison");
    let h = dead_letter.headers();
    assert_eq!(h.get_str(names::X_EVENT_ATTEMPTS), Some("4"));
    assert_eq!(h.get_str(names::X_EVENT_ERROR_KIND), Some("handler-error"));
    assert_eq!(
        h.get_str(names::X_EVENT_ORIGINAL_TOPIC),
        Some(topic.as_str())
    );
    assert_eq!(
        h.get_str(names::X_EVENT_ORIGINAL_POSITION),
        Some(receipt.position().to_string().as_str())
    );
    assert!(
        h.get_str(names::X_EVENT_ERROR)
            .is_some_and(|e| e.contains("cannot handle poison")),
        "{h:?}"
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 4);
    dead.assert_quiet("a second dead letter", Duration::from_millis(300))
        .await;
    sub.unsubscribe().await;
    dlq_sub.unsubscribe().await;
}

/// What the typed subscriber of the foreign-producer test saw.
#[derive(Clone)]
struct Seen(tokio::sync::mpsc::UnboundedSender<(UserCreated, bool)>);

async fn on_user(event: Event<UserCreated>, State(seen): State<Seen>) {
    let verified = event.type_verified();
    let _ = seen.0.send((event.into_message(), verified));
}

/// A started service of `on_user` on `topic`, in a consumer group of its own, and what it
/// handles (each event, and whether its type was verified).
async fn user_service(
    broker: &KafkaBroker,
    topic: &str,
) -> (event_core::RunningService, Collector<(UserCreated, bool)>) {
    let (seen_tx, seen) = Collector::new(WAIT);
    let service = Service::builder("foreign-test")
        .broker(broker.clone())
        .state(Seen(seen_tx))
        .subscribe_with(topic, SubscribeOptions::new().queue(unique("g")), on_user)
        .build()
        .expect("build")
        .start()
        .await
        .expect("start");
    (service, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_from_a_foreign_producer_reach_the_diagnosis() {
    let broker = common::connect().await;
    let topic = unique("foreign");
    let dlq = format!("{topic}.dlq");
    common::create_topics(&broker, &[&topic, &dlq]).await;
    let (dlq_tx, mut dead) = Collector::new(WAIT);
    let dlq_sub = testkit::delivery_subscriber(&broker, &dlq, dlq_tx).await;
    let (service, mut seen) = user_service(&broker, &topic).await;

    // another program: rdkafka used directly, no headers of ours
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", common::bootstrap())
        .create()
        .expect("foreign producer");
    let user = UserCreated {
        user_id: "u-1".into(),
        email: "ada@example.com".into(),
        ..Default::default()
    };
    let mut confluent = vec![0x00];
    confluent.extend(7u32.to_be_bytes());
    confluent.push(0x00);
    confluent.extend(user.encode_to_vec());
    let envelope = format!(
        r#"{{"Header":{{"Content-Type":"application/protobuf","Micro-Topic":"{topic}"}},"Body":"AAAA"}}"#
    );
    let tick = Tick {
        seq: 3,
        ..Default::default()
    }
    .encode_to_vec();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("protobuf", tick),
        (
            "json",
            br#"{"user_id":"u-1","email":"ada@example.com"}"#.to_vec(),
        ),
        ("confluent-framed", confluent),
        ("go-micro-envelope", envelope.into_bytes()),
    ];
    let mut positions = BTreeMap::new();
    for (kind, payload) in &cases {
        let report = producer
            .send(
                FutureRecord::to(&topic).key("foreign").payload(payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("foreign produce {kind}: {e}"));
        positions.insert(
            format!("partition {} offset {}", report.partition, report.offset),
            (*kind, Bytes::from(payload.clone())),
        );
    }
    // and one valid message, raw protobuf without headers: delivered, marked unverified
    producer
        .send(
            FutureRecord::to(&topic)
                .key("foreign")
                .payload(&user.encode_to_vec()),
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("foreign produce valid: {e}"));

    let letters = dead.until("four dead letters", |s| s.len() == 4).await;
    for letter in letters {
        let h = letter.headers();
        let position = h
            .get_str(names::X_EVENT_ORIGINAL_POSITION)
            .expect("original position header")
            .to_owned();
        let (kind, payload) = positions
            .remove(&position)
            .unwrap_or_else(|| panic!("dead letter for an unexpected position {position}"));
        assert_eq!(h.get_str(names::X_EVENT_PAYLOAD_KIND), Some(kind), "{h:?}");
        assert_eq!(
            h.get_str(names::X_EVENT_ERROR_KIND),
            Some("decode-error"),
            "{kind}"
        );
        assert_eq!(
            h.get_str(names::X_EVENT_ATTEMPTS),
            Some("1"),
            "{kind}: not retried"
        );
        assert_eq!(letter.payload(), &payload, "{kind}: bytes kept unchanged");
        let error = h.get_str(names::X_EVENT_ERROR).unwrap_or_default();
        assert!(
            error.contains(&topic) && error.contains("users.v1.UserCreated"),
            "{kind}: the error names topic and expected type: {error}"
        );
    }
    let (got, verified) = seen.next("the valid foreign message").await;
    assert_eq!(got, user);
    assert!(!verified, "no type header: the type is unverified");

    let report = service.stop().await;
    assert!(!report.timed_out, "{report:?}");
    dlq_sub.unsubscribe().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_handlers_in_flight_loses_nothing_and_the_group_resumes() {
    let broker = common::connect().await;
    let topic = unique("shutdown");
    let dlq = format!("{topic}.dlq");
    common::create_topics(&broker, &[&topic, &dlq]).await;
    let group = unique("g");
    let (dlq_tx, mut dead) = Collector::new(WAIT);
    let dlq_sub = testkit::delivery_subscriber(&broker, &dlq, dlq_tx).await;

    let gate = Arc::new(Semaphore::new(0));
    let (started_tx, mut started) = Collector::new(WAIT);
    let (done_tx, mut done) = Collector::new(WAIT);
    let first = broker
        .subscribe(
            &topic,
            SubscribeOptions::new()
                .queue(&group)
                .concurrency(3)
                .drain_timeout(WAIT),
            handler_fn("slow", {
                let gate = gate.clone();
                move |d: Delivery| {
                    let (started, done, gate) = (started_tx.clone(), done_tx.clone(), gate.clone());
                    async move {
                        let _ = started.send(seq(&d));
                        gate.acquire().await.expect("open").forget();
                        let _ = done.send(seq(&d));
                        Outcome::Ack
                    }
                }
            }),
        )
        .await
        .expect("subscribe");
    publish_keyed(&broker, &topic, 0..60).await;
    let in_flight = started.until("handlers in flight", |s| s.len() == 3).await;

    let mut drain = Box::pin(first.unsubscribe());
    assert!(
        futures_util::poll!(drain.as_mut()).is_pending(),
        "drain waits for handlers"
    );
    gate.add_permits(3);
    // no handler starts once unsubscribe returned
    let report = started
        .assert_empty_after("a handler started after unsubscribe", drain)
        .await;
    assert_eq!(report.completed, 3, "{report:?}");
    assert_eq!(report.abandoned, 0, "{report:?}");
    let finished: BTreeSet<u64> = done
        .until("drained", |s| s.len() == 3)
        .await
        .into_iter()
        .collect();
    assert_eq!(finished, in_flight.iter().copied().collect());

    // the next member of the group gets exactly the rest
    let (tx, mut rest) = Collector::new(WAIT);
    let second = broker
        .subscribe(
            &topic,
            SubscribeOptions::new().queue(&group).concurrency(3),
            handler_fn("rest", move |d: Delivery| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(seq(&d));
                    Outcome::Ack
                }
            }),
        )
        .await
        .expect("subscribe again");
    let got = rest.until("the rest", |s| s.len() >= 57).await;
    let got_set: BTreeSet<u64> = got.iter().copied().collect();
    let expected: BTreeSet<u64> = (0..60).filter(|i| !finished.contains(i)).collect();
    assert_eq!(
        got_set, expected,
        "resumes at the first unfinished offset of each partition"
    );
    assert_eq!(
        got.len(),
        57,
        "no redelivery of what the first member finished"
    );
    rest.assert_quiet("more deliveries", Duration::from_millis(300))
        .await;
    dead.assert_quiet(
        "dead letters caused by shutdown",
        Duration::from_millis(100),
    )
    .await;
    second.unsubscribe().await;
    dlq_sub.unsubscribe().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_joining_mid_stream_loses_nothing() {
    const TOTAL: u64 = 3000;
    let broker = common::connect().await;
    let topic = unique("rebalance");
    common::create_topics(&broker, &[&topic]).await;
    let group = unique("g");
    let (tx, mut handled) = Collector::new(Duration::from_secs(60));
    let subscribe = |member: usize| {
        let broker = broker.clone();
        let topic = topic.clone();
        let group = group.clone();
        let tx = tx.clone();
        async move {
            broker
                .subscribe(
                    &topic,
                    SubscribeOptions::new().queue(group).concurrency(3),
                    handler_fn("member", move |d: Delivery| {
                        let tx = tx.clone();
                        async move {
                            // some work per message, so that the join lands mid-stream
                            tokio::time::sleep(Duration::from_millis(1)).await;
                            let _ = tx.send((member, seq(&d)));
                            Outcome::Ack
                        }
                    }),
                )
                .await
                .expect("subscribe")
        }
    };
    let first = subscribe(0).await;
    let publisher = tokio::spawn({
        let broker = broker.clone();
        let topic = topic.clone();
        async move {
            for chunk in (0..TOTAL / 2).collect::<Vec<_>>().chunks(100) {
                publish_keyed(&broker, &topic, chunk[0]..chunk[chunk.len() - 1] + 1).await;
            }
        }
    });
    let before = handled
        .until("first member running", |s| s.len() >= 300)
        .await;
    // the second member joins while the first is still working through the first half
    let second = subscribe(1).await;
    publish_keyed(&broker, &topic, TOTAL / 2..TOTAL).await;
    let after = handled
        .until("everything", |s| {
            let mut all: BTreeSet<u64> = before.iter().map(|(_, s)| *s).collect();
            all.extend(s.iter().map(|(_, s)| *s));
            all.len() as u64 == TOTAL
        })
        .await;
    publisher.await.expect("publisher");
    let all: Vec<(usize, u64)> = before.into_iter().chain(after).collect();
    let distinct: BTreeSet<u64> = all.iter().map(|(_, s)| *s).collect();
    assert_eq!(distinct, (0..TOTAL).collect(), "every message handled");
    let duplicates = all.len() - distinct.len();
    println!(
        "rebalance: {} deliveries, {duplicates} duplicates",
        all.len()
    );
    assert!(
        duplicates <= 2 * 3,
        "duplicates are bounded by what was in flight at the rebalance: {duplicates}"
    );
    assert!(
        all.iter().any(|(m, _)| *m == 1),
        "the second member took over partitions"
    );
    first.unsubscribe().await;
    second.unsubscribe().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_a_clear_error_not_a_hang() {
    let broker = common::connect().await;
    let topic = unique("missing");
    let err = broker
        .publish(&topic, Message::new("x"))
        .await
        .expect_err("no such topic");
    assert!(
        matches!(err.broker_error(), BrokerError::TopicNotFound { .. }),
        "{err:?}"
    );
    assert_eq!(err.into_message().payload, "x", "the message is given back");
    let err = broker
        .subscribe(
            &topic,
            SubscribeOptions::new(),
            handler_fn("never", |_| async { Outcome::Ack }),
        )
        .await
        .expect_err("no such topic");
    let text = err.to_string();
    assert!(
        text.contains(&topic) && text.contains("ensure_topics"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_too_large_fails_and_gives_the_message_back() {
    let broker = common::connect().await;
    let topic = unique("large");
    common::create_topics(&broker, &[&topic]).await;
    let big = Bytes::from(vec![7u8; 2 * 1024 * 1024]);
    let err = broker
        .publish(&topic, Message::new(big.clone()).with_header("k", "v"))
        .await
        .expect_err("over message.max.bytes");
    let back = err.into_message();
    assert_eq!(back.payload, big);
    assert_eq!(back.headers.get_str("k"), Some("v"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_url_selects_this_backend() {
    // naming the crate keeps its URL scheme registration linked
    let _ = event_kafka::Acks::All;
    let url = format!(
        "kafka://{}?client_id=url-test&linger_ms=1",
        common::bootstrap()
    );
    let broker = event_core::broker::connect(&url).expect("kafka scheme registered");
    assert_eq!(broker.name(), "kafka");
    broker.connect().await.expect("connect");
    let topic = unique("url");
    common::create_topics(&common::connect().await, &[&topic]).await;
    let receipt = broker
        .publish(&topic, Message::new("hello"))
        .await
        .expect("publish");
    assert!(
        receipt.position().number() == 0 && receipt.position().partition().is_some(),
        "{receipt:?}"
    );
    broker.disconnect().await.expect("disconnect");
    let err = broker
        .publish(&topic, Message::new("late"))
        .await
        .expect_err("closed");
    assert!(
        matches!(err.broker_error(), BrokerError::Closed { .. }),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_is_enqueued_when_called_not_when_first_polled() {
    let broker = common::connect().await;
    let topic = unique("eager");
    common::create_topics(&broker, &[&topic]).await;
    let (tx, mut handled) = Collector::new(WAIT);
    let sub = testkit::delivery_subscriber(&broker, &topic, tx).await;
    let publisher: event_core::Publisher<Tick> =
        event_core::Publisher::new(Arc::new(broker.clone()), "eager-test", topic.as_str());
    let ticks: Vec<Tick> = (0..10)
        .map(|seq| Tick {
            seq,
            ..Default::default()
        })
        .collect();
    // create the publishes and hold them, unpolled
    let pending: Vec<_> = ticks.iter().map(|t| publisher.publish(t)).collect();
    let got = handled
        .until("records of unpolled publishes", |s| s.len() == 10)
        .await;
    let mut seqs: Vec<u64> = got
        .iter()
        .map(|d| Tick::decode(d.payload().clone()).expect("tick").seq)
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..10).collect::<Vec<_>>());
    for receipt in futures_util::future::join_all(pending).await {
        let receipt = receipt.expect("delivery report");
        assert!(receipt.position().partition().is_some(), "{receipt:?}");
    }
    sub.unsubscribe().await;
}

/// A Go service that writes records with sarama itself can give a header a name that is not
/// UTF-8, which rdkafka cannot read (it panics on one). Such a record is delivered with its
/// other headers, the unreadable ones named in `x-kafka-unreadable-headers`, and the typed
/// subscriber handles it; the consumer goes on with the next record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_header_whose_name_is_not_utf8_is_left_out_and_named() {
    let broker = common::connect().await;
    let topic = unique("users.created");
    let dlq = format!("{topic}.dlq");
    common::create_topics_with(&broker, &[&topic, &dlq], 1).await;
    let (dlq_tx, mut dead) = Collector::new(WAIT);
    let dlq_sub = testkit::delivery_subscriber(&broker, &dlq, dlq_tx).await;
    // the raw deliveries, headers and all, beside the typed subscriber
    let (raw_tx, mut raw) = Collector::new(WAIT);
    let raw_sub = testkit::delivery_subscriber(&broker, &topic, raw_tx).await;
    let (service, mut handled) = user_service(&broker, &topic).await;

    // after the peer's ce_type and content-type: "\xff\xfename" (not UTF-8), "tenant", and
    // "\xc3" (a UTF-8 sequence cut short)
    let mut peer = peer::Peer::spawn(&[
        "record",
        "--broker",
        "kafka",
        "--address",
        &common::bootstrap(),
        "--topic",
        &topic,
        "--header-hex",
        "fffe6e616d65=v",
        "--header-hex",
        "74656e616e74=acme",
        "--header-hex",
        "c3=w",
    ]);
    let recorded = peer.event("recorded").await;
    peer.exit().await;
    // the next record, a typed event of ours
    let next = UserCreated {
        user_id: "u-after".into(),
        ..Default::default()
    };
    event_core::Publisher::<UserCreated>::new(
        Arc::new(broker.clone()),
        "unreadable-headers-test",
        &topic,
    )
    .publish(&next)
    .await
    .expect("publish the next event");

    let delivery = raw.next("the record").await;
    assert_eq!(
        delivery.position().to_string(),
        format!(
            "partition {} offset {}",
            recorded["partition"], recorded["offset"]
        )
    );
    let names: Vec<&str> = delivery
        .headers()
        .iter()
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "ce_type",
            "content-type",
            "tenant",
            event_kafka::UNREADABLE_HEADERS
        ],
        "the readable headers, in order, then the places of the others"
    );
    let h = delivery.headers();
    assert_eq!(h.get_str("tenant"), Some("acme"));
    assert_eq!(h.get_str(event_kafka::UNREADABLE_HEADERS), Some("2,4"));

    let (got, verified) = handled.next("the record, typed").await;
    assert_eq!(got.user_id, "go-0");
    assert!(verified, "its ce_type header was read: {got:?}");
    assert_eq!(handled.next("the next event").await, (next, true));
    dead.assert_quiet("a dead letter", Duration::from_millis(300))
        .await;

    let report = service.stop().await;
    assert!(!report.timed_out, "{report:?}");
    raw_sub.unsubscribe().await;
    dlq_sub.unsubscribe().await;
    broker.disconnect().await.expect("disconnect");
}
