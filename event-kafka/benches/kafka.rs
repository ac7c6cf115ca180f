//! Typed `Publisher<T>` and typed subscribers on Kafka, beside raw rdkafka in the same run,
//! against the same broker and configuration.
//!
//! ```text
//! cargo bench -p event-kafka --bench kafka                   # 20,000 records, 5 rounds
//! EVENTS=50000 ROUNDS=7 EVENT_TEST_KAFKA=127.0.0.1:9092 cargo bench -p event-kafka --bench kafka
//! ONLY=consume cargo bench -p event-kafka --bench kafka      # one direction (or ONLY=publish)
//! ONLY=typed-consume cargo bench -p event-kafka --bench kafka   # the typed consume alone, to profile
//! WORKERS=1 cargo bench -p event-kafka --bench kafka         # tokio worker threads (2)
//! ```
//!
//! Runs, for 64 B and 1 KiB events (`bench.v1.Tick`), each on its own fresh topic:
//! - `publish raw`: the best loop a user of rdkafka writes for the same events: per event it
//!   encodes the `Tick` and sends it with `FutureProducer::send_result` and the header set a
//!   typed publish writes (each event's own id and time, made before the clock starts, as the
//!   application's code makes them), up to `WINDOW` delivery reports outstanding; `publish
//!   raw prebuilt` (the row `vs pre`, for reference) sends payloads encoded before the clock
//!   starts, with one fixed header set, which no producer of new events can do;
//! - `publish typed`: `Publisher<Tick>::publish` (id, time, headers, encode, produce, delivery
//!   report), `WINDOW` publishes in flight in a `FuturesUnordered` (each enqueued by the call);
//! - `consume raw`: the faster of two raw loops, each in a new group reading the topic from
//!   the start, decoding each record's `Tick` for a no-op "handler", then storing its offset
//!   and committing every second (what a careful raw consumer does): a `StreamConsumer`
//!   awaited on the runtime, and a `BaseConsumer` polled on a thread of its own; a third loop, the `BaseConsumer` one reading
//!   each record's headers too, is printed beside them but not taken as the raw side;
//! - `consume typed`: a `Service` with a no-op `async fn(Tick)` handler in a new group, from
//!   the start (decode, delivery loop, offset store after the handler).
//!
//! Publish rows also print the CPU time per record (every thread of the process, first publish
//! to last delivery report) of each loop.
//!
//! Raw and typed alternate `ROUNDS` times (raw first in odd rounds, typed first in even ones);
//! each row prints the median rate of each side and the median of the rounds' typed/raw
//! ratios. Consume rates are measured from the first record to the last, so the group join is
//! not counted. Each consume size prints two rows: `consume` against the faster raw loop
//! (which reads no headers), and `vs hdr` against the raw loop that reads them, the least a
//! consumer that learns a record's type or trace context from its headers must do. A line
//! above them gives the CPU time per record (every thread of the process, librdkafka's
//! included, from the first record to the last, read from `/proc/self/task/*/schedstat`) of
//! the raw loops and of the typed run, and of the typed run's poller thread alone: on a
//! machine whose cores the broker and others share, rates swing with what they run, the
//! CPU a record costs less.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use event_core::broker::{Broker, StartFrom, SubscribeOptions};
use event_core::{Publisher, Service};
use event_kafka::{KafkaBroker, TopicSpec};
use event_proto::bench::v1::Tick;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::Notify;

const WINDOW: usize = 1000;
const LINGER_MS: &str = "5";

fn bootstrap() -> String {
    std::env::var("EVENT_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

fn tick(seq: u64, size: usize) -> Tick {
    // a Tick of `size` bytes encoded: seq (up to 4 bytes with tag) + payload tag and length
    Tick {
        seq,
        payload: vec![0xab; size.saturating_sub(8)].into(),
    }
}

fn unique(prefix: &str) -> String {
    format!("bench.{prefix}.{:016x}", fastrand_u64())
}

fn fastrand_u64() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    nanos ^ (std::process::id() as u64).rotate_left(32)
}

async fn broker() -> KafkaBroker {
    let broker = KafkaBroker::builder(bootstrap())
        .client_id("event-bench")
        .linger(Duration::from_millis(5))
        .build()
        .expect("config");
    broker.connect().await.unwrap_or_else(|e| {
        panic!(
            "no Kafka broker at {} (scripts/brokers.sh start runs one): {e}",
            bootstrap()
        )
    });
    broker
}

/// Every topic a run created, deleted at the end: a bench run writes gigabytes.
static CREATED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

async fn topic(broker: &KafkaBroker, prefix: &str) -> String {
    let name = unique(prefix);
    CREATED
        .lock()
        .unwrap()
        .extend([name.clone(), format!("{name}.dlq")]);
    broker
        // and its dead-letter topic, which a subscription needs
        .ensure_topics(&[
            TopicSpec::new(&name).partitions(3),
            TopicSpec::new(format!("{name}.dlq")),
        ])
        .await
        .expect("create topics");
    name
}

/// Deletes the topics the run created.
async fn delete_created() {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let topics = std::mem::take(&mut *CREATED.lock().unwrap());
    if topics.is_empty() {
        return;
    }
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("admin client");
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    match admin.delete_topics(&names, &AdminOptions::new()).await {
        Ok(results) => {
            let failed: Vec<_> = results.into_iter().filter_map(Result::err).collect();
            if !failed.is_empty() {
                eprintln!("could not delete every bench topic: {failed:?}");
            }
        }
        Err(e) => eprintln!("could not delete the bench topics: {e}"),
    }
}

fn raw_producer() -> FutureProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("client.id", "raw-bench")
        .set("linger.ms", LINGER_MS)
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("raw producer")
}

/// The headers a typed publish sends, with fixed values (the order on the wire differs: it is
/// not part of the contract).
fn typed_like_headers() -> Vec<(&'static str, Bytes)> {
    vec![
        ("ce_specversion", Bytes::from_static(b"1.0")),
        ("ce_type", Bytes::from_static(b"bench.v1.Tick")),
        ("ce_source", Bytes::from_static(b"bench")),
        (
            "ce_id",
            Bytes::from_static(b"01a2006b-4b28-76c4-ac5d-889287192b16"),
        ),
        ("ce_time", Bytes::from_static(b"2026-11-21T23:00:00.000Z")),
        ("content-type", Bytes::from_static(b"application/protobuf")),
    ]
}

/// The raw publish loop; `prebuilt` sends payloads encoded before the clock starts and one
/// fixed header set, else each `Tick` is encoded as it is sent, with its own id and time.
async fn publish_raw(n: u64, size: usize, prebuilt: bool) -> Measured {
    let admin = broker().await;
    let topic = topic(&admin, "pubraw").await;
    let producer = raw_producer();
    let ticks: Vec<Tick> = (0..n).map(|i| tick(i, size)).collect();
    let payloads: Vec<Bytes> = if prebuilt {
        ticks.iter().map(|t| t.encode_to_vec().into()).collect()
    } else {
        Vec::new()
    };
    let headers = typed_like_headers();
    // each event's id and time, as the application's code makes them
    let (ids, times): (Vec<String>, Vec<String>) = (0..n)
        .map(|i| {
            (
                format!("01a2006b-4b28-76c4-ac5d-{i:012x}"),
                format!("2026-11-21T23:00:{:02}.{:03}Z", i / 1000 % 60, i % 1000),
            )
        })
        .unzip();
    // one record first, as the typed side looks the topic up before it times: the producer
    // then knows the topic's partitions and leaders
    producer
        .send(
            FutureRecord::<(), _>::to(&topic).payload(&ticks[0].encode_to_vec()),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("warm-up record");
    let started = Started::now();
    let mut in_flight = FuturesUnordered::new();
    for (i, tick) in ticks.iter().enumerate() {
        let encoded;
        let payload: &[u8] = if prebuilt {
            &payloads[i]
        } else {
            encoded = tick.encode_to_vec();
            &encoded
        };
        let h = headers
            .iter()
            .fold(OwnedHeaders::new_with_capacity(6), |h, (k, v)| {
                let value: &[u8] = match *k {
                    "ce_id" if !prebuilt => ids[i].as_bytes(),
                    "ce_time" if !prebuilt => times[i].as_bytes(),
                    _ => v,
                };
                h.insert(Header {
                    key: k,
                    value: Some(value),
                })
            });
        let record = FutureRecord::<(), _>::to(&topic)
            .payload(payload)
            .headers(h);
        let delivery = producer
            .send_result(record)
            .map_err(|(e, _)| e)
            .expect("enqueue");
        in_flight.push(async move { delivery.await.expect("report").map_err(|(e, _)| e) });
        if in_flight.len() >= WINDOW {
            in_flight
                .next()
                .await
                .expect("in flight")
                .expect("delivery");
        }
    }
    while let Some(r) = in_flight.next().await {
        r.expect("delivery");
    }
    started.finish(n)
}

async fn publish_typed(n: u64, size: usize) -> Measured {
    let broker = broker().await;
    let topic = topic(&broker, "pubtyped").await;
    let publisher: Publisher<Tick> =
        Publisher::new(Arc::new(broker.clone()), "bench", topic.as_str());
    let messages: Vec<Tick> = (0..n).map(|i| tick(i, size)).collect();
    publisher
        .publish(&messages[0])
        .await
        .expect("warm-up event");
    let started = Started::now();
    let mut in_flight = FuturesUnordered::new();
    for msg in &messages {
        // enqueued by the call itself, as `send_result` does
        in_flight.push(publisher.publish(msg));
        if in_flight.len() >= WINDOW {
            in_flight.next().await.expect("in flight").expect("publish");
        }
    }
    while let Some(r) = in_flight.next().await {
        r.expect("publish");
    }
    started.finish(n)
}

/// A topic holding `n` typed events.
async fn filled_topic(n: u64, size: usize) -> String {
    let broker = broker().await;
    let topic = topic(&broker, "consume").await;
    let publisher: Publisher<Tick> =
        Publisher::new(Arc::new(broker.clone()), "bench", topic.as_str());
    let messages: Vec<Tick> = (0..n).map(|i| tick(i, size)).collect();
    let mut in_flight = FuturesUnordered::new();
    for msg in &messages {
        if in_flight.len() >= WINDOW {
            in_flight.next().await.expect("in flight");
        }
        let publisher = publisher.clone();
        in_flight.push(async move { publisher.publish(msg).await.expect("fill") });
    }
    while in_flight.next().await.is_some() {}
    broker.disconnect().await.expect("flush");
    topic
}

/// The raw loops' consumer: the librdkafka settings a typed subscription's consumer has
/// (`consumer_config` in `src/config.rs`), so the comparison is of the same configuration.
fn raw_consumer_config() -> rdkafka::ClientConfig {
    let mut config = rdkafka::ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap())
        .set("group.id", unique("rawgroup"))
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", "1000")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "100")
        // without it, a loop slower than the fetches stops fetching for librdkafka's default
        // second each time its local queue reaches 64 MiB (at 200,000 records of 64 B, the
        // loop that reads headers ran at 170 k records/s instead of 0.9 M)
        .set("fetch.queue.backoff.ms", "20")
        .set("partition.assignment.strategy", "range,roundrobin")
        .set("statistics.interval.ms", "5000");
    config
}

/// A `StreamConsumer` awaited on the runtime.
async fn consume_raw_stream(topic: &str, n: u64) -> Measured {
    let consumer: StreamConsumer = raw_consumer_config().create().expect("raw consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut first = None;
    for _ in 0..n {
        let record = consumer.recv().await.expect("record");
        first.get_or_insert_with(Started::now);
        // the no-op handler of the decoded event, then the offset store a careful consumer
        // does after it
        std::hint::black_box(Tick::decode(record.payload().unwrap_or_default()).expect("a Tick"));
        consumer.store_offset_from_message(&record).expect("store");
    }
    first.expect("records").finish(n)
}

/// A `BaseConsumer` polled on a thread of its own; with `headers`, the loop also reads each
/// record's headers (which makes librdkafka parse them), as a consumer that looks at a
/// record's type or trace context does.
async fn consume_raw_base(topic: &str, n: u64, headers: bool) -> Measured {
    let consumer: BaseConsumer = raw_consumer_config().create().expect("raw consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    tokio::task::spawn_blocking(move || {
        let mut first = None;
        let mut seen = 0;
        while seen < n {
            let Some(record) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let record = record.expect("record");
            first.get_or_insert_with(Started::now);
            std::hint::black_box(
                Tick::decode(record.payload().unwrap_or_default()).expect("a Tick"),
            );
            if headers && let Some(headers) = record.headers() {
                for header in headers.iter() {
                    std::hint::black_box((header.key, header.value));
                }
            }
            consumer.store_offset_from_message(&record).expect("store");
            seen += 1;
        }
        first.expect("records").finish(n)
    })
    .await
    .expect("raw consumer thread")
}

async fn consume_typed(topic: &str, n: u64) -> Measured {
    let broker = broker().await;
    let handled = Arc::new(AtomicU64::new(0));
    let first = Arc::new(std::sync::OnceLock::<Started>::new());
    let measured = Arc::new(std::sync::OnceLock::<Measured>::new());
    let done = Arc::new(Notify::new());
    let handler = {
        let (handled, first, measured, done) = (
            handled.clone(),
            first.clone(),
            measured.clone(),
            done.clone(),
        );
        move |t: Tick| {
            let (handled, first, measured, done) = (
                handled.clone(),
                first.clone(),
                measured.clone(),
                done.clone(),
            );
            async move {
                let started = first.get_or_init(Started::now);
                std::hint::black_box(t);
                if handled.fetch_add(1, Ordering::Relaxed) + 1 == n {
                    let _ = measured.set(started.finish(n));
                    done.notify_one();
                }
            }
        }
    };
    let running = Service::builder("bench")
        .broker(broker.clone())
        .subscribe_with(
            topic,
            SubscribeOptions::new()
                .queue(unique("typedgroup"))
                .start_from(StartFrom::Earliest),
            handler,
        )
        .build()
        .expect("build")
        .start()
        .await
        .expect("start");
    done.notified().await;
    running.shutdown().await;
    *measured.get().expect("records")
}

/// The CPU time the live threads of this process have used: in all, and in the threads
/// named `event-kafka …` (a typed subscription's poller), by
/// `event_bench_alloc::thread_cpu_times`; `None` where that is not readable. A run's consumer threads all live from its first record to its last, so the
/// difference of two readings is what they spent in between.
fn cpu_time() -> Option<[Duration; 2]> {
    let threads = event_bench_alloc::thread_cpu_times()?;
    let total = threads.iter().map(|(_, cpu)| *cpu).sum();
    let poller = threads
        .iter()
        .filter(|(name, _)| name.starts_with("event-kafka"))
        .map(|(_, cpu)| *cpu)
        .sum();
    Some([total, poller])
}

/// The moment a consumer received its first record, and the process CPU time then.
struct Started {
    at: Instant,
    cpu: Option<[Duration; 2]>,
}

/// One consume run: its rate, from the first record to the last, and the process CPU time
/// (every thread, librdkafka's included) per record over the same span, in µs. A 2-core
/// machine shared with the broker and others makes rates swing; the CPU a record costs
/// swings less.
#[derive(Clone, Copy)]
struct Measured {
    rate: f64,
    /// All threads, and the `event-kafka` poller thread alone.
    cpu: Option<[f64; 2]>,
}

impl Started {
    fn now() -> Self {
        // the CPU reading first: reading /proc is not part of the timed span
        let cpu = cpu_time();
        Started {
            at: Instant::now(),
            cpu,
        }
    }

    /// The run of `n` records that started here and ended now.
    fn finish(&self, n: u64) -> Measured {
        let elapsed = self.at.elapsed();
        // none when a thread ended in between (its time left the sum): a lower total is no
        // measurement
        let cpu = self
            .cpu
            .zip(cpu_time())
            .filter(|(before, after)| (0..2).all(|i| after[i] >= before[i]))
            .map(|(before, after)| {
                [0, 1].map(|i| (after[i] - before[i]).as_secs_f64() * 1e6 / n as f64)
            });
        Measured {
            rate: n as f64 / elapsed.as_secs_f64(),
            cpu,
        }
    }
}

/// The median; NaN for no values (a loop none of whose runs had a CPU reading).
fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// Prints one row: medians of each side and of the rounds' ratios, then every round.
fn row(what: &str, size: usize, raw: &[f64], typed: &[f64]) {
    let ratios: Vec<f64> = raw.iter().zip(typed).map(|(r, t)| t / r * 100.0).collect();
    let rounds: Vec<String> = ratios.iter().map(|r| format!("{r:.1}")).collect();
    println!(
        "{what:<8} {size:>5} B {:>12.0} {:>12.0} {:>9.1}%   rounds: {}",
        median(raw.to_vec()),
        median(typed.to_vec()),
        median(ratios),
        rounds.join(" / ")
    );
}

fn main() {
    let n: u64 = std::env::var("EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    // `ONLY=publish` or `ONLY=consume` runs one direction
    let only = std::env::var("ONLY").ok();
    let workers: usize = std::env::var("WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        println!(
            "{n} records per run, {rounds} rounds, broker {}, linger {LINGER_MS} ms, acks=all, window {WINDOW}, {workers} tokio workers",
            bootstrap()
        );
        println!(
            "{:<8} {:>7} {:>12} {:>12} {:>10}",
            "run", "size", "raw rec/s", "typed rec/s", "typed/raw"
        );
        for size in [64usize, 1024] {
            if only.as_deref().is_some_and(|o| o != "publish") {
                break;
            }
            let (mut raw, mut prebuilt, mut typed) = (Vec::new(), Vec::new(), Vec::new());
            for round in 0..rounds {
                if round % 2 == 0 {
                    raw.push(publish_raw(n, size, false).await);
                    prebuilt.push(publish_raw(n, size, true).await);
                    typed.push(publish_typed(n, size).await);
                } else {
                    typed.push(publish_typed(n, size).await);
                    prebuilt.push(publish_raw(n, size, true).await);
                    raw.push(publish_raw(n, size, false).await);
                }
            }
            let cpu = |runs: &[Measured]| {
                median(runs.iter().filter_map(|m| m.cpu).map(|c| c[0]).collect())
            };
            if typed.iter().any(|m| m.cpu.is_some()) {
                println!(
                    "  CPU per record, first publish to last report, medians: raw {:.2} µs, \
                     raw prebuilt {:.2} µs, typed {:.2} µs",
                    cpu(&raw),
                    cpu(&prebuilt),
                    cpu(&typed)
                );
            }
            let rates = |runs: &[Measured]| runs.iter().map(|m| m.rate).collect::<Vec<_>>();
            row("publish", size, &rates(&raw), &rates(&typed));
            row("  vs pre", size, &rates(&prebuilt), &rates(&typed));
        }
        for size in [64usize, 1024] {
            if only.as_deref().is_some_and(|o| o != "consume" && o != "typed-consume") {
                break;
            }
            if only.as_deref() == Some("typed-consume") {
                // for a profile of the typed path alone
                let topic = filled_topic(n, size).await;
                let mut runs = Vec::with_capacity(rounds);
                for _ in 0..rounds {
                    runs.push(consume_typed(&topic, n).await);
                }
                println!(
                    "typed consume {size} B: median {:.0} rec/s, CPU per record {:.2} µs (poller {:.2} µs)",
                    median(runs.iter().map(|m| m.rate).collect()),
                    median(runs.iter().filter_map(|m| m.cpu).map(|c| c[0]).collect()),
                    median(runs.iter().filter_map(|m| m.cpu).map(|c| c[1]).collect())
                );
                continue;
            }
            let topic = filled_topic(n, size).await;
            let (mut raw, mut typed) = (Vec::new(), Vec::new());
            let (mut stream, mut base, mut with_headers) = (Vec::new(), Vec::new(), Vec::new());
            let (mut base_cpu, mut headers_cpu) = (Vec::new(), Vec::new());
            let (mut typed_cpu, mut poller_cpu) = (Vec::new(), Vec::new());
            for round in 0..rounds {
                let typed_run = || async {
                    let run = consume_typed(&topic, n).await;
                    (run.rate, run.cpu)
                };
                if round % 2 == 1 {
                    let (rate, cpu) = typed_run().await;
                    typed.push(rate);
                    typed_cpu.extend(cpu.map(|c| c[0]));
                    poller_cpu.extend(cpu.map(|c| c[1]));
                }
                let s = consume_raw_stream(&topic, n).await.rate;
                let b = consume_raw_base(&topic, n, false).await;
                base_cpu.extend(b.cpu.map(|c| c[0]));
                let h = consume_raw_base(&topic, n, true).await;
                with_headers.push(h.rate);
                headers_cpu.extend(h.cpu.map(|c| c[0]));
                stream.push(s);
                base.push(b.rate);
                raw.push(s.max(b.rate));
                if round % 2 == 0 {
                    let (rate, cpu) = typed_run().await;
                    typed.push(rate);
                    typed_cpu.extend(cpu.map(|c| c[0]));
                    poller_cpu.extend(cpu.map(|c| c[1]));
                }
            }
            println!(
                "  raw consume {size} B medians: StreamConsumer {:.0}, BaseConsumer thread {:.0}, \
                 BaseConsumer thread reading headers {:.0} rec/s",
                median(stream),
                median(base),
                median(with_headers.clone())
            );
            if !typed_cpu.is_empty() {
                println!(
                    "  CPU per record, first record to last, medians: raw BaseConsumer thread {:.2} µs, \
                     reading headers {:.2} µs, typed {:.2} µs (of which its poller thread {:.2} µs)",
                    median(base_cpu),
                    median(headers_cpu),
                    median(typed_cpu),
                    median(poller_cpu)
                );
            }
            row("consume", size, &raw, &typed);
            row("  vs hdr", size, &with_headers, &typed);
        }
        delete_created().await;
    });
}
