//! A poison message on JetStream: the handler always fails on it, so it is tried N times with
//! backoff in place (the server does not redeliver it meanwhile), then published to
//! `<topic>.dlq` with the `x-event-*` reason headers and kept in the stream, while the
//! messages behind it keep flowing.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use event_core::broker::{Broker, RetryPolicy, SubscribeOptions};
use event_core::headers::names;
use event_core::testkit::{Collector, delivery_subscriber, is_marker, marker, unique};
use event_core::{Publisher, Service, State};
use event_proto::users::v1::UserCreated;

const ATTEMPTS: u32 = 4;

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
async fn poison_message_is_dead_lettered_and_the_stream_keeps_flowing() {
    common::testkit_stream().await;
    // a short AckWait: the retries (20 + 40 + 80 ms backoff) outlast none of it, but a
    // redelivery by the server would show up as more handler calls
    let broker = common::connected(
        common::builder("poison")
            .ack_wait(Duration::from_millis(200))
            .build()
            .expect("config"),
    )
    .await;
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
                RetryPolicy::exponential(ATTEMPTS, Duration::from_millis(100)).with_jitter(0.0),
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
    let receipt = broker
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
    assert_eq!(
        h.get_str(names::X_EVENT_ORIGINAL_POSITION),
        Some(receipt.position().to_string().as_str()),
        "{h:?}"
    );
    assert!(
        h.get_str(names::X_EVENT_HANDLER)
            .is_some_and(|n| n.ends_with("register")),
        "{h:?}"
    );
    assert_eq!(dead.payload(), &poison.payload, "original bytes");
    for (name, value) in poison.headers.iter() {
        assert_eq!(h.get(name.as_str()), Some(value), "original header {name}");
    }
    assert_eq!(
        poison_calls.load(Ordering::SeqCst),
        ATTEMPTS as usize,
        "retried in place, never redelivered by the server (AckWait 200 ms < the 700 ms of retries)"
    );
    println!(
        "poison: {ATTEMPTS} attempts, dead-lettered and 50 later messages handled in {elapsed:?}"
    );

    let report = service.stop().await;
    assert!(!report.timed_out, "{report:?}");
    // the stopped service published its dead letters before stop returned: the observer, which
    // reads its subject in stream order, gets them before a marker published now
    broker
        .publish(&dlq, marker())
        .await
        .expect("publish the marker");
    dead_letters
        .assert_empty_before("a second dead letter", is_marker)
        .await;
    dlq_observer.unsubscribe().await;

    // The stream kept the dead letter, with the reason headers on the wire, although it is in
    // the same stream as its original and carries the original's message id.
    let js = async_nats::jetstream::new(common::raw_client().await);
    let stream = js
        .get_stream(common::TESTKIT_STREAM)
        .await
        .expect("the suites' stream");
    let kept = stream
        .get_first_raw_message_by_subject(dlq.as_str(), 1)
        .await
        .expect("the dead letter is kept in the stream");
    let headers = &kept.headers;
    let text = |name: &str| {
        headers
            .get(name)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_else(|| panic!("header {name} missing: {headers:?}"))
    };
    assert_eq!(text("x-event-error-kind"), "handler-error");
    assert_eq!(text("x-event-attempts"), "4");
    assert_eq!(text("ce_type"), "users.v1.UserCreated");
    // `<id>@<topic>#<handler>#<an id of the publish>`: its own, not the original's, and not
    // the same as another group's dead letter of the same message
    let dedup = text("Nats-Msg-Id");
    let prefix = format!(
        "{}@{dlq}#{}#",
        poison.headers.message_id().unwrap(),
        h.get_str(names::X_EVENT_HANDLER).unwrap()
    );
    assert!(
        dedup
            .strip_prefix(&prefix)
            .is_some_and(|unique| uuid::Uuid::parse_str(unique).is_ok()),
        "a dead letter's own duplicate id: {dedup}"
    );
    assert_eq!(kept.payload, poison.payload);
    broker.disconnect().await.expect("disconnect");
}

/// Two queue groups that both dead-letter one message make two dead letters, and both are
/// kept: their duplicate ids differ by handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_dead_lettering_one_message_keep_two_dead_letters() {
    use event_core::broker::{Failure, FailureKind, Message, Outcome, handler_fn};

    common::testkit_stream().await;
    let broker = common::connected(common::builder("poison twice").build().expect("config")).await;
    let topic = unique("twice");
    let dlq = format!("{topic}.dlq");
    let (dlq_tx, mut dead_letters) = Collector::new(Duration::from_secs(15));
    let dlq_observer = delivery_subscriber(&broker, &dlq, dlq_tx).await;
    let refuse = |name: &'static str| {
        handler_fn(name, |_| async {
            Outcome::DeadLetter(Failure::new(
                FailureKind::Rejected,
                std::io::Error::other("refused"),
            ))
        })
    };
    let a = broker
        .subscribe(
            &topic,
            SubscribeOptions::new().queue("a"),
            refuse("group-a"),
        )
        .await
        .expect("subscribe");
    let b = broker
        .subscribe(
            &topic,
            SubscribeOptions::new().queue("b"),
            refuse("group-b"),
        )
        .await
        .expect("subscribe");
    broker
        .publish(
            &topic,
            Message::new("once").with_header("ce_id", unique("id")),
        )
        .await
        .expect("publish");
    let dead = dead_letters
        .until("both dead letters", |d| d.len() == 2)
        .await;
    let mut handlers: Vec<_> = dead
        .iter()
        .map(|d| {
            d.headers()
                .get_str(names::X_EVENT_HANDLER)
                .unwrap()
                .to_owned()
        })
        .collect();
    handlers.sort();
    assert_eq!(handlers, ["group-a", "group-b"]);
    a.unsubscribe().await;
    b.unsubscribe().await;
    dlq_observer.unsubscribe().await;
    broker.disconnect().await.expect("disconnect");
}
