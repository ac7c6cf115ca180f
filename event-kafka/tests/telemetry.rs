//! The telemetry cases through `KafkaBroker`, against the real broker: one trace across three
//! hops, a foreign `Traceparent` continued, and metrics per outcome. Fails, never skips, when
//! the broker is missing.

mod common;

use common::KafkaFactory;

event_core::telemetry_suite!(kafka, KafkaFactory::default());
