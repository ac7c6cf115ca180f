//! Broker restarts: 10,000 messages published while the test's own Apache Kafka node is
//! killed with SIGKILL, started again on the same log dir, then stopped with SIGTERM and
//! started again, with publishers and a queue group running. Every message is handled; each
//! publish either succeeds or fails with its message given back (and is then sent again); the
//! duplicates that at-least-once allows are counted.
//!
//! The node runs on ports and a log dir of its own (`common::node`), from the jars
//! `scripts/brokers.sh` caches, so it never disturbs the shared broker of the other tests.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::node::KafkaNode;
use event_core::broker::{Broker, Delivery, Message, Outcome, SubscribeOptions, handler_fn};
use event_core::testkit::{Collector, unique};
use event_kafka::{KafkaBroker, TopicSpec};
use futures_util::StreamExt;

const TOTAL: u64 = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_survive_two_broker_restarts() {
    let dir = std::env::temp_dir().join(unique("kafka-restart"));
    let mut process = tokio::task::block_in_place(|| KafkaNode::start(&dir));
    let servers = process.bootstrap();
    let broker = KafkaBroker::builder(&servers)
        .client_id("restart-test")
        .delivery_timeout(Duration::from_secs(60))
        .build()
        .expect("config");
    broker.connect().await.expect("connect");
    let topic = unique("restart");
    broker
        .ensure_topics(&[
            TopicSpec::new(&topic).partitions(3),
            TopicSpec::new(format!("{topic}.dlq")),
        ])
        .await
        .expect("create topics");

    let (tx, mut handled) = Collector::new(Duration::from_secs(120));
    let sub = broker
        .subscribe(
            &topic,
            SubscribeOptions::new().queue(unique("g")).concurrency(3),
            handler_fn("count", move |d: Delivery| {
                let tx = tx.clone();
                async move {
                    let seq: u64 = std::str::from_utf8(d.payload()).unwrap().parse().unwrap();
                    let _ = tx.send(seq);
                    Outcome::Ack
                }
            }),
        )
        .await
        .expect("subscribe");

    // publish with up to 200 in flight; a failed publish gives the message back and is retried
    let publisher = tokio::spawn({
        let broker = broker.clone();
        let topic = topic.clone();
        async move {
            let mut retries = 0usize;
            let mut sends = futures_util::stream::iter(0..TOTAL)
                .map(|i| {
                    let broker = broker.clone();
                    let topic = topic.clone();
                    async move {
                        let mut message =
                            Message::new(i.to_string()).with_key(format!("k{}", i % 11));
                        let mut failures = 0usize;
                        loop {
                            match broker.publish(&topic, message).await {
                                Ok(_) => return failures,
                                Err(e) => {
                                    failures += 1;
                                    assert!(failures < 20, "publish {i} keeps failing: {e}");
                                    message = e.into_message();
                                    tokio::time::sleep(Duration::from_millis(200)).await;
                                }
                            }
                        }
                    }
                })
                .buffer_unordered(200);
            while let Some(failures) = sends.next().await {
                retries += failures;
            }
            retries
        }
    });

    let mut seen = Vec::new();
    for (round, at) in [(1, 2_000u64), (2, 6_000)] {
        let before = seen.len();
        let more = handled
            .until("progress before a restart", |s| {
                before + s.len() >= at as usize
            })
            .await;
        seen.extend(more);
        let how = tokio::task::block_in_place(|| {
            if round == 1 {
                process.kill();
                "killed (SIGKILL)"
            } else {
                process.stop();
                "stopped (SIGTERM)"
            }
        });
        println!(
            "restart {round}: broker {how} after {} deliveries",
            seen.len()
        );
        tokio::task::block_in_place(|| process.spawn());
    }
    let publish_retries = publisher.await.expect("publisher");
    let rest = handled
        .until("every message", |s| {
            let mut all: BTreeSet<u64> = seen.iter().copied().collect();
            all.extend(s.iter().copied());
            all.len() as u64 == TOTAL
        })
        .await;
    seen.extend(rest);
    let distinct: BTreeSet<u64> = seen.iter().copied().collect();
    assert_eq!(distinct, (0..TOTAL).collect::<BTreeSet<_>>());
    println!(
        "restarts: {TOTAL} messages, {} deliveries, {} duplicates, {publish_retries} publish retries",
        seen.len(),
        seen.len() - distinct.len()
    );
    sub.unsubscribe().await;
    broker.disconnect().await.expect("disconnect");
    drop(process);
    let _ = std::fs::remove_dir_all(&dir);
}
