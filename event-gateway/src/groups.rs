//! Queue groups behind the stream commands: a broker subscription per `(topic, group)`, whose
//! deliveries wait here until a Redis consumer reads them (`XREADGROUP`) and acknowledges them
//! (`XACK`).
//!
//! A message stays held by its consumer (by name, as Redis keeps it in the consumer's pending
//! list) while the consumer's connection lives and, after that connection ended, for the
//! reclaim delay: a client that reads and acknowledges on separate connections (`redis-cli`,
//! one command each) or reconnects can still acknowledge it; after the delay it goes to the
//! next reader of the group.
//!
//! The broker's handler for a delivery is the wait itself: it returns [`Outcome::Ack`] when a
//! consumer acknowledges the message, so the broker's promise (acknowledged only after it was
//! handled) holds end to end. A message a consumer holds when its connection ends goes back to
//! the front of the group here and is read by the next consumer; one that nobody acknowledged
//! when the gateway stops goes back to the broker.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use event_core::broker::{
    Broker, BrokerError, Delivery, Failure, FailureKind, Outcome, RawHandler, RetryPolicy,
    StartFrom, SubscribeOptions, Subscription,
};
use futures_util::future::BoxFuture;
use tokio::sync::{Notify, oneshot};

/// A gateway id: `<milliseconds>-<sequence>`, as Redis writes stream ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct StreamId {
    pub(crate) ms: u64,
    pub(crate) seq: u64,
}

/// Redis's reply to an id it cannot read.
pub(crate) const INVALID_ID: &str = "Invalid stream ID specified as stream command argument";

impl StreamId {
    /// Parses `ms-seq`, or `ms` alone (sequence 0); `-` and `+` are the lowest and highest.
    pub(crate) fn parse(text: &[u8]) -> Option<StreamId> {
        let text = std::str::from_utf8(text).ok()?;
        match text {
            "-" => return Some(StreamId { ms: 0, seq: 0 }),
            "+" => {
                return Some(StreamId {
                    ms: u64::MAX,
                    seq: u64::MAX,
                });
            }
            _ => {}
        }
        let (ms, seq) = match text.split_once('-') {
            Some((ms, seq)) => (ms.parse().ok()?, seq.parse().ok()?),
            None => (text.parse().ok()?, 0),
        };
        Some(StreamId { ms, seq })
    }

    /// Parses the start of a range (`XPENDING`): as [`parse`](Self::parse), and `(id` for
    /// the first id after `id` (exclusive). `Err` carries Redis's error text.
    pub(crate) fn parse_start(text: &[u8]) -> Result<StreamId, &'static str> {
        match text.strip_prefix(b"(") {
            None => StreamId::parse(text).ok_or(INVALID_ID),
            Some(b"-" | b"+") => Err(INVALID_ID),
            Some(id) => StreamId::parse(id)
                .ok_or(INVALID_ID)?
                .next()
                .ok_or("invalid start ID for the interval"),
        }
    }

    /// Parses the end of a range: `ms` alone means its highest sequence, `(id` the last id
    /// before `id` (exclusive).
    pub(crate) fn parse_end(text: &[u8]) -> Result<StreamId, &'static str> {
        match text.strip_prefix(b"(") {
            Some(b"-" | b"+") => Err(INVALID_ID),
            Some(id) => StreamId::parse(id)
                .ok_or(INVALID_ID)?
                .previous()
                .ok_or("invalid end ID for the interval"),
            None if !text.contains(&b'-') || text == b"-" => {
                let mut id = StreamId::parse(text).ok_or(INVALID_ID)?;
                if text != b"-" {
                    id.seq = u64::MAX;
                }
                Ok(id)
            }
            None => StreamId::parse(text).ok_or(INVALID_ID),
        }
    }

    fn next(self) -> Option<StreamId> {
        match self.seq.checked_add(1) {
            Some(seq) => Some(StreamId { ms: self.ms, seq }),
            None => Some(StreamId {
                ms: self.ms.checked_add(1)?,
                seq: 0,
            }),
        }
    }

    fn previous(self) -> Option<StreamId> {
        match self.seq.checked_sub(1) {
            Some(seq) => Some(StreamId { ms: self.ms, seq }),
            None => Some(StreamId {
                ms: self.ms.checked_sub(1)?,
                seq: u64::MAX,
            }),
        }
    }

    /// A new id after `last`, from the clock.
    pub(crate) fn next_after(last: StreamId) -> StreamId {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        if ms > last.ms {
            StreamId { ms, seq: 0 }
        } else {
            StreamId {
                ms: last.ms,
                seq: last.seq + 1,
            }
        }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// What becomes of a delivery.
#[derive(Debug)]
enum Settle {
    Ack,
    /// Back to the broker (the gateway stops, or the group is destroyed).
    GiveBack,
}

/// A delivery waiting for a consumer, or held by one.
struct Entry {
    id: StreamId,
    delivery: Delivery,
    settle: oneshot::Sender<Settle>,
    /// How many times a consumer read it.
    deliveries: u64,
}

struct Held {
    entry: Entry,
    consumer: Arc<str>,
    /// The connection that read it; `None` once that connection ended.
    connection: Option<u64>,
    since: Instant,
    /// When it goes to the next reader, if its connection ended.
    reclaim_at: Option<Instant>,
}

#[derive(Default)]
struct State {
    ready: VecDeque<Entry>,
    held: BTreeMap<StreamId, Held>,
    /// Consumers by name, with when they were last seen.
    consumers: HashMap<Arc<str>, Instant>,
    last_id: Option<StreamId>,
    closing: bool,
}

/// A message handed to a consumer.
pub(crate) struct Read {
    pub(crate) id: StreamId,
    pub(crate) delivery: Delivery,
}

/// What a group's consumers hold, as `XPENDING` sums it up.
pub(crate) struct PendingSummary {
    pub(crate) count: usize,
    /// The lowest and the highest id held.
    pub(crate) range: Option<(StreamId, StreamId)>,
    /// How many each consumer holds, by name.
    pub(crate) consumers: Vec<(Arc<str>, usize)>,
}

/// One pending message, as `XPENDING` lists it.
pub(crate) struct PendingEntry {
    pub(crate) id: StreamId,
    pub(crate) consumer: Arc<str>,
    pub(crate) idle: Duration,
    pub(crate) deliveries: u64,
}

/// A queue group of one topic.
pub(crate) struct Group {
    topic: String,
    name: String,
    state: Mutex<State>,
    ready: Notify,
    subscription: Mutex<Option<Subscription>>,
}

impl fmt::Debug for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group")
            .field("topic", &self.topic)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Group {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The topic.
    pub(crate) fn topic(&self) -> &str {
        &self.topic
    }

    /// Forgets held messages whose broker handler is gone (a Kafka revoke deadline, a drain
    /// timeout): the broker has them again, and an `XACK` of them would acknowledge nothing.
    fn prune(state: &mut State) {
        state.held.retain(|_, held| !held.entry.settle.is_closed());
    }

    /// Whether the group was closed (`XGROUP DESTROY`, shutdown).
    pub(crate) fn is_closed(&self) -> bool {
        self.state().closing
    }

    /// A delivery from the broker: waits for a consumer.
    fn offer(&self, delivery: Delivery, settle: oneshot::Sender<Settle>) {
        let mut state = self.state();
        if state.closing {
            let _ = settle.send(Settle::GiveBack);
            return;
        }
        let id = StreamId::next_after(state.last_id.unwrap_or(StreamId { ms: 0, seq: 0 }));
        state.last_id = Some(id);
        state.ready.push_back(Entry {
            id,
            delivery,
            settle,
            deliveries: 0,
        });
        drop(state);
        self.ready.notify_waiters();
    }

    /// Hands up to `count` waiting messages to `consumer` on `connection`. With `no_ack` they
    /// are acknowledged at once (Redis' `NOACK`); otherwise they are held until `XACK`.
    pub(crate) fn read(
        &self,
        consumer: &Arc<str>,
        connection: u64,
        count: usize,
        no_ack: bool,
    ) -> Vec<Read> {
        let mut state = self.state();
        let now = Instant::now();
        Group::prune(&mut state);
        self.reclaim(&mut state, now);
        state.consumers.insert(consumer.clone(), now);
        let mut out = Vec::new();
        while out.len() < count {
            let Some(mut entry) = state.ready.pop_front() else {
                break;
            };
            // a delivery whose handler is gone (its subscription stopped) is not handed out
            if entry.settle.is_closed() {
                continue;
            }
            entry.deliveries += 1;
            out.push(Read {
                id: entry.id,
                delivery: entry.delivery.clone(),
            });
            if no_ack {
                let _ = entry.settle.send(Settle::Ack);
            } else {
                state.held.insert(
                    entry.id,
                    Held {
                        entry,
                        consumer: consumer.clone(),
                        connection: Some(connection),
                        since: now,
                        reclaim_at: None,
                    },
                );
            }
        }
        out
    }

    /// The messages `consumer` holds with an id above `after` (`XREADGROUP` with an id); they
    /// are held for `connection` from now on.
    pub(crate) fn history(
        &self,
        consumer: &str,
        connection: u64,
        after: StreamId,
        count: usize,
    ) -> Vec<Read> {
        let mut state = self.state();
        let now = Instant::now();
        Group::prune(&mut state);
        let consumer: Arc<str> = Arc::from(consumer);
        state.consumers.insert(consumer.clone(), now);
        state
            .held
            .range_mut(after..)
            .filter(|(id, held)| **id != after && held.consumer == consumer)
            .take(count)
            .map(|(id, held)| {
                held.entry.deliveries += 1;
                held.since = now;
                held.connection = Some(connection);
                held.reclaim_at = None;
                Read {
                    id: *id,
                    delivery: held.entry.delivery.clone(),
                }
            })
            .collect()
    }

    /// A future that resolves when a message is offered; made before [`Group::read`] finds
    /// nothing, so that an offer in between is not missed.
    pub(crate) fn offered(&self) -> tokio::sync::futures::Notified<'_> {
        self.ready.notified()
    }

    /// Acknowledges held messages; how many were acknowledged (held, and their broker
    /// handler still waiting: one that is gone took its message back to the broker).
    pub(crate) fn ack(&self, ids: &[StreamId]) -> usize {
        let mut state = self.state();
        ids.iter()
            .filter_map(|id| state.held.remove(id))
            .filter(|held| !held.entry.settle.is_closed())
            .map(|held| held.entry.settle.send(Settle::Ack).is_ok())
            .filter(|acknowledged| *acknowledged)
            .count()
    }

    /// What `connection` holds goes to the next reader after `delay`, unless acknowledged
    /// or read again by its consumer first; how many messages it held.
    pub(crate) fn release_connection(self: &Arc<Self>, connection: u64, delay: Duration) -> usize {
        let mut state = self.state();
        let at = Instant::now() + delay;
        let mut released = 0;
        for held in state.held.values_mut() {
            if held.connection == Some(connection) {
                held.connection = None;
                held.reclaim_at = Some(at);
                released += 1;
            }
        }
        if released > 0 {
            // called from a connection's destructor, which may run outside the runtime (at
            // process exit): then there is no timer, and the messages go on at once
            let runtime = tokio::runtime::Handle::try_current();
            if delay.is_zero() || runtime.is_err() {
                self.reclaim(&mut state, at.max(Instant::now()));
                drop(state);
                self.ready.notify_waiters();
            } else if let Ok(runtime) = runtime {
                drop(state);
                // wakes the blocked readers when the delay is over
                let group = Arc::downgrade(self);
                runtime.spawn(async move {
                    tokio::time::sleep_until(at.into()).await;
                    if let Some(group) = group.upgrade() {
                        let mut state = group.state();
                        group.reclaim(&mut state, Instant::now());
                        drop(state);
                        group.ready.notify_waiters();
                    }
                });
            }
        }
        released
    }

    /// Messages whose reclaim time has come go back to the front of the group.
    fn reclaim(&self, state: &mut State, now: Instant) {
        let due: Vec<StreamId> = state
            .held
            .iter()
            .filter(|(_, held)| held.reclaim_at.is_some_and(|at| at <= now))
            .map(|(id, _)| *id)
            .collect();
        if !due.is_empty() {
            self.release(state, due);
        }
    }

    /// `XGROUP DELCONSUMER`: the consumer's messages go back to the group; how many it held.
    pub(crate) fn delete_consumer(&self, consumer: &str) -> usize {
        let mut state = self.state();
        state.consumers.remove(consumer);
        let ids: Vec<StreamId> = state
            .held
            .iter()
            .filter(|(_, held)| &*held.consumer == consumer)
            .map(|(id, _)| *id)
            .collect();
        let released = ids.len();
        self.release(&mut state, ids);
        drop(state);
        if released > 0 {
            self.ready.notify_waiters();
        }
        released
    }

    fn release(&self, state: &mut State, ids: Vec<StreamId>) {
        // in reverse, each to the front: they come back in id order, before what waits
        for id in ids.into_iter().rev() {
            if let Some(held) = state.held.remove(&id) {
                if state.closing {
                    let _ = held.entry.settle.send(Settle::GiveBack);
                } else {
                    state.ready.push_front(held.entry);
                }
            }
        }
    }

    /// `XPENDING` summary.
    pub(crate) fn pending_summary(&self) -> PendingSummary {
        let mut state = self.state();
        Group::prune(&mut state);
        let range = state
            .held
            .keys()
            .next()
            .zip(state.held.keys().next_back())
            .map(|(a, b)| (*a, *b));
        let mut per: BTreeMap<Arc<str>, usize> = BTreeMap::new();
        for held in state.held.values() {
            *per.entry(held.consumer.clone()).or_default() += 1;
        }
        PendingSummary {
            count: state.held.len(),
            range,
            consumers: per.into_iter().collect(),
        }
    }

    /// `XPENDING` extended form.
    pub(crate) fn pending(
        &self,
        from: StreamId,
        to: StreamId,
        count: usize,
        consumer: Option<&str>,
        min_idle: Duration,
    ) -> Vec<PendingEntry> {
        if from > to {
            return Vec::new();
        }
        let mut state = self.state();
        Group::prune(&mut state);
        let now = Instant::now();
        state
            .held
            .range(from..=to)
            .filter(|(_, held)| consumer.is_none_or(|c| &*held.consumer == c))
            .filter(|(_, held)| now.duration_since(held.since) >= min_idle)
            .take(count)
            .map(|(id, held)| PendingEntry {
                id: *id,
                consumer: held.consumer.clone(),
                idle: now.duration_since(held.since),
                deliveries: held.entry.deliveries,
            })
            .collect()
    }

    /// Whether a consumer of this name was seen.
    pub(crate) fn create_consumer(&self, consumer: &str) -> bool {
        let mut state = self.state();
        if state.consumers.contains_key(consumer) {
            return false;
        }
        state.consumers.insert(Arc::from(consumer), Instant::now());
        true
    }

    /// Stops: everything waiting or held goes back to the broker, and the subscription drains.
    pub(crate) async fn close(&self) {
        let subscription = self
            .subscription
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        {
            let mut state = self.state();
            state.closing = true;
            for entry in state.ready.drain(..) {
                let _ = entry.settle.send(Settle::GiveBack);
            }
            let held = std::mem::take(&mut state.held);
            for (_, held) in held {
                let _ = held.entry.settle.send(Settle::GiveBack);
            }
        }
        // readers blocked on this group learn that it is gone
        self.ready.notify_waiters();
        if let Some(subscription) = subscription {
            let report = subscription.unsubscribe().await;
            tracing::debug!(topic = %self.topic, group = %self.name, ?report, "group stopped");
        }
    }
}

/// The handler of a group's broker subscription.
struct GroupHandler {
    group: Weak<Group>,
    name: String,
}

/// The gateway let a message go unacknowledged (it stops, or the group was destroyed); the
/// broker has it again.
#[derive(Debug, thiserror::Error)]
#[error("the gateway gave the message back unacknowledged")]
struct GivenBack;

impl RawHandler for GroupHandler {
    fn handle<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let Some(group) = self.group.upgrade() else {
                return Outcome::Retry(Failure::new(FailureKind::Handler, GivenBack));
            };
            let (settle, settled) = oneshot::channel();
            group.offer(delivery.clone(), settle);
            drop(group);
            match settled.await {
                Ok(Settle::Ack) => Outcome::Ack,
                // a retry of a stopping subscription gives the message back to the broker
                Ok(Settle::GiveBack) | Err(_) => {
                    Outcome::Retry(Failure::new(FailureKind::Handler, GivenBack))
                }
            }
        })
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// Every group of the gateway.
#[derive(Default)]
pub(crate) struct Groups {
    groups: Mutex<HashMap<(String, String), Arc<Group>>>,
}

/// How a group is joined.
#[derive(Clone, Copy, Debug)]
pub(crate) struct JoinSettings {
    /// Messages the group holds at most (handed out or waiting): the subscription's
    /// concurrency.
    pub(crate) window: usize,
    /// How long a stopping subscription waits for consumers to acknowledge.
    pub(crate) drain_timeout: Duration,
}

impl Groups {
    fn map(&self) -> MutexGuard<'_, HashMap<(String, String), Arc<Group>>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The group, if this gateway joined it.
    pub(crate) fn get(&self, topic: &str, group: &str) -> Option<Arc<Group>> {
        self.map()
            .get(&(topic.to_owned(), group.to_owned()))
            .cloned()
    }

    /// Joins the broker's queue group `group` of `topic` unless already joined; whether it was
    /// joined now.
    pub(crate) async fn join(
        &self,
        broker: &Arc<dyn Broker>,
        topic: &str,
        group: &str,
        start: StartFrom,
        settings: JoinSettings,
    ) -> Result<(Arc<Group>, bool), BrokerError> {
        let key = (topic.to_owned(), group.to_owned());
        if let Some(existing) = self.get(topic, group) {
            return Ok((existing, false));
        }
        let new = Arc::new(Group {
            topic: topic.to_owned(),
            name: group.to_owned(),
            state: Mutex::default(),
            ready: Notify::new(),
            subscription: Mutex::new(None),
        });
        let handler = Arc::new(GroupHandler {
            group: Arc::downgrade(&new),
            name: format!("event-gateway:{group}"),
        });
        let options = SubscribeOptions::new()
            .queue(group)
            .concurrency(settings.window)
            .start_from(start)
            .drain_timeout(settings.drain_timeout)
            // the handler retries only to give a message back while the subscription stops, and
            // the backoff is never waited for; no attempt limit, since a message the broker
            // redelivered (attempt 2, 3, ...) must go back too, not to the dead-letter topic
            .retry(
                RetryPolicy::exponential(u32::MAX, Duration::from_secs(1))
                    .with_max_backoff(Duration::from_secs(1)),
            );
        let subscription = broker.subscribe(topic, options, handler).await?;
        // two joins of one group may race: the first one in keeps its subscription
        let raced = {
            let mut map = self.map();
            match map.get(&key) {
                Some(existing) => Err((existing.clone(), subscription)),
                None => {
                    *new.subscription.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(subscription);
                    map.insert(key, new.clone());
                    Ok(())
                }
            }
        };
        match raced {
            Ok(()) => Ok((new, true)),
            Err((existing, subscription)) => {
                // what the second subscription already took goes back to the broker before
                // it stops, instead of waiting out the drain timeout
                *new.subscription.lock().unwrap_or_else(|e| e.into_inner()) = Some(subscription);
                new.close().await;
                Ok((existing, false))
            }
        }
    }

    /// How many groups are joined.
    pub(crate) fn count(&self) -> usize {
        self.map().len()
    }

    /// Leaves a group (`XGROUP DESTROY`); whether it was joined.
    pub(crate) async fn destroy(&self, topic: &str, group: &str) -> bool {
        let removed = self.map().remove(&(topic.to_owned(), group.to_owned()));
        match removed {
            Some(group) => {
                group.close().await;
                true
            }
            None => false,
        }
    }

    /// Every joined group.
    pub(crate) fn all(&self) -> Vec<Arc<Group>> {
        self.map().values().cloned().collect()
    }

    /// Leaves every group.
    pub(crate) async fn close_all(&self) {
        let groups: Vec<_> = self.map().drain().map(|(_, g)| g).collect();
        futures_util::future::join_all(groups.iter().map(|g| g.close())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_and_order() {
        let id = StreamId::parse(b"1700000000000-3").unwrap();
        assert_eq!(id.to_string(), "1700000000000-3");
        assert_eq!(StreamId::parse(b"17").unwrap(), StreamId { ms: 17, seq: 0 });
        assert!(StreamId::parse(b"-").unwrap() < id && id < StreamId::parse(b"+").unwrap());
        assert!(StreamId::parse(b"abc").is_none());
        // an exclusive start is taken only in ranges
        assert!(StreamId::parse(b"(17-1").is_none());
    }

    #[test]
    fn range_bounds_read_as_redis_reads_them() {
        let id = |ms, seq| StreamId { ms, seq };
        assert_eq!(StreamId::parse_start(b"17"), Ok(id(17, 0)));
        assert_eq!(StreamId::parse_start(b"(17-3"), Ok(id(17, 4)));
        assert_eq!(
            StreamId::parse_start(b"(17-18446744073709551615"),
            Ok(id(18, 0))
        );
        // an end without a sequence takes all of that millisecond
        assert_eq!(StreamId::parse_end(b"17"), Ok(id(17, u64::MAX)));
        assert_eq!(StreamId::parse_end(b"17-2"), Ok(id(17, 2)));
        assert_eq!(StreamId::parse_end(b"(17-2"), Ok(id(17, 1)));
        assert_eq!(StreamId::parse_end(b"(17-0"), Ok(id(16, u64::MAX)));
        assert_eq!(StreamId::parse_end(b"-"), Ok(id(0, 0)));
        assert_eq!(StreamId::parse_end(b"+"), Ok(id(u64::MAX, u64::MAX)));
        assert_eq!(
            StreamId::parse_end(b"(0-0"),
            Err("invalid end ID for the interval")
        );
        assert_eq!(StreamId::parse_start(b"(-"), Err(INVALID_ID));
        assert_eq!(StreamId::parse_start(b"x"), Err(INVALID_ID));
        let next = StreamId::next_after(StreamId {
            ms: u64::MAX - 1,
            seq: 7,
        });
        assert_eq!(
            next,
            StreamId {
                ms: u64::MAX - 1,
                seq: 8
            }
        );
    }
}
