//! What the delivery loop does with what a backend's acknowledger says, on a toy backend:
//! an acknowledgement that fails is counted (`event_ack_failures_total`, by the broker error's
//! kind) and the loop goes on with the next message (every ack fails, as when the connection
//! is gone); a failed message the broker took away (`Acknowledge::owned` is `false`, as for a
//! revoked Kafka partition) is given back, neither retried nor dead-lettered; a message the
//! broker gave up delivering (`Delivery::undeliverable`, as NATS hands over one past its
//! `max_deliver`) is dead-lettered without a handler run.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_core::backend::{
    Acknowledge, Capabilities, DeliverySource, Incoming, Lifecycle, Position,
};
use event_core::broker::{
    Broker, BrokerError, Delivery, Message, Outcome, PublishError, RawHandler, Receipt,
    SubscribeOptions, Subscription, handler_fn,
};
use event_core::telemetry::{label, metric};
use event_core::testkit::{self, Collector, unique};

/// Delivers what was published before the subscription, once; its acknowledgements do what
/// `acks` says.
#[derive(Clone, Debug)]
struct Unacked {
    log: Arc<Mutex<Vec<(String, Message)>>>,
    lifecycle: Arc<Lifecycle>,
    acks: Arc<Acks>,
}

/// How the toy's acknowledgements behave, and what they were asked.
#[derive(Debug, Default)]
struct Acks {
    fail: AtomicBool,
    taken_away: AtomicBool,
    acks: AtomicUsize,
    nacks: AtomicUsize,
}

struct Source(VecDeque<Delivery>, Arc<Acks>);
struct Ack(Arc<Acks>);

impl Acknowledge for Ack {
    async fn ack(self) -> Result<(), BrokerError> {
        self.0.acks.fetch_add(1, Ordering::AcqRel);
        if !self.0.fail.load(Ordering::Acquire) {
            return Ok(());
        }
        Err(BrokerError::Unavailable {
            broker: "unacked",
            address: "in-process".into(),
            waited: Duration::ZERO,
        })
    }
    async fn nack(self, _delivery: Delivery) -> Result<(), BrokerError> {
        self.0.nacks.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
    fn owned(&self) -> bool {
        !self.0.taken_away.load(Ordering::Acquire)
    }
}

impl DeliverySource for Source {
    type Acker = Ack;
    async fn next(&mut self) -> Option<Incoming<Ack>> {
        match self.0.pop_front() {
            Some(delivery) => Some(Incoming {
                delivery,
                acker: Ack(self.1.clone()),
            }),
            None => std::future::pending().await,
        }
    }
    async fn close(self) {}
}

#[async_trait::async_trait]
impl Broker for Unacked {
    fn name(&self) -> &'static str {
        "unacked"
    }
    fn address(&self) -> String {
        "in-process".into()
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::none()
    }
    async fn connect(&self) -> Result<(), BrokerError> {
        self.lifecycle.open();
        Ok(())
    }
    async fn disconnect(&self) -> Result<(), BrokerError> {
        self.lifecycle.close().await;
        Ok(())
    }
    async fn publish(&self, topic: &str, message: Message) -> Result<Receipt, PublishError> {
        let mut log = self.log.lock().unwrap();
        log.push((topic.to_owned(), message));
        Ok(Receipt::new(Position::sequence(log.len() as u64)))
    }
    async fn subscribe(
        &self,
        topic: &str,
        options: SubscribeOptions,
        handler: Arc<dyn RawHandler>,
    ) -> Result<Subscription, BrokerError> {
        let open = async {
            let log = self.log.lock().unwrap();
            let deliveries =
                log.iter()
                    .enumerate()
                    .filter(|(_, (t, _))| t == topic)
                    .map(|(i, (_, m))| {
                        let delivery =
                            Delivery::new(topic, m.clone(), Position::sequence(i as u64 + 1));
                        if m.payload == "given up" {
                            delivery.undeliverable("delivered 5 times without an outcome")
                        } else {
                            delivery
                        }
                    });
            Ok(Source(deliveries.collect(), self.acks.clone()))
        };
        self.lifecycle
            .subscribe(Arc::new(self.clone()), topic, options, handler, open)
            .await
    }
}

impl Unacked {
    fn new() -> Self {
        Unacked {
            log: Arc::default(),
            lifecycle: Arc::new(Lifecycle::new("unacked", "in-process")),
            acks: Arc::default(),
        }
    }
}

/// A subscription to `topic` whose handler, `recorder`, records each payload and acks.
async fn recorded(broker: &Unacked, topic: &str) -> (Subscription, Collector<bytes::Bytes>) {
    let (tx, seen) = Collector::new(Duration::from_secs(10));
    let sub = broker
        .subscribe(
            topic,
            SubscribeOptions::new(),
            handler_fn("recorder", move |d: Delivery| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(d.payload().clone());
                    Outcome::Ack
                }
            }),
        )
        .await
        .unwrap();
    (sub, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_acknowledgements_are_counted_and_the_loop_goes_on() {
    let metrics = testkit::metrics::install();
    let broker = Unacked::new();
    broker.acks.fail.store(true, Ordering::Release);
    broker.connect().await.unwrap();
    let topic = unique("unacked");
    for n in 0..3 {
        broker
            .publish(&topic, Message::new(n.to_string()))
            .await
            .unwrap();
    }
    let (sub, mut seen) = recorded(&broker, &topic).await;
    let handled = seen.until("every message handled", |s| s.len() == 3).await;
    assert_eq!(handled, ["0", "1", "2"]);
    sub.unsubscribe().await;
    let failures = metrics.counter(
        metric::ACK_FAILURES,
        &[
            (label::TOPIC, topic.as_str()),
            (label::ERROR_KIND, "unavailable"),
        ],
    );
    assert_eq!(failures, 3);
    broker.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_message_taken_away_is_given_back_not_retried_nor_dead_lettered() {
    let broker = Unacked::new();
    broker.connect().await.unwrap();
    let topic = unique("taken");
    broker.publish(&topic, Message::new("0")).await.unwrap();
    broker.publish(&topic, Message::new("1")).await.unwrap();
    let (tx, mut seen) = Collector::new(Duration::from_secs(10));
    let sub = broker
        .subscribe(
            &topic,
            SubscribeOptions::new().retry(event_core::broker::RetryPolicy::exponential(
                5,
                Duration::from_millis(1),
            )),
            handler_fn("failing", {
                let acks = broker.acks.clone();
                move |d: Delivery| {
                    let (tx, acks) = (tx.clone(), acks.clone());
                    async move {
                        let _ = tx.send(d.payload().clone());
                        if d.payload() == "0" {
                            // its partition goes to another member while it runs
                            acks.taken_away.store(true, Ordering::Release);
                            Outcome::retry("failed")
                        } else {
                            Outcome::dead_letter("not for us")
                        }
                    }
                }
            }),
        )
        .await
        .unwrap();
    // "0" runs once and is given back; "1", taken away too by then, is not dead-lettered
    let handled = seen.until("both ran", |s| s.len() == 2).await;
    assert_eq!(handled, ["0", "1"]);
    sub.unsubscribe().await;
    assert_eq!(broker.acks.nacks.load(Ordering::Acquire), 2);
    let log = broker.log.lock().unwrap();
    assert!(
        log.iter().all(|(t, _)| *t == topic),
        "nothing was dead-lettered: {:?}",
        log.iter().map(|(t, _)| t).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_broker_gave_up_on_is_dead_lettered_without_a_handler_run() {
    let broker = Unacked::new();
    broker.connect().await.unwrap();
    let topic = unique("given-up");
    let mut given_up = Message::new("given up");
    given_up.headers.append("tenant", "t-1");
    broker.publish(&topic, given_up).await.unwrap();
    broker.publish(&topic, Message::new("next")).await.unwrap();
    let (sub, mut seen) = recorded(&broker, &topic).await;
    let handled = seen
        .until("the next message handled", |s| !s.is_empty())
        .await;
    assert_eq!(
        handled,
        ["next"],
        "no handler ran on the message given up on"
    );
    sub.unsubscribe().await;
    let log = broker.log.lock().unwrap();
    let dead: Vec<&Message> = log
        .iter()
        .filter(|(t, _)| *t == format!("{topic}.dlq"))
        .map(|(_, m)| m)
        .collect();
    assert_eq!(dead.len(), 1, "one dead letter");
    let headers = &dead[0].headers;
    assert_eq!(dead[0].payload, "given up");
    assert_eq!(
        headers.get_str("tenant"),
        Some("t-1"),
        "its own headers kept"
    );
    assert_eq!(headers.get_str("x-event-error-kind"), Some("undeliverable"));
    assert_eq!(
        headers.get_str("x-event-error"),
        Some("delivered 5 times without an outcome")
    );
    assert_eq!(headers.get_str("x-event-handler"), Some("recorder"));
    assert_eq!(
        (
            broker.acks.acks.load(Ordering::Acquire),
            broker.acks.nacks.load(Ordering::Acquire)
        ),
        (2, 0),
        "both acknowledged, the one given up on after its dead letter"
    );
}
