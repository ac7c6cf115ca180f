//! Publishing: a message becomes a record enqueued in librdkafka's producer queue, and its
//! publish resolves on the record's delivery report.

use std::time::{Duration, Instant};

use event_core::backend::go_micro;
use event_core::broker::{Broker, BrokerError, Message, PublishError, Receipt};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureRecord};

use crate::NAME;
use crate::broker::KafkaBroker;
use crate::error::backend;
use crate::wire::record_headers;

impl KafkaBroker {
    /// Enqueues the record; `Err(None)` when librdkafka's local queue is full.
    pub(crate) fn enqueue(
        &self,
        topic: &str,
        message: &Message,
    ) -> Result<DeliveryFuture, Option<BrokerError>> {
        let envelope;
        let mut record = if self.inner.config.go_micro_envelope {
            // go-micro reads the value and nothing else
            envelope = go_micro::to_envelope(topic, message);
            FutureRecord::to(topic).payload(&envelope[..])
        } else {
            FutureRecord::to(topic)
                .payload(&message.payload[..])
                .headers(record_headers(message))
        };
        if let Some(key) = &message.key {
            record = record.key(&key[..]);
        }
        match self.inner.producer.send_result(record) {
            Ok(delivery) => Ok(delivery),
            Err((error, _)) if is_queue_full(&error) => Err(None),
            Err((error, _)) => Err(Some(backend("publish", error))),
        }
    }

    /// A publish that has to wait first: for the topic's metadata, or for room in the queue.
    pub(crate) async fn publish_waiting(
        &self,
        topic: &str,
        message: Message,
    ) -> Result<Receipt, PublishError> {
        if !self.is_known_topic(topic)
            && let Err(error) = self.partitions(topic).await
        {
            return Err(PublishError::new(topic, message, error));
        }
        let deadline = Instant::now() + self.inner.config.delivery_timeout;
        let mut wait = Duration::from_millis(1);
        let delivery = loop {
            match self.enqueue(topic, &message) {
                Ok(delivery) => break delivery,
                Err(None) if Instant::now() < deadline => {
                    // the local queue is full: wait for delivery reports to make room
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_millis(50));
                }
                Err(None) => {
                    return Err(PublishError::new(
                        topic,
                        message,
                        BrokerError::Timeout {
                            broker: NAME,
                            operation: "waiting for room in the producer queue",
                            timeout: self.inner.config.delivery_timeout,
                        },
                    ));
                }
                Err(Some(error)) => return Err(PublishError::new(topic, message, error)),
            }
        };
        self.report(topic, message, delivery).await
    }

    /// Waits for the delivery report of an enqueued record.
    pub(crate) async fn report(
        &self,
        topic: &str,
        message: Message,
        delivery: DeliveryFuture,
    ) -> Result<Receipt, PublishError> {
        match delivery.await {
            Ok(Ok(report)) => {
                let receipt = Receipt::new(crate::wire::position(report.partition, report.offset));
                Ok(match message.headers.message_id_value() {
                    Some(id) => receipt.with_message_id(id.clone()),
                    None => receipt,
                })
            }
            Ok(Err((error, _))) => {
                Err(PublishError::new(topic, message, backend("publish", error)))
            }
            Err(_cancelled) => Err(PublishError::new(
                topic,
                message,
                BrokerError::Closed {
                    broker: NAME,
                    address: self.address(),
                },
            )),
        }
    }
}

fn is_queue_full(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
    )
}
