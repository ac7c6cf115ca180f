//! A poison message on RabbitMQ: the handler always fails on it, so it is tried N times with
//! backoff, then published to `<topic>.dlq` with the `x-event-*` reason headers (and kept in
//! the durable `<topic>.dlq` queue), while the messages behind it keep flowing.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use event_amqp::AmqpBroker;
use event_core::broker::{Broker, RetryPolicy, SubscribeOptions};
use event_core::headers::names;
use event_core::testkit::{Collector, delivery_subscriber, is_marker, marker, unique};
use event_core::{Context, Publisher, Service, State};
use event_proto::users::v1::UserCreated;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;

const ATTEMPTS: u32 = 4;

use common::url;

#[derive(Clone)]
struct Calls {
    poison: Arc<AtomicUsize>,
    good: tokio::sync::mpsc::UnboundedSender<String>,
}

async fn register(user: UserCreated, State(calls): State<Calls>) -> Result<(), std::io::Error> {
    if user.email.starts_with("poison") {
        calls.poison.fetch_add(1, Ordering::SeqCst);
        return Err(std::io::Error::other("the users table rejects this row"));
    }
    let _ = calls.good.send(user.user_id);
    Ok(())
}

fn user(i: usize) -> UserCreated {
    UserCreated {
        user_id: format!("u-{i}"),
        email: format!("user{i}@example.com"),
        display_name: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_message_is_dead_lettered_and_the_queue_keeps_flowing() {
    let broker = AmqpBroker::builder(&url())
        .exchange("event.test.poison")
        .queue_argument("x-expires", 600_000)
        .build()
        .expect("config");
    let broker = common::connected(broker).await;
    let topic = unique("users.created");
    let dlq = format!("{topic}.dlq");
    let (dlq_tx, mut dead_letters) = Collector::new(Duration::from_secs(15));
    let dlq_observer = delivery_subscriber(&broker, &dlq, dlq_tx).await;

    let (good_tx, mut good) = Collector::new(Duration::from_secs(15));
    let poison_calls = Arc::new(AtomicUsize::new(0));
    let service = Service::builder("signup-consumer")
        .broker(broker.clone())
        .state(Calls {
            poison: poison_calls.clone(),
            good: good_tx,
        })
        .subscribe_with(
            topic.as_str(),
            SubscribeOptions::new().queue("registry").retry(
                RetryPolicy::exponential(ATTEMPTS, Duration::from_millis(20)).with_jitter(0.0),
            ),
            register,
        )
        .build()
        .expect("build")
        .start()
        .await
        .expect("start");

    let publisher =
        Publisher::<UserCreated>::new(Arc::new(broker.clone()), "signup", topic.as_str());
    let t = Instant::now();
    let poison = publisher.encode(
        &UserCreated {
            user_id: "u-poison".into(),
            email: "poison@example.com".into(),
            display_name: "Robert'); DROP TABLE users;--".into(),
        },
        None,
    );
    broker
        .publish(&topic, poison.clone())
        .await
        .expect("publish poison");
    for i in 0..50 {
        publisher.publish(&user(i)).await.expect("publish");
    }
    let handled = good
        .until("the messages behind the poison", |s| s.len() == 50)
        .await;
    assert_eq!(handled.len(), 50);

    let dead = dead_letters.next("the dead letter").await;
    let elapsed = t.elapsed();
    let h = dead.headers();
    assert_eq!(h.get_str(names::X_EVENT_ATTEMPTS), Some("4"));
    assert_eq!(h.get_str(names::X_EVENT_ERROR_KIND), Some("handler-error"));
    assert_eq!(
        h.get_str(names::X_EVENT_ERROR),
        Some("the users table rejects this row")
    );
    assert_eq!(
        h.get_str(names::X_EVENT_ORIGINAL_TOPIC),
        Some(topic.as_str())
    );
    assert!(
        h.get_str(names::X_EVENT_ORIGINAL_POSITION)
            .is_some_and(|p| p.starts_with("delivery tag ")),
        "{h:?}"
    );
    assert!(
        h.get_str(names::X_EVENT_HANDLER)
            .is_some_and(|n| n.ends_with("register")),
        "{h:?}"
    );
    assert_eq!(dead.payload(), &poison.payload, "original bytes");
    // the original headers as the default (lean) wire profile carries them: the time at
    // second resolution, no `ce_specversion` 1.0, no correlation id that only repeats the id
    let seconds = |t: SystemTime| t.duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
    for (name, value) in poison.headers.iter() {
        match name.as_str() {
            names::CE_SPECVERSION | names::CORRELATION_ID => {
                assert!(!h.contains(name.as_str()), "{name} left out: {h:?}");
            }
            names::CE_TIME => {
                assert_eq!(h.time().map(seconds), poison.headers.time().map(seconds));
                assert!(
                    h.get_str(names::CE_TIME)
                        .is_some_and(|t| t.ends_with(".000Z")),
                    "{h:?}"
                );
            }
            _ => assert_eq!(h.get(name.as_str()), Some(value), "original header {name}"),
        }
    }
    assert_eq!(
        Context::from_headers(h),
        Context::from_headers(&poison.headers),
        "the dead letter has the original's context"
    );
    assert_eq!(poison_calls.load(Ordering::SeqCst), ATTEMPTS as usize);
    println!(
        "poison: {ATTEMPTS} attempts, dead-lettered and 50 later messages handled in {elapsed:?}"
    );

    let report = service.stop().await;
    assert!(!report.timed_out, "{report:?}");
    // the stopped service published its dead letters before stop returned: the observer, which
    // takes its queue in order, gets them before a marker published now
    broker
        .publish(&dlq, marker())
        .await
        .expect("publish the marker");
    dead_letters
        .assert_empty_before("a second dead letter", is_marker)
        .await;
    dlq_observer.unsubscribe().await;

    // The durable dead-letter queue kept its copy, with the reason headers on the wire.
    let connection = lapin::Connection::connect(&url(), lapin::ConnectionProperties::default())
        .await
        .expect("raw connection");
    let channel = connection.create_channel().await.expect("channel");
    let mut consumer = channel
        .basic_consume(
            dlq.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume the dead-letter queue");
    let kept = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a message in the dead-letter queue")
        .expect("consumer open")
        .expect("delivery");
    let table = kept.properties.headers().clone().expect("headers");
    let text = |name: &str| common::long_string(&table, name);
    assert_eq!(text("x-event-error-kind"), "handler-error");
    assert_eq!(text("x-event-attempts"), "4");
    assert_eq!(
        kept.properties.kind().as_ref().map(|s| s.as_str()),
        Some("users.v1.UserCreated")
    );
    assert_eq!(kept.routing_key.as_str(), dlq);
    for copy in ["cloudEvents_type", "Micro-Topic", "Micro-ID"] {
        assert!(
            !table.inner().contains_key(copy),
            "lean: no {copy} in {table:?}"
        );
    }
    assert_eq!(kept.data, poison.payload.to_vec());
    kept.ack(BasicAckOptions::default()).await.expect("ack");
    // the marker came after it: the queue kept no second dead letter either
    let next = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("the marker in the dead-letter queue")
        .expect("consumer open")
        .expect("delivery");
    assert_eq!(
        next.data,
        marker().payload.to_vec(),
        "after the dead letter"
    );
    next.ack(BasicAckOptions::default()).await.expect("ack");
    let _ = connection.close(200, "done".into()).await;
    broker.disconnect().await.expect("disconnect");
}
