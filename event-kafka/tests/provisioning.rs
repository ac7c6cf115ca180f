//! Topics and their dead-letter topics on the real broker: a subscription whose dead-letter
//! topic is missing fails at once naming it, and a service built from a URL with
//! `create_topics=true` creates the topics it subscribes and publishes to.

mod common;

use std::time::Duration;

use event_core::broker::{Broker, BrokerError, Outcome, StartFrom, SubscribeOptions, handler_fn};
use event_core::testkit::{Collector, unique};
use event_core::{Service, State, error_chain};
use event_kafka::{KafkaBroker, TopicSpec};
use event_proto::users::v1::UserCreated;
use rdkafka::producer::Producer;

const WAIT: Duration = Duration::from_secs(30);

/// The partition count of `topic`, `None` when it does not exist.
fn partitions(admin: &KafkaBroker, topic: &str) -> Option<usize> {
    let metadata = tokio::task::block_in_place(|| {
        admin
            .producer()
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(10))
    })
    .expect("read metadata");
    metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len())
        .filter(|n| *n > 0)
}

/// A broker URL for the broker under test, with `params`.
fn url(params: &str) -> String {
    format!(
        "kafka://{}?client_id=provisioning-test&linger_ms=1&{params}",
        common::bootstrap()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_dead_letter_topic_fails_the_subscription_naming_it() {
    let broker = common::connect().await;
    let topic = unique("no-dlq");
    broker
        .ensure_topics(&[TopicSpec::new(&topic)])
        .await
        .expect("create the topic alone");
    let never = || handler_fn("never", |_| async { Outcome::Ack });

    let err = broker
        .subscribe(&topic, SubscribeOptions::new().queue(unique("g")), never())
        .await
        .expect_err("the dead-letter topic is missing");
    let dlq = format!("{topic}.dlq");
    match &err {
        BrokerError::TopicNotFound { topic: missing, .. } => {
            assert_eq!(missing.as_str(), dlq.as_str())
        }
        other => panic!("{other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&format!("topic {dlq:?} does not exist"))
            && text.contains(&format!(
                "dead-letter topic of the subscription to {topic:?}"
            ))
            && text.contains("ensure_topics")
            && text.contains("create_topics=true"),
        "{text}"
    );
    assert_eq!(partitions(&broker, &dlq), None, "nothing was created");

    // a dead-letter topic of its own is checked the same way
    let own = unique("own-dlq");
    let err = broker
        .subscribe(
            &topic,
            SubscribeOptions::new().dead_letter_topic(&own),
            never(),
        )
        .await
        .expect_err("that dead-letter topic is missing too");
    assert!(
        matches!(&err, BrokerError::TopicNotFound { topic, .. } if *topic == own),
        "{err:?}"
    );

    // once it exists, the subscription starts
    broker
        .ensure_topics(&[TopicSpec::new(&dlq)])
        .await
        .expect("create the dead-letter topic");
    let subscription = broker
        .subscribe(&topic, SubscribeOptions::new(), never())
        .await
        .expect("subscribe");
    subscription.unsubscribe().await;
}

#[derive(Clone)]
struct Seen(tokio::sync::mpsc::UnboundedSender<UserCreated>);

async fn on_user(user: UserCreated, State(seen): State<Seen>) {
    let _ = seen.0.send(user);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_from_a_create_topics_url_creates_what_it_uses() {
    let admin = common::connect().await;
    let topic = unique("provisioned");
    let dlq = format!("{topic}.dlq");
    let published_only = unique("provisioned-publish");
    assert_eq!(partitions(&admin, &topic), None, "a fresh topic");

    let broker =
        event_core::broker::connect(&url("create_topics=true&partitions=3")).expect("a kafka URL");
    let (seen_tx, mut seen) = Collector::new(WAIT);
    let running = Service::builder("provisioning-test")
        .broker(broker.clone())
        .state(Seen(seen_tx))
        .subscribe_with(
            topic.as_str(),
            SubscribeOptions::new()
                .queue(unique("g"))
                .start_from(StartFrom::Earliest),
            on_user,
        )
        .build()
        .expect("build")
        .start()
        .await
        .unwrap_or_else(|e| panic!("start: {}", error_chain(&e)));
    assert_eq!(partitions(&admin, &topic), Some(3));
    assert_eq!(
        partitions(&admin, &dlq),
        Some(3),
        "the dead-letter topic too"
    );

    let user = UserCreated {
        user_id: "u-1".into(),
        email: "ada@example.com".into(),
        ..Default::default()
    };
    running
        .publisher::<UserCreated>(topic.as_str())
        .publish(&user)
        .await
        .unwrap_or_else(|e| panic!("publish: {}", error_chain(&e)));
    assert_eq!(seen.next("the published user").await, user);

    // a publish creates the topic it publishes to
    running
        .publisher::<UserCreated>(published_only.as_str())
        .publish(&user)
        .await
        .unwrap_or_else(|e| panic!("publish to a new topic: {}", error_chain(&e)));
    assert_eq!(partitions(&admin, &published_only), Some(3));
    assert_eq!(
        partitions(&admin, &format!("{published_only}.dlq")),
        None,
        "a publish creates no dead-letter topic"
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_create_topics_the_errors_name_the_setting() {
    let broker = event_core::broker::connect(&url("partitions=3")).expect("a kafka URL");
    let topic = unique("unprovisioned");
    let (seen_tx, _seen) = Collector::new(WAIT);
    let err = Service::builder("provisioning-test")
        .broker(broker.clone())
        .state(Seen(seen_tx))
        .subscribe(topic.as_str(), on_user)
        .build()
        .expect("build")
        .start()
        .await
        .expect_err("the topic is missing");
    let text = error_chain(&err);
    assert!(
        text.contains(&format!("topic {topic:?} does not exist")) && text.contains("create_topics"),
        "{text}"
    );

    let service = Service::builder("provisioning-test")
        .broker(broker.clone())
        .build()
        .expect("build");
    let err = service
        .publisher::<UserCreated>(topic.as_str())
        .publish(&UserCreated::default())
        .await
        .expect_err("the topic is missing");
    let text = error_chain(&err);
    assert!(
        text.contains(&topic) && text.contains("KafkaBrokerBuilder::create_topics"),
        "{text}"
    );
    let admin = common::connect().await;
    assert_eq!(partitions(&admin, &topic), None, "nothing was created");
    broker.disconnect().await.expect("disconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_partitions_the_cluster_defaults_apply() {
    let broker = event_core::broker::connect(&url("create_topics=true")).expect("a kafka URL");
    let topic = unique("cluster-defaults");
    broker
        .publish(&topic, event_core::broker::Message::new("x"))
        .await
        .unwrap_or_else(|e| panic!("publish: {}", error_chain(&e)));
    let admin = common::connect().await;
    assert!(partitions(&admin, &topic).is_some(), "created");
    broker.disconnect().await.expect("disconnect");
}
