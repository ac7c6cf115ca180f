//! The memory broker end to end: batches, waits for a backlog, stops, the per-thread topic cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::pacing::BACKLOG;
use super::*;
use crate::broker::{Delivery, Message, SubscribeOptions, Subscription};

impl MemoryBroker {
    /// Waits for a backlog the subscribers of `topic` started.
    fn batch_waits(&self, topic: &str) -> usize {
        self.topic(topic).map_or(0, |topic| {
            let queues = topic.snapshot();
            queues
                .iter()
                .map(|q| q.batch_waits.load(Ordering::Relaxed))
                .sum()
        })
    }
}

/// A subscriber to "burst" whose handler passes each payload on, then holds until a
/// permit of the returned semaphore lets it finish.
async fn held_subscriber(
    broker: &MemoryBroker,
) -> (
    Arc<tokio::sync::Semaphore>,
    tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>,
    Subscription,
) {
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let (tx, received) = tokio::sync::mpsc::unbounded_channel();
    let subscription = broker
        .subscribe(
            "burst",
            SubscribeOptions::new(),
            crate::broker::handler_fn("collect", {
                let release = release.clone();
                move |delivery: Delivery| {
                    let (tx, release) = (tx.clone(), release.clone());
                    async move {
                        let _ = tx.send(delivery.payload().clone());
                        release.acquire().await.expect("open").forget();
                        crate::broker::Outcome::Ack
                    }
                }
            }),
        )
        .await
        .expect("subscribe");
    (release, received, subscription)
}

/// Sends a burst that keeps the held subscriber busy and checks that every message
/// arrives; returns how often the subscriber waited for a backlog.
async fn burst(
    broker: &MemoryBroker,
    release: &tokio::sync::Semaphore,
    received: &mut tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>,
) -> usize {
    // the first message is fetched alone and held; the burst queues behind it, so the
    // fetches after it find 3 * BACKLOG - 1, then 64 fewer each time: with a batch wait,
    // the first under BACKLOG waits (and ends on the pause), the next skips its wait
    let total = 3 * BACKLOG;
    send(broker, "burst", "0".to_owned()).await;
    assert_eq!(next(received).await, "0");
    for i in 1..total {
        send(broker, "burst", format!("{i}")).await;
    }
    release.add_permits(total);
    for i in 1..total {
        assert_eq!(next(received).await, format!("{i}"));
    }
    broker.batch_waits("burst")
}

/// With a batch wait far longer than the test may run, a subscriber kept busy by a burst
/// waits for a backlog once, and still gets the burst's last messages when the publisher
/// pauses; a client that waits for each answer gets every answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_batch_wait_holds_back_neither_a_burst_nor_a_round_trip() {
    let broker = MemoryBroker::builder()
        .batch_wait(Duration::from_secs(600))
        .build();
    let (release, mut received, _subscription) = held_subscriber(&broker).await;
    assert_eq!(
        burst(&broker, &release, &mut received).await,
        1,
        "waits for a backlog"
    );
    for i in 0..20 {
        release.add_permits(1);
        send(&broker, "burst", format!("round trip {i}")).await;
        assert_eq!(next(&mut received).await, format!("round trip {i}"));
    }
}

/// Without a batch wait set, the same burst never makes the subscriber wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_busy_subscriber_never_waits_for_a_backlog() {
    let broker = MemoryBroker::new();
    let (release, mut received, _subscription) = held_subscriber(&broker).await;
    assert_eq!(burst(&broker, &release, &mut received).await, 0);
}

/// A subscription that has messages waiting stops fetching as soon as it is told to, by
/// an unsubscribe or by the broker's shutdown: the message being handled finishes, the
/// ones it took with it are not handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_subscription_stops_after_the_message_in_hand() {
    for by_shutdown in [false, true] {
        let broker = MemoryBroker::new();
        let handled = Arc::new(AtomicUsize::new(0));
        let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let subscription = broker
            .subscribe(
                "stop",
                SubscribeOptions::new(),
                crate::broker::handler_fn("blocks", {
                    let (handled, release) = (handled.clone(), release.clone());
                    move |_: Delivery| {
                        let (handled, release) = (handled.clone(), release.clone());
                        let started_tx = started_tx.clone();
                        async move {
                            let _ = started_tx.send(());
                            release.acquire().await.expect("open").forget();
                            handled.fetch_add(1, Ordering::SeqCst);
                            crate::broker::Outcome::Ack
                        }
                    }
                }),
            )
            .await
            .expect("subscribe");
        for i in 0..50 {
            send(&broker, "stop", format!("{i}")).await;
        }
        tokio::time::timeout(Duration::from_secs(5), started.recv())
            .await
            .expect("the first message is handled")
            .expect("handler alive");
        // the first poll signals the stop; the handler still waits, so the drain does
        let mut stopping: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = if by_shutdown {
            Box::pin(async {
                broker.disconnect().await.expect("disconnect");
                drop(subscription);
            })
        } else {
            Box::pin(async {
                subscription.unsubscribe().await;
            })
        };
        assert!(futures_util::poll!(stopping.as_mut()).is_pending());
        // every later message is ready in the subscription's batch or its queue: only a
        // stop read before the next fetch keeps the loop from handling them
        release.add_permits(50);
        tokio::time::timeout(Duration::from_secs(5), stopping)
            .await
            .expect("the drain ends");
        assert_eq!(
            handled.load(Ordering::SeqCst),
            1,
            "stopped by {}",
            if by_shutdown {
                "shutdown"
            } else {
                "unsubscribe"
            }
        );
    }
}

/// Collects the payloads a subscription to `topic` on `broker` receives.
async fn collect(
    broker: &MemoryBroker,
    topic: &str,
) -> (
    Subscription,
    tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let subscription = broker
        .subscribe(
            topic,
            SubscribeOptions::new(),
            crate::broker::handler_fn("collect", move |delivery: Delivery| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(delivery.payload().clone());
                    crate::broker::Outcome::Ack
                }
            }),
        )
        .await
        .expect("subscribe");
    (subscription, rx)
}

/// The next payload `rx` receives; fails the test after 5 s.
async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>) -> bytes::Bytes {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a message arrives within 5 s")
        .expect("the subscription is alive")
}

/// Publishes `payload` to `topic` on `broker`.
async fn send(broker: &MemoryBroker, topic: &str, payload: String) {
    broker
        .publish(topic, Message::new(payload))
        .await
        .expect("publish");
}

/// The per-thread topic cache ([`RecentTopics`]) never sends a message to the wrong
/// broker or topic: one thread publishes in turn to one topic name on two brokers, to
/// many topics, and to a broker made after another, which the cache names under the same
/// topic, was dropped.
#[tokio::test(flavor = "current_thread")]
async fn publishes_reach_their_own_broker_and_topic_through_the_thread_cache() {
    let first = MemoryBroker::new();
    let second = MemoryBroker::new();
    let (_a, mut on_first) = collect(&first, "same").await;
    let (_b, mut on_second) = collect(&second, "same").await;
    for round in 0..3 {
        send(&first, "same", format!("first {round}")).await;
        send(&second, "same", format!("second {round}")).await;
    }
    for round in 0..3 {
        assert_eq!(next(&mut on_first).await, format!("first {round}"));
        assert_eq!(next(&mut on_second).await, format!("second {round}"));
    }

    let topics: Vec<String> = (0..20).map(|i| format!("t{i}")).collect();
    let mut receivers = Vec::new();
    for topic in &topics {
        receivers.push(collect(&first, topic).await);
    }
    for round in 0..3 {
        for topic in &topics {
            send(&first, topic, format!("{topic} {round}")).await;
        }
    }
    for (topic, (_, rx)) in topics.iter().zip(&mut receivers) {
        for round in 0..3 {
            assert_eq!(next(rx).await, format!("{topic} {round}"));
        }
    }

    // the cache names `first`'s "same" when `first` is dropped; a new broker's "same"
    // must not be taken for it
    send(&first, "same", "first, last".to_owned()).await;
    assert_eq!(next(&mut on_first).await, "first, last");
    drop(receivers);
    first.disconnect().await.expect("disconnect");
    drop(first);
    let third = MemoryBroker::new();
    let (_c, mut on_third) = collect(&third, "same").await;
    send(&third, "same", "third".to_owned()).await;
    assert_eq!(next(&mut on_third).await, "third");
    send(&second, "same", "second, last".to_owned()).await;
    assert_eq!(next(&mut on_second).await, "second, last");
}

#[tokio::test]
async fn a_process_wide_broker_stays_open_until_its_last_user_disconnects() {
    let name = format!("two-users-{}", std::process::id());
    let (a, b) = (MemoryBroker::shared(&name), MemoryBroker::shared(&name));
    a.connect().await.unwrap();
    b.connect().await.unwrap();
    a.disconnect().await.unwrap();
    // one service's shutdown leaves the other's broker open
    b.publish("orders", Message::new("still open"))
        .await
        .expect("open");
    // a handle that never connected, or one that disconnected already, closes nothing
    MemoryBroker::shared(&name).disconnect().await.unwrap();
    a.disconnect().await.unwrap();
    a.connect().await.unwrap();
    a.connect().await.unwrap();
    a.disconnect().await.unwrap();
    b.publish("orders", Message::new("still open"))
        .await
        .expect("open");
    b.disconnect().await.unwrap();
    let refused = b.publish("orders", Message::new("closed")).await;
    assert!(
        matches!(
            refused.unwrap_err().broker_error(),
            BrokerError::Closed { .. }
        ),
        "closed by its last user"
    );
    // two services given clones of one handle each keep it open
    let shared = MemoryBroker::shared(&format!("{name}-clones"));
    let (one, two) = (shared.clone(), shared.clone());
    one.connect().await.unwrap();
    two.connect().await.unwrap();
    one.disconnect().await.unwrap();
    two.publish("orders", Message::new("open"))
        .await
        .expect("open");
    two.disconnect().await.unwrap();
    assert!(two.publish("orders", Message::new("x")).await.is_err());
    // a broker of its own closes at its disconnect, as before
    let own = MemoryBroker::new();
    own.connect().await.unwrap();
    own.connect().await.unwrap();
    own.disconnect().await.unwrap();
    assert!(own.publish("orders", Message::new("x")).await.is_err());
}

/// A connected broker whose held subscriber has a message in its handler, and a disconnect
/// of it given up on meanwhile (its future dropped, as a caller's timeout does): the semaphore
/// that lets the handler finish, and the subscription.
async fn a_disconnect_given_up_on() -> (MemoryBroker, Arc<tokio::sync::Semaphore>, Subscription) {
    let broker = MemoryBroker::new();
    broker.connect().await.unwrap();
    let (release, mut received, subscription) = held_subscriber(&broker).await;
    send(&broker, "burst", "held".to_owned()).await;
    assert_eq!(next(&mut received).await, "held");
    {
        let mut closing = std::pin::pin!(broker.disconnect());
        let polled = futures_util::poll!(closing.as_mut());
        assert!(polled.is_pending(), "the handler still holds its message");
    }
    (broker, release, subscription)
}

/// Connects `broker` and checks that a new subscription gets a message.
async fn opens_again(broker: &MemoryBroker) {
    broker.connect().await.unwrap();
    let (release, mut received, _subscription) = held_subscriber(broker).await;
    send(broker, "burst", "again".to_owned()).await;
    assert_eq!(next(&mut received).await, "again");
    release.add_permits(1);
}

/// A disconnect given up on leaves the subscription draining; the next disconnect waits for
/// the drain, then closes, and the broker connects again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_given_up_on_is_finished_by_the_next() {
    let (broker, release, _subscription) = a_disconnect_given_up_on().await;
    let mut finishing = std::pin::pin!(broker.disconnect());
    let polled = futures_util::poll!(finishing.as_mut());
    assert!(
        polled.is_pending(),
        "the second disconnect waits for the drain"
    );
    release.add_permits(1);
    finishing.await.expect("disconnects");
    let refused = broker.publish("burst", Message::new("closed")).await;
    assert!(
        matches!(
            refused.unwrap_err().broker_error(),
            BrokerError::Closed { .. }
        ),
        "the second disconnect finished the close"
    );
    opens_again(&broker).await;
}

/// A disconnect given up on, whose subscription has drained since: a connect opens the
/// broker again, with no second disconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_after_a_disconnect_given_up_on_opens_once_drained() {
    let (broker, release, subscription) = a_disconnect_given_up_on().await;
    release.add_permits(1);
    subscription.unsubscribe().await;
    opens_again(&broker).await;
}
