//! A started service ([`RunningService`]), and what stopping it did ([`ShutdownReport`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::broker::{Broker, DrainReport, Subscription};
use crate::publish::{Publisher, TopicFor};

/// A started service.
pub struct RunningService {
    pub(super) name: String,
    pub(super) broker: Arc<dyn Broker>,
    pub(super) subscriptions: Vec<Subscription>,
    pub(super) shutdown_timeout: Duration,
}

impl fmt::Debug for RunningService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningService")
            .field("name", &self.name)
            .field("subscriptions", &self.subscriptions.len())
            .finish_non_exhaustive()
    }
}

/// What a shutdown did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Per subscription (topic, drain report).
    pub drained: Vec<(String, DrainReport)>,
    /// Whether the drain deadline expired before every subscription stopped.
    pub timed_out: bool,
    /// The broker's error on disconnect, as text.
    pub disconnect_error: Option<String>,
}

impl RunningService {
    /// The service name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The broker.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// A publisher of `T` to `topic`, sending as this service.
    pub fn publisher<T: prost::Message + prost::Name>(
        &self,
        topic: impl TopicFor<T>,
    ) -> Publisher<T> {
        Publisher::new(self.broker.clone(), &self.name, topic)
    }

    /// Stops fetching and drains every subscription (bounded by the shutdown timeout), but
    /// leaves the broker connected (for brokers shared with other services).
    pub async fn stop(self) -> ShutdownReport {
        let mut report = ShutdownReport::default();
        let topics: Vec<String> = self
            .subscriptions
            .iter()
            .map(|s| s.topic().to_owned())
            .collect();
        let drains = futures_util::future::join_all(
            self.subscriptions
                .into_iter()
                .map(Subscription::unsubscribe),
        );
        match tokio::time::timeout(self.shutdown_timeout, drains).await {
            Ok(reports) => report.drained = topics.into_iter().zip(reports).collect(),
            Err(_) => report.timed_out = true,
        }
        tracing::info!(service = %self.name, ?report, "subscribers stopped");
        report
    }

    /// Stops fetching, drains every subscription (bounded by the shutdown timeout), then
    /// disconnects the broker, which flushes what is queued for publishing.
    pub async fn shutdown(self) -> ShutdownReport {
        let broker = self.broker.clone();
        let name = self.name.clone();
        let mut report = self.stop().await;
        if let Err(error) = broker.disconnect().await {
            report.disconnect_error = Some(crate::error_chain(&error));
        }
        tracing::info!(service = %name, "broker disconnected");
        report
    }
}
