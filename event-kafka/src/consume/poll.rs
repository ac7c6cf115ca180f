//! The poller thread of one subscription and the librdkafka callbacks it serves.
//!
//! [`poll`] reads records and files them (see `state`), pauses a partition whose read-ahead
//! stays full, and hands finished offsets to librdkafka; librdkafka runs the rebalance and
//! statistics callbacks of [`SubscriptionContext`] inside its `poll`, on the same thread. The
//! methods of [`Shared`] here are the ones that call into the consumer (pause and resume,
//! offset stores, committed offsets and watermarks) or serve its callbacks (consumer lag).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use event_core::backend::RateLimitedLog;
use event_core::broker::StartFrom;
use event_core::telemetry::{label, metric};
use metrics::{Gauge, Label};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};

use super::KafkaConsumer;
use super::state::{Flow, Shared};
use crate::wire::{Batch, Copies};

/// How long one poll of the poller thread blocks: the longest a stop waits for it.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How long the poller waits for a full partition to drain to half before it pauses it.
///
/// Pausing is not free: librdkafka drops the partition's records it fetched ahead, and a
/// resume fetches them again, a round trip that may wait behind a long-polled fetch. A
/// partition whose handlers merely lag behind a burst (every fetch brings hundreds of records
/// at once) drains in far less than this, and is never paused; one held by a stuck or slow
/// key does not, and is paused after this long, from then on costing the others nothing.
///
/// The poller waits on purpose: not reading is what holds a partition whose handlers merely
/// lag back without pausing it (reading on, it would file the records librdkafka holds, four
/// times faster than a handler takes them, and pause at once). The others wait with it, at
/// most this long per time a partition fills; their records stay in librdkafka's queue
/// meanwhile. Tried the other way (reading on, pausing after the grace or at twice the
/// limit): typed consume fell from 72 % to 40–49 % of the raw loop (64 B, BENCHMARKS.md).
pub(super) const PAUSE_GRACE: Duration = Duration::from_millis(50);

/// The most records the poller files at once.
const RECEIVE_BATCH: usize = 64;

/// How often the poller hands finished offsets to librdkafka for its auto-commit.
const STORE_INTERVAL: Duration = Duration::from_millis(10);

/// How often one consumer error that keeps coming back is logged.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl Shared {
    /// Resumes fetching `partition` if its read-ahead has room again; with `pause`, pauses
    /// it if it is still full (after [`PAUSE_GRACE`]).
    ///
    /// Decided and applied under one lock, so that a pause and a resume of one partition are
    /// applied in the order they were decided; librdkafka is called outside the state lock
    /// (its calls may take locks a rebalance callback holds while it waits for ours).
    pub(super) fn apply_flow(&self, consumer: &KafkaConsumer, partition: i32, pause: bool) {
        let _flow = self.flow.lock().unwrap_or_else(|p| p.into_inner());
        let limit = self.settings.max_buffered;
        let (change, generation) = {
            let mut state = self.lock();
            let Some(ps) = state.partitions.get_mut(&partition) else {
                return;
            };
            let change = match ps.flow(limit) {
                Some(Flow::Resume) => Flow::Resume,
                _ if pause && ps.stays_full(limit) => Flow::Pause,
                _ => return,
            };
            ps.paused = change == Flow::Pause;
            (change, ps.generation)
        };
        let mut tpl = TopicPartitionList::with_capacity(1);
        tpl.add_partition(&self.settings.topic, partition);
        let result = match change {
            Flow::Pause => consumer.pause(&tpl),
            Flow::Resume => consumer.resume(&tpl),
        };
        tracing::debug!(topic = %self.settings.topic, partition, generation, ?change, "read-ahead limit: fetching changed");
        if let Err(error) = result {
            tracing::warn!(topic = %self.settings.topic, partition, ?change, %error, "pausing or resuming a partition failed");
            // librdkafka kept the old state: so does ours, and the next take or fill decides again
            if let Some(ps) = self
                .lock()
                .partitions
                .get_mut(&partition)
                .filter(|ps| ps.generation == generation)
            {
                ps.paused = change != Flow::Pause;
            }
        }
    }

    /// Hands the offsets stored since the last call to librdkafka, which commits them with its
    /// next auto-commit.
    fn store_offsets(&self, consumer: &KafkaConsumer) {
        if let Some(tpl) = self.take_stores()
            && tpl.count() > 0
            && let Err(error) = consumer.store_offsets(&tpl)
        {
            tracing::debug!(topic = %self.settings.topic, %error, "storing offsets failed (partition revoked?)");
        }
    }

    /// Sets the lag gauge of every partition held, from one statistics report.
    fn report_lag(&self, statistics: &Statistics) {
        let Some(topic) = statistics.topics.get(&*self.settings.topic) else {
            return;
        };
        let mut state = self.lock();
        if state.closed {
            // a report served while the consumer closes: the gauges were zeroed for good
            return;
        }
        // the partitions held, so never librdkafka's internal partition -1
        for (partition, ps) in &mut state.partitions {
            let Some(stats) = topic.partitions.get(partition) else {
                continue;
            };
            let lag = ps.lag(stats);
            tracing::trace!(
                topic = %self.settings.topic,
                partition,
                lag,
                position = ps.committable(),
                hi_offset = stats.hi_offset,
                ls_offset = stats.ls_offset,
                stored_offset = stats.stored_offset,
                committed_offset = stats.committed_offset,
                rdkafka_lag = stats.consumer_lag,
                "consumer lag"
            );
            if let Some(lag) = lag {
                ps.lag
                    .get_or_insert_with(|| self.lag_gauge(*partition))
                    .set(lag as f64);
            }
        }
    }

    /// The lag gauge of one partition; a broadcast subscription's group label is empty.
    fn lag_gauge(&self, partition: i32) -> Gauge {
        let labels = [
            Label::new(label::TOPIC, self.settings.topic.to_string()),
            Label::new(label::PARTITION, partition.to_string()),
            Label::new(
                label::GROUP,
                self.settings.group.clone().unwrap_or_default(),
            ),
            Label::new(label::BACKEND, crate::NAME),
        ];
        metrics::gauge!(metric::CONSUMER_LAG, labels.iter())
    }

    /// Resolves where each newly assigned partition starts: its committed offset, else the
    /// configured start. New positions are committed at once so that the group exists from
    /// this moment: a later owner of the partition starts here, not at a later "latest".
    fn resolve_assignment(
        &self,
        consumer: &BaseConsumer<SubscriptionContext>,
        tpl: &mut TopicPartitionList,
    ) -> TopicPartitionList {
        let timeout = self.settings.operation_timeout;
        let mut fresh = TopicPartitionList::new();
        let committed = match consumer.committed_offsets(tpl.clone(), timeout) {
            Ok(committed) => committed,
            Err(error) => {
                tracing::warn!(topic = %self.settings.topic, %error, "reading committed offsets failed; starting from auto.offset.reset");
                return fresh;
            }
        };
        for elem in committed.elements() {
            let partition = elem.partition();
            if let Err(error) = elem.error() {
                // not "nothing committed": the commit is unknown, so nothing is committed
                // over it; librdkafka reads it again when it starts fetching
                tracing::warn!(topic = %self.settings.topic, partition, %error, "reading the partition's committed offset failed; librdkafka resolves its start");
                continue;
            }
            let start = match elem.offset() {
                Offset::Offset(o) if o >= 0 => o,
                _ => {
                    let (low, high) = match watermarks(consumer, elem.topic(), partition, timeout) {
                        Ok(w) => w,
                        Err(error) => {
                            tracing::warn!(topic = %self.settings.topic, partition, %error, "reading watermarks failed; starting from auto.offset.reset");
                            continue;
                        }
                    };
                    let start = match self.settings.start_from {
                        StartFrom::Earliest => low,
                        _ => high,
                    };
                    let _ =
                        fresh.add_partition_offset(elem.topic(), partition, Offset::Offset(start));
                    start
                }
            };
            let _ = tpl.set_partition_offset(elem.topic(), partition, Offset::Offset(start));
        }
        fresh
    }
}

/// A partition's low and high watermarks, asked again while its leader is still being
/// elected: metadata names a fresh topic's leaders a moment before they answer, and there is
/// nothing to await but the answer itself (blocking: call it on the blocking pool).
pub(super) fn watermarks<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<(i64, i64), KafkaError> {
    let deadline = Instant::now() + timeout;
    loop {
        match consumer.fetch_watermarks(topic, partition, timeout) {
            Err(KafkaError::MetadataFetch(
                RDKafkaErrorCode::NotLeaderForPartition | RDKafkaErrorCode::LeaderNotAvailable,
            )) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            result => return result,
        }
    }
}

/// Serves librdkafka's rebalance and statistics callbacks for one subscription.
#[derive(Debug)]
pub(super) struct SubscriptionContext {
    pub(super) shared: Arc<Shared>,
}

impl ClientContext for SubscriptionContext {
    /// Sets the [`CONSUMER_LAG`](metric::CONSUMER_LAG) gauge (labels topic, partition, group,
    /// backend `kafka`; the group is empty for a broadcast subscription) of every partition
    /// this subscription holds.
    ///
    /// The lag is the partition's end offset (last stable offset, else high watermark) in this
    /// report minus the offset this subscription would commit: the lowest unfinished one, else
    /// the next to fetch. So it counts the messages not finished yet (in a handler, waiting
    /// for a retry or a lane, fetched but not taken, or not fetched), not merely the ones not
    /// fetched; with [`parallel_keys`](crate::KafkaBrokerBuilder::parallel_keys) it also
    /// counts finished messages behind an unfinished one, which a restart would deliver again.
    /// It is computed here rather than read from librdkafka's `consumer_lag`, which trails by
    /// the auto-commit interval (it uses the committed offset), is unknown until this
    /// consumer commits once, and is never known for a broadcast reader (no commits).
    ///
    /// The report is served by the poller thread (inside its `poll`), also while partitions
    /// are paused. A revoked partition's gauge is set to 0, as is every gauge when the subscription stops:
    /// it is no longer this consumer's to report.
    fn stats(&self, statistics: Statistics) {
        self.shared.report_lag(&statistics);
    }
}

impl ConsumerContext for SubscriptionContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let shared = &self.shared;
        let topic = &shared.settings.topic;
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let fresh = shared.resolve_assignment(consumer, tpl);
                let assigned = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(error) = assigned {
                    tracing::error!(%topic, %error, "applying the partition assignment failed");
                    return;
                }
                // a partition paused under an earlier assignment starts fetching again
                if let Err(error) = consumer.resume(tpl) {
                    tracing::debug!(%topic, %error, "resuming newly assigned partitions failed");
                }
                if fresh.count() > 0
                    && let Err(error) = consumer.commit(&fresh, CommitMode::Sync)
                {
                    tracing::warn!(%topic, %error, "committing the start position of new partitions failed");
                }
                let started: Vec<(i32, Option<i64>)> = tpl
                    .elements()
                    .iter()
                    .map(|e| {
                        let start = match e.offset() {
                            Offset::Offset(o) => Some(o),
                            _ => None,
                        };
                        (e.partition(), start)
                    })
                    .collect();
                tracing::debug!(%topic, partitions = ?started, cooperative, "partitions assigned");
                shared.assigned(started);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let revoked: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                // lost (the session expired): the partitions are someone else's already, so
                // neither waiting nor committing helps
                let lost = consumer.assignment_lost();
                let wait = if lost {
                    Duration::ZERO
                } else {
                    shared.settings.revoke_timeout
                };
                let commit = shared.revoke(&revoked, wait);
                if shared.commits() && !lost && commit.count() > 0 {
                    // stored as well as committed: librdkafka commits each removed partition's
                    // stored offset when it leaves the assignment, and an older stored offset
                    // (the poller stores every STORE_INTERVAL) would rewind this commit
                    if let Err(error) = consumer.store_offsets(&commit) {
                        tracing::debug!(%topic, %error, "storing the revoked partitions' offsets failed");
                    }
                    if let Err(error) = consumer.commit(&commit, CommitMode::Sync) {
                        tracing::warn!(%topic, %error, "committing revoked partitions failed; their new owner may see duplicates");
                    }
                }
                tracing::debug!(%topic, partitions = ?revoked, lost, cooperative, "partitions revoked");
                // a partition leaves unpaused (librdkafka keeps its own pause while this
                // callback runs): a paused partition taken away and given back later is a
                // sequence librdkafka is known to mishandle, leaving it unfetched
                if let Err(error) = consumer.resume(tpl) {
                    tracing::debug!(%topic, %error, "resuming revoked partitions failed");
                }
                let unassigned = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(error) = unassigned {
                    tracing::warn!(%topic, %error, "dropping the revoked assignment failed");
                }
            }
            other => {
                tracing::error!(%topic, error = ?other, "rebalance failed; dropping the assignment");
                let all: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                let _ = shared.revoke(&all, Duration::ZERO);
                let _ = consumer.unassign();
            }
        }
    }
}

/// Reads records on the calling thread until `stop` is set; librdkafka's rebalance and
/// statistics callbacks run here too.
pub(super) fn poll(consumer: &KafkaConsumer, shared: &Shared, stop: &AtomicBool) {
    // an error the broker keeps returning (it is down, a topic went away) is one line every
    // ERROR_LOG_INTERVAL, with a count of the polls that returned it meanwhile
    let errors: RateLimitedLog<String> = RateLimitedLog::new(ERROR_LOG_INTERVAL);
    let log_error = |error: &KafkaError| {
        if let Some(suppressed) = errors.allow(error.to_string()) {
            tracing::warn!(topic = %shared.settings.topic, %error, suppressed_since_last = suppressed, "consumer error");
        }
    };
    let mut last_store = Instant::now();
    let mut batch = Vec::with_capacity(RECEIVE_BATCH);
    let mut full = Vec::new();
    let mut copies = Copies::default();
    while !stop.load(Ordering::Acquire) {
        // finished offsets reach librdkafka here, at most every STORE_INTERVAL, rather than
        // in each acknowledgement: a store is a call into librdkafka and a list to build, and
        // auto-commit only reads them every `auto.commit.interval.ms`
        if last_store.elapsed() >= STORE_INTERVAL {
            shared.store_offsets(consumer);
            last_store = Instant::now();
        }
        match consumer.poll(POLL_INTERVAL) {
            Some(Ok(record)) => {
                // one topic reference, one clock reading and shared copy buffers per batch
                let mut copying = Batch::new(&shared.settings.topic, std::mem::take(&mut copies));
                batch.push(shared.fetched(&mut copying, &record));
                drop(record);
                // what librdkafka holds already, up to a batch: filed under one lock, with
                // one wake-up of the delivery loop (a poll that serves a rebalance returns
                // nothing, so a batch never spans one)
                while batch.len() < RECEIVE_BATCH {
                    match consumer.poll(Duration::ZERO) {
                        Some(Ok(record)) => {
                            batch.push(shared.fetched(&mut copying, &record));
                        }
                        Some(Err(error)) => {
                            log_error(&error);
                            break;
                        }
                        None => break,
                    }
                }
                copies = copying.into_copies();
                shared.receive(&mut batch, &mut full);
                for partition in full.drain(..) {
                    if !shared.drains_within(partition, PAUSE_GRACE) {
                        shared.apply_flow(consumer, partition, true);
                    }
                }
            }
            Some(Err(error)) => log_error(&error),
            None => {}
        }
    }
    shared.store_offsets(consumer);
}
