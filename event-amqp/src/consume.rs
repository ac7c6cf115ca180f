//! Consuming: topology per subscription, the [`DeliverySource`] and its [`Acknowledge`].
//!
//! Each subscription has its own channel (its `basic.qos` and acks are its own). When the
//! connection drops, the consumer stream ends; the source waits for the supervisor's next
//! session, declares its topology again and consumes again, without the delivery loop
//! noticing more than a pause. Acknowledgements go to the channel's settle worker
//! ([`crate::settle`]) with the lapin acker of the channel that delivered the message: an
//! acker of a closed channel is poisoned and does nothing (the broker redelivers those
//! messages), so a stale delivery tag never reaches a new channel.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use event_core::backend::{Acknowledge, Backoff, DeliverySource, Incoming};
use event_core::broker::{BrokerError, Delivery};
use futures_util::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Acker, Channel, Consumer};

use crate::BROKER_NAME;
use crate::connection::{CLOSE_TIMEOUT, Session, Shared, Wait};
use crate::error::AmqpBackendError;
use crate::settle::{Settle, SettleQueue, Settler, Verdict};
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
    settler: Settler,
}

impl Attached {
    /// Sends what is still queued for acknowledgement, cancels the consumer and closes the
    /// channel, which returns what was prefetched but not handled to the queue.
    async fn close(self, reason: &'static str) {
        let Attached {
            channel,
            consumer,
            settler,
            ..
        } = self;
        if !channel.status().connected() {
            // nothing can be sent on it any more; its worker ends with the last acker
            return;
        }
        settler.finish().await;
        let _ = tokio::time::timeout(
            CLOSE_TIMEOUT,
            channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()),
        )
        .await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, reason.into())).await;
    }
}

/// Declares the subscription's queues and bindings on a new channel and starts consuming.
/// Resolves once the broker confirmed the consumer (`basic.consume-ok`).
pub(crate) async fn attach(
    shared: &Arc<Shared>,
    session: &Session,
    spec: &Spec,
) -> Result<Attached, AmqpBackendError> {
    let channel = session.connection.create_channel().await?;
    match declare_and_consume(shared, &channel, spec).await {
        Ok(consumer) => Ok(Attached {
            generation: session.generation,
            channel,
            consumer,
            settler: Settler::start(shared.clone(), spec.topic.clone(), spec.prefetch),
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
                        let queue = attached.settler.queue();
                        return Some(self.incoming(generation, queue, delivery));
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
                let generation = lost.generation;
                // cancelled by the broker (queue deleted?) on a live channel: close it once
                // the handlers still running on its messages have settled them
                tokio::spawn(lost.close("consumer cancelled"));
                self.reattaching = Some(Box::pin(reattach(
                    self.shared.clone(),
                    self.spec.clone(),
                    generation,
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
            attached.close("unsubscribed").await;
        }
    }
}

impl AmqpSource {
    fn incoming(
        &self,
        generation: u64,
        queue: SettleQueue,
        delivery: lapin::message::Delivery,
    ) -> Incoming<AmqpAcker> {
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
                tag: delivery_tag,
                acker,
                queue,
                generation,
            },
        }
    }
}

/// Settles one delivery on the channel that delivered it, through the channel's settle
/// worker: the delivery loop only waits for the outcome to be queued.
#[derive(Debug)]
pub(crate) struct AmqpAcker {
    tag: u64,
    acker: Acker,
    queue: SettleQueue,
    /// The connection generation the delivery came from, for logs.
    generation: u64,
}

impl AmqpAcker {
    fn queue(self, verdict: Verdict) -> Result<(), BrokerError> {
        let AmqpAcker {
            tag,
            acker,
            queue,
            generation,
        } = self;
        let operation = match verdict {
            Verdict::Ack => "ack",
            Verdict::Requeue => "nack",
        };
        queue
            .record(Settle {
                tag,
                acker,
                verdict,
            })
            .map_err(|gone| {
                // the worker lives as long as an acker of its channel: it is gone only if
                // it panicked, and the broker redelivers when the channel closes
                tracing::debug!(generation, operation, "the channel's settle worker is gone");
                BrokerError::Backend {
                    broker: BROKER_NAME,
                    operation,
                    source: Box::new(gone),
                }
            })
    }
}

impl Acknowledge for AmqpAcker {
    async fn ack(self) -> Result<(), BrokerError> {
        self.queue(Verdict::Ack)
    }

    async fn nack(self, _delivery: Delivery) -> Result<(), BrokerError> {
        self.queue(Verdict::Requeue)
    }

    fn abandon(self, _delivery: Delivery) {
        // requeued now; if the worker is gone, closing the channel requeues it
        let _ = self.queue(Verdict::Requeue);
    }
}
