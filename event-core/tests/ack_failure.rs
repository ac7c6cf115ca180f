//! An acknowledgement that fails is counted (`event_ack_failures_total`, by the broker error's
//! kind) and the loop goes on with the next message: a backend whose every ack fails, as when
//! its connection is gone.

use std::collections::VecDeque;
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

/// Delivers what was published before the subscription; every acknowledgement fails.
#[derive(Clone, Debug)]
struct Unacked {
    log: Arc<Mutex<Vec<(String, Message)>>>,
    lifecycle: Arc<Lifecycle>,
}

struct Source(VecDeque<Delivery>);
struct FailingAck;

impl Acknowledge for FailingAck {
    async fn ack(self) -> Result<(), BrokerError> {
        Err(BrokerError::Unavailable {
            broker: "unacked",
            address: "in-process".into(),
            waited: Duration::ZERO,
        })
    }
    async fn nack(self, _delivery: Delivery) -> Result<(), BrokerError> {
        Ok(())
    }
}

impl DeliverySource for Source {
    type Acker = FailingAck;
    async fn next(&mut self) -> Option<Incoming<FailingAck>> {
        match self.0.pop_front() {
            Some(delivery) => Some(Incoming {
                delivery,
                acker: FailingAck,
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
                        Delivery::new(topic, m.clone(), Position::sequence(i as u64 + 1))
                    });
            Ok(Source(deliveries.collect()))
        };
        self.lifecycle
            .subscribe(Arc::new(self.clone()), topic, options, handler, open)
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_acknowledgements_are_counted_and_the_loop_goes_on() {
    let metrics = testkit::metrics::install();
    let broker = Unacked {
        log: Arc::default(),
        lifecycle: Arc::new(Lifecycle::new("unacked", "in-process")),
    };
    broker.connect().await.unwrap();
    let topic = unique("unacked");
    for n in 0..3 {
        broker
            .publish(&topic, Message::new(n.to_string()))
            .await
            .unwrap();
    }
    let (tx, mut seen) = Collector::new(Duration::from_secs(10));
    let sub = broker
        .subscribe(
            &topic,
            SubscribeOptions::new(),
            handler_fn("counted", move |d: Delivery| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(d.payload().clone());
                    Outcome::Ack
                }
            }),
        )
        .await
        .unwrap();
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
