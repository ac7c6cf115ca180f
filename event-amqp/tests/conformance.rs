//! The core conformance suite, run through `AmqpBroker` against the RabbitMQ at
//! `127.0.0.1:5672` (or `EVENT_TEST_AMQP`). Fails, never skips, when RabbitMQ is missing.
//!
//! Every case uses unique topic and queue names (routing keys), so the cases run in parallel
//! on one exchange. Durable queues get `x-expires`, so the queues the cases leave behind (queue
//! groups, dead-letter queues) disappear from the test broker after ten idle minutes.
//!
//! The suite runs in the default, lean wire profile (each fact once); `wire_profiles.rs`
//! checks what each profile writes.

mod common;

use event_core::testkit;

use common::{Factory, url};

event_core::conformance_suite!(amqp, Factory);

/// Handlers that finish out of order (concurrency 16, prefetch 64, uneven handler times): the
/// settle worker acknowledges runs with `multiple` and the rest one by one. Every message is
/// handled once and none is redelivered (`testkit::settle_out_of_order`), and after
/// unsubscribing the group's queue is empty: no acknowledgement was lost, none covered a
/// message still in a handler, and the queued ones were sent before the channel closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_out_of_order_settle_every_message_once() {
    use std::time::Duration;

    use event_core::broker::Broker as _;

    let topic = testkit::unique("acks");
    let broker = common::suite_builder("event-amqp acks")
        .prefetch(64)
        .build()
        .expect("valid broker configuration");
    let broker = common::connected(broker).await;
    testkit::settle_out_of_order(&broker, &topic, "workers", 3000, Duration::from_secs(60)).await;

    // the unsubscribe closed the channel: anything it left unacknowledged is back in the queue
    let connection = lapin::Connection::connect(&url(), lapin::ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    let queue = channel
        .queue_declare(
            broker.group_queue_name(&topic, "workers").as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("the group's queue exists");
    assert_eq!(
        (queue.message_count(), queue.consumer_count()),
        (0, 0),
        "nothing left unacknowledged"
    );
    connection.close(200, "done".into()).await.expect("close");
    broker.disconnect().await.expect("disconnect");
}

/// A run of settled messages shorter than half the prefetch is acknowledged while the
/// subscription stays open, not only when it closes: RabbitMQ reports none of them
/// unacknowledged soon after the handlers finished (`rabbitmqctl list_queues`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_is_acknowledged_while_the_subscription_is_open() {
    use std::time::Duration;

    use event_core::broker::{Broker as _, Delivery, Message, Outcome, SubscribeOptions};

    let topic = testkit::unique("short-run");
    let broker = common::suite_builder("event-amqp short run")
        .prefetch(64)
        .build()
        .expect("valid broker configuration");
    let broker = common::connected(broker).await;
    let (tx, mut handled) = testkit::Collector::new(Duration::from_secs(30));
    let subscription = broker
        .subscribe(
            &topic,
            SubscribeOptions::new().queue("workers"),
            event_core::broker::handler_fn("short-run", move |_: Delivery| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(());
                    Outcome::Ack
                }
            }),
        )
        .await
        .expect("subscribe");
    // 5 messages: far from the 32 of half the prefetch
    for i in 0..5 {
        broker
            .publish(&topic, Message::new(format!("{i}")))
            .await
            .expect("publish");
    }
    handled.until("5 handled", |items| items.len() == 5).await;

    let queue = broker.group_queue_name(&topic, "workers");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let listing =
            common::rabbitmqctl(&["list_queues", "-q", "name", "messages_unacknowledged"]).await;
        let unacknowledged = listing
            .lines()
            .find_map(|line| {
                let mut fields = line.split_whitespace();
                (fields.next() == Some(queue.as_str())).then(|| fields.next().map(str::to_owned))
            })
            .flatten()
            .unwrap_or_else(|| panic!("{queue} is not in `rabbitmqctl list_queues`: {listing}"));
        if unacknowledged == "0" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{unacknowledged} messages of {queue} still unacknowledged while the subscription \
             is open"
        );
    }
    subscription.unsubscribe().await;
    broker.disconnect().await.expect("disconnect");
}

/// A publish the broker refuses by closing the publishing channel (a message over its
/// `max_message_size`) fails with the broker's reason after one more try on a new channel,
/// instead of being retried until the publish timeout; the next publish goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_the_broker_refuses_fails_with_its_reason() {
    use event_core::broker::{Broker as _, BrokerError, Message, SubscribeOptions};

    let topic = testkit::unique("too-big");
    let broker = common::suite_builder("event-amqp refused publish")
        .build()
        .expect("valid broker configuration");
    let broker = common::connected(broker).await;
    // a queue for the topic, so that the small publish below is routable
    let subscription = broker
        .subscribe(
            &topic,
            SubscribeOptions::new().queue("keep"),
            event_core::broker::handler_fn("keep", |_| async { event_core::broker::Outcome::Ack }),
        )
        .await
        .expect("subscribe");
    let max =
        common::rabbitmqctl(&["eval", "application:get_env(rabbit, max_message_size)."]).await;
    let max: usize = max
        .trim()
        .trim_start_matches("{ok,")
        .trim_end_matches('}')
        .parse()
        .unwrap_or_else(|e| panic!("RabbitMQ's max_message_size from {max:?}: {e}"));
    let error = broker
        .publish(&topic, Message::new(vec![0u8; max + 1]))
        .await
        .expect_err("a message over max_message_size is refused");
    let given_back = error.message().payload.len();
    let error = error.broker_error();
    assert!(
        matches!(error, BrokerError::Backend { .. }),
        "the broker's refusal, not a timeout: {}",
        event_core::error_chain(error)
    );
    assert!(
        event_core::error_chain(error).contains("PRECONDITION_FAILED"),
        "{}",
        event_core::error_chain(error)
    );
    assert_eq!(given_back, max + 1, "the message is given back");
    broker
        .publish(&topic, Message::new("small"))
        .await
        .expect("the next publish goes through");
    subscription.unsubscribe().await;
    broker.disconnect().await.expect("disconnect");
}

/// `EVENT_BROKER=amqp://...` selects this backend, with the query parameters applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_url_selects_the_backend() {
    let broker = event_core::broker::connect(&format!(
        "{}?exchange=event.test.conformance&prefetch=4&connection_name=url-test\
         &wire=go-micro,cloudevents",
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

    let err = event_core::broker::connect("amqp://127.0.0.1/%2f?wire=micro").unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(
            "wire = \"micro\" is not valid: expected lean, go-micro, cloudevents, or a \
             comma-separated combination (go-micro,cloudevents)"
        ),
        "{text}"
    );
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
