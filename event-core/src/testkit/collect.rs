//! What the cases receive with and publish with: the [`Collector`] of what handlers send, a
//! gate that holds handlers, and subscribers and publishers of sequence numbers.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};

use crate::broker::{
    Broker, Delivery, Message, Outcome, SubscribeOptions, Subscription, handler_fn,
};

/// Receives what handlers send to it, with bounded waits.
#[derive(Debug)]
pub struct Collector<T> {
    pub(super) rx: mpsc::UnboundedReceiver<T>,
    timeout: Duration,
}

impl<T: std::fmt::Debug> Collector<T> {
    /// A collector and the sender handlers use.
    pub fn new(timeout: Duration) -> (mpsc::UnboundedSender<T>, Self) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, Collector { rx, timeout })
    }

    /// The next item, or a panic naming `what` after the timeout.
    pub async fn next(&mut self, what: &str) -> T {
        match tokio::time::timeout(self.timeout, self.rx.recv()).await {
            Ok(Some(item)) => item,
            Ok(None) => panic!("{what}: all senders are gone"),
            Err(_) => panic!("{what}: nothing arrived within {:?}", self.timeout),
        }
    }

    /// Collects until `done(&items)` holds; panics with what arrived on timeout.
    pub async fn until(&mut self, what: &str, mut done: impl FnMut(&[T]) -> bool) -> Vec<T> {
        let mut items = Vec::new();
        let deadline = tokio::time::Instant::now() + self.timeout;
        while !done(&items) {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(item)) => items.push(item),
                Ok(None) => panic!("{what}: senders gone after {} items", items.len()),
                Err(_) => panic!(
                    "{what}: condition not met within {:?}; received {} items: {:?}",
                    self.timeout,
                    items.len(),
                    items
                ),
            }
        }
        items
    }

    /// Awaits `barrier`, then asserts nothing has arrived: a check that something must not
    /// happen, as good as its barrier. Returns what the barrier returned.
    ///
    /// The barrier must come after anything that could still arrive: typically the
    /// [`Subscription::unsubscribe`] or [`RunningService::stop`] of the handler that sends here
    /// (no handler runs once either returned), or something the same handler run would have
    /// sent, or caused, after the item that must not come (a dead letter published after the
    /// handler was not called). When the item and a marker published after it would both come
    /// through this collector, use [`Collector::assert_empty_before`].
    ///
    /// [`RunningService::stop`]: crate::RunningService::stop
    ///
    /// # Panics
    ///
    /// If something arrived, or the barrier did not complete within the timeout.
    pub async fn assert_empty_after<F: Future>(&mut self, what: &str, barrier: F) -> F::Output {
        let Ok(output) = tokio::time::timeout(self.timeout, barrier).await else {
            panic!(
                "{what}: the barrier did not complete within {:?}",
                self.timeout
            );
        };
        if let Ok(item) = self.rx.try_recv() {
            panic!("{what}: expected nothing, got {item:?}");
        }
        output
    }

    /// Waits for the item `is_marker` picks out, and asserts nothing arrived before it: a check
    /// that something must not happen, for what would come through this collector ahead of a
    /// marker published after it. Returns the marker.
    ///
    /// It needs a subscription that receives in publish order: a broadcast subscriber with
    /// concurrency 1 on the memory broker or RabbitMQ, one partition on Kafka. Publish the
    /// marker once nothing can publish what must not come any more (the service that would has
    /// stopped), e.g. a [`marker`] to the dead-letter topic.
    ///
    /// # Panics
    ///
    /// If something else arrived first, or the marker did not arrive within the timeout.
    pub async fn assert_empty_before(
        &mut self,
        what: &str,
        is_marker: impl FnOnce(&T) -> bool,
    ) -> T {
        let item = self.next(&format!("{what}: the marker")).await;
        assert!(
            is_marker(&item),
            "{what}: expected nothing before the marker, got {item:?}"
        );
        item
    }

    /// Asserts nothing arrives within `window` (for "must not happen" checks only).
    pub async fn assert_quiet(&mut self, what: &str, window: Duration) {
        if let Ok(Some(item)) = tokio::time::timeout(window, self.rx.recv()).await {
            panic!("{what}: expected nothing, got {item:?}");
        }
    }
}

/// The header of a [`marker`].
const MARKER_HEADER: &str = "x-testkit-marker";

/// A message to publish after the ones that must not be seen, for
/// [`Collector::assert_empty_before`].
pub fn marker() -> Message {
    Message::new("testkit marker").with_header(MARKER_HEADER, "1")
}

/// Whether `delivery` is a [`marker`].
pub fn is_marker(delivery: &Delivery) -> bool {
    delivery.headers().contains(MARKER_HEADER)
}

/// Holds handlers until the test opens it; permits are counted, so no wake-up is lost.
#[derive(Clone, Debug)]
pub(super) struct Gate(Arc<Semaphore>);

impl Gate {
    pub(super) fn new() -> Self {
        Gate(Arc::new(Semaphore::new(0)))
    }
    pub(super) async fn wait(&self) {
        self.0.acquire().await.expect("gate never closes").forget();
    }
    pub(super) fn open(&self, n: usize) {
        self.0.add_permits(n);
    }
}

pub(super) fn seq_of(delivery: &Delivery) -> u64 {
    std::str::from_utf8(delivery.payload())
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("payload is not a sequence number: {:?}", delivery.payload()))
}

pub(super) async fn publish_seqs(
    broker: &Arc<dyn Broker>,
    topic: &str,
    range: std::ops::Range<u64>,
) {
    for i in range {
        broker
            .publish(topic, Message::new(i.to_string()))
            .await
            .unwrap_or_else(|e| panic!("publish {i} to {topic}: {}", crate::error_chain(&e)));
    }
}

/// Subscribes a raw handler that forwards `(seq, attempt)` of each delivery and acks.
pub(super) async fn seq_subscriber(
    broker: &Arc<dyn Broker>,
    topic: &str,
    options: SubscribeOptions,
    tx: mpsc::UnboundedSender<u64>,
) -> Subscription {
    broker
        .subscribe(
            topic,
            options,
            handler_fn("testkit-seq", move |d: Delivery| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(seq_of(&d));
                    Outcome::Ack
                }
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("subscribe to {topic}: {}", crate::error_chain(&e)))
}

/// Subscribes a raw handler that forwards every delivery of `topic` (broadcast) to `tx` and
/// acknowledges it; for observers such as dead-letter watchers.
pub async fn delivery_subscriber<B: Broker + ?Sized>(
    broker: &B,
    topic: &str,
    tx: mpsc::UnboundedSender<Delivery>,
) -> Subscription {
    broker
        .subscribe(
            topic,
            SubscribeOptions::new(),
            handler_fn("testkit-observer", move |d: Delivery| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(d);
                    Outcome::Ack
                }
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("subscribe to {topic}: {}", crate::error_chain(&e)))
}

pub(super) fn assert_all(what: &str, got: &[u64], expected: std::ops::Range<u64>) {
    let got: BTreeSet<u64> = got.iter().copied().collect();
    let missing: Vec<u64> = expected.clone().filter(|i| !got.contains(i)).collect();
    let extra: Vec<u64> = got
        .iter()
        .filter(|i| !expected.contains(i))
        .copied()
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: missing {missing:?}, unexpected {extra:?}"
    );
}

pub(super) fn distinct_count(items: &[u64]) -> usize {
    items.iter().collect::<BTreeSet<_>>().len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What arrives while the barrier runs fails the check; what arrives after it is not its
    /// business.
    #[tokio::test]
    #[should_panic(expected = "a late one: expected nothing, got 7")]
    async fn assert_empty_after_sees_what_arrived_before_the_barrier_ended() {
        let (tx, mut collector) = Collector::new(Duration::from_secs(5));
        let barrier = async move {
            tokio::task::yield_now().await;
            let _ = tx.send(7);
        };
        collector.assert_empty_after("a late one", barrier).await;
    }

    #[tokio::test]
    async fn assert_empty_after_returns_what_the_barrier_returned() {
        let (_tx, mut collector) = Collector::<u32>::new(Duration::from_secs(5));
        assert_eq!(
            collector.assert_empty_after("nothing", async { 3 }).await,
            3
        );
    }

    #[tokio::test]
    #[should_panic(expected = "one only: expected nothing before the marker, got 2")]
    async fn assert_empty_before_fails_on_anything_ahead_of_the_marker() {
        let (tx, mut collector) = Collector::new(Duration::from_secs(5));
        for item in [2, 0] {
            let _ = tx.send(item);
        }
        collector
            .assert_empty_before("one only", |&item| item == 0)
            .await;
    }

    #[tokio::test]
    async fn assert_empty_before_returns_the_marker() {
        let (tx, mut collector) = Collector::new(Duration::from_secs(5));
        let _ = tx.send(0);
        assert_eq!(
            collector
                .assert_empty_before("none", |&item| item == 0)
                .await,
            0
        );
    }
}
