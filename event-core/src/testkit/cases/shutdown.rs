//! Stopping: unsubscribe ends delivery, subscriptions closed concurrently leave the topic
//! working, and in-flight handlers are drained.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::broker::{Delivery, Message, Outcome, SubscribeOptions, handler_fn};
use crate::testkit::collect::{
    Gate, assert_all, delivery_subscriber, distinct_count, publish_seqs, seq_of, seq_subscriber,
};
use crate::testkit::{BrokerFactory, Collector, unique};

/// After unsubscribe, the handler is never called again; a new subscription gets new messages.
pub async fn unsubscribe_stops_delivery<F: BrokerFactory>(factory: &F) {
    let broker = factory.broker().await;
    let topic = unique("unsub");
    factory.create_topic(&topic).await;
    let (tx_old, mut rx_old) = Collector::new(factory.timeout());
    let old = seq_subscriber(&broker, &topic, SubscribeOptions::new(), tx_old).await;
    publish_seqs(&broker, &topic, 0..1).await;
    assert_eq!(rx_old.next("before unsubscribe").await, 0);
    let report = old.unsubscribe().await;
    assert_eq!(report.abandoned, 0);
    let (tx_new, mut rx_new) = Collector::new(factory.timeout());
    let new = seq_subscriber(&broker, &topic, SubscribeOptions::new(), tx_new).await;
    publish_seqs(&broker, &topic, 1..21).await;
    let got = rx_new
        .until("new subscription", |s| distinct_count(s) == 20)
        .await;
    assert_all("new subscription", &got, 1..21);
    // the new subscription saw all 20; the old handler, gone, must have seen none of them
    if let Ok(Some(seq)) = tokio::time::timeout(Duration::ZERO, rx_old.rx.recv()).await {
        panic!("the unsubscribed handler received {seq}");
    }
    new.unsubscribe().await;
}

/// Subscriptions opened and closed concurrently leave the topic working.
pub async fn concurrent_close<F: BrokerFactory>(factory: &F) {
    let broker = factory.broker().await;
    let topic = unique("close");
    factory.create_topic(&topic).await;
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let broker = broker.clone();
            let topic = topic.clone();
            tokio::spawn(async move {
                let (tx, _rx) = Collector::<u64>::new(Duration::from_secs(1));
                let sub = seq_subscriber(&broker, &topic, SubscribeOptions::new(), tx).await;
                sub.unsubscribe().await
            })
        })
        .collect();
    for t in tasks {
        let report = t.await.expect("subscribe/close task");
        assert_eq!(report.abandoned, 0);
    }
    let (tx, mut rx) = Collector::new(factory.timeout());
    let sub = seq_subscriber(&broker, &topic, SubscribeOptions::new(), tx).await;
    publish_seqs(&broker, &topic, 0..50).await;
    assert_all(
        "after concurrent close",
        &rx.until("after close", |s| distinct_count(s) == 50).await,
        0..50,
    );
    sub.unsubscribe().await;
}

/// Unsubscribing while handlers run lets them finish and acknowledges them; nothing is
/// dead-lettered because of the shutdown, and no handler starts after it.
///
/// How many of the four messages run at once depends on the broker (Kafka runs one per
/// partition); the case holds whatever started and checks each of those finished.
pub async fn drain_on_shutdown<F: BrokerFactory>(factory: &F) {
    let broker = factory.broker().await;
    let topic = unique("drain");
    factory.create_topic(&topic).await;
    factory.create_topic(&format!("{topic}.dlq")).await;
    let (dlq_tx, mut dlq) = Collector::new(factory.timeout());
    let dlq_sub = delivery_subscriber(&*broker, &format!("{topic}.dlq"), dlq_tx).await;
    let release = Gate::new();
    let finished = Arc::new(AtomicUsize::new(0));
    let (tx, mut started) = Collector::new(factory.timeout());
    let sub = broker
        .subscribe(
            &topic,
            SubscribeOptions::new()
                .concurrency(4)
                .drain_timeout(factory.timeout()),
            handler_fn("testkit-slow", {
                let release = release.clone();
                let finished = finished.clone();
                move |d: Delivery| {
                    let tx = tx.clone();
                    let release = release.clone();
                    let finished = finished.clone();
                    async move {
                        let _ = tx.send(seq_of(&d));
                        release.wait().await;
                        finished.fetch_add(1, Ordering::SeqCst);
                        Outcome::Ack
                    }
                }
            }),
        )
        .await
        .expect("subscribe");
    for i in 0..4u64 {
        broker
            .publish(
                &topic,
                Message::new(i.to_string()).with_key(format!("drain-{i}")),
            )
            .await
            .expect("publish");
    }
    let mut in_flight = started
        .until("a handler in flight", |s| !s.is_empty())
        .await;
    // the first poll signals stop; the handlers are still blocked, so the drain waits
    let mut drain = Box::pin(sub.unsubscribe());
    assert!(
        futures_util::poll!(drain.as_mut()).is_pending(),
        "unsubscribe returned while handlers were in flight"
    );
    release.open(4);
    let report = drain.await;
    // every handler that ran was given a message fetched before the stop
    while let Ok(seq) = started.rx.try_recv() {
        in_flight.push(seq);
    }
    assert_eq!(
        report.completed,
        in_flight.len(),
        "{report:?}, started {in_flight:?}, finished {}",
        finished.load(Ordering::SeqCst)
    );
    assert_eq!(report.abandoned, 0);
    assert_eq!(finished.load(Ordering::SeqCst), in_flight.len());
    dlq.assert_quiet(
        "dead letters caused by shutdown",
        Duration::from_millis(100),
    )
    .await;
    dlq_sub.unsubscribe().await;
}
