//! The typed layer on the broker: the header scheme, context propagation through a handler,
//! type mismatches and handler errors dead-lettered with their reasons.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::broker::SubscribeOptions;
use crate::context::Context;
use crate::headers::names;
use crate::publish::Publisher;
use crate::service::Service;
use crate::testkit::collect::delivery_subscriber;
use crate::testkit::{BrokerFactory, Collector, OtherProbe, Probe, fast_retry, unique};

/// A typed publisher writes the header scheme; context metadata and trace pass through.
pub async fn typed_headers_roundtrip<F: BrokerFactory>(factory: &F) {
    let broker = factory.broker().await;
    let topic = unique("typed");
    factory.create_topic(&topic).await;
    let (tx, mut rx) = Collector::new(factory.timeout());
    let sub = delivery_subscriber(&*broker, &topic, tx).await;
    let publisher = Publisher::<Probe>::new(broker.clone(), "testkit-source", topic.as_str());
    let mut ctx = Context::new()
        .with_metadata("tenant", "t-42")
        .expect("metadata");
    ctx.set_trace(crate::context::TraceContext {
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        ..Default::default()
    });
    let receipt = publisher
        .publish_with(
            &ctx,
            &Probe {
                seq: 7,
                note: "hello".into(),
            },
        )
        .await
        .expect("publish");
    let d = rx.next("typed message").await;
    let h = d.headers();
    // a transport that carries the other attributes in places of its own may leave the spec
    // version out (RabbitMQ's lean wire profile); a value that arrives is the one written
    assert!(
        matches!(h.get_str("ce_specversion"), None | Some("1.0")),
        "{:?}",
        h.get("ce_specversion")
    );
    assert_eq!(h.message_type(), Some("event.testkit.v1.Probe"));
    assert_eq!(h.source(), Some("testkit-source"));
    assert_eq!(h.content_type(), Some("application/protobuf"));
    assert_eq!(h.message_id(), receipt.message_id());
    let id = uuid::Uuid::parse_str(h.message_id().expect("id")).expect("uuid id");
    assert_eq!(id.get_version_num(), 7);
    assert!(
        h.time().is_some(),
        "ce_time parses as RFC 3339: {:?}",
        h.get("ce_time")
    );
    // read as the handler's context reads it (the header if present, else the message id): a
    // transport may leave out a correlation id that only repeats the message id
    assert_eq!(
        crate::Context::from_headers(h).correlation_id(),
        h.message_id(),
        "a chain starts at its first id"
    );
    assert_eq!(h.get_str("tenant"), Some("t-42"));
    assert_eq!(
        h.get_str("traceparent"),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    let decoded: Probe =
        prost::Message::decode(d.payload().clone()).expect("body is the bare message");
    assert_eq!(
        decoded,
        Probe {
            seq: 7,
            note: "hello".into()
        }
    );
    sub.unsubscribe().await;
}

/// A handler that publishes passes metadata, trace, correlation and causation on untouched.
pub async fn context_propagates<F: BrokerFactory>(factory: &F) {
    let broker = factory.broker().await;
    let (first, second) = (unique("chain-1"), unique("chain-2"));
    factory.create_topic(&first).await;
    factory.create_topic(&second).await;
    let (tx, mut rx) = Collector::new(factory.timeout());
    let observer = delivery_subscriber(&*broker, &second, tx).await;
    let follow_up = Publisher::<OtherProbe>::new(broker.clone(), "relay", second.as_str());
    let relay = move |probe: Probe| {
        let follow_up = follow_up.clone();
        async move {
            follow_up
                .publish(&OtherProbe {
                    text: format!("after {}", probe.seq),
                })
                .await
                .map(|_| ())
        }
    };
    let service = Service::builder("relay")
        .broker(broker.clone())
        .subscribe(first.as_str(), relay)
        .build()
        .expect("build")
        .start()
        .await
        .expect("start");
    let origin = Publisher::<Probe>::new(broker.clone(), "origin", first.as_str());
    let ctx = Context::new()
        .with_metadata("tenant", "t-7")
        .expect("metadata");
    let receipt = origin
        .publish_with(
            &ctx,
            &Probe {
                seq: 1,
                note: String::new(),
            },
        )
        .await
        .expect("publish");
    let d = rx.next("follow-up").await;
    let first_id = receipt.message_id().expect("id");
    assert_eq!(d.headers().get_str("correlation-id"), Some(first_id));
    assert_eq!(d.headers().get_str("causation-id"), Some(first_id));
    assert_eq!(d.headers().get_str("tenant"), Some("t-7"));
    assert_eq!(d.headers().source(), Some("relay"));
    assert_ne!(d.headers().message_id(), Some(first_id));
    running_shutdown(service).await;
    observer.unsubscribe().await;
}

async fn running_shutdown(service: crate::RunningService) {
    // drain, but leave the shared broker connected for the other cases
    service.stop().await;
}

/// A message of another type is diagnosed and dead-lettered once, without calling the handler.
pub async fn type_mismatch_dead_lettered<F: BrokerFactory>(factory: &F) {
    let broker = factory.broker().await;
    let topic = unique("mismatch");
    factory.create_topic(&topic).await;
    factory.create_topic(&format!("{topic}.dlq")).await;
    let (dlq_tx, mut dlq) = Collector::new(factory.timeout());
    let dlq_sub = delivery_subscriber(&*broker, &format!("{topic}.dlq"), dlq_tx).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let calls = calls.clone();
        move |_p: Probe| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
            }
        }
    };
    let service = Service::builder("typed-sub")
        .broker(broker.clone())
        .subscribe(topic.as_str(), handler)
        .build()
        .expect("build")
        .start()
        .await
        .expect("start");
    let wrong = Publisher::<OtherProbe>::new(broker.clone(), "wrong-producer", topic.as_str());
    let sent = wrong.encode(
        &OtherProbe {
            text: "not a probe".into(),
        },
        None,
    );
    broker.publish(&topic, sent.clone()).await.expect("publish");
    let d = dlq.next("dead letter").await;
    let h = d.headers();
    assert_eq!(h.get_str(names::X_EVENT_ERROR_KIND), Some("type-mismatch"));
    assert_eq!(
        h.get_str(names::X_EVENT_ORIGINAL_TOPIC),
        Some(topic.as_str())
    );
    assert_eq!(h.get_str(names::X_EVENT_ATTEMPTS), Some("1"));
    let error = h.get_str(names::X_EVENT_ERROR).expect("error header");
    assert!(
        error.contains("event.testkit.v1.Probe") && error.contains("event.testkit.v1.OtherProbe"),
        "{error}"
    );
    assert_eq!(d.payload(), &sent.payload, "original bytes kept");
    assert_eq!(
        h.message_id(),
        sent.headers.message_id(),
        "original headers kept"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "the handler must not see a mismatched message"
    );
    running_shutdown(service).await;
    dlq.assert_quiet("a second dead letter", Duration::from_millis(100))
        .await;
    dlq_sub.unsubscribe().await;
}

/// A handler that always fails: N attempts, then the dead-letter topic with reason headers.
pub async fn dead_letter_after_retries<F: BrokerFactory>(factory: &F) {
    let broker = factory.broker().await;
    let topic = unique("poison");
    factory.create_topic(&topic).await;
    factory.create_topic(&format!("{topic}.dlq")).await;
    let (dlq_tx, mut dlq) = Collector::new(factory.timeout());
    let dlq_sub = delivery_subscriber(&*broker, &format!("{topic}.dlq"), dlq_tx).await;
    // what a subscriber of the topic receives: the headers the dead letter must keep
    let (seen_tx, mut seen) = Collector::new(factory.timeout());
    let seen_sub = delivery_subscriber(&*broker, &topic, seen_tx).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let calls = calls.clone();
        move |_p: Probe| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(std::io::Error::other("database unavailable"))
            }
        }
    };
    let service = Service::builder("poisoned")
        .broker(broker.clone())
        .subscribe_with(
            topic.as_str(),
            SubscribeOptions::new().retry(fast_retry(3)),
            handler,
        )
        .build()
        .expect("build")
        .start()
        .await
        .expect("start");
    let publisher = Publisher::<Probe>::new(broker.clone(), "producer", topic.as_str());
    let sent = publisher.encode(
        &Probe {
            seq: 9,
            note: "poison".into(),
        },
        None,
    );
    broker.publish(&topic, sent.clone()).await.expect("publish");
    let d = dlq.next("dead letter").await;
    let h = d.headers();
    assert_eq!(h.get_str(names::X_EVENT_ATTEMPTS), Some("3"));
    assert_eq!(h.get_str(names::X_EVENT_ERROR_KIND), Some("handler-error"));
    assert_eq!(
        h.get_str(names::X_EVENT_ERROR),
        Some("database unavailable")
    );
    assert!(
        h.get_str(names::X_EVENT_HANDLER)
            .is_some_and(|n| !n.is_empty())
    );
    assert!(h.get_str(names::X_EVENT_ORIGINAL_POSITION).is_some());
    assert_eq!(d.payload(), &sent.payload);
    // every header as the subscriber received it: on most transports exactly as sent, on
    // one that keeps some facts coarser (RabbitMQ's lean profile: the time in whole seconds)
    // as it delivered them
    let received = seen.next("the message as subscribers receive it").await;
    for (name, value) in received.headers().iter() {
        assert_eq!(
            h.get(name.as_str()),
            Some(value),
            "original header {name} kept"
        );
    }
    for name in ["ce_id", "ce_type", "ce_source", "content-type"] {
        assert_eq!(
            h.get(name),
            sent.headers.get(name),
            "{name} as it was published"
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    running_shutdown(service).await;
    dlq_sub.unsubscribe().await;
    seen_sub.unsubscribe().await;
}

/// A proto3 JSON message (`content-type: application/json`, go-micro's default), published
/// raw with a type header and without one, is consumed by a typed subscriber as `expected`:
/// verified by its type header, and unverified without one. The caller registers `M`'s
/// descriptor first ([`crate::codec::json::register_file_descriptor_set`]) and gives the
/// JSON of `expected`.
///
/// Not in [`conformance_suite!`](crate::conformance_suite): the suite's message types have
/// no descriptor to register.
pub async fn proto_json_is_typed<F, M>(factory: &F, json: &str, expected: M)
where
    F: BrokerFactory,
    M: prost::Message + prost::Name + Default + PartialEq + std::fmt::Debug + Send + 'static,
{
    let broker = factory.broker().await;
    let topic = unique("json");
    factory.create_topic(&topic).await;
    factory.create_topic(&format!("{topic}.dlq")).await;
    let (tx, mut seen) = Collector::new(factory.timeout());
    let handler = move |event: crate::Event<M>| {
        let tx = tx.clone();
        async move {
            let _ = tx.send((event.type_verified(), event.into_message()));
        }
    };
    let service = Service::builder("testkit-json")
        .broker(broker.clone())
        .subscribe_with(
            topic.as_str(),
            SubscribeOptions::new().queue(unique("json-group")),
            handler,
        )
        .build()
        .expect("build")
        .start()
        .await
        .expect("start");
    let json_message = || {
        // one key: on a partitioned broker both land in one partition, in publish order
        crate::broker::Message::new(json.to_owned())
            .with_header(names::CONTENT_TYPE, "application/json")
            .with_key("json")
    };
    broker
        .publish(
            &topic,
            json_message().with_header(names::CE_TYPE, M::full_name()),
        )
        .await
        .expect("publish JSON with a type header");
    broker
        .publish(&topic, json_message())
        .await
        .expect("publish JSON without a type header");
    let got = seen.until("both JSON messages", |s| s.len() == 2).await;
    let verified: Vec<bool> = got.iter().map(|(verified, _)| *verified).collect();
    assert_eq!(verified, [true, false], "in publish order: {got:?}");
    for (_, message) in &got {
        assert_eq!(message, &expected);
    }
    service.stop().await;
}
