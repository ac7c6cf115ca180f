//! What the tracing example prints at the end: the traces as trees, the check that the chain
//! is one trace, and the metrics.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, Snapshot};
use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use opentelemetry_sdk::trace::SpanData;

/// Prints every trace: its id, then its spans indented under their parents.
pub(crate) fn print_traces(spans: &[SpanData]) {
    let mut traces: HashMap<TraceId, Vec<&SpanData>> = HashMap::new();
    for span in spans {
        traces
            .entry(span.span_context.trace_id())
            .or_default()
            .push(span);
    }
    let mut traces: Vec<_> = traces.into_iter().collect();
    traces.sort_by_key(|(_, spans)| spans.iter().map(|s| s.start_time).min());
    println!("traces ({}):", traces.len());
    for (trace_id, mut spans) in traces {
        spans.sort_by_key(|s| s.start_time);
        let plural = if spans.len() == 1 { "" } else { "s" };
        println!("trace {trace_id} ({} span{plural})", spans.len());
        let ids: HashSet<SpanId> = spans.iter().map(|s| s.span_context.span_id()).collect();
        // roots: no parent, or a parent that is not in this process's spans
        for root in spans.iter().filter(|s| !ids.contains(&s.parent_span_id)) {
            print_span(root, &spans, 1);
        }
    }
}

fn print_span(span: &SpanData, all: &[&SpanData], depth: usize) {
    let indent = "   ".repeat(depth - 1);
    let branch = if depth == 1 { "" } else { "└─ " };
    let duration = span
        .end_time
        .duration_since(span.start_time)
        .unwrap_or_default();
    println!(
        "  {indent}{branch}{} [{}] {:?}{}",
        span.name,
        kind(&span.span_kind),
        Duration::from_micros(duration.as_micros().try_into().unwrap_or(u64::MAX)),
        key_attributes(span)
    );
    for event in &span.events.events {
        println!("  {indent}   · log: {}", event.name);
    }
    let children = all
        .iter()
        .filter(|s| s.parent_span_id == span.span_context.span_id());
    for child in children {
        print_span(child, all, depth + 1);
    }
}

fn kind(kind: &SpanKind) -> &'static str {
    match kind {
        SpanKind::Client => "client",
        SpanKind::Server => "server",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
        SpanKind::Internal => "internal",
    }
}

/// The attributes worth a glance, as ` name=value` pairs.
fn key_attributes(span: &SpanData) -> String {
    let mut text = String::new();
    for (key, short) in [
        ("order.id", "order"),
        ("messaging.message.id", "message"),
        ("messaging.consumer.group.name", "group"),
        ("event.outcome", "outcome"),
        ("messaging.destination.partition.id", "partition"),
        ("messaging.kafka.offset", "offset"),
        ("messaging.rabbitmq.message.delivery_tag", "delivery_tag"),
        ("error.type", "error"),
    ] {
        if let Some(value) = attribute(span, key) {
            let value = if key == "messaging.message.id" {
                // UUID v7: the leading digits are the time, the last ones tell ids apart
                let tail = value.len().saturating_sub(8);
                format!("…{}", &value[tail..])
            } else {
                value
            };
            let _ = write!(text, " {short}={value}");
        }
    }
    text
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

/// Checks that the chain `place_order` → publish/process of each topic, in order, is one
/// trace with every span the child of the one before; returns its number of spans.
pub(crate) fn check_chain(
    spans: &[SpanData],
    trace_id: TraceId,
    topics: &[&str],
) -> Result<usize, String> {
    if trace_id == TraceId::INVALID {
        return Err(
            "the place_order span has no OpenTelemetry trace id: the OpenTelemetry layer is \
             not installed"
                .to_owned(),
        );
    }
    let mut expected = vec!["place_order".to_owned()];
    for topic in topics {
        expected.push(format!("publish {topic}"));
        expected.push(format!("process {topic}"));
    }
    let mut problems = Vec::new();
    // the span the next one must be the child of: none for the root; unknown after a gap
    let mut parent: Option<(SpanId, &str)> = Some((SpanId::INVALID, "none, a root"));
    for name in &expected {
        let found: Vec<&SpanData> = spans
            .iter()
            .filter(|s| s.span_context.trace_id() == trace_id && s.name == name.as_str())
            .collect();
        let span = match found.as_slice() {
            [span] => *span,
            [] => {
                let elsewhere: Vec<String> = spans
                    .iter()
                    .filter(|s| s.name == name.as_str())
                    .map(|s| s.span_context.trace_id().to_string())
                    .collect();
                problems.push(if elsewhere.is_empty() {
                    format!("no span {name:?} was recorded")
                } else {
                    format!(
                        "span {name:?} is not in trace {trace_id} but in {}: the trace context \
                         was lost on the way",
                        elsewhere.join(", ")
                    )
                });
                parent = None;
                continue;
            }
            more => {
                problems.push(format!(
                    "{} spans {name:?} in trace {trace_id}, expected one",
                    more.len()
                ));
                parent = None;
                continue;
            }
        };
        if let Some((parent_id, parent_name)) = parent
            && span.parent_span_id != parent_id
        {
            problems.push(format!(
                "span {name:?} has parent {} instead of {parent_id} ({parent_name})",
                span.parent_span_id
            ));
        }
        parent = Some((span.span_context.span_id(), name));
    }
    if problems.is_empty() {
        Ok(expected.len())
    } else {
        Err(format!(
            "the chain is not one trace of parent and child spans:\n  - {}",
            problems.join("\n  - ")
        ))
    }
}

/// Prints the metrics sorted by name and labels; returns how many series there were.
pub(crate) fn print_metrics(snapshot: Snapshot) -> usize {
    let mut lines: Vec<(String, String)> = snapshot
        .into_vec()
        .into_iter()
        .map(|(key, _unit, _description, value)| {
            let key = key.key();
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            let series = format!("{}{{{}}}", key.name(), labels.join(","));
            let value = match value {
                DebugValue::Counter(n) => format!("counter {n}"),
                DebugValue::Gauge(v) => format!("gauge {}", v.into_inner()),
                DebugValue::Histogram(samples) => {
                    let values: Vec<f64> = samples.into_iter().map(|v| v.into_inner()).collect();
                    let max = values.iter().copied().fold(0.0, f64::max);
                    let mean = if values.is_empty() {
                        0.0
                    } else {
                        values.iter().sum::<f64>() / values.len() as f64
                    };
                    format!(
                        "histogram count={} mean={:.6} max={:.6}",
                        values.len(),
                        mean,
                        max
                    )
                }
            };
            (series, value)
        })
        .collect();
    lines.sort();
    println!("metrics ({}):", lines.len());
    let width = lines.iter().map(|(s, _)| s.len()).max().unwrap_or(0);
    for (series, value) in &lines {
        println!("  {series:<width$}  {value}");
    }
    lines.len()
}
