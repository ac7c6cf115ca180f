//! The broker conformance suite: one set of async tests every [`Broker`] must pass.
//!
//! It covers Watermill's universal Pub/Sub cases that apply to any broker (publish/subscribe,
//! concurrent subscribe, many topics, redelivery after failure, continue after errors, order
//! per key, concurrent publishing, topic isolation, unsubscribe, consumer groups, broadcast,
//! concurrent close) and ours (headers and context round-trip, context propagation through a
//! handler, type mismatch diagnosis, dead-letter contents, panics, drain on shutdown).
//!
//! A backend runs it with [`conformance_suite!`](crate::conformance_suite) and a
//! [`BrokerFactory`]:
//!
//! ```ignore
//! event_core::conformance_suite!(my_backend_tests, MyFactory::new());
//! ```
//!
//! Each case uses its own unique topic and queue names, so cases run in parallel against one
//! broker. Every wait is bounded by [`BrokerFactory::timeout`]; a case fails with the list of
//! what was missing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};

use crate::broker::{
    Broker, Delivery, Message, Outcome, RetryPolicy, SubscribeOptions, Subscription, handler_fn,
};
use crate::context::Context;
use crate::headers::names;
use crate::publish::Publisher;
use crate::service::Service;

pub mod metrics;
#[cfg(feature = "opentelemetry")]
pub mod telemetry;

/// Messages the suite publishes with the typed API.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Probe {
    /// Sequence number within a case.
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// Free text.
    #[prost(string, tag = "2")]
    pub note: String,
}

impl prost::Name for Probe {
    const NAME: &'static str = "Probe";
    const PACKAGE: &'static str = "event.testkit.v1";
}

/// A second message type, for type-mismatch cases.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OtherProbe {
    /// Free text.
    #[prost(string, tag = "1")]
    pub text: String,
}

impl prost::Name for OtherProbe {
    const NAME: &'static str = "OtherProbe";
    const PACKAGE: &'static str = "event.testkit.v1";
}

/// Provides brokers to the suite.
pub trait BrokerFactory: Send + Sync + 'static {
    /// A connected broker client. Successive calls return clients of the same broker (for
    /// the memory broker: the same instance).
    fn broker(&self) -> impl Future<Output = Arc<dyn Broker>> + Send;

    /// Makes `topic` usable before the case publishes to it (Kafka: create it).
    fn create_topic(&self, topic: &str) -> impl Future<Output = ()> + Send {
        let _ = topic;
        async {}
    }

    /// How long a case waits for the messages it expects.
    fn timeout(&self) -> Duration {
        Duration::from_secs(15)
    }
}

/// A [`BrokerFactory`] for the in-memory broker.
#[derive(Debug, Clone, Default)]
pub struct MemoryFactory(pub crate::memory::MemoryBroker);

impl BrokerFactory for MemoryFactory {
    async fn broker(&self) -> Arc<dyn Broker> {
        Arc::new(self.0.clone())
    }
}

/// A unique name for a topic or group of one case.
pub fn unique(prefix: &str) -> String {
    format!("testkit.{prefix}.{}", uuid::Uuid::now_v7().simple())
}

/// Retry quickly in tests.
pub fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy::exponential(max_attempts, Duration::from_millis(5))
        .with_max_backoff(Duration::from_millis(20))
        .with_jitter(0.0)
}

/// Receives what handlers send to it, with bounded waits.
#[derive(Debug)]
pub struct Collector<T> {
    rx: mpsc::UnboundedReceiver<T>,
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

    /// Asserts nothing has arrived so far, without waiting.
    pub fn assert_empty(&mut self, what: &str) {
        if let Ok(item) = self.rx.try_recv() {
            panic!("{what}: expected nothing, got {item:?}");
        }
    }

    /// Asserts nothing arrives within `window` (for "must not happen" checks only).
    pub async fn assert_quiet(&mut self, what: &str, window: Duration) {
        if let Ok(Some(item)) = tokio::time::timeout(window, self.rx.recv()).await {
            panic!("{what}: expected nothing, got {item:?}");
        }
    }
}

/// Holds handlers until the test opens it; permits are counted, so no wake-up is lost.
#[derive(Clone, Debug)]
struct Gate(Arc<Semaphore>);

impl Gate {
    fn new() -> Self {
        Gate(Arc::new(Semaphore::new(0)))
    }
    async fn wait(&self) {
        self.0.acquire().await.expect("gate never closes").forget();
    }
    fn open(&self, n: usize) {
        self.0.add_permits(n);
    }
}

fn seq_of(delivery: &Delivery) -> u64 {
    std::str::from_utf8(delivery.payload())
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("payload is not a sequence number: {:?}", delivery.payload()))
}

async fn publish_seqs(broker: &Arc<dyn Broker>, topic: &str, range: std::ops::Range<u64>) {
    for i in range {
        broker
            .publish(topic, Message::new(i.to_string()))
            .await
            .unwrap_or_else(|e| panic!("publish {i} to {topic}: {}", crate::error_chain(&e)));
    }
}

/// Subscribes a raw handler that forwards `(seq, attempt)` of each delivery and acks.
async fn seq_subscriber(
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

fn assert_all(what: &str, got: &[u64], expected: std::ops::Range<u64>) {
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

fn distinct_count(items: &[u64]) -> usize {
    items.iter().collect::<BTreeSet<_>>().len()
}

/// Publish 100 raw messages with headers and keys; a subscriber receives every one intact.
pub async fn publish_subscribe<F: BrokerFactory>(factory: &F) {
    let broker = factory.broker().await;
    let topic = unique("pubsub");
    factory.create_topic(&topic).await;
    let (tx, mut rx) = Collector::new(factory.timeout());
    let sub = delivery_subscriber(&*broker, &topic, tx).await;
    let run = uuid::Uuid::now_v7().to_string();
    for i in 0..100u64 {
        let message = Message::new(i.to_string())
            .with_header("test-run", run.as_str())
            .with_header("Mixed-Case", "kept")
            .with_key(format!("k{}", i % 7));
        broker.publish(&topic, message).await.expect("publish");
    }
    let got = rx
        .until("publish_subscribe", |d| {
            distinct_count(&d.iter().map(seq_of).collect::<Vec<_>>()) == 100
        })
        .await;
    for d in &got {
        assert_eq!(d.topic(), topic);
        assert_eq!(d.headers().get_str("TEST-RUN"), Some(run.as_str()));
        assert_eq!(d.headers().get_str("mixed-case"), Some("kept"));
        let seq = seq_of(d);
        assert_eq!(
            d.message().key.as_deref(),
            Some(format!("k{}", seq % 7).as_bytes()),
            "key of message {seq}"
        );
        assert!(d.attempt() >= 1);
    }
    assert_all(
        "publish_subscribe",
        &got.iter().map(seq_of).collect::<Vec<_>>(),
        0..100,
    );
    sub.unsubscribe().await;
}

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

/// Ten topics, each with its own subscriber: each receives exactly its own messages.
pub async fn many_topics<F: BrokerFactory>(factory: &F) {
    let broker = factory.broker().await;
    let mut cases = Vec::new();
    for t in 0..10 {
        let topic = unique(&format!("many{t}"));
        factory.create_topic(&topic).await;
        let (tx, rx) = Collector::new(factory.timeout());
        let sub = seq_subscriber(&broker, &topic, SubscribeOptions::new(), tx).await;
        cases.push((topic, rx, sub));
    }
    for (t, (topic, _, _)) in cases.iter().enumerate() {
        let base = t as u64 * 1000;
        publish_seqs(&broker, topic, base..base + 20).await;
    }
    for (t, (topic, mut rx, sub)) in cases.into_iter().enumerate() {
        let base = t as u64 * 1000;
        let got = rx.until(&topic, |s| distinct_count(s) == 20).await;
        assert_all(&topic, &got, base..base + 20);
        sub.unsubscribe().await;
    }
}

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

/// With concurrency 1, the next message is not handed out before the current one is settled.
///
/// The handler holds whichever message comes first: on a broker with several partitions two
/// messages without a key may land on different ones, and either may be fetched first.
pub async fn ack_after_handler<F: BrokerFactory>(factory: &F) {
    let broker = factory.broker().await;
    let topic = unique("noack");
    factory.create_topic(&topic).await;
    let release = Gate::new();
    let first = Arc::new(AtomicBool::new(true));
    let (tx, mut rx) = Collector::new(factory.timeout());
    let sub = broker
        .subscribe(
            &topic,
            SubscribeOptions::new(),
            handler_fn("testkit-gated", {
                let release = release.clone();
                move |d: Delivery| {
                    let tx = tx.clone();
                    let release = release.clone();
                    let is_first = first.swap(false, Ordering::SeqCst);
                    async move {
                        let _ = tx.send(seq_of(&d));
                        if is_first {
                            release.wait().await;
                        }
                        Outcome::Ack
                    }
                }
            }),
        )
        .await
        .expect("subscribe");
    publish_seqs(&broker, &topic, 0..2).await;
    let held = rx.next("first message").await;
    assert!(held < 2, "only messages 0 and 1 were published, got {held}");
    rx.assert_quiet(
        "second message while the first is unsettled",
        Duration::from_millis(300),
    )
    .await;
    release.open(1);
    assert_eq!(rx.next("second message after ack").await, 1 - held);
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

/// Messages with the same key arrive in publish order (brokers that promise it).
pub async fn order_per_key<F: BrokerFactory>(factory: &F) {
    let broker = factory.broker().await;
    let topic = unique("order");
    factory.create_topic(&topic).await;
    let (tx, mut rx) = Collector::new(factory.timeout());
    let sub = broker
        .subscribe(
            &topic,
            SubscribeOptions::new(),
            handler_fn("testkit-order", move |d: Delivery| {
                let tx = tx.clone();
                async move {
                    let key =
                        String::from_utf8_lossy(d.message().key.as_deref().unwrap_or_default())
                            .into_owned();
                    let _ = tx.send((key, seq_of(&d)));
                    Outcome::Ack
                }
            }),
        )
        .await
        .expect("subscribe");
    for i in 0..200u64 {
        broker
            .publish(
                &topic,
                Message::new(i.to_string()).with_key(format!("key-{}", i % 4)),
            )
            .await
            .expect("publish");
    }
    let got = rx.until("order_per_key", |s| s.len() >= 200).await;
    let mut per_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (key, seq) in got {
        per_key.entry(key).or_default().push(seq);
    }
    for (key, seqs) in per_key {
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        sorted.dedup();
        let mut first_seen = seqs.clone();
        first_seen.dedup();
        assert!(
            first_seen.windows(2).all(|w| w[0] < w[1]),
            "messages of {key} out of order: {seqs:?}"
        );
    }
    sub.unsubscribe().await;
}

/// Twenty tasks publish concurrently on shared clients: nothing is lost.
pub async fn concurrent_publish<F: BrokerFactory>(factory: &F) {
    let broker = factory.broker().await;
    let topic = unique("pubconc");
    factory.create_topic(&topic).await;
    let (tx, mut rx) = Collector::new(factory.timeout());
    let sub = seq_subscriber(&broker, &topic, SubscribeOptions::new().concurrency(8), tx).await;
    let tasks: Vec<_> = (0..20u64)
        .map(|p| {
            let broker = broker.clone();
            let topic = topic.clone();
            tokio::spawn(async move { publish_seqs(&broker, &topic, p * 100..(p + 1) * 100).await })
        })
        .collect();
    for t in tasks {
        t.await.expect("publisher task");
    }
    let got = rx
        .until("concurrent_publish", |s| distinct_count(s) == 2000)
        .await;
    assert_all("concurrent_publish", &got, 0..2000);
    sub.unsubscribe().await;
}

/// A message to one topic never reaches another topic's subscriber.
pub async fn topic_isolation<F: BrokerFactory>(factory: &F) {
    let broker = factory.broker().await;
    let (a, b) = (unique("iso-a"), unique("iso-b"));
    factory.create_topic(&a).await;
    factory.create_topic(&b).await;
    let (tx_a, mut rx_a) = Collector::new(factory.timeout());
    let (tx_b, mut rx_b) = Collector::new(factory.timeout());
    let sub_a = seq_subscriber(&broker, &a, SubscribeOptions::new(), tx_a).await;
    let sub_b = seq_subscriber(&broker, &b, SubscribeOptions::new(), tx_b).await;
    publish_seqs(&broker, &a, 1..2).await;
    publish_seqs(&broker, &b, 2..3).await;
    assert_eq!(rx_a.next("topic a").await, 1);
    assert_eq!(rx_b.next("topic b").await, 2);
    // both subscriptions have now seen their topic's message; any cross-talk would have
    // been delivered before or right after it
    rx_a.assert_quiet("topic a after its message", Duration::from_millis(100))
        .await;
    rx_b.assert_quiet("topic b after its message", Duration::from_millis(100))
        .await;
    sub_a.unsubscribe().await;
    sub_b.unsubscribe().await;
}

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

/// A typed publisher writes the header scheme; context metadata and trace pass through.
pub async fn typed_headers_roundtrip<F: BrokerFactory>(factory: &F) {
    let broker = factory.broker().await;
    let topic = unique("typed");
    factory.create_topic(&topic).await;
    let (tx, mut rx) = Collector::new(factory.timeout());
    let sub = delivery_subscriber(&*broker, &topic, tx).await;
    let publisher = Publisher::<Probe>::new(broker.clone(), "testkit-source", topic.as_str());
    let mut ctx = Context::new()
        .with_metadata("tenant", "t-42")
        .expect("metadata");
    ctx.set_trace(crate::context::TraceContext {
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        ..Default::default()
    });
    let receipt = publisher
        .publish_with(
            &ctx,
            &Probe {
                seq: 7,
                note: "hello".into(),
            },
        )
        .await
        .expect("publish");
    let d = rx.next("typed message").await;
    let h = d.headers();
    assert_eq!(h.get_str("ce_specversion"), Some("1.0"));
    assert_eq!(h.message_type(), Some("event.testkit.v1.Probe"));
    assert_eq!(h.source(), Some("testkit-source"));
    assert_eq!(h.content_type(), Some("application/protobuf"));
    assert_eq!(h.message_id(), receipt.message_id());
    let id = uuid::Uuid::parse_str(h.message_id().expect("id")).expect("uuid id");
    assert_eq!(id.get_version_num(), 7);
    assert!(
        h.time().is_some(),
        "ce_time parses as RFC 3339: {:?}",
        h.get("ce_time")
    );
    assert_eq!(
        h.get_str("correlation-id"),
        h.message_id(),
        "a chain starts at its first id"
    );
    assert_eq!(h.get_str("tenant"), Some("t-42"));
    assert_eq!(
        h.get_str("traceparent"),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    let decoded: Probe =
        prost::Message::decode(d.payload().clone()).expect("body is the bare message");
    assert_eq!(
        decoded,
        Probe {
            seq: 7,
            note: "hello".into()
        }
    );
    sub.unsubscribe().await;
}

/// A handler that publishes passes metadata, trace, correlation and causation on untouched.
pub async fn context_propagates<F: BrokerFactory>(factory: &F) {
    let broker = factory.broker().await;
    let (first, second) = (unique("chain-1"), unique("chain-2"));
    factory.create_topic(&first).await;
    factory.create_topic(&second).await;
    let (tx, mut rx) = Collector::new(factory.timeout());
    let observer = delivery_subscriber(&*broker, &second, tx).await;
    let follow_up = Publisher::<OtherProbe>::new(broker.clone(), "relay", second.as_str());
    let relay = move |probe: Probe| {
        let follow_up = follow_up.clone();
        async move {
            follow_up
                .publish(&OtherProbe {
                    text: format!("after {}", probe.seq),
                })
                .await
                .map(|_| ())
        }
    };
    let service = Service::builder("relay")
        .broker(broker.clone())
        .subscribe(first.as_str(), relay)
        .build()
        .expect("build")
        .start()
        .await
        .expect("start");
    let origin = Publisher::<Probe>::new(broker.clone(), "origin", first.as_str());
    let ctx = Context::new()
        .with_metadata("tenant", "t-7")
        .expect("metadata");
    let receipt = origin
        .publish_with(
            &ctx,
            &Probe {
                seq: 1,
                note: String::new(),
            },
        )
        .await
        .expect("publish");
    let d = rx.next("follow-up").await;
    let first_id = receipt.message_id().expect("id");
    assert_eq!(d.headers().get_str("correlation-id"), Some(first_id));
    assert_eq!(d.headers().get_str("causation-id"), Some(first_id));
    assert_eq!(d.headers().get_str("tenant"), Some("t-7"));
    assert_eq!(d.headers().source(), Some("relay"));
    assert_ne!(d.headers().message_id(), Some(first_id));
    running_shutdown(service).await;
    observer.unsubscribe().await;
}

async fn running_shutdown(service: crate::RunningService) {
    // drain, but leave the shared broker connected for the other cases
    service.stop().await;
}

/// A message of another type is diagnosed and dead-lettered once, without calling the handler.
pub async fn type_mismatch_dead_lettered<F: BrokerFactory>(factory: &F) {
    let broker = factory.broker().await;
    let topic = unique("mismatch");
    factory.create_topic(&topic).await;
    factory.create_topic(&format!("{topic}.dlq")).await;
    let (dlq_tx, mut dlq) = Collector::new(factory.timeout());
    let dlq_sub = delivery_subscriber(&*broker, &format!("{topic}.dlq"), dlq_tx).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let calls = calls.clone();
        move |_p: Probe| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
            }
        }
    };
    let service = Service::builder("typed-sub")
        .broker(broker.clone())
        .subscribe(topic.as_str(), handler)
        .build()
        .expect("build")
        .start()
        .await
        .expect("start");
    let wrong = Publisher::<OtherProbe>::new(broker.clone(), "wrong-producer", topic.as_str());
    let sent = wrong.encode(
        &OtherProbe {
            text: "not a probe".into(),
        },
        None,
    );
    broker.publish(&topic, sent.clone()).await.expect("publish");
    let d = dlq.next("dead letter").await;
    let h = d.headers();
    assert_eq!(h.get_str(names::X_EVENT_ERROR_KIND), Some("type-mismatch"));
    assert_eq!(
        h.get_str(names::X_EVENT_ORIGINAL_TOPIC),
        Some(topic.as_str())
    );
    assert_eq!(h.get_str(names::X_EVENT_ATTEMPTS), Some("1"));
    let error = h.get_str(names::X_EVENT_ERROR).expect("error header");
    assert!(
        error.contains("event.testkit.v1.Probe") && error.contains("event.testkit.v1.OtherProbe"),
        "{error}"
    );
    assert_eq!(d.payload(), &sent.payload, "original bytes kept");
    assert_eq!(
        h.message_id(),
        sent.headers.message_id(),
        "original headers kept"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "the handler must not see a mismatched message"
    );
    running_shutdown(service).await;
    dlq.assert_quiet("a second dead letter", Duration::from_millis(100))
        .await;
    dlq_sub.unsubscribe().await;
}

/// A handler that always fails: N attempts, then the dead-letter topic with reason headers.
pub async fn dead_letter_after_retries<F: BrokerFactory>(factory: &F) {
    let broker = factory.broker().await;
    let topic = unique("poison");
    factory.create_topic(&topic).await;
    factory.create_topic(&format!("{topic}.dlq")).await;
    let (dlq_tx, mut dlq) = Collector::new(factory.timeout());
    let dlq_sub = delivery_subscriber(&*broker, &format!("{topic}.dlq"), dlq_tx).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let calls = calls.clone();
        move |_p: Probe| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(std::io::Error::other("database unavailable"))
            }
        }
    };
    let service = Service::builder("poisoned")
        .broker(broker.clone())
        .subscribe_with(
            topic.as_str(),
            SubscribeOptions::new().retry(fast_retry(3)),
            handler,
        )
        .build()
        .expect("build")
        .start()
        .await
        .expect("start");
    let publisher = Publisher::<Probe>::new(broker.clone(), "producer", topic.as_str());
    let sent = publisher.encode(
        &Probe {
            seq: 9,
            note: "poison".into(),
        },
        None,
    );
    broker.publish(&topic, sent.clone()).await.expect("publish");
    let d = dlq.next("dead letter").await;
    let h = d.headers();
    assert_eq!(h.get_str(names::X_EVENT_ATTEMPTS), Some("3"));
    assert_eq!(h.get_str(names::X_EVENT_ERROR_KIND), Some("handler-error"));
    assert_eq!(
        h.get_str(names::X_EVENT_ERROR),
        Some("database unavailable")
    );
    assert!(
        h.get_str(names::X_EVENT_HANDLER)
            .is_some_and(|n| !n.is_empty())
    );
    assert!(h.get_str(names::X_EVENT_ORIGINAL_POSITION).is_some());
    assert_eq!(d.payload(), &sent.payload);
    for (name, value) in sent.headers.iter() {
        assert_eq!(
            h.get(name.as_str()),
            Some(value),
            "original header {name} kept"
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    running_shutdown(service).await;
    dlq_sub.unsubscribe().await;
}

/// A panicking handler is caught, counted as a failure and dead-lettered; the subscription
/// keeps handling the next messages.
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
                async move {
                    let seq = seq_of(&d);
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
        "after the panic",
        &rx.until("after panic", |s| distinct_count(s) == 4).await,
        1..5,
    );
    let d = dlq.next("dead letter of the panic").await;
    assert_eq!(seq_of(&d), 0);
    assert_eq!(
        d.headers().get_str(names::X_EVENT_ERROR_KIND),
        Some("panic")
    );
    assert!(
        d.headers()
            .get_str(names::X_EVENT_ERROR)
            .is_some_and(|e| e.contains("boom on message zero")),
        "{:?}",
        d.headers()
    );
    sub.unsubscribe().await;
    dlq_sub.unsubscribe().await;
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

/// Generates one `#[tokio::test]` per conformance case for a [`BrokerFactory`].
///
/// ```ignore
/// event_core::conformance_suite!(memory, event_core::testkit::MemoryFactory::default());
/// ```
///
/// The cases that need a capability the broker lacks are not generated by default; name the
/// ones the broker promises after `extra:` — [`order_per_key`], [`group_resumes`]
/// (persistence), [`replays_from_earliest`]:
///
/// ```ignore
/// event_core::conformance_suite!(kafka, KafkaFactory::new(), extra: [order_per_key, group_resumes]);
/// ```
#[macro_export]
macro_rules! conformance_suite {
    ($module:ident, $factory:expr) => {
        $crate::conformance_suite!($module, $factory, extra: []);
    };
    ($module:ident, $factory:expr, extra: [$($extra:ident),* $(,)?]) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $crate::conformance_suite!(@cases $factory;
                publish_subscribe, concurrent_subscribe, many_topics, resend_on_error,
                ack_after_handler, continue_after_errors, concurrent_publish, topic_isolation,
                unsubscribe_stops_delivery, consumer_groups, queue_group_splits, broadcast,
                concurrent_close, typed_headers_roundtrip, context_propagates,
                type_mismatch_dead_lettered, dead_letter_after_retries, panic_is_contained,
                drain_on_shutdown);
            $crate::conformance_suite!(@cases $factory; $($extra),*);
        }
    };
    (@telemetry $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let factory = $factory;
                $crate::testkit::telemetry::$case(&factory).await;
            }
        )*
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let factory = $factory;
                $crate::testkit::$case(&factory).await;
            }
        )*
    };
}
