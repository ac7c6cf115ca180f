//! Back-pressure is per partition: a record whose handler does not finish holds its own
//! partition, whose read-ahead fills up and stops there, and never the other partitions.
//!
//! One partition's first record blocks its handler until the test releases it; 2,000 more
//! records queue up behind it (far over the read-ahead of 16 per partition), and 2,000 records
//! go to each other partition. All of those are handled while the first is still blocked;
//! then it is released and its partition is handled to the end, in order.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_core::broker::{Broker, Delivery, Message, Outcome, SubscribeOptions};
use event_core::broker::{Receipt, handler_fn};
use event_core::testkit::{Collector, unique};
use event_kafka::KafkaBroker;
use tokio::sync::{Semaphore, mpsc};

/// Records behind the blocked one, and on each other partition.
const PER_PARTITION: u32 = 2_000;
/// `max_buffered_per_partition`: far fewer than [`PER_PARTITION`].
const READ_AHEAD: usize = 64;
const WAIT: Duration = Duration::from_secs(30);

/// One handled record: partition, offset, payload.
type Handled = (i32, i64, String);

fn record(partition: i32, seq: u32) -> String {
    format!("p{partition}:{seq:06}")
}

/// Publishes `seqs` of `partition` with `key`, in order (each publish is enqueued when called).
async fn publish(
    broker: &KafkaBroker,
    topic: &str,
    key: &str,
    partition: i32,
    seqs: std::ops::Range<u32>,
) -> Vec<Receipt> {
    let sends: Vec<_> = seqs
        .map(|seq| {
            broker.publish(
                topic,
                Message::new(record(partition, seq)).with_key(key.to_owned()),
            )
        })
        .collect();
    let receipts: Vec<Receipt> = futures_util::future::join_all(sends)
        .await
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("publish: {}", event_core::error_chain(&e))))
        .collect();
    for receipt in &receipts {
        assert!(
            receipt.position().partition() == Some(partition),
            "key {key} moved off partition {partition}: {receipt:?}"
        );
    }
    receipts
}

/// Receives until `done`, or until `limit` has passed; `Err` on timeout, with how long
/// before it the last record arrived (`None`: nothing arrived).
async fn collect_until(
    rx: &mut mpsc::UnboundedReceiver<Handled>,
    into: &mut Vec<Handled>,
    limit: Duration,
    mut done: impl FnMut(&[Handled]) -> bool,
) -> Result<(), Option<Duration>> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = None;
    while !done(into) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(item)) => {
                into.push(item);
                last = Some(Instant::now());
            }
            Ok(None) => panic!("the handler is gone"),
            Err(_) => return Err(last.map(|at| at.elapsed())),
        }
    }
    Ok(())
}

/// Says whether a timed-out wait had stopped, or was still moving (too slowly).
fn stalled_or_slow(outcome: Result<(), Option<Duration>>) -> String {
    match outcome {
        Ok(()) => "done".to_owned(),
        Err(None) => "stopped: nothing arrived".to_owned(),
        Err(Some(quiet)) if quiet > Duration::from_secs(2) => {
            format!("stopped: the last record arrived {quiet:.2?} before the deadline")
        }
        Err(Some(quiet)) => format!(
            "still moving but too slow: the last record arrived {quiet:.2?} before the deadline"
        ),
    }
}

fn count_per_partition(handled: &[Handled]) -> BTreeMap<i32, usize> {
    let mut counts = BTreeMap::new();
    for (partition, _, _) in handled {
        *counts.entry(*partition).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_partition_does_not_stop_the_others() {
    let broker = common::connected(
        common::builder(&common::bootstrap())
            .max_buffered_per_partition(READ_AHEAD)
            .parallel_keys(false),
    )
    .await;
    let topic = unique("backpressure");
    let dlq = format!("{topic}.dlq");
    common::create_topics(&broker, &[&topic, &dlq]).await;

    // a key for every partition, from where probes land; they are published before the group
    // exists, and a new group starts at the end of each partition, so they are not delivered
    let mut keys: BTreeMap<i32, String> = BTreeMap::new();
    for n in 0.. {
        assert!(n < 1000, "1000 keys did not cover the partitions: {keys:?}");
        let key = format!("key-{n}");
        let receipt = broker
            .publish(&topic, Message::new("probe").with_key(key.clone()))
            .await
            .expect("publish probe");
        let Some(partition) = receipt.position().partition() else {
            panic!("a Kafka receipt carries a partition: {receipt:?}");
        };
        keys.entry(partition).or_insert(key);
        if keys.len() == common::PARTITIONS as usize {
            break;
        }
    }
    let (&stalled, stalled_key) = keys.iter().next().expect("a partition");
    let stalled_key = stalled_key.clone();
    let others: Vec<i32> = keys.keys().copied().filter(|p| *p != stalled).collect();
    let blocker = record(stalled, 0);

    let gate = Arc::new(Semaphore::new(0));
    let (blocked_tx, mut blocked) = Collector::new(WAIT);
    let (tx, mut rx) = mpsc::unbounded_channel::<Handled>();
    let sub = broker
        .subscribe(
            &topic,
            SubscribeOptions::new()
                .queue(unique("g"))
                .concurrency(common::PARTITIONS as usize),
            handler_fn("stalls-on-one-record", {
                let gate = gate.clone();
                let blocker = blocker.clone();
                move |d: Delivery| {
                    let (tx, blocked_tx, gate) = (tx.clone(), blocked_tx.clone(), gate.clone());
                    let blocker = blocker.clone();
                    async move {
                        let Some(partition) = d.position().partition() else {
                            panic!("a Kafka delivery carries a partition: {d:?}");
                        };
                        let offset = i64::try_from(d.position().number()).expect("an offset");
                        let payload = String::from_utf8_lossy(d.payload()).into_owned();
                        if payload == blocker {
                            let _ = blocked_tx.send(offset);
                            gate.acquire().await.expect("never closed").forget();
                        }
                        let _ = tx.send((partition, offset, payload));
                        Outcome::Ack
                    }
                }
            }),
        )
        .await
        .expect("subscribe");

    // the stalled partition: its first record blocks, 2,000 queue up behind it
    publish(&broker, &topic, &stalled_key, stalled, 0..1).await;
    blocked.next("the blocking record in its handler").await;
    publish(&broker, &topic, &stalled_key, stalled, 1..PER_PARTITION + 1).await;
    // then 2,000 on every other partition
    let started = Instant::now();
    for p in &others {
        publish(&broker, &topic, &keys[p], *p, 0..PER_PARTITION).await;
    }

    let mut handled = Vec::new();
    let others_done = collect_until(&mut rx, &mut handled, WAIT, |h| {
        let counts = count_per_partition(h);
        others
            .iter()
            .all(|p| counts.get(p).copied().unwrap_or(0) >= PER_PARTITION as usize)
    })
    .await;
    let counts = count_per_partition(&handled);
    println!(
        "backpressure: partition {stalled} stalled with {PER_PARTITION} records behind its head \
         (read-ahead {READ_AHEAD} per partition); handled meanwhile per partition: {counts:?} \
         in {:?}",
        started.elapsed()
    );
    assert!(
        others_done.is_ok(),
        "the other partitions {others:?} did not finish while partition {stalled} was stalled \
         ({}): handled per partition within {WAIT:?}: {counts:?} (of {PER_PARTITION} each)",
        stalled_or_slow(others_done)
    );
    assert_eq!(
        counts.get(&stalled),
        None,
        "nothing of partition {stalled} runs while its head is in a handler"
    );

    // release the head: the stalled partition is handled to its end
    gate.add_permits(1);
    let released = Instant::now();
    let stalled_done = collect_until(&mut rx, &mut handled, WAIT, |h| {
        count_per_partition(h).get(&stalled).copied().unwrap_or(0) > PER_PARTITION as usize
    })
    .await;
    let counts = count_per_partition(&handled);
    println!(
        "backpressure: after the release, partition {stalled} drained in {:?}; handled per \
         partition: {counts:?}",
        released.elapsed()
    );
    assert!(
        stalled_done.is_ok(),
        "partition {stalled} did not finish within {WAIT:?} after its head was released ({}): \
         {counts:?}",
        stalled_or_slow(stalled_done)
    );

    // each partition in order, each record once
    for (partition, total) in std::iter::once((stalled, PER_PARTITION + 1))
        .chain(others.iter().map(|p| (*p, PER_PARTITION)))
    {
        let mine: Vec<&Handled> = handled.iter().filter(|h| h.0 == partition).collect();
        let payloads: Vec<&str> = mine.iter().map(|h| h.2.as_str()).collect();
        let expected: Vec<String> = (0..total).map(|seq| record(partition, seq)).collect();
        assert_eq!(
            payloads, expected,
            "partition {partition}: in order, once each"
        );
        let first = mine[0].1;
        assert!(
            mine.iter()
                .enumerate()
                .all(|(i, h)| h.1 == first + i as i64),
            "partition {partition}: offsets handled one after another"
        );
    }
    let mut extra = Vec::new();
    let more = collect_until(&mut rx, &mut extra, Duration::from_millis(300), |e| {
        !e.is_empty()
    })
    .await;
    assert!(more.is_err(), "a record was delivered twice: {extra:?}");
    println!(
        "backpressure: {} records handled, 0 duplicates, order per partition kept",
        handled.len()
    );
    sub.unsubscribe().await;
}
