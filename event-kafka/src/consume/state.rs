//! The bookkeeping of one subscription, under one lock: the partitions it holds, their lanes
//! and unfinished offsets, the ready queue the delivery loop takes records from, and what a
//! revoke or a stop needs from them.
//!
//! Nothing here calls librdkafka (that is the poller's side, in `poll`): records come in
//! through [`Shared::receive`], go out through [`Shared::take_ready`], and are settled by
//! [`Shared::settle`]; the offsets to store or commit are handed out as topic-partition lists.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use event_core::broker::{Delivery, StartFrom};
use metrics::Gauge;
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::statistics::Partition as PartitionStatistics;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{Notify, watch};

use super::Acker;
use crate::wire::Batch;

/// A map keyed by partition or lane numbers, hashed by [`IntHasher`].
pub(super) type IntMap<K, V> = HashMap<K, V, BuildHasherDefault<IntHasher>>;

/// Hashes the integer keys of the partition and lane maps with one multiplication rather
/// than SipHash: the two maps are looked up several times for every record, and their keys
/// are partition numbers and lane numbers (a record key's hash already), not strings an
/// outsider picks to collide; the lanes of a partition are at most its read-ahead anyway.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct IntHasher(u64);

impl IntHasher {
    /// An odd constant (2^64 / the golden ratio): a bijection on the low bits, which
    /// spreads consecutive partition numbers across the high bits too.
    const SPREAD: u64 = 0x9e37_79b9_7f4a_7c15;

    fn add(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(26) ^ n).wrapping_mul(Self::SPREAD);
    }
}

impl Hasher for IntHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.add(u64::from(byte));
        }
    }

    fn write_i32(&mut self, n: i32) {
        self.add(u64::from(n as u32));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }
}

/// Settings one subscription's consumer works with.
#[derive(Debug, Clone)]
pub(super) struct ConsumerSettings {
    pub(super) topic: Arc<str>,
    /// The consumer group; `None` for a broadcast subscription (manual assignment, no commits).
    pub(super) group: Option<String>,
    pub(super) start_from: StartFrom,
    pub(super) parallel_keys: bool,
    pub(super) max_buffered: usize,
    pub(super) operation_timeout: Duration,
    pub(super) revoke_timeout: Duration,
    /// Unwrap go-micro's JSON envelope.
    pub(super) go_micro_envelope: bool,
}

/// State shared by the poller, the delivery source, the ackers and the rebalance callback.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) settings: ConsumerSettings,
    state: Mutex<State>,
    /// Signalled when a revoking partition's last running record settles.
    settled: Condvar,
    /// Signalled when a partition's waiting records drop to half the read-ahead.
    drained: Condvar,
    /// Held while a pause or resume is decided and applied, so that the two never reorder.
    pub(super) flow: Mutex<()>,
    pub(super) ready_signal: Notify,
    assignments: watch::Sender<u64>,
}

#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) partitions: IntMap<i32, PartitionState>,
    ready: VecDeque<Ready>,
    next_generation: u64,
    /// Some partition's `stored` moved since the poller last handed offsets to librdkafka.
    store_pending: bool,
    pub(super) closed: bool,
}

/// A record copied out of librdkafka, not filed yet.
#[derive(Debug)]
pub(super) struct Fetched {
    partition: i32,
    offset: i64,
    lane: u64,
    delivery: Delivery,
}

#[derive(Debug)]
pub(super) struct Ready {
    pub(super) partition: i32,
    pub(super) generation: u64,
    pub(super) lane: u64,
    pub(super) delivery: Delivery,
}

#[derive(Debug)]
pub(super) struct PartitionState {
    /// Changes each time the partition is (re)assigned; ackers of an older generation are
    /// ignored, so a revoked partition's late acks never move its offset.
    pub(super) generation: u64,
    /// Received offsets whose outcome is not known yet.
    unfinished: BTreeSet<i64>,
    /// One past the highest offset received (or the start position before any).
    next_offset: Option<i64>,
    /// The highest offset stored for commit.
    stored: i64,
    /// Busy lanes and the records waiting behind their running one.
    lanes: IntMap<u64, VecDeque<Delivery>>,
    /// Records received but not yet handed to the delivery loop.
    queued: usize,
    /// Records handed to the delivery loop and not settled yet.
    running: usize,
    /// `stored` moved since it was last handed to librdkafka.
    store_pending: bool,
    /// Fetching is paused: `queued` reached the read-ahead limit.
    pub(super) paused: bool,
    /// Being revoked: nothing more is handed out; running records may finish.
    revoking: bool,
    /// Its position went back, and the poller waits for the old log's records past it.
    went_back: bool,
    /// The partition's consumer lag gauge, once a statistics report has set it.
    pub(super) lag: Option<Gauge>,
}

/// A change of a partition's fetching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
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
            lanes: IntMap::default(),
            queued: 0,
            running: 0,
            store_pending: false,
            paused: false,
            revoking: false,
            went_back: false,
            lag: None,
        }
    }

    /// Whether the partition is still above half its read-ahead, unpaused: a pause may stop it.
    pub(super) fn stays_full(&self, limit: usize) -> bool {
        !self.paused && !self.revoking && self.queued > limit / 2
    }

    /// Whether fetching should change: pause at the read-ahead limit, resume at half of it.
    pub(super) fn flow(&self, limit: usize) -> Option<Flow> {
        if !self.paused && !self.revoking && self.queued >= limit {
            Some(Flow::Pause)
        } else if self.paused && self.queued <= limit / 2 {
            Some(Flow::Resume)
        } else {
            None
        }
    }

    /// The offset a commit may name: the lowest unfinished one, else the next to fetch.
    pub(super) fn committable(&self) -> Option<i64> {
        // (every unfinished offset is below the next one, but while a position that went
        // back waits for the old log's records past it)
        match (self.unfinished.first().copied(), self.next_offset) {
            (Some(first), Some(next)) => Some(first.min(next)),
            (first, next) => first.or(next),
        }
    }

    /// Messages of the partition not finished yet, from a statistics report: the end offset
    /// (the last stable offset, else the high watermark) minus [`committable`](Self::committable).
    /// Before the start position is known, librdkafka's own lag (from the stored, else the
    /// committed offset). `None` while unknown.
    pub(super) fn lag(&self, stats: &PartitionStatistics) -> Option<i64> {
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
    pub(super) fn new(settings: ConsumerSettings) -> Arc<Self> {
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

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // a panic while holding the lock leaves consistent data (every update is one step)
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn commits(&self) -> bool {
        self.settings.group.is_some()
    }

    /// Waits until the consumer has its first assignment (group subscriptions).
    pub(super) async fn wait_assigned(&self, timeout: Duration) -> bool {
        let mut rx = self.assignments.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|n| *n > 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Starts tracking partitions assigned at explicit offsets.
    pub(super) fn assigned(&self, partitions: impl IntoIterator<Item = (i32, Option<i64>)>) {
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
    pub(super) fn fetched(&self, batch: &mut Batch, record: &BorrowedMessage<'_>) -> Fetched {
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
            delivery: batch.delivery(record, self.settings.go_micro_envelope),
        }
    }

    /// The fetch position of `partition` went back to `from`: librdkafka hands out each
    /// offset once, in order, unless it moved, and it moves back only when it resets the
    /// position (`auto.offset.reset`) because the log no longer reaches it (the topic was made
    /// again, an unclean leader election cut the log). What comes from `from` on is new:
    /// skipping it, or committing past it, would lose it.
    ///
    /// So the partition goes on from `from`, committed at once (or at a lower unfinished
    /// record). The records of the old log at or past `from` that are still waiting or in a
    /// handler share offsets with the new ones, so the poller waits for them to finish
    /// first (as a revoke waits, up to the revoke timeout); those below `from` stay as they
    /// are. Order per key holds: the new records queue behind the old ones in their lanes.
    fn went_back<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        partition: i32,
        from: i64,
    ) -> MutexGuard<'a, State> {
        let State {
            partitions,
            store_pending,
            ..
        } = &mut *state;
        let Some(ps) = partitions.get_mut(&partition) else {
            return state;
        };
        tracing::warn!(
            topic = %self.settings.topic,
            partition,
            offset = from,
            expected = ?ps.next_offset,
            "the partition's position went back (its log was cut or made again): handling it from this offset"
        );
        ps.next_offset = Some(from);
        if let Some(commit_to) = ps.committable() {
            ps.stored = commit_to;
            ps.store_pending = true;
            *store_pending = true;
        }
        let cut_log_unfinished = |state: &State| {
            state
                .partitions
                .get(&partition)
                .is_some_and(|ps| !ps.revoking && ps.unfinished.range(from..).next().is_some())
        };
        if !cut_log_unfinished(&state) {
            return state;
        }
        if let Some(ps) = state.partitions.get_mut(&partition) {
            ps.went_back = true;
        }
        let (mut state, waited) = self
            .settled
            .wait_timeout_while(state, self.settings.revoke_timeout, |state| {
                cut_log_unfinished(state)
            })
            .unwrap_or_else(|p| p.into_inner());
        if let Some(ps) = state.partitions.get_mut(&partition) {
            ps.went_back = false;
            if waited.timed_out() && !ps.revoking {
                let left: Vec<i64> = ps.unfinished.range(from..).copied().collect();
                tracing::warn!(
                    topic = %self.settings.topic,
                    partition,
                    offsets = ?left,
                    timeout = ?self.settings.revoke_timeout,
                    "records of the cut log still unfinished after the revoke timeout: their outcome may settle the new records of the same offsets"
                );
                for offset in left {
                    ps.unfinished.remove(&offset);
                }
            }
        }
        state
    }

    /// Files fetched records under their lanes, under one lock and with one wake-up of the
    /// delivery loop; adds to `full` each partition whose read-ahead is full now (fetching it
    /// should pause unless it drains soon).
    pub(super) fn receive(&self, batch: &mut Vec<Fetched>, full: &mut Vec<i32>) {
        let mut state = self.lock();
        let mut readied = false;
        for Fetched {
            partition,
            offset,
            lane,
            delivery,
        } in batch.drain(..)
        {
            let went_back = match state.partitions.get(&partition) {
                // the partition was revoked while this record was in flight: its new owner
                // reads it
                None => continue,
                Some(ps) if ps.revoking => continue,
                Some(ps) => ps.next_offset.is_some_and(|next| offset < next),
            };
            if went_back {
                state = self.went_back(state, partition, offset);
            }
            let State {
                partitions, ready, ..
            } = &mut *state;
            let Some(ps) = partitions.get_mut(&partition).filter(|ps| !ps.revoking) else {
                continue;
            };
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
    pub(super) fn drains_within(&self, partition: i32, grace: Duration) -> bool {
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

    /// Takes the next record whose lane is free; also returns its partition when fetching it
    /// should resume.
    pub(super) fn take_ready(&self) -> Option<Result<(Ready, Option<i32>), ()>> {
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

    /// Whether `partition` is still held under `generation`: not revoked (a revoke in
    /// progress still waits for it), nor assigned again since.
    pub(super) fn owns(&self, partition: i32, generation: u64) -> bool {
        self.lock()
            .partitions
            .get(&partition)
            .is_some_and(|ps| ps.generation == generation)
    }

    /// Records the outcome of one record; frees its lane.
    pub(super) fn settle(&self, acked: &Acker, done: Option<Delivery>) {
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
        if ps.went_back {
            // the poller waits for the old log's records
            self.settled.notify_all();
        }
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
    pub(super) fn take_stores(&self) -> Option<TopicPartitionList> {
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

    /// Revokes `revoked` partitions: hands nothing more of theirs out, drops their records
    /// that wait for a handler (the next owner reads them), waits up to `wait` for those in a
    /// handler, then stops tracking them and returns the offsets to commit for them.
    pub(super) fn revoke(&self, revoked: &[i32], wait: Duration) -> TopicPartitionList {
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
    pub(super) fn final_offsets(&self) -> TopicPartitionList {
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
    pub(super) fn close(&self) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_keys_hash_apart() {
        use std::hash::BuildHasher;
        let build = BuildHasherDefault::<IntHasher>::default();
        let partitions: std::collections::HashSet<u64> =
            (0..1024i32).map(|p| build.hash_one(p)).collect();
        assert_eq!(
            partitions.len(),
            1024,
            "distinct partitions, distinct hashes"
        );
        // the table picks buckets by the low bits and tags by the top 7: both vary
        let low: std::collections::HashSet<u64> =
            (0..64i32).map(|p| build.hash_one(p) & 63).collect();
        let top: std::collections::HashSet<u64> =
            (0..64i32).map(|p| build.hash_one(p) >> 57).collect();
        assert_eq!(low.len(), 64);
        assert!(top.len() > 32, "{} tags for 64 partitions", top.len());
        let mut map: IntMap<i32, &str> = IntMap::default();
        map.insert(-1, "internal");
        map.insert(7, "seven");
        assert_eq!(
            (map.get(&-1), map.get(&7), map.get(&8)),
            (Some(&"internal"), Some(&"seven"), None)
        );
    }

    fn stats(hi: i64, ls: i64) -> PartitionStatistics {
        PartitionStatistics {
            hi_offset: hi,
            ls_offset: ls,
            consumer_lag: -1,
            consumer_lag_stored: -1,
            ..PartitionStatistics::default()
        }
    }

    fn shared() -> Arc<Shared> {
        Shared::new(ConsumerSettings {
            topic: Arc::from("orders"),
            group: Some("billing".to_owned()),
            start_from: StartFrom::Earliest,
            parallel_keys: false,
            max_buffered: 16,
            operation_timeout: Duration::from_secs(1),
            revoke_timeout: Duration::from_secs(1),
            go_micro_envelope: false,
        })
    }

    fn fetched(offset: i64) -> Fetched {
        Fetched {
            partition: 0,
            offset,
            lane: 0,
            delivery: Delivery::new(
                "orders",
                event_core::broker::Message::new(offset.to_string()),
                crate::wire::position(0, offset),
            ),
        }
    }

    /// Takes the next record and settles it as handled; its offset.
    fn handle_next(shared: &Arc<Shared>) -> i64 {
        let (ready, _) = shared.take_ready().expect("a record").expect("open");
        let offset: i64 = std::str::from_utf8(ready.delivery.payload())
            .unwrap()
            .parse()
            .unwrap();
        let acker = super::super::Acker {
            shared: shared.clone(),
            partition: ready.partition,
            generation: ready.generation,
            lane: ready.lane,
            offset,
        };
        shared.settle(&acker, None);
        offset
    }

    fn stored(shared: &Arc<Shared>) -> Option<i64> {
        let stores = shared.take_stores()?;
        let elements = stores.elements();
        match elements[0].offset() {
            rdkafka::Offset::Offset(o) => Some(o),
            other => panic!("stored {other:?}"),
        }
    }

    #[test]
    fn a_record_is_owned_until_its_partition_is_revoked() {
        let shared = shared();
        shared.assigned([(0, Some(10))]);
        shared.receive(&mut vec![fetched(10)], &mut Vec::new());
        let (ready, _) = shared.take_ready().expect("a record").expect("open");
        let acker = super::super::Acker {
            shared: shared.clone(),
            partition: 0,
            generation: ready.generation,
            lane: ready.lane,
            offset: 10,
        };
        use event_core::backend::Acknowledge as _;
        assert!(acker.owned());
        let _ = shared.revoke(&[0], Duration::ZERO);
        assert!(!acker.owned(), "revoked");
        shared.assigned([(0, Some(10))]);
        assert!(!acker.owned(), "assigned again: a new generation's");
    }

    #[test]
    fn a_position_that_went_back_into_the_records_in_flight_waits_for_them() {
        let shared = shared();
        shared.assigned([(0, Some(10))]);
        shared.receive(
            &mut vec![fetched(10), fetched(11), fetched(12)],
            &mut Vec::new(),
        );
        // 10 is in a handler when the log is cut at 11 and the position goes back there
        let (first, _) = shared.take_ready().expect("a record").expect("open");
        let reset = std::thread::spawn({
            let shared = shared.clone();
            move || shared.receive(&mut vec![fetched(11), fetched(12)], &mut Vec::new())
        });
        // the old log's 10, 11 and 12 finish (the poller waits for the two past the cut)
        let acker = super::super::Acker {
            shared: shared.clone(),
            partition: first.partition,
            generation: first.generation,
            lane: first.lane,
            offset: 10,
        };
        shared.settle(&acker, None);
        assert_eq!((handle_next(&shared), handle_next(&shared)), (11, 12));
        reset.join().unwrap();
        assert_eq!(stored(&shared), Some(11), "committed at the new position");
        // and the new 11 and 12 are handled, each once
        assert_eq!((handle_next(&shared), handle_next(&shared)), (11, 12));
        assert!(shared.take_ready().is_none(), "each filed once");
        assert_eq!(stored(&shared), Some(13));
    }

    #[test]
    fn a_position_that_went_back_is_handled_from_there_and_committed_from_there() {
        // committed at 100, but the log was made again: librdkafka resets to 5
        let shared = shared();
        shared.assigned([(0, Some(100))]);
        let mut full = Vec::new();
        shared.receive(&mut vec![fetched(5), fetched(6)], &mut full);
        assert_eq!(handle_next(&shared), 5, "the new records are handled");
        assert_eq!(
            stored(&shared),
            Some(6),
            "and committed from there, not past them"
        );
        assert_eq!(handle_next(&shared), 6);
        assert_eq!(stored(&shared), Some(7));
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
