//! [`ServiceError`]: why a service could not be built or started.

use crate::broker::{BrokerError, BrokerUrlError};
use crate::subscribe::Location;

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
