//! Relays: services that handle [`Probe`]s on one topic and publish each on the next, one of
//! them noting whether the OpenTelemetry layer knows its handler's span.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use opentelemetry::trace::TraceContextExt as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::broker::{Broker, PublishError};
use crate::publish::Publisher;
use crate::service::{RunningService, Service};
use crate::testkit::Probe;

/// A relay: handles [`Probe`]s on one topic and publishes one on the next.
pub(super) fn relay(
    next: Publisher<Probe>,
) -> impl Fn(Probe) -> BoxFuture<'static, Result<(), PublishError>> + Clone + Send + Sync + 'static
{
    move |probe: Probe| {
        let next = next.clone();
        Box::pin(async move {
            tracing::info!(target: "testkit", seq = probe.seq, "relaying");
            next.publish(&probe).await.map(|_| ())
        })
    }
}

/// Starts a service named `relay` whose handler `relay` handles `topic`.
pub async fn start_relay<H, Args>(broker: Arc<dyn Broker>, topic: &str, relay: H) -> RunningService
where
    H: crate::subscribe::Handler<Probe, Args>,
    Args: 'static,
{
    Service::builder("relay")
        .broker(broker)
        .subscribe(topic, relay)
        .build()
        .expect("build the relay service")
        .start()
        .await
        .expect("start the relay service")
}

/// Starts a [`watched_relay`] from `topic` to `next_topic`: the service, and what its
/// handler saw.
pub async fn start_watched_relay(
    broker: Arc<dyn Broker>,
    topic: &str,
    next_topic: &str,
) -> (RunningService, LayerSeen) {
    let next = Publisher::<Probe>::new(broker.clone(), "relay", next_topic);
    let seen = LayerSeen::default();
    let service = start_relay(broker, topic, watched_relay(next, seen.clone())).await;
    (service, seen)
}

/// Which relayed [`Probe`]s (by `seq`) ran in a span the OpenTelemetry layer knows: a span
/// the layer leaves out has no OpenTelemetry context.
#[derive(Clone, Debug, Default)]
pub struct LayerSeen(Arc<std::sync::Mutex<HashMap<u64, bool>>>);

impl LayerSeen {
    /// Per `seq`, whether the layer knew the handler's span.
    pub fn by_seq(&self) -> HashMap<u64, bool> {
        self.0.lock().expect("not poisoned").clone()
    }
}

/// A relay (handles [`Probe`]s and publishes each on with `next`) that also notes in `seen`
/// whether the OpenTelemetry layer knows the span its handler runs in.
pub fn watched_relay(
    next: Publisher<Probe>,
    seen: LayerSeen,
) -> impl Fn(Probe) -> BoxFuture<'static, Result<(), PublishError>> + Clone + Send + Sync + 'static
{
    let relay = relay(next);
    move |probe: Probe| {
        let known = tracing::Span::current()
            .context()
            .span()
            .span_context()
            .is_valid();
        seen.0
            .lock()
            .expect("not poisoned")
            .insert(probe.seq, known);
        relay(probe)
    }
}
