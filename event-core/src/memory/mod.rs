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
//! members. Dead letters are the exception: one published to a topic with no subscriber is
//! kept (up to [`MemoryBrokerBuilder::unclaimed_dead_letters`] per topic) and can be read with
//! [`MemoryBroker::unclaimed_dead_letters`]; subscribe to `<topic>.dlq` to handle them as
//! they come.
//!
//! A publish that times out on a full queue gives the message back, but the queues of the
//! topic that had room already hold it: publishing it again delivers a duplicate to those
//! (at-least-once, like every broker here).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::backend::Lifecycle;
use crate::broker::{
    Broker, BrokerError, BrokerUrlError, Capabilities, Message, Position, PublishError, RawHandler,
    Receipt, SubscribeOptions, Subscription, TryPublish, validate_topic,
};
use crate::counted::Counted;
use crate::headers::names;

mod builder;
mod pacing;
mod queue;
mod recent;
mod slots;
mod source;
mod topic;

pub use builder::MemoryBrokerBuilder;
use pacing::Pacing;
use queue::{Entry, Queue};
use recent::RECENT;
use source::MemorySource;
use topic::Topic;

const BROKER_NAME: &str = "memory";

/// The in-memory broker. Cheap to clone: clones share the same topics.
///
/// ```
/// use event_core::memory::MemoryBroker;
/// use std::time::Duration;
///
/// let broker = MemoryBroker::builder().capacity(4096).publish_timeout(Duration::from_secs(5)).build();
/// # let _ = broker;
/// ```
pub struct MemoryBroker {
    inner: Arc<Inner>,
    /// Whether this handle connected: a process-wide broker counts each handle once, however
    /// often it connects.
    connected: Arc<AtomicBool>,
}

/// A clone is a handle of its own: of a process-wide broker, each clone that connects counts
/// as one user (two services given clones of one handle both keep it open).
impl Clone for MemoryBroker {
    fn clone(&self) -> Self {
        MemoryBroker {
            inner: self.inner.clone(),
            connected: Arc::default(),
        }
    }
}

struct Inner {
    name: String,
    capacity: usize,
    publish_timeout: Duration,
    batch_wait: Duration,
    lifecycle: Lifecycle,
    /// Dead letters published to topics nothing subscribed to, per topic, oldest first.
    unclaimed: Mutex<HashMap<String, VecDeque<Message>>>,
    unclaimed_capacity: usize,
    /// Looked up on every publish: a fast (seeded) hash instead of SipHash.
    topics: RwLock<HashMap<String, Arc<Topic>, foldhash::fast::RandomState>>,
    /// How many handles of a process-wide broker are connected: one user's disconnect (one
    /// service's shutdown) does not close it under the others. Held across the last user's
    /// close, so that a connect meanwhile waits and opens it again (a close given up on lets
    /// it go: see [`Lifecycle::open`]). `None` for a broker of its own.
    users: Option<tokio::sync::Mutex<usize>>,
}

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("name", &self.inner.name)
            .field("capacity", &self.inner.capacity)
            .field("closed", &self.inner.lifecycle.is_closed())
            .finish_non_exhaustive()
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
        MemoryBrokerBuilder::new()
    }

    /// The process-wide broker named `name` (`""` is the default one, `memory://`), created on
    /// first use. Services in one process that use `EVENT_BROKER=memory://` share it. Each call
    /// (and each clone) is a handle of its own: the broker closes
    /// when every handle that [connected](Broker::connect) has
    /// [disconnected](Broker::disconnect), so that one service's shutdown does not close it
    /// under the others. A handle that never connected closes it only when no handle is
    /// connected.
    pub fn shared(name: &str) -> MemoryBroker {
        static SHARED: OnceLock<Mutex<HashMap<String, MemoryBroker>>> = OnceLock::new();
        let mut all = SHARED
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let broker = all
            .entry(name.to_owned())
            .or_insert_with(|| MemoryBroker::builder().name(name).shared().build());
        MemoryBroker {
            inner: broker.inner.clone(),
            connected: Arc::default(),
        }
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

    /// How many messages wait in, or are being handled from, the queues of `topic`
    /// (summed over groups and broadcast subscribers).
    pub fn pending(&self, topic: &str) -> usize {
        let Some(topic) = self.topic(topic) else {
            return 0;
        };
        let queues = topic.snapshot();
        queues.iter().map(|q| q.slots.in_use()).sum()
    }

    /// How many publishes to `topic` wait for room in a full queue.
    pub fn waiting_publishes(&self, topic: &str) -> usize {
        self.topic(topic)
            .map_or(0, |topic| topic.waiting.load(Ordering::Acquire))
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
        let mut delivered = false;
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
            delivered = true;
        }
        if !delivered && let Some(message) = message {
            // every queue left while this publish waited: a dead letter is kept, as one
            // published to a topic without subscribers is
            self.keep_if_dead_letter(topic, message);
        }
        Ok(Receipt::new(Position::sequence(sequence)))
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
        if queues.is_empty() {
            drop(queues);
            self.keep_if_dead_letter(&state.name, message);
            return TryPublish::Done(Ok(Receipt::new(Position::sequence(sequence))));
        }
        let mut message = Some(message);
        for (i, queue) in queues.iter().enumerate() {
            queue.push(Entry {
                message: copy_for(i, &queues, &mut message),
                sequence,
                attempt: 1,
            });
        }
        TryPublish::Done(Ok(Receipt::new(Position::sequence(sequence))))
    }

    /// Keeps `message`, published to `topic` with no subscriber, when it is a dead letter (it
    /// carries `x-event-error`): a dead letter is never discarded just because nobody listens.
    fn keep_if_dead_letter(&self, topic: &str, message: Message) {
        if !message.headers.contains(names::X_EVENT_ERROR) {
            return;
        }
        let mut unclaimed = self
            .inner
            .unclaimed
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let kept = unclaimed.entry(topic.to_owned()).or_default();
        kept.push_back(message);
        if kept.len() > self.inner.unclaimed_capacity {
            let lost = kept.pop_front();
            tracing::error!(
                broker = %self.address(),
                %topic,
                kept = self.inner.unclaimed_capacity,
                original_topic = lost.as_ref().and_then(|m| m.headers.get_str(names::X_EVENT_ORIGINAL_TOPIC)),
                original_position = lost.as_ref().and_then(|m| m.headers.get_str(names::X_EVENT_ORIGINAL_POSITION)),
                "more dead letters than the broker keeps for a topic nothing subscribes to: the oldest is discarded (subscribe to the dead-letter topic, or raise MemoryBrokerBuilder::unclaimed_dead_letters)"
            );
        }
    }

    /// The dead letters published to `topic` while nothing subscribed to it, oldest first
    /// (at most [`MemoryBrokerBuilder::unclaimed_dead_letters`] per topic). The memory broker
    /// has no persistence: a message published to a topic without subscribers is discarded,
    /// except a dead letter, which is kept here until taken.
    pub fn unclaimed_dead_letters(&self, topic: &str) -> Vec<Message> {
        self.inner
            .unclaimed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
            .map(|kept| kept.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Takes the dead letters [`MemoryBroker::unclaimed_dead_letters`] lists, oldest first.
    pub fn take_unclaimed_dead_letters(&self, topic: &str) -> Vec<Message> {
        self.inner
            .unclaimed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(topic)
            .map(Vec::from)
            .unwrap_or_default()
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
        let Some(users) = &self.inner.users else {
            self.inner.lifecycle.open();
            return Ok(());
        };
        // waits for a close under way, then opens again
        let mut users = users.lock().await;
        if !self.connected.swap(true, Ordering::AcqRel) {
            *users += 1;
        }
        self.inner.lifecycle.open();
        Ok(())
    }

    async fn disconnect(&self) -> Result<(), BrokerError> {
        let Some(users) = &self.inner.users else {
            self.inner.lifecycle.close().await;
            return Ok(());
        };
        let mut users = users.lock().await;
        if self.connected.swap(false, Ordering::AcqRel) {
            *users -= 1;
        }
        if *users > 0 {
            // other handles still use the process-wide broker
            return Ok(());
        }
        self.inner.lifecycle.close().await;
        Ok(())
    }

    async fn publish(&self, topic: &str, message: Message) -> Result<Receipt, PublishError> {
        match self.try_publish(topic, message) {
            TryPublish::Done(result) => result,
            TryPublish::WouldWait(message) => self.publish_waiting(topic, message).await,
        }
    }

    fn try_publish(&self, topic: &str, message: Message) -> TryPublish {
        if let Err(error) = self.inner.lifecycle.check_open() {
            return TryPublish::Done(Err(PublishError::new(topic, message, error)));
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
        let concurrency = options.concurrency.get();
        let open = async {
            let state = self.topic_or_create(topic);
            let queue = state.join(options.queue_name(), self.inner.capacity);
            Ok(MemorySource {
                topic_name: Arc::from(topic),
                topic: state,
                queue,
                batch: VecDeque::new(),
                pacing: Pacing::new(self.inner.batch_wait, self.inner.capacity, concurrency),
                taken_at: SystemTime::UNIX_EPOCH,
                member: true,
            })
        };
        self.inner
            .lifecycle
            .subscribe(
                Arc::new(self.clone()),
                topic,
                options.clone(),
                handler,
                open,
            )
            .await
    }
}

crate::register_broker_scheme!("memory", |url| Ok(Arc::new(MemoryBroker::from_url(url)?)));

#[cfg(test)]
mod tests;
