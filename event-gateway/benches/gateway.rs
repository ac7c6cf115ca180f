//! The gateway under `redis-benchmark`, beside the reference in the same run:
//!
//! ```text
//! scripts/brokers.sh start            # redis-server on 6379, Kafka on 9092
//! cargo bench -p event-gateway --bench gateway
//! ROUNDS=7 REQUESTS=200000 ONLY=publish cargo bench -p event-gateway --bench gateway   # or ONLY=xadd
//! ```
//!
//! - `PUBLISH`: `redis-benchmark -c 50 -n REQUESTS [-P 16] PUBLISH bench <64 B>` against the
//!   gateway on the in-memory broker and against `redis-server` itself (127.0.0.1:6379), one
//!   after the other in each round (which goes first alternates); no subscriber on either.
//! - `XADD` to Kafka: `redis-benchmark -c 50 -n REQUESTS -P 16 XADD <topic> * payload <64 B>`
//!   through the gateway on Kafka (linger 5 ms, acks=all), against the raw produce loop of the
//!   Kafka bench in the same round (`FutureProducer::send_result` of the same 64 B with the
//!   three headers the gateway writes, 1,000 delivery reports outstanding).
//!
//! Each row prints the median rate of both sides and the median of the rounds' ratios.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_core::broker::Broker;
use event_core::memory::MemoryBroker;
use event_gateway::{Gateway, GatewayConfig};
use event_kafka::{KafkaBroker, TopicSpec};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

const PAYLOAD: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn kafka() -> String {
    std::env::var("EVENT_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// Serves `broker` on a free port, on a 2-worker runtime of its own (as the binary runs).
fn serve(broker: Arc<dyn Broker>) -> (SocketAddr, tokio::runtime::Runtime) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("a port");
    let addr = listener.local_addr().expect("bound");
    runtime.spawn(async move {
        Gateway::new(broker, GatewayConfig::new())
            .serve(listener, std::future::pending())
            .await
            .expect("serves");
    });
    (addr, runtime)
}

/// Runs `redis-benchmark`; its requests per second.
fn redis_benchmark(addr: &str, requests: usize, pipeline: usize, command: &[&str]) -> f64 {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let output = Command::new("redis-benchmark")
        .args([
            "-h",
            host,
            "-p",
            port,
            "-c",
            "50",
            "-n",
            &requests.to_string(),
        ])
        .args(["-P", &pipeline.to_string(), "-q"])
        .args(command)
        .output()
        .expect("redis-benchmark (Debian's redis-tools; scripts/brokers.sh installs it)");
    let text = String::from_utf8_lossy(&output.stdout);
    // the last "<command>: <n> requests per second, ..." of its progress lines
    let rate = text
        .rsplit("requests per second")
        .nth(1)
        .and_then(|before| before.rsplit(": ").next())
        .and_then(|n| n.trim().parse().ok());
    rate.unwrap_or_else(|| {
        panic!(
            "redis-benchmark printed no rate: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn row(name: &str, ours: &[f64], theirs: &[f64], their_name: &str) {
    let ratios: Vec<f64> = ours.iter().zip(theirs).map(|(o, t)| o / t).collect();
    println!(
        "{name:<34} gateway {:>9.0}/s  {their_name} {:>9.0}/s  gateway/{their_name} {:>6.1} %  rounds {}",
        median(ours.to_vec()),
        median(theirs.to_vec()),
        100.0 * median(ratios.clone()),
        ratios
            .iter()
            .map(|r| format!("{:.1}", 100.0 * r))
            .collect::<Vec<_>>()
            .join(" / ")
    );
}

fn publish_rows(rounds: usize, requests: usize) {
    let (addr, _runtime) = serve(Arc::new(MemoryBroker::new()));
    let gateway = addr.to_string();
    let redis = std::env::var("EVENT_TEST_REDIS").unwrap_or_else(|_| "127.0.0.1:6379".to_owned());
    for pipeline in [1, 16] {
        let command = ["PUBLISH", "bench", PAYLOAD];
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            if round % 2 == 0 {
                ours.push(redis_benchmark(&gateway, requests, pipeline, &command));
                theirs.push(redis_benchmark(&redis, requests, pipeline, &command));
            } else {
                theirs.push(redis_benchmark(&redis, requests, pipeline, &command));
                ours.push(redis_benchmark(&gateway, requests, pipeline, &command));
            }
        }
        row(
            &format!("PUBLISH 64 B, pipeline {pipeline}"),
            &ours,
            &theirs,
            "redis-server",
        );
    }
}

async fn raw_produce(topic: &str, n: usize) -> f64 {
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .set("linger.ms", "5")
        .set("acks", "all")
        .create()
        .expect("a producer");
    let warm = FutureRecord::<(), _>::to(topic).payload(PAYLOAD);
    producer
        .send(warm, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("warm-up");
    let id = uuid::Uuid::now_v7().to_string();
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    for _ in 0..n {
        let headers = OwnedHeaders::new_with_capacity(3)
            .insert(Header {
                key: "ce_id",
                value: Some(id.as_bytes()),
            })
            .insert(Header {
                key: "ce_time",
                value: Some("2026-12-01T00:00:00.000Z"),
            })
            .insert(Header {
                key: "ce_source",
                value: Some("event-gateway"),
            });
        let record = FutureRecord::<(), _>::to(topic)
            .payload(PAYLOAD)
            .headers(headers);
        let delivery = producer
            .send_result(record)
            .map_err(|(e, _)| e)
            .expect("enqueued");
        in_flight.push(delivery);
        if in_flight.len() >= 1000 {
            in_flight
                .next()
                .await
                .expect("one")
                .expect("report")
                .expect("delivered");
        }
    }
    while let Some(report) = in_flight.next().await {
        report.expect("report").expect("delivered");
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn xadd_rows(rounds: usize, requests: usize) {
    let control = tokio::runtime::Runtime::new().expect("a runtime");
    let topic = format!(
        "bench.gateway.{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let broker = control.block_on(async {
        let broker = KafkaBroker::builder(kafka())
            .client_id("gateway-bench")
            .linger(Duration::from_millis(5))
            .build()
            .expect("a configuration");
        broker
            .connect()
            .await
            .unwrap_or_else(|e| panic!("no Kafka at {} (scripts/brokers.sh start): {e}", kafka()));
        broker
            .ensure_topics(&[TopicSpec::new(&topic).partitions(3)])
            .await
            .expect("the bench topic");
        broker
    });
    let (addr, _runtime) = serve(Arc::new(broker));
    let gateway = addr.to_string();
    let command = ["XADD", topic.as_str(), "*", "payload", PAYLOAD];
    // one first, so that neither side times the metadata look-up
    redis_benchmark(&gateway, 100, 1, &command);
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if round % 2 == 0 {
            ours.push(redis_benchmark(&gateway, requests, 16, &command));
            theirs.push(control.block_on(raw_produce(&topic, requests)));
        } else {
            theirs.push(control.block_on(raw_produce(&topic, requests)));
            ours.push(redis_benchmark(&gateway, requests, 16, &command));
        }
    }
    row(
        "XADD 64 B to Kafka, pipeline 16",
        &ours,
        &theirs,
        "raw-produce",
    );
    control.block_on(async {
        use rdkafka::admin::{AdminClient, AdminOptions};
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            rdkafka::ClientConfig::new()
                .set("bootstrap.servers", kafka())
                .create()
                .expect("an admin client");
        if let Err(e) = admin
            .delete_topics(&[topic.as_str()], &AdminOptions::new())
            .await
        {
            eprintln!("could not delete {topic}: {e}");
        }
    });
}

fn main() {
    let rounds = env_or("ROUNDS", 5);
    let requests = env_or("REQUESTS", 100_000);
    let only = std::env::var("ONLY").unwrap_or_default();
    println!(
        "event-gateway vs redis-server and raw rdkafka: {rounds} rounds of {requests} requests, 50 clients"
    );
    if only.is_empty() || only == "publish" {
        publish_rows(rounds, requests);
    }
    if only.is_empty() || only == "xadd" {
        xadd_rows(rounds, requests);
    }
}
