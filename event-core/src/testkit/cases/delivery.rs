//! Delivery: every message arrives intact, on its own topic, after the one before it was
//! settled, in order per key, whoever publishes it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::broker::{Delivery, Message, Outcome, SubscribeOptions, handler_fn};
use crate::testkit::collect::{
    Gate, assert_all, delivery_subscriber, distinct_count, publish_seqs, seq_of, seq_subscriber,
};
use crate::testkit::{BrokerFactory, Collector, unique};

/// Publish 100 raw messages with headers and keys; a subscriber receives every one intact.
pub async fn publish_subscribe<F: BrokerFactory>(factory: &F) {
    let broker = factory.broker().await;
    let topic = unique("pubsub");
    factory.create_topic(&topic).await;
    let (tx, mut rx) = Collector::new(factory.timeout());
    let sub = delivery_subscriber(&*broker, &topic, tx).await;
    let run = uuid::Uuid::now_v7().to_string();
    for i in 0..100u64 {
        let message = Message::new(i.to_string())
            .with_header("test-run", run.as_str())
            .with_header("Mixed-Case", "kept")
            .with_key(format!("k{}", i % 7));
        broker.publish(&topic, message).await.expect("publish");
    }
    let got = rx
        .until("publish_subscribe", |d| {
            distinct_count(&d.iter().map(seq_of).collect::<Vec<_>>()) == 100
        })
        .await;
    for d in &got {
        assert_eq!(d.topic(), topic);
        assert_eq!(d.headers().get_str("TEST-RUN"), Some(run.as_str()));
        assert_eq!(d.headers().get_str("mixed-case"), Some("kept"));
        let seq = seq_of(d);
        assert_eq!(
            d.message().key.as_deref(),
            Some(format!("k{}", seq % 7).as_bytes()),
            "key of message {seq}"
        );
        assert!(d.attempt() >= 1);
    }
    assert_all(
        "publish_subscribe",
        &got.iter().map(seq_of).collect::<Vec<_>>(),
        0..100,
    );
    sub.unsubscribe().await;
}

/// Ten topics, each with its own subscriber: each receives exactly its own messages.
pub async fn many_topics<F: BrokerFactory>(factory: &F) {
    let broker = factory.broker().await;
    let mut cases = Vec::new();
    for t in 0..10 {
        let topic = unique(&format!("many{t}"));
        factory.create_topic(&topic).await;
        let (tx, rx) = Collector::new(factory.timeout());
        let sub = seq_subscriber(&broker, &topic, SubscribeOptions::new(), tx).await;
        cases.push((topic, rx, sub));
    }
    for (t, (topic, _, _)) in cases.iter().enumerate() {
        let base = t as u64 * 1000;
        publish_seqs(&broker, topic, base..base + 20).await;
    }
    for (t, (topic, mut rx, sub)) in cases.into_iter().enumerate() {
        let base = t as u64 * 1000;
        let got = rx.until(&topic, |s| distinct_count(s) == 20).await;
        assert_all(&topic, &got, base..base + 20);
        sub.unsubscribe().await;
    }
}

/// Twenty tasks publish concurrently on shared clients: nothing is lost.
pub async fn concurrent_publish<F: BrokerFactory>(factory: &F) {
    let broker = factory.broker().await;
    let topic = unique("pubconc");
    factory.create_topic(&topic).await;
    let (tx, mut rx) = Collector::new(factory.timeout());
    let sub = seq_subscriber(&broker, &topic, SubscribeOptions::new().concurrency(8), tx).await;
    let tasks: Vec<_> = (0..20u64)
        .map(|p| {
            let broker = broker.clone();
            let topic = topic.clone();
            tokio::spawn(async move { publish_seqs(&broker, &topic, p * 100..(p + 1) * 100).await })
        })
        .collect();
    for t in tasks {
        t.await.expect("publisher task");
    }
    let got = rx
        .until("concurrent_publish", |s| distinct_count(s) == 2000)
        .await;
    assert_all("concurrent_publish", &got, 0..2000);
    sub.unsubscribe().await;
}

/// A message to one topic never reaches another topic's subscriber.
pub async fn topic_isolation<F: BrokerFactory>(factory: &F) {
    let broker = factory.broker().await;
    let (a, b) = (unique("iso-a"), unique("iso-b"));
    factory.create_topic(&a).await;
    factory.create_topic(&b).await;
    let (tx_a, mut rx_a) = Collector::new(factory.timeout());
    let (tx_b, mut rx_b) = Collector::new(factory.timeout());
    let sub_a = seq_subscriber(&broker, &a, SubscribeOptions::new(), tx_a).await;
    let sub_b = seq_subscriber(&broker, &b, SubscribeOptions::new(), tx_b).await;
    publish_seqs(&broker, &a, 1..2).await;
    publish_seqs(&broker, &b, 2..3).await;
    assert_eq!(rx_a.next("topic a").await, 1);
    assert_eq!(rx_b.next("topic b").await, 2);
    // both subscriptions have now seen their topic's message; any cross-talk would have
    // been delivered before or right after it
    rx_a.assert_quiet("topic a after its message", Duration::from_millis(100))
        .await;
    rx_b.assert_quiet("topic b after its message", Duration::from_millis(100))
        .await;
    sub_a.unsubscribe().await;
    sub_b.unsubscribe().await;
}

/// With concurrency 1, the next message is not handed out before the current one is settled.
///
/// The handler holds whichever message comes first: on a broker with several partitions two
/// messages without a key may land on different ones, and either may be fetched first.
pub async fn ack_after_handler<F: BrokerFactory>(factory: &F) {
    let broker = factory.broker().await;
    let topic = unique("noack");
    factory.create_topic(&topic).await;
    let release = Gate::new();
    let first = Arc::new(AtomicBool::new(true));
    let (tx, mut rx) = Collector::new(factory.timeout());
    let sub = broker
        .subscribe(
            &topic,
            SubscribeOptions::new(),
            handler_fn("testkit-gated", {
                let release = release.clone();
                move |d: Delivery| {
                    let tx = tx.clone();
                    let release = release.clone();
                    let is_first = first.swap(false, Ordering::SeqCst);
                    async move {
                        let _ = tx.send(seq_of(&d));
                        if is_first {
                            release.wait().await;
                        }
                        Outcome::Ack
                    }
                }
            }),
        )
        .await
        .expect("subscribe");
    publish_seqs(&broker, &topic, 0..2).await;
    let held = rx.next("first message").await;
    assert!(held < 2, "only messages 0 and 1 were published, got {held}");
    rx.assert_quiet(
        "second message while the first is unsettled",
        Duration::from_millis(300),
    )
    .await;
    release.open(1);
    assert_eq!(rx.next("second message after ack").await, 1 - held);
    sub.unsubscribe().await;
}

/// Messages with the same key arrive in publish order (brokers that promise it).
pub async fn order_per_key<F: BrokerFactory>(factory: &F) {
    let broker = factory.broker().await;
    let topic = unique("order");
    factory.create_topic(&topic).await;
    let (tx, mut rx) = Collector::new(factory.timeout());
    let sub = broker
        .subscribe(
            &topic,
            SubscribeOptions::new(),
            handler_fn("testkit-order", move |d: Delivery| {
                let tx = tx.clone();
                async move {
                    let key =
                        String::from_utf8_lossy(d.message().key.as_deref().unwrap_or_default())
                            .into_owned();
                    let _ = tx.send((key, seq_of(&d)));
                    Outcome::Ack
                }
            }),
        )
        .await
        .expect("subscribe");
    for i in 0..200u64 {
        broker
            .publish(
                &topic,
                Message::new(i.to_string()).with_key(format!("key-{}", i % 4)),
            )
            .await
            .expect("publish");
    }
    let got = rx.until("order_per_key", |s| s.len() >= 200).await;
    let mut per_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (key, seq) in got {
        per_key.entry(key).or_default().push(seq);
    }
    for (key, seqs) in per_key {
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        sorted.dedup();
        let mut first_seen = seqs.clone();
        first_seen.dedup();
        assert!(
            first_seen.windows(2).all(|w| w[0] < w[1]),
            "messages of {key} out of order: {seqs:?}"
        );
    }
    sub.unsubscribe().await;
}
