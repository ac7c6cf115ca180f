//! Settling out of order: many handlers that finish in another order than their messages
//! arrived, each message acknowledged once and never redelivered.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;

use crate::broker::{Broker, Delivery, Message, Outcome, SubscribeOptions, handler_fn};
use crate::testkit::{BrokerFactory, unique};

/// [`settle_out_of_order`] on a fresh topic and queue group, 2,000 messages.
pub async fn acks_out_of_order<F: BrokerFactory>(factory: &F) {
    let broker = factory.broker().await;
    let topic = unique("acks");
    factory.create_topic(&topic).await;
    settle_out_of_order(
        &*broker,
        &topic,
        &unique("workers"),
        2000,
        factory.timeout(),
    )
    .await;
}

/// Publishes `n` messages (64 publishes in flight) to `topic`, handled by the queue group
/// `group` at concurrency 16, where every fifth handler takes 2 ms and the others yield once,
/// so that later messages finish before earlier ones. Returns once every message was handled
/// and the subscription was closed, which sends the acknowledgements still queued.
///
/// A backend whose acknowledgements are batched or sent off the delivery path calls this and
/// then checks its broker holds nothing unacknowledged for `group` (an acknowledgement lost, or
/// one that covered a message still in a handler, shows there).
///
/// # Panics
///
/// When a message is handled twice or not at all within `timeout`, or arrives redelivered
/// (an acknowledgement did not reach the broker, or the broker refused it and redelivered).
pub async fn settle_out_of_order(
    broker: &dyn Broker,
    topic: &str,
    group: &str,
    n: usize,
    timeout: Duration,
) {
    let counts: Arc<Vec<AtomicU32>> = Arc::new((0..n).map(|_| AtomicU32::new(0)).collect());
    let redelivered = Arc::new(AtomicUsize::new(0));
    let handled = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let handler = {
        let (counts, redelivered, handled, done) = (
            counts.clone(),
            redelivered.clone(),
            handled.clone(),
            done.clone(),
        );
        handler_fn("testkit-uneven", move |d: Delivery| {
            let (counts, redelivered, handled, done) = (
                counts.clone(),
                redelivered.clone(),
                handled.clone(),
                done.clone(),
            );
            async move {
                let seq: usize = std::str::from_utf8(d.payload())
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("not a sequence number: {:?}", d.payload()));
                if d.position().is_redelivered() || d.attempt() > 1 {
                    redelivered.fetch_add(1, Ordering::AcqRel);
                }
                // every fifth message takes a little longer: later ones overtake it
                if seq.is_multiple_of(5) {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                } else {
                    tokio::task::yield_now().await;
                }
                counts[seq].fetch_add(1, Ordering::AcqRel);
                if handled.fetch_add(1, Ordering::AcqRel) + 1 == n {
                    done.notify_one();
                }
                Outcome::Ack
            }
        })
    };
    let subscription = broker
        .subscribe(
            topic,
            SubscribeOptions::new().queue(group).concurrency(16),
            handler,
        )
        .await
        .unwrap_or_else(|e| panic!("subscribe to {topic}: {}", crate::error_chain(&e)));
    let complete = done.notified();
    tokio::pin!(complete);
    complete.as_mut().enable();
    let mut publishing = futures_util::stream::iter(0..n)
        .map(|seq| broker.publish(topic, Message::new(seq.to_string())))
        .buffer_unordered(64);
    while let Some(published) = publishing.next().await {
        published.unwrap_or_else(|e| panic!("publish: {}", crate::error_chain(&e)));
    }
    if tokio::time::timeout(timeout, complete).await.is_err() {
        panic!(
            "{} of {n} messages handled within {timeout:?}",
            handled.load(Ordering::Acquire)
        );
    }
    subscription.unsubscribe().await;
    let once = counts
        .iter()
        .filter(|c| c.load(Ordering::Acquire) == 1)
        .count();
    assert_eq!(once, n, "every message handled exactly once");
    assert_eq!(
        redelivered.load(Ordering::Acquire),
        0,
        "no message redelivered"
    );
}
