//! The in-memory broker (`memory://`), the embedded default.
//!
//! It keeps the same contract as the network brokers, inside one process:
//!
//! - **Queue groups**: a group has one queue shared by its members; each message goes to one
//!   member. Every group and every broadcast subscriber gets its own copy of each message.
//! - **Ack after handler**: a message holds a slot of its queue until its handler finished (or
//!   it was dead-lettered). A message given back unfinished (shutdown) goes to the front of
//!   its queue for another member.
//! - **Bounded, lossless backpressure**: each queue holds at most
//!   [`MemoryBrokerBuilder::capacity`] unacknowledged messages. A publish waits for room
//!   (at most [`MemoryBrokerBuilder::publish_timeout`], then fails and gives the message back);
//!   nothing is dropped because a consumer is slow.
//!
//! - **Hand-off in batches**: the only member of a queue takes up to 64 waiting messages per
//!   lock of the queue (like a prefetch); members of a shared group take one at a time, so
//!   that an idle member is never starved. Messages a member took but did not start go back to
//!   the front of the queue, in publish order, when it leaves. A publisher waiting for room is
//!   woken once an eighth of the queue (at most 64 slots) is free, not for every slot.
//! - **A backlog under sustained load**, when asked for
//!   ([`MemoryBrokerBuilder::batch_wait`], off by default): while publishers keep the only
//!   member of a queue busy, it lets a backlog build up before it takes the next messages; a
//!   message that reaches an idle subscriber is taken at once.
//!
//! - **Shared payload buffers**: the payloads of small messages (up to 1 KiB) that a
//!   [`Publisher`](crate::Publisher) encodes on one thread are cut from shared 8 KiB buffers,
//!   and nothing copies them on the way to the handler: a `bytes` field decoded as `Bytes`
//!   (prost-build's `bytes` option) is a view of that buffer. A handler that keeps such a
//!   field long after it returned keeps the whole buffer alive; copy what you keep
//!   (`Bytes::copy_from_slice`).
//!
//! It has no persistence: a message published to a topic with no subscriber is discarded (the
//! receipt's sequence still counts it), and a queue group's queue exists while the group has
//! members. Subscribe to `<topic>.dlq` to keep dead letters.
//!
//! A publish that times out on a full queue gives the message back, but the queues of the
//! topic that had room already hold it: publishing it again delivers a duplicate to those
//! (at-least-once, like every broker here).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::broker::delivery::{Acknowledge, DeliverySource, Incoming, Lifecycle};
use crate::broker::{
    Broker, BrokerError, BrokerUrlError, Capabilities, Delivery, Message, Position, PublishError,
    RawHandler, Receipt, SubscribeOptions, Subscription, TryPublish, validate_subscription,
    validate_topic,
};
use crate::counted::Counted;

const BROKER_NAME: &str = "memory";

/// How often an idle consumer yields before it parks.
const SPIN_YIELDS: usize = 16;

/// The default [`MemoryBrokerBuilder::batch_wait`]: off (see there why).
const DEFAULT_BATCH_WAIT: Duration = Duration::ZERO;

/// The in-memory broker. Cheap to clone: clones share the same topics.
///
/// ```
/// use event_core::memory::MemoryBroker;
/// use std::time::Duration;
///
/// let broker = MemoryBroker::builder().capacity(4096).publish_timeout(Duration::from_secs(5)).build();
/// # let _ = broker;
/// ```
#[derive(Clone)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    capacity: usize,
    publish_timeout: Duration,
    batch_wait: Duration,
    closed: AtomicBool,
    lifecycle: Mutex<Lifecycle>,
    /// Looked up on every publish: a fast (seeded) hash instead of SipHash.
    topics: RwLock<HashMap<String, Arc<Topic>, foldhash::fast::RandomState>>,
}

#[derive(Default)]
struct Topic {
    /// The topic's name, for the per-thread lookup cache ([`RecentTopics`]).
    name: Box<str>,
    sequence: AtomicU64,
    /// Copy-on-write list of queues: publishers take a cheap snapshot.
    queues: RwLock<Arc<[Arc<Queue>]>>,
    /// Publishers waiting for room: while any waits, no publish takes the fast path, so that
    /// no message overtakes one published before it.
    waiting: AtomicUsize,
}

struct Queue {
    group: Option<String>,
    members: AtomicUsize,
    closed: AtomicBool,
    /// Written by publishers and read by consumers; on a cache line of its own.
    pending: Padded<Pending>,
    slots: Slots,
    /// Waits for a backlog its members started ([`Pacing`]), for tests.
    #[cfg(test)]
    batch_waits: AtomicUsize,
}

/// The messages waiting in a queue and the consumers' wake-up.
struct Pending {
    entries: Mutex<VecDeque<Entry>>,
    /// Wakes consumers when an entry arrives in an empty queue.
    ready: Notify,
}

/// Keeps `T` on cache lines of its own (128 bytes: adjacent-line prefetching pairs lines),
/// so that a counter one thread writes for every message does not slow another thread's
/// reads of a neighbouring field.
#[repr(align(128))]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Counts unacknowledged messages of a queue: a slot is taken when a message is queued and
/// given back when it is acknowledged. A message given back for redelivery keeps its slot.
///
/// The count is the difference of two counters that only grow: `taken`, written by
/// publishers, and `settled`, written by consumers, each on a cache line of its own. A
/// publisher reads the consumers' counter only when the queue looks full by the value it last
/// saw, so under load the two threads do not pass a cache line back and forth per message.
struct Slots {
    capacity: usize,
    /// Freed slots after which waiting publishers are woken.
    wake_batch: usize,
    /// Publishers waiting for room (in [`Slots::take`]).
    waiting: AtomicUsize,
    /// Wakes publishers waiting for room.
    freed: Notify,
    publishers: Padded<Taken>,
    settled: Padded<AtomicUsize>,
}

struct Taken {
    taken: AtomicUsize,
    /// `settled` as publishers last read it; never ahead of it.
    settled_seen: AtomicUsize,
}

impl Slots {
    fn new(capacity: usize) -> Self {
        Slots {
            capacity,
            // an eighth of the capacity, between 1 and 64: waking a publisher for every
            // acknowledged message would cost a thread wake-up per message while the queue
            // is full
            wake_batch: (capacity / 8).clamp(1, 64),
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
            publishers: Padded(Taken {
                taken: AtomicUsize::new(0),
                settled_seen: AtomicUsize::new(0),
            }),
            settled: Padded(AtomicUsize::new(0)),
        }
    }

    fn try_take(&self) -> bool {
        let publishers = &*self.publishers;
        let mut taken = publishers.taken.load(Ordering::Relaxed);
        loop {
            if taken.wrapping_sub(publishers.settled_seen.load(Ordering::Relaxed)) >= self.capacity
            {
                // full by the last value seen: read the consumers' counter
                let settled = self.settled.load(Ordering::SeqCst);
                publishers
                    .settled_seen
                    .fetch_max(settled, Ordering::Relaxed);
                taken = publishers.taken.load(Ordering::SeqCst);
                if taken.wrapping_sub(settled) >= self.capacity {
                    return false;
                }
            }
            match publishers.taken.compare_exchange_weak(
                taken,
                taken + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => taken = actual,
            }
        }
    }

    /// Waits for a slot; `false` if the queue closed meanwhile.
    async fn take(&self, closed: &AtomicBool) -> bool {
        let _waiting = Counted::on(&self.waiting);
        loop {
            if closed.load(Ordering::Acquire) {
                return false;
            }
            if self.try_take() {
                return true;
            }
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if closed.load(Ordering::Acquire) {
                return false;
            }
            if self.try_take() {
                return true;
            }
            freed.await;
        }
    }

    /// Gives back a slot taken by [`Slots::try_take`] for a message that was not queued.
    fn untake(&self) {
        self.publishers.taken.fetch_sub(1, Ordering::SeqCst);
        self.wake_waiting();
    }

    /// Gives a slot back: its message was acknowledged. Waiting publishers are woken once
    /// [`Slots::wake_batch`] slots are free, not for every slot.
    fn give_back(&self) {
        self.settled.fetch_add(1, Ordering::SeqCst);
        self.wake_waiting();
    }

    fn wake_waiting(&self) {
        // `SeqCst` on both sides: either this sees the waiter, or the waiter's second
        // `try_take` (after it registered for the wake-up) sees the slot given back
        if self.waiting.load(Ordering::SeqCst) > 0
            && self.capacity.saturating_sub(self.in_use()) >= self.wake_batch
        {
            self.freed.notify_waiters();
        }
    }

    fn in_use(&self) -> usize {
        let settled = self.settled.load(Ordering::SeqCst);
        self.publishers
            .taken
            .load(Ordering::SeqCst)
            .wrapping_sub(settled)
    }
}

struct Entry {
    message: Message,
    sequence: u64,
    attempt: u32,
}

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("name", &self.inner.name)
            .field("capacity", &self.inner.capacity)
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Configures a [`MemoryBroker`].
#[derive(Debug, Clone)]
#[must_use]
pub struct MemoryBrokerBuilder {
    name: String,
    capacity: usize,
    publish_timeout: Duration,
    batch_wait: Duration,
}

impl MemoryBrokerBuilder {
    /// Names the broker (shown in its address, `memory://NAME`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Unacknowledged messages each queue may hold (default 1024, at least 1).
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// How long a publish waits for room in a full queue before failing (default 30 s).
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// How long a busy subscriber lets a backlog build up before it takes the next messages
    /// (default [`Duration::ZERO`]: it takes them at once; 50 µs is a good start otherwise).
    ///
    /// This applies to a subscription that is the only member of its queue (a broadcast
    /// subscriber, or a group of one) and handles one message at a time. Such a subscriber
    /// takes up to 64 waiting messages at once. When it comes back for more and finds several
    /// messages waiting, right after a fetch that found several too, its publishers are
    /// keeping it busy. It then waits until 128 messages wait, a publisher waits for room, no
    /// message arrived for 5 µs, or this much time passed, and takes the next 64. The
    /// publishing and consuming threads then meet once per batch on a queue that never runs
    /// empty, instead of once per message. Queues of less than 256 slots (room for two such
    /// backlogs) never wait: the publishers would fill them while the subscriber waits.
    ///
    /// Whether that pays depends on the machine (`BENCHMARKS.md`): on one development
    /// machine it took about 100 ns per event off the memory bench, where a subscriber that
    /// kept its queue nearly empty was slow; on another the median did not move, and about one
    /// run in seven that waited for a backlog ran at half speed, while none did without the
    /// wait; on a third, faster one the median moved by about 10 ns (noise) and no run was slow.
    /// Hence off by default.
    ///
    /// The cost is latency under sustained load: a message may wait this much longer in a
    /// queue that is busy anyway. A message that reaches an idle subscriber is taken at once,
    /// the last messages of a burst about 5 µs after the last one arrived. When publishers
    /// wait for the subscriber instead (clients that each keep a request in flight), waits
    /// end on that pause and are then skipped more and more often. The waiting subscriber
    /// yields to the runtime, so other tasks on its thread keep running; it looks at the clock
    /// each time it gets the thread back, so on a busy runtime a wait can last longer.
    pub fn batch_wait(mut self, wait: Duration) -> Self {
        self.batch_wait = wait;
        self
    }

    /// Builds the broker.
    pub fn build(self) -> MemoryBroker {
        MemoryBroker {
            inner: Arc::new(Inner {
                name: self.name,
                capacity: self.capacity,
                publish_timeout: self.publish_timeout,
                batch_wait: self.batch_wait,
                closed: AtomicBool::new(false),
                lifecycle: Mutex::new(Lifecycle::new()),
                topics: RwLock::new(HashMap::default()),
            }),
        }
    }
}

impl Default for MemoryBroker {
    fn default() -> Self {
        MemoryBroker::new()
    }
}

impl MemoryBroker {
    /// A broker with default settings.
    pub fn new() -> Self {
        MemoryBroker::builder().build()
    }

    /// Configures a broker.
    pub fn builder() -> MemoryBrokerBuilder {
        MemoryBrokerBuilder {
            name: String::new(),
            capacity: 1024,
            publish_timeout: Duration::from_secs(30),
            batch_wait: DEFAULT_BATCH_WAIT,
        }
    }

    /// The process-wide broker named `name` (`""` is the default one, `memory://`), created on
    /// first use. Services in one process that use `EVENT_BROKER=memory://` share it.
    pub fn shared(name: &str) -> MemoryBroker {
        static SHARED: OnceLock<Mutex<HashMap<String, MemoryBroker>>> = OnceLock::new();
        let mut all = SHARED
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        all.entry(name.to_owned())
            .or_insert_with(|| MemoryBroker::builder().name(name).build())
            .clone()
    }

    /// Builds a broker from a `memory://NAME?capacity=N&publish_timeout_ms=N&batch_wait_us=N`
    /// URL.
    ///
    /// # Errors
    ///
    /// [`BrokerUrlError::Invalid`] for an unknown or malformed query parameter.
    pub fn from_url(url: &::url::Url) -> Result<MemoryBroker, BrokerUrlError> {
        let name = url.host_str().unwrap_or("").to_owned();
        let mut builder = None::<MemoryBrokerBuilder>;
        for (key, value) in url.query_pairs() {
            let set: fn(MemoryBrokerBuilder, u64) -> MemoryBrokerBuilder = match &*key {
                "capacity" => |b, n| b.capacity(n as usize),
                "publish_timeout_ms" => |b, n| b.publish_timeout(Duration::from_millis(n)),
                "batch_wait_us" => |b, n| b.batch_wait(Duration::from_micros(n)),
                other => {
                    return Err(BrokerUrlError::Invalid {
                        url: url.to_string(),
                        problem: format!(
                            "unknown query parameter {other:?}; the memory broker knows capacity, publish_timeout_ms and batch_wait_us"
                        ),
                    });
                }
            };
            let parsed = value.parse::<u64>().map_err(|_| BrokerUrlError::Invalid {
                url: url.to_string(),
                problem: format!("query parameter {key} must be a whole number, not {value:?}"),
            })?;
            let b = builder.get_or_insert_with(|| MemoryBroker::builder().name(name.clone()));
            *b = set(b.clone(), parsed);
        }
        Ok(match builder {
            // settings given: a private broker with those settings
            Some(builder) => builder.build(),
            None => MemoryBroker::shared(&name),
        })
    }

    /// Waits for a backlog the subscribers of `topic` started.
    #[cfg(test)]
    fn batch_waits(&self, topic: &str) -> usize {
        self.topic(topic).map_or(0, |topic| {
            let queues = topic.snapshot();
            queues
                .iter()
                .map(|q| q.batch_waits.load(Ordering::Relaxed))
                .sum()
        })
    }

    /// How many messages wait in, or are being handled from, the queues of `topic`
    /// (summed over groups and broadcast subscribers).
    pub fn pending(&self, topic: &str) -> usize {
        let Some(topic) = self.topic(topic) else {
            return 0;
        };
        let queues = topic.snapshot();
        queues.iter().map(|q| q.slots.in_use()).sum()
    }

    fn topic(&self, topic: &str) -> Option<Arc<Topic>> {
        self.inner
            .topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
            .cloned()
    }

    fn topic_or_create(&self, topic: &str) -> Arc<Topic> {
        if let Some(t) = self.topic(topic) {
            return t;
        }
        self.inner
            .topics
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(topic.to_owned())
            .or_insert_with(|| {
                Arc::new(Topic {
                    name: topic.into(),
                    ..Topic::default()
                })
            })
            .clone()
    }

    /// Publishes to a topic some queue of which is full, or on which publishers wait:
    /// waits for room in each queue in turn, at most the publish timeout.
    async fn publish_waiting(
        &self,
        topic: &str,
        message: Message,
    ) -> Result<Receipt, PublishError> {
        let state = self.topic_or_create(topic);
        let _waiting = Counted::on(&state.waiting);
        let sequence = state.sequence.fetch_add(1, Ordering::AcqRel) + 1;
        let queues = state.snapshot();
        let mut message = Some(message);
        for (i, queue) in queues.iter().enumerate() {
            if !queue.slots.try_take() {
                let wait = queue.slots.take(&queue.closed);
                match tokio::time::timeout(self.inner.publish_timeout, wait).await {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(_elapsed) => {
                        let message = message.take().expect("message present");
                        return Err(PublishError::new(
                            topic,
                            message,
                            BrokerError::Timeout {
                                broker: BROKER_NAME,
                                operation: "publish (queue full)",
                                timeout: self.inner.publish_timeout,
                            },
                        ));
                    }
                }
            }
            queue.push(Entry {
                message: copy_for(i, &queues, &mut message),
                sequence,
                attempt: 1,
            });
        }
        Ok(Receipt::new(Position::Sequence { sequence }))
    }

    /// [`Broker::try_publish`] to a topic found.
    fn try_publish_to(&self, state: &Topic, message: Message) -> TryPublish {
        if state.waiting.load(Ordering::Acquire) > 0 {
            return TryPublish::WouldWait(message);
        }
        // no reference count is taken on the queue list: its lock is held for the few pushes
        // below
        let queues = state.queues.read().unwrap_or_else(|e| e.into_inner());
        // a slot in every queue, or in none
        for (i, queue) in queues.iter().enumerate() {
            if !queue.slots.try_take() {
                for taken in &queues[..i] {
                    taken.slots.untake();
                }
                return TryPublish::WouldWait(message);
            }
        }
        let sequence = state.sequence.fetch_add(1, Ordering::AcqRel) + 1;
        let mut message = Some(message);
        for (i, queue) in queues.iter().enumerate() {
            queue.push(Entry {
                message: copy_for(i, &queues, &mut message),
                sequence,
                attempt: 1,
            });
        }
        TryPublish::Done(Ok(Receipt::new(Position::Sequence { sequence })))
    }

    fn closed_error(&self) -> BrokerError {
        BrokerError::Closed {
            broker: BROKER_NAME,
            address: self.address(),
        }
    }

    fn lifecycle(&self) -> Lifecycle {
        self.inner
            .lifecycle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The copy of `message` for queue `i` of `queues`: the last queue gets the message itself.
fn copy_for(i: usize, queues: &[Arc<Queue>], message: &mut Option<Message>) -> Message {
    if i + 1 == queues.len() {
        message.take().expect("message present")
    } else {
        message.clone().expect("message present")
    }
}

/// The topics this thread has published to, each with the broker it belongs to: a publish then
/// finds its topic without the broker's topic-map lock (in the memory bench, with the publisher
/// the slower side, that lock was about 100 ns of 700 per event; see `BENCHMARKS.md`).
///
/// A broker never removes a topic from its map, so an entry stays right for as long as its
/// broker lives; the `Weak` keeps the broker's address from being taken by another broker
/// meanwhile. Entries of dropped brokers are cleared when a name is added and the map has
/// grown past [`RecentTopics::PRUNE_ABOVE`] names; until then they hold their topic's queue
/// list (no messages: a broker's queues are emptied when their last member leaves).
#[derive(Default)]
struct RecentTopics {
    /// Topic name → that topic on each broker this thread published it to.
    ///
    /// The names are this thread's own copies: the topic's name sits in a small allocation
    /// whose cache line may be shared with a consumer's reference counts, which change with
    /// every message (measured: 4 % of a publishing thread's time in comparing the name).
    by_name: HashMap<Box<str>, Vec<BrokerTopic>, foldhash::fast::RandomState>,
}

/// A topic and the broker it belongs to.
type BrokerTopic = (Weak<Inner>, Arc<Topic>);

thread_local! {
    static RECENT: RefCell<RecentTopics> = RefCell::default();
}

impl RecentTopics {
    /// Names held before entries of dropped brokers are cleared.
    const PRUNE_ABOVE: usize = 256;

    /// `broker`'s topic named `name`, if this thread published to it before.
    fn find(&self, broker: &Arc<Inner>, name: &str) -> Option<&Topic> {
        self.by_name.get(name)?.iter().find_map(|(owner, topic)| {
            std::ptr::eq(owner.as_ptr(), Arc::as_ptr(broker)).then_some(&**topic)
        })
    }

    /// Remembers `topic` of `broker`.
    fn remember(&mut self, broker: &Arc<Inner>, topic: Arc<Topic>) {
        if !self.by_name.contains_key(&*topic.name) && self.by_name.len() >= Self::PRUNE_ABOVE {
            self.by_name.retain(|_, topics| {
                topics.retain(|(owner, _)| owner.strong_count() > 0);
                !topics.is_empty()
            });
        }
        let topics = self.by_name.entry(Box::from(&*topic.name)).or_default();
        topics.retain(|(owner, _)| owner.strong_count() > 0);
        topics.push((Arc::downgrade(broker), topic));
    }
}

impl Topic {
    fn snapshot(&self) -> Arc<[Arc<Queue>]> {
        self.queues
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Joins `group` (or adds a broadcast queue) and returns the member's queue.
    fn join(&self, group: Option<&str>, capacity: usize) -> Arc<Queue> {
        let mut queues = self.queues.write().unwrap_or_else(|e| e.into_inner());
        if let Some(group) = group
            && let Some(q) = queues
                .iter()
                .find(|q| q.group.as_deref() == Some(group) && !q.closed.load(Ordering::Acquire))
        {
            q.members.fetch_add(1, Ordering::AcqRel);
            return q.clone();
        }
        let queue = Arc::new(Queue {
            group: group.map(str::to_owned),
            members: AtomicUsize::new(1),
            closed: AtomicBool::new(false),
            pending: Padded(Pending {
                entries: Mutex::new(VecDeque::new()),
                ready: Notify::new(),
            }),
            slots: Slots::new(capacity),
            #[cfg(test)]
            batch_waits: AtomicUsize::new(0),
        });
        let mut next: Vec<_> = queues.iter().cloned().collect();
        next.push(queue.clone());
        *queues = next.into();
        queue
    }

    /// Leaves the queue; the last member removes it and its waiting messages.
    fn leave(&self, queue: &Arc<Queue>) {
        let mut queues = self.queues.write().unwrap_or_else(|e| e.into_inner());
        if queue.members.fetch_sub(1, Ordering::AcqRel) == 1 {
            queue.closed.store(true, Ordering::Release);
            queue.slots.freed.notify_waiters();
            let dropped = {
                let mut entries = queue
                    .pending
                    .entries
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                std::mem::take(&mut *entries).len()
            };
            if dropped > 0 {
                tracing::warn!(
                    group = queue.group.as_deref().unwrap_or("(broadcast)"),
                    dropped,
                    "the last member left; the in-memory queue and its waiting messages are gone"
                );
            }
            let next: Vec<_> = queues
                .iter()
                .filter(|q| !Arc::ptr_eq(q, queue))
                .cloned()
                .collect();
            *queues = next.into();
        }
    }
}

impl Queue {
    /// Whether one subscriber alone takes this queue's messages.
    fn has_one_member(&self) -> bool {
        self.members.load(Ordering::Acquire) == 1
    }

    fn push(&self, entry: Entry) {
        let mut entries = self
            .pending
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let was_empty = entries.is_empty();
        entries.push_back(entry);
        drop(entries);
        // a consumer only waits after it found the queue empty under the lock, so only the
        // first entry of an empty queue needs a wake-up; members of a group pass it on
        if was_empty {
            self.pending.ready.notify_one();
        }
    }

    fn push_front(&self, entry: Entry) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        self.pending
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_front(entry);
        self.pending.ready.notify_one();
    }

    /// Moves waiting entries into `batch`: up to [`BATCH`] when `alone` (the queue's only
    /// member), else one, passing the wake-up on to another member when more wait.
    fn take_into(&self, batch: &mut VecDeque<Entry>, alone: bool) {
        let mut entries = self
            .pending
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if alone {
            let n = entries.len().min(BATCH);
            batch.extend(entries.drain(..n));
        } else if let Some(entry) = entries.pop_front() {
            batch.push_back(entry);
            if !entries.is_empty() {
                drop(entries);
                self.pending.ready.notify_one();
            }
        }
    }

    /// Puts `batch` back at the front of the queue, in publish order with entries given back
    /// meanwhile.
    fn put_back(&self, batch: &mut VecDeque<Entry>) {
        if batch.is_empty() {
            return;
        }
        let mut entries = self
            .pending
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        while let Some(entry) = batch.pop_back() {
            entries.push_front(entry);
        }
        // a message given back (nack, abandon) went to the front while later ones sat in the
        // batch: restore publish order
        entries
            .make_contiguous()
            .sort_by_key(|entry| entry.sequence);
        drop(entries);
        self.pending.ready.notify_one();
    }
}

/// How many waiting messages the only member of a queue takes per lock of the queue.
const BATCH: usize = 64;

/// The backlog a busy subscriber lets build up: a batch to take, and a batch that stays
/// queued meanwhile, so that the publishers never find the queue empty (see [`BatchWait`]).
const BACKLOG: usize = 2 * BATCH;

/// The smallest queue whose subscriber waits for a backlog: room for two.
const MIN_CAPACITY: usize = 2 * BACKLOG;

/// Messages waiting at a fetch that show a busy subscriber: more than one, so that a client
/// that waits for each message's answer before it sends the next (one message waits at every
/// fetch) never waits for a backlog that cannot come.
const BUSY: usize = 2;

/// A wait of [`MemoryBrokerBuilder::batch_wait`] ends this long after the last message
/// arrived: the publishers paused, and what they sent is taken.
const QUIET: Duration = Duration::from_micros(5);

/// The most fetches a subscriber goes without waiting after waits that ended on a pause.
const MAX_SKIP: u32 = 64;

/// How a busy subscriber paces its fetches ([`MemoryBrokerBuilder::batch_wait`]): when it
/// waits for a backlog, and when it skips waits that would find none coming.
///
/// Why: when a subscriber is as fast as its publishers, the queue is nearly empty, and the
/// two threads meet on it for every message (its lock, the slot just written, the header
/// vector and payload buffer just used, a wake-up when the queue was empty). With a backlog
/// they meet once per batch, on lines neither touched recently. Whether that pays depends on
/// the machine, hence off by default (see [`MemoryBrokerBuilder::batch_wait`] and
/// `BENCHMARKS.md`).
#[derive(Debug)]
struct Pacing {
    /// Zero (no waits) with a concurrency above 1 or in a queue of less than [`MIN_CAPACITY`].
    batch_wait: Duration,
    /// Whether the last fetch found [`BUSY`] messages or more waiting.
    busy: bool,
    /// Fetches to go without waiting. Publishers that wait for this subscriber's answers
    /// (clients that each keep a request in flight) send no backlog: a wait for one ends on a
    /// pause, and then the next 1, 2, 4, ... (at most [`MAX_SKIP`]) fetches skip theirs, until
    /// a wait ends with its backlog or deadline.
    skip: u32,
    /// How many fetches the next wait that ends on a pause makes skip theirs.
    next_skip: u32,
}

/// Why a [`BatchWait`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WaitEnd {
    /// The backlog is there, or publishers wait for room.
    Backlog,
    /// [`MemoryBrokerBuilder::batch_wait`] passed.
    Deadline,
    /// No message arrived for [`QUIET`].
    Pause,
}

impl Pacing {
    /// Pacing for a subscriber of a queue of `capacity` that handles up to `concurrency`
    /// messages at once.
    fn new(batch_wait: Duration, capacity: usize, concurrency: usize) -> Self {
        Pacing {
            // - a subscriber with several messages in flight cannot tell them from waiting
            //   ones (the count of unsettled messages holds both);
            // - in a queue without room for two backlogs the publishers would fill it while
            //   the subscriber waits, and then wait for it to empty: the two threads would
            //   take turns instead of working side by side
            batch_wait: if concurrency == 1 && capacity >= MIN_CAPACITY {
                batch_wait
            } else {
                Duration::ZERO
            },
            busy: false,
            skip: 0,
            next_skip: 1,
        }
    }

    /// Before a fetch that finds `waiting` messages: a wait to start, or `None` to fetch at
    /// once. A wait starts only if this fetch and the last both find [`BUSY`] or more (the
    /// publishers keep the subscriber busy), the subscriber is its queue's only member
    /// (`alone`), waiting is on, the backlog is not there yet, and no skip is left.
    fn before_fetch(&mut self, waiting: usize, alone: bool, now: Instant) -> Option<BatchWait> {
        let was_busy = std::mem::replace(&mut self.busy, waiting >= BUSY);
        if !was_busy || !alone || self.batch_wait.is_zero() || !(BUSY..BACKLOG).contains(&waiting) {
            return None;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return None;
        }
        Some(BatchWait {
            deadline: now + self.batch_wait,
            waiting,
            last_arrival: now,
        })
    }

    /// The subscriber found the queue empty: it is not kept busy.
    fn went_idle(&mut self) {
        self.busy = false;
    }

    /// After a wait that ended for `end`.
    fn after_wait(&mut self, end: WaitEnd) {
        if end == WaitEnd::Pause {
            self.skip = self.next_skip;
            self.next_skip = (self.next_skip * 2).min(MAX_SKIP);
        } else {
            self.next_skip = 1;
        }
    }
}

/// One wait of a busy subscriber for its backlog (see [`Pacing`]).
#[derive(Debug)]
struct BatchWait {
    deadline: Instant,
    waiting: usize,
    last_arrival: Instant,
}

impl BatchWait {
    /// Whether, and why, the wait is over with `waiting` messages at `now`;
    /// `publishers_wait`: a publisher waits for room in the queue.
    fn is_over(&mut self, waiting: usize, publishers_wait: bool, now: Instant) -> Option<WaitEnd> {
        if waiting != self.waiting {
            self.waiting = waiting;
            self.last_arrival = now;
        }
        if waiting >= BACKLOG || publishers_wait {
            Some(WaitEnd::Backlog)
        } else if now >= self.deadline {
            Some(WaitEnd::Deadline)
        } else if now >= self.last_arrival + QUIET {
            Some(WaitEnd::Pause)
        } else {
            None
        }
    }
}

struct MemorySource {
    topic_name: Arc<str>,
    topic: Arc<Topic>,
    queue: Arc<Queue>,
    /// Messages taken from the queue, not yet handed to the delivery loop.
    batch: VecDeque<Entry>,
    /// When to wait for a backlog.
    pacing: Pacing,
    /// When `batch` was taken from the queue: its messages' receive time.
    taken_at: SystemTime,
}

impl Drop for MemorySource {
    fn drop(&mut self) {
        // messages taken but never handed out stay available to the group
        self.queue.put_back(&mut self.batch);
    }
}

struct MemoryAcker {
    queue: Arc<Queue>,
    sequence: u64,
}

impl MemoryAcker {
    fn give_back(self, delivery: Delivery) {
        let attempt = delivery.attempt() + 1;
        self.queue.push_front(Entry {
            message: delivery.into_message(),
            sequence: self.sequence,
            attempt,
        });
    }
}

impl Acknowledge for MemoryAcker {
    async fn ack(self) -> Result<(), BrokerError> {
        self.queue.slots.give_back();
        Ok(())
    }

    async fn nack(self, delivery: Delivery) -> Result<(), BrokerError> {
        self.give_back(delivery);
        Ok(())
    }

    fn abandon(self, delivery: Delivery) {
        self.give_back(delivery);
    }
}

impl MemorySource {
    /// Before a fetch from the queue: lets a backlog build up while the publishers keep this
    /// subscriber busy (see [`MemoryBrokerBuilder::batch_wait`] and [`Pacing`]).
    async fn wait_for_batch(&mut self) {
        // with one message handled at a time and none left in `batch`, every unsettled
        // message waits in the queue
        let waiting = self.queue.slots.in_use();
        let alone = self.queue.has_one_member();
        let Some(mut wait) = self.pacing.before_fetch(waiting, alone, Instant::now()) else {
            return;
        };
        #[cfg(test)]
        self.queue.batch_waits.fetch_add(1, Ordering::Relaxed);
        loop {
            // yields rather than spins: other tasks of this thread run meanwhile
            tokio::task::yield_now().await;
            if self.queue.closed.load(Ordering::Acquire) {
                return;
            }
            let publishers_wait = self.queue.slots.waiting.load(Ordering::SeqCst) > 0;
            let now = Instant::now();
            if let Some(end) = wait.is_over(self.queue.slots.in_use(), publishers_wait, now) {
                self.pacing.after_wait(end);
                return;
            }
        }
    }

    /// The next waiting message, if any.
    fn take_next(&mut self) -> Option<Incoming<MemoryAcker>> {
        if self.batch.is_empty() {
            let alone = self.queue.has_one_member();
            self.queue.take_into(&mut self.batch, alone);
            if self.batch.is_empty() {
                return None;
            }
            // the messages of a batch are received together: one clock reading
            self.taken_at = SystemTime::now();
        }
        self.next_at_hand()
    }

    fn incoming(&self, entry: Entry) -> Incoming<MemoryAcker> {
        let mut delivery = Delivery::received(
            self.topic_name.clone(),
            entry.message,
            Position::Sequence {
                sequence: entry.sequence,
            },
            self.taken_at,
        );
        // set in place: the builder would move the delivery twice more
        delivery.set_attempt(entry.attempt);
        Incoming {
            delivery,
            acker: MemoryAcker {
                queue: self.queue.clone(),
                sequence: entry.sequence,
            },
        }
    }
}

impl DeliverySource for MemorySource {
    type Acker = MemoryAcker;

    fn next_at_hand(&mut self) -> Option<Incoming<MemoryAcker>> {
        let entry = self.batch.pop_front()?;
        Some(self.incoming(entry))
    }

    async fn next(&mut self) -> Option<Incoming<MemoryAcker>> {
        if self.batch.is_empty() {
            self.wait_for_batch().await;
        }
        loop {
            if let Some(incoming) = self.take_next() {
                return Some(incoming);
            }
            self.pacing.went_idle();
            if self.queue.closed.load(Ordering::Acquire) {
                return None;
            }
            // A publisher is often about to push: yield a few times before parking, which
            // saves a thread wake-up per message when the consumer is faster than the producer.
            for _ in 0..SPIN_YIELDS {
                tokio::task::yield_now().await;
                if let Some(incoming) = self.take_next() {
                    return Some(incoming);
                }
            }
            let queue = self.queue.clone();
            let ready = queue.pending.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            if let Some(incoming) = self.take_next() {
                return Some(incoming);
            }
            if self.queue.closed.load(Ordering::Acquire) {
                return None;
            }
            ready.await;
        }
    }

    async fn close(mut self) {
        self.queue.put_back(&mut self.batch);
        self.topic.leave(&self.queue);
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn name(&self) -> &'static str {
        BROKER_NAME
    }

    fn address(&self) -> String {
        format!("memory://{}", self.inner.name)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            ordered_per_key: true,
            ..Capabilities::none()
        }
    }

    async fn connect(&self) -> Result<(), BrokerError> {
        self.inner
            .lifecycle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .renew_if_shut_down();
        self.inner.closed.store(false, Ordering::Release);
        Ok(())
    }

    async fn disconnect(&self) -> Result<(), BrokerError> {
        self.inner.closed.store(true, Ordering::Release);
        self.lifecycle().shutdown().await;
        Ok(())
    }

    async fn publish(&self, topic: &str, message: Message) -> Result<Receipt, PublishError> {
        match self.try_publish(topic, message) {
            TryPublish::Done(result) => result,
            TryPublish::WouldWait(message) => self.publish_waiting(topic, message).await,
        }
    }

    fn try_publish(&self, topic: &str, message: Message) -> TryPublish {
        if self.inner.closed.load(Ordering::Acquire) {
            return TryPublish::Done(Err(PublishError::new(topic, message, self.closed_error())));
        }
        let mut message = Some(message);
        let recent = RECENT.try_with(|recent| {
            let recent = recent.try_borrow().ok()?;
            let state = recent.find(&self.inner, topic)?;
            Some(self.try_publish_to(state, message.take().expect("not taken yet")))
        });
        if let Ok(Some(published)) = recent {
            return published;
        }
        let message = message.expect("not taken on a miss");
        let state = match self.topic(topic) {
            Some(state) => state,
            None => {
                // a topic is validated once, when it is first used
                if let Err(error) = validate_topic(topic) {
                    return TryPublish::Done(Err(PublishError::new(topic, message, error)));
                }
                self.topic_or_create(topic)
            }
        };
        let published = self.try_publish_to(&state, message);
        // skipped in a thread-local destructor, or should a publish ever run inside the
        // lookup above
        let _ = RECENT.try_with(|recent| {
            if let Ok(mut recent) = recent.try_borrow_mut() {
                recent.remember(&self.inner, state);
            }
        });
        published
    }

    async fn subscribe(
        &self,
        topic: &str,
        options: SubscribeOptions,
        handler: Arc<dyn RawHandler>,
    ) -> Result<Subscription, BrokerError> {
        validate_subscription(topic, &options)?;
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(self.closed_error());
        }
        let state = self.topic_or_create(topic);
        let queue = state.join(options.queue_name(), self.inner.capacity);
        let source = MemorySource {
            topic_name: Arc::from(topic),
            topic: state,
            queue,
            batch: VecDeque::new(),
            pacing: Pacing::new(
                self.inner.batch_wait,
                self.inner.capacity,
                options.concurrency.get(),
            ),
            taken_at: SystemTime::UNIX_EPOCH,
        };
        Ok(self
            .lifecycle()
            .spawn(topic, source, &options, handler, Arc::new(self.clone())))
    }
}

crate::register_broker_scheme!("memory", |url| Ok(Arc::new(MemoryBroker::from_url(url)?)));

#[cfg(test)]
mod tests {
    use super::*;

    /// Publishers and a consumer hammer one queue's slots from several threads: the count
    /// never passes the capacity, and no waiting publisher is left asleep with room free.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slots_hold_the_capacity_and_wake_every_waiter() {
        const CAPACITY: usize = 8;
        const PER_PUBLISHER: usize = 20_000;
        let slots = Arc::new(Slots::new(CAPACITY));
        let closed = Arc::new(AtomicBool::new(false));
        let outstanding = Arc::new(AtomicUsize::new(0));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let publishers: Vec<_> = (0..3)
            .map(|_| {
                let (slots, closed, outstanding, tx) = (
                    slots.clone(),
                    closed.clone(),
                    outstanding.clone(),
                    tx.clone(),
                );
                tokio::spawn(async move {
                    for _ in 0..PER_PUBLISHER {
                        assert!(slots.take(&closed).await, "the queue never closes here");
                        let now = outstanding.fetch_add(1, Ordering::SeqCst) + 1;
                        assert!(now <= CAPACITY, "{now} slots in use, capacity {CAPACITY}");
                        tx.send(()).expect("consumer alive");
                    }
                })
            })
            .collect();
        drop(tx);
        let consumer = {
            let (slots, outstanding) = (slots.clone(), outstanding.clone());
            tokio::spawn(async move {
                let mut settled = 0;
                while rx.recv().await.is_some() {
                    outstanding.fetch_sub(1, Ordering::SeqCst);
                    slots.give_back();
                    settled += 1;
                }
                settled
            })
        };
        let all = async {
            for publisher in publishers {
                publisher.await.expect("publisher");
            }
            consumer.await.expect("consumer")
        };
        let settled = tokio::time::timeout(Duration::from_secs(30), all)
            .await
            .expect("a waiting publisher was never woken");
        assert_eq!(settled, 3 * PER_PUBLISHER);
        assert_eq!(slots.in_use(), 0);
        assert_eq!(slots.waiting.load(Ordering::SeqCst), 0);
    }

    /// When a busy subscriber waits for a backlog, and when it fetches at once.
    #[test]
    fn a_batch_wait_starts_only_for_a_busy_subscriber() {
        let now = Instant::now();
        let wait = Duration::from_micros(50);
        // `busy_then(n)`: pacing whose last fetch found BUSY, now finding `n`
        let busy_then = |batch_wait, capacity, waiting, alone| {
            let mut pacing = Pacing::new(batch_wait, capacity, 1);
            assert!(
                pacing.before_fetch(BUSY, alone, now).is_none(),
                "first fetch"
            );
            pacing.before_fetch(waiting, alone, now)
        };
        // the last fetch found less than BUSY: a message to an idle subscriber, or a client
        // that waits for each answer, is taken at once
        let mut pacing = Pacing::new(wait, 1024, 1);
        assert!(pacing.before_fetch(BUSY - 1, true, now).is_none());
        assert!(pacing.before_fetch(5, true, now).is_none());
        // this fetch finds less than BUSY
        assert!(busy_then(wait, 1024, BUSY - 1, true).is_none());
        // the backlog is there
        assert!(busy_then(wait, 1024, BACKLOG, true).is_none());
        // a queue without room for two backlogs: no waits
        assert!(busy_then(wait, 16, 8, true).is_none());
        assert!(busy_then(wait, MIN_CAPACITY - 1, 8, true).is_none());
        assert!(busy_then(wait, MIN_CAPACITY, 8, true).is_some());
        // several messages in flight, which the count of unsettled ones includes
        let mut concurrent = Pacing::new(wait, 1024, 4);
        assert!(concurrent.before_fetch(BUSY, true, now).is_none());
        assert!(concurrent.before_fetch(BUSY, true, now).is_none());
        // waiting is off, or the subscriber shares its queue with others
        assert!(busy_then(Duration::ZERO, 1024, BUSY, true).is_none());
        assert!(busy_then(wait, 1024, BUSY, false).is_none());
        assert!(busy_then(wait, 1024, BUSY, true).is_some());
        assert!(busy_then(wait, 1024, BACKLOG - 1, true).is_some());
        // an empty queue ends the streak
        let mut pacing = Pacing::new(wait, 1024, 1);
        assert!(pacing.before_fetch(BUSY, true, now).is_none());
        pacing.went_idle();
        assert!(pacing.before_fetch(BUSY, true, now).is_none());
    }

    /// A wait ends with the backlog, when publishers wait for room, at the deadline, or once
    /// no message arrived for [`QUIET`]; arrivals keep it going until then.
    #[test]
    fn a_batch_wait_ends_with_the_backlog_the_deadline_or_a_pause() {
        let start = Instant::now();
        let us = |n| start + Duration::from_micros(n);
        let new = || {
            let mut pacing = Pacing::new(Duration::from_micros(50), 1024, 1);
            assert!(pacing.before_fetch(10, true, start).is_none());
            pacing.before_fetch(10, true, start).expect("busy")
        };

        let mut wait = new();
        assert_eq!(wait.is_over(10, false, us(1)), None);
        assert_eq!(wait.is_over(BACKLOG, false, us(2)), Some(WaitEnd::Backlog));

        let mut wait = new();
        assert_eq!(
            wait.is_over(10, true, us(1)),
            Some(WaitEnd::Backlog),
            "a publisher waits for room: the backlog cannot grow"
        );

        // a message every 3 µs (closer than QUIET) keeps the wait going to its deadline
        let mut wait = new();
        let mut at = 0;
        let mut waiting = 10;
        while at + 3 < 50 {
            at += 3;
            waiting += 1;
            assert_eq!(wait.is_over(waiting, false, us(at)), None, "at {at} µs");
        }
        assert_eq!(
            wait.is_over(waiting + 1, false, us(50)),
            Some(WaitEnd::Deadline)
        );

        // the publishers paused: the wait ends QUIET after the last arrival
        let quiet = QUIET.as_micros() as u64;
        let mut wait = new();
        assert_eq!(wait.is_over(11, false, us(2)), None);
        assert_eq!(wait.is_over(11, false, us(2 + quiet - 1)), None);
        assert_eq!(wait.is_over(11, false, us(2 + quiet)), Some(WaitEnd::Pause));
    }

    /// Waits that end on a pause (publishers that wait for this subscriber) make the next
    /// 1, 2, 4, ... fetches skip theirs; a wait that gets its backlog starts that over.
    #[test]
    fn waits_that_end_on_a_pause_are_skipped_more_and_more() {
        let now = Instant::now();
        let mut pacing = Pacing::new(Duration::from_micros(50), 1024, 1);
        assert!(pacing.before_fetch(10, true, now).is_none(), "first fetch");
        // (waits started, fetches skipped) over a run of fetches
        let run = |pacing: &mut Pacing, fetches: usize, end: WaitEnd| {
            let (mut waits, mut skipped) = (0, 0);
            for _ in 0..fetches {
                match pacing.before_fetch(10, true, now) {
                    Some(_) => {
                        waits += 1;
                        pacing.after_wait(end);
                    }
                    None => skipped += 1,
                }
            }
            (waits, skipped)
        };
        // waits at fetches 1, 3, 6, 11, 20, 37, 70 and 135, each followed by 1, 2, 4, 8, 16,
        // 32, 64 and 64 skips: 8 waits in 150 fetches, 49 skips left
        assert_eq!(run(&mut pacing, 150, WaitEnd::Pause), (8, 142));
        // the skips left run out, then a wait that gets its backlog starts over
        assert_eq!(run(&mut pacing, 50, WaitEnd::Backlog), (1, 49));
        assert_eq!(run(&mut pacing, 3, WaitEnd::Backlog), (3, 0));
        assert_eq!(run(&mut pacing, 4, WaitEnd::Pause), (2, 2));
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

    /// Entries of dropped brokers leave the thread's cache once it holds more names than
    /// [`RecentTopics::PRUNE_ABOVE`]; live ones stay.
    #[test]
    fn the_thread_cache_forgets_dropped_brokers() {
        let mut recent = RecentTopics::default();
        let live = MemoryBroker::new();
        let kept = live.topic_or_create("kept");
        recent.remember(&live.inner, kept);
        {
            let gone = MemoryBroker::new();
            for i in 0..RecentTopics::PRUNE_ABOVE {
                let name = format!("gone.{i}");
                recent.remember(&gone.inner, gone.topic_or_create(&name));
            }
            assert!(recent.find(&gone.inner, "gone.0").is_some());
        }
        assert_eq!(recent.by_name.len(), RecentTopics::PRUNE_ABOVE + 1);
        // a new name past the bound clears the dropped broker's entries
        recent.remember(&live.inner, live.topic_or_create("new"));
        assert_eq!(
            recent.by_name.len(),
            2,
            "only the live broker's names are left"
        );
        assert!(recent.find(&live.inner, "kept").is_some());
        assert!(recent.find(&live.inner, "new").is_some());
    }

    #[test]
    fn a_slot_taken_and_given_back_unused_is_free_again() {
        let slots = Slots::new(2);
        assert!(slots.try_take());
        assert!(slots.try_take());
        assert!(!slots.try_take(), "full at capacity");
        slots.untake();
        assert_eq!(slots.in_use(), 1);
        assert!(slots.try_take());
        slots.give_back();
        slots.give_back();
        assert_eq!(slots.in_use(), 0);
        assert!(slots.try_take() && slots.try_take() && !slots.try_take());
    }
}
