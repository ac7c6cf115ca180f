//! The telemetry cases on the in-memory broker: one trace across three hops, a foreign
//! `Traceparent` continued, and metrics per outcome.

use event_core::memory::MemoryBroker;
use event_core::testkit::MemoryFactory;

event_core::telemetry_suite!(memory, MemoryFactory(MemoryBroker::new()));

/// A publish the broker refuses counts as a failure, by error kind, and not as published.
#[tokio::test]
async fn refused_publish_counts_as_a_failure() {
    use event_core::broker::Broker;
    use event_core::telemetry::{label, metric};
    use event_core::testkit::{Probe, unique};

    let metrics = event_core::testkit::metrics::install();
    let broker = MemoryBroker::new();
    let topic = unique("refused");
    let publisher = event_core::Publisher::<Probe>::new(
        std::sync::Arc::new(broker.clone()),
        "telemetry-test",
        topic.as_str(),
    );
    publisher.publish(&Probe::default()).await.expect("publish");
    broker.disconnect().await.expect("disconnect");
    let error = publisher
        .publish(&Probe::default())
        .await
        .expect_err("a closed broker refuses");
    assert_eq!(error.broker_error().kind(), "closed");
    let of = [(label::TOPIC, topic.as_str()), (label::BACKEND, "memory")];
    assert_eq!(metrics.counter(metric::PUBLISHED, &of), 1);
    assert_eq!(
        metrics.counter(
            metric::PUBLISH_FAILURES,
            &[
                (label::TOPIC, topic.as_str()),
                (label::ERROR_KIND, "closed"),
                (label::MESSAGE_TYPE, "event.testkit.v1.Probe"),
            ]
        ),
        1
    );
}
