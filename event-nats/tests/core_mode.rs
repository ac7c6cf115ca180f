//! The core conformance suite through `NatsBroker` in core NATS mode (`mode=core`: plain
//! subjects and queue subscriptions, no JetStream), against the nats-server at
//! `127.0.0.1:4222` (or `EVENT_TEST_NATS`). Fails, never skips, when the server is missing.
//!
//! Core NATS keeps nothing: the capabilities say so, and the cases that need persistence or
//! replay are not run (`promised_capabilities` runs only `order_per_key`).

mod common;

use common::CoreFactory;

event_core::conformance_suite!(nats_core, CoreFactory);

/// What core NATS promises, and what it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_mode_promises_at_most_once() {
    let broker = event_core::broker::connect(&format!("{}?mode=core", common::url()))
        .expect("nats scheme registered");
    broker.connect().await.expect("connect");
    let capabilities = broker.capabilities();
    assert!(!capabilities.persistent, "{capabilities:?}");
    assert!(!capabilities.replays_to_new_subscribers, "{capabilities:?}");
    assert!(capabilities.ordered_per_key, "{capabilities:?}");
    // nothing is kept: a message published before anyone subscribes is gone
    let topic = event_core::testkit::unique("core.gone");
    let receipt = broker
        .publish(&topic, event_core::broker::Message::new("lost"))
        .await
        .expect("a core publish to nobody succeeds");
    assert_eq!(receipt.position().to_string(), "core NATS, flushed");
    let (tx, mut rx) = event_core::testkit::Collector::new(std::time::Duration::from_secs(15));
    let sub = event_core::testkit::delivery_subscriber(&*broker, &topic, tx).await;
    broker
        .publish(&topic, event_core::broker::Message::new("seen"))
        .await
        .expect("publish");
    let got = rx.next("the message published after subscribing").await;
    assert_eq!(got.payload(), "seen", "the earlier message was not kept");
    assert_eq!(got.position().to_string(), "core NATS delivery 1");
    sub.unsubscribe().await;
    broker.disconnect().await.expect("disconnect");
}
