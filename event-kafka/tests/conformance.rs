//! The core conformance suite through `KafkaBroker`, against the real broker; Kafka's
//! capabilities (order per key, persistence, replay from the earliest offset) add the cases
//! that check them.

mod common;

use common::KafkaFactory;

event_core::conformance_suite!(kafka, KafkaFactory::default());
