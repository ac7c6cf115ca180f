//! The gateway driven by the clients applications use, redis-py and go-redis, over the
//! in-memory broker: pub/sub both ways between them, a queue group shared by two consumers,
//! and a consumer killed with messages unacknowledged.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::{Running, TestGateway, blocking, config, go_redis, go_running, py, py_running};
use event_core::memory::MemoryBroker;
use serde_json::Value;

async fn gateway() -> TestGateway {
    TestGateway::start(Arc::new(MemoryBroker::new()), config()).await
}

fn payloads(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| {
            l["fields"]["payload"]
                .as_str()
                .expect("a payload field")
                .to_owned()
        })
        .collect()
}

/// Reads `n` message lines of a consumer.
fn read_n(consumer: &mut Running, n: usize) -> Vec<Value> {
    (0..n).map(|_| consumer.json()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_between_redis_py_and_go_redis_both_protocols() {
    let gw = gateway().await;
    let addr = gw.addr;
    blocking(move || {
        for protocol in [2u8, 3] {
            // redis-py subscribes, go-redis publishes
            let mut subscriber = py_running(addr, protocol, &["subscribe", "chat", "2"]);
            assert_eq!(subscriber.json()["subscribed"], "chat");
            let published = go_redis(
                addr,
                &[
                    "--protocol",
                    &protocol.to_string(),
                    "publish",
                    "chat",
                    "hi",
                    "ünïcode",
                ],
            );
            assert_eq!(published[0]["receivers"], 1);
            let got: Vec<Value> = (0..2).map(|_| subscriber.json()).collect();
            assert_eq!(got[0]["payload"], "hi");
            assert_eq!(got[1]["payload"], "ünïcode");
            assert_eq!(got[1]["channel"], "chat");
            subscriber.finish();

            // go-redis subscribes, redis-py publishes
            let mut subscriber = go_running(
                addr,
                &[
                    "--protocol",
                    &protocol.to_string(),
                    "subscribe",
                    "chat",
                    "1",
                ],
            );
            assert_eq!(subscriber.json()["subscribed"], "chat");
            let published = py(addr, protocol, &["publish", "chat", "from python"]);
            assert_eq!(published[0]["receivers"], 1);
            assert_eq!(subscriber.json()["payload"], "from python");
            subscriber.finish();
        }
    })
    .await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_go_redis_consumers_share_a_group_and_ack_everything() {
    let gw = gateway().await;
    let addr = gw.addr;
    blocking(move || {
        assert_eq!(
            go_redis(addr, &["xgroup-create", "orders", "billing", "$"])[0]["created"],
            true
        );
        assert_eq!(
            go_redis(addr, &["xgroup-create", "orders", "billing", "$"])[0]["created"],
            false
        );
        let mut first = go_running(addr, &["xconsume", "orders", "billing", "c1", "100"]);
        let mut second = go_running(addr, &["xconsume", "orders", "billing", "c2", "100"]);
        let added = py(addr, 2, &["xadd", "orders", "200", "order-"]);
        assert_eq!(added.len(), 200);
        let one = read_n(&mut first, 100);
        let two = read_n(&mut second, 100);
        first.finish();
        second.finish();
        let all: BTreeSet<String> = payloads(&one).into_iter().chain(payloads(&two)).collect();
        let expected: BTreeSet<String> = (0..200).map(|i| format!("order-{i}")).collect();
        assert_eq!(all, expected, "each message read once, by one of the two");
        // the framework's headers come back as fields
        assert!(
            one[0]["fields"]["ce_id"]
                .as_str()
                .is_some_and(|id| id.len() == 36),
            "{}",
            one[0]
        );
        assert_eq!(one[0]["fields"]["ce_source"], "event-gateway");
        let pending = go_redis(addr, &["xpending", "orders", "billing"]);
        assert_eq!(
            pending[0]["count"], 0,
            "everything acknowledged: {pending:?}"
        );
    })
    .await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_killed_go_redis_consumer_held_goes_to_the_other() {
    let gw = gateway().await;
    let addr = gw.addr;
    blocking(move || {
        go_redis(addr, &["xgroup-create", "jobs", "workers", "$"]);
        let mut victim = go_running(
            addr,
            &[
                "xconsume", "jobs", "workers", "victim", "1000", "--no-ack", "--batch", "7",
            ],
        );
        py(addr, 2, &["xadd", "jobs", "300", "job-"]);
        let held = read_n(&mut victim, 50);
        victim.kill();
        // the survivor gets what the victim held and what it never read: all 300
        let mut survivor = go_running(addr, &["xconsume", "jobs", "workers", "survivor", "300"]);
        let got = read_n(&mut survivor, 300);
        survivor.finish();
        let unique: BTreeSet<String> = payloads(&got).into_iter().collect();
        assert_eq!(unique.len(), 300, "0 lost, none twice to the survivor");
        for line in &held {
            assert!(unique.contains(line["fields"]["payload"].as_str().unwrap()));
        }
        let pending = go_redis(addr, &["xpending", "jobs", "workers"]);
        assert_eq!(pending[0]["count"], 0, "{pending:?}");
    })
    .await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_consumers_share_a_group_and_survive_a_kill() {
    let gw = gateway().await;
    let addr = gw.addr;
    blocking(move || {
        for protocol in [2u8, 3] {
            let stream = format!("py-jobs-{protocol}");
            assert_eq!(
                py(addr, protocol, &["xgroup", &stream, "g", "$"])[0]["created"],
                true
            );
            let mut first = py_running(addr, protocol, &["xconsume", &stream, "g", "a", "40"]);
            let mut second = py_running(addr, protocol, &["xconsume", &stream, "g", "b", "40"]);
            py(addr, protocol, &["xadd", &stream, "80", "m-"]);
            let one = read_n(&mut first, 40);
            let two = read_n(&mut second, 40);
            first.finish();
            second.finish();
            let all: BTreeSet<String> = payloads(&one).into_iter().chain(payloads(&two)).collect();
            assert_eq!(all.len(), 80, "protocol {protocol}");

            // a consumer killed with 20 messages unacknowledged
            let mut victim = py_running(
                addr,
                protocol,
                &["xconsume", &stream, "g", "victim", "1000", "--no-ack"],
            );
            py(addr, protocol, &["xadd", &stream, "30", "late-"]);
            let held = read_n(&mut victim, 20);
            let pending = py(addr, protocol, &["xpending", &stream, "g"]);
            assert!(
                pending[0]["consumers"]["victim"].as_i64().unwrap() >= 20,
                "{pending:?}"
            );
            victim.kill();
            let mut survivor = py_running(
                addr,
                protocol,
                &["xconsume", &stream, "g", "survivor", "30"],
            );
            let got: BTreeSet<String> = payloads(&read_n(&mut survivor, 30)).into_iter().collect();
            survivor.finish();
            assert_eq!(got.len(), 30, "0 lost (protocol {protocol})");
            for line in &held {
                assert!(got.contains(line["fields"]["payload"].as_str().unwrap()));
            }
            assert_eq!(
                py(addr, protocol, &["xpending", &stream, "g"])[0]["count"],
                0
            );
        }
    })
    .await;
    gw.stop().await;
}

/// RESET on a connection leaves what its consumers read theirs, as in Redis: with no reclaim
/// delay at all, another reader still gets nothing of it, and the XACK that follows on the
/// reset connection counts. (Before, RESET gave it back as if the connection had closed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_keeps_what_the_connection_read() {
    let gw = TestGateway::start(
        Arc::new(MemoryBroker::new()),
        config().reclaim_after(std::time::Duration::ZERO),
    )
    .await;
    let addr = gw.addr;
    blocking(move || {
        for protocol in [2u8, 3] {
            let stream = format!("reset-{protocol}");
            assert_eq!(
                py(addr, protocol, &["xgroup", &stream, "g", "$"])[0]["created"],
                true
            );
            py(addr, protocol, &["xadd", &stream, "1", "job-"]);
            let lines = py(addr, protocol, &["read-reset", &stream, "g"]);
            assert_eq!(lines.len(), 1, "{lines:?}");
            assert_eq!(lines[0]["b"], serde_json::json!([]), "{lines:?}");
            assert_eq!(lines[0]["acked"], 1, "{lines:?}");
        }
    })
    .await;
    gw.stop().await;
}
