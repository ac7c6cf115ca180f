//! Queue groups and broadcast: each message once per group, to every broadcast subscriber,
//! shared within a group, resumed by a group that comes back, replayed from the earliest.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::broker::{Delivery, Message, Outcome, SubscribeOptions, handler_fn};
use crate::testkit::collect::{
    Gate, assert_all, distinct_count, publish_seqs, seq_of, seq_subscriber,
};
use crate::testkit::{BrokerFactory, Collector, unique};

/// Ten concurrent publishers into a queue group of five members: every message is handled.
pub async fn concurrent_subscribe<F: BrokerFactory>(factory: &F) {
    let broker = factory.broker().await;
    let topic = unique("concurrent");
    let group = unique("group");
    factory.create_topic(&topic).await;
    let (tx, mut rx) = Collector::new(factory.timeout());
    let mut subs = Vec::new();
    for _ in 0..5 {
        subs.push(
            seq_subscriber(
                &broker,
                &topic,
                SubscribeOptions::new().queue(&group).concurrency(4),
                tx.clone(),
            )
            .await,
        );
    }
    let mut publishers = Vec::new();
    for p in 0..10u64 {
        let broker = broker.clone();
        let topic = topic.clone();
        publishers.push(tokio::spawn(async move {
            publish_seqs(&broker, &topic, p * 50..(p + 1) * 50).await;
        }));
    }
    for p in publishers {
        p.await.expect("publisher task");
    }
    let got = rx
        .until("concurrent_subscribe", |s| distinct_count(s) == 500)
        .await;
    assert_all("concurrent_subscribe", &got, 0..500);
    for s in subs {
        s.unsubscribe().await;
    }
}

/// Two queue groups each get every message; within a group each message is handled once.
pub async fn consumer_groups<F: BrokerFactory>(factory: &F) {
    let broker = factory.broker().await;
    let topic = unique("groups");
    factory.create_topic(&topic).await;
    let (ga, gb) = (unique("ga"), unique("gb"));
    let (tx_a, mut rx_a) = Collector::new(factory.timeout());
    let (tx_b, mut rx_b) = Collector::new(factory.timeout());
    let a1 = seq_subscriber(
        &broker,
        &topic,
        SubscribeOptions::new().queue(&ga),
        tx_a.clone(),
    )
    .await;
    let a2 = seq_subscriber(&broker, &topic, SubscribeOptions::new().queue(&ga), tx_a).await;
    let b1 = seq_subscriber(&broker, &topic, SubscribeOptions::new().queue(&gb), tx_b).await;
    publish_seqs(&broker, &topic, 0..50).await;
    let got_a = rx_a.until("group a", |s| distinct_count(s) == 50).await;
    let got_b = rx_b.until("group b", |s| distinct_count(s) == 50).await;
    assert_all("group a", &got_a, 0..50);
    assert_all("group b", &got_b, 0..50);
    a1.unsubscribe().await;
    a2.unsubscribe().await;
    b1.unsubscribe().await;
}

/// Within one queue group, members share the work: no message is handled twice, and with
/// two members both get some (each holds its first message until both hold one).
///
/// Messages carry distinct keys, so a broker that shares work by partition (Kafka) spreads
/// them over the members' partitions too.
pub async fn queue_group_splits<F: BrokerFactory>(factory: &F) {
    let broker = factory.broker().await;
    let topic = unique("split");
    factory.create_topic(&topic).await;
    let group = unique("g");
    let release = Gate::new();
    let (tx, mut rx) = Collector::new(factory.timeout());
    let mut subs = Vec::new();
    for member in 0..2usize {
        let tx = tx.clone();
        let release = release.clone();
        let first = Arc::new(AtomicBool::new(true));
        subs.push(
            broker
                .subscribe(
                    &topic,
                    SubscribeOptions::new().queue(&group),
                    handler_fn("testkit-member", move |d: Delivery| {
                        let tx = tx.clone();
                        let release = release.clone();
                        let first = first.swap(false, Ordering::SeqCst);
                        async move {
                            let _ = tx.send((member, seq_of(&d)));
                            if first {
                                // hold this member's first message until both members have one
                                release.wait().await;
                            }
                            Outcome::Ack
                        }
                    }),
                )
                .await
                .expect("subscribe"),
        );
    }
    let publish_keyed = |range: std::ops::Range<u64>| {
        let broker = broker.clone();
        let topic = topic.clone();
        async move {
            for i in range {
                broker
                    .publish(
                        &topic,
                        Message::new(i.to_string()).with_key(format!("split-{i}")),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("publish {i}: {}", crate::error_chain(&e)));
            }
        }
    };
    publish_keyed(0..16).await;
    let first = rx
        .until("both members busy", |s| {
            s.iter().map(|(m, _)| *m).collect::<BTreeSet<_>>().len() == 2
        })
        .await;
    release.open(2);
    publish_keyed(16..40).await;
    let rest = rx.until("rest", |s| s.len() + first.len() >= 40).await;
    let all: Vec<u64> = first.iter().chain(rest.iter()).map(|(_, s)| *s).collect();
    assert_eq!(
        all.len(),
        distinct_count(&all),
        "a message was handled twice in one group"
    );
    assert_all("queue_group_splits", &all, 0..40);
    for s in subs {
        s.unsubscribe().await;
    }
}

/// Without a queue, every subscriber gets every message.
pub async fn broadcast<F: BrokerFactory>(factory: &F) {
    let broker = factory.broker().await;
    let topic = unique("broadcast");
    factory.create_topic(&topic).await;
    let (tx1, mut rx1) = Collector::new(factory.timeout());
    let (tx2, mut rx2) = Collector::new(factory.timeout());
    let s1 = seq_subscriber(&broker, &topic, SubscribeOptions::new(), tx1).await;
    let s2 = seq_subscriber(&broker, &topic, SubscribeOptions::new(), tx2).await;
    publish_seqs(&broker, &topic, 0..30).await;
    assert_all(
        "broadcast 1",
        &rx1.until("broadcast 1", |s| distinct_count(s) == 30).await,
        0..30,
    );
    assert_all(
        "broadcast 2",
        &rx2.until("broadcast 2", |s| distinct_count(s) == 30).await,
        0..30,
    );
    s1.unsubscribe().await;
    s2.unsubscribe().await;
}

/// A queue group that stops and comes back resumes where it left off: it gets what was
/// published meanwhile and nothing it had already handled (brokers with persistence).
pub async fn group_resumes<F: BrokerFactory>(factory: &F) {
    let broker = factory.broker().await;
    let topic = unique("resume");
    factory.create_topic(&topic).await;
    let group = unique("g");
    let (tx, mut rx) = Collector::new(factory.timeout());
    let sub = seq_subscriber(&broker, &topic, SubscribeOptions::new().queue(&group), tx).await;
    publish_seqs(&broker, &topic, 0..10).await;
    let got = rx.until("first run", |s| distinct_count(s) == 10).await;
    assert_all("first run", &got, 0..10);
    let report = sub.unsubscribe().await;
    assert_eq!(report.abandoned, 0, "{report:?}");

    publish_seqs(&broker, &topic, 10..20).await;
    let (tx, mut rx) = Collector::new(factory.timeout());
    let sub = seq_subscriber(&broker, &topic, SubscribeOptions::new().queue(&group), tx).await;
    let got = rx.until("second run", |s| distinct_count(s) == 10).await;
    assert_all(
        "second run: what was published while the group was away",
        &got,
        10..20,
    );
    rx.assert_quiet(
        "second run: redelivery of handled messages",
        Duration::from_millis(200),
    )
    .await;
    sub.unsubscribe().await;
}

/// A new broadcast subscriber told to start from the earliest message replays what was
/// published before it; one starting from the latest sees only what comes after it
/// (brokers that keep messages).
pub async fn replays_from_earliest<F: BrokerFactory>(factory: &F) {
    let broker = factory.broker().await;
    let topic = unique("replay");
    factory.create_topic(&topic).await;
    publish_seqs(&broker, &topic, 0..10).await;
    let (tx_early, mut early) = Collector::new(factory.timeout());
    let (tx_late, mut late) = Collector::new(factory.timeout());
    let replay = seq_subscriber(
        &broker,
        &topic,
        SubscribeOptions::new().start_from(crate::broker::StartFrom::Earliest),
        tx_early,
    )
    .await;
    let latest = seq_subscriber(&broker, &topic, SubscribeOptions::new(), tx_late).await;
    publish_seqs(&broker, &topic, 10..15).await;
    let got = early.until("replay", |s| distinct_count(s) == 15).await;
    assert_all("subscriber from earliest", &got, 0..15);
    let got = late.until("latest", |s| distinct_count(s) == 5).await;
    assert_all("subscriber from latest", &got, 10..15);
    replay.unsubscribe().await;
    latest.unsubscribe().await;
}
