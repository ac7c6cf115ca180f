//! Traces: one trace across three hops, a foreign producer's `Traceparent` continued, an
//! unsampled trace kept out of the OpenTelemetry layer.

use std::collections::HashMap;

use bytes::Bytes;
use opentelemetry::Value;
use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use tracing::Instrument;

use crate::broker::{Message, SubscribeOptions};
use crate::headers::names;
use crate::publish::Publisher;
use crate::service::Service;
use crate::testkit::{BrokerFactory, Collector, Probe, delivery_subscriber, unique};

use super::relay::{relay, start_relay, start_watched_relay};
use super::{assert_attribute, assert_child, attribute, attribute_text, install, one, value};

/// An action started in one service crosses three topics and three handlers as one trace:
/// `place` → `publish t1` → `process t1` → `publish t2` → `process t2` → `publish t3` →
/// `process t3`, each span the child of the one before, with the messaging attributes.
pub async fn trace_crosses_three_hops<F: BrokerFactory>(factory: &F) {
    let telemetry = install();
    let broker = factory.broker().await;
    let case = unique("trace");
    let topics: Vec<String> = (1..=3).map(|i| format!("{case}.hop{i}")).collect();
    for topic in &topics {
        factory.create_topic(topic).await;
    }
    // one queue group per hop, as three services would have, unique to the case so that no
    // member left behind by another run has to time out before this one joins (Kafka)
    let groups: Vec<String> = (1..=3).map(|i| format!("{case}.service{i}")).collect();
    let (done_tx, mut done) = Collector::new(factory.timeout());
    let last = move |probe: Probe| {
        let done_tx = done_tx.clone();
        async move {
            let _ = done_tx.send(probe.seq);
        }
    };
    let mut builder = Service::builder("telemetry").broker(broker.clone());
    for ((from, to), group) in topics.iter().zip(topics.iter().skip(1)).zip(&groups) {
        let next = Publisher::<Probe>::new(broker.clone(), "telemetry", to.as_str());
        builder = builder.subscribe_with(
            from.as_str(),
            SubscribeOptions::new().queue(group.as_str()),
            relay(next),
        );
    }
    let service = builder
        .subscribe_with(
            topics[2].as_str(),
            SubscribeOptions::new().queue(groups[2].as_str()),
            last,
        )
        .build()
        .expect("build")
        .start()
        .await
        .expect("start");

    let first = Publisher::<Probe>::new(broker.clone(), "origin", topics[0].as_str());
    let root = tracing::info_span!(target: "testkit", "place", testkit.case = %case);
    let receipt = async {
        first
            .publish(&Probe {
                seq: 7,
                note: "traced".into(),
            })
            .await
    }
    .instrument(root.clone())
    .await
    .expect("publish");
    drop(root);
    assert_eq!(done.next("the third hop").await, 7);
    // the drain settles every delivery, which ends its process span
    service.stop().await;

    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let spans = telemetry.spans_of(&case, &names);
    let root = one(&spans, "place");
    let system = broker.messaging_system();
    let first_id = receipt.message_id().expect("id");
    let mut parent = root;
    for (topic, group) in topics.iter().zip(&groups) {
        let publish = one(&spans, &format!("publish {topic}"));
        let process = one(&spans, &format!("process {topic}"));
        assert_child(publish, parent);
        assert_child(process, publish);
        assert_eq!(publish.span_kind, SpanKind::Producer);
        assert_eq!(process.span_kind, SpanKind::Consumer);
        for span in [publish, process] {
            assert_attribute(span, "messaging.system", system);
            assert_attribute(span, "messaging.destination.name", topic);
            assert_attribute(span, "cloudevents.event_type", "event.testkit.v1.Probe");
        }
        assert_attribute(publish, "messaging.operation.type", "send");
        assert_attribute(process, "messaging.operation.type", "process");
        assert_attribute(process, "messaging.consumer.group.name", group);
        assert_attribute(process, "event.outcome", "acked");
        assert_attribute(process, "event.attempt", "1");
        // integers are recorded as integers, not as text
        for (span, key) in [
            (process, "event.attempt"),
            (process, "messaging.message.body.size"),
            (publish, "messaging.message.body.size"),
        ] {
            assert!(
                matches!(value(span, key), Some(Value::I64(_))),
                "{key} of {:?} is not an i64: {:?}",
                span.name,
                value(span, key)
            );
        }
        assert_attribute(
            process,
            "trace_id",
            &root.span_context.trace_id().to_string(),
        );
        let id = attribute(publish, "messaging.message.id").expect("publish span message id");
        assert_attribute(process, "messaging.message.id", &id);
        if topic == &topics[0] {
            assert_eq!(id, first_id, "the first publish span names the message");
        }
        // the chain's correlation id is the first message's id on every hop
        assert_attribute(process, "correlation_id", first_id);
        // where each message sat, as its broker writes it, and the backend's own attributes
        assert!(
            attribute(process, "event.position").is_some(),
            "process span without a position: {:#?}",
            process.attributes
        );
        let mut expected = Vec::new();
        broker.message_attributes(topic, &Message::new(Bytes::new()), &mut |key, value| {
            expected.push((key, attribute_text(value)));
        });
        for (key, text) in &expected {
            assert_attribute(publish, key, text);
            assert_attribute(process, key, text);
        }
        if topic == &topics[0] && !receipt.position().is_unknown() {
            assert_attribute(publish, "event.position", &receipt.position().to_string());
            if let Some(key) = receipt.position().kind().attribute() {
                assert_attribute(publish, key, &receipt.position().number().to_string());
            }
            if let Some(partition) = receipt.position().partition() {
                assert_attribute(
                    publish,
                    "messaging.destination.partition.id",
                    &partition.to_string(),
                );
            }
        }
        parent = process;
    }
}

/// A message whose `Traceparent` (go-micro's spelling) comes from a foreign producer continues
/// that trace: the process span is the child of the foreign span, and what the handler
/// publishes carries the same trace id with the handler's publish span as parent.
pub async fn foreign_traceparent_continues<F: BrokerFactory>(factory: &F) {
    let telemetry = install();
    let broker = factory.broker().await;
    let topic = unique("foreign-trace");
    let next_topic = format!("{topic}.next");
    factory.create_topic(&topic).await;
    factory.create_topic(&next_topic).await;
    let (tx, mut received) = Collector::new(factory.timeout());
    let observer = delivery_subscriber(&*broker, &next_topic, tx).await;
    let next = Publisher::<Probe>::new(broker.clone(), "relay", next_topic.as_str());
    let service = start_relay(broker.clone(), &topic, relay(next)).await;

    let trace_id = TraceId::from_bytes(*uuid::Uuid::now_v7().as_bytes());
    let span_id = SpanId::from_bytes(0x00f0_67aa_0ba9_02b7_u64.to_be_bytes());
    let foreign = Publisher::<Probe>::new(broker.clone(), "go-service", topic.as_str());
    let mut message = foreign.encode(
        &Probe {
            seq: 1,
            note: "from go".into(),
        },
        None,
    );
    message
        .headers
        .append("Traceparent", format!("00-{trace_id}-{span_id}-01"));
    broker.publish(&topic, message).await.expect("publish");
    let follow_up = received.next("the follow-up").await;
    service.stop().await;
    observer.unsubscribe().await;

    let spans = telemetry.spans_of("", &[topic.as_str(), next_topic.as_str()]);
    let process = one(&spans, &format!("process {topic}"));
    let publish = one(&spans, &format!("publish {next_topic}"));
    assert_eq!(process.span_context.trace_id(), trace_id);
    assert_eq!(process.parent_span_id, span_id);
    assert!(process.parent_span_is_remote);
    assert_attribute(process, "trace_id", &trace_id.to_string());
    assert_child(publish, process);
    let traceparent = follow_up
        .headers()
        .get_str(names::TRACEPARENT)
        .expect("the follow-up carries traceparent");
    assert_eq!(
        traceparent,
        format!("00-{trace_id}-{}-01", publish.span_context.span_id()),
        "the follow-up's parent is the handler's publish span"
    );
    assert_eq!(
        follow_up.headers().get_all(names::TRACEPARENT).count(),
        1,
        "one traceparent, the passed-through one replaced"
    );
}

/// A message whose `traceparent` says "not sampled" is handled, and its handler's follow-up
/// published, in spans the OpenTelemetry layer never sees (the layer leaves out
/// [`UNSAMPLED_TARGET`](crate::telemetry::UNSAMPLED_TARGET)); the follow-up carries the same
/// `traceparent`, so the next service decides the same. A sampled message sent after it
/// through the same relay is exported as usual: the control that the layer was listening.
pub async fn unsampled_trace_stays_unsampled<F: BrokerFactory>(factory: &F) {
    let telemetry = install();
    let broker = factory.broker().await;
    let topic = unique("unsampled");
    let next_topic = format!("{topic}.next");
    factory.create_topic(&topic).await;
    factory.create_topic(&next_topic).await;
    let (tx, mut received) = Collector::new(factory.timeout());
    let observer = delivery_subscriber(&*broker, &next_topic, tx).await;
    let (service, seen_by_layer) = start_watched_relay(broker.clone(), &topic, &next_topic).await;

    let foreign = Publisher::<Probe>::new(broker.clone(), "go-service", topic.as_str());
    let span_id = SpanId::from_bytes(0x00f0_67aa_0ba9_02b7_u64.to_be_bytes());
    let mut traces = Vec::new();
    for (seq, flags) in [(1, "00"), (2, "01")] {
        let trace_id = TraceId::from_bytes(*uuid::Uuid::now_v7().as_bytes());
        let traceparent = format!("00-{trace_id}-{span_id}-{flags}");
        let mut message = foreign.encode(
            &Probe {
                seq,
                note: format!("flags {flags}"),
            },
            None,
        );
        message.headers.append("Traceparent", traceparent.as_str());
        // one key: one partition, handled in this order
        message.key = Some(bytes::Bytes::from_static(b"one"));
        broker.publish(&topic, message).await.expect("publish");
        traces.push((trace_id, traceparent));
    }
    let mut follow_ups = HashMap::new();
    for _ in 0..2 {
        let delivery = received.next("a follow-up").await;
        let probe: Probe = prost::Message::decode(delivery.payload().clone()).expect("a probe");
        follow_ups.insert(probe.seq, delivery);
    }
    service.stop().await;
    observer.unsubscribe().await;

    assert_eq!(
        seen_by_layer.by_seq(),
        HashMap::from([(1, false), (2, true)]),
        "the layer must know the sampled message's span (2) and not the unsampled one's (1)"
    );
    let (unsampled, unsampled_traceparent) = &traces[0];
    let (sampled, _) = &traces[1];
    let unsampled_follow_up = &follow_ups[&1];
    assert_eq!(
        unsampled_follow_up
            .headers()
            .get_all(names::TRACEPARENT)
            .map(|v| v.to_str().expect("text"))
            .collect::<Vec<_>>(),
        [unsampled_traceparent.as_str()],
        "the unsampled traceparent passes on unchanged"
    );
    let sampled_traceparent = follow_ups[&2]
        .headers()
        .get_str(names::TRACEPARENT)
        .expect("the sampled follow-up carries traceparent");
    assert!(
        sampled_traceparent.starts_with(&format!("00-{sampled}-"))
            && sampled_traceparent.ends_with("-01"),
        "{sampled_traceparent}"
    );

    let spans = telemetry.spans_of("", &[topic.as_str(), next_topic.as_str()]);
    let process = one(&spans, &format!("process {topic}"));
    let publish = one(&spans, &format!("publish {next_topic}"));
    assert_eq!(process.span_context.trace_id(), *sampled);
    assert_child(publish, process);
    assert!(
        spans
            .iter()
            .all(|span| span.span_context.trace_id() != *unsampled),
        "spans of the unsampled trace reached the layer: {:#?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
}
