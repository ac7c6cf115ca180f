//! A dead letter that its topic does not take (on the in-memory broker: the dead-letter
//! topic's queue is full): the message is held, not acknowledged, counted and visible on the
//! subscription; once the topic takes it, it is dead-lettered and acknowledged.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use event_core::broker::{Broker, Delivery, Message, Outcome, SubscribeOptions, handler_fn};
use event_core::headers::names;
use event_core::memory::MemoryBroker;
use event_core::telemetry::{label, metric};
use event_core::testkit::{self, Collector, unique};
use tokio::sync::Semaphore;

const WAIT: Duration = Duration::from_secs(10);

/// Waits until `condition` holds (there is no event to await); panics naming `what` after
/// [`WAIT`].
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_dead_letter_holds_its_message_until_the_topic_takes_it() {
    let metrics = testkit::metrics::install();
    // one slot per queue; a publish to a full queue fails after 10 ms
    let broker = MemoryBroker::builder()
        .capacity(1)
        .publish_timeout(Duration::from_millis(10))
        .build();
    broker.connect().await.expect("connect");
    let topic = unique("stalled");
    let dead_letter_topic = format!("{topic}.dlq");

    // a dead-letter reader whose handler finishes a message per permit of the gate
    let gate = Arc::new(Semaphore::new(0));
    let (dead_tx, mut dead) = Collector::new(WAIT);
    let reader = broker
        .subscribe(
            &dead_letter_topic,
            SubscribeOptions::new(),
            handler_fn("dead-letter-reader", {
                let gate = gate.clone();
                move |d: Delivery| {
                    let (gate, dead_tx) = (gate.clone(), dead_tx.clone());
                    async move {
                        let _ = dead_tx.send(d);
                        let _permit = gate.acquire().await.expect("gate open");
                        Outcome::Ack
                    }
                }
            }),
        )
        .await
        .expect("subscribe the reader");
    // a first message takes the only slot of the dead-letter topic's queue
    broker
        .publish(&dead_letter_topic, Message::new("filler"))
        .await
        .expect("publish the filler");
    assert_eq!(dead.next("the filler").await.payload(), "filler");

    let runs = Arc::new(AtomicUsize::new(0));
    let subscription = broker
        .subscribe(
            &topic,
            SubscribeOptions::new(),
            handler_fn("rejects", {
                let runs = runs.clone();
                move |_| {
                    runs.fetch_add(1, Ordering::SeqCst);
                    async { Outcome::dead_letter("poison") }
                }
            }),
        )
        .await
        .expect("subscribe");
    assert_eq!(subscription.stalled(), 0);
    broker
        .publish(&topic, Message::new("poison"))
        .await
        .expect("publish");

    let of = [(label::TOPIC, topic.as_str()), (label::BACKEND, "memory")];
    let failures = || {
        metrics.counter(
            metric::DEAD_LETTER_FAILURES,
            &[
                (label::TOPIC, topic.as_str()),
                (label::GROUP, ""),
                (label::MESSAGE_TYPE, "raw"),
                (label::ERROR_KIND, "timeout"),
            ],
        )
    };
    // the second failure comes after a backoff, and after the first one was accounted for
    eventually("two failed dead-letter publishes", || failures() >= 2).await;
    assert_eq!(subscription.stalled(), 1);
    assert!(subscription.is_stalled());
    assert_eq!(broker.pending(&topic), 1, "held, not acknowledged");
    assert_eq!(metrics.counter(metric::DEAD_LETTERED, &of), 0);
    assert_eq!(metrics.counter(metric::ACKED, &of), 0);
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the handler is not run again"
    );

    // the dead-letter topic takes messages again
    gate.add_permits(2);
    let letter = dead.next("the dead letter").await;
    assert_eq!(letter.payload(), "poison");
    assert_eq!(
        letter.headers().get_str(names::X_EVENT_ERROR_KIND),
        Some("rejected")
    );
    // counted after the acknowledgement
    eventually("dead-lettered", || {
        metrics.counter(metric::DEAD_LETTERED, &of) == 1
    })
    .await;
    assert_eq!(broker.pending(&topic), 0, "acknowledged");
    assert_eq!(subscription.stalled(), 0);
    assert!(!subscription.is_stalled());
    let counted = failures();
    assert!(counted >= 2, "{counted}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    let report = subscription.unsubscribe().await;
    assert_eq!(report.returned + report.abandoned, 0, "{report:?}");
    assert_eq!(
        failures(),
        counted,
        "no failure after the dead letter was taken"
    );
    reader.unsubscribe().await;
    broker.disconnect().await.expect("disconnect");
}

/// A dead letter to a topic nothing subscribes to is kept, not discarded: readable (oldest
/// first), bounded per topic, and taken once; an ordinary message to such a topic is not kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_nobody_subscribes_to_are_kept_and_bounded() {
    let broker = MemoryBroker::builder().unclaimed_dead_letters(2).build();
    broker.connect().await.expect("connect");
    let topic = unique("unclaimed");
    let dead_letter_topic = format!("{topic}.dlq");
    let (seen_tx, mut seen) = Collector::new(WAIT);
    let sub = broker
        .subscribe(
            &topic,
            SubscribeOptions::new(),
            handler_fn("rejecter", move |d: Delivery| {
                let seen_tx = seen_tx.clone();
                async move {
                    let _ = seen_tx.send(d.payload().clone());
                    Outcome::dead_letter("not for us")
                }
            }),
        )
        .await
        .expect("subscribe");
    for payload in ["one", "two", "three"] {
        broker
            .publish(&topic, Message::new(payload))
            .await
            .expect("publish");
    }
    let handled = seen.until("three handler runs", |s| s.len() == 3).await;
    assert_eq!(handled, ["one", "two", "three"]);
    // a message whose dead letter is still being published is in flight: the drain waits
    // for it, so every dead letter is out once the subscription is gone
    let report = sub.unsubscribe().await;
    assert_eq!(report.returned + report.abandoned, 0, "{report:?}");
    broker
        .publish(&dead_letter_topic, Message::new("not a dead letter"))
        .await
        .expect("publish");

    let kept = broker.unclaimed_dead_letters(&dead_letter_topic);
    let payloads: Vec<_> = kept.iter().map(|m| m.payload.clone()).collect();
    // two kept per topic: the oldest, "one", gave way
    assert_eq!(payloads, ["two", "three"]);
    for message in &kept {
        assert_eq!(
            message.headers.get_str(names::X_EVENT_ORIGINAL_TOPIC),
            Some(topic.as_str())
        );
        assert!(
            message
                .headers
                .get_str(names::X_EVENT_ERROR)
                .is_some_and(|e| e.contains("not for us")),
            "{message:?}"
        );
    }
    assert_eq!(
        broker.take_unclaimed_dead_letters(&dead_letter_topic).len(),
        2
    );
    assert!(broker.unclaimed_dead_letters(&dead_letter_topic).is_empty());
    broker.disconnect().await.expect("disconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_waiting_for_room_is_kept_when_the_last_reader_leaves() {
    let broker = MemoryBroker::builder().capacity(1).build();
    broker.connect().await.expect("connect");
    let topic = format!("{}.dlq", unique("left"));
    // a reader of the dead-letter topic that holds the first dead letter in its handler
    let hold = Arc::new(Semaphore::new(0));
    let (seen_tx, mut seen) = Collector::new(WAIT);
    let reader = broker
        .subscribe(
            &topic,
            SubscribeOptions::new().drain_timeout(Duration::from_millis(10)),
            handler_fn("holder", {
                let hold = hold.clone();
                move |d: Delivery| {
                    let (hold, seen_tx) = (hold.clone(), seen_tx.clone());
                    async move {
                        let _ = seen_tx.send(d.payload().clone());
                        let _ = hold.acquire().await;
                        Outcome::Ack
                    }
                }
            }),
        )
        .await
        .expect("subscribe");
    let dead_letter = |payload: &'static str| {
        Message::new(payload).with_header(names::X_EVENT_ERROR, "handler failed")
    };
    broker
        .publish(&topic, dead_letter("first"))
        .await
        .expect("publish");
    seen.until("the first in its handler", |s| s.len() == 1)
        .await;
    // the queue's one slot is taken: this publish waits for room
    let waiting = tokio::spawn({
        let broker = broker.clone();
        async move { broker.publish(&topic, dead_letter("second")).await }
    });
    let topic = reader.topic().to_owned();
    eventually("the second publish waits", || {
        broker.waiting_publishes(&topic) == 1
    })
    .await;
    // the only reader leaves (its handler abandoned after the drain timeout): the waiting
    // dead letter has no queue left, and is kept rather than lost
    reader.unsubscribe().await;
    waiting.await.unwrap().expect("published");
    let kept = broker.unclaimed_dead_letters(&topic);
    assert_eq!(
        kept.iter().map(|m| m.payload.clone()).collect::<Vec<_>>(),
        ["second"]
    );
    hold.add_permits(1);
    broker.disconnect().await.expect("disconnect");
}
