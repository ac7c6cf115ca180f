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

use std::sync::OnceLock;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;

use crate::broker::AttributeValue;
use crate::testkit::metrics::Metrics;

mod outcomes;
mod relay;
mod traces;

pub use outcomes::metrics_follow_outcomes;
pub use relay::{LayerSeen, start_relay, start_watched_relay, watched_relay};
pub use traces::{
    foreign_traceparent_continues, trace_crosses_three_hops, unsampled_trace_stays_unsampled,
};

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

/// How an attribute value reads in the exported span.
fn attribute_text(value: AttributeValue<'_>) -> String {
    match value {
        AttributeValue::Str(text) => text.to_owned(),
        AttributeValue::Int(number) => number.to_string(),
        AttributeValue::Bool(flag) => flag.to_string(),
    }
}

/// Generates one `#[tokio::test]` per telemetry case for a [`BrokerFactory`](crate::testkit::BrokerFactory).
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
