//! The `process {topic}` span (kind consumer) of each handler run and the instruments of a
//! subscription: what the delivery loop records about every message.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Label};
use tracing::Span;
use tracing::field::Empty;

#[cfg(not(feature = "opentelemetry"))]
use super::fields::trace_id_of;
use super::fields::{as_attribute, record_message_attributes, record_position};
#[cfg(feature = "opentelemetry")]
use super::otel;
use super::{SAMPLED_TARGET, UNSAMPLED_TARGET, label, metric, sampling};
use crate::broker::{Broker, Delivery, FailureKind};
use crate::headers::names;

/// What the delivery loop did with one handler run, as written into `event.outcome`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RunOutcome {
    Acked,
    Retried,
    DeadLettered,
    Returned,
}

impl RunOutcome {
    fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Acked => "acked",
            RunOutcome::Retried => "retried",
            RunOutcome::DeadLettered => "dead-lettered",
            RunOutcome::Returned => "returned",
        }
    }
}

/// The instruments of one subscription, shared by its delivery loop and its deliveries.
pub(crate) struct ConsumerTelemetry {
    span_name: Box<str>,
    broker: Arc<dyn Broker>,
    system: &'static str,
    group: Option<Arc<str>>,
    labels: Vec<Label>,
    consumed: Counter,
    acked: Counter,
    in_flight: Gauge,
    duration: Histogram,
    drift: Counter,
}

impl std::fmt::Debug for ConsumerTelemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerTelemetry")
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

impl ConsumerTelemetry {
    pub(crate) fn new(
        broker: Arc<dyn Broker>,
        topic: &str,
        group: Option<&str>,
        message_type: Option<&str>,
    ) -> Self {
        let (system, backend) = (broker.messaging_system(), broker.name());
        let labels = vec![
            Label::new(label::TOPIC, topic.to_owned()),
            Label::new(
                label::MESSAGE_TYPE,
                message_type.unwrap_or("raw").to_owned(),
            ),
            Label::new(label::GROUP, group.unwrap_or_default().to_owned()),
            Label::new(label::BACKEND, backend),
        ];
        ConsumerTelemetry {
            span_name: format!("process {topic}").into(),
            broker,
            system,
            group: group.map(Arc::from),
            consumed: metrics::counter!(metric::CONSUMED, labels.iter()),
            acked: metrics::counter!(metric::ACKED, labels.iter()),
            in_flight: metrics::gauge!(metric::IN_FLIGHT, labels.iter()),
            duration: metrics::histogram!(metric::HANDLER_DURATION, labels.iter()),
            drift: metrics::counter!(metric::SCHEMA_DRIFT, labels.iter()),
            labels,
        }
    }

    /// A message arrived: counted, and in flight until the guard drops.
    pub(crate) fn received(&self) -> InFlight<'_> {
        self.consumed.increment(1);
        self.in_flight.increment(1.0);
        InFlight(&self.in_flight)
    }

    /// The `process {topic}` span of one handler run, a child of the publisher's span when the
    /// headers carry its trace context; with the target [`UNSAMPLED_TARGET`] when the message
    /// belongs to a trace that is not sampled.
    pub(crate) fn span(&self, delivery: &Delivery, handler: &str) -> Span {
        // no subscriber enables `info` anywhere: no span either way, so no sampling decision
        // (it reads the headers) either
        if !tracing::level_enabled!(tracing::Level::INFO) {
            return Span::none();
        }
        let headers = delivery.headers();
        macro_rules! span {
            ($target:expr) => {
                tracing::info_span!(
                    target: $target,
                    parent: None,
                    "process",
                    otel.name = &*self.span_name,
                    otel.kind = "consumer",
                    otel.status_code = Empty,
                    messaging.system = self.system,
                    messaging.operation.type = "process",
                    messaging.operation.name = "process",
                    messaging.destination.name = delivery.topic(),
                    messaging.consumer.group.name = self.group.as_deref(),
                    messaging.message.id = headers.message_id(),
                    messaging.message.body.size = as_attribute(delivery.payload().len()),
                    messaging.destination.partition.id = Empty,
                    event.position = Empty,
                    cloudevents.event_type = headers.message_type(),
                    // a chain's first message may leave out a correlation id that only
                    // repeats its own id (as `Context::from_headers` reads it)
                    correlation_id = headers
                        .get_str(names::CORRELATION_ID)
                        .or_else(|| headers.message_id()),
                    causation_id = headers.get_str(names::CAUSATION_ID),
                    event.handler = handler,
                    event.attempt = i64::from(delivery.attempt()),
                    event.outcome = Empty,
                    event.payload_kind = Empty,
                    error.type = Empty,
                    trace_id = Empty,
                )
            };
        }
        let span = if sampling::of_delivery(headers) {
            span!(SAMPLED_TARGET)
        } else {
            span!(UNSAMPLED_TARGET)
        };
        if span.is_disabled() {
            return span;
        }
        record_message_attributes(&span, &*self.broker, delivery.topic(), delivery.message());
        record_position(&span, delivery.position());
        #[cfg(feature = "opentelemetry")]
        otel::extract(&span, headers);
        #[cfg(not(feature = "opentelemetry"))]
        if let Some(trace_id) = trace_id_of(headers) {
            span.record("trace_id", trace_id);
        }
        span
    }

    /// A handler run took `elapsed`.
    pub(crate) fn ran(&self, elapsed: Duration) {
        self.duration.record(elapsed.as_secs_f64());
    }

    /// How the run ended, on the span and in the counters.
    pub(crate) fn settled(
        &self,
        span: &Span,
        outcome: RunOutcome,
        failure: Option<(FailureKind, Option<&str>)>,
    ) {
        span.record("event.outcome", outcome.as_str());
        match outcome {
            RunOutcome::Acked => self.acked.increment(1),
            RunOutcome::Retried => self.count(metric::RETRIED, failure),
            RunOutcome::DeadLettered => self.count(metric::DEAD_LETTERED, failure),
            RunOutcome::Returned => {}
        }
        if let Some((kind, payload_kind)) = failure {
            span.record("otel.status_code", "error");
            span.record("error.type", kind.as_str());
            if let Some(payload_kind) = payload_kind {
                span.record("event.payload_kind", payload_kind);
                if outcome == RunOutcome::DeadLettered {
                    let mut labels = self.labels.clone();
                    labels.push(Label::new(label::PAYLOAD_KIND, payload_kind.to_owned()));
                    metrics::counter!(metric::DECODE_ERRORS, labels).increment(1);
                }
            }
        }
    }

    fn count(&self, name: &'static str, failure: Option<(FailureKind, Option<&str>)>) {
        let mut labels = self.labels.clone();
        if let Some((kind, _)) = failure {
            labels.push(Label::new(label::ERROR_KIND, kind.as_str()));
        }
        metrics::counter!(name, labels).increment(1);
    }

    /// An acknowledgement failed with a broker error of `error_kind`.
    pub(crate) fn ack_failed(&self, error_kind: &'static str) {
        let mut labels = self.labels.clone();
        labels.push(Label::new(label::ERROR_KIND, error_kind));
        metrics::counter!(metric::ACK_FAILURES, labels).increment(1);
    }

    /// A dead-letter publish failed with a broker error of `error_kind`.
    pub(crate) fn dead_letter_failed(&self, error_kind: &'static str) {
        let mut labels = self.labels.clone();
        labels.push(Label::new(label::ERROR_KIND, error_kind));
        metrics::counter!(metric::DEAD_LETTER_FAILURES, labels).increment(1);
    }

    /// The schema drift counter, for [`Delivery`]s (the typed handler counts).
    pub(crate) fn drift(&self) -> &Counter {
        &self.drift
    }
}

/// Decrements the in-flight gauge when a message is settled or given up.
pub(crate) struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}
