//! Connection loss, broker restarts and shutdown, against the real RabbitMQ.
//!
//! These tests disconnect every client of the broker (`rabbitmqctl close_all_connections`) and
//! stop the RabbitMQ application, so they run one at a time (a shared lock) in their own test
//! binary. They need `rabbitmqctl` (default `/usr/sbin/rabbitmqctl`, or `RABBITMQCTL`) and the
//! right to run it. They fail, never skip, when RabbitMQ is missing.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_amqp::AmqpBroker;
use event_core::broker::{
    Broker, BrokerError, Delivery, Message, Outcome, SubscribeOptions, handler_fn,
};
use event_core::testkit::{Collector, unique};
use tokio::sync::Notify;

/// One scenario at a time: they disturb every connection of the broker.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const EXCHANGE: &str = "event.test.connection-loss";

use common::url;

fn builder(name: &str) -> event_amqp::AmqpBrokerBuilder {
    AmqpBroker::builder(&url())
        .exchange(EXCHANGE)
        .queue_argument("x-expires", 600_000)
        .connection_name(name)
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
}

use common::connected;

/// Stops the RabbitMQ application; starts it again when dropped, even if the test panics.
struct StoppedApp {
    started: bool,
}

impl StoppedApp {
    async fn stop() -> StoppedApp {
        common::rabbitmqctl(&["stop_app"]).await;
        StoppedApp { started: false }
    }

    async fn start(mut self) {
        common::rabbitmqctl(&["start_app"]).await;
        common::rabbitmqctl(&["await_startup"]).await;
        self.started = true;
    }
}

impl Drop for StoppedApp {
    fn drop(&mut self) {
        if !self.started {
            common::rabbitmqctl_blocking(&["start_app".to_owned()]);
            common::rabbitmqctl_blocking(&["await_startup".to_owned()]);
        }
    }
}

/// Counts how often each message was handled.
struct Tally {
    counts: Vec<AtomicU32>,
    distinct: AtomicUsize,
    total: AtomicUsize,
    complete: Notify,
}

impl Tally {
    fn new(n: usize) -> Arc<Tally> {
        Arc::new(Tally {
            counts: (0..n).map(|_| AtomicU32::new(0)).collect(),
            distinct: AtomicUsize::new(0),
            total: AtomicUsize::new(0),
            complete: Notify::new(),
        })
    }

    fn handled(&self, seq: usize) {
        self.total.fetch_add(1, Ordering::AcqRel);
        if self.counts[seq].fetch_add(1, Ordering::AcqRel) == 0
            && self.distinct.fetch_add(1, Ordering::AcqRel) + 1 == self.counts.len()
        {
            self.complete.notify_one();
        }
    }

    fn distinct(&self) -> usize {
        self.distinct.load(Ordering::Acquire)
    }

    fn duplicates(&self) -> usize {
        self.total.load(Ordering::Acquire) - self.distinct()
    }

    fn missing(&self) -> Vec<usize> {
        (0..self.counts.len())
            .filter(|i| self.counts[*i].load(Ordering::Acquire) == 0)
            .collect()
    }

    async fn wait_complete(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let complete = self.complete.notified();
            tokio::pin!(complete);
            complete.as_mut().enable();
            if self.distinct() == self.counts.len() {
                return;
            }
            if tokio::time::timeout_at(deadline, complete).await.is_err() {
                let missing = self.missing();
                panic!(
                    "{} of {} messages handled within {timeout:?}; missing {} (first: {:?})",
                    self.distinct(),
                    self.counts.len(),
                    missing.len(),
                    &missing[..missing.len().min(20)]
                );
            }
        }
    }
}

fn seq_of(delivery: &Delivery) -> usize {
    std::str::from_utf8(delivery.payload())
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a sequence number: {:?}", delivery.payload()))
}

/// Progress of the publishers, so that disruptions happen at known points.
struct Progress {
    confirmed: AtomicUsize,
    changed: Notify,
}

impl Progress {
    async fn reached(&self, n: usize) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.confirmed.load(Ordering::Acquire) >= n {
                return;
            }
            changed.await;
        }
    }
}

/// 10,000 messages published while the connections are closed twice by the broker and the
/// broker application restarts once: every message is handled; duplicates are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_survive_connection_loss_and_restart() {
    const N: usize = 10_000;
    const PUBLISHERS: usize = 16;
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let topic = unique("reconnect");
    let subscriber_broker =
        connected(builder("event-amqp reconnect subscriber").build().unwrap()).await;
    let publisher_broker = connected(
        builder("event-amqp reconnect publisher")
            .publish_timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
    )
    .await;

    let tally = Tally::new(N);
    let subscription = subscriber_broker
        .subscribe(
            &topic,
            SubscribeOptions::new().queue("workers").concurrency(16),
            handler_fn("count", {
                let tally = tally.clone();
                move |d: Delivery| {
                    let tally = tally.clone();
                    async move {
                        tally.handled(seq_of(&d));
                        Outcome::Ack
                    }
                }
            }),
        )
        .await
        .expect("subscribe");

    let progress = Arc::new(Progress {
        confirmed: AtomicUsize::new(0),
        changed: Notify::new(),
    });
    let republished = Arc::new(AtomicUsize::new(0));
    let errors: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let broker = publisher_broker.clone();
            let topic = topic.clone();
            let progress = progress.clone();
            let republished = republished.clone();
            let errors = errors.clone();
            tokio::spawn(async move {
                // paced (about 1,000 messages/s in all), so that the disruptions happen while
                // messages are being published
                let mut pace = tokio::time::interval(Duration::from_millis(16));
                for seq in (p..N).step_by(PUBLISHERS) {
                    pace.tick().await;
                    let mut message = Message::new(seq.to_string());
                    loop {
                        match broker.publish(&topic, message).await {
                            Ok(_) => break,
                            Err(error) => {
                                // the message comes back: publish it again
                                *errors
                                    .lock()
                                    .unwrap()
                                    .entry(event_core::error_chain(error.broker_error()))
                                    .or_default() += 1;
                                republished.fetch_add(1, Ordering::AcqRel);
                                message = error.into_message();
                            }
                        }
                    }
                    progress.confirmed.fetch_add(1, Ordering::AcqRel);
                    progress.changed.notify_waiters();
                }
            })
        })
        .collect();

    let mut timeline = Vec::new();
    progress.reached(1_500).await;
    timeline.push((
        "close_all_connections #1",
        tally.distinct(),
        started.elapsed(),
    ));
    common::rabbitmqctl(&["close_all_connections", "test: forced close 1"]).await;
    progress.reached(3_500).await;
    timeline.push((
        "close_all_connections #2",
        tally.distinct(),
        started.elapsed(),
    ));
    common::rabbitmqctl(&["close_all_connections", "test: forced close 2"]).await;
    progress.reached(6_000).await;
    timeline.push(("stop_app", tally.distinct(), started.elapsed()));
    let stopped = StoppedApp::stop().await;
    let confirmed_at_stop = progress.confirmed.load(Ordering::Acquire);
    // an outage of a few seconds, during which the publishers wait
    tokio::time::sleep(Duration::from_secs(3)).await;
    let confirmed_while_stopped = progress.confirmed.load(Ordering::Acquire) - confirmed_at_stop;
    timeline.push(("start_app", tally.distinct(), started.elapsed()));
    stopped.start().await;
    timeline.push(("start_app done", tally.distinct(), started.elapsed()));

    for p in publishers {
        p.await.expect("publisher task");
    }
    timeline.push(("all published", tally.distinct(), started.elapsed()));
    tally.wait_complete(Duration::from_secs(120)).await;
    timeline.push(("all handled", tally.distinct(), started.elapsed()));
    let report = subscription.unsubscribe().await;
    subscriber_broker.disconnect().await.expect("disconnect");
    publisher_broker.disconnect().await.expect("disconnect");

    println!(
        "connection loss: {N} messages, {PUBLISHERS} publishers, queue group with concurrency 16"
    );
    for (what, handled, at) in &timeline {
        println!("  {at:>10.2?}  {what:<26} handled so far: {handled}");
    }
    println!(
        "  handled {} distinct, {} duplicates; {} publishes given back and sent again {:?}; \
         publishes confirmed while the app was stopped: {}; drain {:?}",
        tally.distinct(),
        tally.duplicates(),
        republished.load(Ordering::Acquire),
        errors.lock().unwrap(),
        confirmed_while_stopped,
        report,
    );
    assert_eq!(tally.distinct(), N);
    assert!(tally.missing().is_empty());
}

/// Stopping the broker client while handlers run: they finish and are acknowledged, nothing
/// is lost or dead-lettered; what was never fetched stays in the queue for the next member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_handlers_in_flight_loses_nothing() {
    const N: usize = 300;
    let _serial = SERIAL.lock().await;
    let topic = unique("shutdown");
    let dlq_topic = format!("{topic}.dlq");
    let observer_broker = connected(builder("event-amqp shutdown observer").build().unwrap()).await;
    let (dlq_tx, mut dead_letters) = Collector::new(Duration::from_secs(10));
    let dlq_sub =
        event_core::testkit::delivery_subscriber(&observer_broker, &dlq_topic, dlq_tx).await;

    let tally = Tally::new(N);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let first = connected(builder("event-amqp shutdown first").build().unwrap()).await;
    let running = Arc::new(Notify::new());
    let handler = |tally: Arc<Tally>, in_flight: Arc<AtomicUsize>, running: Arc<Notify>| {
        handler_fn("slow", move |d: Delivery| {
            let (tally, in_flight, running) = (tally.clone(), in_flight.clone(), running.clone());
            async move {
                in_flight.fetch_add(1, Ordering::AcqRel);
                running.notify_one();
                // work that takes a while; a handler cut off here never decrements in_flight
                tokio::time::sleep(Duration::from_millis(40)).await;
                tally.handled(seq_of(&d));
                in_flight.fetch_sub(1, Ordering::AcqRel);
                Outcome::Ack
            }
        })
    };
    let _sub = first
        .subscribe(
            &topic,
            SubscribeOptions::new()
                .queue("workers")
                .concurrency(8)
                .drain_timeout(Duration::from_secs(10)),
            handler(tally.clone(), in_flight.clone(), running.clone()),
        )
        .await
        .expect("subscribe");
    let publisher = connected(builder("event-amqp shutdown publisher").build().unwrap()).await;
    for seq in 0..N {
        publisher
            .publish(&topic, Message::new(seq.to_string()))
            .await
            .expect("publish");
    }
    // wait until handlers are busy, then shut the first member down under load
    running.notified().await;
    while in_flight.load(Ordering::Acquire) < 4 {
        running.notified().await;
    }
    let at_shutdown = in_flight.load(Ordering::Acquire);
    let t = Instant::now();
    first.disconnect().await.expect("disconnect");
    let drain_time = t.elapsed();
    let handled_by_first = tally.distinct();
    assert_eq!(
        in_flight.load(Ordering::Acquire),
        0,
        "a handler was still running after disconnect"
    );

    // a second member takes over the rest of the queue
    let second = connected(builder("event-amqp shutdown second").build().unwrap()).await;
    let sub2 = second
        .subscribe(
            &topic,
            SubscribeOptions::new().queue("workers").concurrency(8),
            handler(tally.clone(), in_flight.clone(), Arc::new(Notify::new())),
        )
        .await
        .expect("subscribe");
    tally.wait_complete(Duration::from_secs(60)).await;
    sub2.unsubscribe().await;
    second.disconnect().await.expect("disconnect");
    // both members published whatever they dead-lettered before their disconnect returned: the
    // observer, which takes its queue in order, gets it before a marker published now
    publisher
        .publish(&dlq_topic, event_core::testkit::marker())
        .await
        .expect("publish the marker");
    dead_letters
        .assert_empty_before(
            "dead letters caused by shutdown",
            event_core::testkit::is_marker,
        )
        .await;
    dlq_sub.unsubscribe().await;
    observer_broker.disconnect().await.expect("disconnect");
    publisher.disconnect().await.expect("disconnect");
    println!(
        "shutdown: {N} messages; {at_shutdown} handlers in flight at disconnect, drained in \
         {drain_time:?}; first member handled {handled_by_first}, all {} handled, {} duplicates, \
         0 dead letters",
        tally.distinct(),
        tally.duplicates()
    );
    assert_eq!(
        tally.duplicates(),
        0,
        "finished handlers were acknowledged before closing"
    );
}

/// A publish no queue receives is an error and gives the message back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_publish_is_an_error() {
    let _serial = SERIAL.lock().await;
    let broker = connected(builder("event-amqp unroutable").build().unwrap()).await;
    let topic = unique("nobody-listens");
    let message = Message::new("lost?").with_header("tenant", "t-1");
    let error = broker
        .publish(&topic, message.clone())
        .await
        .expect_err("no queue is bound to this topic");
    assert!(
        matches!(error.broker_error(), BrokerError::Unroutable { topic: t, .. } if *t == topic),
        "{error:?}"
    );
    assert_eq!(error.topic(), topic);
    assert_eq!(error.into_message(), message);
    println!(
        "unroutable: {}",
        event_core::error_chain(&broker.publish(&topic, Message::new("x")).await.unwrap_err())
    );
    broker.disconnect().await.expect("disconnect");
}

/// With `mandatory=false` a publish no queue receives is confirmed (and dropped by RabbitMQ),
/// but a dead letter is still published mandatory: it fails and gives the message back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_mandatory_confirms_an_unroutable_publish_but_not_a_dead_letter() {
    let _serial = SERIAL.lock().await;
    let broker = connected(
        AmqpBroker::builder(&common::url_with("mandatory=false"))
            .exchange(EXCHANGE)
            .connection_name("event-amqp not mandatory")
            .build()
            .unwrap(),
    )
    .await;
    let topic = unique("nobody-listens");
    broker
        .publish(&topic, Message::new("dropped by RabbitMQ"))
        .await
        .expect("a publish that is not mandatory is confirmed without a queue");
    let dead_letter = Message::new("poison")
        .with_header(event_core::headers::names::X_EVENT_ORIGINAL_TOPIC, "orders");
    let error = broker
        .publish(&format!("{topic}.dlq"), dead_letter.clone())
        .await
        .expect_err("a dead letter is mandatory");
    assert!(
        matches!(error.broker_error(), BrokerError::Unroutable { .. }),
        "{error:?}"
    );
    assert_eq!(error.into_message(), dead_letter);
    broker.disconnect().await.expect("disconnect");
}

/// A publish while the broker is stopped waits at most the publish timeout, then gives the
/// message back; after the broker is back, publishing works again without user code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_a_stopped_broker_returns_the_message() {
    let _serial = SERIAL.lock().await;
    let timeout = Duration::from_secs(2);
    let broker = connected(
        builder("event-amqp stopped")
            .publish_timeout(timeout)
            .build()
            .unwrap(),
    )
    .await;
    let topic = unique("stopped");
    let (tx, mut rx) = Collector::new(Duration::from_secs(30));
    let sub = broker
        .subscribe(
            &topic,
            SubscribeOptions::new().queue("g"),
            handler_fn("collect", move |d: Delivery| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(d.payload().clone());
                    Outcome::Ack
                }
            }),
        )
        .await
        .expect("subscribe");

    let stopped = StoppedApp::stop().await;
    let message = Message::new("while stopped").with_header("tenant", "t-9");
    let t = Instant::now();
    let error = broker
        .publish(&topic, message.clone())
        .await
        .expect_err("the broker is stopped");
    let waited = t.elapsed();
    assert!(
        matches!(
            error.broker_error(),
            BrokerError::Unavailable { .. } | BrokerError::Timeout { .. }
        ),
        "{error:?}"
    );
    assert!(
        waited >= timeout && waited < timeout + Duration::from_secs(3),
        "{waited:?}"
    );
    println!(
        "stopped broker: publish gave the message back after {waited:?}: {}",
        event_core::error_chain(&error)
    );
    assert_eq!(error.into_message(), message);
    stopped.start().await;

    // the same message again, on the re-established connection, reaches the subscriber
    let t = Instant::now();
    broker
        .publish(&topic, message.clone())
        .await
        .expect("publish after restart");
    assert_eq!(rx.next("message after restart").await, message.payload);
    println!(
        "stopped broker: publish + delivery after restart took {:?}",
        t.elapsed()
    );
    sub.unsubscribe().await;
    broker.disconnect().await.expect("disconnect");
}
