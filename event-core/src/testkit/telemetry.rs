//! Telemetry cases every broker must pass (features `testkit` and `opentelemetry`): one trace
//! across three hops, a foreign producer's `Traceparent` continued, an unsampled trace kept
//! out of the OpenTelemetry layer, and metrics that move exactly as the delivery outcomes
//! say.
//!
//! A backend runs them with [`telemetry_suite!`](crate::telemetry_suite):
//!
//! ```ignore
//! event_core::telemetry_suite!(kafka_telemetry, KafkaFactory::default());
//! ```
//!
//! [`install`] makes a process-wide tracing subscriber with an OpenTelemetry layer exporting
//! to memory, and a process-wide metrics recorder whose values can be read without resetting
//! them. Every case uses its own topics and reads only the spans and metrics labelled with
//! them, so cases run in parallel in one test binary.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use futures_util::future::BoxFuture;
use opentelemetry::trace::{SpanId, SpanKind, TraceContextExt as _, TraceId, TracerProvider as _};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;

use super::metrics::Metrics;
use super::{BrokerFactory, Collector, Probe, delivery_subscriber, fast_retry, unique};
use crate::broker::{Broker, Message, PublishError, SubscribeOptions};
use crate::headers::names;
use crate::publish::Publisher;
use crate::service::{RunningService, Service};
use crate::telemetry::{label, metric};

/// Reads what the process-wide span exporter and metrics recorder collected.
#[derive(Debug)]
pub struct Telemetry {
    spans: InMemorySpanExporter,
    metrics: &'static Metrics,
}

/// Installs the process-wide span exporter and metrics recorder once; later calls return the
/// same handle.
///
/// Call it before making brokers, publishers and services: their metrics instruments are
/// registered with the recorder installed when they are made.
///
/// # Panics
///
/// If another tracing subscriber or metrics recorder was installed first.
pub fn install() -> &'static Telemetry {
    static INSTALLED: OnceLock<Telemetry> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let metrics = super::metrics::install();
        let spans = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .build();
        let tracer = provider.tracer("event-testkit");
        // as the `telemetry` module recommends: spans of unsampled traces skip the layer
        let filter = tracing_subscriber::filter::Targets::new()
            .with_target("event", tracing::Level::INFO)
            .with_target(
                crate::telemetry::UNSAMPLED_TARGET,
                tracing_subscriber::filter::LevelFilter::OFF,
            )
            .with_target("testkit", tracing::Level::INFO);
        let subscriber = tracing_subscriber::registry().with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(filter),
        );
        tracing::subscriber::set_global_default(subscriber)
            .expect("testkit::telemetry::install: a tracing subscriber was installed before");
        Telemetry { spans, metrics }
    })
}

impl Telemetry {
    /// Finished spans whose `messaging.destination.name` is one of `topics`, or whose
    /// `testkit.case` attribute is `case`.
    pub fn spans_of(&self, case: &str, topics: &[&str]) -> Vec<SpanData> {
        self.spans
            .get_finished_spans()
            .expect("read finished spans")
            .into_iter()
            .filter(|span| {
                attribute(span, "testkit.case").is_some_and(|c| c == case)
                    || attribute(span, "messaging.destination.name")
                        .is_some_and(|t| topics.contains(&t.as_str()))
            })
            .collect()
    }

    /// The metrics recorded so far.
    pub fn metrics(&self) -> &'static Metrics {
        self.metrics
    }
}

/// The value of attribute `key` of `span` as text.
pub fn attribute(span: &SpanData, key: &str) -> Option<String> {
    value(span, key).map(|value| match value {
        Value::String(s) => s.as_str().to_owned(),
        other => other.to_string(),
    })
}

/// The value of attribute `key` of `span`, as recorded.
pub fn value<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv: &&KeyValue| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn one<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    let found: Vec<&SpanData> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one span named {name:?}; spans: {:#?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    found[0]
}

fn assert_child(child: &SpanData, parent: &SpanData) {
    assert_eq!(
        child.span_context.trace_id(),
        parent.span_context.trace_id(),
        "{:?} is not in the trace of {:?}",
        child.name,
        parent.name
    );
    assert_eq!(
        child.parent_span_id,
        parent.span_context.span_id(),
        "the parent of {:?} is not {:?}",
        child.name,
        parent.name
    );
}

fn assert_attribute(span: &SpanData, key: &str, expected: &str) {
    assert_eq!(
        attribute(span, key).as_deref(),
        Some(expected),
        "attribute {key} of {:?}: {:#?}",
        span.name,
        span.attributes
    );
}

/// A relay: handles [`Probe`]s on one topic and publishes one on the next.
fn relay(
    next: Publisher<Probe>,
) -> impl Fn(Probe) -> BoxFuture<'static, Result<(), PublishError>> + Clone + Send + Sync + 'static
{
    move |probe: Probe| {
        let next = next.clone();
        Box::pin(async move {
            tracing::info!(target: "testkit", seq = probe.seq, "relaying");
            next.publish(&probe).await.map(|_| ())
        })
    }
}

/// Starts a service named `relay` whose handler `relay` handles `topic`.
pub async fn start_relay<H, Args>(broker: Arc<dyn Broker>, topic: &str, relay: H) -> RunningService
where
    H: crate::subscribe::Handler<Probe, Args>,
    Args: 'static,
{
    Service::builder("relay")
        .broker(broker)
        .subscribe(topic, relay)
        .build()
        .expect("build the relay service")
        .start()
        .await
        .expect("start the relay service")
}

/// Starts a [`watched_relay`] from `topic` to `next_topic`: the service, and what its
/// handler saw.
pub async fn start_watched_relay(
    broker: Arc<dyn Broker>,
    topic: &str,
    next_topic: &str,
) -> (RunningService, LayerSeen) {
    let next = Publisher::<Probe>::new(broker.clone(), "relay", next_topic);
    let seen = LayerSeen::default();
    let service = start_relay(broker, topic, watched_relay(next, seen.clone())).await;
    (service, seen)
}

/// Which relayed [`Probe`]s (by `seq`) ran in a span the OpenTelemetry layer knows: a span
/// the layer leaves out has no OpenTelemetry context.
#[derive(Clone, Debug, Default)]
pub struct LayerSeen(Arc<std::sync::Mutex<HashMap<u64, bool>>>);

impl LayerSeen {
    /// Per `seq`, whether the layer knew the handler's span.
    pub fn by_seq(&self) -> HashMap<u64, bool> {
        self.0.lock().expect("not poisoned").clone()
    }
}

/// A relay (handles [`Probe`]s and publishes each on with `next`) that also notes in `seen`
/// whether the OpenTelemetry layer knows the span its handler runs in.
pub fn watched_relay(
    next: Publisher<Probe>,
    seen: LayerSeen,
) -> impl Fn(Probe) -> BoxFuture<'static, Result<(), PublishError>> + Clone + Send + Sync + 'static
{
    let relay = relay(next);
    move |probe: Probe| {
        let known = tracing::Span::current()
            .context()
            .span()
            .span_context()
            .is_valid();
        seen.0
            .lock()
            .expect("not poisoned")
            .insert(probe.seq, known);
        relay(probe)
    }
}

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
        match system {
            "kafka" => {
                assert!(
                    attribute(process, "messaging.kafka.offset").is_some(),
                    "kafka process span without offset: {:#?}",
                    process.attributes
                );
                assert!(attribute(publish, "messaging.kafka.offset").is_some());
                assert!(attribute(process, "messaging.destination.partition.id").is_some());
            }
            "rabbitmq" => {
                assert_attribute(process, "messaging.rabbitmq.destination.routing_key", topic);
                assert_attribute(publish, "messaging.rabbitmq.destination.routing_key", topic);
                assert!(attribute(process, "messaging.rabbitmq.message.delivery_tag").is_some());
            }
            _ => {}
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

/// Counters move exactly as outcomes say: one message acked at once, one retried once then
/// acked, one retried to exhaustion and dead-lettered, one undecodable and dead-lettered.
pub async fn metrics_follow_outcomes<F: BrokerFactory>(factory: &F) {
    let telemetry = install();
    let broker = factory.broker().await;
    let topic = unique("metrics");
    let dlq = format!("{topic}.dlq");
    factory.create_topic(&topic).await;
    factory.create_topic(&dlq).await;
    let (dlq_tx, mut dead_letters) = Collector::new(factory.timeout());
    let dlq_sub = delivery_subscriber(&*broker, &dlq, dlq_tx).await;
    let failures = Arc::new(std::sync::Mutex::new(HashMap::<u64, u32>::new()));
    let (acked_tx, mut acked) = Collector::new(factory.timeout());
    let handler = {
        let failures = failures.clone();
        move |probe: Probe| {
            let failures = failures.clone();
            let acked_tx = acked_tx.clone();
            async move {
                let runs = {
                    let mut failures = failures.lock().expect("lock");
                    let runs = failures.entry(probe.seq).or_default();
                    *runs += 1;
                    *runs
                };
                match (probe.seq, runs) {
                    (1, 1) | (2, _) => Err(std::io::Error::other("not yet")),
                    _ => {
                        let _ = acked_tx.send(probe.seq);
                        Ok(())
                    }
                }
            }
        }
    };
    let group = format!("{topic}.counted");
    let group = group.as_str();
    let service = Service::builder("metrics")
        .broker(broker.clone())
        .subscribe_with(
            topic.as_str(),
            SubscribeOptions::new().queue(group).retry(fast_retry(3)),
            handler,
        )
        .build()
        .expect("build")
        .start()
        .await
        .expect("start");
    let publisher = Publisher::<Probe>::new(broker.clone(), "metrics", topic.as_str());
    for seq in 0..3 {
        publisher
            .publish(&Probe {
                seq,
                note: String::new(),
            })
            .await
            .expect("publish");
    }
    // plain text through the raw API: a decode failure
    broker
        .publish(
            &topic,
            Message::new("New order received: 3 items (see the web shop for details)"),
        )
        .await
        .expect("publish");

    let mut seen = acked.until("two acked", |s| s.len() == 2).await;
    seen.sort_unstable();
    assert_eq!(seen, [0, 1]);
    let letters = dead_letters
        .until("two dead letters", |d| d.len() == 2)
        .await;
    let kinds: Vec<_> = letters
        .iter()
        .map(|d| {
            d.headers()
                .get_str(names::X_EVENT_ERROR_KIND)
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    // the drain settles everything, so the counters are final
    service.stop().await;
    dlq_sub.unsubscribe().await;

    let backend = broker.name();
    let of = [
        (label::TOPIC, topic.as_str()),
        (label::GROUP, group),
        (label::BACKEND, backend),
        (label::MESSAGE_TYPE, "event.testkit.v1.Probe"),
    ];
    let with = |extra: (&'static str, &'static str)| {
        let mut labels = of.to_vec();
        labels.push(extra);
        labels
    };
    let published = [
        (label::TOPIC, topic.as_str()),
        (label::BACKEND, backend),
        (label::MESSAGE_TYPE, "event.testkit.v1.Probe"),
    ];
    assert_eq!(
        telemetry.metrics().counter(metric::PUBLISHED, &published),
        3
    );
    assert_eq!(
        telemetry
            .metrics()
            .counter(metric::PUBLISH_FAILURES, &published),
        0
    );
    assert_eq!(
        telemetry.metrics().counter(metric::CONSUMED, &of),
        4,
        "{kinds:?}"
    );
    assert_eq!(telemetry.metrics().counter(metric::ACKED, &of), 2);
    // seq 1 once, seq 2 twice (its third run is dead-lettered)
    assert_eq!(
        telemetry
            .metrics()
            .counter(metric::RETRIED, &with((label::ERROR_KIND, "handler-error"))),
        3
    );
    assert_eq!(telemetry.metrics().counter(metric::RETRIED, &of), 3);
    assert_eq!(
        telemetry.metrics().counter(
            metric::DEAD_LETTERED,
            &with((label::ERROR_KIND, "handler-error"))
        ),
        1
    );
    assert_eq!(
        telemetry.metrics().counter(
            metric::DEAD_LETTERED,
            &with((label::ERROR_KIND, "decode-error"))
        ),
        1,
        "{kinds:?}"
    );
    assert_eq!(telemetry.metrics().counter(metric::DEAD_LETTERED, &of), 2);
    assert_eq!(
        telemetry
            .metrics()
            .counter(metric::DECODE_ERRORS, &with((label::PAYLOAD_KIND, "text"))),
        1
    );
    assert_eq!(telemetry.metrics().counter(metric::DECODE_ERRORS, &of), 1);
    assert_eq!(telemetry.metrics().counter(metric::SCHEMA_DRIFT, &of), 0);
    // runs: seq 0 once, seq 1 twice, seq 2 three times, the undecodable message once
    assert_eq!(
        telemetry
            .metrics()
            .histogram_count(metric::HANDLER_DURATION, &of),
        7
    );
    assert_eq!(telemetry.metrics().gauge(metric::IN_FLIGHT, &of), 0.0);

    // dead letters are published in spans of their own, but keep the original headers: the
    // trace context is still the one the original publish wrote
    let spans = telemetry.spans_of("", &[topic.as_str(), dlq.as_str()]);
    let dead_letter_spans = spans
        .iter()
        .filter(|s| s.name == format!("publish {dlq}"))
        .count();
    assert_eq!(dead_letter_spans, 2);
    let original_publishes: Vec<String> = spans
        .iter()
        .filter(|s| s.name == format!("publish {topic}"))
        .map(|s| s.span_context.span_id().to_string())
        .collect();
    let poisoned = letters
        .iter()
        .find(|d| d.headers().get_str(names::X_EVENT_ERROR_KIND) == Some("handler-error"))
        .expect("the handler-error dead letter");
    let traceparent = poisoned
        .headers()
        .get_str(names::TRACEPARENT)
        .expect("the dead letter keeps traceparent");
    assert!(
        original_publishes
            .iter()
            .any(|id| traceparent.contains(id.as_str())),
        "dead letter's traceparent {traceparent} is not from an original publish span {original_publishes:?}"
    );
}

/// Generates one `#[tokio::test]` per telemetry case for a [`BrokerFactory`].
///
/// ```ignore
/// event_core::telemetry_suite!(kafka_telemetry, KafkaFactory::default());
/// ```
#[macro_export]
macro_rules! telemetry_suite {
    ($module:ident, $factory:expr) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $crate::conformance_suite!(@telemetry $factory;
                trace_crosses_three_hops, foreign_traceparent_continues,
                unsampled_trace_stays_unsampled, metrics_follow_outcomes);
        }
    };
}
