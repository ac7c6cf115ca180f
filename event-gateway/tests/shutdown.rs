//! The `event-gateway` binary on RabbitMQ, stopped with SIGTERM while a go-redis consumer
//! holds messages unacknowledged: it exits cleanly within its drain timeout, and what it held
//! and what still waited goes back to the broker, so a gateway started after it hands out every
//! message: 0 lost.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{go_redis, go_running, py};

/// The gateway binary, serving `EVENT_BROKER=broker` on a free port.
struct Binary {
    child: Child,
    addr: SocketAddr,
}

impl Binary {
    fn start(broker: &str, args: &[&str]) -> Binary {
        let mut child = Command::new(env!("CARGO_BIN_EXE_event-gateway"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("EVENT_BROKER", broker)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the gateway binary runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("the gateway did not start: {line:?}"))
            .parse()
            .unwrap();
        Binary { child, addr }
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.child.wait().unwrap()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sigterm_gives_back_what_was_unacknowledged() {
    let broker = std::env::var("EVENT_TEST_AMQP")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let topic = format!(
        "gateway.shutdown.{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let mut first = Binary::start(&broker, &["--drain-timeout", "3"]);
    assert_eq!(
        go_redis(first.addr, &["xgroup-create", &topic, "workers", "0"])[0]["created"],
        true
    );
    py(first.addr, 2, &["xadd", &topic, "40", "m-"]);
    let mut holder = go_running(
        first.addr,
        &[
            "xconsume", &topic, "workers", "holder", "1000", "--no-ack", "--batch", "5",
        ],
    );
    let held: Vec<String> = (0..10)
        .map(|_| {
            holder.json()["fields"]["payload"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();

    let asked = Instant::now();
    let status = first.terminate();
    assert!(status.success(), "a clean exit: {status}");
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "stopped within the drain timeout: {:?}",
        asked.elapsed()
    );
    holder.kill();

    let second = Binary::start(&broker, &[]);
    // at least once: a message may come twice (given back, and redelivered by the broker's
    // ack deadline too); read until every one came, and count the rest
    let mut reader = go_running(
        second.addr,
        &["xconsume", &topic, "workers", "reader", "1000"],
    );
    let mut got = BTreeSet::new();
    let mut duplicates = 0;
    while got.len() < 40 {
        let payload = reader.json()["fields"]["payload"]
            .as_str()
            .unwrap()
            .to_owned();
        if !got.insert(payload) {
            duplicates += 1;
            assert!(duplicates <= 40, "more duplicates than messages");
        }
    }
    reader.kill();
    println!("40 of 40 after the restart, {duplicates} duplicates");
    for payload in held {
        assert!(
            got.contains(&payload),
            "{payload} was held when the gateway stopped"
        );
    }
}

/// A message the broker already redelivered (attempt 2, 3, ...) goes back again when a gateway
/// stops, not to the dead-letter topic: three gateways in turn on RabbitMQ, each stopped while
/// a consumer holds the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_message_goes_back_again_not_to_the_dead_letters() {
    use common::{TestGateway, blocking, config};

    let url = std::env::var("EVENT_TEST_AMQP")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let topic = format!(
        "gateway.redelivered.{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let start = || async {
        let broker = event_core::broker::connect(&url).expect("an amqp:// URL");
        TestGateway::start(broker, config()).await
    };
    let mut gateway = start().await;
    let (addr, t) = (gateway.addr, topic.clone());
    blocking(move || {
        go_redis(addr, &["xgroup-create", &t, "g", "$"]);
        py(addr, 2, &["xadd", &t, "1", "chore-"]);
    })
    .await;
    for round in 1..=3 {
        let (addr, t) = (gateway.addr, topic.clone());
        let mut holder = blocking(move || {
            let mut holder = go_running(addr, &["xconsume", &t, "g", "holder", "1", "--no-ack"]);
            let line = holder.json();
            assert_eq!(line["fields"]["payload"], "chore-0", "round {round}");
            holder
        })
        .await;
        gateway.stop().await;
        holder.kill();
        gateway = start().await;
    }
    // and it is still there, for a consumer that acknowledges it
    let (addr, t) = (gateway.addr, topic.clone());
    let read = blocking(move || go_redis(addr, &["xconsume", &t, "g", "last", "1"])).await;
    assert_eq!(read[0]["fields"]["payload"], "chore-0");
    gateway.stop().await;
}
