//! Failing handlers: redelivery after an error, dead letters for what keeps failing while the
//! rest flows, panics caught.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::broker::{Delivery, Outcome, SubscribeOptions, handler_fn};
use crate::headers::names;
use crate::testkit::collect::{
    assert_all, delivery_subscriber, distinct_count, publish_seqs, seq_of,
};
use crate::testkit::{BrokerFactory, Collector, fast_retry, unique};

/// Handlers that fail the first two deliveries: those messages come again and are handled.
pub async fn resend_on_error<F: BrokerFactory>(factory: &F) {
    let broker = factory.broker().await;
    let topic = unique("resend");
    factory.create_topic(&topic).await;
    let failures = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = Collector::new(factory.timeout());
    let sub = broker
        .subscribe(
            &topic,
            SubscribeOptions::new().retry(fast_retry(5)),
            handler_fn("testkit-flaky", {
                let failures = failures.clone();
                move |d: Delivery| {
                    let tx = tx.clone();
                    let failures = failures.clone();
                    async move {
                        if failures.fetch_add(1, Ordering::SeqCst) < 2 {
                            return Outcome::retry(std::io::Error::other("transient"));
                        }
                        let _ = tx.send((seq_of(&d), d.attempt()));
                        Outcome::Ack
                    }
                }
            }),
        )
        .await
        .expect("subscribe");
    publish_seqs(&broker, &topic, 0..20).await;
    let got = rx
        .until("resend_on_error", |s| {
            s.iter().map(|(seq, _)| *seq).collect::<BTreeSet<_>>().len() == 20
        })
        .await;
    assert_all(
        "resend_on_error",
        &got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        0..20,
    );
    assert!(
        got.iter().any(|(_, attempt)| *attempt >= 2),
        "a failed message must come back with a higher attempt number: {got:?}"
    );
    sub.unsubscribe().await;
}

/// Some messages always fail and are dead-lettered; all others keep flowing.
pub async fn continue_after_errors<F: BrokerFactory>(factory: &F) {
    let broker = factory.broker().await;
    let topic = unique("errors");
    factory.create_topic(&topic).await;
    factory.create_topic(&format!("{topic}.dlq")).await;
    let (dlq_tx, mut dlq) = Collector::new(factory.timeout());
    let dlq_sub = delivery_subscriber(&*broker, &format!("{topic}.dlq"), dlq_tx).await;
    let (tx, mut rx) = Collector::new(factory.timeout());
    let sub = broker
        .subscribe(
            &topic,
            SubscribeOptions::new().retry(fast_retry(2)),
            handler_fn("testkit-picky", move |d: Delivery| {
                let tx = tx.clone();
                async move {
                    let seq = seq_of(&d);
                    if seq.is_multiple_of(5) {
                        return Outcome::retry(std::io::Error::other(format!(
                            "cannot handle {seq}"
                        )));
                    }
                    let _ = tx.send(seq);
                    Outcome::Ack
                }
            }),
        )
        .await
        .expect("subscribe");
    publish_seqs(&broker, &topic, 0..50).await;
    let good = rx
        .until("continue_after_errors", |s| distinct_count(s) == 40)
        .await;
    assert!(good.iter().all(|s| !s.is_multiple_of(5)));
    let dead = dlq.until("dead letters", |d| d.len() == 10).await;
    let dead_seqs: BTreeSet<u64> = dead.iter().map(seq_of).collect();
    assert_eq!(
        dead_seqs,
        (0..50).filter(|s: &u64| s.is_multiple_of(5)).collect()
    );
    for d in &dead {
        assert_eq!(d.headers().get_str(names::X_EVENT_ATTEMPTS), Some("2"));
        assert_eq!(
            d.headers().get_str(names::X_EVENT_ERROR_KIND),
            Some("handler-error")
        );
    }
    sub.unsubscribe().await;
    dlq_sub.unsubscribe().await;
}

/// A panicking handler is caught, counted as a failure and dead-lettered, whether it panics
/// while its future runs or before it returns one (in the synchronous part of the handler,
/// where a decode or an extractor runs); the subscription keeps handling the next messages.
pub async fn panic_is_contained<F: BrokerFactory>(factory: &F) {
    let broker = factory.broker().await;
    let topic = unique("panic");
    factory.create_topic(&topic).await;
    factory.create_topic(&format!("{topic}.dlq")).await;
    let (dlq_tx, mut dlq) = Collector::new(factory.timeout());
    let dlq_sub = delivery_subscriber(&*broker, &format!("{topic}.dlq"), dlq_tx).await;
    let (tx, mut rx) = Collector::new(factory.timeout());
    let sub = broker
        .subscribe(
            &topic,
            SubscribeOptions::new().retry(fast_retry(2)),
            handler_fn("testkit-panicky", move |d: Delivery| {
                let tx = tx.clone();
                let seq = seq_of(&d);
                assert!(seq != 1, "boom before the future, on message one");
                async move {
                    assert!(seq != 0, "boom on message zero");
                    let _ = tx.send(seq);
                    Outcome::Ack
                }
            }),
        )
        .await
        .expect("subscribe");
    publish_seqs(&broker, &topic, 0..5).await;
    assert_all(
        "after the panics",
        &rx.until("after the panics", |s| distinct_count(s) == 3)
            .await,
        2..5,
    );
    let mut dead: Vec<Delivery> = vec![
        dlq.next("a dead letter of a panic").await,
        dlq.next("the other dead letter of a panic").await,
    ];
    dead.sort_by_key(seq_of);
    for (d, message) in dead
        .iter()
        .zip(["boom on message zero", "boom before the future"])
    {
        assert_eq!(
            d.headers().get_str(names::X_EVENT_ERROR_KIND),
            Some("panic")
        );
        assert!(
            d.headers()
                .get_str(names::X_EVENT_ERROR)
                .is_some_and(|e| e.contains(message)),
            "{:?}",
            d.headers()
        );
    }
    assert_eq!(dead.iter().map(seq_of).collect::<Vec<_>>(), [0, 1]);
    sub.unsubscribe().await;
    dlq_sub.unsubscribe().await;
}
