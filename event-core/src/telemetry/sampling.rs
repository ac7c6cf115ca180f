//! The sampling decision of the framework's spans (see [Head sampling](super#head-sampling)).

#[cfg(feature = "opentelemetry")]
use std::sync::atomic::{AtomicU64, Ordering};

use crate::headers::{HeaderValue, Headers, names};

/// New traces whose id hashes to at most this are sampled; `u64::MAX` samples all.
#[cfg(feature = "opentelemetry")]
static ROOT_THRESHOLD: AtomicU64 = AtomicU64::new(u64::MAX);

#[cfg(feature = "opentelemetry")]
pub(super) fn set_ratio(ratio: f64) {
    let threshold = if ratio >= 1.0 {
        u64::MAX
    } else {
        // `as` saturates; 0.0 gives 0, and no id is sampled (see `decide_with`)
        (ratio * u64::MAX as f64) as u64
    };
    ROOT_THRESHOLD.store(threshold, Ordering::Relaxed);
}

/// Whether the process span of a delivery with these headers is sampled.
pub(crate) fn of_delivery(headers: &Headers) -> bool {
    decide(headers, |headers| headers.message_id_value())
}

/// Whether the publish span of a message with these headers is sampled: a message a
/// handler publishes names the handled message as its cause, and is decided as that
/// message was; one published inside a span of the application's continues that span's
/// trace, which the OpenTelemetry layer and the SDK decide on as for any child span.
pub(crate) fn of_publish(headers: &Headers) -> bool {
    decide(headers, |headers| {
        headers.get(names::CAUSATION_ID).or_else(|| {
            let in_span =
                tracing::dispatcher::get_default(|dispatch| dispatch.current_span().id().is_some());
            // no id to decide by: sampled
            (!in_span).then(|| headers.message_id_value()).flatten()
        })
    })
}

#[cfg(not(feature = "opentelemetry"))]
fn decide(_: &Headers, _: impl FnOnce(&Headers) -> Option<&HeaderValue>) -> bool {
    true
}

#[cfg(feature = "opentelemetry")]
fn decide<'a>(
    headers: &'a Headers,
    root_id: impl FnOnce(&'a Headers) -> Option<&'a HeaderValue>,
) -> bool {
    decide_with(ROOT_THRESHOLD.load(Ordering::Relaxed), headers, root_id)
}

/// The `traceparent`'s decision, else the root decision of `threshold` for the id.
#[cfg(feature = "opentelemetry")]
fn decide_with<'a>(
    threshold: u64,
    headers: &'a Headers,
    root_id: impl FnOnce(&'a Headers) -> Option<&'a HeaderValue>,
) -> bool {
    if let Some(parsed) = headers
        .traceparent()
        .and_then(|value| super::traceparent::parse(value.as_bytes()))
    {
        return parsed.sampled();
    }
    if threshold == u64::MAX {
        return true;
    }
    // no id to decide by: sampled, as without head sampling
    root_id(headers).is_none_or(|id| threshold > 0 && hash(id.as_bytes()) <= threshold)
}

/// FNV-1a: the same on every run and in every process.
#[cfg(feature = "opentelemetry")]
fn hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Gives a message of an unsampled trace a `traceparent` that says so, when it has none:
/// the services after it then decide the same, and their logs carry its trace id.
#[cfg(feature = "opentelemetry")]
pub(crate) fn mark_unsampled(headers: &mut Headers) {
    if headers.traceparent().is_some() {
        return;
    }
    // ids must not be all zeros: a set top bit rules that out
    let trace_id = fastrand::u128(..) | 1 << 127;
    let span_id = fastrand::u64(..) | 1 << 63;
    let traceparent =
        super::traceparent::format(&trace_id.to_be_bytes(), &span_id.to_be_bytes(), false);
    headers.append(
        crate::headers::known::TRACEPARENT,
        HeaderValue::from_bytes(crate::buffer::copy_shared(&traceparent)),
    );
}

#[cfg(all(test, feature = "opentelemetry"))]
mod tests {
    use super::*;

    fn headers(traceparent: Option<&str>, id: &str, causation: Option<&str>) -> Headers {
        let mut headers = Headers::new();
        headers.append("ce_id", id);
        if let Some(cause) = causation {
            headers.append(names::CAUSATION_ID, cause);
        }
        if let Some(traceparent) = traceparent {
            headers.append("Traceparent", traceparent);
        }
        headers
    }

    #[test]
    fn a_traceparent_decides_whatever_the_ratio() {
        let sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        for threshold in [0, u64::MAX / 2, u64::MAX] {
            let h = headers(Some(sampled), "id", None);
            assert!(decide_with(threshold, &h, |h| h.message_id_value()));
            let h = headers(Some(unsampled), "id", None);
            assert!(!decide_with(threshold, &h, |h| h.message_id_value()));
        }
    }

    #[test]
    fn new_traces_are_sampled_by_ratio_of_their_id() {
        let ids: Vec<String> = (0..10_000)
            .map(|_| uuid::Uuid::now_v7().to_string())
            .collect();
        let share = |ratio: f64| {
            let threshold = (ratio * u64::MAX as f64) as u64;
            ids.iter()
                .filter(|id| {
                    decide_with(threshold, &headers(None, id, None), |h| {
                        h.message_id_value()
                    })
                })
                .count()
        };
        assert_eq!(share(0.0), 0);
        let tenth = share(0.1);
        assert!((800..=1200).contains(&tenth), "{tenth} of 10,000 at 0.1");
        let half = share(0.5);
        assert!((4700..=5300).contains(&half), "{half} of 10,000 at 0.5");
        assert_eq!(
            ids.iter()
                .filter(|id| decide_with(u64::MAX, &headers(None, id, None), |_| None))
                .count(),
            10_000
        );
    }

    #[test]
    fn a_handler_publishes_as_its_message_was_decided() {
        let threshold = u64::MAX / 2;
        for _ in 0..200 {
            let handled = uuid::Uuid::now_v7().to_string();
            let published = uuid::Uuid::now_v7().to_string();
            let delivery = headers(None, &handled, None);
            let follow_up = headers(None, &published, Some(&handled));
            assert_eq!(
                decide_with(threshold, &delivery, |h| h.message_id_value()),
                decide_with(threshold, &follow_up, |h| h
                    .get(names::CAUSATION_ID)
                    .or_else(|| h.message_id_value())),
                "{handled} -> {published}"
            );
        }
    }

    #[test]
    fn an_unsampled_root_gets_a_traceparent_that_says_so() {
        let mut h = headers(None, "id", None);
        mark_unsampled(&mut h);
        let traceparent = h.traceparent().expect("written").as_bytes().to_vec();
        let parsed = super::super::traceparent::parse(&traceparent).expect("valid");
        assert!(!parsed.sampled());
        // one that is there stays
        mark_unsampled(&mut h);
        assert_eq!(h.get_all(names::TRACEPARENT).count(), 1);
        assert_eq!(h.traceparent().unwrap().as_bytes(), traceparent.as_slice());
    }
}
