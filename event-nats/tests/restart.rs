//! Server restarts: 5,000 messages published while the test's own nats-server (JetStream,
//! file storage) is stopped with SIGTERM and started again, then killed with SIGKILL and
//! started again on the same store dir, with publishers and a queue group of two members
//! running. Every message is handled; each publish either succeeds or fails with its message
//! given back (and is then sent again with the same id); the duplicates that at-least-once
//! allows are counted.
//!
//! The server runs on a port and a store dir of its own (`common/server.rs`), from the
//! binary `scripts/brokers.sh` installs, so it never disturbs the shared server of the other
//! tests.

mod common;
#[path = "common/server.rs"]
mod server;

use std::collections::BTreeSet;
use std::time::Duration;

use event_core::broker::{Broker, Delivery, Message, Outcome, SubscribeOptions, handler_fn};
use event_core::testkit::{Collector, unique};
use event_nats::NatsBroker;
use futures_util::StreamExt;
use server::NatsServer;

const TOTAL: u64 = 5_000;
/// The publisher runs at most this far ahead of the handlers, so that it is still publishing
/// when the server goes down.
const AHEAD: u64 = 400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_messages_survive_two_server_restarts() {
    let dir = std::env::temp_dir().join(unique("nats-restart"));
    let mut server = tokio::task::block_in_place(|| NatsServer::start(&dir, true));
    let broker = NatsBroker::builder(&server.url())
        .connection_name("restart-test")
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
        .ack_wait(Duration::from_secs(2))
        .publish_timeout(Duration::from_secs(60))
        .request_timeout(Duration::from_secs(2))
        .build()
        .expect("config");
    let broker = common::connected(broker).await;
    let topic = unique("restart");
    let group = unique("g");

    let (tx, mut handled) = Collector::new(Duration::from_secs(120));
    let (progress, _) = tokio::sync::watch::channel(0u64);
    let mut members = Vec::new();
    for member in 0..2 {
        let tx = tx.clone();
        let progress = progress.clone();
        members.push(
            broker
                .subscribe(
                    &topic,
                    SubscribeOptions::new().queue(&group).concurrency(2),
                    handler_fn("count", move |d: Delivery| {
                        let tx = tx.clone();
                        let progress = progress.clone();
                        async move {
                            let seq: u64 =
                                std::str::from_utf8(d.payload()).unwrap().parse().unwrap();
                            let _ = tx.send((member, seq));
                            progress.send_modify(|n| *n += 1);
                            Outcome::Ack
                        }
                    }),
                )
                .await
                .unwrap_or_else(|e| panic!("subscribe: {}", event_core::error_chain(&e))),
        );
    }

    // publish with up to 100 in flight; a failed publish gives the message back and is retried
    let publisher = tokio::spawn({
        let broker = broker.clone();
        let topic = topic.clone();
        let progress = progress.subscribe();
        async move {
            let mut retries = 0usize;
            let mut sends = futures_util::stream::iter(0..TOTAL)
                .map(|i| {
                    let broker = broker.clone();
                    let topic = topic.clone();
                    let mut progress = progress.clone();
                    async move {
                        progress
                            .wait_for(|handled| handled + AHEAD >= i)
                            .await
                            .expect("the handlers' progress");
                        let mut message = Message::new(i.to_string())
                            .with_header("ce_id", format!("restart-{i}"));
                        let mut failures = 0usize;
                        loop {
                            match broker.publish(&topic, message).await {
                                Ok(_) => return failures,
                                Err(e) => {
                                    failures += 1;
                                    assert!(
                                        failures < 20,
                                        "publish {i} keeps failing: {}",
                                        event_core::error_chain(&e)
                                    );
                                    message = e.into_message();
                                }
                            }
                        }
                    }
                })
                .buffer_unordered(100);
            while let Some(failures) = sends.next().await {
                retries += failures;
            }
            retries
        }
    });

    let mut seen = Vec::new();
    for (round, at) in [(1, 1_000usize), (2, 3_000)] {
        let before = seen.len();
        let more = handled
            .until("progress before a restart", |s| before + s.len() >= at)
            .await;
        seen.extend(more);
        let how = tokio::task::block_in_place(|| {
            if round == 1 {
                server.stop();
                "stopped (SIGTERM)"
            } else {
                server.kill();
                "killed (SIGKILL)"
            }
        });
        println!(
            "restart {round}: server {how} after {} deliveries",
            seen.len()
        );
        tokio::task::block_in_place(|| server.spawn());
    }
    let publish_retries = publisher.await.expect("publisher");
    let rest = handled
        .until("every message", |s| {
            let mut all: BTreeSet<u64> = seen.iter().map(|(_, s)| *s).collect();
            all.extend(s.iter().map(|(_, s)| *s));
            all.len() as u64 == TOTAL
        })
        .await;
    seen.extend(rest);
    let distinct: BTreeSet<u64> = seen.iter().map(|(_, s)| *s).collect();
    assert_eq!(
        distinct,
        (0..TOTAL).collect::<BTreeSet<_>>(),
        "nothing lost"
    );
    let per_member = [0, 1].map(|m| seen.iter().filter(|(member, _)| *member == m).count());
    println!(
        "restarts: {TOTAL} messages, {} deliveries, {} duplicates, {publish_retries} publish \
         retries, per member {per_member:?}",
        seen.len(),
        seen.len() - distinct.len()
    );
    // the stream kept each message once: the retried publishes were deduplicated by id
    let js = async_nats::jetstream::new(
        async_nats::connect(server.url().trim_start_matches("nats://"))
            .await
            .expect("raw client"),
    );
    let mut stream = js
        .get_stream(broker.stream_name_for(&topic))
        .await
        .expect("the stream");
    assert_eq!(
        stream.info().await.expect("info").state.messages,
        TOTAL,
        "one copy of each message in the stream"
    );
    for member in members {
        member.unsubscribe().await;
    }
    broker.disconnect().await.expect("disconnect");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
