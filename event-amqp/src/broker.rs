//! [`AmqpBroker`]: the [`Broker`] implementation.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use event_core::backend::{AttributeSink, AttributeValue, Lifecycle};
use event_core::broker::{
    Broker, BrokerError, BrokerUrlError, Capabilities, Message, PublishError, RawHandler, Receipt,
    SubscribeOptions, Subscription, validate_topic,
};
use lapin::types::ShortString;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::BROKER_NAME;
use crate::config::{AmqpBrokerBuilder, Config};
use crate::connection::{self, Link, Shared, Wait};
use crate::consume::{self, AmqpSource, Spec};

/// A RabbitMQ broker client. Cheap to clone: clones share the connection.
///
/// See the [crate documentation](crate) for the topology and the wire format.
///
/// ```no_run
/// use event_amqp::AmqpBroker;
/// use event_core::broker::{Broker, Message};
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let broker = AmqpBroker::builder("amqp://guest:guest@127.0.0.1:5672/%2f").build()?;
/// broker.connect().await?;
/// let receipt = broker.publish("greetings", Message::new("hello")).await?;
/// println!("{:?}", receipt.position());
/// broker.disconnect().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AmqpBroker {
    shared: Arc<Shared>,
    control: Arc<Control>,
}

/// Start/stop state; dropping the last handle stops the supervisor.
struct Control {
    lifecycle: Lifecycle,
    state: Mutex<State>,
}

struct State {
    phase: Phase,
    supervisor: Option<(CancellationToken, JoinHandle<()>)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Built, never connected.
    Idle,
    Running,
    /// Disconnected.
    Closed,
}

impl Drop for Control {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some((stop, _)) = state.supervisor.take() {
            stop.cancel();
        }
    }
}

impl fmt::Debug for AmqpBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phase = self.state().phase;
        f.debug_struct("AmqpBroker")
            .field("address", &self.shared.config.address)
            .field("exchange", &self.shared.config.exchange)
            .field("phase", &phase)
            .finish_non_exhaustive()
    }
}

impl AmqpBroker {
    /// Configures a broker for `uri` (`amqp://user:pass@host:5672/vhost`, or `amqps://` for
    /// TLS). Query parameters of the URI map onto the builder (see [`AmqpBrokerBuilder`]).
    pub fn builder(uri: &str) -> AmqpBrokerBuilder {
        AmqpBrokerBuilder::new(uri)
    }

    /// Builds a broker from a parsed `amqp://` or `amqps://` URL (used by
    /// [`event_core::broker::connect`] for `EVENT_BROKER=amqp://...`).
    ///
    /// # Errors
    ///
    /// [`BrokerUrlError::Invalid`] for a URL the builder rejects.
    pub fn from_url(url: &url::Url) -> Result<AmqpBroker, BrokerUrlError> {
        AmqpBroker::builder(url.as_str())
            .build()
            .map_err(|error| BrokerUrlError::Invalid {
                url: event_core::broker::redact(url),
                problem: error.to_string(),
            })
    }

    pub(crate) fn from_config(config: Config) -> AmqpBroker {
        let lifecycle = Lifecycle::new(BROKER_NAME, config.address.clone());
        AmqpBroker {
            shared: Arc::new(Shared::new(config)),
            control: Arc::new(Control {
                lifecycle,
                state: Mutex::new(State {
                    phase: Phase::Idle,
                    supervisor: None,
                }),
            }),
        }
    }

    /// The exchange this broker publishes to.
    pub fn exchange(&self) -> &str {
        &self.shared.config.exchange
    }

    /// The durable queue of queue group `group` on `topic`: `<topic>.<group>`.
    ///
    /// ```
    /// # let broker = event_amqp::AmqpBroker::builder("amqp://127.0.0.1/%2f").build().unwrap();
    /// assert_eq!(broker.group_queue_name("users.created", "mailer"), "users.created.mailer");
    /// ```
    pub fn group_queue_name(&self, topic: &str, group: &str) -> String {
        format!("{topic}.{group}")
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.control.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn closed_error(&self) -> BrokerError {
        self.control.lifecycle.closed_error()
    }

    /// Starts the supervisor unless it runs; `restart` also revives a disconnected broker.
    fn ensure_started(&self, restart: bool) -> Result<(), BrokerError> {
        let mut state = self.state();
        match state.phase {
            Phase::Running => return Ok(()),
            Phase::Closed if !restart => return Err(self.closed_error()),
            Phase::Closed | Phase::Idle => {}
        }
        self.control.lifecycle.open();
        self.shared.set_link(Link::Down);
        let stop = CancellationToken::new();
        let task = tokio::spawn(connection::supervise(self.shared.clone(), stop.clone()));
        state.supervisor = Some((stop, task));
        state.phase = Phase::Running;
        Ok(())
    }

    fn unavailable(&self, waited: Duration) -> BrokerError {
        BrokerError::Unavailable {
            broker: BROKER_NAME,
            address: self.shared.config.address.clone(),
            waited,
        }
    }
}

// Here, not in `config`, so that the configuration does not depend on the broker it
// configures.
impl AmqpBrokerBuilder {
    /// Builds the broker. It connects on [`connect`](event_core::Broker::connect) (or on the
    /// first publish or subscribe).
    ///
    /// # Errors
    ///
    /// [`AmqpConfigError`](crate::AmqpConfigError) when the URI does not parse, has another
    /// scheme than `amqp` or `amqps`, or has an unknown or malformed query parameter.
    pub fn build(self) -> Result<AmqpBroker, crate::AmqpConfigError> {
        Ok(AmqpBroker::from_config(self.into_config()?))
    }
}

fn short(value: &str) -> Option<ShortString> {
    ShortString::try_new(value).ok()
}

#[async_trait]
impl Broker for AmqpBroker {
    fn name(&self) -> &'static str {
        BROKER_NAME
    }

    fn messaging_system(&self) -> &'static str {
        "rabbitmq"
    }

    fn address(&self) -> String {
        self.shared.config.address.clone()
    }

    fn message_attributes(&self, topic: &str, _message: &Message, sink: &mut AttributeSink<'_>) {
        // the topic is the routing key on the exchange
        sink(
            "messaging.rabbitmq.destination.routing_key",
            AttributeValue::Str(topic),
        );
    }

    fn capabilities(&self) -> Capabilities {
        let mut capabilities = Capabilities::none();
        // queue groups are durable queues: they keep messages while no member runs
        capabilities.persistent = true;
        // one queue, handled one at a time (concurrency 1): RabbitMQ delivers in queue order
        capabilities.ordered_per_key = true;
        capabilities
    }

    async fn connect(&self) -> Result<(), BrokerError> {
        self.ensure_started(true)?;
        let started = Instant::now();
        let deadline = started + self.shared.config.connect_timeout;
        match self.shared.wait_up(Some(deadline)).await {
            Wait::Up(_) => Ok(()),
            Wait::Closed => Err(self.closed_error()),
            Wait::TimedOut => Err(self.unavailable(started.elapsed())),
        }
    }

    async fn disconnect(&self) -> Result<(), BrokerError> {
        if self.state().phase != Phase::Running {
            return Ok(());
        }
        // Cancel consumers and drain handlers; dead letters and follow-up publishes of the
        // handlers still go out meanwhile.
        self.control.lifecycle.close().await;
        let supervisor = {
            let mut state = self.state();
            state.phase = Phase::Closed;
            state.supervisor.take()
        };
        // wait for the confirms of publishes under way
        if tokio::time::timeout(
            self.shared.config.publish_timeout,
            self.shared.publishes_settled(),
        )
        .await
        .is_err()
        {
            tracing::warn!(
                broker = %self.shared.config.address,
                "publishes were still waiting for confirms when the broker closed"
            );
        }
        if let Some((stop, task)) = supervisor {
            stop.cancel();
            let _ = task.await;
        }
        if let Link::Up(session) = self.shared.link() {
            connection::close_session(&session).await;
        }
        self.shared.set_link(Link::Closed);
        Ok(())
    }

    async fn publish(&self, topic: &str, message: Message) -> Result<Receipt, PublishError> {
        if let Err(error) = validate_topic(topic) {
            return Err(PublishError::new(topic, message, error));
        }
        if let Err(error) = self.ensure_started(false) {
            return Err(PublishError::new(topic, message, error));
        }
        crate::produce::publish(&self.shared, topic, message).await
    }

    async fn subscribe(
        &self,
        topic: &str,
        options: SubscribeOptions,
        handler: Arc<dyn RawHandler>,
    ) -> Result<Subscription, BrokerError> {
        validate_topic(topic)?;
        let routing_key = short(topic).ok_or_else(|| BrokerError::InvalidTopic {
            topic: topic.to_owned(),
            reason: "an AMQP routing key is at most 255 bytes",
        })?;
        let group_queue = match options.queue_name() {
            None => None,
            Some("") => {
                return Err(BrokerError::InvalidQueue {
                    queue: String::new(),
                    reason: "a queue group name cannot be empty",
                });
            }
            Some(group) => Some(short(&self.group_queue_name(topic, group)).ok_or_else(|| {
                BrokerError::InvalidQueue {
                    queue: group.to_owned(),
                    reason: "the queue name <topic>.<group> would exceed AMQP's 255 bytes",
                }
            })?),
        };
        let dead_letter_topic = options.dead_letter_topic_for(topic);
        validate_topic(&dead_letter_topic)?;
        let dead_letter = short(&dead_letter_topic).ok_or_else(|| BrokerError::InvalidTopic {
            topic: dead_letter_topic.clone(),
            reason: "an AMQP routing key is at most 255 bytes",
        })?;
        let prefetch = u16::try_from(options.concurrency_limit())
            .unwrap_or(u16::MAX)
            .max(self.shared.config.prefetch);
        let spec = Arc::new(Spec {
            topic: Arc::from(topic),
            routing_key,
            group_queue,
            dead_letter,
            prefetch,
        });
        let open = async {
            self.ensure_started(false)?;
            let started = Instant::now();
            let deadline = started + self.shared.config.connect_timeout;
            let attached = loop {
                let session = match self.shared.wait_up(Some(deadline)).await {
                    Wait::Up(session) => session,
                    Wait::Closed => return Err(self.closed_error()),
                    Wait::TimedOut => return Err(self.unavailable(started.elapsed())),
                };
                match consume::attach(&self.shared, &session, &spec).await {
                    Ok(attached) => break attached,
                    Err(error) if session.is_usable() => {
                        return Err(BrokerError::Backend {
                            broker: BROKER_NAME,
                            operation: "subscribe (declare, bind and consume)",
                            source: Box::new(error),
                        });
                    }
                    // the connection dropped meanwhile: try again on the next one
                    Err(_) => self.shared.kick(),
                }
            };
            Ok(AmqpSource::new(self.shared.clone(), spec, attached))
        };
        self.control
            .lifecycle
            .subscribe(Arc::new(self.clone()), topic, options, handler, open)
            .await
    }
}

event_core::register_broker_scheme!("amqp", |url| Ok(Arc::new(AmqpBroker::from_url(url)?)));
event_core::register_broker_scheme!("amqps", |url| Ok(Arc::new(AmqpBroker::from_url(url)?)));
