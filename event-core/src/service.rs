//! The service bootstrap: a name, a broker, state, and the subscribers to run.

// ServiceError carries both source locations of a conflict; it is returned once, at startup.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::broker::{
    self, Broker, BrokerError, BrokerUrlError, DrainReport, RetryPolicy, SubscribeOptions,
    Subscription,
};
use crate::publish::{Publisher, TopicFor};
use crate::subscribe::{ErasedSubscriber, Handler, Location, Registration, StateMap, registered};

/// Builds a [`Service`].
///
/// ```
/// use event_core::{memory::MemoryBroker, Service};
/// # #[derive(Clone, PartialEq, prost::Message)] pub struct UserCreated { #[prost(string, tag = "1")] pub email: String }
/// # impl prost::Name for UserCreated { const NAME: &'static str = "UserCreated"; const PACKAGE: &'static str = "users.v1"; }
///
/// async fn send_welcome(user: UserCreated) {}
///
/// let service = Service::builder("mailer")
///     .broker(MemoryBroker::new())
///     .subscribe("users.created", send_welcome)
///     .build()
///     .unwrap();
/// assert_eq!(service.name(), "mailer");
/// ```
#[must_use]
pub struct ServiceBuilder {
    name: String,
    broker: Option<Arc<dyn Broker>>,
    state: StateMap,
    subscribers: Vec<Planned>,
    use_registry: bool,
    shutdown_timeout: Duration,
}

struct Planned {
    topic: String,
    options: SubscribeOptions,
    subscriber: ErasedSubscriber,
    location: Location,
    registered: bool,
}

/// Why a service could not be built or started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// `EVENT_BROKER` (or the default) did not name a usable broker.
    #[error("service {service:?}: cannot create the broker from its URL")]
    BrokerUrl {
        /// Service name.
        service: String,
        /// Why.
        #[source]
        source: BrokerUrlError,
    },
    /// `with_registered_subscribers()` found nothing.
    #[error(
        "service {service:?} expected #[subscriber] functions but none are registered in this \
         binary. If they live in another crate, the linker drops that crate when nothing in \
         the binary refers to it: add `use that_crate as _;` (or call any item of it) in the \
         binary, or subscribe explicitly with ServiceBuilder::subscribe"
    )]
    NoRegisteredSubscribers {
        /// Service name.
        service: String,
    },
    /// The same handler is subscribed twice to one topic and queue.
    #[error(
        "service {service:?}: handler {handler} is subscribed twice to topic {topic:?} \
         (queue {}): at {first} and at {second}",
        queue.as_deref().unwrap_or("none, broadcast")
    )]
    DuplicateSubscriber {
        /// Service name.
        service: String,
        /// Handler path.
        handler: String,
        /// Topic.
        topic: String,
        /// Queue group.
        queue: Option<String>,
        /// First registration.
        first: Location,
        /// Second registration.
        second: Location,
    },
    /// Two subscribers expect different message types on one topic.
    #[error(
        "service {service:?}: topic {topic:?} has subscribers expecting different message \
         types: {first_handler} ({first}) expects {first_type}, {second_handler} ({second}) \
         expects {second_type}; a topic carries one type"
    )]
    TopicTypeConflict {
        /// Service name.
        service: String,
        /// Topic.
        topic: String,
        /// First handler.
        first_handler: String,
        /// Its message type.
        first_type: String,
        /// Where it was registered.
        first: Location,
        /// Second handler.
        second_handler: String,
        /// Its message type.
        second_type: String,
        /// Where it was registered.
        second: Location,
    },
    /// A handler takes a `State<S>` the service does not have.
    #[error(
        "service {service:?}: handler {handler} ({location}) takes State<{state}> but the \
         service has no state of that type: add it with ServiceBuilder::state"
    )]
    MissingState {
        /// Service name.
        service: String,
        /// Handler path.
        handler: String,
        /// Where it was registered.
        location: Location,
        /// The state type.
        state: &'static str,
    },
    /// Connecting to the broker failed.
    #[error("service {service:?}: connecting to the {broker} broker failed")]
    Connect {
        /// Service name.
        service: String,
        /// Broker name.
        broker: &'static str,
        /// Why.
        #[source]
        source: BrokerError,
    },
    /// Subscribing a handler failed.
    #[error("service {service:?}: subscribing {handler} to {topic:?} failed")]
    Subscribe {
        /// Service name.
        service: String,
        /// Handler.
        handler: String,
        /// Topic.
        topic: String,
        /// Why.
        #[source]
        source: BrokerError,
    },
    /// Waiting for a shutdown signal failed.
    #[error("service {service:?}: cannot listen for shutdown signals")]
    Signal {
        /// Service name.
        service: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl ServiceBuilder {
    /// Uses `broker` (by default, the broker `EVENT_BROKER` names, or the in-memory broker).
    pub fn broker(mut self, broker: impl IntoSharedBroker) -> Self {
        self.broker = Some(broker.into_shared());
        self
    }

    /// Adds shared state; handlers receive it with a `State<S>` argument.
    pub fn state<S: Clone + Send + Sync + 'static>(mut self, state: S) -> Self {
        self.state.insert(state);
        self
    }

    /// How long [`Service::run`] waits for subscriptions to drain (default 30 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Subscribes `handler` to `topic` as a broadcast subscriber with default options.
    #[track_caller]
    pub fn subscribe<M, Args, H>(self, topic: impl TopicFor<M>, handler: H) -> Self
    where
        M: prost::Message + prost::Name + Default + Send + 'static,
        Args: 'static,
        H: Handler<M, Args>,
    {
        self.subscribe_with(topic, SubscribeOptions::new(), handler)
    }

    /// Subscribes `handler` to `topic` with `options` (queue group, concurrency, retry, ...).
    #[track_caller]
    pub fn subscribe_with<M, Args, H>(
        mut self,
        topic: impl TopicFor<M>,
        options: SubscribeOptions,
        handler: H,
    ) -> Self
    where
        M: prost::Message + prost::Name + Default + Send + 'static,
        Args: 'static,
        H: Handler<M, Args>,
    {
        self.subscribers.push(Planned {
            topic: topic.topic_name().to_owned(),
            options,
            subscriber: ErasedSubscriber::new::<M, Args, H>(handler, std::any::type_name::<H>()),
            location: Location::caller(),
            registered: false,
        });
        self
    }

    /// Adds every `#[subscriber]` function linked into this binary.
    ///
    /// [`ServiceBuilder::build`] fails if there is none (see
    /// [`ServiceError::NoRegisteredSubscribers`] for the linker pitfall).
    pub fn with_registered_subscribers(mut self) -> Self {
        self.use_registry = true;
        self
    }

    /// Checks the plan and builds the service.
    ///
    /// # Errors
    ///
    /// [`ServiceError`] when the broker URL is unusable, no `#[subscriber]` is registered
    /// although they were asked for, a handler is subscribed twice, two handlers expect
    /// different types on one topic, or a handler needs a state the service lacks.
    pub fn build(mut self) -> Result<Service, ServiceError> {
        let service = self.name.clone();
        if self.use_registry {
            let all = registered();
            if all.is_empty() {
                return Err(ServiceError::NoRegisteredSubscribers { service });
            }
            for registration in all {
                self.subscribers.push(planned_from(registration));
            }
        }
        check_duplicates(&service, &self.subscribers)?;
        check_topic_types(&service, &self.subscribers)?;
        for planned in &self.subscribers {
            if let Some(missing) = planned
                .subscriber
                .requirements
                .iter()
                .find(|r| !self.state.contains(r))
            {
                return Err(ServiceError::MissingState {
                    service,
                    handler: planned.subscriber.handler_name.clone(),
                    location: planned.location,
                    state: missing.type_name(),
                });
            }
        }
        let broker = match self.broker {
            Some(broker) => broker,
            None => broker::from_env().map_err(|source| ServiceError::BrokerUrl {
                service: service.clone(),
                source,
            })?,
        };
        Ok(Service {
            name: self.name,
            broker,
            state: Arc::new(self.state),
            subscribers: self.subscribers,
            shutdown_timeout: self.shutdown_timeout,
        })
    }
}

fn planned_from(registration: &'static Registration) -> Planned {
    let mut options = SubscribeOptions::new().queue_opt(registration.queue.map(str::to_owned));
    if let Some(n) = registration.concurrency {
        options = options.concurrency(n);
    }
    if let Some(n) = registration.max_attempts {
        options = options.retry(RetryPolicy::default().with_max_attempts(n));
    }
    if let Some(topic) = registration.dead_letter {
        options = options.dead_letter_topic(topic);
    }
    let mut subscriber = (registration.make)();
    subscriber.handler_name = registration.handler.to_owned();
    Planned {
        topic: registration.topic.to_owned(),
        options,
        subscriber,
        location: registration.location,
        registered: true,
    }
}

fn check_duplicates(service: &str, planned: &[Planned]) -> Result<(), ServiceError> {
    let mut seen: BTreeMap<(&str, Option<&str>, &str), Location> = BTreeMap::new();
    for p in planned {
        let key = (
            p.topic.as_str(),
            p.options.queue_name(),
            p.subscriber.handler_name.as_str(),
        );
        if let Some(first) = seen.insert(key, p.location) {
            return Err(ServiceError::DuplicateSubscriber {
                service: service.to_owned(),
                handler: p.subscriber.handler_name.clone(),
                topic: p.topic.clone(),
                queue: p.options.queue_name().map(str::to_owned),
                first,
                second: p.location,
            });
        }
    }
    Ok(())
}

fn check_topic_types(service: &str, planned: &[Planned]) -> Result<(), ServiceError> {
    let mut by_topic: BTreeMap<&str, &Planned> = BTreeMap::new();
    for p in planned {
        match by_topic.get(p.topic.as_str()) {
            Some(first) if first.subscriber.message_type != p.subscriber.message_type => {
                return Err(ServiceError::TopicTypeConflict {
                    service: service.to_owned(),
                    topic: p.topic.clone(),
                    first_handler: first.subscriber.handler_name.clone(),
                    first_type: first.subscriber.message_type.clone(),
                    first: first.location,
                    second_handler: p.subscriber.handler_name.clone(),
                    second_type: p.subscriber.message_type.clone(),
                    second: p.location,
                });
            }
            Some(_) => {}
            None => {
                by_topic.insert(&p.topic, p);
            }
        }
    }
    Ok(())
}

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
        ServiceBuilder {
            name: name.into(),
            broker: None,
            state: StateMap::default(),
            subscribers: Vec::new(),
            use_registry: false,
            shutdown_timeout: Duration::from_secs(30),
        }
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
            let raw = (planned.subscriber.bind)(self.state.clone());
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

/// A started service.
pub struct RunningService {
    name: String,
    broker: Arc<dyn Broker>,
    subscriptions: Vec<Subscription>,
    shutdown_timeout: Duration,
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
