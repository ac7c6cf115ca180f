//! A member that leaves a queue group while messages stream to it: what it had fetched and
//! not handled goes to the other member at once, not after `AckWait`.
//!
//! The member's pull request is still open when it leaves, and the publisher shares its
//! connection, so the server is sending it messages at that moment (before this test, the
//! client dropped those that came after it unsubscribed: 3 to 32 of them per leave). They
//! must be given back too. The `AckWait` here is the default, 30 s: a message the leaving
//! member dropped would come back only after it, and the collector's 10 s bound fails the
//! test. Three leaves per run, as the loss depended on timing.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use event_core::broker::{Broker, Delivery, Message, Outcome, SubscribeOptions, handler_fn};
use event_core::testkit::{Collector, unique};
use futures_util::StreamExt;

const TOTAL: u64 = 3_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_leaves_mid_stream_gives_back_what_it_fetched() {
    common::testkit_stream().await;
    for run in 0..3 {
        let broker = common::connected(
            common::builder("leave-test")
                .prefetch(256)
                .build()
                .expect("config"),
        )
        .await;
        let topic = format!("testkit.{}", unique("leave"));
        let group = unique("g");
        let (tx, mut handled) = Collector::new(Duration::from_secs(10));
        let subscribe = |member: usize| {
            let tx = tx.clone();
            let broker = broker.clone();
            let topic = topic.clone();
            let group = group.clone();
            async move {
                broker
                    .subscribe(
                        &topic,
                        SubscribeOptions::new().queue(&group),
                        handler_fn("count", move |d: Delivery| {
                            let tx = tx.clone();
                            async move {
                                let seq: u64 =
                                    std::str::from_utf8(d.payload()).unwrap().parse().unwrap();
                                let _ = tx.send((member, seq));
                                Outcome::Ack
                            }
                        }),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("subscribe: {}", event_core::error_chain(&e)))
            }
        };
        let leaving = subscribe(0).await;
        let staying = subscribe(1).await;

        let publisher = tokio::spawn({
            let broker = broker.clone();
            let topic = topic.clone();
            async move {
                let mut sends = futures_util::stream::iter(0..TOTAL)
                    .map(|i| {
                        let broker = broker.clone();
                        let topic = topic.clone();
                        async move { broker.publish(&topic, Message::new(i.to_string())).await }
                    })
                    .buffer_unordered(64);
                while let Some(sent) = sends.next().await {
                    sent.unwrap_or_else(|e| panic!("publish: {}", event_core::error_chain(&e)));
                }
            }
        });

        // leave while the stream is flowing to both members
        let mut seen = handled
            .until("the first messages", |items| {
                items.iter().filter(|(member, _)| *member == 0).count() >= 300
            })
            .await;
        let report = leaving.unsubscribe().await;
        assert_eq!(report.abandoned, 0, "{report:?}");
        publisher.await.expect("publisher");
        let mut distinct: BTreeSet<u64> = seen.iter().map(|(_, s)| *s).collect();
        let left_at = tokio::time::Instant::now();
        while distinct.len() < TOTAL as usize {
            let (member, seq) = handled
                .next(&format!(
                    "run {run}: message {} of {TOTAL} (missing: {:?})",
                    distinct.len() + 1,
                    (0..TOTAL)
                        .filter(|s| !distinct.contains(s))
                        .collect::<Vec<_>>()
                ))
                .await;
            seen.push((member, seq));
            distinct.insert(seq);
        }
        let duplicates = seen.len() - distinct.len();
        println!(
            "run {run}: {TOTAL} handled, {duplicates} duplicates, the rest {:?} after the leave",
            left_at.elapsed()
        );
        staying.unsubscribe().await;
        broker.disconnect().await.expect("disconnect");
    }
}
