//! What the publish and process spans share: the backend's own attributes, the position, counts
//! as integers, and the trace id read off `traceparent`.

use tracing::Span;

#[cfg(feature = "opentelemetry")]
use super::otel;
use super::traceparent;
use crate::broker::{Broker, Message, Position};
use crate::headers::{Headers, names};

/// The backend's own attributes of `message` (see [`Broker::message_attributes`]).
#[cfg_attr(not(feature = "opentelemetry"), allow(unused_variables))]
pub(super) fn record_message_attributes(
    span: &Span,
    broker: &dyn Broker,
    topic: &str,
    message: &Message,
) {
    #[cfg(feature = "opentelemetry")]
    broker.message_attributes(topic, message, &mut |key, value| {
        otel::set_attribute(span, key, value);
    });
}

/// A count as an `i64` field: `tracing-opentelemetry` turns `u64` values into text (one
/// allocation each) but keeps `i64` values integers, as OpenTelemetry expects.
pub(super) fn as_attribute(count: impl TryInto<i64>) -> i64 {
    count.try_into().unwrap_or(i64::MAX)
}

pub(super) fn record_position(span: &Span, position: &Position) {
    if position.is_unknown() {
        return;
    }
    if let Some(partition) = position.partition() {
        span.record(
            "messaging.destination.partition.id",
            tracing::field::display(partition),
        );
    }
    span.record("event.position", tracing::field::display(position));
    #[cfg(feature = "opentelemetry")]
    if let Some(attribute) = position.kind().attribute() {
        otel::set_attribute(
            span,
            attribute,
            crate::broker::AttributeValue::Int(as_attribute(position.number())),
        );
    }
}

/// The trace id of a W3C `traceparent` header (`00-<trace id>-<span id>-<flags>`).
#[cfg_attr(feature = "opentelemetry", allow(dead_code))]
pub(super) fn trace_id_of(headers: &Headers) -> Option<&str> {
    traceparent::parse(headers.get(names::TRACEPARENT)?.as_bytes()).map(|parsed| parsed.trace_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_id_is_read_from_traceparent_in_any_case() {
        let mut headers = Headers::new();
        headers.append(
            "Traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        assert_eq!(
            trace_id_of(&headers),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        let mut bad = Headers::new();
        bad.append("traceparent", "00-xyz-00f067aa0ba902b7-01");
        assert_eq!(trace_id_of(&bad), None);
    }
}
