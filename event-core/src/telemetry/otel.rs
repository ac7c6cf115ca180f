//! OpenTelemetry (feature `opentelemetry`): trace context injected into published headers and
//! extracted as the parent of process spans, through the global propagator or, while none is
//! set, a W3C fast path that writes and reads what the W3C propagators would.

use std::sync::LazyLock;

use opentelemetry::Context;
use opentelemetry::propagation::{
    Extractor, Injector, TextMapCompositePropagator, TextMapPropagator,
};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::traceparent;
use crate::headers::{HeaderName, HeaderValue, Headers, Role, known, names};
use crate::hex::hex_lower;

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

/// Sets a backend's attribute on `span`'s OpenTelemetry data.
pub(super) fn set_attribute(
    span: &Span,
    key: &'static str,
    value: crate::broker::AttributeValue<'_>,
) {
    use crate::broker::AttributeValue;
    match value {
        AttributeValue::Str(text) => span.set_attribute(key, text.to_owned()),
        AttributeValue::Int(number) => span.set_attribute(key, number),
        AttributeValue::Bool(flag) => span.set_attribute(key, flag),
    }
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
            HeaderValue::from_bytes(crate::buffer::copy_shared(&traceparent::format(
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
    let custom =
        opentelemetry::global::get_text_map_propagator(|global| global.fields().next().is_some());
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
        if let Some(trace_id) = super::fields::trace_id_of(headers) {
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
