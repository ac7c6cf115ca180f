//! [`MemoryBrokerBuilder`]: the settings of a memory broker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::{BROKER_NAME, Inner, MemoryBroker};
use crate::backend::Lifecycle;

/// The default [`MemoryBrokerBuilder::batch_wait`]: off (see there why).
const DEFAULT_BATCH_WAIT: Duration = Duration::ZERO;

/// Configures a [`MemoryBroker`].
#[derive(Debug, Clone)]
#[must_use]
pub struct MemoryBrokerBuilder {
    name: String,
    capacity: usize,
    publish_timeout: Duration,
    batch_wait: Duration,
    unclaimed_capacity: usize,
    shared: bool,
}

impl MemoryBrokerBuilder {
    /// The default settings ([`MemoryBroker::builder`]).
    pub(super) fn new() -> Self {
        MemoryBrokerBuilder {
            name: String::new(),
            capacity: 1024,
            publish_timeout: Duration::from_secs(30),
            batch_wait: DEFAULT_BATCH_WAIT,
            unclaimed_capacity: 1_000,
            shared: false,
        }
    }

    /// The process-wide broker of [`MemoryBroker::shared`]: it closes when every handle that
    /// connected has disconnected.
    pub(super) fn shared(mut self) -> Self {
        self.shared = true;
        self
    }

    /// How many dead letters the broker keeps per topic while nothing subscribes to that
    /// topic (default 1,000): see [`MemoryBroker::unclaimed_dead_letters`]. Beyond it, the
    /// oldest is discarded, with an error logged.
    pub fn unclaimed_dead_letters(mut self, capacity: usize) -> Self {
        self.unclaimed_capacity = capacity;
        self
    }

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
        let name = self.name;
        MemoryBroker {
            inner: Arc::new(Inner {
                name: name.clone(),
                capacity: self.capacity,
                publish_timeout: self.publish_timeout,
                batch_wait: self.batch_wait,
                lifecycle: Lifecycle::new(BROKER_NAME, format!("memory://{}", name)),
                unclaimed: Mutex::new(HashMap::new()),
                unclaimed_capacity: self.unclaimed_capacity,
                topics: RwLock::new(HashMap::default()),
                users: self.shared.then(|| tokio::sync::Mutex::new(0)),
            }),
            connected: Arc::default(),
        }
    }
}
