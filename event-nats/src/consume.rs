//! Consuming: a JetStream pull consumer per subscription (or a core NATS subscription), the
//! [`DeliverySource`] the shared delivery loop reads, and the [`Acknowledge`] of each message.
//!
//! **JetStream.** A queue group is a durable pull consumer (shared by every member), a
//! broadcast subscriber an ephemeral one of its own. A task per subscription (the *puller*)
//! asks the server for as many messages as the subscription has room for (its prefetch, at
//! least its concurrency) with pull requests on an inbox of its own, and hands what arrives to
//! the loop through a channel. Up to two requests are open at once: while the server fills
//! one, the room freed by settled messages (half the prefetch or more) goes out as the next,
//! so the server never waits a round trip for a request between batches (see `Requests` for
//! how what they still bring is counted). Each request's status comes on a subject of its own
//! under the inbox, so that a status ending a request given up on after a reconnect is not
//! taken for an open one's. Every message counts against the room from the moment it arrives
//! until it is settled, so a member holds no more than its prefetch; only for the second
//! after a reconnect (or a silence) can it hold up to twice that, when the requests given
//! up on still bring messages besides the new ones.
//!
//! Each message is held from its arrival to its acknowledgement, and the puller tells the
//! server every half `AckWait` that the messages it holds are still being worked on (`+WPI`):
//! a slow handler, or one retrying with backoff, is never overtaken by a redelivery. An
//! acknowledgement (`+ACK`) or a message given back (`-NAK`) is a publish into the client's
//! outgoing buffer: it is done once handed to the client, which is bounded, and closing the
//! subscription flushes the buffer.
//!
//! A pull request expires after 1 s (an idle subscription asks again every second), so that
//! a subscription that closes can wait for its requests to end before it lets the inbox go
//! (see `Puller::finish`). When the client reconnects, or nothing (message or status) came
//! for 3 s, the requests count as lost and new ones go out; a consumer the server no longer
//! has (deleted, or lost with a memory stream) is made again: a queue group's with its configuration, a broadcast subscriber's from the
//! message after the last one it received.
//!
//! A message the server gave up delivering (it reached the consumer's `max_deliver`: every
//! member it went to went away before its handler finished, or the client could not read it)
//! is read from the stream when the server's advisory says so, and dead-lettered without a
//! handler run (see `given_up`).
//!
//! **Core NATS.** A plain or queue subscription; acknowledgements do nothing, and a message
//! given back is lost.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use bytes::Bytes;
use event_core::backend::{Acknowledge, Backoff, DeliverySource, Incoming};
use event_core::broker::{BrokerError, Delivery, StartFrom, SubscribeOptions};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::BROKER_NAME;
use crate::broker::{Inner, Session, client_error};
use crate::error::NatsBackendError;
use crate::wire;

pub(crate) mod given_up;

/// How long the server keeps a pull request: an idle subscription asks again this often, and
/// closing it waits at most this long for its requests to end.
const EXPIRES: Duration = Duration::from_secs(1);
/// Silence after which the open pull requests count as lost (the server ends each one by
/// [`EXPIRES`], with its last message or a status).
const SILENCE: Duration = Duration::from_secs(3);
/// A subscription that had no message for this long closes without waiting for its pull
/// requests to end (see `Puller::finish`).
const QUIET: Duration = Duration::from_millis(250);
/// Pull requests a subscription keeps open at once: the next one goes out while the server
/// still fills the last, so that it never waits for a request between two batches.
const OPEN_REQUESTS: usize = 2;
/// How long closing a subscription waits for the client's buffer and the server.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The header of a status ending a pull request: how many messages it still had room for.
const PENDING_MESSAGES: &str = "Nats-Pending-Messages";

const ACK: &[u8] = b"+ACK";
const NAK: &[u8] = b"-NAK";
/// JetStream's "work in progress" acknowledgement: restarts the message's `AckWait`.
const IN_PROGRESS: &[u8] = b"+WPI";

/// What a JetStream subscription consumes, fixed at subscribe time.
#[derive(Debug)]
struct Spec {
    topic: Arc<str>,
    /// The durable consumer of a queue group; `None` for broadcast (ephemeral).
    durable: Option<String>,
    start: StartFrom,
    prefetch: usize,
    /// Unwrap go-micro's JSON envelope.
    go_micro_envelope: bool,
}

/// The consumer pulled from now: changes when a broadcast consumer is made again.
#[derive(Debug)]
struct Current {
    stream: String,
    consumer: String,
    /// The stream sequence after the last message received (broadcast resumes from it).
    next_sequence: u64,
}

/// What a subscription's puller, source and ackers share.
struct Sub {
    inner: Arc<Inner>,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    spec: Spec,
    credit: Credit,
    held: Held,
    /// Messages handed to the channel and not taken by the loop yet.
    queued: AtomicUsize,
    /// Whether the puller has a pull request open (then it asks for no less than half the
    /// prefetch).
    asking: AtomicBool,
    current: Mutex<Current>,
}

impl Sub {
    fn current(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives back room, and wakes the puller when it has enough to ask ([`Puller::ask`]): half
    /// the prefetch, or any while the loop has nothing queued and no request is open (when
    /// the queue empties, [`JsSource::taken`] wakes it). Not on every settled message: a
    /// puller woken for nothing costs a task switch.
    fn give_back(&self, n: usize) {
        if n == 0 {
            return;
        }
        let available = self.credit.give_back(n);
        let half = isize::try_from(self.spec.prefetch.div_ceil(2)).unwrap_or(isize::MAX);
        if available >= half
            || (available > 0
                && self.queued.load(Ordering::Acquire) == 0
                && !self.asking.load(Ordering::Acquire))
        {
            self.credit.freed.notify_one();
        }
    }

    /// The delivery of `message`, at stream `sequence`, delivered `delivered` times.
    fn delivery(
        &self,
        message: event_core::broker::Message,
        sequence: u64,
        delivered: i64,
    ) -> Delivery {
        Delivery::new(
            self.spec.topic.clone(),
            message,
            wire::stream_position(sequence, delivered),
        )
        .with_attempt(u32::try_from(delivered).unwrap_or(u32::MAX))
    }

    /// Hands a message to the delivery loop; `false`, the message given back, when the loop
    /// is gone.
    fn hand_over(
        &self,
        tx: &mpsc::UnboundedSender<Incoming<NatsAcker>>,
        incoming: Incoming<NatsAcker>,
    ) -> bool {
        self.queued.fetch_add(1, Ordering::AcqRel);
        match tx.send(incoming) {
            Ok(()) => true,
            Err(mpsc::error::SendError(incoming)) => {
                self.queued.fetch_sub(1, Ordering::AcqRel);
                incoming.acker.abandon_now();
                false
            }
        }
    }
}

fn api_error(
    operation: &'static str,
    what: &str,
    source: event_core::broker::BoxError,
) -> BrokerError {
    BrokerError::Backend {
        broker: BROKER_NAME,
        operation: "subscribe",
        source: Box::new(NatsBackendError::JetStream {
            operation,
            what: what.to_owned(),
            source,
        }),
    }
}

/// The consumer's configuration; `resume_at` for a broadcast consumer made again.
fn consumer_config(inner: &Inner, spec: &Spec, resume_at: Option<u64>) -> pull::Config {
    let config = &inner.config;
    let deliver_policy = match (resume_at, spec.start) {
        (Some(start_sequence), _) => DeliverPolicy::ByStartSequence { start_sequence },
        (None, StartFrom::Earliest) => DeliverPolicy::All,
        (None, _) => DeliverPolicy::New,
    };
    pull::Config {
        durable_name: spec.durable.clone(),
        description: Some(match &spec.durable {
            Some(_) => format!("event-nats queue group on {}", spec.topic),
            None => format!("event-nats broadcast subscriber on {}", spec.topic),
        }),
        filter_subject: spec.topic.to_string(),
        deliver_policy,
        ack_policy: AckPolicy::Explicit,
        ack_wait: config.ack_wait,
        // 0 is left out of the request: the server's default, unlimited
        max_deliver: config
            .max_deliver
            .unwrap_or(crate::config::DEFAULT_MAX_DELIVER)
            .max(0),
        inactive_threshold: match &spec.durable {
            Some(_) => config.group_inactive_threshold.unwrap_or_default(),
            None => config.broadcast_inactive_threshold,
        },
        ..pull::Config::default()
    }
}

/// Makes (or finds) the subscription's consumer on `stream`; returns its name and the stream
/// sequence it starts after.
async fn make_consumer(
    inner: &Inner,
    js: &async_nats::jetstream::Context,
    spec: &Spec,
    stream: &str,
    resume_at: Option<u64>,
) -> Result<(String, u64), BrokerError> {
    let mut config = consumer_config(inner, spec, resume_at);
    if inner.config.max_deliver.is_none()
        && let Some(durable) = &spec.durable
        && let Ok(existing) = js
            .get_consumer_from_stream::<pull::Config, _, _>(durable, stream)
            .await
    {
        // the default limit is for consumers made new: one that exists keeps its own (made
        // unlimited by an older version, it may hold messages delivered more often already,
        // which a limit below their count would stop without an advisory)
        let kept = existing.cached_info().config.max_deliver;
        if kept != crate::config::DEFAULT_MAX_DELIVER {
            tracing::info!(
                topic = %spec.topic,
                consumer = %durable,
                stream,
                max_deliver = kept,
                "the queue group's consumer keeps its delivery limit (-1: unlimited); set max_deliver to change it"
            );
        }
        config.max_deliver = kept.max(0);
    }
    let what = format!(
        "{} on stream {stream}",
        spec.durable.as_deref().unwrap_or("a broadcast consumer")
    );
    match js.create_consumer_on_stream(config, stream).await {
        Ok(consumer) => {
            let info = consumer.cached_info();
            Ok((info.name.clone(), info.delivered.stream_sequence))
        }
        Err(error) => {
            if crate::streams::no_responders(&error) {
                return Err(crate::streams::unavailable(&inner.config));
            }
            // a group's durable consumer made earlier with other settings (a start position
            // cannot change): join it as it is
            if let Some(durable) = &spec.durable
                && let Ok(existing) = js
                    .get_consumer_from_stream::<pull::Config, _, _>(durable, stream)
                    .await
            {
                let info = existing.cached_info();
                tracing::warn!(
                    topic = %spec.topic,
                    consumer = %durable,
                    stream,
                    error = %event_core::error_chain(&error),
                    "the queue group's consumer exists with other settings; joining it as it is"
                );
                return Ok((info.name.clone(), info.delivered.stream_sequence));
            }
            Err(api_error("create a consumer", &what, Box::new(error)))
        }
    }
}

/// Opens a JetStream subscription: the streams of the topic and of its dead letters, the
/// consumer, the inbox, and the puller.
pub(crate) async fn open_jetstream(
    inner: Arc<Inner>,
    session: Session,
    topic: &str,
    dead_letter_topic: &str,
    options: &SubscribeOptions,
) -> Result<JsSource, BrokerError> {
    let config = &inner.config;
    let stream = inner
        .streams
        .resolve(config, &session.js, topic, None)
        .await?;
    // dead letters must be kept even when nobody subscribes to them
    inner
        .streams
        .resolve(config, &session.js, dead_letter_topic, Some(topic))
        .await?;
    let spec = Spec {
        topic: Arc::from(topic),
        durable: options
            .queue_name()
            .map(|group| wire::consumer_name(topic, group)),
        start: options.start_position(),
        prefetch: config.prefetch.max(options.concurrency_limit()).max(1),
        go_micro_envelope: config.go_micro_envelope,
    };
    let (consumer, after) = make_consumer(&inner, &session.js, &spec, &stream, None).await?;
    // each pull request gets a reply subject of its own under the inbox, so that a status
    // (the 408 that ends an expired request) is known to be for an open one
    let inbox_prefix = session.client.new_inbox();
    let inbox = session
        .client
        .subscribe(format!("{inbox_prefix}.*"))
        .await
        .map_err(|e| client_error("subscribe to the pull inbox", e))?;
    let sub = Arc::new(Sub {
        client: session.client.clone(),
        js: session.js.clone(),
        credit: Credit::new(spec.prefetch),
        held: Held::with_capacity(spec.prefetch),
        queued: AtomicUsize::new(0),
        asking: AtomicBool::new(false),
        current: Mutex::new(Current {
            stream,
            consumer,
            next_sequence: after + 1,
        }),
        spec,
        inner: inner.clone(),
    });
    let (tx, rx) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    // before the puller's first request (see `given_up::listen`)
    let watcher = given_up::listen(&sub).await.map(|advisories| {
        tokio::spawn(given_up::watch(
            sub.clone(),
            advisories,
            tx.clone(),
            stop.clone(),
        ))
    });
    let puller = tokio::spawn(
        Puller {
            sub: sub.clone(),
            inbox,
            inbox_prefix,
            sent: 0,
            tx,
            stop: stop.clone(),
            reconnects: inner.reconnects.subscribe(),
            requests: Requests::default(),
            heard: Instant::now(),
            retry_at: None,
            backoff: Backoff::between(config.reconnect_min, config.reconnect_max),
            remake: false,
            last_message: None,
        }
        .run(),
    );
    Ok(JsSource {
        sub,
        rx,
        stop,
        puller: Some(puller),
        watcher,
    })
}

/// Room for messages: taken when requested (or when a message arrives unasked), given back
/// when a message is settled or a request ends short. Never below zero by our requests; a
/// message that comes after its request was given up takes room it finds, or goes below.
struct Credit {
    available: Mutex<isize>,
    freed: Notify,
}

impl Credit {
    fn new(room: usize) -> Credit {
        Credit {
            available: Mutex::new(isize::try_from(room).unwrap_or(isize::MAX)),
            freed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, isize> {
        self.available.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes all the room there is, if there is at least `least` (and at least 1).
    fn take_all(&self, least: usize) -> Option<usize> {
        let mut available = self.lock();
        if *available <= 0 || usize::try_from(*available).unwrap_or(0) < least {
            return None;
        }
        let n = usize::try_from(*available).unwrap_or(0);
        *available = 0;
        Some(n)
    }

    fn take_one(&self) {
        *self.lock() -= 1;
    }

    /// Gives back `n`; returns the room there is then. The caller wakes the puller
    /// ([`Sub::give_back`]) when it could ask.
    fn give_back(&self, n: usize) -> isize {
        let mut available = self.lock();
        *available = available.saturating_add(isize::try_from(n).unwrap_or(isize::MAX));
        *available
    }

    /// Resolves when room was given back since the last call (a stored wake-up counts).
    async fn freed(&self) {
        self.freed.notified().await;
    }
}

/// Hashes the keys of [`Held`], a counter: one multiplication (Fibonacci hashing) spreads
/// them over the table's bits, where SipHash is ten times the work for nothing.
#[derive(Clone, Copy, Default)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type HeldMap =
    HashMap<u64, (async_nats::Subject, Instant), std::hash::BuildHasherDefault<KeyHasher>>;

/// The messages a subscription holds, for the in-progress signals.
#[derive(Default)]
struct Held {
    next: AtomicU64,
    entries: Mutex<HeldMap>,
}

impl Held {
    fn with_capacity(capacity: usize) -> Held {
        Held {
            next: AtomicU64::new(0),
            entries: Mutex::new(HeldMap::with_capacity_and_hasher(
                capacity,
                Default::default(),
            )),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HeldMap> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds a message that arrived at `since`.
    fn hold(&self, reply: async_nats::Subject, since: Instant) -> u64 {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(key, (reply, since));
        key
    }

    fn release(&self, key: u64) {
        self.lock().remove(&key);
    }

    /// The replies of messages held for `every` since the last signal; marks them signalled.
    fn due(&self, every: Duration) -> Vec<async_nats::Subject> {
        let now = Instant::now();
        let mut entries = self.lock();
        entries
            .values_mut()
            .filter(|(_, since)| now.duration_since(*since) >= every)
            .map(|(reply, since)| {
                *since = now;
                reply.clone()
            })
            .collect()
    }

    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// The pull requests under way, as far as this side knows.
///
/// The server hands its messages to its open requests in turn, one each, and a message does
/// not say which request it answers (its subject is the one it was published on; only a
/// status comes on the request's own subject). So what is counted is the messages asked for
/// and not come yet, all requests together; a request is known to be over when its status
/// comes (which says how many it still had room for) or when everything asked for came.
#[derive(Debug, Default)]
struct Requests {
    /// The numbers of the open requests: a request the server filled stays here until every
    /// request is filled, or a later status ends the last one.
    open: Vec<u64>,
    /// Messages asked for and not come yet.
    outstanding: usize,
}

impl Requests {
    fn len(&self) -> usize {
        self.open.len()
    }

    fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Request `number`, for `n` messages, went out.
    fn sent(&mut self, number: u64, n: usize) {
        self.open.push(number);
        self.outstanding += n;
    }

    /// A message came: false when nothing was outstanding (it came for a request given up
    /// on). When the last one asked for comes, every request is over.
    fn message(&mut self) -> bool {
        if self.outstanding == 0 {
            return false;
        }
        self.outstanding -= 1;
        if self.outstanding == 0 {
            self.open.clear();
        }
        true
    }

    /// A status ended request `number`, with the server's count of what it still had room
    /// for (`pending`); returns the room that frees, or `None` for a request not open.
    ///
    /// One of several open requests frees its count. A status without one (a request the
    /// server refused, or a 409 for every request: a leadership change, the server shutting
    /// down) ends them all: the others may have been filled already, with no status to say
    /// so, and room kept for them would never come back. So does the last open request,
    /// whatever its count says, and a count that leaves nothing outstanding (the others
    /// were filled).
    fn ended(&mut self, number: u64, pending: Option<usize>) -> Option<usize> {
        let at = self.open.iter().position(|open| *open == number)?;
        self.open.remove(at);
        let left = match pending {
            Some(pending) if !self.open.is_empty() => pending.min(self.outstanding),
            _ => self.outstanding,
        };
        self.outstanding -= left;
        if self.outstanding == 0 {
            self.open.clear();
        }
        Some(left)
    }

    /// Every request is given up on: returns the room that frees.
    fn clear(&mut self) -> usize {
        self.open.clear();
        std::mem::take(&mut self.outstanding)
    }
}

/// The task that pulls a subscription's messages.
struct Puller {
    sub: Arc<Sub>,
    inbox: async_nats::Subscriber,
    /// The inbox's subject; request `n` is answered on `<inbox_prefix>.<n>`.
    inbox_prefix: String,
    /// Requests sent so far: the number of the last one.
    sent: u64,
    tx: mpsc::UnboundedSender<Incoming<NatsAcker>>,
    stop: CancellationToken,
    reconnects: tokio::sync::watch::Receiver<u64>,
    /// The pull requests under way (at most [`OPEN_REQUESTS`]).
    requests: Requests,
    /// When a request was last sent, or a message or status for one came.
    heard: Instant,
    /// After a failure, the next request waits until then.
    retry_at: Option<Instant>,
    backoff: Backoff,
    /// The consumer is gone: make it again before the next request.
    remake: bool,
    /// When the last message arrived.
    last_message: Option<Instant>,
}

impl Puller {
    async fn run(mut self) {
        let ack_wait = self.sub.inner.config.ack_wait;
        let mut in_progress = tokio::time::interval((ack_wait / 4).max(Duration::from_millis(25)));
        in_progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.reconnects.borrow_and_update();
        loop {
            if self.requests.len() < OPEN_REQUESTS && self.retry_at.is_none() {
                self.ask().await;
            }
            let silent_since = (!self.requests.is_empty()).then_some(self.heard);
            tokio::select! {
                biased;
                () = self.stop.cancelled() => break,
                message = self.inbox.next() => match message {
                    Some(message) => {
                        // one clock reading for what arrived together
                        let now = Instant::now();
                        self.received(message, now);
                        // and the rest of what is at hand, without a turn of the select (its
                        // futures and timers are made again on every turn)
                        let mut closed = false;
                        for _ in 1..self.sub.spec.prefetch.max(2) {
                            match self.inbox.next().now_or_never() {
                                Some(Some(message)) => self.received(message, now),
                                Some(None) => {
                                    closed = true;
                                    break;
                                }
                                None => break,
                            }
                        }
                        if closed {
                            break;
                        }
                    }
                    // the client closed
                    None => break,
                },
                () = self.sub.credit.freed(), if self.requests.len() < OPEN_REQUESTS && self.retry_at.is_none() => {}
                () = sleep_until(self.retry_at), if self.retry_at.is_some() => self.retry_at = None,
                changed = self.reconnects.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    // the server may have forgotten the requests (a restart): ask again
                    self.end_requests();
                }
                () = sleep_until(silent_since.map(|t| t + SILENCE)), if silent_since.is_some() => {
                    tracing::debug!(topic = %self.sub.spec.topic, "pull request silent; asking again");
                    self.end_requests();
                }
                _ = in_progress.tick() => {
                    for reply in self.sub.held.due(ack_wait / 2) {
                        if let Err(error) = self.sub.client.publish(reply, Bytes::from_static(IN_PROGRESS)).await {
                            tracing::debug!(topic = %self.sub.spec.topic, %error, "in-progress signal not sent");
                        }
                    }
                }
            }
        }
        self.finish().await;
    }

    /// Sends a pull request for all the room there is (making the consumer again first when
    /// it is gone). With a request already open, only for half the prefetch or more: the
    /// open one still brings messages, and a request for a few would cost a round trip for
    /// them.
    async fn ask(&mut self) {
        if self.remake {
            match self.remake_consumer().await {
                Ok(()) => self.remake = false,
                Err(error) => {
                    self.fail_later("make the consumer again", &error);
                    return;
                }
            }
        }
        // batches of at least half the prefetch while messages wait for the loop, so that a
        // busy subscription does not pull one message per round trip; anything when it has
        // nothing to do
        let least = if self.requests.is_empty() && self.sub.queued.load(Ordering::Acquire) == 0 {
            1
        } else {
            self.sub.spec.prefetch.div_ceil(2)
        };
        let Some(n) = self.sub.credit.take_all(least) else {
            return;
        };
        let (stream, consumer) = {
            let current = self.sub.current();
            (current.stream.clone(), current.consumer.clone())
        };
        let subject = format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}");
        let body = format!(r#"{{"batch":{n},"expires":{}}}"#, EXPIRES.as_nanos());
        match self
            .sub
            .client
            .publish_with_reply(
                subject,
                format!("{}.{}", self.inbox_prefix, self.sent + 1),
                body.into(),
            )
            .await
        {
            Ok(()) => {
                self.sent += 1;
                self.requests.sent(self.sent, n);
                self.heard = Instant::now();
                self.sub.asking.store(true, Ordering::Release);
            }
            Err(error) => {
                self.sub.give_back(n);
                self.fail_later("send a pull request", &error);
            }
        }
    }

    fn fail_later(&mut self, what: &str, error: &dyn std::fmt::Display) {
        let wait = self.backoff.next_delay();
        let failures = self.backoff.failures();
        if failures == 1 || failures.is_multiple_of(10) {
            tracing::warn!(
                topic = %self.sub.spec.topic,
                failures,
                %error,
                "cannot {what}; retrying in {wait:?}"
            );
        }
        self.retry_at = Some(Instant::now() + wait);
    }

    /// Every request is over (or given up on): the room they still had is free again.
    fn end_requests(&mut self) {
        let left = self.requests.clear();
        self.sub.asking.store(false, Ordering::Release);
        self.sub.give_back(left);
    }

    /// Counts a message against the open requests: returns false when none has room left (it
    /// came for a request given up on), so that it takes room of its own.
    fn count_message(&mut self, now: Instant) -> bool {
        if !self.requests.message() {
            return false;
        }
        self.heard = now;
        if self.requests.is_empty() {
            self.sub.asking.store(false, Ordering::Release);
        }
        true
    }

    /// Ends the open request a status answers and returns the room it had left; `None` when
    /// the status is for no open request (one given up on, which the server may have kept
    /// after a reconnect).
    fn end_request(&mut self, status: &async_nats::Message, now: Instant) -> Option<usize> {
        let number = request_number(&self.inbox_prefix, status.subject.as_str())?;
        let pending = status
            .headers
            .as_ref()
            .and_then(|headers| headers.get(PENDING_MESSAGES))
            .and_then(|pending| pending.as_str().parse().ok());
        let left = self.requests.ended(number, pending)?;
        self.heard = now;
        if self.requests.is_empty() {
            self.sub.asking.store(false, Ordering::Release);
        }
        Some(left)
    }

    fn received(&mut self, message: async_nats::Message, now: Instant) {
        if message.status.is_none() {
            self.message(message, now);
            return;
        }
        let status = message.status.unwrap_or(async_nats::StatusCode::OK);
        let Some(left) = self.end_request(&message, now) else {
            tracing::debug!(
                topic = %self.sub.spec.topic,
                status = %status,
                subject = %message.subject,
                "a status for a pull request given up on; ignored"
            );
            return;
        };
        let description = message.description.as_deref().unwrap_or("");
        self.sub.give_back(left);
        if status == async_nats::StatusCode::TIMEOUT {
            // the request expired; the next one goes out now
            self.backoff.reset();
            return;
        }
        if status == async_nats::StatusCode::NO_RESPONDERS
            || description.eq_ignore_ascii_case("consumer deleted")
        {
            tracing::info!(
                topic = %self.sub.spec.topic,
                status = %status,
                description,
                "the consumer is gone; making it again"
            );
            self.remake = true;
            // (once when both open requests get it)
            if status == async_nats::StatusCode::NO_RESPONDERS && self.retry_at.is_none() {
                // JetStream may still be starting: do not hammer it
                let wait = self.backoff.next_delay();
                self.retry_at = Some(Instant::now() + wait);
            }
            return;
        }
        // 409 "Leadership Change", "Server Shutdown", "Exceeded MaxWaiting", ...; once when
        // both open requests get it, so that one event backs off once
        if self.retry_at.is_none() {
            let error = format!("{status} {description}");
            self.fail_later("pull messages", &error);
        }
    }

    fn message(&mut self, message: async_nats::Message, now: Instant) {
        if !self.count_message(now) {
            // from a request given up on: it takes room all the same
            self.sub.credit.take_one();
        }
        self.backoff.reset();
        self.last_message = Some(now);
        let Some(reply) = message.reply.clone() else {
            tracing::warn!(topic = %self.sub.spec.topic, "a pulled message without a reply subject; skipped");
            self.sub.give_back(1);
            return;
        };
        let Some((stream_sequence, delivered)) = ack_info(&reply) else {
            tracing::warn!(topic = %self.sub.spec.topic, reply = %reply, "a pulled message with an unreadable reply subject; skipped");
            self.sub.give_back(1);
            return;
        };
        {
            let mut current = self.sub.current();
            current.next_sequence = current.next_sequence.max(stream_sequence + 1);
        }
        let key = Some(self.sub.held.hold(reply.clone(), now));
        let message = wire::received(
            &self.sub.spec.topic,
            message.headers.as_ref(),
            message.payload,
            self.sub.spec.go_micro_envelope,
        );
        let incoming = Incoming {
            delivery: self.sub.delivery(message, stream_sequence, delivered),
            acker: NatsAcker {
                sub: self.sub.clone(),
                key,
                reply,
            },
        };
        // (when the loop is gone, the message is given back)
        self.sub.hand_over(&self.tx, incoming);
    }

    async fn remake_consumer(&self) -> Result<(), BrokerError> {
        let inner = &self.sub.inner;
        let spec = &self.sub.spec;
        inner.streams.forget(&spec.topic);
        let stream = inner
            .streams
            .resolve(&inner.config, &self.sub.js, &spec.topic, None)
            .await?;
        let resume_at = match spec.durable {
            Some(_) => None,
            None => Some(self.sub.current().next_sequence),
        };
        let (consumer, _) = make_consumer(inner, &self.sub.js, spec, &stream, resume_at).await?;
        tracing::info!(topic = %spec.topic, stream, consumer, ?resume_at, "consumer made again");
        let mut current = self.sub.current();
        current.stream = stream;
        current.consumer = consumer;
        Ok(())
    }

    /// Takes an arrival on the inbox while the subscription closes: a message is held in
    /// `late` and counted against its request (returns true); a status for an open request
    /// ends it.
    fn closing_arrival(
        &mut self,
        message: async_nats::Message,
        late: &mut Vec<async_nats::Subject>,
    ) -> bool {
        if message.status.is_none() {
            self.count_message(Instant::now());
            late.extend(message.reply);
            return true;
        }
        // no room is given back any more
        self.end_request(&message, Instant::now());
        false
    }

    /// Stops, giving back what came after the stop (the delivery loop gives back what it was
    /// handed).
    ///
    /// Unsubscribing the inbox makes the server drop the open pull requests, but a message the
    /// server sent before it read the unsubscribe (one this client published just before, say)
    /// would reach a client that no longer knows the inbox and drops it: the server would send
    /// it again only after `AckWait`. So while messages are coming, the inbox stays subscribed
    /// until the open requests are over: filled, or ended by the server (within [`EXPIRES`]).
    /// What arrives meanwhile is held, not given back: given back while a request is open,
    /// it could come to this inbox again. Then the inbox is unsubscribed and everything held
    /// goes back (`-NAK`), to the other members at once.
    ///
    /// A subscription that has had no message for [`QUIET`] asks the consumer instead whether
    /// anything is on the way, with a one-message request that must not wait (`no_wait`), on
    /// an inbox of its own: the consumer answers in order with what it sends to the open
    /// requests, so "no messages" means none is on the way, and the subscription closes at
    /// once. Only a message published in the moment between that answer and the server
    /// reading the unsubscribe can then go to the dropped inbox; it comes back after
    /// `AckWait`.
    async fn finish(mut self) {
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        let mut late: Vec<async_nats::Subject> = Vec::new();
        // the requests stay open (for `end_request`) until the inbox is let go; no room is
        // given back from here on
        let quiet = self.last_message.is_none_or(|at| at.elapsed() >= QUIET);
        if !self.requests.is_empty() && quiet {
            match self.nothing_on_the_way(&mut late, deadline).await {
                Ok(true) => {
                    self.requests.clear();
                }
                Ok(false) => {}
                Err(error) => tracing::debug!(
                    topic = %self.sub.spec.topic,
                    %error,
                    "could not ask the consumer what is on the way; waiting for the requests"
                ),
            }
        }
        // the server ends each request by EXPIRES after it got it
        let over_by = deadline.min(Instant::now() + EXPIRES + Duration::from_millis(500));
        while !self.requests.is_empty() {
            match tokio::time::timeout_at(over_by, self.inbox.next()).await {
                // a message, or a status ending a request (expired, or the consumer went away)
                Ok(Some(message)) => {
                    self.closing_arrival(message, &mut late);
                }
                Ok(None) => break,
                Err(_elapsed) => {
                    tracing::debug!(
                        topic = %self.sub.spec.topic,
                        outstanding = self.requests.outstanding,
                        "the pull requests did not end; unsubscribing"
                    );
                    break;
                }
            }
        }
        // what the client had already handed to the inbox is read here, not dropped with it
        // (nothing else can come: the requests are over, or the server had nothing for them)
        let unsubscribed = tokio::time::timeout_at(deadline, self.inbox.unsubscribe()).await;
        if matches!(unsubscribed, Ok(Ok(()))) {
            while let Ok(Some(message)) = tokio::time::timeout_at(deadline, self.inbox.next()).await
            {
                if message.status.is_none() {
                    late.extend(message.reply);
                }
            }
        }
        for reply in late {
            let _ = self
                .sub
                .client
                .publish(reply, Bytes::from_static(NAK))
                .await;
        }
    }

    /// Asks the consumer, with a `no_wait` request for one message on an inbox of its own,
    /// whether it has anything for this subscription, and waits for its answer; holds what
    /// reaches either inbox in `late` (counting what the open requests brought against them,
    /// and ending one at its status). `Ok(true)`: nothing is on the way.
    async fn nothing_on_the_way(
        &mut self,
        late: &mut Vec<async_nats::Subject>,
        deadline: Instant,
    ) -> Result<bool, String> {
        let client = &self.sub.client;
        let subject = async_nats::Subject::from(client.new_inbox());
        let mut answers = client
            .subscribe(subject.clone())
            .await
            .map_err(|e| e.to_string())?;
        let (stream, consumer) = {
            let current = self.sub.current();
            (current.stream.clone(), current.consumer.clone())
        };
        let asked = client
            .publish_with_reply(
                format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"),
                subject,
                Bytes::from_static(br#"{"batch":1,"no_wait":true}"#),
            )
            .await;
        // the answer is a message, 404 "No Messages" or 408 "Requests Pending", soon: the
        // request does not wait; until then the open requests' messages are held as well
        let mut busy = false;
        let result = match asked {
            Err(error) => Err(error.to_string()),
            Ok(()) => loop {
                tokio::select! {
                    message = self.inbox.next(), if !self.requests.is_empty() => match message {
                        Some(message) => busy |= self.closing_arrival(message, late),
                        None => {
                            self.requests.clear();
                        }
                    },
                    answer = answers.next() => match answer {
                        Some(message) if message.status.is_none() => {
                            late.extend(message.reply);
                            break Ok(false);
                        }
                        Some(message) => {
                            let none = message.status == Some(async_nats::StatusCode::NOT_FOUND);
                            break Ok(none && !busy);
                        }
                        None => break Err("the client closed".to_owned()),
                    },
                    () = tokio::time::sleep_until(deadline) => {
                        break Err(format!("no answer within {CLOSE_TIMEOUT:?}"));
                    }
                }
            },
        };
        let _ = answers.unsubscribe().await;
        while let Ok(Some(message)) = tokio::time::timeout_at(deadline, answers.next()).await {
            if message.status.is_none() {
                late.extend(message.reply);
            }
        }
        result
    }
}

/// The number of the pull request a status on `subject` answers, when it is one of those
/// under `inbox_prefix`.
fn request_number(inbox_prefix: &str, subject: &str) -> Option<u64> {
    subject
        .strip_prefix(inbox_prefix)?
        .strip_prefix('.')?
        .parse()
        .ok()
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The reply subject the server sends the message at stream `sequence` of `stream` with, for
/// `consumer`, on its `delivered`-th delivery, as far as an acknowledgement reads it (the
/// consumer sequence, time and pending count are 0), in the form [`ack_info`] reads.
fn ack_subject(stream: &str, consumer: &str, delivered: i64, sequence: u64) -> String {
    format!("$JS.ACK.{stream}.{consumer}.{delivered}.{sequence}.0.0.0")
}

/// The stream sequence and delivery count from a JetStream reply subject:
/// `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>`, or
/// with `<domain>.<account hash>.` before the stream (and maybe a token after).
fn ack_info(reply: &str) -> Option<(u64, i64)> {
    let tokens: Vec<&str> = reply.strip_prefix("$JS.ACK.")?.split('.').collect();
    let at = match tokens.len() {
        7 => 2,
        n if n >= 9 => 4,
        _ => return None,
    };
    let delivered = tokens[at].parse().ok()?;
    let sequence = tokens[at + 1].parse().ok()?;
    Some((sequence, delivered))
}

impl JsSource {
    /// One message left the channel: when it was the last, the puller may ask for less than
    /// half its prefetch (it waits for a freed room to look again).
    fn taken(&self) {
        if self.sub.queued.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.sub.credit.freed.notify_one();
        }
    }
}

/// Where a JetStream subscription's messages come from.
pub(crate) struct JsSource {
    sub: Arc<Sub>,
    rx: mpsc::UnboundedReceiver<Incoming<NatsAcker>>,
    stop: CancellationToken,
    puller: Option<tokio::task::JoinHandle<()>>,
    /// Listens for the consumer's max-deliveries advisories (`given_up`).
    watcher: Option<tokio::task::JoinHandle<()>>,
}

impl DeliverySource for JsSource {
    type Acker = NatsAcker;

    async fn next(&mut self) -> Option<Incoming<NatsAcker>> {
        // a channel's recv is cancel-safe
        let incoming = self.rx.recv().await?;
        self.taken();
        Some(incoming)
    }

    fn next_at_hand(&mut self) -> Option<Incoming<NatsAcker>> {
        let incoming = self.rx.try_recv().ok()?;
        self.taken();
        Some(incoming)
    }

    async fn close(mut self) {
        self.stop.cancel();
        if let Some(puller) = self.puller.take() {
            let _ = puller.await;
        }
        if let Some(watcher) = self.watcher.take() {
            let _ = watcher.await;
        }
        // what was fetched and not handled goes back at once, not after AckWait
        self.rx.close();
        while let Ok(incoming) = self.rx.try_recv() {
            let _ = incoming.acker.nack(incoming.delivery).await;
        }
        if self.sub.held.len() > 0 {
            tracing::debug!(
                topic = %self.sub.spec.topic,
                held = self.sub.held.len(),
                "messages still held at close; the server redelivers them after AckWait"
            );
        }
        // the acknowledgements handed to the client go out now
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.sub.client.flush()).await;
        if self.sub.spec.durable.is_none() {
            // a broadcast subscriber's consumer is of no use to anyone else
            let (stream, consumer) = {
                let current = self.sub.current();
                (current.stream.clone(), current.consumer.clone())
            };
            let _ = tokio::time::timeout(
                CLOSE_TIMEOUT,
                self.sub.js.delete_consumer_from_stream(&consumer, &stream),
            )
            .await;
        }
    }
}

/// Settles one JetStream message: a publish to its reply subject, done once the client has it.
#[derive(Debug)]
pub(crate) struct NatsAcker {
    sub: Arc<Sub>,
    /// Where the message is held (and counted against the room to pull); `None` for one read
    /// from the stream after the server gave up delivering it (`given_up`).
    key: Option<u64>,
    reply: async_nats::Subject,
}

impl std::fmt::Debug for Sub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sub")
            .field("topic", &self.spec.topic)
            .finish_non_exhaustive()
    }
}

impl NatsAcker {
    async fn send(self, token: &'static [u8], operation: &'static str) -> Result<(), BrokerError> {
        let NatsAcker { sub, key, reply } = self;
        if key.is_none() && token == NAK {
            // the server delivers it no more, whatever it is told
            given_up::given_back(&sub, &reply);
            return Ok(());
        }
        if let Some(key) = key {
            sub.held.release(key);
        }
        let sent = sub.client.publish(reply, Bytes::from_static(token)).await;
        if key.is_some() {
            sub.give_back(1);
        }
        sent.map_err(|e| client_error(operation, e))
    }

    /// Gives the message back from a destructor: a `-NAK` sent by a task if there is a
    /// runtime; otherwise the server redelivers it after `AckWait`.
    fn abandon_now(self) {
        let NatsAcker { sub, key, reply } = self;
        let Some(key) = key else {
            given_up::given_back(&sub, &reply);
            return;
        };
        sub.held.release(key);
        sub.give_back(1);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let client = sub.client.clone();
            runtime.spawn(async move {
                let _ = client.publish(reply, Bytes::from_static(NAK)).await;
            });
        }
    }
}

impl Acknowledge for NatsAcker {
    async fn ack(self) -> Result<(), BrokerError> {
        self.send(ACK, "ack").await
    }

    async fn nack(self, _delivery: Delivery) -> Result<(), BrokerError> {
        self.send(NAK, "nak").await
    }

    fn abandon(self, _delivery: Delivery) {
        self.abandon_now();
    }
}

// --- core NATS --------------------------------------------------------------------------------

/// Opens a core NATS subscription (a queue subscription for a queue group) and makes sure the
/// server has it before returning.
pub(crate) async fn open_core(
    inner: &Inner,
    session: Session,
    topic: &str,
    options: &SubscribeOptions,
) -> Result<CoreSource, BrokerError> {
    let subject = topic.to_owned();
    let subscriber = match options.queue_name() {
        Some(group) => {
            session
                .client
                .queue_subscribe(subject, group.to_owned())
                .await
        }
        None => session.client.subscribe(subject).await,
    }
    .map_err(|e| client_error("subscribe", e))?;
    session
        .barrier
        .as_ref()
        .expect("core NATS sessions have one")
        .pass(inner.config.request_timeout)
        .await?;
    Ok(CoreSource {
        subscriber,
        topic: Arc::from(topic),
        received: 0,
        client: session.client.clone(),
        go_micro_envelope: inner.config.go_micro_envelope,
    })
}

/// Where a core NATS subscription's messages come from.
pub(crate) struct CoreSource {
    subscriber: async_nats::Subscriber,
    topic: Arc<str>,
    received: u64,
    client: async_nats::Client,
    /// Unwrap go-micro's JSON envelope.
    go_micro_envelope: bool,
}

impl DeliverySource for CoreSource {
    type Acker = CoreAcker;

    async fn next(&mut self) -> Option<Incoming<CoreAcker>> {
        // a Stream's next() is cancel-safe
        let message = self.subscriber.next().await?;
        self.received += 1;
        let delivery = Delivery::new(
            self.topic.clone(),
            wire::received(
                &self.topic,
                message.headers.as_ref(),
                message.payload,
                self.go_micro_envelope,
            ),
            wire::core_position(self.received),
        );
        Some(Incoming {
            delivery,
            acker: CoreAcker,
        })
    }

    async fn close(mut self) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.subscriber.unsubscribe()).await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.client.flush()).await;
    }
}

/// Core NATS has no acknowledgements: settling does nothing, and a message given back is lost.
#[derive(Debug)]
pub(crate) struct CoreAcker;

impl Acknowledge for CoreAcker {
    async fn ack(self) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn nack(self, delivery: Delivery) -> Result<(), BrokerError> {
        tracing::debug!(
            topic = delivery.topic(),
            position = %delivery.position(),
            "core NATS cannot take a message back: it is dropped"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_names_the_request_it_answers() {
        let prefix = "_INBOX.abc";
        assert_eq!(request_number(prefix, "_INBOX.abc.7"), Some(7));
        assert_eq!(request_number(prefix, "_INBOX.abc.12"), Some(12));
        // another inbox, or not a request's subject
        assert_eq!(request_number(prefix, "_INBOX.abcd.7"), None);
        assert_eq!(request_number(prefix, "_INBOX.abc"), None);
        assert_eq!(request_number(prefix, "_INBOX.abc.x"), None);
        assert_eq!(request_number(prefix, "orders.placed"), None);
    }

    #[test]
    fn an_ack_subject_made_here_reads_back() {
        let subject = ack_subject("EVENT_TESTKIT", "users_created_mailer", 10, 4711);
        assert_eq!(
            subject,
            "$JS.ACK.EVENT_TESTKIT.users_created_mailer.10.4711.0.0.0"
        );
        assert_eq!(ack_info(&subject), Some((4711, 10)));
    }

    #[test]
    fn reply_subjects_of_both_formats() {
        assert_eq!(
            ack_info("$JS.ACK.EVENT_t.cons.3.100.7.1790230470084404000.42"),
            Some((100, 3))
        );
        assert_eq!(
            ack_info("$JS.ACK._.szMpdrwD.EVENT_t.cons.1.9.1.1790230470084404000.0"),
            Some((9, 1))
        );
        assert_eq!(
            ack_info("$JS.ACK.hub.h.S.C.2.50.9.1790230470084404000.0.token"),
            Some((50, 2))
        );
        assert_eq!(ack_info("$JS.ACK.S.C.x.1.1.1"), None);
        assert_eq!(ack_info("_INBOX.abc"), None);
    }

    #[test]
    fn credit_is_taken_whole_and_given_back() {
        let credit = Credit::new(3);
        assert_eq!(credit.take_all(4), None);
        assert_eq!(credit.take_all(1), Some(3));
        assert_eq!(credit.take_all(1), None);
        credit.take_one();
        credit.give_back(2);
        assert_eq!(credit.take_all(1), Some(1));
    }

    /// `n` messages came, each counted against the open requests.
    fn came(requests: &mut Requests, n: usize) {
        for _ in 0..n {
            assert!(requests.message(), "{requests:?}");
        }
    }

    /// The server hands messages to two open requests in turn: what one request still had
    /// when its status came is freed by the count in it, and nothing is left outstanding
    /// once the other fills. (Counting each message against the oldest request instead
    /// takes that one for filled early, ignores its status as one given up on, and keeps
    /// room for a request the server no longer has.)
    #[test]
    fn requests_filled_in_turn_free_all_their_room() {
        let mut requests = Requests::default();
        requests.sent(1, 100);
        came(&mut requests, 50);
        requests.sent(2, 50);
        // 25 for each, in turn
        came(&mut requests, 50);
        assert_eq!((requests.len(), requests.outstanding), (2, 50));
        // request 1 expires with 25 it could still have taken
        assert_eq!(requests.ended(1, Some(25)), Some(25));
        // request 2 fills: all asked for came, and nothing stays open
        came(&mut requests, 25);
        assert!(requests.is_empty());
        assert_eq!(requests.outstanding, 0);
        // a status for a request no longer open frees nothing
        assert_eq!(requests.ended(2, Some(0)), None);
        // a message for a request given up on is counted by no request
        assert!(!requests.message());
    }

    #[test]
    fn the_last_request_to_end_frees_what_is_left() {
        let mut requests = Requests::default();
        requests.sent(1, 10);
        requests.sent(2, 5);
        assert!(requests.message());
        // one of two ends with the server's count
        assert_eq!(requests.ended(2, Some(2)), Some(2));
        assert_eq!(requests.len(), 1);
        // the last one frees everything, whatever its count says
        assert_eq!(requests.ended(1, Some(3)), Some(12));
        assert!(requests.is_empty());
        requests.sent(3, 4);
        assert_eq!(requests.clear(), 4);
        assert!(requests.is_empty());
    }

    /// Request 1 fills without a status while request 2 still takes messages; request 2's
    /// status then leaves nothing outstanding, so neither is open any more.
    #[test]
    fn a_request_filled_without_a_status_is_over_when_nothing_is_outstanding() {
        let mut requests = Requests::default();
        requests.sent(1, 10);
        came(&mut requests, 6);
        requests.sent(2, 6);
        came(&mut requests, 8);
        assert_eq!(requests.ended(2, Some(2)), Some(2));
        assert!(requests.is_empty(), "{requests:?}");
    }

    /// A status without the server's count (a refusal, a leadership change) ends every
    /// request: one filled without a status would otherwise keep its room forever.
    #[test]
    fn a_status_without_a_count_ends_every_request() {
        let mut requests = Requests::default();
        requests.sent(1, 10);
        requests.sent(2, 5);
        assert!(requests.message());
        assert_eq!(requests.ended(2, None), Some(14));
        assert!(requests.is_empty());
        // the other's status, if it comes, frees nothing more
        assert_eq!(requests.ended(1, Some(9)), None);
    }
}
