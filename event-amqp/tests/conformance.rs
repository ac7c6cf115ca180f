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

/// proto3 JSON (go-micro's default content type), with and without a type header, is
/// consumed as a typed event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proto_json_is_a_typed_event() {
    event_core::codec::json::register_file_descriptor_set(event_proto::FILE_DESCRIPTOR_SET)
        .expect("the proto crate's descriptors");
    let expected = event_proto::users::v1::UserCreated {
        user_id: "u-1".into(),
        email: "ada@example.com".into(),
        display_name: "Ada".into(),
    };
    event_core::testkit::proto_json_is_typed(
        &Factory,
        r#"{"userId":"u-1","email":"ada@example.com","displayName":"Ada"}"#,
        expected,
    )
    .await;
}
