//! Observability: `tracing` spans, W3C trace context and metrics.
//!
//! # Spans
//!
//! Every typed publish ([`Publisher`](crate::Publisher)) and every dead-letter publish runs in
//! a `publish {topic}` span (OpenTelemetry kind producer), and every handler run, typed or raw,
//! in a `process {topic}` span (kind consumer). A direct call of the raw
//! [`Broker::publish`] is not instrumented: it is the byte-level API
//! under the framework, and its trace headers are whatever the caller writes. The tracing span names are
//! `publish` and `process`; the `otel.name` field carries the full name. Both spans are at
//! `INFO` level with target `event`, and carry the OpenTelemetry messaging attribute names:
//!
//! | field | publish | process |
//! |---|---|---|
//! | `messaging.system` (`kafka`, `rabbitmq`, `memory`) | ✓ | ✓ |
//! | `messaging.operation.type` | `send` | `process` |
//! | `messaging.destination.name` (the topic) | ✓ | ✓ |
//! | `messaging.consumer.group.name` (the queue group) | | ✓ |
//! | `messaging.message.id`, `messaging.message.body.size` | ✓ | ✓ |
//! | `messaging.destination.partition.id` (brokers with partitions) | ✓ | ✓ |
//! | `event.position` (where the message sits, as its broker writes it) | ✓ | ✓ |
//! | the backend's own attributes (below) | ✓ | ✓ |
//! | `cloudevents.event_type` (the `ce_type` header) | ✓ | ✓ |
//! | `correlation_id`, `causation_id` | ✓ | ✓ |
//! | `event.handler`, `event.attempt`, `trace_id` | | ✓ |
//! | `event.outcome` (`acked`, `retried`, `dead-lettered`, `returned`) | | ✓ |
//! | `error.type` (a [`FailureKind`] or a broker error kind), `event.payload_kind` | ✓ | ✓ |
//!
//! With the `opentelemetry` feature, each span also carries its backend's own attributes:
//! the attribute its positions name ([`PositionKind::with_attribute`]: Kafka's
//! `messaging.kafka.offset`, RabbitMQ's `messaging.rabbitmq.message.delivery_tag`) and what
//! [`Broker::message_attributes`] writes (Kafka's `messaging.kafka.message.key`, RabbitMQ's
//! `messaging.rabbitmq.destination.routing_key`). They are OpenTelemetry attributes, not
//! `tracing` fields: a log layer sees `event.position` instead.
//!
//! [`PositionKind::with_attribute`]: crate::backend::PositionKind::with_attribute
//! [`Broker::message_attributes`]: crate::broker::Broker::message_attributes
//! [`Broker::publish`]: crate::broker::Broker::publish
//! [`FailureKind`]: crate::broker::FailureKind
//!
//! The handler's future runs inside its process span, so every log line the handler writes
//! carries the topic, the message id, the handler name, the trace id and the correlation and
//! causation ids. A handler that publishes does so inside its process span: the publish span is
//! its child.
//!
//! # Trace context
//!
//! Without the `opentelemetry` feature the `traceparent`, `tracestate` and `baggage` headers
//! pass from a handled message to what its handler publishes, untouched (see
//! [`Context`](crate::Context)); the process span's `trace_id` is read from `traceparent`.
//!
//! With the feature, a typed publish span's OpenTelemetry context is injected into the
//! published headers (a dead letter keeps the original message's trace headers, so that a
//! replay continues the original trace), and a process span's parent is extracted from the message's headers (names read in
//! any case: go-micro writes `Traceparent`), so one trace crosses services through any broker.
//! The global propagator (`opentelemetry::global::set_text_map_propagator`) is used; while none
//! is set, W3C trace context and baggage are.
//!
//! # Head sampling
//!
//! `tracing-opentelemetry` turns every span it sees into OpenTelemetry span data (an owned
//! copy of each text field, the builder, its attributes) before the SDK's sampler decides
//! whether to keep it, so a sampler that drops 99 % of traces still pays for most of them.
//! With the `opentelemetry` feature the framework therefore decides first, for its own
//! spans, and gives the spans of a trace that is not sampled the target
//! [`UNSAMPLED_TARGET`] instead of `event`. Leave that target out of the OpenTelemetry layer
//! and those spans cost what a span costs without OpenTelemetry, while log layers still see
//! them with every field:
//!
//! ```ignore
//! use tracing_subscriber::filter::{LevelFilter, Targets};
//! use tracing_subscriber::Layer as _;
//!
//! let otel = tracing_opentelemetry::layer().with_tracer(tracer).with_filter(
//!     Targets::new()
//!         .with_default(LevelFilter::INFO)
//!         .with_target(event_core::telemetry::UNSAMPLED_TARGET, LevelFilter::OFF),
//! );
//! ```
//!
//! The decision follows the message: a message whose `traceparent` says "not sampled"
//! (flags `00`) is processed, and everything its handler publishes is published, in
//! unsampled spans; its `traceparent` passes on unchanged, so the next service decides the
//! same. A publish inside a span of the application's (an HTTP request, say) continues that
//! span's trace and is decided on by the OpenTelemetry layer and the SDK, as any child span.
//! A new trace (a publish outside any span and any handler, or a message without
//! `traceparent`) is sampled with the ratio given to [`set_root_sampling`] (1.0, every trace,
//! unless set), decided from the message id, so a redelivery decides the same; an unsampled
//! new trace still gets a `traceparent` (flags `00`), so that the services after it agree and
//! their log lines carry its trace id. Give the SDK a parent-based sampler (its default) so
//! that it keeps what the framework sampled.
//!
//! Without the filter every span reaches the OpenTelemetry layer as before and the SDK's
//! sampler has the last word.
//!
//! # Metrics
//!
//! Through the [`metrics`] facade: install any recorder (Prometheus, OpenTelemetry, StatsD)
//! *before* building publishers and services, as their instruments are registered once when
//! they are made. With no recorder installed the instruments are no-ops. Names and labels are in
//! [`metric`] and [`label`].
//!
// `set_root_sampling` exists only with the `opentelemetry` feature.
#![cfg_attr(
    feature = "opentelemetry",
    doc = "[`set_root_sampling`]: set_root_sampling"
)]
#![cfg_attr(
    not(feature = "opentelemetry"),
    doc = "[`set_root_sampling`]: crate#features"
)]

mod consumer;
mod fields;
#[cfg(feature = "opentelemetry")]
mod otel;
mod producer;
pub(crate) mod sampling;
mod traceparent;

pub(crate) use consumer::{ConsumerTelemetry, RunOutcome};
pub(crate) use producer::{PublishTelemetry, publish_span};

/// The target of the framework's spans in a sampled trace (and of all of them without the
/// `opentelemetry` feature).
pub const SAMPLED_TARGET: &str = "event";

/// The target of the framework's `publish` and `process` spans in a trace that is not
/// sampled (see [Head sampling](self#head-sampling)): leave it out of the OpenTelemetry layer.
pub const UNSAMPLED_TARGET: &str = "event::unsampled";

/// Samples `ratio` (0.0 to 1.0) of the traces the framework starts: publishes outside any
/// span and any handler, and messages that arrive without `traceparent` (see
/// [Head sampling](self#head-sampling)). Process-wide; 1.0 until set. A trace that arrives
/// with a `traceparent` keeps the decision it carries.
///
/// # Panics
///
/// If `ratio` is not between 0.0 and 1.0.
#[cfg(feature = "opentelemetry")]
pub fn set_root_sampling(ratio: f64) {
    assert!(
        (0.0..=1.0).contains(&ratio),
        "set_root_sampling: the ratio must be between 0.0 and 1.0, not {ratio}"
    );
    sampling::set_ratio(ratio);
}

/// Metric names.
pub mod metric {
    /// Counter: messages a typed publisher handed to the broker and the broker took.
    /// Labels: topic, message_type, backend.
    pub const PUBLISHED: &str = "event_published_total";
    /// Counter: publishes the broker refused or that failed. Labels: topic, message_type,
    /// backend, error_kind.
    pub const PUBLISH_FAILURES: &str = "event_publish_failures_total";
    /// Counter: messages received by a subscription (each message once, whatever its attempts).
    /// Labels: topic, message_type, group, backend.
    pub const CONSUMED: &str = "event_consumed_total";
    /// Counter: messages acknowledged after their handler succeeded. Labels as consumed.
    pub const ACKED: &str = "event_acked_total";
    /// Counter: handler runs that failed and were scheduled to run again. Labels as consumed,
    /// plus error_kind.
    pub const RETRIED: &str = "event_retried_total";
    /// Counter: messages sent to the dead-letter topic. Labels as consumed, plus error_kind.
    pub const DEAD_LETTERED: &str = "event_dead_lettered_total";
    /// Counter: failed attempts to publish a message to its dead-letter topic. The message is
    /// not acknowledged meanwhile: it is held, and the publish retried with backoff, until the
    /// dead-letter topic takes it ([`Subscription::stalled`](crate::broker::Subscription::stalled)
    /// says how many are held). Labels as consumed, plus error_kind: the broker error's kind
    /// (`topic-not-found`, `unavailable`, `timeout`, …).
    pub const DEAD_LETTER_FAILURES: &str = "event_dead_letter_failures_total";
    /// Counter: acknowledgements that failed (the broker refused one, or the connection was
    /// gone): the broker delivers the message again. Labels as consumed, plus error_kind: the
    /// broker error's kind. Backends that acknowledge in the background (RabbitMQ, NATS) log
    /// their own failures there.
    pub const ACK_FAILURES: &str = "event_ack_failures_total";
    /// Counter: messages that could not be decoded as the subscriber's type, by what the bytes
    /// looked like. Labels as consumed, plus payload_kind.
    pub const DECODE_ERRORS: &str = "event_decode_errors_total";
    /// Counter: messages carrying fields this build does not know (the producer's schema is
    /// newer). Labels as consumed.
    pub const SCHEMA_DRIFT: &str = "event_schema_drift_total";
    /// Histogram: handler run time in seconds, one sample per run, timed with the CPU's time
    /// stamp counter where the CPU says it is invariant (`CLOCK_MONOTONIC` otherwise).
    /// Labels as consumed.
    pub const HANDLER_DURATION: &str = "event_handler_duration_seconds";
    /// Gauge: messages of a subscription between receipt and settlement. Labels as consumed.
    pub const IN_FLIGHT: &str = "event_in_flight";
    /// Gauge: messages in a partition behind the group's position, as the backend reports it
    /// (Kafka). Labels: topic, partition, group, backend.
    pub const CONSUMER_LAG: &str = "event_consumer_lag";
}

/// Metric label names.
pub mod label {
    /// The topic.
    pub const TOPIC: &str = "topic";
    /// The protobuf full name the publisher or subscriber is typed with (`raw` for raw
    /// handlers).
    pub const MESSAGE_TYPE: &str = "message_type";
    /// The queue group; empty for broadcast subscriptions.
    pub const GROUP: &str = "group";
    /// The backend (`memory`, `kafka`, `amqp`).
    pub const BACKEND: &str = "backend";
    /// A [`FailureKind`](crate::broker::FailureKind) or broker error kind.
    pub const ERROR_KIND: &str = "error_kind";
    /// What undecodable bytes looked like (`json`, `confluent-frame`, …).
    pub const PAYLOAD_KIND: &str = "payload_kind";
    /// A partition number.
    pub const PARTITION: &str = "partition";
}
