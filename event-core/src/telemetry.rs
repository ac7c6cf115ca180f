//! Observability: `tracing` spans, W3C trace context and metrics.
//!
//! # Spans
//!
//! Every typed publish ([`Publisher`](crate::Publisher)) and every dead-letter publish runs in
//! a `publish {topic}` span (OpenTelemetry kind producer), and every handler run, typed or raw,
//! in a `process {topic}` span (kind consumer). A direct call of the raw
//! [`Broker::publish`](crate::Broker::publish) is not instrumented: it is the byte-level API
//! under the framework, and its trace headers are whatever the caller writes. The tracing span names are
//! `publish` and `process`; the `otel.name` field carries the full name. Both spans are at
//! `INFO` level with target `event`, and carry the OpenTelemetry messaging attribute names:
//!
//! | field | publish | process |
//! |---|---|---|
//! | `messaging.system` (`kafka`, `rabbitmq`, `memory`) | ✓ | ✓ |
//! | `messaging.operation.type` | `send` | `process` |
//! | `messaging.destination.name` (the topic) | ✓ | ✓ |
//! | `messaging.consumer.group.name` (the queue group) | | ✓ |
//! | `messaging.message.id`, `messaging.message.body.size` | ✓ | ✓ |
//! | `messaging.destination.partition.id`, `messaging.kafka.offset`, `messaging.kafka.message.key` | ✓ | ✓ |
//! | `messaging.rabbitmq.destination.routing_key` | ✓ | ✓ |
//! | `messaging.rabbitmq.message.delivery_tag` | | ✓ |
//! | `cloudevents.event_type` (the `ce_type` header) | ✓ | ✓ |
//! | `correlation_id`, `causation_id` (DESIGN.md §4) | ✓ | ✓ |
//! | `event.handler`, `event.attempt`, `trace_id` | | ✓ |
//! | `event.outcome` (`acked`, `retried`, `dead-lettered`, `returned`) | | ✓ |
//! | `error.type` (a [`FailureKind`] or a broker error kind), `event.payload_kind` | ✓ | ✓ |
//!
//! The handler's future runs inside its process span, so every log line the handler writes
//! carries the topic, the message id, the handler name, the trace id and the correlation and
//! causation ids. A handler that publishes does so inside its process span: the publish span is
//! its child.
//!
//! # Trace context
//!
//! Without the `opentelemetry` feature the `traceparent`, `tracestate` and `baggage` headers
//! pass from a handled message to what its handler publishes, untouched (see
//! [`Context`](crate::Context)); the process span's `trace_id` is read from `traceparent`.
//!
//! With the feature, a typed publish span's OpenTelemetry context is injected into the
//! published headers (a dead letter keeps the original message's trace headers, so that a
//! replay continues the original trace), and a process span's parent is extracted from the message's headers (names read in
//! any case: go-micro writes `Traceparent`), so one trace crosses services through any broker.
//! The global propagator (`opentelemetry::global::set_text_map_propagator`) is used; while none
//! is set, W3C trace context and baggage are.
//!
//! # Head sampling
//!
//! `tracing-opentelemetry` turns every span it sees into OpenTelemetry span data (an owned
//! copy of each text field, the builder, its attributes) before the SDK's sampler decides
//! whether to keep it, so a sampler that drops 99 % of traces still pays for most of them.
//! With the `opentelemetry` feature the framework therefore decides first, for its own
//! spans, and gives the spans of a trace that is not sampled the target
//! [`UNSAMPLED_TARGET`] instead of `event`. Leave that target out of the OpenTelemetry layer
//! and those spans cost what a span costs without OpenTelemetry, while log layers still see
//! them with every field:
//!
//! ```ignore
//! use tracing_subscriber::filter::{LevelFilter, Targets};
//! use tracing_subscriber::Layer as _;
//!
//! let otel = tracing_opentelemetry::layer().with_tracer(tracer).with_filter(
//!     Targets::new()
//!         .with_default(LevelFilter::INFO)
//!         .with_target(event_core::telemetry::UNSAMPLED_TARGET, LevelFilter::OFF),
//! );
//! ```
//!
//! The decision follows the message: a message whose `traceparent` says "not sampled"
//! (flags `00`) is processed, and everything its handler publishes is published, in
//! unsampled spans; its `traceparent` passes on unchanged, so the next service decides the
//! same. A publish inside a span of the application's (an HTTP request, say) continues that
//! span's trace and is decided on by the OpenTelemetry layer and the SDK, as any child span.
//! A new trace (a publish outside any span and any handler, or a message without
//! `traceparent`) is sampled with the ratio given to [`set_root_sampling`] (1.0, every trace,
//! unless set), decided from the message id, so a redelivery decides the same; an unsampled
//! new trace still gets a `traceparent` (flags `00`), so that the services after it agree and
//! their log lines carry its trace id. Give the SDK a parent-based sampler (its default) so
//! that it keeps what the framework sampled.
//!
//! Without the filter every span reaches the OpenTelemetry layer as before and the SDK's
//! sampler has the last word.
//!
//! # Metrics
//!
//! Through the [`metrics`] facade: install any recorder (Prometheus, OpenTelemetry, StatsD)
//! *before* building publishers and services, as their instruments are registered once when
//! they are made. With no recorder installed the instruments are no-ops. Names and labels are in
//! [`metric`] and [`label`].
//!
// `set_root_sampling` exists only with the `opentelemetry` feature.
#![cfg_attr(
    feature = "opentelemetry",
    doc = "[`set_root_sampling`]: set_root_sampling"
)]
#![cfg_attr(
    not(feature = "opentelemetry"),
    doc = "[`set_root_sampling`]: crate#features"
)]

use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Label};
use tracing::Span;
use tracing::field::Empty;

use crate::broker::{Delivery, FailureKind, Message, Position, PublishError, Receipt};
use crate::headers::{HeaderValue, Headers, names};

/// The target of the framework's spans in a sampled trace (and of all of them without the
/// `opentelemetry` feature).
pub const SAMPLED_TARGET: &str = "event";

/// The target of the framework's `publish` and `process` spans in a trace that is not
/// sampled (see [Head sampling](self#head-sampling)): leave it out of the OpenTelemetry layer.
pub const UNSAMPLED_TARGET: &str = "event::unsampled";

/// Samples `ratio` (0.0 to 1.0) of the traces the framework starts: publishes outside any
/// span and any handler, and messages that arrive without `traceparent` (see
/// [Head sampling](self#head-sampling)). Process-wide; 1.0 until set. A trace that arrives
/// with a `traceparent` keeps the decision it carries.
///
/// # Panics
///
/// If `ratio` is not between 0.0 and 1.0.
#[cfg(feature = "opentelemetry")]
pub fn set_root_sampling(ratio: f64) {
    assert!(
        (0.0..=1.0).contains(&ratio),
        "set_root_sampling: the ratio must be between 0.0 and 1.0, not {ratio}"
    );
    sampling::set_ratio(ratio);
}

/// The W3C `traceparent` header (`vv-<trace id>-<span id>-<flags>`, lower-case hex), read by
/// the rules of OpenTelemetry's W3C propagator and written as it writes it: one place for
/// its layout, which the sampling decision, the `trace_id` field and the propagation fast
/// paths share.
mod traceparent {
    /// The length of a version-00 `traceparent`.
    pub(super) const LEN: usize = 55;

    /// The fields of a valid `traceparent`.
    #[derive(Debug, PartialEq, Eq)]
    pub(super) struct Parsed<'a> {
        /// 32 lower-case hex digits, not all zero.
        pub(super) trace_id: &'a str,
        /// 16 lower-case hex digits, not all zero.
        #[cfg_attr(not(feature = "opentelemetry"), allow(dead_code))]
        pub(super) span_id: &'a str,
        #[cfg_attr(not(feature = "opentelemetry"), allow(dead_code))]
        pub(super) flags: u8,
    }

    impl Parsed<'_> {
        /// Whether the sampled flag is set.
        #[cfg_attr(not(feature = "opentelemetry"), allow(dead_code))]
        pub(super) fn sampled(&self) -> bool {
            self.flags & 1 == 1
        }
    }

    /// `value` read as a `traceparent`; `None` when it is not a valid one. Surrounding
    /// blanks are ignored; version `00` is exactly [`LEN`] bytes long, a later version
    /// (`ff` excepted) may go on after a `-`.
    pub(super) fn parse(value: &[u8]) -> Option<Parsed<'_>> {
        let value = value.trim_ascii();
        let lower_hex = |bytes: &[u8]| bytes.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let zero = |bytes: &[u8]| bytes.iter().all(|&b| b == b'0');
        let valid = value.len() >= LEN
            && value[2] == b'-'
            && value[35] == b'-'
            && value[52] == b'-'
            && lower_hex(&value[..2])
            && value[..2] != *b"ff"
            && (value.len() == LEN || (value[..2] != *b"00" && value[LEN] == b'-'))
            && lower_hex(&value[3..35])
            && lower_hex(&value[36..52])
            && lower_hex(&value[53..LEN])
            && !zero(&value[3..35])
            && !zero(&value[36..52]);
        if !valid {
            return None;
        }
        let text = std::str::from_utf8(&value[..LEN]).ok()?;
        Some(Parsed {
            trace_id: &text[3..35],
            span_id: &text[36..52],
            flags: u8::from_str_radix(&text[53..], 16).ok()?,
        })
    }

    /// A version-00 `traceparent` of these ids, with no flag but `sampled`.
    #[cfg(feature = "opentelemetry")]
    pub(super) fn format(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> [u8; LEN] {
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        crate::publish::hex_lower(trace_id, &mut out[3..35]);
        crate::publish::hex_lower(span_id, &mut out[36..52]);
        if sampled {
            out[LEN - 1] = b'1';
        }
        out
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_traceparent_is_read_by_the_propagators_rules() {
            let id = "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7";
            let valid = |flags| {
                Some(Parsed {
                    trace_id: "4bf92f3577b34da6a3ce929d0e0e4736",
                    span_id: "00f067aa0ba902b7",
                    flags,
                })
            };
            for (traceparent, expected) in [
                (format!("00-{id}-01"), valid(1)),
                (format!("00-{id}-00"), valid(0)),
                (format!("00-{id}-03"), valid(3)),
                (format!(" 00-{id}-01\t"), valid(1)),
                // a later version may append fields; version 00 may not
                (format!("01-{id}-01-extra"), valid(1)),
                (format!("00-{id}-01-extra"), None),
                (format!("01-{id}-01extra"), None),
                (format!("ff-{id}-01"), None),
                // upper case and non-hex digits
                (format!("00-{id}-0F"), None),
                (format!("00-{}-01", id.to_uppercase()), None),
                (format!("00-{id}-0x"), None),
                // ids of zeros
                (
                    "00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_owned(),
                    None,
                ),
                (
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01".to_owned(),
                    None,
                ),
                (format!("00-{id}"), None),
                ("00-aa-bb-01".to_owned(), None),
                (String::new(), None),
            ] {
                assert_eq!(parse(traceparent.as_bytes()), expected, "{traceparent:?}");
            }
        }

        #[cfg(feature = "opentelemetry")]
        #[test]
        fn what_is_written_reads_back() {
            let trace_id = [0xab; 16];
            let span_id = [0x01; 8];
            for sampled in [false, true] {
                let written = format(&trace_id, &span_id, sampled);
                let parsed = parse(&written).expect("valid");
                assert_eq!(parsed.trace_id, "ab".repeat(16));
                assert_eq!(parsed.span_id, "01".repeat(8));
                assert_eq!(parsed.sampled(), sampled);
            }
        }
    }
}

/// The sampling decision of the framework's spans (see [Head sampling](self#head-sampling)).
pub(crate) mod sampling {
    #[cfg(feature = "opentelemetry")]
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::{HeaderValue, Headers, names};

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
                let in_span = tracing::dispatcher::get_default(|dispatch| {
                    dispatch.current_span().id().is_some()
                });
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
            HeaderValue::from_bytes(crate::publish::copy_shared(&traceparent)),
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
}

/// Metric names.
pub mod metric {
    /// Counter: messages a typed publisher handed to the broker and the broker took.
    /// Labels: topic, message_type, backend.
    pub const PUBLISHED: &str = "event_published_total";
    /// Counter: publishes the broker refused or that failed. Labels: topic, message_type,
    /// backend, error_kind.
    pub const PUBLISH_FAILURES: &str = "event_publish_failures_total";
    /// Counter: messages received by a subscription (each message once, whatever its attempts).
    /// Labels: topic, message_type, group, backend.
    pub const CONSUMED: &str = "event_consumed_total";
    /// Counter: messages acknowledged after their handler succeeded. Labels as consumed.
    pub const ACKED: &str = "event_acked_total";
    /// Counter: handler runs that failed and were scheduled to run again. Labels as consumed,
    /// plus error_kind.
    pub const RETRIED: &str = "event_retried_total";
    /// Counter: messages sent to the dead-letter topic. Labels as consumed, plus error_kind.
    pub const DEAD_LETTERED: &str = "event_dead_lettered_total";
    /// Counter: failed attempts to publish a message to its dead-letter topic. The message is
    /// not acknowledged meanwhile: it is held, and the publish retried with backoff, until the
    /// dead-letter topic takes it ([`Subscription::stalled`](crate::broker::Subscription::stalled)
    /// says how many are held). Labels as consumed, plus error_kind: the broker error's kind
    /// (`topic-not-found`, `unavailable`, `timeout`, …).
    pub const DEAD_LETTER_FAILURES: &str = "event_dead_letter_failures_total";
    /// Counter: messages that could not be decoded as the subscriber's type, by what the bytes
    /// looked like. Labels as consumed, plus payload_kind.
    pub const DECODE_ERRORS: &str = "event_decode_errors_total";
    /// Counter: messages carrying fields this build does not know (the producer's schema is
    /// newer). Labels as consumed.
    pub const SCHEMA_DRIFT: &str = "event_schema_drift_total";
    /// Histogram: handler run time in seconds, one sample per run, timed with the CPU's time
    /// stamp counter where the CPU says it is invariant (`CLOCK_MONOTONIC` otherwise).
    /// Labels as consumed.
    pub const HANDLER_DURATION: &str = "event_handler_duration_seconds";
    /// Gauge: messages of a subscription between receipt and settlement. Labels as consumed.
    pub const IN_FLIGHT: &str = "event_in_flight";
    /// Gauge: messages in a partition behind the group's position, as the backend reports it
    /// (Kafka). Labels: topic, partition, group, backend.
    pub const CONSUMER_LAG: &str = "event_consumer_lag";
}

/// Metric label names.
pub mod label {
    /// The topic.
    pub const TOPIC: &str = "topic";
    /// The protobuf full name the publisher or subscriber is typed with (`raw` for raw
    /// handlers).
    pub const MESSAGE_TYPE: &str = "message_type";
    /// The queue group; empty for broadcast subscriptions.
    pub const GROUP: &str = "group";
    /// The backend (`memory`, `kafka`, `amqp`).
    pub const BACKEND: &str = "backend";
    /// A [`FailureKind`](crate::broker::FailureKind) or broker error kind.
    pub const ERROR_KIND: &str = "error_kind";
    /// What undecodable bytes looked like (`json`, `confluent-frame`, …).
    pub const PAYLOAD_KIND: &str = "payload_kind";
    /// A partition number.
    pub const PARTITION: &str = "partition";
}

/// What the delivery loop did with one handler run, as written into `event.outcome`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RunOutcome {
    Acked,
    Retried,
    DeadLettered,
    Returned,
}

impl RunOutcome {
    fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Acked => "acked",
            RunOutcome::Retried => "retried",
            RunOutcome::DeadLettered => "dead-lettered",
            RunOutcome::Returned => "returned",
        }
    }
}

/// The instruments of one typed publisher.
pub(crate) struct PublishTelemetry {
    span_name: Box<str>,
    system: &'static str,
    published: Counter,
    labels: Vec<Label>,
}

impl PublishTelemetry {
    pub(crate) fn new(
        system: &'static str,
        backend: &'static str,
        topic: &str,
        message_type: &str,
    ) -> Self {
        let labels = vec![
            Label::new(label::TOPIC, topic.to_owned()),
            Label::new(label::MESSAGE_TYPE, message_type.to_owned()),
            Label::new(label::BACKEND, backend),
        ];
        PublishTelemetry {
            span_name: format!("publish {topic}").into(),
            system,
            published: metrics::counter!(metric::PUBLISHED, labels.iter()),
            labels,
        }
    }

    /// The publish span of `message`, with the span's trace context written into its headers.
    pub(crate) fn span(&self, topic: &str, message: &mut Message) -> Span {
        // no subscriber enables `info` anywhere: no span, and without OpenTelemetry no trace
        // context to write either, so no sampling decision (it reads the headers)
        #[cfg(not(feature = "opentelemetry"))]
        if !tracing::level_enabled!(tracing::Level::INFO) {
            return Span::none();
        }
        let sampled = sampling::of_publish(&message.headers);
        let span = publish_span(&self.span_name, self.system, topic, message, sampled);
        #[cfg(feature = "opentelemetry")]
        {
            if !span.is_disabled() {
                otel::inject(&span, &mut message.headers);
            }
            if !sampled {
                sampling::mark_unsampled(&mut message.headers);
            }
        }
        span
    }

    /// Records the broker's answer on the span and in the counters.
    pub(crate) fn finish(&self, span: &Span, result: &Result<Receipt, PublishError>) {
        match result {
            Ok(receipt) => {
                self.published.increment(1);
                record_position(span, receipt.position());
            }
            Err(error) => {
                let kind = error.broker_error().kind();
                let mut labels = self.labels.clone();
                labels.push(Label::new(label::ERROR_KIND, kind));
                metrics::counter!(metric::PUBLISH_FAILURES, labels).increment(1);
                span.record("otel.status_code", "error");
                span.record("error.type", kind);
            }
        }
    }
}

/// A `publish {topic}` span for `message`, a child of the current span; with the target
/// [`UNSAMPLED_TARGET`] unless `sampled`.
///
/// It writes no trace context into the message: a typed publish does (see
/// [`PublishTelemetry::span`]), a dead letter keeps the original headers unchanged.
pub(crate) fn publish_span(
    span_name: &str,
    system: &'static str,
    topic: &str,
    message: &Message,
    sampled: bool,
) -> Span {
    let headers = &message.headers;
    macro_rules! span {
        ($target:expr) => {
            tracing::info_span!(
                target: $target,
                "publish",
                otel.name = span_name,
                otel.kind = "producer",
                otel.status_code = Empty,
                messaging.system = system,
                messaging.operation.type = "send",
                messaging.operation.name = "publish",
                messaging.destination.name = topic,
                messaging.message.id = headers.message_id(),
                messaging.message.body.size = as_attribute(message.payload.len()),
                messaging.destination.partition.id = Empty,
                messaging.kafka.offset = Empty,
                messaging.kafka.message.key = Empty,
                messaging.rabbitmq.destination.routing_key = Empty,
                cloudevents.event_type = headers.message_type(),
                correlation_id = headers.get_str(names::CORRELATION_ID),
                causation_id = headers.get_str(names::CAUSATION_ID),
                error.type = Empty,
            )
        };
    }
    let span = if sampled {
        span!(SAMPLED_TARGET)
    } else {
        span!(UNSAMPLED_TARGET)
    };
    if span.is_disabled() {
        return span;
    }
    record_system_fields(&span, system, topic, message.key.as_deref());
    span
}

fn record_system_fields(span: &Span, system: &str, topic: &str, key: Option<&[u8]>) {
    match system {
        "rabbitmq" => {
            span.record("messaging.rabbitmq.destination.routing_key", topic);
        }
        "kafka" => {
            if let Some(key) = key.and_then(|k| std::str::from_utf8(k).ok()) {
                span.record("messaging.kafka.message.key", key);
            }
        }
        _ => {}
    }
}

/// A count as an `i64` field: `tracing-opentelemetry` turns `u64` values into text (one
/// allocation each) but keeps `i64` values integers, as OpenTelemetry expects.
fn as_attribute(count: impl TryInto<i64>) -> i64 {
    count.try_into().unwrap_or(i64::MAX)
}

fn record_position(span: &Span, position: &Position) {
    match position {
        Position::Offset { partition, offset } => {
            span.record(
                "messaging.destination.partition.id",
                tracing::field::display(partition),
            );
            span.record("messaging.kafka.offset", offset);
        }
        Position::DeliveryTag { delivery_tag, .. } => {
            span.record(
                "messaging.rabbitmq.message.delivery_tag",
                as_attribute(*delivery_tag),
            );
        }
        Position::Sequence { .. } | Position::Confirmed => {}
    }
}

/// The instruments of one subscription, shared by its delivery loop and its deliveries.
pub(crate) struct ConsumerTelemetry {
    span_name: Box<str>,
    system: &'static str,
    group: Option<Arc<str>>,
    labels: Vec<Label>,
    consumed: Counter,
    acked: Counter,
    in_flight: Gauge,
    duration: Histogram,
    drift: Counter,
}

impl std::fmt::Debug for ConsumerTelemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerTelemetry")
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

impl ConsumerTelemetry {
    pub(crate) fn new(
        system: &'static str,
        backend: &'static str,
        topic: &str,
        group: Option<&str>,
        message_type: Option<&str>,
    ) -> Self {
        let labels = vec![
            Label::new(label::TOPIC, topic.to_owned()),
            Label::new(
                label::MESSAGE_TYPE,
                message_type.unwrap_or("raw").to_owned(),
            ),
            Label::new(label::GROUP, group.unwrap_or_default().to_owned()),
            Label::new(label::BACKEND, backend),
        ];
        ConsumerTelemetry {
            span_name: format!("process {topic}").into(),
            system,
            group: group.map(Arc::from),
            consumed: metrics::counter!(metric::CONSUMED, labels.iter()),
            acked: metrics::counter!(metric::ACKED, labels.iter()),
            in_flight: metrics::gauge!(metric::IN_FLIGHT, labels.iter()),
            duration: metrics::histogram!(metric::HANDLER_DURATION, labels.iter()),
            drift: metrics::counter!(metric::SCHEMA_DRIFT, labels.iter()),
            labels,
        }
    }

    /// A message arrived: counted, and in flight until the guard drops.
    pub(crate) fn received(&self) -> InFlight<'_> {
        self.consumed.increment(1);
        self.in_flight.increment(1.0);
        InFlight(&self.in_flight)
    }

    /// The `process {topic}` span of one handler run, a child of the publisher's span when the
    /// headers carry its trace context; with the target [`UNSAMPLED_TARGET`] when the message
    /// belongs to a trace that is not sampled.
    pub(crate) fn span(&self, delivery: &Delivery, handler: &str) -> Span {
        // no subscriber enables `info` anywhere: no span either way, so no sampling decision
        // (it reads the headers) either
        if !tracing::level_enabled!(tracing::Level::INFO) {
            return Span::none();
        }
        let headers = delivery.headers();
        macro_rules! span {
            ($target:expr) => {
                tracing::info_span!(
                    target: $target,
                    parent: None,
                    "process",
                    otel.name = &*self.span_name,
                    otel.kind = "consumer",
                    otel.status_code = Empty,
                    messaging.system = self.system,
                    messaging.operation.type = "process",
                    messaging.operation.name = "process",
                    messaging.destination.name = delivery.topic(),
                    messaging.consumer.group.name = self.group.as_deref(),
                    messaging.message.id = headers.message_id(),
                    messaging.message.body.size = as_attribute(delivery.payload().len()),
                    messaging.destination.partition.id = Empty,
                    messaging.kafka.offset = Empty,
                    messaging.kafka.message.key = Empty,
                    messaging.rabbitmq.destination.routing_key = Empty,
                    messaging.rabbitmq.message.delivery_tag = Empty,
                    cloudevents.event_type = headers.message_type(),
                    correlation_id = headers.get_str(names::CORRELATION_ID),
                    causation_id = headers.get_str(names::CAUSATION_ID),
                    event.handler = handler,
                    event.attempt = i64::from(delivery.attempt()),
                    event.outcome = Empty,
                    event.payload_kind = Empty,
                    error.type = Empty,
                    trace_id = Empty,
                )
            };
        }
        let span = if sampling::of_delivery(headers) {
            span!(SAMPLED_TARGET)
        } else {
            span!(UNSAMPLED_TARGET)
        };
        if span.is_disabled() {
            return span;
        }
        record_system_fields(
            &span,
            self.system,
            delivery.topic(),
            delivery.message().key.as_deref(),
        );
        record_position(&span, delivery.position());
        #[cfg(feature = "opentelemetry")]
        otel::extract(&span, headers);
        #[cfg(not(feature = "opentelemetry"))]
        if let Some(trace_id) = trace_id_of(headers) {
            span.record("trace_id", trace_id);
        }
        span
    }

    /// A handler run took `elapsed`.
    pub(crate) fn ran(&self, elapsed: Duration) {
        self.duration.record(elapsed.as_secs_f64());
    }

    /// How the run ended, on the span and in the counters.
    pub(crate) fn settled(
        &self,
        span: &Span,
        outcome: RunOutcome,
        failure: Option<(FailureKind, Option<&str>)>,
    ) {
        span.record("event.outcome", outcome.as_str());
        match outcome {
            RunOutcome::Acked => self.acked.increment(1),
            RunOutcome::Retried => self.count(metric::RETRIED, failure),
            RunOutcome::DeadLettered => self.count(metric::DEAD_LETTERED, failure),
            RunOutcome::Returned => {}
        }
        if let Some((kind, payload_kind)) = failure {
            span.record("otel.status_code", "error");
            span.record("error.type", kind.as_str());
            if let Some(payload_kind) = payload_kind {
                span.record("event.payload_kind", payload_kind);
                if outcome == RunOutcome::DeadLettered {
                    let mut labels = self.labels.clone();
                    labels.push(Label::new(label::PAYLOAD_KIND, payload_kind.to_owned()));
                    metrics::counter!(metric::DECODE_ERRORS, labels).increment(1);
                }
            }
        }
    }

    fn count(&self, name: &'static str, failure: Option<(FailureKind, Option<&str>)>) {
        let mut labels = self.labels.clone();
        if let Some((kind, _)) = failure {
            labels.push(Label::new(label::ERROR_KIND, kind.as_str()));
        }
        metrics::counter!(name, labels).increment(1);
    }

    /// A dead-letter publish failed with a broker error of `error_kind`.
    pub(crate) fn dead_letter_failed(&self, error_kind: &'static str) {
        let mut labels = self.labels.clone();
        labels.push(Label::new(label::ERROR_KIND, error_kind));
        metrics::counter!(metric::DEAD_LETTER_FAILURES, labels).increment(1);
    }

    /// The schema drift counter, for [`Delivery`]s (the typed handler counts).
    pub(crate) fn drift(&self) -> &Counter {
        &self.drift
    }
}

/// Decrements the in-flight gauge when a message is settled or given up.
pub(crate) struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// The trace id of a W3C `traceparent` header (`00-<trace id>-<span id>-<flags>`).
#[cfg_attr(feature = "opentelemetry", allow(dead_code))]
fn trace_id_of(headers: &Headers) -> Option<&str> {
    traceparent::parse(headers.get(names::TRACEPARENT)?.as_bytes()).map(|parsed| parsed.trace_id)
}

#[cfg(feature = "opentelemetry")]
mod otel {
    use std::sync::LazyLock;

    use opentelemetry::Context;
    use opentelemetry::propagation::{
        Extractor, Injector, TextMapCompositePropagator, TextMapPropagator,
    };
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
    use tracing::Span;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::traceparent;
    use crate::headers::{HeaderName, HeaderValue, Headers, Role, known, names};
    use crate::publish::hex_lower;

    struct HeaderInjector<'a>(&'a mut Headers);

    impl Injector for HeaderInjector<'_> {
        fn set(&mut self, key: &str, value: String) {
            // the W3C names without allocating a name per message
            let name = match key {
                names::TRACEPARENT => known::TRACEPARENT,
                names::TRACESTATE => known::TRACESTATE,
                names::BAGGAGE => known::BAGGAGE,
                other => match HeaderName::new(other) {
                    Ok(name) => name,
                    Err(_) => return,
                },
            };
            // replaces the passed-through value, in any case
            self.0.insert(name, value);
        }
    }

    struct HeaderExtractor<'a>(&'a Headers);

    impl Extractor for HeaderExtractor<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get_str(key)
        }

        fn keys(&self) -> Vec<&str> {
            self.0.iter().map(|(name, _)| name.as_str()).collect()
        }
    }

    /// W3C trace context and baggage: used while the global propagator is the default no-op.
    static FALLBACK: LazyLock<TextMapCompositePropagator> = LazyLock::new(|| {
        TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ])
    });

    /// Runs `f` with the global propagator, or [`FALLBACK`] while none is set.
    fn with_propagator<R>(mut f: impl FnMut(&dyn TextMapPropagator) -> R) -> R {
        opentelemetry::global::get_text_map_propagator(|global| {
            if global.fields().next().is_some() {
                f(global)
            } else {
                f(&*FALLBACK)
            }
        })
    }

    pub(super) fn inject(span: &Span, headers: &mut Headers) {
        let cx = span.context();
        if !cx.span().span_context().is_valid() {
            // no OpenTelemetry layer: the passed-through headers stay as they are
            return;
        }
        let global = opentelemetry::global::get_text_map_propagator(|global| {
            let set = global.fields().next().is_some();
            if set {
                global.inject_context(&cx, &mut HeaderInjector(headers));
            }
            set
        });
        if !global {
            inject_w3c(&cx, headers);
        }
    }

    /// Writes what [`FALLBACK`] writes for `cx`, without the propagators' intermediate
    /// strings: `traceparent` is formatted on the stack.
    fn inject_w3c(cx: &Context, headers: &mut Headers) {
        let span = cx.span();
        let span_context = span.span_context();
        if span_context.is_valid() {
            headers.insert(
                known::TRACEPARENT,
                HeaderValue::from_bytes(crate::publish::copy_shared(&traceparent::format(
                    &span_context.trace_id().to_bytes(),
                    &span_context.span_id().to_bytes(),
                    span_context.is_sampled(),
                ))),
            );
            headers.insert(known::TRACESTATE, span_context.trace_state().header());
        }
        BaggagePropagator::new().inject_context(cx, &mut HeaderInjector(headers));
    }

    /// What [`FALLBACK`] extracts from `headers` when they carry a valid `traceparent` and
    /// neither `tracestate` nor `baggage`, without the propagators' intermediate vector;
    /// `None` for anything else, which the propagators read.
    fn extract_w3c(headers: &Headers) -> Option<Context> {
        if headers
            .iter()
            .any(|(name, _)| matches!(name.role(), Role::Tracestate | Role::Baggage))
        {
            return None;
        }
        let parsed = traceparent::parse(headers.traceparent()?.as_bytes())?;
        let span_context = SpanContext::new(
            TraceId::from_hex(parsed.trace_id).ok()?,
            SpanId::from_hex(parsed.span_id).ok()?,
            TraceFlags::new(parsed.flags) & TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        Some(Context::current().with_remote_span_context(span_context))
    }

    pub(super) fn extract(span: &Span, headers: &Headers) {
        let custom = opentelemetry::global::get_text_map_propagator(|global| {
            global.fields().next().is_some()
        });
        let parent = (!custom)
            .then(|| extract_w3c(headers))
            .flatten()
            .unwrap_or_else(|| {
                with_propagator(|propagator| propagator.extract(&HeaderExtractor(headers)))
            });
        // the span continues its parent's trace: its id is known without starting the span
        let parent_trace = {
            let parent_span = parent.span();
            let context = parent_span.span_context();
            context.is_valid().then(|| context.trace_id())
        };
        if span.set_parent(parent).is_err() {
            // no OpenTelemetry layer: read the trace id off the header
            if let Some(trace_id) = super::trace_id_of(headers) {
                span.record("trace_id", trace_id);
            }
            return;
        }
        let trace_id = parent_trace.or_else(|| {
            let cx = span.context();
            let context = cx.span().span_context().clone();
            context.is_valid().then(|| context.trace_id())
        });
        if let Some(trace_id) = trace_id {
            let mut hex = [0u8; 32];
            hex_lower(&trace_id.to_bytes(), &mut hex);
            span.record(
                "trace_id",
                std::str::from_utf8(&hex).expect("hex digits are ASCII"),
            );
        }
    }

    #[cfg(test)]
    mod tests {
        use std::str::FromStr;

        use opentelemetry::baggage::BaggageExt;
        use opentelemetry::trace::{SpanId, TraceId, TraceState};
        use opentelemetry::{Context, KeyValue};

        use super::*;

        fn written(headers: &Headers) -> Vec<(String, String)> {
            headers
                .iter()
                .map(|(name, value)| {
                    (
                        name.as_str().to_owned(),
                        value.to_str().expect("text").to_owned(),
                    )
                })
                .collect()
        }

        #[test]
        fn the_w3c_fast_path_reads_what_the_propagators_read() {
            let id = "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7";
            // (headers, whether the fast path takes them)
            let cases: &[(&[(&str, &str)], bool)] = &[
                (&[("traceparent", &format!("00-{id}-01"))], true),
                (&[("Traceparent", &format!("00-{id}-00"))], true),
                (&[("traceparent", &format!("00-{id}-ff"))], true),
                (&[("traceparent", &format!(" 00-{id}-01"))], true),
                (&[("traceparent", &format!("01-{id}-01-x"))], true),
                (
                    &[("traceparent", &format!("00-{}-01", id.to_uppercase()))],
                    false,
                ),
                (&[("traceparent", &format!("00-{id}-01-x"))], false),
                (
                    &[(
                        "traceparent",
                        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                    )],
                    false,
                ),
                (&[("traceparent", "garbage")], false),
                (
                    &[
                        ("traceparent", &format!("00-{id}-01")),
                        ("tracestate", "vendor=abc"),
                    ],
                    false,
                ),
                (
                    &[("traceparent", &format!("00-{id}-01")), ("baggage", "k=v")],
                    false,
                ),
                (&[], false),
            ];
            for (case, taken) in cases {
                let headers: Headers = case.iter().map(|(n, v)| (*n, *v)).collect();
                let slow = FALLBACK.extract(&HeaderExtractor(&headers));
                let fast = extract_w3c(&headers);
                assert_eq!(fast.is_some(), *taken, "{case:?}");
                if let Some(fast) = fast {
                    assert!(slow.span().span_context().is_valid(), "{case:?}");
                    assert_eq!(
                        fast.span().span_context(),
                        slow.span().span_context(),
                        "{case:?}"
                    );
                }
            }
        }

        #[test]
        fn the_w3c_fast_path_writes_what_the_propagators_write() {
            let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
            let span_id = SpanId::from_hex("00f067aa0ba902b7").unwrap();
            let state = TraceState::from_str("vendor=abc,other=1").unwrap();
            let contexts = [
                SpanContext::new(trace_id, span_id, TraceFlags::SAMPLED, true, state.clone()),
                // flags beyond "sampled" are not propagated
                SpanContext::new(trace_id, span_id, TraceFlags::new(0xff), false, state),
                SpanContext::new(
                    trace_id,
                    span_id,
                    TraceFlags::default(),
                    true,
                    TraceState::default(),
                ),
                SpanContext::empty_context(),
            ];
            for span_context in contexts {
                for with_baggage in [false, true] {
                    let mut cx = Context::new().with_remote_span_context(span_context.clone());
                    if with_baggage {
                        cx = cx.with_baggage([KeyValue::new("tenant", "acme")]);
                    }
                    let mut fast = Headers::new();
                    fast.append("traceparent", "passed through");
                    let mut slow = fast.clone();
                    inject_w3c(&cx, &mut fast);
                    FALLBACK.inject_context(&cx, &mut HeaderInjector(&mut slow));
                    assert_eq!(
                        written(&fast),
                        written(&slow),
                        "{span_context:?}, baggage: {with_baggage}"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_id_is_read_from_traceparent_in_any_case() {
        let mut headers = Headers::new();
        headers.append(
            "Traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        assert_eq!(
            trace_id_of(&headers),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        let mut bad = Headers::new();
        bad.append("traceparent", "00-xyz-00f067aa0ba902b7-01");
        assert_eq!(trace_id_of(&bad), None);
    }
}
