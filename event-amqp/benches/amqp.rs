//! Our AMQP path beside raw lapin, in one run against the same RabbitMQ.
//!
//! ```text
//! cargo bench -p event-amqp --bench amqp                   # 20,000 events per run
//! EVENTS=50000 WINDOW=64 PREFETCH=64 cargo bench -p event-amqp --bench amqp
//! ```
//!
//! Runs, each for 64-byte and 1 KiB events (persistent messages, durable queue):
//! - `publish`: typed `Publisher<Tick>::publish` (encode, headers, confirm) with `WINDOW`
//!   publishes in flight, vs raw lapin `basic_publish` of the same bytes and an equivalent
//!   header table on one confirm channel with the same window;
//! - `consume`: a typed no-op `async fn(Tick)` handler through `Service` (decode, delivery
//!   loop, manual ack) vs a raw lapin consumer acking each delivery, same prefetch, draining
//!   a queue pre-filled with the same messages.
//!
//! Needs RabbitMQ at `127.0.0.1:5672` (or `EVENT_TEST_AMQP`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use event_amqp::AmqpBroker;
use event_core::broker::{Broker, SubscribeOptions};
use event_core::{Message, Publisher, Service};
use event_proto::bench::v1::Tick;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use prost::Message as _;
use tokio::sync::Notify;

const EXCHANGE: &str = "event.bench";

fn url() -> String {
    std::env::var("EVENT_TEST_AMQP")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
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

/// The AMQP header table our publisher writes for `message` (for the raw baseline).
fn raw_properties(topic: &str, message: &Message) -> BasicProperties {
    let mut table = FieldTable::default();
    for (name, value) in message.headers.iter() {
        let name = name.as_str();
        let wire = if let Some(rest) = name.strip_prefix("ce_") {
            format!("cloudEvents_{rest}")
        } else if name == "content-type" {
            "Content-Type".to_owned()
        } else {
            name.to_owned()
        };
        table.insert(
            ShortString::from(wire),
            AMQPValue::LongString(LongString::from(value.as_bytes())),
        );
    }
    let id = message.headers.message_id().unwrap_or_default();
    table.insert("Micro-ID".into(), AMQPValue::LongString(id.into()));
    table.insert("Micro-Topic".into(), AMQPValue::LongString(topic.into()));
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/protobuf".into())
        .with_message_id(id.into())
        .with_type("bench.v1.Tick".into())
        .with_app_id("bench".into())
        .with_timestamp(1_787_229_296)
        .with_headers(table)
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

    async fn delete(&self, name: &str) {
        self.channel
            .queue_delete(name.into(), QueueDeleteOptions::default())
            .await
            .expect("delete");
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
    n: usize,
    window: usize,
) -> Duration {
    let t = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    for _ in 0..n {
        if in_flight.len() >= window {
            in_flight.next().await;
        }
        let properties = properties.clone();
        in_flight.push(async move {
            let confirm = channel
                .basic_publish(
                    EXCHANGE.into(),
                    topic.into(),
                    BasicPublishOptions {
                        mandatory: true,
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
        });
    }
    while in_flight.next().await.is_some() {}
    t.elapsed()
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

async fn fill(raw: &Raw, topic: &str, payload: &[u8], properties: &BasicProperties, n: usize) {
    raw.channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .ok();
    raw_publish(&raw.channel, topic, payload, properties, n, 256).await;
}

/// Raw lapin consumer: prefetch `prefetch`, one ack per delivery.
async fn raw_consume(queue: &str, prefetch: u16, n: usize) -> Duration {
    let raw = Raw::connect().await;
    raw.channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .expect("qos");
    let t = Instant::now();
    let mut consumer = raw
        .channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    for _ in 0..n {
        let delivery = consumer.next().await.expect("open").expect("delivery");
        std::hint::black_box(&delivery.data);
        delivery.ack(BasicAckOptions::default()).await.expect("ack");
    }
    let elapsed = t.elapsed();
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
    let count = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let handler = {
        let (count, done) = (count.clone(), done.clone());
        move |t: Tick| {
            let (count, done) = (count.clone(), done.clone());
            async move {
                std::hint::black_box(t);
                if count.fetch_add(1, Ordering::AcqRel) + 1 == n {
                    done.notify_one();
                }
            }
        }
    };
    let t = Instant::now();
    let service = Service::builder("bench")
        .broker(broker)
        .subscribe_with(topic, SubscribeOptions::new().queue(group), handler)
        .build()
        .expect("build")
        .start()
        .await
        .expect("start");
    done.notified().await;
    let elapsed = t.elapsed();
    service.shutdown().await;
    elapsed
}

fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

fn line(what: &str, size: usize, n: usize, typed: Duration, raw: Duration) {
    let (typed, raw) = (rate(n, typed), rate(n, raw));
    println!(
        "{what:<8} {size:>5} B {raw:>12.0} msg/s {typed:>12.0} msg/s {:>8.1} %",
        typed / raw * 100.0
    );
}

async fn run(n: usize, window: usize, prefetch: u16) {
    let raw = Raw::connect().await;
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
        "RabbitMQ at {}, {n} persistent messages per run, publish window {window}, prefetch {prefetch}",
        broker.address()
    );
    println!(
        "{:<8} {:>7} {:>18} {:>18} {:>10}",
        "run", "size", "raw lapin", "typed", "typed/raw"
    );
    for size in [64usize, 1024] {
        let topic = format!("bench.publish.{size}");
        let sink = format!("event.bench.sink.{size}");
        raw.queue(&sink, &topic).await;
        let publisher = Publisher::<Tick>::new(Arc::new(broker.clone()), "bench", topic.as_str());
        let msg = tick(1 << 20, size);
        let encoded = publisher.encode(&msg, None);
        let properties = raw_properties(&topic, &encoded);
        // warm up both paths, then alternate raw and typed three times and keep the best of each
        raw_publish(
            &raw.channel,
            &topic,
            &encoded.payload,
            &properties,
            n / 10,
            window,
        )
        .await;
        typed_publish(&publisher, &msg, n / 10, window).await;
        let (mut best_raw, mut best_typed) = (Duration::MAX, Duration::MAX);
        for _ in 0..3 {
            best_raw = best_raw.min(
                raw_publish(
                    &raw.channel,
                    &topic,
                    &encoded.payload,
                    &properties,
                    n,
                    window,
                )
                .await,
            );
            best_typed = best_typed.min(typed_publish(&publisher, &msg, n, window).await);
        }
        raw.delete(&sink).await;
        line("publish", size, n, best_typed, best_raw);
    }
    for size in [64usize, 1024] {
        let topic = format!("bench.consume.{size}");
        let raw_queue = format!("event.bench.raw.{size}");
        let group = "typed";
        let typed_queue = broker.group_queue_name(&topic, group);
        let msg = tick(1 << 20, size);
        let publisher = Publisher::<Tick>::new(Arc::new(broker.clone()), "bench", topic.as_str());
        let encoded = publisher.encode(&msg, None);
        let properties = raw_properties(&topic, &encoded);
        let (mut best_raw, mut best_typed) = (Duration::MAX, Duration::MAX);
        for round in 0..2 {
            raw.queue(&raw_queue, &topic).await;
            raw.queue(&typed_queue, &topic).await;
            // both queues receive every message; the order alternates between rounds
            fill(&raw, &topic, &encoded.payload, &properties, n).await;
            if round == 0 {
                best_raw = best_raw.min(raw_consume(&raw_queue, prefetch, n).await);
                best_typed = best_typed.min(typed_consume(&topic, group, prefetch, n).await);
            } else {
                best_typed = best_typed.min(typed_consume(&topic, group, prefetch, n).await);
                best_raw = best_raw.min(raw_consume(&raw_queue, prefetch, n).await);
            }
        }
        raw.delete(&raw_queue).await;
        raw.delete(&typed_queue).await;
        let _ = raw
            .channel
            .queue_delete(format!("{topic}.dlq").into(), QueueDeleteOptions::default())
            .await;
        line("consume", size, n, best_typed, best_raw);
    }
    broker.disconnect().await.expect("disconnect");
    raw.close().await;
}

fn main() {
    let n = env("EVENTS", 20_000);
    let window = env("WINDOW", 64);
    let prefetch = u16::try_from(env("PREFETCH", 64)).unwrap_or(u16::MAX);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(n, window, prefetch));
}
