//! Head sampling of new traces (`telemetry::set_root_sampling`), in a test binary of its own:
//! the ratio is process-wide, and the telemetry suite expects every new trace sampled.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use event_core::Publisher;
use event_core::broker::Broker;
use event_core::headers::names;
use event_core::memory::MemoryBroker;
use event_core::telemetry::set_root_sampling;
use event_core::testkit::telemetry::{install, start_watched_relay};
use event_core::testkit::{Collector, Probe, delivery_subscriber, unique};
use opentelemetry::trace::TraceContextExt as _;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// With a ratio of 0, a publish outside any handler and any span starts an unsampled trace:
/// its message carries a `traceparent` with flags `00`, the relay's follow-up carries the same
/// one, and no span of the chain reaches the OpenTelemetry layer. A publish inside a span of
/// the application's continues that span's trace whatever the ratio. Back at 1, the next
/// publish is sampled and exported: the control that the layer was listening.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_traces_follow_the_root_ratio() {
    let telemetry = install();
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    let topic = unique("root-sampling");
    let next_topic = format!("{topic}.next");
    let timeout = Duration::from_secs(10);
    let (tx, mut originals) = Collector::new(timeout);
    let original_observer = delivery_subscriber(&*broker, &topic, tx).await;
    let (tx, mut follow_ups) = Collector::new(timeout);
    let follow_up_observer = delivery_subscriber(&*broker, &next_topic, tx).await;

    let (service, seen_by_layer) = start_watched_relay(broker.clone(), &topic, &next_topic).await;
    let origin = Publisher::<Probe>::new(broker.clone(), "origin", topic.as_str());

    set_root_sampling(0.0);
    origin
        .publish(&Probe {
            seq: 1,
            note: "unsampled".into(),
        })
        .await
        .expect("publish");
    let original = originals.next("the unsampled original").await;
    let follow_up = follow_ups.next("the unsampled follow-up").await;
    // inside a span of the application's, a publish continues that span's trace
    let request = tracing::info_span!(target: "testkit", "request");
    let request_trace = request.context().span().span_context().trace_id();
    async {
        origin
            .publish(&Probe {
                seq: 3,
                note: "in a request".into(),
            })
            .await
            .expect("publish")
    }
    .instrument(request)
    .await;
    let in_request = originals.next("the original published in a request").await;
    follow_ups.next("the follow-up of the request").await;
    set_root_sampling(1.0);
    origin
        .publish(&Probe {
            seq: 2,
            note: "sampled".into(),
        })
        .await
        .expect("publish");
    let sampled_original = originals.next("the sampled original").await;
    follow_ups.next("the sampled follow-up").await;
    service.stop().await;
    original_observer.unsubscribe().await;
    follow_up_observer.unsubscribe().await;

    let traceparent = original
        .headers()
        .get_str(names::TRACEPARENT)
        .expect("an unsampled new trace still gets a traceparent");
    assert!(traceparent.starts_with("00-") && traceparent.ends_with("-00"));
    let trace_id = &traceparent[3..35];
    assert_eq!(
        follow_up.headers().get_str(names::TRACEPARENT),
        Some(traceparent),
        "the follow-up passes the unsampled traceparent on"
    );
    assert_eq!(
        seen_by_layer.by_seq(),
        HashMap::from([(1, false), (2, true), (3, true)]),
        "the layer must know the spans of the sampled messages (2, and 3 published in a request) and not the unsampled one's (1)"
    );
    let spans = telemetry.spans_of("", &[topic.as_str(), next_topic.as_str()]);
    assert!(
        spans
            .iter()
            .all(|span| span.span_context.trace_id().to_string() != trace_id),
        "spans of the unsampled trace were exported"
    );
    let in_request = in_request
        .headers()
        .get_str(names::TRACEPARENT)
        .expect("a publish in a request writes traceparent");
    assert!(
        in_request.starts_with(&format!("00-{request_trace}-")) && in_request.ends_with("-01"),
        "{in_request} does not continue the request's trace {request_trace}"
    );
    let sampled_traceparent = sampled_original
        .headers()
        .get_str(names::TRACEPARENT)
        .expect("a sampled publish writes traceparent");
    assert!(
        sampled_traceparent.ends_with("-01"),
        "{sampled_traceparent}"
    );
    // the sampled chain: its publish, the relay's process span and its publish, and the two
    // observers' process spans
    let sampled_trace_id = &sampled_traceparent[3..35];
    assert_eq!(
        spans
            .iter()
            .filter(|span| span.span_context.trace_id().to_string() == sampled_trace_id)
            .count(),
        5,
        "{:#?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
}
