//! Consuming: partition assignment, per-partition (or per-key) lanes, and offsets that never
//! pass an unfinished message.
//!
//! A poller thread of its own reads records from librdkafka and files each under its
//! partition; librdkafka's rebalance callbacks run on it too, so a revoke can wait there for
//! the revoked partitions' handlers without blocking an async worker. A record
//! goes to the ready queue (where the core delivery loop picks it up) only when its lane is
//! free: one lane per partition, or one per key within a partition with
//! [`parallel_keys`](crate::KafkaBrokerBuilder::parallel_keys). So order per partition (per
//! key) holds whatever the subscription's concurrency, while different partitions run in
//! parallel. Every received offset is *unfinished* until its handler's outcome; the offset
//! stored for commit is the lowest unfinished one (or the next one to fetch), so a commit
//! never skips a message that is still in a handler, in a retry backoff or waiting in a lane.
//!
//! **Backpressure per partition**: when [`max_buffered_per_partition`] records of one
//! partition wait for a handler and do not drain to half of that within [`PAUSE_GRACE`] (a
//! burst from one fetch does), that partition alone is paused (librdkafka stops fetching it)
//! until half of them are taken; the other partitions keep flowing (during the grace their
//! records wait in librdkafka: the poller waits, as reading on is what would fill the
//! partition further). So a stalled key holds its
//! own partition, never the subscription.
//!
//! **Revocation waits for in-flight work**: when a rebalance takes partitions away, their
//! records not yet handed to a handler are dropped (the next owner reads them), the records in
//! a handler or a retry backoff get [`revoke_timeout`] to finish, what finished is committed,
//! and only then are the partitions let go. A record of theirs still in a handler after that
//! is the next owner's: if its handler fails, it is neither retried nor dead-lettered here
//! (its acker is no longer [owned](event_core::backend::Acknowledge::owned)). Eager (`range`, `roundrobin`) and cooperative
//! (`cooperative-sticky`) assignment both work; with cooperative assignment only the
//! partitions that move are revoked: the others stay assigned, and their records waiting
//! here stay in line (librdkafka drops what it fetched ahead of them while a rebalance
//! runs, and fetches it again after), though no new records of theirs are filed while the
//! poller waits for the revoked partitions' handlers.
//!
//! [`max_buffered_per_partition`]: crate::KafkaBrokerBuilder::max_buffered_per_partition
//! [`revoke_timeout`]: crate::KafkaBrokerBuilder::revoke_timeout
//! [`PAUSE_GRACE`]: poll::PAUSE_GRACE
//!
//! Every librdkafka statistics report (`statistics.interval.ms`, see
//! [`statistics_interval`](crate::KafkaBrokerBuilder::statistics_interval)) updates the
//! [`CONSUMER_LAG`] gauge of each partition the subscription holds: the partition's end offset
//! minus the offset it would commit, so the messages not finished yet.
//!
//! [`CONSUMER_LAG`]: event_core::telemetry::metric::CONSUMER_LAG
//!
//! The module is split by concept: the bookkeeping of partitions, lanes and offsets in
//! `state`, the poller thread and librdkafka's rebalance and statistics callbacks in `poll`;
//! the start of a subscription, its [`DeliverySource`] and its [`Acknowledge`] are here.

mod poll;
mod state;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use event_core::backend::{Acknowledge, DeliverySource, Incoming};
use event_core::broker::{BrokerError, Delivery, SubscribeOptions};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use self::poll::{SubscriptionContext, poll, watermarks};
use self::state::{ConsumerSettings, Ready, Shared};
use crate::NAME;
use crate::broker::{KafkaBroker, blocking};
use crate::error::{KafkaBackendError, backend};

/// The consumer type of one subscription.
type KafkaConsumer = BaseConsumer<SubscriptionContext>;

impl KafkaBroker {
    pub(crate) async fn start_subscription(
        &self,
        topic: &str,
        options: &SubscribeOptions,
        partitions: Vec<i32>,
    ) -> Result<KafkaSource, BrokerError> {
        let config = &self.inner.config;
        let settings = ConsumerSettings {
            topic: Arc::from(topic),
            group: options.queue_name().map(str::to_owned),
            start_from: options.start_position(),
            parallel_keys: config.parallel_keys,
            max_buffered: config.max_buffered_per_partition,
            operation_timeout: config.operation_timeout,
            revoke_timeout: config.revoke_timeout,
            go_micro_envelope: config.go_micro_envelope,
        };
        let shared = Shared::new(settings.clone());
        // librdkafka needs a group id even for self-assigned partitions; a broadcast reader
        // gets a unique one and never commits with it
        let client_group = match &settings.group {
            Some(group) => group.clone(),
            None => format!(
                "event-broadcast-{}-{:016x}",
                config.client_id,
                fastrand::u64(..)
            ),
        };
        let mut client = config.consumer_config(Some(&client_group), settings.group.is_some());
        if matches!(
            options.start_position(),
            event_core::broker::StartFrom::Earliest
        ) {
            client.set("auto.offset.reset", "earliest");
        }
        let consumer: KafkaConsumer = client
            .create_with_context(SubscriptionContext {
                shared: shared.clone(),
            })
            .map_err(|source| BrokerError::Backend {
                broker: NAME,
                operation: "create consumer",
                source: Box::new(KafkaBackendError::Config { source }),
            })?;
        let consumer = Arc::new(consumer);

        match &settings.group {
            Some(_) => {
                if let Err(error) = consumer.subscribe(&[topic]) {
                    let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
                    return Err(backend("subscribe", error));
                }
            }
            None => {
                // broadcast: read every partition from its end (or its beginning)
                let c = consumer.clone();
                let t = topic.to_owned();
                let start_from = options.start_position();
                let timeout = config.operation_timeout;
                let starts = blocking("read watermarks", move || {
                    let consumer = c;
                    let c = &consumer;
                    let mut tpl = TopicPartitionList::new();
                    let mut starts = Vec::with_capacity(partitions.len());
                    for p in partitions {
                        let (low, high) = watermarks(c, &t, p, timeout)?;
                        let start = match start_from {
                            event_core::broker::StartFrom::Earliest => low,
                            _ => high,
                        };
                        tpl.add_partition_offset(&t, p, Offset::Offset(start))?;
                        starts.push((p, Some(start)));
                    }
                    c.assign(&tpl)?;
                    Ok::<_, KafkaError>(starts)
                })
                .await?
                .map_err(|e| backend("assign partitions", e));
                let starts = match starts {
                    Ok(starts) => starts,
                    Err(error) => {
                        // closing a consumer blocks: not on an async worker
                        let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
                        return Err(error);
                    }
                };
                shared.assigned(starts);
            }
        }

        let source = match KafkaSource::start(consumer.clone(), shared) {
            Ok(source) => source,
            Err(error) => {
                let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
                return Err(BrokerError::Backend {
                    broker: NAME,
                    operation: "start the consumer's poller thread",
                    source: Box::new(error),
                });
            }
        };
        drop(consumer);
        if settings.group.is_some() && !source.wait_assigned(config.join_timeout).await {
            DeliverySource::close(source).await;
            return Err(BrokerError::Timeout {
                broker: NAME,
                operation: "joining the consumer group",
                timeout: config.join_timeout,
            });
        }
        Ok(source)
    }
}

/// The [`DeliverySource`] of one Kafka subscription.
pub(crate) struct KafkaSource {
    consumer: Arc<KafkaConsumer>,
    shared: Arc<Shared>,
    poller: Option<std::thread::JoinHandle<()>>,
    stop_poller: Arc<AtomicBool>,
}

impl KafkaSource {
    /// Starts the poller thread of `consumer`.
    ///
    /// # Errors
    ///
    /// The thread could not be started.
    fn start(consumer: Arc<KafkaConsumer>, shared: Arc<Shared>) -> std::io::Result<KafkaSource> {
        let stop_poller = Arc::new(AtomicBool::new(false));
        let poller = std::thread::Builder::new()
            .name(format!("event-kafka {}", shared.settings.topic))
            .spawn({
                let consumer = consumer.clone();
                let shared = shared.clone();
                let stop = stop_poller.clone();
                move || poll(&consumer, &shared, &stop)
            })?;
        Ok(KafkaSource {
            consumer,
            shared,
            poller: Some(poller),
            stop_poller,
        })
    }

    /// Whether the consumer group assigned partitions within `timeout`.
    async fn wait_assigned(&self, timeout: Duration) -> bool {
        self.shared.wait_assigned(timeout).await
    }

    /// Wraps a record taken from the ready queue for the delivery loop.
    fn incoming(&self, ready: Ready, resume: Option<i32>) -> Incoming<Acker> {
        if let Some(partition) = resume {
            self.shared.apply_flow(&self.consumer, partition, false);
        }
        let offset = i64::try_from(ready.delivery.position().number()).unwrap_or(i64::MAX);
        Incoming {
            acker: Acker {
                shared: self.shared.clone(),
                partition: ready.partition,
                generation: ready.generation,
                lane: ready.lane,
                offset,
            },
            delivery: ready.delivery,
        }
    }
}

impl Drop for KafkaSource {
    /// A source dropped without [`DeliverySource::close`] (a subscribe cancelled while it
    /// waits for its assignment) stops its poller, whose last reference closes the consumer.
    fn drop(&mut self) {
        self.stop_poller.store(true, Ordering::Release);
        self.shared.close();
    }
}

impl DeliverySource for KafkaSource {
    type Acker = Acker;

    async fn next(&mut self) -> Option<Incoming<Acker>> {
        loop {
            match self.shared.take_ready() {
                Some(Ok((ready, resume))) => return Some(self.incoming(ready, resume)),
                Some(Err(())) => return None,
                None => self.shared.ready_signal.notified().await,
            }
        }
    }

    fn next_at_hand(&mut self) -> Option<Incoming<Acker>> {
        match self.shared.take_ready() {
            Some(Ok((ready, resume))) => Some(self.incoming(ready, resume)),
            _ => None,
        }
    }

    async fn close(mut self) {
        self.stop_poller.store(true, Ordering::Release);
        self.shared.close();
        let poller = self.poller.take();
        let shared = self.shared.clone();
        let consumer = self.consumer.clone();
        // the closure below must hold the consumer's last reference but the poller's
        drop(self);
        // joining the poller (up to one poll interval), committing and leaving the group
        // block: off the async threads
        let closed = tokio::task::spawn_blocking(move || {
            if let Some(poller) = poller
                && poller.join().is_err()
            {
                tracing::error!(topic = %shared.settings.topic, "the Kafka poller thread panicked");
            }
            if shared.commits() {
                let offsets = shared.final_offsets();
                if offsets.count() > 0
                    && let Err(error) = consumer.commit(&offsets, CommitMode::Sync)
                {
                    tracing::warn!(topic = %shared.settings.topic, %error, "final offset commit failed; the next consumer may see duplicates");
                }
            }
            // the last reference closes the consumer, leaving the group
            drop(consumer);
        });
        if let Err(error) = closed.await {
            tracing::warn!(%error, "closing the Kafka consumer failed");
        }
    }
}

/// Settles one Kafka record: stores its offset (when nothing earlier is unfinished) and frees
/// its lane.
pub(crate) struct Acker {
    shared: Arc<Shared>,
    partition: i32,
    generation: u64,
    lane: u64,
    offset: i64,
}

impl std::fmt::Debug for Acker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acker")
            .field("topic", &self.shared.settings.topic)
            .field("partition", &self.partition)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

impl Acknowledge for Acker {
    async fn ack(self) -> Result<(), BrokerError> {
        self.shared.settle(&self, None);
        Ok(())
    }

    async fn nack(self, delivery: Delivery) -> Result<(), BrokerError> {
        self.shared.settle(&self, Some(delivery));
        Ok(())
    }

    fn abandon(self, delivery: Delivery) {
        self.shared.settle(&self, Some(delivery));
    }

    /// `false` once the record's partition was revoked (after its revoke timeout, or lost)
    /// or assigned again: a retry or a dead letter of it is its new owner's.
    fn owned(&self) -> bool {
        self.shared.owns(self.partition, self.generation)
    }
}
