//! The telemetry cases through `NatsBroker`, against the nats-server at `127.0.0.1:4222` (or
//! `EVENT_TEST_NATS`): one trace across three hops, a foreign `Traceparent` continued, an
//! unsampled trace kept out of OpenTelemetry, and metrics per outcome. Fails, never skips,
//! when the server is missing.

mod common;

use common::Factory;

event_core::telemetry_suite!(nats, Factory);
