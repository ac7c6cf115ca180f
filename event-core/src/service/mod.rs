//! The service bootstrap: a name, a broker, state, and the subscribers to run.

// ServiceError carries both source locations of a conflict; it is returned once, at startup.
#![allow(clippy::result_large_err)]

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::broker::Broker;
use crate::publish::{Publisher, TopicFor};
use crate::subscribe::{Location, StateMap};

mod builder;
mod error;
mod running;

use builder::Planned;
pub use builder::ServiceBuilder;
pub use error::ServiceError;
pub use running::{RunningService, ShutdownReport};

/// Conversion into the shared broker handle a service uses.
pub trait IntoSharedBroker {
    /// Converts.
    fn into_shared(self) -> Arc<dyn Broker>;
}

impl<B: Broker> IntoSharedBroker for B {
    fn into_shared(self) -> Arc<dyn Broker> {
        Arc::new(self)
    }
}

impl IntoSharedBroker for Arc<dyn Broker> {
    fn into_shared(self) -> Arc<dyn Broker> {
        self
    }
}

/// A service: subscribers and publishers on one broker, started and drained together.
pub struct Service {
    name: String,
    broker: Arc<dyn Broker>,
    state: Arc<StateMap>,
    subscribers: Vec<Planned>,
    shutdown_timeout: Duration,
}

impl fmt::Debug for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .field("broker", &self.broker)
            .field("subscribers", &self.subscribers.len())
            .finish_non_exhaustive()
    }
}

/// A subscriber of a service, as planned.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriberInfo {
    /// Topic.
    pub topic: String,
    /// Queue group.
    pub queue: Option<String>,
    /// Handler path.
    pub handler: String,
    /// Expected message type.
    pub message_type: String,
    /// Where it was registered.
    pub location: Location,
    /// Whether it came from `#[subscriber]`.
    pub registered: bool,
}

impl Service {
    /// Starts building a service named `name` (its `ce_source`).
    pub fn builder(name: impl Into<String>) -> ServiceBuilder {
        ServiceBuilder::new(name.into())
    }

    /// The service name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The broker.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// The subscribers, in start order.
    pub fn subscribers(&self) -> Vec<SubscriberInfo> {
        self.subscribers
            .iter()
            .map(|p| SubscriberInfo {
                topic: p.topic.clone(),
                queue: p.options.queue_name().map(str::to_owned),
                handler: p.subscriber.handler_name.clone(),
                message_type: p.subscriber.message_type.clone(),
                location: p.location,
                registered: p.registered,
            })
            .collect()
    }

    /// A publisher of `T` to `topic`, sending as this service.
    pub fn publisher<T: prost::Message + prost::Name>(
        &self,
        topic: impl TopicFor<T>,
    ) -> Publisher<T> {
        Publisher::new(self.broker.clone(), &self.name, topic)
    }

    /// Connects and starts every subscriber; returns a handle to stop them.
    ///
    /// # Errors
    ///
    /// [`ServiceError::Connect`] or [`ServiceError::Subscribe`]; subscribers started before
    /// the failure are stopped again.
    pub async fn start(self) -> Result<RunningService, ServiceError> {
        self.broker
            .connect()
            .await
            .map_err(|source| ServiceError::Connect {
                service: self.name.clone(),
                broker: self.broker.name(),
                source,
            })?;
        let mut subscriptions = Vec::with_capacity(self.subscribers.len());
        for planned in self.subscribers {
            let handler_name = planned.subscriber.handler_name.clone();
            let raw = planned
                .subscriber
                .bind_with(self.state.clone(), &planned.options);
            match self
                .broker
                .subscribe(&planned.topic, planned.options, raw)
                .await
            {
                Ok(sub) => {
                    tracing::info!(
                        service = %self.name,
                        topic = %planned.topic,
                        queue = sub.queue().unwrap_or("-"),
                        handler = %handler_name,
                        "subscribed"
                    );
                    subscriptions.push(sub);
                }
                Err(source) => {
                    for sub in subscriptions {
                        sub.unsubscribe().await;
                    }
                    return Err(ServiceError::Subscribe {
                        service: self.name,
                        handler: handler_name,
                        topic: planned.topic,
                        source,
                    });
                }
            }
        }
        Ok(RunningService {
            name: self.name,
            broker: self.broker,
            subscriptions,
            shutdown_timeout: self.shutdown_timeout,
        })
    }

    /// Starts, runs until SIGINT or SIGTERM, then drains and disconnects.
    ///
    /// # Errors
    ///
    /// As [`Service::start`], or [`ServiceError::Signal`] when signals cannot be awaited.
    pub async fn run(self) -> Result<ShutdownReport, ServiceError> {
        let name = self.name.clone();
        let running = self.start().await?;
        shutdown_signal()
            .await
            .map_err(|source| ServiceError::Signal {
                service: name,
                source,
            })?;
        Ok(running.shutdown().await)
    }

    /// Starts, runs until `signal` resolves, then drains and disconnects.
    ///
    /// # Errors
    ///
    /// As [`Service::start`].
    pub async fn run_until(
        self,
        signal: impl Future<Output = ()>,
    ) -> Result<ShutdownReport, ServiceError> {
        let running = self.start().await?;
        signal.await;
        Ok(running.shutdown().await)
    }
}

async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}
