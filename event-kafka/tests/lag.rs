//! The consumer lag gauge (`event_consumer_lag`) against the real broker: it counts the
//! messages of a partition not finished yet, for a queue group and for a broadcast reader, and
//! drops to 0 when the subscription stops.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use event_core::broker::{Broker, Delivery, Message, Outcome, StartFrom, SubscribeOptions};
use event_core::broker::{Subscription, handler_fn};
use event_core::telemetry::{label, metric};
use event_core::testkit::{self, unique};
use event_kafka::{KafkaBroker, TopicSpec};
use tokio::sync::Semaphore;

const MESSAGES: usize = 20;
const DEADLINE: Duration = Duration::from_secs(20);
const STATISTICS: Duration = Duration::from_millis(100);

/// Every lag gauge of `topic`: (labels, value). The testkit's recorder reads values without
/// resetting them (`DebuggingRecorder` would zero a gauge on every snapshot, so a lag of 0
/// would not tell a drained partition from a value already read once).
fn lag_gauges(topic: &str) -> Vec<(Vec<(String, String)>, f64)> {
    testkit::metrics::install().gauges(metric::CONSUMER_LAG, &[(label::TOPIC, topic)])
}

/// Waits until the lag gauge of `topic` (one partition) is `expected`; checks its labels.
async fn wait_for_lag(topic: &str, group: &str, expected: f64) -> Vec<f64> {
    let wanted_labels = {
        let mut labels = vec![
            (label::BACKEND.to_owned(), "kafka".to_owned()),
            (label::GROUP.to_owned(), group.to_owned()),
            (label::PARTITION.to_owned(), "0".to_owned()),
            (label::TOPIC.to_owned(), topic.to_owned()),
        ];
        labels.sort();
        labels
    };
    let deadline = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    loop {
        let gauges = lag_gauges(topic);
        assert!(gauges.len() <= 1, "one gauge per partition: {gauges:?}");
        if let Some((labels, value)) = gauges.into_iter().next() {
            assert_eq!(labels, wanted_labels);
            if seen.last() != Some(&value) {
                seen.push(value);
            }
            if value == expected {
                return seen;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the lag of {topic} did not reach {expected} within {DEADLINE:?}; values seen: {seen:?}"
        );
        // the value is published by librdkafka's statistics reports, every STATISTICS
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A connected client that reports statistics every [`STATISTICS`].
async fn connect() -> KafkaBroker {
    // before any broker is built: instruments bind to the recorder installed when made
    testkit::metrics::install();
    common::connected(common::builder(&common::bootstrap()).statistics_interval(STATISTICS)).await
}

/// A one-partition topic holding [`MESSAGES`] messages (and its dead-letter topic).
async fn topic_with_messages(broker: &KafkaBroker, prefix: &str) -> String {
    let topic = unique(prefix);
    broker
        .ensure_topics(&[
            TopicSpec::new(&topic).partitions(1),
            TopicSpec::new(format!("{topic}.dlq")),
        ])
        .await
        .unwrap_or_else(|e| panic!("create {topic}: {}", event_core::error_chain(&e)));
    let sends: Vec<_> = (0..MESSAGES)
        .map(|i| broker.publish(&topic, Message::new(i.to_string())))
        .collect();
    for result in futures_util::future::join_all(sends).await {
        result.unwrap_or_else(|e| panic!("publish: {}", event_core::error_chain(&e)));
    }
    topic
}

/// Subscribes from the earliest offset with a handler that finishes one message per permit of
/// the returned gate (and every message once the gate is closed).
async fn gated_subscription(
    broker: &KafkaBroker,
    topic: &str,
    options: SubscribeOptions,
) -> (Subscription, Arc<Semaphore>, Arc<AtomicUsize>) {
    let gate = Arc::new(Semaphore::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let subscription = broker
        .subscribe(
            topic,
            options.start_from(StartFrom::Earliest),
            handler_fn("gated", {
                let gate = gate.clone();
                let finished = finished.clone();
                move |_: Delivery| {
                    let gate = gate.clone();
                    let finished = finished.clone();
                    async move {
                        if let Ok(permit) = gate.acquire().await {
                            permit.forget();
                        }
                        finished.fetch_add(1, Ordering::SeqCst);
                        Outcome::Ack
                    }
                }
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("subscribe: {}", event_core::error_chain(&e)));
    (subscription, gate, finished)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_group_lag_counts_the_messages_not_finished() {
    let broker = connect().await;
    let topic = topic_with_messages(&broker, "lag").await;
    let group = unique("lag-group");
    let (subscription, gate, finished) =
        gated_subscription(&broker, &topic, SubscribeOptions::new().queue(&group)).await;

    // the first message is in the handler, unfinished: all 20 count
    let seen = wait_for_lag(&topic, &group, MESSAGES as f64).await;
    eprintln!("{topic}: lag values seen while the handler is blocked: {seen:?}");
    assert_eq!(finished.load(Ordering::SeqCst), 0);

    gate.add_permits(5);
    let seen = wait_for_lag(&topic, &group, (MESSAGES - 5) as f64).await;
    eprintln!("{topic}: after 5 finished: {seen:?}");

    gate.add_permits(MESSAGES);
    let seen = wait_for_lag(&topic, &group, 0.0).await;
    eprintln!("{topic}: after all finished: {seen:?}");
    assert_eq!(finished.load(Ordering::SeqCst), MESSAGES);

    subscription.unsubscribe().await;
    broker.disconnect().await.expect("disconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_lag_has_an_empty_group_and_drops_to_zero_on_unsubscribe() {
    let broker = connect().await;
    let topic = topic_with_messages(&broker, "lag-broadcast").await;
    let (subscription, gate, finished) = gated_subscription(
        &broker,
        &topic,
        SubscribeOptions::new().drain_timeout(Duration::from_millis(500)),
    )
    .await;

    let seen = wait_for_lag(&topic, "", MESSAGES as f64).await;
    eprintln!("{topic}: broadcast lag values seen while the handler is blocked: {seen:?}");

    gate.add_permits(3);
    let seen = wait_for_lag(&topic, "", (MESSAGES - 3) as f64).await;
    eprintln!("{topic}: after 3 finished: {seen:?}");

    // stop with 17 messages unfinished (the running handler is abandoned after the drain
    // timeout): the gauge is no longer this subscription's to report
    let report = subscription.unsubscribe().await;
    assert_eq!(report.abandoned, 1, "{report:?}");
    assert_eq!(finished.load(Ordering::SeqCst), 3);
    let gauges = lag_gauges(&topic);
    assert_eq!(gauges.len(), 1, "{gauges:?}");
    assert_eq!(gauges[0].1, 0.0, "zeroed when the subscription stopped");
    // and no statistics report served while the consumer closes sets it again
    tokio::time::sleep(STATISTICS * 5).await;
    assert_eq!(lag_gauges(&topic)[0].1, 0.0);
    gate.close();
    broker.disconnect().await.expect("disconnect");
}
