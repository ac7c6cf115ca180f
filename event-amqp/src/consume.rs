//! Consuming: topology per subscription, the [`DeliverySource`] and its [`Acknowledge`].
//!
//! Each subscription has its own channel (its `basic.qos` and acks are its own). When the
//! connection drops, the consumer stream ends; the source waits for the supervisor's next
//! session, declares its topology again and consumes again, without the delivery loop
//! noticing more than a pause. Acknowledgements carry the lapin acker of the channel that
//! delivered the message: an acker of a closed channel is poisoned and does nothing (the
//! broker redelivers those messages), so a stale delivery tag never reaches a new channel.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use event_core::backend::{Acknowledge, Backoff, DeliverySource, Incoming};
use event_core::broker::{BrokerError, Delivery};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Acker, Channel, Consumer};

use crate::BROKER_NAME;
use crate::connection::{CLOSE_TIMEOUT, Session, Shared, Wait};
use crate::error::AmqpBackendError;
use crate::wire;

/// What a subscription consumes, fixed at subscribe time.
#[derive(Debug)]
pub(crate) struct Spec {
    pub(crate) topic: Arc<str>,
    pub(crate) routing_key: ShortString,
    /// The durable queue of a queue group; `None` for broadcast (server-named).
    pub(crate) group_queue: Option<ShortString>,
    /// The dead-letter topic, and the durable queue that keeps its messages.
    pub(crate) dead_letter: ShortString,
    pub(crate) prefetch: u16,
}

/// A consumer on a live channel.
pub(crate) struct Attached {
    generation: u64,
    channel: Channel,
    consumer: Consumer,
}

/// Declares the subscription's queues and bindings on a new channel and starts consuming.
/// Resolves once the broker confirmed the consumer (`basic.consume-ok`).
pub(crate) async fn attach(
    shared: &Shared,
    session: &Session,
    spec: &Spec,
) -> Result<Attached, AmqpBackendError> {
    let channel = session.connection.create_channel().await?;
    match declare_and_consume(shared, &channel, spec).await {
        Ok(consumer) => Ok(Attached {
            generation: session.generation,
            channel,
            consumer,
        }),
        Err(error) => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, "attach failed".into()))
                .await;
            Err(error.into())
        }
    }
}

async fn declare_and_consume(
    shared: &Shared,
    channel: &Channel,
    spec: &Spec,
) -> Result<Consumer, lapin::Error> {
    let config = &shared.config;
    channel
        .basic_qos(spec.prefetch, BasicQosOptions::default())
        .await?;
    let durable = QueueDeclareOptions {
        durable: config.durable_queues,
        ..QueueDeclareOptions::default()
    };
    let queue = match &spec.group_queue {
        Some(name) => {
            channel
                .queue_declare(name.clone(), durable, config.queue_arguments.clone())
                .await?;
            name.clone()
        }
        None => channel
            .queue_declare(
                ShortString::default(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?
            .name()
            .clone(),
    };
    channel
        .queue_bind(
            queue.clone(),
            shared.exchange.clone(),
            spec.routing_key.clone(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    // Keep dead letters even when nobody subscribes to the dead-letter topic; this also makes
    // the dead-letter publish routable (it is mandatory).
    channel
        .queue_declare(
            spec.dead_letter.clone(),
            durable,
            config.queue_arguments.clone(),
        )
        .await?;
    channel
        .queue_bind(
            spec.dead_letter.clone(),
            shared.exchange.clone(),
            spec.dead_letter.clone(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .basic_consume(
            queue,
            ShortString::default(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
}

type Reattach = Pin<Box<dyn Future<Output = Option<Attached>> + Send>>;

/// Where a subscription's messages come from.
pub(crate) struct AmqpSource {
    shared: Arc<Shared>,
    spec: Arc<Spec>,
    attached: Option<Attached>,
    /// A reattachment in progress; kept across cancelled `next()` calls.
    reattaching: Option<Reattach>,
}

impl AmqpSource {
    pub(crate) fn new(shared: Arc<Shared>, spec: Arc<Spec>, attached: Attached) -> Self {
        AmqpSource {
            shared,
            spec,
            attached: Some(attached),
            reattaching: None,
        }
    }
}

/// Waits for the next usable session and attaches; retries with backoff. `None` once the
/// broker is closed.
async fn reattach(shared: Arc<Shared>, spec: Arc<Spec>, lost: u64) -> Option<Attached> {
    let mut backoff = Backoff::between(shared.config.reconnect_min, shared.config.reconnect_max);
    let since = Instant::now();
    loop {
        let session = match shared.wait_up(None).await {
            Wait::Up(session) => session,
            Wait::Closed | Wait::TimedOut => return None,
        };
        match attach(&shared, &session, &spec).await {
            Ok(attached) => {
                tracing::info!(
                    topic = %spec.topic,
                    generation = session.generation,
                    lost_generation = lost,
                    paused = ?since.elapsed(),
                    "subscription resumed"
                );
                return Some(attached);
            }
            Err(error) => {
                let wait = backoff.next_delay();
                let failures = backoff.failures();
                if session.is_usable() && (failures == 1 || failures.is_multiple_of(10)) {
                    tracing::warn!(
                        topic = %spec.topic,
                        failures,
                        error = %event_core::error_chain(&error),
                        "cannot resume the subscription; retrying in {wait:?}"
                    );
                }
                shared.kick();
                tokio::time::sleep(wait).await;
            }
        }
    }
}

impl DeliverySource for AmqpSource {
    type Acker = AmqpAcker;

    async fn next(&mut self) -> Option<Incoming<AmqpAcker>> {
        loop {
            if let Some(attached) = self.attached.as_mut() {
                // a Stream's next() is cancel-safe
                match attached.consumer.next().await {
                    Some(Ok(delivery)) => {
                        let generation = attached.generation;
                        return Some(self.incoming(generation, delivery));
                    }
                    Some(Err(error)) => {
                        tracing::debug!(topic = %self.spec.topic, %error, "consumer interrupted");
                    }
                    None => {
                        tracing::debug!(topic = %self.spec.topic, "consumer cancelled");
                    }
                }
                let lost = self.attached.take().expect("attached");
                self.shared.kick();
                if lost.channel.status().connected() {
                    // cancelled by the broker (queue deleted?) on a live channel: close it
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(
                            CLOSE_TIMEOUT,
                            lost.channel.close(200, "consumer cancelled".into()),
                        )
                        .await;
                    });
                }
                self.reattaching = Some(Box::pin(reattach(
                    self.shared.clone(),
                    self.spec.clone(),
                    lost.generation,
                )));
            }
            let reattaching = self.reattaching.as_mut()?;
            let attached = reattaching.await;
            self.reattaching = None;
            self.attached = Some(attached?);
        }
    }

    async fn close(mut self) {
        self.reattaching = None;
        if let Some(attached) = self.attached.take() {
            let tag = attached.consumer.tag();
            let _ = tokio::time::timeout(
                CLOSE_TIMEOUT,
                attached
                    .channel
                    .basic_cancel(tag, BasicCancelOptions::default()),
            )
            .await;
            // closing the channel returns what was prefetched but not handled to the queue
            let _ = tokio::time::timeout(
                CLOSE_TIMEOUT,
                attached.channel.close(200, "unsubscribed".into()),
            )
            .await;
        }
    }
}

impl AmqpSource {
    fn incoming(&self, generation: u64, delivery: lapin::message::Delivery) -> Incoming<AmqpAcker> {
        let lapin::message::Delivery {
            delivery_tag,
            routing_key,
            redelivered,
            properties,
            data,
            acker,
            ..
        } = delivery;
        let received = wire::from_amqp(routing_key.as_str(), redelivered, &properties, data);
        let delivery = Delivery::new(
            self.spec.topic.clone(),
            received.message,
            wire::delivered(delivery_tag, redelivered),
        )
        .with_attempt(received.attempt);
        Incoming {
            delivery,
            acker: AmqpAcker {
                acker,
                generation,
                shared: self.shared.clone(),
            },
        }
    }
}

/// Settles one delivery on the channel that delivered it.
#[derive(Debug)]
pub(crate) struct AmqpAcker {
    acker: Acker,
    /// The connection generation the delivery came from, for logs.
    generation: u64,
    shared: Arc<Shared>,
}

impl AmqpAcker {
    fn settle_error(&self, operation: &'static str, error: lapin::Error) -> BrokerError {
        self.shared.kick();
        BrokerError::Backend {
            broker: BROKER_NAME,
            operation,
            source: Box::new(AmqpBackendError::from(error)),
        }
    }

    fn stale(&self, operation: &'static str) {
        tracing::debug!(
            generation = self.generation,
            operation,
            "the channel that delivered this message is gone; the broker redelivers it"
        );
    }
}

impl Acknowledge for AmqpAcker {
    async fn ack(self) -> Result<(), BrokerError> {
        // a poisoned acker belongs to a closed channel: its tag must not be acked anywhere
        match tokio::time::timeout(CLOSE_TIMEOUT, self.acker.ack(BasicAckOptions::default())).await
        {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => {
                self.stale("ack");
                Ok(())
            }
            Ok(Err(error)) => Err(self.settle_error("ack", error)),
            Err(_) => Err(BrokerError::Timeout {
                broker: BROKER_NAME,
                operation: "ack",
                timeout: CLOSE_TIMEOUT,
            }),
        }
    }

    async fn nack(self, _delivery: Delivery) -> Result<(), BrokerError> {
        let requeue = BasicNackOptions {
            multiple: false,
            requeue: true,
        };
        match tokio::time::timeout(CLOSE_TIMEOUT, self.acker.nack(requeue)).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => {
                self.stale("nack");
                Ok(())
            }
            Ok(Err(error)) => Err(self.settle_error("nack", error)),
            Err(_) => Err(BrokerError::Timeout {
                broker: BROKER_NAME,
                operation: "nack",
                timeout: CLOSE_TIMEOUT,
            }),
        }
    }

    fn abandon(self, _delivery: Delivery) {
        // Best effort: requeue now. If this fails, closing the channel requeues it anyway.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let requeue = BasicNackOptions {
                    multiple: false,
                    requeue: true,
                };
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.acker.nack(requeue)).await;
            });
        }
    }
}
