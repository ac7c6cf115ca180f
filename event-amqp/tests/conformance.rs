//! The core conformance suite, run through `AmqpBroker` against the RabbitMQ at
//! `127.0.0.1:5672` (or `EVENT_TEST_AMQP`). Fails, never skips, when RabbitMQ is missing.
//!
//! Every case uses unique topic and queue names (routing keys), so the cases run in parallel
//! on one exchange. Durable queues get `x-expires`, so the queues the cases leave behind (queue
//! groups, dead-letter queues) disappear from the test broker after ten idle minutes.

mod common;

use event_core::testkit;

use common::{Factory, url};

event_core::conformance_suite!(amqp, Factory);

/// AMQP keeps order per queue with concurrency (and prefetch) 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_order_per_key() {
    testkit::order_per_key(&Factory).await;
}

/// `EVENT_BROKER=amqp://...` selects this backend, with the query parameters applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_url_selects_the_backend() {
    let broker = event_core::broker::connect(&format!(
        "{}?exchange=event.test.conformance&prefetch=4&connection_name=url-test",
        url()
    ))
    .expect("amqp scheme registered");
    assert_eq!(broker.name(), "amqp");
    assert!(!broker.address().contains("guest:"), "{}", broker.address());
    broker.connect().await.expect("connect");
    let capabilities = broker.capabilities();
    assert!(capabilities.persistent && capabilities.ordered_per_key);
    broker.disconnect().await.expect("disconnect");

    let err = event_core::broker::connect("amqps://u:secret@127.0.0.1/%2f?exchnage=x").unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("unknown query parameter \"exchnage\""),
        "{text}"
    );
    assert!(!text.contains("secret"), "{text}");
}
