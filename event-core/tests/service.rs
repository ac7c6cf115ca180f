//! Service bootstrap: what `ServiceBuilder::build` refuses, broker URLs, reserved metadata,
//! explicit dead-lettering, draining on shutdown and the in-memory broker's backpressure.
//!
//! Subscribers are added with `ServiceBuilder::subscribe` (no `#[subscriber]` in this binary).

use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use tokio::sync::{Semaphore, mpsc, oneshot};

use event_core::broker::{
    self, Broker, BrokerError, BrokerUrlError, Delivery, Message, Outcome, RetryPolicy,
    SubscribeOptions, TryPublish, handler_fn,
};
use event_core::context::MetadataError;
use event_core::headers::names;
use event_core::memory::MemoryBroker;
use event_core::testkit::{self, Collector};
use event_core::{Context, Service, ServiceError, State};
use event_proto::users::v1::{UserCreated, WelcomeEmailSent};

const TOPIC: &str = "users.created";
/// Upper bound of every wait; nothing here is expected to take more than milliseconds.
const WAIT: Duration = Duration::from_secs(5);

// ---- helpers ------------------------------------------------------------------------------

/// A raw subscriber forwarding every delivery of `topic` to a collector.
async fn collect_raw(
    broker: &MemoryBroker,
    topic: &str,
) -> (broker::Subscription, Collector<Delivery>) {
    let (tx, collector) = Collector::new(WAIT);
    (
        testkit::delivery_subscriber(broker, topic, tx).await,
        collector,
    )
}

fn user() -> UserCreated {
    UserCreated {
        user_id: "u-1".into(),
        email: "ada@example.com".into(),
        display_name: "Ada".into(),
    }
}

fn mailer() -> SubscribeOptions {
    SubscribeOptions::new().queue("mailer")
}

async fn send_welcome(_user: UserCreated) {}

async fn record_signup(_user: UserCreated) {}

async fn audit_welcome(_sent: WelcomeEmailSent) {}

#[derive(Clone, Debug)]
struct Db;

async fn store_user(_user: UserCreated, State(_db): State<Db>) {}

// ---- build-time checks --------------------------------------------------------------------

#[test]
fn duplicate_subscription_is_rejected_with_both_locations() {
    let builder = Service::builder("mailer").broker(MemoryBroker::new());
    let first_line = line!() + 1;
    let builder = builder.subscribe_with(TOPIC, mailer(), send_welcome);
    // Another handler, or the same handler in another queue group, is fine.
    let builder = builder.subscribe_with(TOPIC, mailer(), record_signup);
    let builder =
        builder.subscribe_with(TOPIC, SubscribeOptions::new().queue("audit"), send_welcome);
    let second_line = line!() + 1;
    let builder = builder.subscribe_with(TOPIC, mailer(), send_welcome);

    let error = builder
        .build()
        .expect_err("a duplicate subscription must be refused");
    let text = error.to_string();
    match &error {
        ServiceError::DuplicateSubscriber {
            service,
            handler,
            topic,
            queue,
            first,
            second,
        } => {
            assert_eq!(service, "mailer");
            assert!(handler.ends_with("send_welcome"), "{handler}");
            assert_eq!(topic, TOPIC);
            assert_eq!(queue.as_deref(), Some("mailer"));
            assert_eq!((first.line, second.line), (first_line, second_line));
            assert!(first.file.ends_with("tests/service.rs"), "{first}");
            assert!(second.file.ends_with("tests/service.rs"), "{second}");
        }
        other => panic!("expected DuplicateSubscriber, got {other:?}"),
    }
    for line in [first_line, second_line] {
        let location = format!("tests/service.rs:{line}:");
        assert!(text.contains(&location), "{location} missing in: {text}");
    }
    assert!(text.contains("send_welcome"), "{text}");
    // two closures of one function are two handlers, named by where they are
    let closures = Service::builder("mailer")
        .broker(MemoryBroker::new())
        .subscribe_with(TOPIC, mailer(), |_: UserCreated| async {})
        .subscribe_with(TOPIC, mailer(), |_: UserCreated| async {});
    assert!(closures.build().is_ok(), "two closures are not duplicates");
    assert!(text.contains("(queue mailer)"), "{text}");
}

#[tokio::test]
async fn different_message_types_on_one_topic_conflict_before_anything_is_consumed() {
    let broker = MemoryBroker::new();
    let first_line = line!() + 3;
    let error = Service::builder("mailer")
        .broker(broker.clone())
        .subscribe(TOPIC, send_welcome)
        .subscribe(TOPIC, record_signup)
        .subscribe(TOPIC, audit_welcome)
        .build()
        .expect_err("two message types on one topic must be refused");
    let second_line = first_line + 2;
    let text = error.to_string();
    match &error {
        ServiceError::TopicTypeConflict {
            topic,
            first_handler,
            first_type,
            first,
            second_handler,
            second_type,
            second,
            ..
        } => {
            assert_eq!(topic, TOPIC);
            assert!(first_handler.ends_with("send_welcome"), "{first_handler}");
            assert_eq!(first_type, "users.v1.UserCreated");
            assert_eq!(first.line, first_line);
            assert!(
                second_handler.ends_with("audit_welcome"),
                "{second_handler}"
            );
            assert_eq!(second_type, "users.v1.WelcomeEmailSent");
            assert_eq!(second.line, second_line);
        }
        other => panic!("expected TopicTypeConflict, got {other:?}"),
    }
    for fragment in [
        "users.v1.UserCreated",
        "users.v1.WelcomeEmailSent",
        "send_welcome",
        "audit_welcome",
        "a topic carries one type",
    ] {
        assert!(text.contains(fragment), "{fragment:?} missing in: {text}");
    }

    // Nothing was subscribed: a message published now waits in no queue.
    broker
        .publish(TOPIC, Message::new(user().encode_to_vec()))
        .await
        .expect("publish");
    assert_eq!(broker.pending(TOPIC), 0, "no subscriber queue exists");
}

#[test]
fn missing_state_is_named() {
    let line = line!() + 3;
    let error = Service::builder("users")
        .broker(MemoryBroker::new())
        .subscribe(TOPIC, store_user)
        .build()
        .expect_err("a handler needing state the service lacks must be refused");
    let text = error.to_string();
    match &error {
        ServiceError::MissingState {
            handler,
            location,
            state,
            ..
        } => {
            assert!(handler.ends_with("store_user"), "{handler}");
            assert_eq!(*state, std::any::type_name::<Db>());
            assert_eq!(location.line, line);
        }
        other => panic!("expected MissingState, got {other:?}"),
    }
    let wanted = format!("State<{}>", std::any::type_name::<Db>());
    assert!(text.contains(&wanted), "{wanted} missing in: {text}");
    assert!(text.contains("ServiceBuilder::state"), "{text}");

    Service::builder("users")
        .broker(MemoryBroker::new())
        .state(Db)
        .subscribe(TOPIC, store_user)
        .build()
        .expect("with the state it builds");
}

#[test]
fn registered_subscribers_missing_explains_the_linker_pitfall() {
    assert!(
        event_core::subscribe::registered().is_empty(),
        "this test binary has no #[subscriber]"
    );
    let error = Service::builder("empty")
        .broker(MemoryBroker::new())
        .with_registered_subscribers()
        .build()
        .expect_err("no registered subscriber must be an error");
    assert!(
        matches!(&error, ServiceError::NoRegisteredSubscribers { service } if service == "empty"),
        "{error:?}"
    );
    let text = error.to_string();
    for fragment in [
        "none are registered in this binary",
        "the linker drops that crate",
        "use that_crate as _;",
        "ServiceBuilder::subscribe",
    ] {
        assert!(text.contains(fragment), "{fragment:?} missing in: {text}");
    }
}

// ---- broker URLs --------------------------------------------------------------------------

#[test]
fn unknown_broker_scheme_lists_the_known_ones() {
    let error = broker::connect("nats://x").expect_err("nats is not linked");
    match &error {
        BrokerUrlError::UnknownScheme { scheme, known, .. } => {
            assert_eq!(scheme, "nats");
            assert!(known.contains(&"memory"), "{known:?}");
        }
        other => panic!("expected UnknownScheme, got {other:?}"),
    }
    let text = error.to_string();
    assert!(text.contains("\"nats\""), "{text}");
    assert!(text.contains("known schemes: memory"), "{text}");
}

#[test]
fn invalid_memory_urls_are_refused() {
    for (url, problem) in [
        (
            "memory://name?capacity=abc",
            "query parameter capacity must be a whole number, not \"abc\"",
        ),
        (
            "memory://name?colour=1",
            "unknown query parameter \"colour\"; the memory broker knows capacity, publish_timeout_ms and batch_wait_us",
        ),
    ] {
        match broker::connect(url) {
            Err(BrokerUrlError::Invalid {
                url: reported,
                problem: found,
            }) => {
                assert_eq!(reported, url);
                assert_eq!(found, problem);
            }
            other => panic!("{url}: expected Invalid, got {other:?}"),
        }
    }
    let broker = broker::connect("memory://name?capacity=8&publish_timeout_ms=100&batch_wait_us=0")
        .expect("valid settings");
    assert_eq!(broker.address(), "memory://name");
}

// ---- context ------------------------------------------------------------------------------

#[test]
fn reserved_metadata_names_are_refused() {
    for name in [
        "ce_id",
        "Traceparent",
        "x-death",
        "Micro-ID",
        "content-type",
    ] {
        let error = Context::new()
            .with_metadata(name, "spoofed")
            .expect_err(name);
        assert_eq!(
            error,
            MetadataError::Reserved {
                name: name.to_owned()
            }
        );
        assert!(error.to_string().contains("is reserved"), "{error}");

        let mut ctx = Context::new();
        assert!(
            ctx.metadata_mut().insert(name, "spoofed").is_err(),
            "{name}"
        );
        assert!(ctx.metadata().is_empty(), "{name} was set anyway");
    }
    let ctx = Context::new()
        .with_metadata("tenant", "t-1")
        .expect("plain names are fine");
    assert_eq!(ctx.metadata().get("TENANT"), Some("t-1"));
}

// ---- running ------------------------------------------------------------------------------

#[derive(Clone)]
struct Calls(mpsc::UnboundedSender<String>);

async fn reject_blocked(user: UserCreated, State(calls): State<Calls>) -> Outcome {
    let _ = calls.0.send(user.user_id.clone());
    Outcome::dead_letter(format!("user {} is blocklisted", user.user_id))
}

#[tokio::test]
async fn explicit_dead_letter_is_rejected_after_one_attempt() {
    let broker = MemoryBroker::new();
    let (dlq_subscription, mut dead_letters) = collect_raw(&broker, &format!("{TOPIC}.dlq")).await;
    let (calls_tx, mut calls) = Collector::new(WAIT);
    let running = Service::builder("mailer")
        .broker(broker.clone())
        .state(Calls(calls_tx))
        .subscribe_with(
            TOPIC,
            mailer().retry(RetryPolicy::exponential(5, Duration::from_millis(1))),
            reject_blocked,
        )
        .build()
        .expect("build")
        .start()
        .await
        .expect("start");
    let receipt = running
        .publisher::<UserCreated>(TOPIC)
        .publish(&user())
        .await
        .expect("publish");

    let dead = dead_letters.next("the dead letter").await;
    assert_eq!(calls.next("the handler").await, "u-1");
    let headers = dead.headers();
    assert_eq!(headers.get_str(names::X_EVENT_ERROR_KIND), Some("rejected"));
    assert_eq!(
        headers.get_str(names::X_EVENT_ERROR),
        Some("user u-1 is blocklisted")
    );
    assert_eq!(headers.get_str(names::X_EVENT_ATTEMPTS), Some("1"));
    assert_eq!(headers.get_str(names::X_EVENT_ORIGINAL_TOPIC), Some(TOPIC));
    assert_eq!(
        headers.get_str(names::X_EVENT_ORIGINAL_POSITION),
        Some(receipt.position().to_string().as_str())
    );
    assert!(
        headers
            .get_str(names::X_EVENT_HANDLER)
            .is_some_and(|h| h.ends_with("reject_blocked")),
        "{headers:?}"
    );
    assert!(
        !headers.contains(names::X_EVENT_PAYLOAD_KIND),
        "{headers:?}"
    );
    assert_eq!(headers.message_id(), receipt.message_id());
    assert_eq!(headers.message_type(), Some("users.v1.UserCreated"));
    assert_eq!(dead.payload().as_ref(), user().encode_to_vec().as_slice());

    // no handler runs once the service stopped
    let report = calls
        .assert_empty_after("the handler ran once", running.stop())
        .await;
    assert!(!report.timed_out, "{report:?}");
    // the stopped service published its dead letters before stop returned: the dead-letter
    // subscriber, which takes them in publish order, gets them before a marker sent now
    broker
        .publish(&format!("{TOPIC}.dlq"), testkit::marker())
        .await
        .expect("publish the marker");
    dead_letters
        .assert_empty_before("one dead letter", testkit::is_marker)
        .await;
    dlq_subscription.unsubscribe().await;
}

/// A handler that reports when it starts and ends, and waits for the gate in between.
#[derive(Clone)]
struct Slow {
    gate: Arc<Semaphore>,
    entered: mpsc::UnboundedSender<String>,
    finished: mpsc::UnboundedSender<String>,
}

async fn slow_welcome(user: UserCreated, State(slow): State<Slow>) {
    let _ = slow.entered.send(user.user_id.clone());
    slow.gate
        .acquire()
        .await
        .expect("the gate is never closed")
        .forget();
    let _ = slow.finished.send(user.user_id);
}

// Paused clock: the runtime advances time only when every task is idle, so an elapsed timeout
// below proves that `run_until` is blocked (waiting for the handler), not merely slow.
#[tokio::test(start_paused = true)]
async fn run_until_drains_in_flight_handlers() {
    let gate = Arc::new(Semaphore::new(0));
    let (entered_tx, mut entered) = Collector::new(WAIT);
    let (finished_tx, mut finished) = Collector::new(WAIT);
    let service = Service::builder("mailer")
        .broker(MemoryBroker::new())
        .state(Slow {
            gate: gate.clone(),
            entered: entered_tx,
            finished: finished_tx,
        })
        .subscribe_with(TOPIC, mailer(), slow_welcome)
        .build()
        .expect("build");
    let users = service.publisher::<UserCreated>(TOPIC);
    let (started_tx, started) = oneshot::channel();
    let (stop_tx, stop) = oneshot::channel::<()>();
    // `run_until` awaits its signal only once the service has started.
    let mut run = tokio::spawn(service.run_until(async move {
        let _ = started_tx.send(());
        let _ = stop.await;
    }));
    tokio::time::timeout(WAIT, started)
        .await
        .expect("the service starts")
        .expect("signal polled");

    users.publish(&user()).await.expect("publish");
    assert_eq!(entered.next("the handler starts").await, "u-1");
    stop_tx.send(()).expect("run_until listens");

    // the second passes only once every task is idle: the handler went as far as it can
    // without the gate
    let still_running = finished
        .assert_empty_after(
            "the handler is still blocked",
            tokio::time::timeout(Duration::from_secs(1), &mut run),
        )
        .await;
    assert!(
        still_running.is_err(),
        "run_until returned while a handler was in flight: {still_running:?}"
    );

    gate.add_permits(1);
    let report = tokio::time::timeout(WAIT, run)
        .await
        .expect("run_until returns once the handler finished")
        .expect("the run task")
        .expect("run_until");
    assert_eq!(finished.next("the handler finished").await, "u-1");
    assert!(!report.timed_out, "{report:?}");
    assert_eq!(report.disconnect_error, None);
    assert_eq!(report.drained.len(), 1, "{report:?}");
    let (topic, drained) = &report.drained[0];
    assert_eq!(topic, TOPIC);
    assert_eq!(
        (drained.completed, drained.returned, drained.abandoned),
        (1, 0, 0),
        "{drained:?}"
    );
}

/// Subscribes a handler that takes a permit of `gate` for each message, then reports the
/// message's payload and acknowledges it.
async fn gated_subscriber(
    broker: &MemoryBroker,
    gate: &Arc<Semaphore>,
) -> (broker::Subscription, Collector<bytes::Bytes>) {
    let (handled_tx, handled) = Collector::new(WAIT);
    let gate = gate.clone();
    let subscription = broker
        .subscribe(
            TOPIC,
            SubscribeOptions::new(),
            handler_fn("gated", move |delivery: Delivery| {
                let gate = gate.clone();
                let handled_tx = handled_tx.clone();
                async move {
                    gate.acquire()
                        .await
                        .expect("the gate is never closed")
                        .forget();
                    let _ = handled_tx.send(delivery.payload().clone());
                    Outcome::Ack
                }
            }),
        )
        .await
        .expect("subscribe");
    (subscription, handled)
}

// Paused clock: the 200 ms publish timeout elapses as soon as every task is idle.
#[tokio::test(start_paused = true)]
async fn memory_backpressure_gives_the_message_back_and_loses_nothing() {
    let broker = MemoryBroker::builder()
        .capacity(2)
        .publish_timeout(Duration::from_millis(200))
        .build();
    let gate = Arc::new(Semaphore::new(0));
    let (subscription, mut handled) = gated_subscriber(&broker, &gate).await;
    let message = |n: u8| {
        Message::new(vec![n])
            .with_header("ce_id", format!("m-{n}"))
            .with_key("user-1")
    };

    // One message in the (blocked) handler and one waiting fill the two slots.
    broker
        .publish(TOPIC, message(1))
        .await
        .expect("first publish");
    broker
        .publish(TOPIC, message(2))
        .await
        .expect("second publish");
    // the publish timeout passes only once every task, the handler's included, is idle: the
    // handler went as far as it can without the gate
    let error = handled
        .assert_empty_after(
            "the handler is still blocked",
            broker.publish(TOPIC, message(3)),
        )
        .await
        .expect_err("the third publish finds the queue full");
    match error.broker_error() {
        BrokerError::Timeout {
            broker, timeout, ..
        } => {
            assert_eq!(*broker, "memory");
            assert_eq!(*timeout, Duration::from_millis(200));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(error.topic(), TOPIC);
    let returned = error.into_message();
    assert_eq!(returned, message(3), "headers, key and payload given back");

    gate.add_permits(16);
    broker
        .publish(TOPIC, returned)
        .await
        .expect("publishing works again");
    broker.publish(TOPIC, message(4)).await.expect("and again");

    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(handled.next("every accepted message").await);
    }
    assert_eq!(
        got,
        [[1u8], [2], [3], [4]].map(|b| bytes::Bytes::copy_from_slice(&b))
    );
    // the subscriber takes its queue in order: a second delivery of any of them would come
    // before a marker published now
    let marker = testkit::marker();
    broker
        .publish(TOPIC, marker.clone())
        .await
        .expect("publish the marker");
    handled
        .assert_empty_before("each message handled once", |payload| {
            *payload == marker.payload
        })
        .await;
    let report = subscription.unsubscribe().await;
    assert_eq!(report.abandoned, 0, "{report:?}");
}

// A publisher waiting on a full queue is woken once an eighth of the capacity is free, and
// nothing published after it overtakes it, not even through the `try_publish` fast path.
#[tokio::test]
async fn memory_waiting_publisher_is_not_overtaken() {
    let broker = MemoryBroker::builder().capacity(16).build();
    let gate = Arc::new(Semaphore::new(0));
    let (subscription, mut handled) = gated_subscriber(&broker, &gate).await;
    for n in 0..16u8 {
        match broker.try_publish(TOPIC, Message::new(vec![n])) {
            TryPublish::Done(receipt) => {
                receipt.expect("room in the queue");
            }
            TryPublish::WouldWait(_) => panic!("message {n} found no room in a 16-slot queue"),
        }
    }
    let waiting = tokio::spawn({
        let broker = broker.clone();
        async move { broker.publish(TOPIC, Message::new(vec![16])).await }
    });
    // on this single-threaded runtime, the spawned publish runs until it waits for room
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished(), "the queue is full");

    // one slot free: the waiting publisher sleeps on, and a new message may not pass it
    gate.add_permits(1);
    assert_eq!(handled.next("message 0").await[..], [0]);
    let message = match broker.try_publish(TOPIC, Message::new(vec![17])) {
        TryPublish::WouldWait(message) => message,
        TryPublish::Done(result) => panic!("overtook the waiting publisher: {result:?}"),
    };
    // a woken publisher would run now: it was not woken for one free slot
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished(), "woken before two slots were free");

    // two slots free: the waiting publisher goes first
    gate.add_permits(1);
    assert_eq!(handled.next("message 1").await[..], [1]);
    waiting
        .await
        .expect("publish task")
        .expect("publish after room was made");
    broker
        .publish(TOPIC, message)
        .await
        .expect("publish after the waiting one");

    gate.add_permits(64);
    let rest = handled.until("every message", |got| got.len() == 16).await;
    let rest: Vec<u8> = rest.iter().map(|payload| payload[0]).collect();
    assert_eq!(rest, (2..18).collect::<Vec<u8>>(), "in publish order");
    subscription.unsubscribe().await;
}

// The only member of a queue group takes waiting messages in batches. When it leaves, the
// messages it took but never started, and the one it was cut off in, go back to the group in
// publish order.
#[tokio::test]
async fn memory_batch_goes_back_to_the_group_in_order() {
    const GROUP: &str = "workers";
    let broker = MemoryBroker::new();
    let (started_tx, mut started) = Collector::new(WAIT);
    let stuck = broker
        .subscribe(
            TOPIC,
            SubscribeOptions::new()
                .queue(GROUP)
                .drain_timeout(Duration::from_millis(50)),
            handler_fn("stuck", move |delivery: Delivery| {
                let started_tx = started_tx.clone();
                async move {
                    let _ = started_tx.send(delivery.payload()[0]);
                    std::future::pending::<Outcome>().await
                }
            }),
        )
        .await
        .expect("subscribe the stuck member");
    for n in 0..5u8 {
        broker
            .publish(TOPIC, Message::new(vec![n]))
            .await
            .expect("publish");
    }
    // the stuck member holds message 0 and, alone in its group, took the others with it
    assert_eq!(started.next("the stuck member starts").await, 0);

    let (handled_tx, mut handled) = Collector::new(WAIT);
    let healthy = broker
        .subscribe(
            TOPIC,
            SubscribeOptions::new().queue(GROUP),
            handler_fn("healthy", move |delivery: Delivery| {
                let handled_tx = handled_tx.clone();
                async move {
                    let _ = handled_tx.send(delivery.payload()[0]);
                    Outcome::Ack
                }
            }),
        )
        .await
        .expect("subscribe the healthy member");
    handled
        .assert_quiet(
            "the batch is held by the stuck member",
            Duration::from_millis(50),
        )
        .await;

    // no handler of the stuck member runs once it left
    let report = started
        .assert_empty_after("the stuck member took nothing else", stuck.unsubscribe())
        .await;
    assert_eq!(report.abandoned, 1, "{report:?}");
    let got = handled.until("every message", |got| got.len() == 5).await;
    assert_eq!(got, [0, 1, 2, 3, 4], "in publish order");
    healthy.unsubscribe().await;
}
