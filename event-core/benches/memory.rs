//! End-to-end benchmark of the in-memory broker, beside raw baselines in the same run.
//!
//! ```text
//! cargo bench -p event-core --bench memory            # 1,000,000 events per run
//! cargo bench -p event-core --bench memory --features opentelemetry   # adds `typed + otel`
//! EVENTS=200000 RUNS=typed,raw-broker cargo bench -p event-core --bench memory
//! HANDLER_ROUNDS=400 RUNS=typed cargo bench -p event-core --bench memory   # a handler that works
//! RUNS=json cargo bench -p event-core --bench memory                       # proto3 JSON rows
//! EVENTS=10000000 RUNS=soak cargo bench -p event-core --bench memory       # peak RSS
//! ```
//!
//! Runs, each on a 2-worker tokio runtime:
//! - `raw channel`: a bounded tokio mpsc moving the same pre-encoded bytes, producer task to
//!   consumer task (the floor for any in-process hand-off);
//! - `prost only`: encode + decode of the event, no hand-off;
//! - `raw broker`: `Broker::publish` of pre-encoded bytes to a raw handler (broker + delivery
//!   loop, no typing);
//! - `typed`: `Publisher<Tick>::publish` → memory broker → decode → no-op `async fn` handler →
//!   ack (the whole framework path);
//! - `typed ping-pong`: one event in flight at a time, for unloaded latency;
//! - `json` (three rows): `serde json`, the same event in the same proto3 JSON shape (`seq` as
//!   a string, `payload` as base64) through a plain serde struct, encode + decode, no hand-off
//!   (the cost of JSON itself); `proto-json codec`, [`ProtoJson`] encode + decode, no
//!   hand-off; `typed json`, the `typed` run with a [`ProtoJson`] publisher (the subscriber
//!   picks the codec by content type);
//! - `soak` (only when named in `RUNS`): the `typed` run with each event built when it is
//!   published instead of all of them first, so that what the process holds does not grow
//!   with the number of events; it prints the peak resident set size (`VmHWM`, Linux) before
//!   and after. Run it alone (`RUNS=soak`): the peak is the process's;
//! - with `--features opentelemetry`, `typed` again under a tracing subscriber: `typed + spans`
//!   (a bare registry: the spans are made and entered, nothing records them) and `typed + otel`
//!   (an OpenTelemetry layer, batch processor, no-op exporter, W3C inject and extract), and
//!   `typed + otel lean` (the same without busy/idle timing, thread and location attributes),
//!   and `typed + otel 1%` (lean, no context activation on entry, 1 % of traces sampled by the
//!   SDK), and `typed + otel head 1%` (the same, 1 % sampled by the framework before the spans
//!   are made, the unsampled ones left out of the layer: see `event_core::telemetry`), and
//!   `otel sdk only`: the SDK's own cost for the two spans of an event, without `tracing` or
//!   a broker (a floor for the OpenTelemetry runs).
//!
//! `BATCH_WAIT_US=N` sets the memory broker's batch wait for the typed runs (see
//! `MemoryBrokerBuilder::batch_wait`; off by default), `QUEUE_CAPACITY=N` their queue's
//! capacity.
//!
//! Reported: events/s, p50/p99 publish→handler latency, heap allocations per event, and for
//! the `typed` run the CPU time per event of the publishing thread and of the runtime's
//! workers (Linux only): the slower of the two sets the pace. Latency is sampled on every 16th
//! event, in a window of the last 2^16 samples (about a million events), so the harness's own
//! memory stays bounded; the last line is the process's peak resident set size.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use event_core::broker::{Broker, Delivery, Message, Outcome, SubscribeOptions, handler_fn};
use event_core::codec::{Codec, ProtoJson};
use event_core::memory::MemoryBroker;
use event_core::{Publisher, Service};
use event_proto::bench::v1::Tick;
use prost::Message as _;
use tokio::sync::{Notify, mpsc};

#[global_allocator]
static GLOBAL: event_bench_alloc::Counting = event_bench_alloc::Counting;

fn allocations() -> u64 {
    event_bench_alloc::allocations()
}

/// Payload bytes chosen so that an encoded `Tick` is 64 bytes for typical sequence numbers.
const PAYLOAD: usize = 58;

/// The payload of every event. A `Bytes` over static memory: cloning it (prost's encoder
/// clones a `bytes` field before it copies it) takes no allocation. A payload built from a
/// `Vec` would allocate a shared header on that first clone, which the `prost only` run frees
/// at once (so the allocator recycles it) while the `typed` run, publishing prepared events,
/// keeps it until the run ends: about 400 instructions per event on the publishing thread that
/// are neither the framework's nor in the baseline.
static PAYLOAD_BYTES: [u8; PAYLOAD] = [0xab; PAYLOAD];

fn tick(seq: u64) -> Tick {
    Tick {
        seq,
        payload: Bytes::from_static(&PAYLOAD_BYTES),
    }
}

struct Report {
    name: &'static str,
    events: u64,
    elapsed: Duration,
    allocations: u64,
    latencies: Vec<u64>,
}

impl Report {
    fn print(&self, baseline_ns: Option<f64>) {
        let per_s = self.events as f64 / self.elapsed.as_secs_f64();
        let ns = self.elapsed.as_nanos() as f64 / self.events as f64;
        let (p50, p99) = percentiles(&self.latencies);
        let over = baseline_ns
            .map(|b| format!("{:+8.0} ns", ns - b))
            .unwrap_or_else(|| "        -".into());
        println!(
            "{:<18} {:>12.0} ev/s {:>8.0} ns/ev {} {:>10} {:>10} {:>8.2}",
            self.name,
            per_s,
            ns,
            over,
            p50.map(fmt_ns).unwrap_or_else(|| "-".into()),
            p99.map(fmt_ns).unwrap_or_else(|| "-".into()),
            self.allocations as f64 / self.events as f64,
        );
    }
}

fn fmt_ns(ns: u64) -> String {
    if ns >= 1_000_000 {
        format!("{:.1} ms", ns as f64 / 1e6)
    } else {
        format!("{:.1} µs", ns as f64 / 1e3)
    }
}

fn percentiles(samples: &[u64]) -> (Option<u64>, Option<u64>) {
    if samples.is_empty() {
        return (None, None);
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let at = |q: f64| sorted[((sorted.len() as f64 - 1.0) * q) as usize];
    (Some(at(0.50)), Some(at(0.99)))
}

/// Every `SAMPLE`th event is timed from publish to handler. Timing every event would put two
/// clock reads and two stores into a large array on the measured path of every run but
/// `prost only`, inflating the cost "over prost" by the harness's own work.
const SAMPLE: u64 = 16;

/// Busy work of the handlers of the raw channel, raw broker and typed runs: `HANDLER_ROUNDS`
/// dependent multiply-adds (0 by default: a no-op handler). The raw channel run shows what it
/// costs per event.
fn handler_work(seq: u64) {
    static ROUNDS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let rounds = *ROUNDS.get_or_init(|| {
        std::env::var("HANDLER_ROUNDS")
            .ok()
            .and_then(|rounds| rounds.parse().ok())
            .unwrap_or(0)
    });
    let mut x = seq;
    for _ in 0..rounds {
        x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
    }
    std::hint::black_box(x);
}

/// How many latency samples [`Stamps`] keeps at most: sample `i` goes to slot `i % MAX_SLOTS`.
/// A publisher runs at most a queue's capacity ahead of the handler, far less than the
/// `MAX_SLOTS * SAMPLE` events after which a slot is reused.
const MAX_SLOTS: usize = 1 << 16;

/// Publish-time stamps of the sampled events, read by handlers for latency.
struct Stamps {
    start: Instant,
    sent: Vec<AtomicU64>,
    latency: Vec<AtomicU64>,
    handled: AtomicUsize,
    done: Notify,
    target: usize,
}

impl Stamps {
    /// Leaked, so that handlers borrow it: an `Arc` cloned into every handler future would add
    /// two atomic operations per event that are the harness's, not the framework's.
    fn new(n: usize) -> &'static Self {
        Box::leak(Box::new(Stamps {
            start: Instant::now(),
            sent: (0..Self::slots(n)).map(|_| AtomicU64::new(0)).collect(),
            latency: (0..Self::slots(n)).map(|_| AtomicU64::new(0)).collect(),
            handled: AtomicUsize::new(0),
            done: Notify::new(),
            target: n,
        }))
    }
    fn slots(n: usize) -> usize {
        n.div_ceil(SAMPLE as usize).clamp(1, MAX_SLOTS)
    }
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
    fn slot(&self, seq: u64) -> usize {
        (seq / SAMPLE) as usize % self.sent.len()
    }
    fn sent(&self, seq: u64) {
        if seq.is_multiple_of(SAMPLE) {
            self.sent[self.slot(seq)].store(self.now(), Ordering::Relaxed);
        }
    }
    fn handled(&self, seq: u64) {
        handler_work(seq);
        if seq.is_multiple_of(SAMPLE) {
            let at = self.slot(seq);
            let sent = self.sent[at].load(Ordering::Relaxed);
            self.latency[at].store(self.now().saturating_sub(sent), Ordering::Relaxed);
        }
        if self.handled.fetch_add(1, Ordering::AcqRel) + 1 == self.target {
            self.done.notify_one();
        }
    }
    fn sampled_latencies(&self) -> Vec<u64> {
        let handled = self.handled.load(Ordering::Acquire) as u64;
        // the slots that hold a sample (all of them once the window wrapped)
        let filled = (handled.div_ceil(SAMPLE) as usize).min(self.latency.len());
        self.latency[..filled]
            .iter()
            .map(|l| l.load(Ordering::Relaxed))
            .collect()
    }
}

async fn raw_channel(n: u64, encoded: Bytes) -> Report {
    let (tx, mut rx) = mpsc::channel::<(u64, Bytes)>(1024);
    let stamps = Stamps::new(n as usize);
    let consumer = {
        tokio::spawn(async move {
            while let Some((seq, bytes)) = rx.recv().await {
                std::hint::black_box(bytes);
                stamps.handled(seq);
            }
        })
    };
    let before = allocations();
    let t = Instant::now();
    for seq in 0..n {
        stamps.sent(seq);
        tx.send((seq, encoded.clone()))
            .await
            .expect("consumer alive");
    }
    drop(tx);
    consumer.await.expect("consumer");
    Report {
        name: "raw channel",
        events: n,
        elapsed: t.elapsed(),
        allocations: allocations() - before,
        latencies: stamps.sampled_latencies(),
    }
}

fn prost_only(n: u64) -> Report {
    let before = allocations();
    let t = Instant::now();
    for seq in 0..n {
        let msg = tick(seq);
        let mut buf = BytesMut::with_capacity(msg.encoded_len());
        msg.encode(&mut buf).expect("room");
        let back = Tick::decode(buf.freeze()).expect("decodes");
        std::hint::black_box(back);
    }
    Report {
        name: "prost only",
        events: n,
        elapsed: t.elapsed(),
        allocations: allocations() - before,
        latencies: Vec::new(),
    }
}

async fn raw_broker(n: u64, encoded: Bytes) -> Report {
    let broker = MemoryBroker::new();
    let stamps = Stamps::new(n as usize);
    let sub = broker
        .subscribe(
            "bench.raw",
            SubscribeOptions::new(),
            handler_fn("bench-raw", move |d: Delivery| async move {
                let seq = u64::from_le_bytes(d.payload()[..8].try_into().expect("8 bytes"));
                stamps.handled(seq);
                Outcome::Ack
            }),
        )
        .await
        .expect("subscribe");
    let before = allocations();
    let t = Instant::now();
    for seq in 0..n {
        let mut payload = BytesMut::with_capacity(encoded.len());
        payload.extend_from_slice(&seq.to_le_bytes());
        payload.extend_from_slice(&encoded[8..]);
        stamps.sent(seq);
        broker
            .publish("bench.raw", Message::new(payload.freeze()))
            .await
            .expect("publish");
    }
    stamps.done.notified().await;
    let elapsed = t.elapsed();
    let allocations = allocations() - before;
    sub.unsubscribe().await;
    Report {
        name: "raw broker",
        events: n,
        elapsed,
        allocations,
        latencies: stamps.sampled_latencies(),
    }
}

/// The broker of the typed runs: `BATCH_WAIT_US` sets its
/// [`batch_wait`](event_core::memory::MemoryBrokerBuilder::batch_wait) (`0`: off),
/// `QUEUE_CAPACITY` its [`capacity`](event_core::memory::MemoryBrokerBuilder::capacity).
fn memory_broker() -> MemoryBroker {
    let setting = |name| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let mut builder = MemoryBroker::builder();
    if let Some(us) = setting("BATCH_WAIT_US") {
        builder = builder.batch_wait(Duration::from_micros(us));
    }
    if let Some(capacity) = setting("QUEUE_CAPACITY") {
        builder = builder.capacity(capacity as usize);
    }
    builder.build()
}

/// How a typed run's publisher encodes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    /// Protobuf binary, the default.
    Protobuf,
    /// proto3 JSON ([`ProtoJson`]); the subscriber picks the codec by content type.
    Json,
}

async fn typed(n: u64, name: &'static str) -> Report {
    let broker = memory_broker();
    let stamps = Stamps::new(n as usize);
    let handler = move |t: Tick| async move { stamps.handled(t.seq) };
    let running = Service::builder("bench")
        .broker(broker)
        .subscribe("bench.typed", handler)
        .build()
        .expect("build")
        .start()
        .await
        .expect("start");
    let publisher: Publisher<Tick> = running.publisher("bench.typed");
    let messages: Vec<Tick> = (0..n).map(tick).collect();
    let before = allocations();
    let t = Instant::now();
    for msg in &messages {
        stamps.sent(msg.seq);
        publisher.publish(msg).await.expect("publish");
    }
    stamps.done.notified().await;
    let elapsed = t.elapsed();
    let allocations = allocations() - before;
    running.shutdown().await;
    Report {
        name,
        events: n,
        elapsed,
        allocations,
        latencies: stamps.sampled_latencies(),
    }
}

/// A service with the no-op typed handler on `bench.typed`, and its publisher.
async fn typed_service(
    stamps: &'static Stamps,
    encoding: Encoding,
) -> (event_core::RunningService, Publisher<Tick>) {
    let broker = memory_broker();
    let handler = move |t: Tick| async move { stamps.handled(t.seq) };
    let running = Service::builder("bench")
        .broker(broker)
        .subscribe("bench.typed", handler)
        .build()
        .expect("build")
        .start()
        .await
        .expect("start");
    let publisher: Publisher<Tick> = running.publisher("bench.typed");
    let publisher = match encoding {
        Encoding::Protobuf => publisher,
        Encoding::Json => publisher
            .json()
            .expect("the bench descriptors are registered"),
    };
    (running, publisher)
}

/// `typed` with the proto3 JSON codec: every event built before the clock starts, then
/// published. (`typed` itself stays as it was, so that its numbers compare across versions.)
async fn typed_json(n: u64) -> Report {
    let stamps = Stamps::new(n as usize);
    let (running, publisher) = typed_service(stamps, Encoding::Json).await;
    let messages: Vec<Tick> = (0..n).map(tick).collect();
    let before = allocations();
    let t = Instant::now();
    for msg in &messages {
        stamps.sent(msg.seq);
        publisher.publish(msg).await.expect("publish");
    }
    stamps.done.notified().await;
    let elapsed = t.elapsed();
    let allocations = allocations() - before;
    running.shutdown().await;
    Report {
        name: "typed json",
        events: n,
        elapsed,
        allocations,
        latencies: stamps.sampled_latencies(),
    }
}

/// Each event built when it is published: what the process holds does not grow with `n`.
async fn typed_soak(n: u64) -> Report {
    let stamps = Stamps::new(n as usize);
    let (running, publisher) = typed_service(stamps, Encoding::Protobuf).await;
    let before = allocations();
    let t = Instant::now();
    for seq in 0..n {
        stamps.sent(seq);
        publisher.publish(&tick(seq)).await.expect("publish");
    }
    stamps.done.notified().await;
    let elapsed = t.elapsed();
    let allocations = allocations() - before;
    running.shutdown().await;
    Report {
        name: "typed soak",
        events: n,
        elapsed,
        allocations,
        latencies: stamps.sampled_latencies(),
    }
}

/// The canonical proto3 JSON of a `Tick`, as a plain serde struct: `seq` (uint64) as a
/// string, `payload` (bytes) as standard base64; the same bytes [`ProtoJson`] writes.
#[derive(serde::Serialize, serde::Deserialize)]
struct TickJson {
    seq: String,
    payload: String,
}

fn serde_json_only(n: u64) -> Report {
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::STANDARD;
    let before = allocations();
    let t = Instant::now();
    for seq in 0..n {
        let msg = tick(seq);
        let json = serde_json::to_vec(&TickJson {
            seq: msg.seq.to_string(),
            payload: engine.encode(&msg.payload),
        })
        .expect("serializes");
        let back: TickJson = serde_json::from_slice(&json).expect("deserializes");
        let back = Tick {
            seq: back.seq.parse().expect("a number"),
            payload: Bytes::from(engine.decode(back.payload).expect("base64")),
        };
        std::hint::black_box(back);
    }
    Report {
        name: "serde json",
        events: n,
        elapsed: t.elapsed(),
        allocations: allocations() - before,
        latencies: Vec::new(),
    }
}

fn proto_json_codec_only(n: u64) -> Report {
    let codec = ProtoJson::new();
    let before = allocations();
    let t = Instant::now();
    for seq in 0..n {
        let msg = tick(seq);
        let json = Codec::<Tick>::encode(&codec, &msg).expect("encodes");
        let back: Tick = codec.decode(&json).expect("decodes");
        std::hint::black_box(back);
    }
    Report {
        name: "proto-json codec",
        events: n,
        elapsed: t.elapsed(),
        allocations: allocations() - before,
        latencies: Vec::new(),
    }
}

/// A line of `/proc/self/status` in KiB (`VmHWM`: peak resident set size; `VmRSS`: now), Linux
/// only.
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn print_memory(when: &str) {
    if let (Some(peak), Some(now)) = (status_kib("VmHWM:"), status_kib("VmRSS:")) {
        println!(
            "  {when}: peak RSS (VmHWM) {:.1} MiB, RSS now {:.1} MiB",
            peak as f64 / 1024.0,
            now as f64 / 1024.0
        );
    }
}

async fn typed_ping_pong(n: u64) -> Report {
    let broker = memory_broker();
    let (tx, mut rx) = mpsc::channel::<u64>(1);
    let handler = move |t: Tick| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(t.seq).await;
        }
    };
    let running = Service::builder("bench")
        .broker(broker)
        .subscribe("bench.pingpong", handler)
        .build()
        .expect("build")
        .start()
        .await
        .expect("start");
    let publisher: Publisher<Tick> = running.publisher("bench.pingpong");
    let mut latencies = Vec::with_capacity(n as usize);
    let before = allocations();
    let t = Instant::now();
    for seq in 0..n {
        let sent = Instant::now();
        publisher.publish(&tick(seq)).await.expect("publish");
        let got = rx.recv().await.expect("handler alive");
        debug_assert_eq!(got, seq);
        latencies.push(sent.elapsed().as_nanos() as u64);
    }
    let elapsed = t.elapsed();
    let allocations = allocations() - before;
    running.shutdown().await;
    Report {
        name: "typed ping-pong",
        events: n,
        elapsed,
        allocations,
        latencies,
    }
}

fn main() {
    let n: u64 = std::env::var("EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    event_core::codec::json::register_file_descriptor_set(event_proto::FILE_DESCRIPTOR_SET)
        .expect("register the bench descriptors");
    let encoded = Bytes::from(tick(u64::MAX >> 40).encode_to_vec());
    println!(
        "memory broker, {n} events of {} bytes, {} cores, tokio 2 workers",
        encoded.len(),
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    println!(
        "{:<18} {:>17} {:>14} {:>11} {:>10} {:>10} {:>8}",
        "run", "throughput", "cost", "vs prost", "p50", "p99", "allocs/ev"
    );
    // RUNS=typed,raw-broker picks runs (default: all)
    let runs = std::env::var("RUNS").unwrap_or_default();
    let wanted = |name: &str| runs.is_empty() || runs.split(',').any(|r| r == name);
    if wanted("raw-channel") {
        runtime
            .block_on(raw_channel(n, encoded.clone()))
            .print(None);
    }
    let prost = prost_only(n);
    let prost_ns = prost.elapsed.as_nanos() as f64 / n as f64;
    if wanted("prost") {
        prost.print(None);
    }
    if wanted("raw-broker") {
        runtime.block_on(raw_broker(n, encoded.clone())).print(None);
    }
    let mut typed_ns = None;
    if wanted("typed") {
        let before = threads::snapshot();
        let report = runtime.block_on(typed(n, "typed"));
        report.print(Some(prost_ns));
        threads::print_since(&before, n);
        typed_ns = Some(report.elapsed.as_nanos() as f64 / n as f64);
    }
    if wanted("ping-pong") {
        runtime
            .block_on(typed_ping_pong((n / 20).max(1000)))
            .print(Some(prost_ns));
    }
    if wanted("json") {
        let serde = serde_json_only(n);
        serde.print(Some(prost_ns));
        let serde_ns = serde.elapsed.as_nanos() as f64 / n as f64;
        proto_json_codec_only(n).print(Some(prost_ns));
        let report = runtime.block_on(typed_json(n));
        report.print(Some(prost_ns));
        let ns = report.elapsed.as_nanos() as f64 / n as f64;
        println!(
            "  typed json: {:+.0} ns/event over serde json",
            ns - serde_ns
        );
        if let Some(typed_ns) = typed_ns {
            println!("  typed json: {:+.0} ns/event over typed", ns - typed_ns);
        }
    }
    #[cfg(feature = "opentelemetry")]
    for (run, name, dispatch) in [
        ("spans", "typed + spans", otel::registry_only()),
        (
            "otel",
            "typed + otel",
            otel::with_opentelemetry(otel::Setup::Defaults),
        ),
        (
            "otel-lean",
            "typed + otel lean",
            otel::with_opentelemetry(otel::Setup::Lean),
        ),
        (
            "otel-sampled",
            "typed + otel 1%",
            otel::with_opentelemetry(otel::Setup::Sampled),
        ),
        (
            "otel-head",
            "typed + otel head 1%",
            otel::with_opentelemetry(otel::Setup::HeadSampled),
        ),
    ] {
        if !wanted(run) {
            continue;
        }
        let head = run == "otel-head";
        if head {
            event_core::telemetry::set_root_sampling(0.01);
        }
        let report = otel::run_under(&dispatch, || typed(n, name));
        if head {
            event_core::telemetry::set_root_sampling(1.0);
        }
        report.print(Some(prost_ns));
        if let Some(typed_ns) = typed_ns {
            let ns = report.elapsed.as_nanos() as f64 / n as f64;
            println!("  {name}: {:+.0} ns/event over typed", ns - typed_ns);
        }
    }
    #[cfg(feature = "opentelemetry")]
    if wanted("otel-sdk") {
        let report = otel::sdk_only(n);
        report.print(None);
    }
    #[cfg(not(feature = "opentelemetry"))]
    let _ = typed_ns;
    // only when asked for, and last: the peak it reports is the process's
    if runs.split(',').any(|r| r == "soak") {
        print_memory("before soak");
        runtime.block_on(typed_soak(n)).print(Some(prost_ns));
        print_memory("after soak");
    }
    print_memory("end");
}

/// The tracing runs: each on a runtime of its own whose threads (and the blocking caller) use
/// the run's subscriber, so that runs do not share a global one.
#[cfg(feature = "opentelemetry")]
mod otel {
    use std::future::Future;

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
    use tracing::Dispatch;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Debug)]
    struct Discard;

    impl SpanExporter for Discard {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            std::hint::black_box(batch);
            Ok(())
        }
    }

    /// Spans are created and entered (the `publish`/`process` spans and their fields), but no
    /// layer records anything: the cost of the instrumentation itself.
    pub(super) fn registry_only() -> Dispatch {
        Dispatch::new(tracing_subscriber::registry().with(LevelFilter::INFO))
    }

    /// How the OpenTelemetry runs set up the SDK and the layer.
    #[derive(Clone, Copy)]
    pub(super) enum Setup {
        /// Every span sampled; the layer's defaults.
        Defaults,
        /// Every span sampled; without what `tracing-opentelemetry` adds by default to every
        /// span: busy/idle time (two clock reads per poll of an instrumented future), thread id
        /// and name, and source location attributes.
        Lean,
        /// `Lean`, without activating the OpenTelemetry context on each span entry, and 1 % of
        /// traces sampled (`ParentBased(TraceIdRatioBased(0.01))`), a usual production setting.
        Sampled,
        /// `Lean`, without context activation, 1 % of traces sampled by the framework before
        /// their spans are made (`event_core::telemetry::set_root_sampling(0.01)`), the layer
        /// leaving out `UNSAMPLED_TARGET`, the SDK's default sampler (parent-based).
        HeadSampled,
    }

    /// An OpenTelemetry layer whose spans go through a batch processor to an exporter that
    /// drops them, plus W3C inject/extract: what a service pays for tracing, without export.
    pub(super) fn with_opentelemetry(setup: Setup) -> Dispatch {
        let mut provider = SdkTracerProvider::builder().with_batch_exporter(Discard);
        if let Setup::Sampled = setup {
            provider = provider.with_sampler(Sampler::ParentBased(Box::new(
                Sampler::TraceIdRatioBased(0.01),
            )));
        }
        let provider = provider.build();
        let defaults = matches!(setup, Setup::Defaults);
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("bench"))
            .with_tracked_inactivity(defaults)
            .with_threads(defaults)
            .with_location(defaults)
            .with_context_activation(matches!(setup, Setup::Defaults | Setup::Lean));
        // the provider (and its batch thread) stays for the rest of the process
        std::mem::forget(provider);
        let registry = tracing_subscriber::registry().with(LevelFilter::INFO);
        if let Setup::HeadSampled = setup {
            let filter = Targets::new()
                .with_default(LevelFilter::INFO)
                .with_target(event_core::telemetry::UNSAMPLED_TARGET, LevelFilter::OFF);
            Dispatch::new(registry.with(layer.with_filter(filter)))
        } else {
            Dispatch::new(registry.with(layer))
        }
    }

    /// The OpenTelemetry SDK alone, as a floor for the runs above: per event, a producer
    /// span and a consumer child span with the names, kinds and attributes our spans carry
    /// (static values as static strings, the per-message id and correlation id as owned
    /// strings), through the same batch processor and exporter; no `tracing`, no broker, no
    /// header propagation, one thread.
    pub(super) fn sdk_only(n: u64) -> super::Report {
        use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer};
        use opentelemetry::{Context, KeyValue};

        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(Discard)
            .build();
        let tracer = provider.tracer("bench");
        let before = super::allocations();
        let t = std::time::Instant::now();
        for seq in 0..n {
            let id = format!("0190a5c2-7f5e-7000-8000-{seq:012x}");
            let common = |operation: &'static str| {
                vec![
                    KeyValue::new("messaging.system", "memory"),
                    KeyValue::new("messaging.operation.type", operation),
                    KeyValue::new("messaging.operation.name", operation),
                    KeyValue::new("messaging.destination.name", "bench.typed"),
                    KeyValue::new("messaging.message.id", id.clone()),
                    KeyValue::new("messaging.message.body.size", 65_i64),
                    KeyValue::new("cloudevents.event_type", "bench.v1.Tick"),
                    KeyValue::new("correlation_id", id.clone()),
                ]
            };
            let publish = tracer
                .span_builder("publish bench.typed")
                .with_kind(SpanKind::Producer)
                .with_attributes(common("send"))
                .start(&tracer);
            let cx = Context::current_with_span(publish);
            let mut attributes = common("process");
            attributes.extend([
                KeyValue::new("causation_id", id.clone()),
                KeyValue::new("event.handler", "bench::handler"),
                KeyValue::new("event.attempt", 1_i64),
                KeyValue::new("event.outcome", "acked"),
            ]);
            let mut process = tracer
                .span_builder("process bench.typed")
                .with_kind(SpanKind::Consumer)
                .with_attributes(attributes)
                .start_with_context(&tracer, &cx);
            opentelemetry::trace::Span::end(&mut process);
            cx.span().end();
        }
        let elapsed = t.elapsed();
        let allocations = super::allocations() - before;
        std::mem::forget(provider);
        super::Report {
            name: "otel sdk only",
            events: n,
            elapsed,
            allocations,
            latencies: Vec::new(),
        }
    }

    pub(super) fn run_under<F: Future>(dispatch: &Dispatch, run: impl FnOnce() -> F) -> F::Output {
        let for_workers = dispatch.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(move || {
                // the worker keeps this subscriber until it exits
                std::mem::forget(tracing::dispatcher::set_default(&for_workers));
            })
            .build()
            .expect("runtime");
        tracing::dispatcher::with_default(dispatch, || runtime.block_on(run()))
    }
}

/// CPU time per thread, from Linux's `/proc/self/task/*/schedstat` (nothing elsewhere): which
/// side of the hand-off is the slower one, the publishing thread or the runtime's workers.
mod threads {
    use std::collections::BTreeMap;

    /// Nanoseconds on a CPU per thread id, with the thread's name.
    pub(super) struct Snapshot(BTreeMap<String, (String, u64)>);

    pub(super) fn snapshot() -> Snapshot {
        let mut threads = BTreeMap::new();
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return Snapshot(threads);
        };
        for task in tasks.flatten() {
            let path = task.path();
            let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            let on_cpu = std::fs::read_to_string(path.join("schedstat"))
                .ok()
                .and_then(|stat| stat.split_whitespace().next()?.parse().ok());
            if let Some(on_cpu) = on_cpu {
                let id = task.file_name().to_string_lossy().into_owned();
                threads.insert(id, (name.trim().to_owned(), on_cpu));
            }
        }
        Snapshot(threads)
    }

    /// Prints the CPU time per event of the publishing thread (this one: it runs the
    /// publishing loop in `block_on`) and of the runtime's workers since `before`.
    pub(super) fn print_since(before: &Snapshot, events: u64) {
        let after = snapshot();
        // "/proc/thread-self" links to "<pid>/task/<tid>"
        let this_thread = std::fs::read_link("/proc/thread-self")
            .ok()
            .and_then(|link| Some(link.file_name()?.to_string_lossy().into_owned()));
        let (mut publishing, mut workers) = (0, 0);
        for (id, (name, on_cpu)) in &after.0 {
            // a thread id reused since `before` counts from zero, never below it
            let spent = on_cpu.saturating_sub(before.0.get(id).map_or(0, |(_, cpu)| *cpu));
            if this_thread.as_deref() == Some(id.as_str()) {
                publishing += spent;
            } else if name.starts_with("tokio-rt-worker") {
                workers += spent;
            }
        }
        if publishing + workers > 0 {
            println!(
                "  on CPU per event: publishing thread {} ns, worker threads {} ns",
                publishing / events,
                workers / events
            );
        }
    }
}
