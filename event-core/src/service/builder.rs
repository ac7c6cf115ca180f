//! [`ServiceBuilder`]: the plan of a service, checked when it is built (duplicates, one type per
//! topic, the states handlers need).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::{IntoSharedBroker, Service, ServiceError};
use crate::broker::{self, Broker, RetryPolicy, SubscribeOptions};
use crate::publish::TopicFor;
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

pub(super) struct Planned {
    pub(super) topic: String,
    pub(super) options: SubscribeOptions,
    pub(super) subscriber: ErasedSubscriber,
    pub(super) location: Location,
    pub(super) registered: bool,
}

impl ServiceBuilder {
    /// A builder of a service named `name`, with nothing set ([`Service::builder`]).
    pub(super) fn new(name: String) -> Self {
        ServiceBuilder {
            name,
            broker: None,
            state: StateMap::default(),
            subscribers: Vec::new(),
            use_registry: false,
            shutdown_timeout: Duration::from_secs(30),
        }
    }

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
        let location = Location::caller();
        // every closure of one function has the same type name: its place tells them apart
        // (in the duplicate check, in logs, in a dead letter's x-event-handler)
        let type_name = std::any::type_name::<H>();
        let name = if type_name.contains("{{closure}}") {
            format!("{type_name}@{}:{}", location.file, location.line)
        } else {
            type_name.to_owned()
        };
        self.subscribers.push(Planned {
            topic: topic.topic_name().to_owned(),
            options,
            subscriber: ErasedSubscriber::new::<M, Args, H>(handler, name),
            location,
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
