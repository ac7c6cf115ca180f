//! Our AMQP path beside raw lapin and beside a peer framework, in one run against the same
//! RabbitMQ.
//!
//! ```text
//! cargo bench -p event-amqp --bench amqp                   # 20,000 events per run, 5 rounds
//! EVENTS=50000 WINDOW=64 PREFETCH=64 ROUNDS=7 cargo bench -p event-amqp --bench amqp
//! ONLY=publish cargo bench -p event-amqp --bench amqp      # or ONLY=consume
//! EVENTS=2000 ROUNDS=1 cargo bench -p event-amqp --bench amqp   # a smoke run
//! ```
//!
//! Settings (environment): `EVENTS` messages per run (20,000), `WINDOW` publishes in flight
//! (64), `PREFETCH` the consumers' `basic.qos` (64), `ROUNDS` (5), `ONLY` = `publish` or
//! `consume` (both), `ACK_EVERY` the batch of the `multiple=true` raw consumer (`PREFETCH` / 2),
//! `ROWS` the labels of the rows to run, separated by `|` (every row), for a profile of one row:
//! `ROWS='typed|raw lapin, same properties'`. `WORKERS` the tokio worker threads (2).
//!
//! Every row runs once per round, for 64-byte and 1 KiB `Tick`s (persistent messages, durable
//! queues), the rows of a round in a rotating order; the tables at the end give each row's
//! median over the rounds and its ratio to each baseline row, as markdown.
//!
//! `publish` rows (`WINDOW` publishes in flight, each waiting for its own confirm; timed from
//! the first publish to the last confirm):
//! - `typed`: `Publisher<Tick>::publish` (encode, headers, mandatory publish, confirm). One row
//!   per entry of [`TYPED_PUBLISH`] (a label and a broker URL query, e.g. a wire profile);
//! - `raw lapin, same properties`: the best loop a user of lapin writes for the same events:
//!   per event it encodes the `Tick` and sends it with `basic_publish` (mandatory, one confirm
//!   channel) and the properties our publisher writes, with that event's own `message_id`
//!   (made before the clock starts, as the application's code makes them) and the time. The
//!   properties come from the backend's own mapping (`event_amqp::__fuzz::to_amqp` of one
//!   encoded message, the default wire profile), so they follow the wire format as it changes;
//! - `raw lapin, same properties, not mandatory`: the same loop with publishes that are not
//!   mandatory, the baseline of the row `typed, mandatory=false`;
//! - `raw lapin, same properties, prebuilt`: the same properties with one id for every message,
//!   and bytes encoded before the clock starts, which no producer of new events can do (for
//!   reference: the baseline of the rounds before 2026-12-03);
//! - `raw lapin, delivery_mode only`: prebuilt bytes with no property but `delivery_mode` 2;
//! - `raw lapin, delivery_mode only, not mandatory`: and not mandatory either, what the peer
//!   sends;
//! - `RustStream`: `ruststream-lapin`'s confirms publisher (`LapinPublish::confirms()`,
//!   persistent, to the same exchange and routing key) publishing the prost `Tick` as its own
//!   bytes (the `#[wire(prost)]` lane). It writes `delivery_mode` 2 and nothing else, and its
//!   publishes are not mandatory.
//!
//! `consume` rows (each drains its own queue, filled with the same `EVENTS` messages as our
//! publisher writes them; prefetch `PREFETCH`, one message handled at a time; timed from the
//! first message handled to the last; every queue must be empty afterwards):
//! - `typed`: a no-op `async fn(Tick)` handler through `Service` (decode, delivery loop,
//!   acknowledgement);
//! - `raw lapin, pipelined acks`: a lapin consumer in a worker task decoding each delivery's
//!   `Tick` and acking every delivery on its own (`multiple=false`), without waiting for an ack
//!   before taking the next delivery (acks are sent at once and collected later, at most
//!   `PREFETCH` outstanding);
//! - `raw lapin, multiple=true every N`: the same acking every `ACK_EVERY`-th delivery (and the
//!   last) with `multiple=true`, what coalescing contiguous acks can reach;
//! - `RustStream`: a `#[subscriber]` no-op handler taking the prost `Tick` (decoded from the
//!   payload) through a RustStream service, prefetch `PREFETCH`, acked by the framework.
//!
//! Every row also gives the CPU time the bench process (every thread) used per message
//! (`event_bench_alloc::thread_cpu_times`): a consume row's from the first message handled to
//! the last, a publish row's from the first publish to the last confirm. The broker's own is
//! not in it, so a row's rate over its CPU tells client time from broker time.
//!
//! Needs RabbitMQ at `127.0.0.1:5672` (or `EVENT_TEST_AMQP`).

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_amqp::AmqpBroker;
use event_core::broker::{Broker, SubscribeOptions};
use event_core::{Publisher, Service};
use event_proto::bench::v1::Tick;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    QueuePurgeOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use prost::Message as _;
use tokio::sync::Notify;

const EXCHANGE: &str = "event.bench";
const SIZES: [usize; 2] = [64, 1024];

/// The `publish` rows of our typed publisher: a label and the query added to the broker URL
/// (`""`: the URL as it is). A row is one line here; one whose URL the broker does not accept is
/// skipped, with a note.
const TYPED_PUBLISH: &[(&str, &str)] = &[
    ("typed", ""),
    ("typed, wire=go-micro", "wire=go-micro"),
    ("typed, wire=cloudevents", "wire=cloudevents"),
    ("typed, mandatory=false", "mandatory=false"),
];

/// The peer's name in the tables.
const PEER: &str = "RustStream 0.7.7 (ruststream-lapin 0.7.2)";

fn url() -> String {
    std::env::var("EVENT_TEST_AMQP")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// The broker URL with `query` (`name=value&...`) added.
fn url_with(query: &str) -> String {
    let url = url();
    if query.is_empty() {
        url
    } else if url.contains('?') {
        format!("{url}&{query}")
    } else {
        format!("{url}?{query}")
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A `Tick` whose encoding is `size` bytes.
fn tick(seq: u64, size: usize) -> Tick {
    let mut payload = size.saturating_sub(8);
    loop {
        let t = Tick {
            seq,
            payload: vec![0xab; payload].into(),
        };
        match t.encoded_len().cmp(&size) {
            std::cmp::Ordering::Equal => return t,
            std::cmp::Ordering::Greater if payload > 0 => payload -= 1,
            std::cmp::Ordering::Less => payload += 1,
            _ => return t,
        }
    }
}

/// Counts the messages a consume row has handled: the time from the first to the `n`-th. One
/// row runs at a time, so every row (the peer's `#[subscriber]` function included, which
/// captures nothing) reports to the one [`TALLY`].
struct Tally {
    target: AtomicUsize,
    count: AtomicUsize,
    first: Mutex<Option<Instant>>,
    last: Mutex<Option<Instant>>,
    /// The process's CPU time (every thread) at the first and the last message.
    cpu: Mutex<[Option<Duration>; 2]>,
    done: Notify,
}

/// The CPU time every thread of this process has used so far.
fn process_cpu() -> Option<Duration> {
    event_bench_alloc::thread_cpu_times().map(|threads| threads.iter().map(|(_, cpu)| *cpu).sum())
}

static TALLY: Tally = Tally {
    target: AtomicUsize::new(usize::MAX),
    count: AtomicUsize::new(0),
    first: Mutex::new(None),
    last: Mutex::new(None),
    cpu: Mutex::new([None, None]),
    done: Notify::const_new(),
};

impl Tally {
    fn reset(&self, n: usize) {
        *self.first.lock().expect("tally") = None;
        *self.last.lock().expect("tally") = None;
        *self.cpu.lock().expect("tally") = [None, None];
        self.count.store(0, Ordering::Release);
        self.target.store(n, Ordering::Release);
    }

    #[inline]
    fn handled(&self) {
        let count = self.count.fetch_add(1, Ordering::AcqRel) + 1;
        if count == 1 {
            self.cpu.lock().expect("tally")[0] = process_cpu();
            *self.first.lock().expect("tally") = Some(Instant::now());
        }
        if count == self.target.load(Ordering::Acquire) {
            *self.last.lock().expect("tally") = Some(Instant::now());
            self.cpu.lock().expect("tally")[1] = process_cpu();
            self.done.notify_one();
        }
    }

    /// The CPU time per message of the last run, in µs, from its first message to its last.
    fn cpu_per_message(&self, n: usize) -> Option<f64> {
        let [Some(first), Some(last)] = *self.cpu.lock().expect("tally") else {
            return None;
        };
        Some(last.saturating_sub(first).as_secs_f64() * 1e6 / n.saturating_sub(1).max(1) as f64)
    }

    /// Waits for the `n`-th message; the time since the first.
    async fn wait(&self) -> Duration {
        if tokio::time::timeout(Duration::from_secs(300), self.done.notified())
            .await
            .is_err()
        {
            panic!(
                "only {} of {} messages handled in 5 minutes",
                self.count.load(Ordering::Acquire),
                self.target.load(Ordering::Acquire)
            );
        }
        let first = self.first.lock().expect("tally").expect("a first message");
        let last = self.last.lock().expect("tally").expect("a last message");
        last - first
    }
}

/// The peer: RustStream over lapin (`ruststream-lapin`), publishing and consuming the prost
/// `Tick` as its own bytes: the hand-written form of what `#[derive(Serialized, Deserialized)]`
/// with `#[wire(prost)]` generates, on a newtype because `Tick` is another crate's type.
mod peer {
    use std::num::NonZeroU16;
    use std::time::{Duration, Instant};

    use event_proto::bench::v1::Tick;
    use futures_util::StreamExt;
    use futures_util::stream::FuturesUnordered;
    use prost::Message as _;
    use ruststream::ConnectedBroker as _;
    use ruststream_lapin::prelude::*;
    use ruststream_lapin::{ConfirmsPublisher, ConnectedLapinBroker};

    use super::{EXCHANGE, TALLY, url};

    /// A `Tick` on RustStream's byte lanes.
    pub(crate) struct PeerTick(pub(crate) Tick);

    impl Serialized for PeerTick {
        type Error = prost::EncodeError;

        fn wire_bytes(&self, buf: &mut BytesMut) -> Result<WireBytes<'_>, Self::Error> {
            self.0.encode(buf)?;
            Ok(WireBytes::InBuffer)
        }
    }

    impl MessageWire for PeerTick {
        type Wire = SerializedWire;
    }

    impl OutgoingDestination for PeerTick {
        type Form = CallerName;
    }

    impl MessageHeaders for PeerTick {
        type Contract = NoHeaders;
    }

    impl Deserialized for PeerTick {
        type Output<'a> = PeerTick;
        type Error = prost::DecodeError;

        fn from_payload(payload: &[u8]) -> Result<PeerTick, Self::Error> {
            Tick::decode(payload).map(PeerTick)
        }
    }

    impl Input for PeerTick {
        type Axis = SoloDeserialized<PeerTick>;
    }

    /// The no-op handler; its queue is set where it is mounted.
    #[subscriber("event.bench.peer")]
    async fn on_tick(tick: &PeerTick) -> HandlerOutcome {
        std::hint::black_box(tick);
        TALLY.handled();
        HandlerOutcome::ack()
    }

    /// One connection and its confirms publisher, for every publish run.
    pub(crate) struct PeerPublisher {
        broker: ConnectedLapinBroker,
        publisher: ConfirmsPublisher,
    }

    impl PeerPublisher {
        pub(crate) async fn connect() -> PeerPublisher {
            let broker = LapinBroker::new(url())
                .connect()
                .await
                .expect("RabbitMQ must be running");
            // persistent (delivery mode 2) is the policy's default
            let publisher = broker.publisher(LapinPublish::default().exchange(EXCHANGE).confirms());
            PeerPublisher { broker, publisher }
        }

        /// `n` publishes of `msg` to `topic`, `window` in flight, each awaiting its confirm.
        pub(crate) async fn publish(
            &self,
            topic: &str,
            msg: &PeerTick,
            n: usize,
            window: usize,
        ) -> Duration {
            let t = Instant::now();
            let mut in_flight = FuturesUnordered::new();
            for _ in 0..n {
                if in_flight.len() >= window {
                    in_flight.next().await;
                }
                in_flight.push(async {
                    self.publisher
                        .message(msg)
                        .to(topic)
                        .publish()
                        .await
                        .expect("peer publish");
                });
            }
            while in_flight.next().await.is_some() {}
            t.elapsed()
        }

        pub(crate) async fn close(self) {
            let _ = self.broker.shutdown().await;
        }
    }

    /// The handler through a RustStream service on `queue`, prefetch `prefetch`, until `n`
    /// messages are handled.
    pub(crate) async fn consume(queue: &str, prefetch: u16, n: usize) -> Duration {
        TALLY.reset(n);
        let broker =
            LapinBroker::new(url()).prefetch(NonZeroU16::new(prefetch.max(1)).expect("non-zero"));
        let queue = queue.to_owned();
        let app = RustStream::new(AppInfo::new("bench", "0.1.0")).with_broker(broker, move |b| {
            b.include(on_tick.map_source(move |_| RabbitQueue::new(queue.clone())));
        });
        let running = app.start().await.expect("peer service starts");
        let elapsed = TALLY.wait().await;
        running.shutdown().await.expect("peer service stops");
        elapsed
    }
}

struct Raw {
    connection: Connection,
    channel: Channel,
}

impl Raw {
    async fn connect() -> Raw {
        let connection = Connection::connect(&url(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ must be running");
        let channel = connection.create_channel().await.expect("channel");
        Raw {
            connection,
            channel,
        }
    }

    /// A durable queue bound to `topic`, empty.
    async fn queue(&self, name: &str, topic: &str) {
        let _ = self
            .channel
            .queue_delete(name.into(), QueueDeleteOptions::default())
            .await;
        self.channel
            .queue_declare(
                name.into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await
            .expect("declare");
        self.channel
            .queue_bind(
                name.into(),
                EXCHANGE.into(),
                topic.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
    }

    /// The number of messages ready in `name`.
    async fn ready(&self, name: &str) -> u32 {
        self.channel
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("passive declare")
            .message_count()
    }

    async fn purge(&self, name: &str) {
        self.channel
            .queue_purge(name.into(), QueuePurgeOptions::default())
            .await
            .expect("purge");
    }

    async fn delete(&self, name: &str) {
        let _ = self
            .channel
            .queue_delete(name.into(), QueueDeleteOptions::default())
            .await;
    }

    async fn close(self) {
        let _ = self.connection.close(200, "bench done".into()).await;
    }
}

/// Raw lapin: `n` publishes of the same bytes, `window` confirms outstanding.
async fn raw_publish(
    channel: &Channel,
    topic: &str,
    payload: &[u8],
    properties: &BasicProperties,
    mandatory: bool,
    n: usize,
    window: usize,
) -> Duration {
    let t = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    for _ in 0..n {
        if in_flight.len() >= window {
            in_flight.next().await;
        }
        in_flight.push(publish_confirmed(
            channel,
            topic,
            payload,
            properties.clone(),
            mandatory,
        ));
    }
    while in_flight.next().await.is_some() {}
    t.elapsed()
}

/// One raw publish, awaited until its confirm, which must be an ack.
async fn publish_confirmed(
    channel: &Channel,
    topic: &str,
    payload: &[u8],
    properties: BasicProperties,
    mandatory: bool,
) {
    let confirm = channel
        .basic_publish(
            EXCHANGE.into(),
            topic.into(),
            BasicPublishOptions {
                mandatory,
                immediate: false,
            },
            payload,
            properties,
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack());
}

/// Raw lapin as an application publishes new events: per event, `msg` encoded and sent with
/// `template`'s properties, the event's own id (`ids`, one per publish) and the time.
async fn raw_publish_encoding(
    channel: &Channel,
    topic: &str,
    msg: &Tick,
    template: &BasicProperties,
    ids: Vec<ShortString>,
    mandatory: bool,
    window: usize,
) -> Duration {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs();
    let t = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    for id in ids {
        if in_flight.len() >= window {
            in_flight.next().await;
        }
        let payload = msg.encode_to_vec();
        let properties = template
            .clone()
            .with_message_id(id)
            .with_timestamp(since_epoch);
        in_flight.push(async move {
            publish_confirmed(channel, topic, &payload, properties, mandatory).await;
        });
    }
    while in_flight.next().await.is_some() {}
    t.elapsed()
}

/// `n` message ids, as an application makes them before it publishes.
fn message_ids(n: usize) -> Vec<ShortString> {
    (0..n)
        .map(|i| ShortString::from(format!("01a2006b-4b28-76c4-ac5d-{i:012x}")))
        .collect()
}

/// Typed: `n` publishes through `Publisher<Tick>`, `window` in flight.
async fn typed_publish(
    publisher: &Publisher<Tick>,
    msg: &Tick,
    n: usize,
    window: usize,
) -> Duration {
    let t = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    for _ in 0..n {
        if in_flight.len() >= window {
            in_flight.next().await;
        }
        in_flight.push(async {
            publisher.publish(msg).await.expect("publish");
        });
    }
    while in_flight.next().await.is_some() {}
    t.elapsed()
}

/// Raw lapin consumer in a worker task: prefetch `prefetch`; with `ack_every` `None` every
/// delivery is acked on its own (`multiple=false`), otherwise every `ack_every`-th (and the last)
/// with `multiple=true`. Acks are pipelined: each is sent as its delivery is taken and collected
/// later (at most `prefetch` outstanding), never awaited before the next delivery.
async fn raw_consume(queue: &str, prefetch: u16, n: usize, ack_every: Option<usize>) -> Duration {
    let raw = Raw::connect().await;
    raw.channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .expect("qos");
    TALLY.reset(n);
    let channel = raw.channel.clone();
    let queue = queue.to_owned();
    let outstanding = usize::from(prefetch).max(1);
    let worker = tokio::spawn(async move {
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let mut acks = FuturesUnordered::new();
        for i in 1..=n {
            let delivery = consumer.next().await.expect("open").expect("delivery");
            // the no-op handler of the decoded event, as the typed row's (and the Kafka and
            // NATS benches' raw loops): the body taken as `Bytes`, so a `bytes` field is not
            // copied, as ours is not
            black_box(Tick::decode(bytes::Bytes::from(delivery.data)).expect("a Tick"));
            let multiple = match ack_every {
                None => Some(false),
                Some(every) if i % every == 0 || i == n => Some(true),
                Some(_) => None,
            };
            if let Some(multiple) = multiple {
                acks.push(channel.basic_ack(delivery.delivery_tag, BasicAckOptions { multiple }));
            }
            // the first poll of a new ack queues its frame; reap those already written
            while let Some(Some(acked)) = acks.next().now_or_never() {
                acked.expect("ack");
            }
            TALLY.handled();
            while acks.len() >= outstanding {
                acks.next().await.expect("an ack").expect("ack");
            }
        }
        while let Some(acked) = acks.next().await {
            acked.expect("ack");
        }
    });
    // a worker that panics must not leave the bench waiting for the tally
    let elapsed = match worker.await {
        Ok(()) => TALLY.wait().await,
        Err(panicked) => panic!("the raw consumer failed: {panicked}"),
    };
    raw.close().await;
    elapsed
}

/// Typed no-op handler through `Service`: same prefetch, concurrency 1.
async fn typed_consume(topic: &str, group: &str, prefetch: u16, n: usize) -> Duration {
    let broker = AmqpBroker::builder(&url())
        .exchange(EXCHANGE)
        .prefetch(prefetch)
        .build()
        .expect("config");
    broker.connect().await.expect("RabbitMQ must be running");
    TALLY.reset(n);
    let handler = |t: Tick| async move {
        black_box(t);
        TALLY.handled();
    };
    let service = Service::builder("bench")
        .broker(broker)
        .subscribe_with(topic, SubscribeOptions::new().queue(group), handler)
        .build()
        .expect("build")
        .start()
        .await
        .expect("start");
    let elapsed = TALLY.wait().await;
    service.shutdown().await;
    elapsed
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Publish,
    Consume,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Publish => "publish",
            Op::Consume => "consume",
        }
    }
}

/// What a row runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// `TYPED_PUBLISH[i]`.
    TypedPublish(usize),
    RawSameProperties,
    /// The same properties, not mandatory: the baseline of a typed row with `mandatory=false`.
    RawSameNotMandatory,
    /// The same properties, one id for all, bytes encoded before the clock starts.
    RawSamePrebuilt,
    RawMinimalProperties,
    /// `delivery_mode` only and not mandatory: what the peer sends.
    RawMinimalNotMandatory,
    PeerPublish,
    TypedConsume,
    RawPipelinedAcks,
    RawMultipleAcks,
    PeerConsume,
}

struct Row {
    label: String,
    kind: Kind,
    /// Ours (compared) or a baseline (compared to).
    baseline: bool,
    /// msg/s per size, one per round.
    rates: [Vec<f64>; SIZES.len()],
    /// The process's CPU µs per message per size, one per round.
    cpu: [Vec<f64>; SIZES.len()],
}

impl Row {
    fn new(label: impl Into<String>, kind: Kind, baseline: bool) -> Row {
        Row {
            label: label.into(),
            kind,
            baseline,
            rates: Default::default(),
            cpu: Default::default(),
        }
    }
}

fn median(rates: &[f64]) -> f64 {
    let mut sorted = rates.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// `12345.6` as `12,346`.
fn thousands(rate: f64) -> String {
    if !rate.is_finite() {
        return "—".to_owned();
    }
    let digits = format!("{:.0}", rate);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One markdown table per operation: each row's median and range, and its ratio to each
/// baseline row (for our rows: typed / raw and typed / peer).
fn report(op: Op, rows: &[Row], config: &Config) {
    let baselines: Vec<&Row> = rows.iter().filter(|r| r.baseline).collect();
    let what = match op {
        Op::Publish => format!("window {}", config.window),
        Op::Consume => format!("prefetch {}", config.prefetch),
    };
    println!();
    println!(
        "{}: {} persistent messages per run, {what}, median over {} round(s)",
        op.name(),
        config.n,
        config.rounds
    );
    println!();
    let with_cpu = rows.iter().any(|r| r.cpu.iter().any(|c| !c.is_empty()));
    let mut header = "| size | row | msg/s | range |".to_owned();
    let mut rule = "|---:|---|---:|---:|".to_owned();
    if with_cpu {
        header.push_str(" CPU per message |");
        rule.push_str("---:|");
    }
    for b in &baselines {
        header.push_str(&format!(" ÷ {} |", b.label));
        rule.push_str("---:|");
    }
    println!("{header}");
    println!("{rule}");
    for (s, size) in SIZES.iter().enumerate() {
        for row in rows {
            let rates = &row.rates[s];
            let m = median(rates);
            let lo = rates.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = rates.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let mut line = format!(
                "| {size} B | {} | {} | {}–{} |",
                row.label,
                thousands(m),
                thousands(lo),
                thousands(hi)
            );
            if with_cpu {
                line.push_str(&format!(" {:.2} µs |", median(&row.cpu[s])));
            }
            for b in &baselines {
                if b.kind == row.kind {
                    line.push_str(" — |");
                } else {
                    line.push_str(&format!(" {:.1} % |", m / median(&b.rates[s]) * 100.0));
                }
            }
            println!("{line}");
        }
    }
}

struct Config {
    n: usize,
    window: usize,
    prefetch: u16,
    rounds: usize,
    ack_every: usize,
    publish: bool,
    consume: bool,
    /// The labels of the rows to run (`None`: every row).
    rows: Option<Vec<String>>,
}

impl Config {
    /// Drops the rows `ROWS` does not name, and says so when it names none of them.
    fn keep_selected(&self, rows: &mut Vec<Row>) {
        let Some(selected) = &self.rows else { return };
        let labels: Vec<String> = rows.iter().map(|row| format!("{:?}", row.label)).collect();
        rows.retain(|row| selected.contains(&row.label));
        if rows.is_empty() {
            println!("ROWS names none of these rows: {}", labels.join(", "));
        }
    }
}

fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

fn progress(round: usize, config: &Config, op: Op, size: usize, row: &Row, rate: f64) {
    println!(
        "round {}/{} {:<8} {size:>5} B  {:<44} {:>10} msg/s",
        round + 1,
        config.rounds,
        op.name(),
        row.label,
        thousands(rate)
    );
}

/// What one size's publish rows need.
struct PublishSize {
    size: usize,
    topic: String,
    sink: String,
    msg: Tick,
    peer_msg: peer::PeerTick,
    publishers: Vec<Publisher<Tick>>,
    payload: Vec<u8>,
    same: BasicProperties,
    minimal: BasicProperties,
}

async fn publish_once(
    kind: Kind,
    s: &PublishSize,
    raw: &Raw,
    peer: &peer::PeerPublisher,
    n: usize,
    window: usize,
) -> (Duration, Option<f64>) {
    // ids, as the application makes them, before the clocks start
    let ids =
        matches!(kind, Kind::RawSameProperties | Kind::RawSameNotMandatory).then(|| message_ids(n));
    let cpu_before = process_cpu();
    let elapsed = match kind {
        Kind::TypedPublish(i) => typed_publish(&s.publishers[i], &s.msg, n, window).await,
        Kind::RawSameProperties => {
            let ids = ids.expect("made above for this row");
            raw_publish_encoding(&raw.channel, &s.topic, &s.msg, &s.same, ids, true, window).await
        }
        Kind::RawSameNotMandatory => {
            let ids = ids.expect("made above for this row");
            raw_publish_encoding(&raw.channel, &s.topic, &s.msg, &s.same, ids, false, window).await
        }
        Kind::RawSamePrebuilt => {
            raw_publish(&raw.channel, &s.topic, &s.payload, &s.same, true, n, window).await
        }
        Kind::RawMinimalProperties => {
            raw_publish(
                &raw.channel,
                &s.topic,
                &s.payload,
                &s.minimal,
                true,
                n,
                window,
            )
            .await
        }
        Kind::RawMinimalNotMandatory => {
            raw_publish(
                &raw.channel,
                &s.topic,
                &s.payload,
                &s.minimal,
                false,
                n,
                window,
            )
            .await
        }
        Kind::PeerPublish => peer.publish(&s.topic, &s.peer_msg, n, window).await,
        _ => unreachable!("not a publish row"),
    };
    let cpu = cpu_before
        .zip(process_cpu())
        .map(|(before, after)| after.saturating_sub(before).as_secs_f64() * 1e6 / n as f64);
    // the sink only makes the publishes routable: keep it from growing over the rounds
    raw.purge(&s.sink).await;
    (elapsed, cpu)
}

async fn run_publish(config: &Config, raw: &Raw) -> Vec<Row> {
    let (n, window) = (config.n, config.window);
    let mut brokers = Vec::new();
    let mut rows = Vec::new();
    for (label, query) in TYPED_PUBLISH {
        let broker = match AmqpBroker::builder(&url_with(query))
            .exchange(EXCHANGE)
            .build()
        {
            Ok(broker) => broker,
            Err(error) => {
                println!("skipping the row {label:?}: {error}");
                continue;
            }
        };
        broker.connect().await.expect("RabbitMQ must be running");
        rows.push(Row::new(*label, Kind::TypedPublish(brokers.len()), false));
        brokers.push(Arc::new(broker));
    }
    rows.push(Row::new(
        "raw lapin, same properties",
        Kind::RawSameProperties,
        true,
    ));
    rows.push(Row::new(
        "raw lapin, same properties, not mandatory",
        Kind::RawSameNotMandatory,
        true,
    ));
    rows.push(Row::new(
        "raw lapin, same properties, prebuilt",
        Kind::RawSamePrebuilt,
        true,
    ));
    rows.push(Row::new(
        "raw lapin, delivery_mode only",
        Kind::RawMinimalProperties,
        true,
    ));
    rows.push(Row::new(
        "raw lapin, delivery_mode only, not mandatory",
        Kind::RawMinimalNotMandatory,
        true,
    ));
    rows.push(Row::new(PEER, Kind::PeerPublish, true));
    config.keep_selected(&mut rows);
    let peer = peer::PeerPublisher::connect().await;

    let mut sizes = Vec::new();
    for size in SIZES {
        let topic = format!("bench.publish.{size}");
        let sink = format!("event.bench.sink.{size}");
        raw.queue(&sink, &topic).await;
        let msg = tick(1 << 20, size);
        let publishers: Vec<Publisher<Tick>> = brokers
            .iter()
            .map(|b| Publisher::<Tick>::new(b.clone(), "bench", topic.as_str()))
            .collect();
        // one message as our publisher encodes it, and the properties the backend writes for it
        // in the default wire profile
        let encoded = publishers[0].encode(&msg, None);
        let same = event_amqp::__fuzz::to_amqp(&topic, &encoded).expect("to_amqp");
        let s = PublishSize {
            size,
            peer_msg: peer::PeerTick(msg.clone()),
            payload: encoded.payload.to_vec(),
            same,
            minimal: BasicProperties::default().with_delivery_mode(2),
            topic,
            sink,
            msg,
            publishers,
        };
        // warm up every row
        for row in &rows {
            publish_once(row.kind, &s, raw, &peer, (n / 10).max(1), window).await;
        }
        sizes.push(s);
    }
    for round in 0..config.rounds {
        for (si, s) in sizes.iter().enumerate() {
            for k in 0..rows.len() {
                let r = (k + round) % rows.len();
                let (elapsed, cpu) = publish_once(rows[r].kind, s, raw, &peer, n, window).await;
                rows[r].cpu[si].extend(cpu);
                let rate = rate(n, elapsed);
                progress(round, config, Op::Publish, s.size, &rows[r], rate);
                rows[r].rates[si].push(rate);
            }
        }
    }
    for s in &sizes {
        raw.delete(&s.sink).await;
    }
    peer.close().await;
    for broker in brokers {
        broker.disconnect().await.expect("disconnect");
    }
    rows
}

async fn run_consume(config: &Config, raw: &Raw, broker: &AmqpBroker) -> Vec<Row> {
    let (n, prefetch) = (config.n, config.prefetch);
    let group = "typed";
    let mut rows = vec![
        Row::new("typed", Kind::TypedConsume, false),
        Row::new("raw lapin, pipelined acks", Kind::RawPipelinedAcks, true),
        Row::new(
            format!("raw lapin, multiple=true every {}", config.ack_every),
            Kind::RawMultipleAcks,
            true,
        ),
        Row::new(PEER, Kind::PeerConsume, true),
    ];
    config.keep_selected(&mut rows);
    let queue = |kind: Kind, topic: &str, size: usize| match kind {
        Kind::TypedConsume => broker.group_queue_name(topic, group),
        Kind::RawPipelinedAcks => format!("event.bench.raw.{size}"),
        Kind::RawMultipleAcks => format!("event.bench.raw-multiple.{size}"),
        Kind::PeerConsume => format!("event.bench.peer.{size}"),
        _ => unreachable!("not a consume row"),
    };
    for round in 0..config.rounds {
        for (si, size) in SIZES.into_iter().enumerate() {
            let topic = format!("bench.consume.{size}");
            let msg = tick(1 << 20, size);
            let publisher =
                Publisher::<Tick>::new(Arc::new(broker.clone()), "bench", topic.as_str());
            let encoded = publisher.encode(&msg, None);
            let properties = event_amqp::__fuzz::to_amqp(&topic, &encoded).expect("to_amqp");
            // every row's queue receives every message
            for row in &rows {
                raw.queue(&queue(row.kind, &topic, size), &topic).await;
            }
            raw_publish(
                &raw.channel,
                &topic,
                &encoded.payload,
                &properties,
                true,
                n,
                256,
            )
            .await;
            for k in 0..rows.len() {
                let r = (k + round) % rows.len();
                let kind = rows[r].kind;
                let name = queue(kind, &topic, size);
                let elapsed = match kind {
                    Kind::TypedConsume => typed_consume(&topic, group, prefetch, n).await,
                    Kind::RawPipelinedAcks => raw_consume(&name, prefetch, n, None).await,
                    Kind::RawMultipleAcks => {
                        raw_consume(&name, prefetch, n, Some(config.ack_every)).await
                    }
                    Kind::PeerConsume => peer::consume(&name, prefetch, n).await,
                    _ => unreachable!("not a consume row"),
                };
                let left = raw.ready(&name).await;
                if left != 0 {
                    println!(
                        "warning: {} left {left} of {n} messages in {name}",
                        rows[r].label
                    );
                }
                let rate = rate(n, elapsed);
                progress(round, config, Op::Consume, size, &rows[r], rate);
                rows[r].rates[si].push(rate);
                rows[r].cpu[si].extend(TALLY.cpu_per_message(n));
            }
        }
    }
    for size in SIZES {
        let topic = format!("bench.consume.{size}");
        for row in &rows {
            raw.delete(&queue(row.kind, &topic, size)).await;
        }
        raw.delete(&format!("{topic}.dlq")).await;
    }
    rows
}

async fn run(config: Config) {
    let raw = Raw::connect().await;
    // declares the exchange; names the typed consumer's queue
    let broker = AmqpBroker::builder(&url())
        .exchange(EXCHANGE)
        .build()
        .expect("config");
    broker.connect().await.expect("RabbitMQ must be running");
    raw.channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    println!(
        "RabbitMQ at {}, {} persistent messages per run, {} round(s), publish window {}, prefetch {}",
        broker.address(),
        config.n,
        config.rounds,
        config.window,
        config.prefetch
    );
    let publish = if config.publish {
        run_publish(&config, &raw).await
    } else {
        Vec::new()
    };
    let consume = if config.consume {
        run_consume(&config, &raw, &broker).await
    } else {
        Vec::new()
    };
    if config.publish {
        report(Op::Publish, &publish, &config);
    }
    if config.consume {
        report(Op::Consume, &consume, &config);
    }
    broker.disconnect().await.expect("disconnect");
    raw.close().await;
}

fn main() {
    let prefetch = u16::try_from(env("PREFETCH", 64).max(1)).unwrap_or(u16::MAX);
    let (publish, consume) = match std::env::var("ONLY").as_deref() {
        Err(_) | Ok("" | "all") => (true, true),
        Ok("publish") => (true, false),
        Ok("consume") => (false, true),
        Ok(other) => panic!("ONLY={other}: expected publish or consume"),
    };
    let config = Config {
        n: env("EVENTS", 20_000).max(1),
        window: env("WINDOW", 64).max(1),
        prefetch,
        rounds: env("ROUNDS", 5).max(1),
        // at most the prefetch, or the broker stops delivering before the batch is complete
        ack_every: env("ACK_EVERY", usize::from(prefetch / 2)).clamp(1, usize::from(prefetch)),
        publish,
        consume,
        rows: std::env::var("ROWS")
            .ok()
            .filter(|rows| !rows.is_empty())
            .map(|rows| rows.split('|').map(str::to_owned).collect()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(env("WORKERS", 2).max(1))
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(config));
}
