//! Broker restarts: 10,000 messages published while the broker (sqlite storage, so the data
//! survives) is killed with SIGKILL and started again twice. Every message is handled; the
//! duplicates that at-least-once allows are counted.
//!
//! This test runs its own broker process on a port of its own, so it never disturbs the
//! shared broker of the other tests. The broker binary is `$EVENT_TANSU_BIN`, else `tansu`
//! from `PATH` or `~/.cargo/bin` (`scripts/test.sh` installs it).

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use event_core::broker::{Broker, Delivery, Message, Outcome, SubscribeOptions, handler_fn};
use event_core::testkit::{Collector, unique};
use event_kafka::{KafkaBroker, TopicSpec};
use futures_util::StreamExt;

const TOTAL: u64 = 10_000;
const PORT: u16 = 19_092;

fn tansu_binary() -> PathBuf {
    if let Ok(path) = std::env::var("EVENT_TANSU_BIN") {
        return path.into();
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let cargo_bin = PathBuf::from(home).join(".cargo/bin/tansu");
    if cargo_bin.exists() {
        return cargo_bin;
    }
    PathBuf::from("tansu")
}

/// One broker process with sqlite storage in `dir`.
struct TestBroker {
    dir: PathBuf,
    child: Option<Child>,
}

impl TestBroker {
    fn start(dir: PathBuf) -> TestBroker {
        let mut broker = TestBroker { dir, child: None };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        let listener = format!("tcp://127.0.0.1:{PORT}");
        // relative to the broker's working directory (tansu drops the leading slash of an
        // absolute sqlite path)
        let storage = "sqlite://tansu.db";
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tansu.log"))
            .expect("broker log file");
        let child = Command::new(tansu_binary())
            .args(["broker", "--listener-url", &listener])
            .args(["--advertised-listener-url", &listener])
            .args(["--storage-engine", storage])
            .current_dir(&self.dir)
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start the Kafka-compatible broker {:?} (scripts/test.sh installs it): {e}",
                    tansu_binary()
                )
            });
        self.child = Some(child);
        wait_for_port(PORT, Duration::from_secs(30));
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill broker");
            child.wait().expect("reap broker");
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn wait_for_port(port: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the broker did not listen on {port} within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_survive_two_broker_restarts() {
    let dir = std::env::temp_dir().join(unique("tansu-restart"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut process = TestBroker::start(dir.clone());
    let servers = format!("127.0.0.1:{PORT}");
    let broker = KafkaBroker::builder(&servers)
        .client_id("restart-test")
        .delivery_timeout(Duration::from_secs(60))
        .set_producer(
            common::ONE_RECORD_PER_BATCH.0,
            common::ONE_RECORD_PER_BATCH.1,
        )
        .build()
        .expect("config");
    broker.connect().await.expect("connect");
    let topic = unique("restart");
    broker
        .ensure_topics(&[TopicSpec::new(&topic).partitions(3)])
        .await
        .expect("create topic");

    let (tx, mut handled) = Collector::new(Duration::from_secs(120));
    let sub = broker
        .subscribe(
            &topic,
            SubscribeOptions::new().queue(unique("g")).concurrency(3),
            handler_fn("count", move |d: Delivery| {
                let tx = tx.clone();
                async move {
                    let seq: u64 = std::str::from_utf8(d.payload()).unwrap().parse().unwrap();
                    let _ = tx.send(seq);
                    Outcome::Ack
                }
            }),
        )
        .await
        .expect("subscribe");

    // publish with up to 200 in flight; a failed publish gives the message back and is retried
    let publisher = tokio::spawn({
        let broker = broker.clone();
        let topic = topic.clone();
        async move {
            let mut retries = 0usize;
            let mut sends = futures_util::stream::iter(0..TOTAL)
                .map(|i| {
                    let broker = broker.clone();
                    let topic = topic.clone();
                    async move {
                        let mut message =
                            Message::new(i.to_string()).with_key(format!("k{}", i % 11));
                        let mut failures = 0usize;
                        loop {
                            match broker.publish(&topic, message).await {
                                Ok(_) => return failures,
                                Err(e) => {
                                    failures += 1;
                                    assert!(failures < 20, "publish {i} keeps failing: {e}");
                                    message = e.into_message();
                                    tokio::time::sleep(Duration::from_millis(200)).await;
                                }
                            }
                        }
                    }
                })
                .buffer_unordered(200);
            while let Some(failures) = sends.next().await {
                retries += failures;
            }
            retries
        }
    });

    let mut seen = Vec::new();
    for (round, at) in [(1, 2_000u64), (2, 6_000)] {
        let before = seen.len();
        let more = handled
            .until("progress before a restart", |s| {
                before + s.len() >= at as usize
            })
            .await;
        seen.extend(more);
        process.kill();
        println!(
            "restart {round}: broker killed after {} deliveries",
            seen.len()
        );
        process.spawn();
    }
    let publish_retries = publisher.await.expect("publisher");
    let rest = handled
        .until("every message", |s| {
            let mut all: BTreeSet<u64> = seen.iter().copied().collect();
            all.extend(s.iter().copied());
            all.len() as u64 == TOTAL
        })
        .await;
    seen.extend(rest);
    let distinct: BTreeSet<u64> = seen.iter().copied().collect();
    assert_eq!(distinct, (0..TOTAL).collect::<BTreeSet<_>>());
    println!(
        "restarts: {TOTAL} messages, {} deliveries, {} duplicates, {publish_retries} publish retries",
        seen.len(),
        seen.len() - distinct.len()
    );
    sub.unsubscribe().await;
    broker.disconnect().await.expect("disconnect");
    drop(process);
    let _ = std::fs::remove_dir_all(&dir);
}
