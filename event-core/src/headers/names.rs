//! Header names written and read by the framework: the wire scheme in the crate
//! documentation (`event-core/docs/wire.md` in the repository).
//!
//! Kafka records carry them as written here (CloudEvents binary mode). Backends that need other
//! spellings (AMQP's `cloudEvents_` prefix, go-micro's `Micro-ID`) map them at the edge.

/// Media type of the payload, `application/protobuf` by default.
pub const CONTENT_TYPE: &str = "content-type";
/// CloudEvents spec version, always `1.0`.
pub const CE_SPECVERSION: &str = "ce_specversion";
/// Message id: a UUID v7 string.
pub const CE_ID: &str = "ce_id";
/// Producer identity: the name of the service that published the message.
pub const CE_SOURCE: &str = "ce_source";
/// Message type: the protobuf full name of the payload (`prost::Name::full_name()`).
pub const CE_TYPE: &str = "ce_type";
/// Publication time, RFC 3339 in UTC with millisecond precision.
pub const CE_TIME: &str = "ce_time";
/// W3C trace context parent.
pub const TRACEPARENT: &str = "traceparent";
/// W3C trace context vendor state.
pub const TRACESTATE: &str = "tracestate";
/// W3C baggage.
pub const BAGGAGE: &str = "baggage";
/// Id shared by every message of one causal chain (the id of its first message).
pub const CORRELATION_ID: &str = "correlation-id";
/// Id of the message whose handler published this one.
pub const CAUSATION_ID: &str = "causation-id";
/// go-micro's message id header (`Micro-Id` before v4; read case-insensitively).
pub const MICRO_ID: &str = "Micro-ID";
/// go-micro's topic header.
pub const MICRO_TOPIC: &str = "Micro-Topic";
/// Confluent Schema Registry header carrying the value schema GUID.
pub const CONFLUENT_VALUE_SCHEMA_ID: &str = "__value_schema_id";

/// Dead-letter header: the error that sent the message to the dead-letter topic (its chain of
/// causes, cut at 4 KiB).
pub const X_EVENT_ERROR: &str = "x-event-error";
/// Dead-letter header: the kind of that error (`handler-error`, `decode-error`, ...).
pub const X_EVENT_ERROR_KIND: &str = "x-event-error-kind";
/// Dead-letter header: the topic the message was consumed from.
pub const X_EVENT_ORIGINAL_TOPIC: &str = "x-event-original-topic";
/// Dead-letter header: the broker position the message was consumed at.
pub const X_EVENT_ORIGINAL_POSITION: &str = "x-event-original-position";
/// Dead-letter header: the handler that gave up on the message.
pub const X_EVENT_HANDLER: &str = "x-event-handler";
/// Dead-letter header: how many times the handler ran.
pub const X_EVENT_ATTEMPTS: &str = "x-event-attempts";
/// Dead-letter header: the payload classification of a decode failure.
pub const X_EVENT_PAYLOAD_KIND: &str = "x-event-payload-kind";
