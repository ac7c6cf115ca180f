//! The broker conformance suite: one set of async tests every [`Broker`] must pass.
//!
//! It covers Watermill's universal Pub/Sub cases that apply to any broker (publish/subscribe,
//! concurrent subscribe, many topics, redelivery after failure, continue after errors, order
//! per key, concurrent publishing, topic isolation, unsubscribe, consumer groups, broadcast,
//! concurrent close) and ours (headers and context round-trip, context propagation through a
//! handler, type mismatch diagnosis, dead-letter contents, panics, drain on shutdown).
//!
//! A backend runs it with [`conformance_suite!`](crate::conformance_suite) and a
//! [`BrokerFactory`]:
//!
//! ```ignore
//! event_core::conformance_suite!(my_backend_tests, MyFactory::new());
//! ```
//!
//! Each case uses its own unique topic and queue names, so cases run in parallel against one
//! broker. Every wait is bounded by [`BrokerFactory::timeout`]; a case fails with the list of
//! what was missing.

use std::sync::Arc;
use std::time::Duration;

use crate::broker::{Broker, RetryPolicy};

mod cases;
mod collect;
pub mod metrics;
#[cfg(feature = "opentelemetry")]
pub mod telemetry;

pub use cases::*;
pub use collect::{Collector, delivery_subscriber, is_marker, marker};

/// Messages the suite publishes with the typed API.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Probe {
    /// Sequence number within a case.
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// Free text.
    #[prost(string, tag = "2")]
    pub note: String,
}

impl prost::Name for Probe {
    const NAME: &'static str = "Probe";
    const PACKAGE: &'static str = "event.testkit.v1";
}

/// A second message type, for type-mismatch cases.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OtherProbe {
    /// Free text.
    #[prost(string, tag = "1")]
    pub text: String,
}

impl prost::Name for OtherProbe {
    const NAME: &'static str = "OtherProbe";
    const PACKAGE: &'static str = "event.testkit.v1";
}

/// Provides brokers to the suite.
pub trait BrokerFactory: Send + Sync + 'static {
    /// A connected broker client. Successive calls return clients of the same broker (for
    /// the memory broker: the same instance).
    fn broker(&self) -> impl Future<Output = Arc<dyn Broker>> + Send;

    /// Makes `topic` usable before the case publishes to it (Kafka: create it).
    fn create_topic(&self, topic: &str) -> impl Future<Output = ()> + Send {
        let _ = topic;
        async {}
    }

    /// How long a case waits for the messages it expects.
    fn timeout(&self) -> Duration {
        Duration::from_secs(15)
    }
}

/// A [`BrokerFactory`] for the in-memory broker.
#[derive(Debug, Clone, Default)]
pub struct MemoryFactory(pub crate::memory::MemoryBroker);

impl BrokerFactory for MemoryFactory {
    async fn broker(&self) -> Arc<dyn Broker> {
        Arc::new(self.0.clone())
    }
}

/// A unique name for a topic or group of one case.
pub fn unique(prefix: &str) -> String {
    format!("testkit.{prefix}.{}", uuid::Uuid::now_v7().simple())
}

/// Retry quickly in tests.
pub fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy::exponential(max_attempts, Duration::from_millis(5))
        .with_max_backoff(Duration::from_millis(20))
        .with_jitter(0.0)
}

/// Generates one `#[tokio::test]` per conformance case for a [`BrokerFactory`], and one,
/// `promised_capabilities`, that runs the cases the broker's capabilities promise
/// ([`promised_capabilities`]).
///
/// ```ignore
/// event_core::conformance_suite!(memory, event_core::testkit::MemoryFactory::default());
/// ```
#[macro_export]
macro_rules! conformance_suite {
    ($module:ident, $factory:expr) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $crate::conformance_suite!(@cases $factory;
                publish_subscribe, concurrent_subscribe, many_topics, resend_on_error,
                ack_after_handler, acks_out_of_order, continue_after_errors, concurrent_publish, topic_isolation,
                unsubscribe_stops_delivery, consumer_groups, queue_group_splits, broadcast,
                concurrent_close, typed_headers_roundtrip, context_propagates,
                type_mismatch_dead_lettered, dead_letter_after_retries, panic_is_contained,
                drain_on_shutdown, promised_capabilities);
        }
    };
    (@telemetry $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let factory = $factory;
                $crate::testkit::telemetry::$case(&factory).await;
            }
        )*
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let factory = $factory;
                $crate::testkit::$case(&factory).await;
            }
        )*
    };
}
