//! The core conformance suite through `KafkaBroker`, against the real broker, with what Kafka
//! promises beyond the common contract: order per key, persistence (a group resumes where it
//! left off) and replay for new subscribers starting from the earliest offset.

mod common;

use common::KafkaFactory;

event_core::conformance_suite!(
    kafka,
    KafkaFactory::default(),
    extra: [order_per_key, group_resumes, replays_from_earliest]
);
