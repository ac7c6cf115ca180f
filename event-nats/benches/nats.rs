//! Our NATS JetStream path beside raw async-nats, in one run against the same nats-server.
//!
//! ```text
//! cargo bench -p event-nats --bench nats                        # 5,000 events per run, 3 rounds
//! EVENTS=20000 WINDOW=64 PREFETCH=64 ROUNDS=5 cargo bench -p event-nats --bench nats
//! ONLY=publish cargo bench -p event-nats --bench nats           # or ONLY=consume
//! EVENTS=1000 ROUNDS=1 cargo bench -p event-nats --bench nats   # a smoke run
//! ```
//!
//! Settings (environment): `EVENTS` messages per run (5,000), `WINDOW` publishes in flight
//! (64), `PREFETCH` messages a consumer pulls ahead (64), `ROUNDS` (3), `ONLY` = `publish` or
//! `consume` (both), `ROW` = `typed`, `raw async-nats` or `raw prebuilt` (all; one row, e.g.
//! under `perf`), `THREADS` (set: each row also prints the CPU time of the main thread, which
//! runs the rows' loops, and of the other threads together: the runtime's workers). The stream is `EVENT_BENCH` (subjects `bench.>`, file storage), made for the run
//! and deleted after it.
//!
//! Each row also counts, per message, the allocations the whole process made while its clock
//! ran (the counting allocator of `bench-alloc`) and the CPU time all its threads used
//! (`event_bench_alloc::thread_cpu_times`): on two cores the broker shares, rates swing with
//! what the broker does, the CPU a message costs the client less.
//!
//! Every row runs once per round, for 64-byte and 1 KiB `Tick`s, the rows of a round in a
//! rotating order; the tables at the end give each row's median over the rounds and its ratio
//! to the raw row, as markdown.
//!
//! - `publish`, typed: `Publisher<Tick>::publish` (encode, headers, JetStream publish, PubAck),
//!   `WINDOW` in flight. Raw: async-nats `send_publish` of the same bytes with the exact
//!   headers our publisher writes (`Nats-Msg-Id` included), each awaiting its PubAck, `WINDOW`
//!   in flight; per message it encodes the `Tick` and builds its `HeaderMap` (constant names,
//!   the message's values copied in), as the best loop a user of async-nats writes does (the
//!   values of the headers, ids and times, are made before the clock starts: the
//!   application's own work).
//!   The row `raw prebuilt` is the earlier raw loop, for reference: headers and payloads made
//!   before the clock starts.
//! - `consume` (draining a subject pre-filled with the same messages; a durable pull consumer
//!   with explicit acks; timed from the subscribe to the last message handled). Typed: a no-op
//!   `async fn(Tick)` handler through `Service` (one at a time, prefetch `PREFETCH`: decode,
//!   delivery loop, ack per message). Raw: async-nats's `stream().max_messages_per_batch(
//!   PREFETCH)` on a consumer of the same configuration, decoding each `Tick` and acking it.
//!
//! Needs nats-server with JetStream at `127.0.0.1:4222` (or `EVENT_TEST_NATS`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::message::PublishMessage;
use event_core::broker::{Broker, SubscribeOptions};
use event_core::{Publisher, Service};
use event_nats::NatsBroker;
use event_proto::bench::v1::Tick;
use futures_util::StreamExt;
use prost::Message as _;
use tokio::sync::Notify;

#[global_allocator]
static GLOBAL: event_bench_alloc::Counting = event_bench_alloc::Counting;

const STREAM: &str = "EVENT_BENCH";
const SIZES: [usize; 2] = [64, 1024];

fn url() -> String {
    std::env::var("EVENT_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
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

/// Counts handled messages of the consume row that runs: the `n`-th wakes the timer.
struct Tally {
    target: AtomicUsize,
    count: AtomicUsize,
    done: Notify,
    /// When the first message was handled.
    first: std::sync::Mutex<Option<Instant>>,
}

static TALLY: Tally = Tally {
    target: AtomicUsize::new(usize::MAX),
    count: AtomicUsize::new(0),
    done: Notify::const_new(),
    first: std::sync::Mutex::new(None),
};

impl Tally {
    fn start(&self, n: usize) {
        *self.first.lock().expect("first") = None;
        self.count.store(0, Ordering::Release);
        self.target.store(n, Ordering::Release);
    }

    fn one(&self) {
        let before = self.count.fetch_add(1, Ordering::AcqRel);
        if before == 0 {
            *self.first.lock().expect("first") = Some(Instant::now());
        }
        if before + 1 == self.target.load(Ordering::Acquire) {
            self.done.notify_one();
        }
    }
}

async fn on_tick(tick: Tick) {
    std::hint::black_box(tick);
    TALLY.one();
}

struct Bench {
    events: usize,
    window: usize,
    prefetch: usize,
    js: async_nats::jetstream::Context,
    broker: NatsBroker,
}

impl Bench {
    fn topic(&self, what: &str) -> String {
        format!("bench.{what}.{}", uuid::Uuid::now_v7().simple())
    }

    async fn typed_publish(&self, size: usize) -> Measured {
        let topic = self.topic("typed-publish");
        let publisher =
            Publisher::<Tick>::new(Arc::new(self.broker.clone()), "bench", topic.as_str());
        let ticks: Vec<Tick> = (0..self.events as u64).map(|i| tick(i, size)).collect();
        let started = Started::now();
        let mut sends = futures_util::stream::iter(ticks.iter())
            .map(|t| publisher.publish(t))
            .buffer_unordered(self.window);
        while let Some(sent) = sends.next().await {
            sent.expect("publish");
        }
        started.stop()
    }

    /// Our publisher's exact messages, encoded before the clock starts.
    fn encoded(&self, topic: &str, size: usize) -> Vec<(async_nats::HeaderMap, bytes::Bytes)> {
        let publisher = Publisher::<Tick>::new(Arc::new(self.broker.clone()), "bench", topic);
        (0..self.events as u64)
            .map(|i| {
                let message = publisher.encode(&tick(i, size), None);
                let headers = event_nats::__bench::to_nats(topic, &message)
                    .expect("headers")
                    .expect("some");
                (headers, message.payload)
            })
            .collect()
    }

    /// The best raw loop a user of async-nats writes for the same messages: per message it
    /// encodes the `Tick` and builds the `HeaderMap` of our publisher's exact headers (the
    /// values copied in, as every value is a `String` of the message's; the names constants,
    /// `HeaderName::from_static`, that cost nothing; `insert`, one hash per name). What is
    /// computed before the clock is only what the application has at hand anyway: the ticks
    /// and the values of their headers (ids and times come from the caller's code).
    async fn raw_publish(&self, size: usize) -> Measured {
        let topic = self.topic("raw-publish");
        let messages = self.encoded(&topic, size);
        let mut names: std::collections::HashMap<String, async_nats::HeaderName> =
            std::collections::HashMap::new();
        type Fields = Vec<(async_nats::HeaderName, String, bool)>;
        let fields: Vec<Fields> = messages
            .iter()
            .map(|(headers, _)| {
                let mut fields = Fields::new();
                for (name, values) in headers.iter() {
                    let name: &str = name.as_ref();
                    let constant = names
                        .entry(name.to_owned())
                        .or_insert_with(|| {
                            async_nats::HeaderName::from_static(String::leak(name.to_owned()))
                        })
                        .clone();
                    for (i, value) in values.iter().enumerate() {
                        fields.push((constant.clone(), value.as_str().to_owned(), i == 0));
                    }
                }
                fields
            })
            .collect();
        drop(messages);
        let ticks: Vec<Tick> = (0..self.events as u64).map(|i| tick(i, size)).collect();
        let started = Started::now();
        let mut sends = futures_util::stream::iter(ticks.iter().zip(&fields))
            .map(|(tick, fields)| {
                let js = &self.js;
                let topic = topic.clone();
                async move {
                    let mut headers = async_nats::HeaderMap::new();
                    for (name, value, first) in fields {
                        if *first {
                            headers.insert(name.clone(), value.as_str());
                        } else {
                            headers.append(name.clone(), value.as_str());
                        }
                    }
                    let payload = bytes::Bytes::from(tick.encode_to_vec());
                    js.send_publish(
                        topic,
                        PublishMessage::build().payload(payload).headers(headers),
                    )
                    .await?
                    .await
                }
            })
            .buffer_unordered(self.window);
        while let Some(sent) = sends.next().await {
            sent.expect("publish");
        }
        started.stop()
    }

    /// The earlier raw row, for reference: headers and payloads all made before the clock
    /// starts (no producer can do that with messages it makes as it goes).
    async fn raw_prebuilt_publish(&self, size: usize) -> Measured {
        let topic = self.topic("raw-prebuilt-publish");
        let messages = self.encoded(&topic, size);
        let started = Started::now();
        let mut sends = futures_util::stream::iter(messages)
            .map(|(headers, payload)| {
                let js = &self.js;
                let topic = topic.clone();
                async move {
                    js.send_publish(
                        topic,
                        PublishMessage::build().payload(payload).headers(headers),
                    )
                    .await?
                    .await
                }
            })
            .buffer_unordered(self.window);
        while let Some(sent) = sends.next().await {
            sent.expect("publish");
        }
        started.stop()
    }

    /// A subject filled with our publisher's messages, for a consume row.
    async fn filled(&self, what: &str, size: usize) -> String {
        let topic = self.topic(what);
        let messages = self.encoded(&topic, size);
        let mut sends = futures_util::stream::iter(messages)
            .map(|(headers, payload)| {
                let js = &self.js;
                let topic = topic.clone();
                async move {
                    js.send_publish(
                        topic,
                        PublishMessage::build().payload(payload).headers(headers),
                    )
                    .await?
                    .await
                }
            })
            .buffer_unordered(256);
        while let Some(sent) = sends.next().await {
            sent.expect("fill");
        }
        drop(sends);
        topic
    }

    async fn typed_consume(&self, size: usize) -> Measured {
        let topic = self.filled("typed-consume", size).await;
        TALLY.start(self.events);
        let done = TALLY.done.notified();
        tokio::pin!(done);
        done.as_mut().enable();
        let started = Started::now();
        let service = Service::builder("bench")
            .broker(self.broker.clone())
            .subscribe_with(
                topic.as_str(),
                SubscribeOptions::new()
                    .queue("bench")
                    .start_from(event_core::broker::StartFrom::Earliest),
                on_tick,
            )
            .build()
            .expect("service")
            .start()
            .await
            .expect("start");
        let at = started.at;
        done.await;
        let mut elapsed = started.stop();
        elapsed.first = TALLY.first.lock().expect("first").map(|first| first - at);
        // stop, not shutdown: the broker stays connected for the next rows
        let report = service.stop().await;
        assert!(!report.timed_out, "{report:?}");
        elapsed
    }

    async fn raw_consume(&self, size: usize) -> Measured {
        let topic = self.filled("raw-consume", size).await;
        let started = Started::now();
        let consumer = self
            .js
            .create_consumer_on_stream(
                pull::Config {
                    durable_name: Some(format!("raw_{}", uuid::Uuid::now_v7().simple())),
                    filter_subject: topic.clone(),
                    deliver_policy: DeliverPolicy::All,
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    ..Default::default()
                },
                STREAM,
            )
            .await
            .expect("consumer");
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(self.prefetch)
            .messages()
            .await
            .expect("messages");
        let mut n = 0;
        let mut first = None;
        while n < self.events {
            let message = messages.next().await.expect("open").expect("message");
            first.get_or_insert_with(|| started.at.elapsed());
            std::hint::black_box(Tick::decode(&message.payload[..]).expect("tick"));
            message.ack().await.expect("ack");
            n += 1;
        }
        let mut elapsed = started.stop();
        elapsed.first = first;
        elapsed
    }
}

/// When a row's clock started, and the allocations made and CPU used by then.
struct Started {
    at: Instant,
    allocations: u64,
    cpu: Duration,
    /// With `THREADS`: the CPU time of the main thread and of the others, together.
    threads: Option<(Duration, Duration)>,
}

/// The CPU time of the main thread (named after the binary) and of every other thread
/// together, when `THREADS` is set.
fn main_and_others() -> Option<(Duration, Duration)> {
    std::env::var_os("THREADS")?;
    let main = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.file_name().map(|n| n.to_string_lossy().into_owned()))?;
    let mut split = (Duration::ZERO, Duration::ZERO);
    for (name, cpu) in event_bench_alloc::thread_cpu_times()? {
        // the kernel keeps 15 bytes of a thread's name
        if main.starts_with(&name) {
            split.0 += cpu;
        } else {
            split.1 += cpu;
        }
    }
    Some(split)
}

/// What a row measured.
#[derive(Clone, Copy)]
struct Measured {
    elapsed: Duration,
    /// Allocations every thread made meanwhile (the whole process: the runtime, async-nats's
    /// connection task, the row).
    allocations: u64,
    /// CPU time every thread of the process used meanwhile.
    cpu: Duration,
    /// For a consume row, how long the first message took to reach the handler (the
    /// subscribe's own cost).
    first: Option<Duration>,
}

/// The CPU time the threads of this process have used (the runtime's workers live for the
/// whole bench, so two readings' difference is what was spent in between).
fn cpu() -> Duration {
    event_bench_alloc::thread_cpu_times()
        .map(|threads| threads.iter().map(|(_, cpu)| *cpu).sum())
        .unwrap_or_default()
}

impl Started {
    fn now() -> Started {
        Started {
            threads: main_and_others(),
            allocations: event_bench_alloc::allocations(),
            cpu: cpu(),
            at: Instant::now(),
        }
    }

    fn stop(self) -> Measured {
        let measured = Measured {
            elapsed: self.at.elapsed(),
            allocations: event_bench_alloc::allocations() - self.allocations,
            cpu: cpu() - self.cpu,
            first: None,
        };
        if let (Some((main, others)), Some((main_after, others_after))) =
            (self.threads, main_and_others())
        {
            eprintln!(
                "threads: main {:.2?}, the others {:.2?}",
                main_after.saturating_sub(main),
                others_after.saturating_sub(others)
            );
        }
        measured
    }
}

fn median_of<T: Ord + Copy>(values: &[T]) -> T {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted[sorted.len() / 2]
}

#[tokio::main]
async fn main() {
    let events = env("EVENTS", 5_000);
    let rounds = env("ROUNDS", 3).max(1);
    let only = std::env::var("ONLY").ok();
    let row = std::env::var("ROW").ok();
    let client = async_nats::connect(url().trim_start_matches("nats://"))
        .await
        .expect("nats-server with JetStream at 127.0.0.1:4222 (scripts/brokers.sh start nats)");
    let js = async_nats::jetstream::new(client);
    let _ = js.delete_stream(STREAM).await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: STREAM.to_owned(),
        subjects: vec!["bench.>".to_owned()],
        ..Default::default()
    })
    .await
    .expect("the bench stream");
    let prefetch = env("PREFETCH", 64);
    let broker = NatsBroker::builder(&url())
        .create_streams(false)
        .prefetch(prefetch)
        .connection_name("bench")
        .build()
        .expect("config");
    broker.connect().await.expect("connect");
    let bench = Bench {
        events,
        window: env("WINDOW", 64),
        prefetch,
        js: js.clone(),
        broker,
    };
    println!(
        "{events} events per run, {rounds} rounds, window {}, prefetch {prefetch}",
        bench.window
    );
    struct Row {
        kind: &'static str,
        name: &'static str,
        size: usize,
        runs: Vec<Measured>,
    }
    let mut rows: Vec<Row> = Vec::new();
    for kind in ["publish", "consume"] {
        if only.as_deref().is_some_and(|o| o != kind) {
            continue;
        }
        for size in SIZES {
            for name in ["typed", "raw async-nats", "raw prebuilt"] {
                if (name == "raw prebuilt" && kind != "publish")
                    || row.as_deref().is_some_and(|r| r != name)
                {
                    continue;
                }
                rows.push(Row {
                    kind,
                    name,
                    size,
                    runs: Vec::new(),
                });
            }
        }
    }
    let per_message = u32::try_from(events).unwrap_or(u32::MAX);
    for round in 0..rounds {
        // rotate the order of the rows in each round
        let n = rows.len();
        for k in 0..n {
            let row = &mut rows[(k + round) % n];
            let (kind, name, size) = (row.kind, row.name, row.size);
            let measured = match (kind, name) {
                ("publish", "typed") => bench.typed_publish(size).await,
                ("publish", "raw prebuilt") => bench.raw_prebuilt_publish(size).await,
                ("publish", _) => bench.raw_publish(size).await,
                ("consume", "typed") => bench.typed_consume(size).await,
                _ => bench.raw_consume(size).await,
            };
            println!(
                "round {round}: {kind} {name} {size} B: {:.2?}, per message {:.1} allocations \
                 and {:.2?} of CPU{}",
                measured.elapsed,
                measured.allocations as f64 / events as f64,
                measured.cpu / per_message,
                measured
                    .first
                    .map(|first| format!(", first message after {first:.2?}"))
                    .unwrap_or_default()
            );
            row.runs.push(measured);
            // every row starts on an empty stream without consumers: one that grew by every
            // earlier row's messages (millions in a long run) and kept their consumers makes
            // the server slower round by round
            let stream = js.get_stream(STREAM).await.expect("the bench stream");
            let consumers: Vec<String> = stream
                .consumer_names()
                .map(|name| name.expect("consumer names"))
                .collect()
                .await;
            for name in consumers {
                stream
                    .delete_consumer(&name)
                    .await
                    .expect("delete a consumer");
            }
            stream.purge().await.expect("purge the bench stream");
        }
    }
    let median_time =
        |row: &Row| median_of(&row.runs.iter().map(|m| m.elapsed).collect::<Vec<_>>());
    println!();
    println!(
        "| row | size | median time | msg/s | msg/s ÷ raw | allocations per message | CPU per message |"
    );
    println!("|---|---|---|---|---|---|---|");
    for row in &rows {
        let median = median_time(row);
        let raw = rows
            .iter()
            .find(|r| r.kind == row.kind && r.name == "raw async-nats" && r.size == row.size)
            .map_or(median, median_time);
        let allocations = median_of(&row.runs.iter().map(|m| m.allocations).collect::<Vec<_>>());
        let cpu = median_of(&row.runs.iter().map(|m| m.cpu).collect::<Vec<_>>());
        println!(
            "| {} {} | {} B | {median:.2?} | {:.0} | {:.1} % | {:.1} | {:.2?} |",
            row.kind,
            row.name,
            row.size,
            events as f64 / median.as_secs_f64(),
            100.0 * raw.as_secs_f64() / median.as_secs_f64(),
            allocations as f64 / events as f64,
            cpu / per_message
        );
    }
    bench.broker.disconnect().await.expect("disconnect");
    js.delete_stream(STREAM)
        .await
        .expect("delete the bench stream");
}
