//! Metrics that move exactly as the delivery outcomes say.

use std::collections::HashMap;
use std::sync::Arc;

use crate::broker::{Message, SubscribeOptions};
use crate::headers::names;
use crate::publish::Publisher;
use crate::service::Service;
use crate::telemetry::{label, metric};
use crate::testkit::{BrokerFactory, Collector, Probe, delivery_subscriber, fast_retry, unique};

use super::install;

/// Counters move exactly as outcomes say: one message acked at once, one retried once then
/// acked, one retried to exhaustion and dead-lettered, one undecodable and dead-lettered.
pub async fn metrics_follow_outcomes<F: BrokerFactory>(factory: &F) {
    let telemetry = install();
    let broker = factory.broker().await;
    let topic = unique("metrics");
    let dlq = format!("{topic}.dlq");
    factory.create_topic(&topic).await;
    factory.create_topic(&dlq).await;
    let (dlq_tx, mut dead_letters) = Collector::new(factory.timeout());
    let dlq_sub = delivery_subscriber(&*broker, &dlq, dlq_tx).await;
    let failures = Arc::new(std::sync::Mutex::new(HashMap::<u64, u32>::new()));
    let (acked_tx, mut acked) = Collector::new(factory.timeout());
    let handler = {
        let failures = failures.clone();
        move |probe: Probe| {
            let failures = failures.clone();
            let acked_tx = acked_tx.clone();
            async move {
                let runs = {
                    let mut failures = failures.lock().expect("lock");
                    let runs = failures.entry(probe.seq).or_default();
                    *runs += 1;
                    *runs
                };
                match (probe.seq, runs) {
                    (1, 1) | (2, _) => Err(std::io::Error::other("not yet")),
                    _ => {
                        let _ = acked_tx.send(probe.seq);
                        Ok(())
                    }
                }
            }
        }
    };
    let group = format!("{topic}.counted");
    let group = group.as_str();
    let service = Service::builder("metrics")
        .broker(broker.clone())
        .subscribe_with(
            topic.as_str(),
            SubscribeOptions::new().queue(group).retry(fast_retry(3)),
            handler,
        )
        .build()
        .expect("build")
        .start()
        .await
        .expect("start");
    let publisher = Publisher::<Probe>::new(broker.clone(), "metrics", topic.as_str());
    for seq in 0..3 {
        publisher
            .publish(&Probe {
                seq,
                note: String::new(),
            })
            .await
            .expect("publish");
    }
    // plain text through the raw API: a decode failure
    broker
        .publish(
            &topic,
            Message::new("New order received: 3 items (see the web shop for details)"),
        )
        .await
        .expect("publish");

    let mut seen = acked.until("two acked", |s| s.len() == 2).await;
    seen.sort_unstable();
    assert_eq!(seen, [0, 1]);
    let letters = dead_letters
        .until("two dead letters", |d| d.len() == 2)
        .await;
    let kinds: Vec<_> = letters
        .iter()
        .map(|d| {
            d.headers()
                .get_str(names::X_EVENT_ERROR_KIND)
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    // the drain settles everything, so the counters are final
    service.stop().await;
    dlq_sub.unsubscribe().await;

    let backend = broker.name();
    let of = [
        (label::TOPIC, topic.as_str()),
        (label::GROUP, group),
        (label::BACKEND, backend),
        (label::MESSAGE_TYPE, "event.testkit.v1.Probe"),
    ];
    let with = |extra: (&'static str, &'static str)| {
        let mut labels = of.to_vec();
        labels.push(extra);
        labels
    };
    let published = [
        (label::TOPIC, topic.as_str()),
        (label::BACKEND, backend),
        (label::MESSAGE_TYPE, "event.testkit.v1.Probe"),
    ];
    assert_eq!(
        telemetry.metrics().counter(metric::PUBLISHED, &published),
        3
    );
    assert_eq!(
        telemetry
            .metrics()
            .counter(metric::PUBLISH_FAILURES, &published),
        0
    );
    assert_eq!(
        telemetry.metrics().counter(metric::CONSUMED, &of),
        4,
        "{kinds:?}"
    );
    assert_eq!(telemetry.metrics().counter(metric::ACKED, &of), 2);
    // seq 1 once, seq 2 twice (its third run is dead-lettered)
    assert_eq!(
        telemetry
            .metrics()
            .counter(metric::RETRIED, &with((label::ERROR_KIND, "handler-error"))),
        3
    );
    assert_eq!(telemetry.metrics().counter(metric::RETRIED, &of), 3);
    assert_eq!(
        telemetry.metrics().counter(
            metric::DEAD_LETTERED,
            &with((label::ERROR_KIND, "handler-error"))
        ),
        1
    );
    assert_eq!(
        telemetry.metrics().counter(
            metric::DEAD_LETTERED,
            &with((label::ERROR_KIND, "decode-error"))
        ),
        1,
        "{kinds:?}"
    );
    assert_eq!(telemetry.metrics().counter(metric::DEAD_LETTERED, &of), 2);
    assert_eq!(
        telemetry
            .metrics()
            .counter(metric::DECODE_ERRORS, &with((label::PAYLOAD_KIND, "text"))),
        1
    );
    assert_eq!(telemetry.metrics().counter(metric::DECODE_ERRORS, &of), 1);
    assert_eq!(telemetry.metrics().counter(metric::SCHEMA_DRIFT, &of), 0);
    // runs: seq 0 once, seq 1 twice, seq 2 three times, the undecodable message once
    assert_eq!(
        telemetry
            .metrics()
            .histogram_count(metric::HANDLER_DURATION, &of),
        7
    );
    assert_eq!(telemetry.metrics().gauge(metric::IN_FLIGHT, &of), 0.0);

    // dead letters are published in spans of their own, but keep the original headers: the
    // trace context is still the one the original publish wrote
    let spans = telemetry.spans_of("", &[topic.as_str(), dlq.as_str()]);
    let dead_letter_spans = spans
        .iter()
        .filter(|s| s.name == format!("publish {dlq}"))
        .count();
    assert_eq!(dead_letter_spans, 2);
    let original_publishes: Vec<String> = spans
        .iter()
        .filter(|s| s.name == format!("publish {topic}"))
        .map(|s| s.span_context.span_id().to_string())
        .collect();
    let poisoned = letters
        .iter()
        .find(|d| d.headers().get_str(names::X_EVENT_ERROR_KIND) == Some("handler-error"))
        .expect("the handler-error dead letter");
    let traceparent = poisoned
        .headers()
        .get_str(names::TRACEPARENT)
        .expect("the dead letter keeps traceparent");
    assert!(
        original_publishes
            .iter()
            .any(|id| traceparent.contains(id.as_str())),
        "dead letter's traceparent {traceparent} is not from an original publish span {original_publishes:?}"
    );
}
