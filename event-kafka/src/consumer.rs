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
//! partition wait for a handler and do not drain to half of that within [`PAUSE_GRACE`]
//! (a burst from one fetch does), that partition alone is paused (librdkafka stops fetching
//! it) until half of them are taken; the other partitions keep flowing. So a stalled key
//! holds its own partition, never the subscription.
//!
//! **Revocation waits for in-flight work**: when a rebalance takes partitions away, their
//! records not yet handed to a handler are dropped (the next owner reads them), the records in
//! a handler or a retry backoff get [`revoke_timeout`] to finish, what finished is committed,
//! and only then are the partitions let go. Eager (`range`, `roundrobin`) and cooperative
//! (`cooperative-sticky`) assignment both work; with cooperative assignment only the
//! partitions that move are revoked: the others stay assigned and keep their place (nothing
//! of theirs is dropped or fetched again), though no new records of theirs are filed while
//! the poller waits for the revoked partitions' handlers.
//!
//! [`max_buffered_per_partition`]: crate::KafkaBrokerBuilder::max_buffered_per_partition
//! [`revoke_timeout`]: crate::KafkaBrokerBuilder::revoke_timeout
//!
//! Every librdkafka statistics report (`statistics.interval.ms`, see
//! [`statistics_interval`](crate::KafkaBrokerBuilder::statistics_interval)) updates the
//! [`CONSUMER_LAG`](metric::CONSUMER_LAG) gauge of each partition the subscription holds: the
//! partition's end offset minus the offset it would commit, so the messages not finished yet.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use event_core::broker::delivery::{Acknowledge, DeliverySource, Incoming};
use event_core::broker::{BrokerError, Delivery, Message, Position, StartFrom};
use event_core::headers::{HeaderName, HeaderValue, Headers};
use event_core::telemetry::{label, metric};
use metrics::{Gauge, Label};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};
use rdkafka::statistics::Partition as PartitionStatistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};
use tokio::sync::{Notify, watch};

/// The consumer type of one subscription.
pub(crate) type KafkaConsumer = BaseConsumer<SubscriptionContext>;

/// How long one poll of the poller thread blocks: the longest a stop waits for it.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How long the poller waits for a full partition to drain to half before it pauses it.
///
/// Pausing is not free: librdkafka drops the partition's records it fetched ahead, and a
/// resume fetches them again, a round trip that may wait behind a long-polled fetch. A
/// partition whose handlers merely lag behind a burst (every fetch brings hundreds of records
/// at once) drains in far less than this, and is never paused; one held by a stuck or slow
/// key does not, and is paused after this long, from then on costing the others nothing.
const PAUSE_GRACE: Duration = Duration::from_millis(50);

/// The most records the poller files at once.
const RECEIVE_BATCH: usize = 64;

/// How often the poller hands finished offsets to librdkafka for its auto-commit.
const STORE_INTERVAL: Duration = Duration::from_millis(10);

/// Settings one subscription's consumer works with.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerSettings {
    pub(crate) topic: Arc<str>,
    /// The consumer group; `None` for a broadcast subscription (manual assignment, no commits).
    pub(crate) group: Option<String>,
    pub(crate) start_from: StartFrom,
    pub(crate) parallel_keys: bool,
    pub(crate) max_buffered: usize,
    pub(crate) operation_timeout: Duration,
    pub(crate) revoke_timeout: Duration,
}

/// State shared by the poller, the delivery source, the ackers and the rebalance callback.
#[derive(Debug)]
pub(crate) struct Shared {
    settings: ConsumerSettings,
    state: Mutex<State>,
    /// Signalled when a revoking partition's last running record settles.
    settled: Condvar,
    /// Signalled when a partition's waiting records drop to half the read-ahead.
    drained: Condvar,
    /// Held while a pause or resume is decided and applied, so that the two never reorder.
    flow: Mutex<()>,
    ready_signal: Notify,
    assignments: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct State {
    partitions: HashMap<i32, PartitionState>,
    ready: VecDeque<Ready>,
    next_generation: u64,
    /// Some partition's `stored` moved since the poller last handed offsets to librdkafka.
    store_pending: bool,
    closed: bool,
}

/// A record copied out of librdkafka, not filed yet.
#[derive(Debug)]
struct Fetched {
    partition: i32,
    offset: i64,
    lane: u64,
    delivery: Delivery,
}

#[derive(Debug)]
struct Ready {
    partition: i32,
    generation: u64,
    lane: u64,
    delivery: Delivery,
}

#[derive(Debug)]
struct PartitionState {
    /// Changes each time the partition is (re)assigned; ackers of an older generation are
    /// ignored, so a revoked partition's late acks never move its offset.
    generation: u64,
    /// Received offsets whose outcome is not known yet.
    unfinished: BTreeSet<i64>,
    /// One past the highest offset received (or the start position before any).
    next_offset: Option<i64>,
    /// The highest offset stored for commit.
    stored: i64,
    /// Busy lanes and the records waiting behind their running one.
    lanes: HashMap<u64, VecDeque<Delivery>>,
    /// Records received but not yet handed to the delivery loop.
    queued: usize,
    /// Records handed to the delivery loop and not settled yet.
    running: usize,
    /// `stored` moved since it was last handed to librdkafka.
    store_pending: bool,
    /// Fetching is paused: `queued` reached the read-ahead limit.
    paused: bool,
    /// Being revoked: nothing more is handed out; running records may finish.
    revoking: bool,
    /// The partition's consumer lag gauge, once a statistics report has set it.
    lag: Option<Gauge>,
}

/// A change of a partition's fetching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Pause,
    Resume,
}

impl PartitionState {
    fn new(generation: u64, start: Option<i64>) -> Self {
        PartitionState {
            generation,
            unfinished: BTreeSet::new(),
            next_offset: start,
            stored: start.unwrap_or(-1),
            lanes: HashMap::new(),
            queued: 0,
            running: 0,
            store_pending: false,
            paused: false,
            revoking: false,
            lag: None,
        }
    }

    /// Whether the partition is still above half its read-ahead, unpaused: a pause may stop it.
    fn stays_full(&self, limit: usize) -> bool {
        !self.paused && !self.revoking && self.queued > limit / 2
    }

    /// Whether fetching should change: pause at the read-ahead limit, resume at half of it.
    fn flow(&self, limit: usize) -> Option<Flow> {
        if !self.paused && !self.revoking && self.queued >= limit {
            Some(Flow::Pause)
        } else if self.paused && self.queued <= limit / 2 {
            Some(Flow::Resume)
        } else {
            None
        }
    }

    /// The offset a commit may name: the lowest unfinished one, else the next to fetch.
    fn committable(&self) -> Option<i64> {
        self.unfinished.first().copied().or(self.next_offset)
    }

    /// Messages of the partition not finished yet, from a statistics report: the end offset
    /// (the last stable offset, else the high watermark) minus [`committable`](Self::committable).
    /// Before the start position is known, librdkafka's own lag (from the stored, else the
    /// committed offset). `None` while unknown.
    fn lag(&self, stats: &PartitionStatistics) -> Option<i64> {
        // librdkafka reports the last stable offset when the broker sends it (read_committed
        // consumers, the default, read only up to it; without open transactions it is the
        // high watermark)
        let end = if stats.ls_offset >= 0 {
            stats.ls_offset
        } else {
            stats.hi_offset
        };
        match self.committable() {
            Some(position) if position >= 0 && end >= 0 => Some((end - position).max(0)),
            _ => [stats.consumer_lag_stored, stats.consumer_lag]
                .into_iter()
                .find(|lag| *lag >= 0),
        }
    }

    /// Zeroes the lag gauge, if set: the partition is no longer this subscription's to report.
    fn clear_lag(&mut self) {
        if let Some(gauge) = self.lag.take() {
            gauge.set(0.0);
        }
    }
}

impl Shared {
    pub(crate) fn new(settings: ConsumerSettings) -> Arc<Self> {
        Arc::new(Shared {
            settings,
            state: Mutex::new(State::default()),
            settled: Condvar::new(),
            drained: Condvar::new(),
            flow: Mutex::new(()),
            ready_signal: Notify::new(),
            assignments: watch::Sender::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // a panic while holding the lock leaves consistent data (every update is one step)
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn commits(&self) -> bool {
        self.settings.group.is_some()
    }

    /// Waits until the consumer has its first assignment (group subscriptions).
    pub(crate) async fn wait_assigned(&self, timeout: Duration) -> bool {
        let mut rx = self.assignments.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|n| *n > 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Starts tracking partitions assigned at explicit offsets.
    pub(crate) fn assigned(&self, partitions: impl IntoIterator<Item = (i32, Option<i64>)>) {
        let mut state = self.lock();
        for (partition, start) in partitions {
            state.next_generation += 1;
            let generation = state.next_generation;
            if state
                .partitions
                .insert(partition, PartitionState::new(generation, start))
                .is_some()
            {
                // assigned again without a revoke in between: forget the old generation
                state.ready.retain(|r| r.partition != partition);
            }
        }
        drop(state);
        self.assignments.send_modify(|n| *n += 1);
    }

    /// Copies a fetched record out of librdkafka, ready to be filed.
    fn fetched(&self, record: &BorrowedMessage<'_>) -> Fetched {
        let lane = if self.settings.parallel_keys {
            record.key().map_or(0, |key| {
                let mut h = DefaultHasher::new();
                key.hash(&mut h);
                h.finish() | 1
            })
        } else {
            0
        };
        Fetched {
            partition: record.partition(),
            offset: record.offset(),
            lane,
            delivery: to_delivery(&self.settings.topic, record),
        }
    }

    /// Files fetched records under their lanes, under one lock and with one wake-up of the
    /// delivery loop; adds to `full` each partition whose read-ahead is full now (fetching it
    /// should pause unless it drains soon).
    fn receive(&self, batch: &mut Vec<Fetched>, full: &mut Vec<i32>) {
        let mut state = self.lock();
        let State {
            partitions, ready, ..
        } = &mut *state;
        let mut readied = false;
        for Fetched {
            partition,
            offset,
            lane,
            delivery,
        } in batch.drain(..)
        {
            let Some(ps) = partitions.get_mut(&partition).filter(|ps| !ps.revoking) else {
                // the partition was revoked while this record was in flight: its new owner
                // reads it
                continue;
            };
            if ps.next_offset.is_some_and(|next| offset < next) {
                // received already (fetched again after a pause): it is in a lane or a handler
                continue;
            }
            ps.unfinished.insert(offset);
            ps.next_offset = Some(ps.next_offset.map_or(offset + 1, |n| n.max(offset + 1)));
            ps.queued += 1;
            match ps.lanes.get_mut(&lane) {
                Some(backlog) => backlog.push_back(delivery),
                None => {
                    ps.lanes.insert(lane, VecDeque::new());
                    ready.push_back(Ready {
                        partition,
                        generation: ps.generation,
                        lane,
                        delivery,
                    });
                    readied = true;
                }
            }
            if ps.flow(self.settings.max_buffered) == Some(Flow::Pause)
                && !full.contains(&partition)
            {
                full.push(partition);
            }
        }
        drop(state);
        if readied {
            self.ready_signal.notify_one();
        }
    }

    /// Waits up to `grace` for a full `partition` to drain to half its read-ahead; `false`
    /// when it did not (and is still held, unpaused).
    fn drains_within(&self, partition: i32, grace: Duration) -> bool {
        let limit = self.settings.max_buffered;
        let full = |state: &State| {
            !state.closed
                && state
                    .partitions
                    .get(&partition)
                    .is_some_and(|ps| ps.stays_full(limit))
        };
        let state = self.lock();
        let (state, _) = self
            .drained
            .wait_timeout_while(state, grace, |state| full(state))
            .unwrap_or_else(|p| p.into_inner());
        !full(&state)
    }

    /// Resumes fetching `partition` if its read-ahead has room again; with `pause`, pauses
    /// it if it is still full (after [`PAUSE_GRACE`]).
    ///
    /// Decided and applied under one lock, so that a pause and a resume of one partition are
    /// applied in the order they were decided; librdkafka is called outside the state lock
    /// (its calls may take locks a rebalance callback holds while it waits for ours).
    fn apply_flow(&self, consumer: &KafkaConsumer, partition: i32, pause: bool) {
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

    /// Takes the next record whose lane is free; also returns its partition when fetching it
    /// should resume.
    fn take_ready(&self) -> Option<Result<(Ready, Option<i32>), ()>> {
        let mut state = self.lock();
        let State {
            partitions,
            ready,
            closed,
            ..
        } = &mut *state;
        while let Some(next) = ready.pop_front() {
            let Some(ps) = partitions
                .get_mut(&next.partition)
                .filter(|ps| ps.generation == next.generation && !ps.revoking)
            else {
                continue;
            };
            ps.queued -= 1;
            ps.running += 1;
            if ps.queued == self.settings.max_buffered / 2 {
                self.drained.notify_all();
            }
            let resume = (ps.flow(self.settings.max_buffered) == Some(Flow::Resume))
                .then_some(next.partition);
            return Some(Ok((next, resume)));
        }
        closed.then_some(Err(()))
    }

    /// Records the outcome of one record; frees its lane.
    fn settle(&self, acked: &Acker, done: Option<Delivery>) {
        let mut state = self.lock();
        let State {
            partitions,
            ready,
            store_pending,
            ..
        } = &mut *state;
        let Some(ps) = partitions
            .get_mut(&acked.partition)
            .filter(|ps| ps.generation == acked.generation)
        else {
            // revoked meanwhile: the offset stays uncommitted for the partition's new owner
            return;
        };
        ps.running -= 1;
        if ps.revoking {
            // a revoke waits for this: record the outcome, hand nothing more out
            if done.is_none() {
                ps.unfinished.remove(&acked.offset);
            }
            ps.lanes.remove(&acked.lane);
            if ps.running == 0 {
                self.settled.notify_all();
            }
            return;
        }
        if let Some(delivery) = done {
            // given back: the offset stays unfinished and the record goes first in line again
            ps.queued += 1;
            ready.push_front(Ready {
                partition: acked.partition,
                generation: acked.generation,
                lane: acked.lane,
                delivery,
            });
            self.ready_signal.notify_one();
            return;
        }
        ps.unfinished.remove(&acked.offset);
        if let Some(commit_to) = ps.committable()
            && commit_to > ps.stored
        {
            ps.stored = commit_to;
            ps.store_pending = true;
            *store_pending = true;
        }
        match ps.lanes.get_mut(&acked.lane).and_then(VecDeque::pop_front) {
            Some(delivery) => {
                ready.push_back(Ready {
                    partition: acked.partition,
                    generation: acked.generation,
                    lane: acked.lane,
                    delivery,
                });
                self.ready_signal.notify_one();
            }
            None => {
                ps.lanes.remove(&acked.lane);
            }
        }
    }

    /// The offsets stored since the last call, for librdkafka's auto-commit; `None` when none
    /// moved (or the subscription does not commit).
    fn take_stores(&self) -> Option<TopicPartitionList> {
        if !self.commits() {
            return None;
        }
        let mut state = self.lock();
        if !std::mem::take(&mut state.store_pending) {
            return None;
        }
        let mut tpl = TopicPartitionList::new();
        for (partition, ps) in &mut state.partitions {
            if std::mem::take(&mut ps.store_pending) && !ps.revoking {
                let _ = tpl.add_partition_offset(
                    &self.settings.topic,
                    *partition,
                    Offset::Offset(ps.stored),
                );
            }
        }
        Some(tpl)
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

    /// Revokes `revoked` partitions: hands nothing more of theirs out, drops their records
    /// that wait for a handler (the next owner reads them), waits up to `wait` for those in a
    /// handler, then stops tracking them and returns the offsets to commit for them.
    fn revoke(&self, revoked: &[i32], wait: Duration) -> TopicPartitionList {
        let mut state = self.lock();
        for partition in revoked {
            if let Some(ps) = state.partitions.get_mut(partition) {
                ps.revoking = true;
                ps.queued = 0;
                ps.lanes.retain(|_, backlog| {
                    backlog.clear();
                    true
                });
            }
        }
        state.ready.retain(|r| !revoked.contains(&r.partition));
        let running = |state: &State| {
            revoked
                .iter()
                .filter_map(|p| state.partitions.get(p))
                .map(|ps| ps.running)
                .sum::<usize>()
        };
        let waiting = running(&state);
        if waiting > 0 && !wait.is_zero() {
            let started = Instant::now();
            tracing::debug!(topic = %self.settings.topic, partitions = ?revoked, waiting, "revoke: waiting for the handlers of revoked partitions");
            state = self
                .settled
                .wait_timeout_while(state, wait, |state| running(state) > 0)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            let left = running(&state);
            if left > 0 {
                tracing::warn!(
                    topic = %self.settings.topic,
                    partitions = ?revoked,
                    unfinished = left,
                    timeout = ?wait,
                    "revoke: handlers still running after the revoke timeout; their records go to the next owner too"
                );
            } else {
                tracing::debug!(topic = %self.settings.topic, waited = ?started.elapsed(), "revoke: revoked partitions' handlers finished");
            }
        }
        let mut commit = TopicPartitionList::new();
        for partition in revoked {
            if let Some(mut ps) = state.partitions.remove(partition) {
                ps.clear_lag();
                if let Some(offset) = ps.committable() {
                    let _ = commit.add_partition_offset(
                        &self.settings.topic,
                        *partition,
                        Offset::Offset(offset),
                    );
                }
            }
        }
        commit
    }

    /// The offsets to commit for every tracked partition.
    fn final_offsets(&self) -> TopicPartitionList {
        let state = self.lock();
        let mut commit = TopicPartitionList::new();
        for (partition, ps) in &state.partitions {
            if let Some(offset) = ps.committable() {
                let _ = commit.add_partition_offset(
                    &self.settings.topic,
                    *partition,
                    Offset::Offset(offset),
                );
            }
        }
        commit
    }

    /// Stops the source; zeroes the lag gauges, which no report sets after this.
    fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        self.drained.notify_all();
        state
            .partitions
            .values_mut()
            .for_each(PartitionState::clear_lag);
        drop(state);
        self.ready_signal.notify_one();
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
pub(crate) fn watermarks<C: ConsumerContext>(
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
pub(crate) struct SubscriptionContext {
    pub(crate) shared: Arc<Shared>,
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
fn poll(consumer: &KafkaConsumer, shared: &Shared, stop: &AtomicBool) {
    let mut last_error: Option<String> = None;
    let mut last_store = Instant::now();
    let mut batch = Vec::with_capacity(RECEIVE_BATCH);
    let mut full = Vec::new();
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
                last_error = None;
                batch.push(shared.fetched(&record));
                drop(record);
                // what librdkafka holds already, up to a batch: filed under one lock, with
                // one wake-up of the delivery loop (a poll that serves a rebalance returns
                // nothing, so a batch never spans one)
                while batch.len() < RECEIVE_BATCH {
                    match consumer.poll(Duration::ZERO) {
                        Some(Ok(record)) => {
                            batch.push(shared.fetched(&record));
                        }
                        Some(Err(error)) => {
                            tracing::warn!(topic = %shared.settings.topic, %error, "consumer error");
                            break;
                        }
                        None => break,
                    }
                }
                shared.receive(&mut batch, &mut full);
                for partition in full.drain(..) {
                    if !shared.drains_within(partition, PAUSE_GRACE) {
                        shared.apply_flow(consumer, partition, true);
                    }
                }
            }
            Some(Err(error)) => {
                // log each distinct error once in a row, not once per poll
                let text = error.to_string();
                if last_error.as_deref() != Some(&text) {
                    tracing::warn!(topic = %shared.settings.topic, %error, "consumer error");
                    last_error = Some(text);
                }
            }
            None => {}
        }
    }
    shared.store_offsets(consumer);
}

/// Content type given to a record whose headers cannot be read, so that a typed subscriber
/// dead-letters it with a diagnosis instead of decoding it blind.
pub(crate) const INVALID_HEADERS_CONTENT_TYPE: &str = "application/x-kafka-invalid-headers";

fn to_delivery(topic: &Arc<str>, record: &BorrowedMessage<'_>) -> Delivery {
    let mut message = Message::new(Bytes::copy_from_slice(record.payload().unwrap_or_default()));
    message.key = record.key().map(Bytes::copy_from_slice);
    if let Some(headers) = record.headers() {
        // rdkafka panics on a header name that is not UTF-8; such a record must still be
        // delivered (and diagnosed), not take the consumer down
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // copied without an allocation where that can be: a pooled vector, the names
            // the framework writes shared, short values inline
            let mut out = Headers::pooled(headers.count());
            for header in headers.iter() {
                out.append(
                    HeaderName::from_wire(header.key),
                    HeaderValue::copy_from_slice(header.value.unwrap_or_default()),
                );
            }
            out
        }));
        message.headers = match read {
            Ok(headers) => headers,
            Err(_) => {
                tracing::error!(
                    %topic,
                    partition = record.partition(),
                    offset = record.offset(),
                    "record headers are not readable (a header name is not UTF-8); delivering it marked as {INVALID_HEADERS_CONTENT_TYPE}"
                );
                let mut marked = Headers::with_capacity(2);
                marked.append("content-type", INVALID_HEADERS_CONTENT_TYPE);
                marked.append(
                    "x-event-error",
                    "the record's headers could not be read: a header name is not UTF-8",
                );
                marked
            }
        };
    }
    Delivery::new(
        topic.clone(),
        message,
        Position::Offset {
            partition: record.partition(),
            offset: record.offset(),
        },
    )
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
    pub(crate) fn start(
        consumer: Arc<KafkaConsumer>,
        shared: Arc<Shared>,
    ) -> std::io::Result<KafkaSource> {
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
    pub(crate) async fn wait_assigned(&self, timeout: Duration) -> bool {
        self.shared.wait_assigned(timeout).await
    }

    /// Wraps a record taken from the ready queue for the delivery loop.
    fn incoming(&self, ready: Ready, resume: Option<i32>) -> Incoming<Acker> {
        if let Some(partition) = resume {
            self.shared.apply_flow(&self.consumer, partition, false);
        }
        let offset = match ready.delivery.position() {
            Position::Offset { offset, .. } => *offset,
            _ => unreachable!("kafka deliveries carry offsets"),
        };
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(hi: i64, ls: i64) -> PartitionStatistics {
        PartitionStatistics {
            hi_offset: hi,
            ls_offset: ls,
            consumer_lag: -1,
            consumer_lag_stored: -1,
            ..PartitionStatistics::default()
        }
    }

    #[test]
    fn a_partition_pauses_at_its_read_ahead_limit_and_resumes_at_half() {
        let mut ps = PartitionState::new(1, Some(0));
        ps.queued = 15;
        assert_eq!(ps.flow(16), None, "below the limit");
        ps.queued = 16;
        assert_eq!(ps.flow(16), Some(Flow::Pause));
        ps.paused = true;
        assert_eq!(ps.flow(16), None, "paused already");
        ps.queued = 9;
        assert_eq!(ps.flow(16), None, "still above half");
        ps.queued = 8;
        assert_eq!(ps.flow(16), Some(Flow::Resume));
        ps.paused = false;
        ps.revoking = true;
        ps.queued = 100;
        assert_eq!(
            ps.flow(16),
            None,
            "a revoking partition is let go, not paused"
        );
    }

    #[test]
    fn lag_runs_from_the_lowest_unfinished_offset_to_the_end() {
        let mut ps = PartitionState::new(1, Some(0));
        assert_eq!(ps.lag(&stats(20, 20)), Some(20), "nothing received yet");
        ps.unfinished.extend(0..20);
        ps.next_offset = Some(20);
        assert_eq!(
            ps.lag(&stats(20, 20)),
            Some(20),
            "the first is in a handler"
        );
        ps.unfinished.retain(|o| *o >= 5);
        assert_eq!(ps.lag(&stats(20, 20)), Some(15));
        ps.unfinished.clear();
        assert_eq!(ps.lag(&stats(20, 20)), Some(0), "all finished");
        assert_eq!(ps.lag(&stats(25, 25)), Some(5), "five more not fetched");
    }

    #[test]
    fn lag_ends_at_the_last_stable_offset_else_the_high_watermark() {
        let ps = PartitionState::new(1, Some(10));
        assert_eq!(ps.lag(&stats(30, 25)), Some(15), "an open transaction");
        assert_eq!(ps.lag(&stats(30, -1)), Some(20), "no last stable offset");
        assert_eq!(ps.lag(&stats(-1, -1)), None, "no end known yet");
        assert_eq!(
            ps.lag(&stats(8, 8)),
            Some(0),
            "a stale end never counts below 0"
        );
    }

    #[test]
    fn lag_without_a_known_position_is_librdkafkas() {
        let ps = PartitionState::new(1, None);
        assert_eq!(ps.lag(&stats(30, 30)), None);
        let committed = PartitionStatistics {
            consumer_lag: 7,
            ..stats(30, 30)
        };
        assert_eq!(ps.lag(&committed), Some(7));
        let stored = PartitionStatistics {
            consumer_lag_stored: 4,
            ..committed
        };
        assert_eq!(ps.lag(&stored), Some(4), "the stored offset is the newer");
    }
}
