//! Members of one queue group join and leave while 100,000 keyed records are produced: none
//! is lost, order per key holds across every hand-over, and the duplicates (at-least-once)
//! are counted and bounded by what a hand-over can have in flight.
//!
//! Member A runs throughout; B joins after 20,000 records are handled, C after 40,000; B
//! leaves after 60,000 and C after 80,000. The producer keeps at most [`LEAD`] records ahead
//! of what is handled, and publishes nothing past a change's point plus [`LEAD`] before that
//! change is done (so the joins and leaves land mid-stream, however fast the members are),
//! with at most [`WINDOW`] publishes in flight. Once with the eager assignors (the default), once with
//! `cooperative-sticky`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::stream::{self, Handled, Ledger};
use event_core::broker::handler_fn;
use event_core::broker::{Broker, Delivery, Message, Outcome, SubscribeOptions, Subscription};
use event_core::testkit::unique;
use event_kafka::KafkaBroker;
use futures_util::StreamExt;

const TOTAL: u32 = 100_000;
const KEYS: u32 = 50;
const PARTITIONS: i32 = 6;
/// `max_buffered_per_partition` of every member.
const READ_AHEAD: usize = 64;
/// Publishes awaiting their delivery report at once.
const WINDOW: usize = 1_000;
/// How far the producer may run ahead of the distinct records handled.
const LEAD: usize = 5_000;
/// Distinct records handled when B joins, C joins, B leaves, C leaves.
const JOIN_B: usize = 20_000;
const JOIN_C: usize = 40_000;
const LEAVE_B: usize = 60_000;
const LEAVE_C: usize = 80_000;
const CHANGES: [usize; 4] = [JOIN_B, JOIN_C, LEAVE_B, LEAVE_C];
/// Membership changes, each one a rebalance that may move every partition.
const HAND_OVERS: usize = 4;
const STEP: Duration = Duration::from_secs(60);

async fn member(
    broker: &KafkaBroker,
    topic: &str,
    group: &str,
    ledger: &Arc<Ledger>,
    id: usize,
) -> Subscription {
    let ledger = ledger.clone();
    broker
        .subscribe(
            topic,
            SubscribeOptions::new()
                .queue(group)
                .concurrency(PARTITIONS as usize),
            handler_fn("member", move |d: Delivery| {
                let ledger = ledger.clone();
                async move {
                    let Some((key, seq)) = stream::parse(d.payload()) else {
                        ledger.stray(d.payload());
                        return Outcome::Ack;
                    };
                    ledger.begin(key, seq);
                    // a little work, and a point where other tasks run
                    tokio::task::yield_now().await;
                    ledger.end(key, seq, id);
                    Outcome::Ack
                }
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("member {id} subscribes: {}", event_core::error_chain(&e)))
}

async fn members_come_and_go(strategy: Option<&str>) {
    let label = strategy.unwrap_or("eager (range,roundrobin)");
    let mut builder = common::builder(&common::bootstrap())
        .max_buffered_per_partition(READ_AHEAD)
        .revoke_timeout(Duration::from_secs(10))
        // no reordering by producer retries: the per-key check relies on publish order
        .idempotence(true)
        .set_consumer("heartbeat.interval.ms", "1000");
    if let Some(strategy) = strategy {
        builder = builder.set_consumer("partition.assignment.strategy", strategy);
    }
    let broker = common::connected(builder).await;
    let topic = unique("rebalance");
    common::create_topics_with(&broker, &[&topic], PARTITIONS).await;
    let group = unique("g");
    let ledger = Ledger::new();
    let started = Instant::now();

    let a = member(&broker, &topic, &group, &ledger, 0).await;
    // membership changes done so far
    let (changed, changes) = tokio::sync::watch::channel(0usize);
    let producer = tokio::spawn({
        let broker = broker.clone();
        let topic = topic.clone();
        let ledger = ledger.clone();
        let mut changes = changes.clone();
        async move {
            let mut in_flight = futures_util::stream::FuturesUnordered::new();
            let settle = |result: Option<Result<_, event_core::broker::PublishError>>| {
                if let Some(Err(e)) = result {
                    panic!("publish: {}", event_core::error_chain(&e));
                }
            };
            for i in 0..TOTAL {
                let due = CHANGES
                    .iter()
                    .filter(|&&at| i as usize >= at + LEAD)
                    .count();
                tokio::time::timeout(STEP, changes.wait_for(|done| *done >= due))
                    .await
                    .expect("a membership change within the step limit")
                    .expect("the test runs");
                let ahead = (i as usize).saturating_sub(LEAD);
                if ledger.distinct() < ahead {
                    ledger
                        .wait("the members catching up with the producer", STEP, |p| {
                            p.distinct >= ahead
                        })
                        .await;
                }
                while in_flight.len() >= WINDOW {
                    settle(in_flight.next().await);
                }
                // enqueued here, in order: the order of a key's records is the publish order
                let (key, seq) = (i % KEYS, i / KEYS);
                in_flight.push(broker.publish(
                    &topic,
                    Message::new(stream::payload(key, seq)).with_key(stream::key_name(key)),
                ));
            }
            while !in_flight.is_empty() {
                settle(in_flight.next().await);
            }
        }
    });

    let at = |what: &str| {
        println!(
            "rebalance [{label}]: {:>6.2}s {what} at {} handled",
            started.elapsed().as_secs_f64(),
            ledger.distinct()
        );
    };
    ledger
        .wait("progress before B joins", STEP, |p| p.distinct >= JOIN_B)
        .await;
    let b = member(&broker, &topic, &group, &ledger, 1).await;
    at("B joined");
    changed.send_modify(|done| *done += 1);
    ledger
        .wait("progress before C joins", STEP, |p| p.distinct >= JOIN_C)
        .await;
    let c = member(&broker, &topic, &group, &ledger, 2).await;
    at("C joined");
    changed.send_modify(|done| *done += 1);
    ledger
        .wait("progress before B leaves", STEP, |p| p.distinct >= LEAVE_B)
        .await;
    let b_left = b.unsubscribe().await;
    at(&format!("B left ({b_left:?})"));
    changed.send_modify(|done| *done += 1);
    ledger
        .wait("progress before C leaves", STEP, |p| p.distinct >= LEAVE_C)
        .await;
    let c_left = c.unsubscribe().await;
    at(&format!("C left ({c_left:?})"));
    changed.send_modify(|done| *done += 1);
    ledger
        .wait("every record", STEP, |p| p.distinct == TOTAL as usize)
        .await;
    at("all handled");
    producer.await.expect("producer");
    a.unsubscribe().await;
    let elapsed = started.elapsed();

    let snapshot = ledger.snapshot();
    let check = stream::check_order(&snapshot.log, KEYS, TOTAL / KEYS);
    let bound = HAND_OVERS * PARTITIONS as usize * (READ_AHEAD + 1);
    println!(
        "rebalance [{label}]: {TOTAL} records, {} handlings in {elapsed:.1?}; per member {:?}; \
         {} duplicates (bound {bound} = {HAND_OVERS} hand-overs x {PARTITIONS} partitions x \
         (read-ahead {READ_AHEAD} + 1 in a handler)); {} redelivered runs; {} missing; {} \
         skips; {} late; {} overlapping handlers of one key; {} strays",
        snapshot.log.len(),
        snapshot.per_member,
        check.duplicates,
        check.rewinds,
        check.missing.len(),
        check.skips.len(),
        check.late.len(),
        snapshot.overlaps.len(),
        snapshot.strays.len(),
    );
    check.assert_complete(&snapshot);
    assert!(
        snapshot.overlaps.is_empty(),
        "records of one key handled at the same time (a hand-over let the next owner start \
         before the previous one finished): {} times, the first (key, seq): {:?}",
        snapshot.overlaps.len(),
        &snapshot.overlaps[..snapshot.overlaps.len().min(10)]
    );
    assert!(
        check.duplicates <= bound,
        "{} duplicates, more than {bound} that {HAND_OVERS} hand-overs can have in flight",
        check.duplicates
    );
    for (id, name) in [(1, "B"), (2, "C")] {
        assert!(
            snapshot.per_member.get(&id).copied().unwrap_or(0) > 0,
            "member {name} was given partitions: {:?}",
            snapshot.per_member
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_and_leave_mid_stream_eager() {
    members_come_and_go(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_and_leave_mid_stream_cooperative_sticky() {
    members_come_and_go(Some("cooperative-sticky")).await;
}

#[test]
fn the_order_check_allows_redelivered_runs_only() {
    let log = |seqs: &[u32]| -> Vec<Handled> {
        seqs.iter()
            .map(|&seq| Handled {
                key: 0,
                seq,
                member: 0,
                at: Instant::now(),
            })
            .collect()
    };
    let clean = stream::check_order(&log(&[0, 1, 2, 3, 1, 2, 3, 4, 5]), 1, 6);
    assert!(clean.is_clean(), "{clean:?}");
    assert_eq!((clean.duplicates, clean.rewinds), (3, 1));
    let skipped = stream::check_order(&log(&[0, 1, 3, 2, 4]), 1, 5);
    assert_eq!(skipped.skips, vec![(0, 2, 3)]);
    assert_eq!(skipped.late, vec![(0, 2)]);
    let lost = stream::check_order(&log(&[0, 1, 2]), 1, 4);
    assert_eq!(lost.missing, vec![(0, 3)]);
    assert_eq!(
        stream::parse(stream::payload(7, 123).as_bytes()),
        Some((7, 123))
    );
    assert_eq!(stream::parse(b"probe"), None);
}
