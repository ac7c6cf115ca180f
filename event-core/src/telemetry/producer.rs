//! The `publish {topic}` span (kind producer) and the instruments of a typed publisher.

use std::sync::Arc;

use metrics::{Counter, Label};
use tracing::Span;
use tracing::field::Empty;

use super::fields::{as_attribute, record_message_attributes, record_position};
#[cfg(feature = "opentelemetry")]
use super::otel;
use super::{SAMPLED_TARGET, UNSAMPLED_TARGET, label, metric, sampling};
use crate::broker::{Broker, Message, PublishError, Receipt};
use crate::headers::names;

/// The instruments of one typed publisher.
pub(crate) struct PublishTelemetry {
    span_name: Box<str>,
    broker: Arc<dyn Broker>,
    published: Counter,
    labels: Vec<Label>,
}

impl PublishTelemetry {
    pub(crate) fn new(broker: Arc<dyn Broker>, topic: &str, message_type: &str) -> Self {
        let labels = vec![
            Label::new(label::TOPIC, topic.to_owned()),
            Label::new(label::MESSAGE_TYPE, message_type.to_owned()),
            Label::new(label::BACKEND, broker.name()),
        ];
        PublishTelemetry {
            span_name: format!("publish {topic}").into(),
            broker,
            published: metrics::counter!(metric::PUBLISHED, labels.iter()),
            labels,
        }
    }

    /// The publish span of `message`, with the span's trace context written into its headers.
    pub(crate) fn span(&self, topic: &str, message: &mut Message) -> Span {
        // no subscriber enables `info` anywhere: no span, and without OpenTelemetry no trace
        // context to write either, so no sampling decision (it reads the headers)
        #[cfg(not(feature = "opentelemetry"))]
        if !tracing::level_enabled!(tracing::Level::INFO) {
            return Span::none();
        }
        let sampled = sampling::of_publish(&message.headers);
        let span = publish_span(&self.span_name, &*self.broker, topic, message, sampled);
        #[cfg(feature = "opentelemetry")]
        {
            if !span.is_disabled() {
                otel::inject(&span, &mut message.headers);
            }
            if !sampled {
                sampling::mark_unsampled(&mut message.headers);
            }
        }
        span
    }

    /// Records the broker's answer on the span and in the counters.
    pub(crate) fn finish(&self, span: &Span, result: &Result<Receipt, PublishError>) {
        match result {
            Ok(receipt) => {
                self.published.increment(1);
                record_position(span, receipt.position());
            }
            Err(error) => {
                let kind = error.broker_error().kind();
                let mut labels = self.labels.clone();
                labels.push(Label::new(label::ERROR_KIND, kind));
                metrics::counter!(metric::PUBLISH_FAILURES, labels).increment(1);
                span.record("otel.status_code", "error");
                span.record("error.type", kind);
            }
        }
    }
}

/// A `publish {topic}` span for `message`, a child of the current span; with the target
/// [`UNSAMPLED_TARGET`] unless `sampled`.
///
/// It writes no trace context into the message: a typed publish does (see
/// [`PublishTelemetry::span`]), a dead letter keeps the original headers unchanged.
pub(crate) fn publish_span(
    span_name: &str,
    broker: &dyn Broker,
    topic: &str,
    message: &Message,
    sampled: bool,
) -> Span {
    let system = broker.messaging_system();
    let headers = &message.headers;
    macro_rules! span {
        ($target:expr) => {
            tracing::info_span!(
                target: $target,
                "publish",
                otel.name = span_name,
                otel.kind = "producer",
                otel.status_code = Empty,
                messaging.system = system,
                messaging.operation.type = "send",
                messaging.operation.name = "publish",
                messaging.destination.name = topic,
                messaging.message.id = headers.message_id(),
                messaging.message.body.size = as_attribute(message.payload.len()),
                messaging.destination.partition.id = Empty,
                event.position = Empty,
                cloudevents.event_type = headers.message_type(),
                correlation_id = headers.get_str(names::CORRELATION_ID),
                causation_id = headers.get_str(names::CAUSATION_ID),
                error.type = Empty,
            )
        };
    }
    let span = if sampled {
        span!(SAMPLED_TARGET)
    } else {
        span!(UNSAMPLED_TARGET)
    };
    if span.is_disabled() {
        return span;
    }
    record_message_attributes(&span, broker, topic, message);
    span
}
