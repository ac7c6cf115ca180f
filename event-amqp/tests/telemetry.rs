//! The telemetry cases through `AmqpBroker`, against the RabbitMQ at `127.0.0.1:5672` (or
//! `EVENT_TEST_AMQP`): one trace across three hops, a foreign `Traceparent` continued, and
//! metrics per outcome. Fails, never skips, when RabbitMQ is missing.

mod common;

use common::Factory;

event_core::telemetry_suite!(amqp, Factory);
