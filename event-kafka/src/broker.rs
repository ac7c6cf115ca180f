//! [`KafkaBroker`]: the core [`Broker`] contract over rdkafka.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use event_core::backend::{AttributeSink, AttributeValue, Lifecycle};
use event_core::broker::{
    Broker, BrokerError, BrokerUrlError, Capabilities, Message, PublishError, RawHandler, Receipt,
    SubscribeOptions, Subscription, validate_topic,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};

use crate::NAME;
use crate::admin::TopicSpec;
use crate::config::KafkaBrokerBuilder;
use crate::error::{KafkaBackendError, backend};

const TOPIC_HINT: &str = "create it first (KafkaBroker::ensure_topics or \
    KafkaBrokerBuilder::ensure_topic), or let this client create missing topics: \
    create_topics=true on the kafka:// URL, or KafkaBrokerBuilder::create_topics(true)";

/// A [`Broker`] over Kafka (any broker speaking the Kafka protocol).
///
/// - **Publish**: record value = the message bytes, headers as they are (DESIGN §3: the
///   `ce_*` CloudEvents binary-mode names), key = the message key. Publishing is pipelined:
///   each call enqueues at once and resolves on the delivery report with the partition and
///   offset; a failure (timeout, broker down, too large) gives the message back.
/// - **Subscribe**: a queue group is a Kafka consumer group; without one the subscription is a
///   broadcast reader that is assigned every partition itself (no group, no commits), starting
///   at the end of each partition or, with [`StartFrom::Earliest`], at the beginning.
/// - **At least once**: an offset is committed only after its handler's outcome (ack or
///   dead-lettered), and never past a record that is still unfinished. Records of one
///   partition (or, with [`parallel_keys`](KafkaBrokerBuilder::parallel_keys), of one key) are
///   handled in order; different partitions run in parallel up to the subscription's
///   concurrency.
///
/// A publish enqueues its record when it is called (not when its future is first polled) and
/// resolves on the delivery report. Publishes awaited one after another each wait `linger.ms`
/// plus a round trip; to pipeline, create many and await them together (`join_all`, a
/// `FuturesUnordered`): records then share batches and requests.
///
/// [`StartFrom::Earliest`]: event_core::broker::StartFrom::Earliest
///
/// ```no_run
/// use event_core::broker::Broker;
/// use event_kafka::{KafkaBroker, TopicSpec};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let broker = KafkaBroker::builder("127.0.0.1:9092")
///     .client_id("mailer")
///     .ensure_topic(TopicSpec::new("users.created").partitions(6))
///     .ensure_topic(TopicSpec::new("users.created.dlq"))
///     .build()?;
/// broker.connect().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct KafkaBroker {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: KafkaBrokerBuilder,
    pub(crate) producer: FutureProducer,
    lifecycle: Lifecycle,
    known_topics: RwLock<HashSet<String>>,
}

impl fmt::Debug for KafkaBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaBroker")
            .field("bootstrap_servers", &self.inner.config.bootstrap_servers)
            .field("client_id", &self.inner.config.client_id)
            .finish_non_exhaustive()
    }
}

impl KafkaBroker {
    /// A builder for a broker with these bootstrap servers (`host:port[,host:port…]`).
    pub fn builder(bootstrap_servers: impl Into<String>) -> KafkaBrokerBuilder {
        KafkaBrokerBuilder::new(bootstrap_servers)
    }

    /// A broker from a `kafka://` URL; see [`KafkaBrokerBuilder::from_url`].
    ///
    /// # Errors
    ///
    /// [`BrokerUrlError::Invalid`] for a bad parameter or a configuration librdkafka rejects.
    pub fn from_url(url: &url::Url) -> Result<Self, BrokerUrlError> {
        KafkaBrokerBuilder::from_url(url)?
            .build()
            .map_err(|error| BrokerUrlError::Invalid {
                url: event_core::broker::redact(url),
                problem: event_core::error_chain(&error),
            })
    }

    pub(crate) fn from_builder(config: KafkaBrokerBuilder) -> Result<Self, KafkaBackendError> {
        let producer: FutureProducer = config
            .producer_config()
            .create()
            .map_err(|source| KafkaBackendError::Config { source })?;
        // consumers are created per subscription; check their configuration now, not then
        config
            .consumer_config(Some("event-config-check"), true)
            .create::<rdkafka::consumer::BaseConsumer>()
            .map_err(|source| KafkaBackendError::Config { source })?;
        let lifecycle = Lifecycle::new(NAME, format!("kafka://{}", config.bootstrap_servers));
        Ok(KafkaBroker {
            inner: Arc::new(Inner {
                config,
                producer,
                lifecycle,
                known_topics: RwLock::new(HashSet::new()),
            }),
        })
    }

    /// The bootstrap servers.
    pub fn bootstrap_servers(&self) -> &str {
        &self.inner.config.bootstrap_servers
    }

    /// The underlying rdkafka producer, for what this crate does not cover (transactions,
    /// custom partitioning). Records sent through it bypass the header scheme.
    pub fn producer(&self) -> &FutureProducer {
        &self.inner.producer
    }

    /// Creates the topics that do not exist yet (existing ones are left as they are), and
    /// returns once every partition of each has a leader, so the topics can be used at once.
    ///
    /// # Errors
    ///
    /// [`BrokerError::Backend`] when the admin request fails or the broker refuses a topic;
    /// [`BrokerError::Timeout`] when a topic has no leaders within the operation timeout.
    pub async fn ensure_topics(&self, topics: &[TopicSpec]) -> Result<(), BrokerError> {
        if topics.is_empty() {
            return Ok(());
        }
        for topic in topics {
            validate_topic(&topic.name)?;
        }
        let admin: AdminClient<DefaultClientContext> = self
            .inner
            .config
            .admin_config()
            .create()
            .map_err(|source| BrokerError::Backend {
                broker: NAME,
                operation: "create admin client",
                source: Box::new(KafkaBackendError::Config { source }),
            })?;
        let configs: Vec<Vec<(&str, &str)>> = topics
            .iter()
            .map(|t| {
                t.config
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect()
            })
            .collect();
        let new_topics: Vec<NewTopic<'_>> = topics
            .iter()
            .zip(&configs)
            .map(|(t, config)| {
                config.iter().fold(
                    NewTopic::new(
                        &t.name,
                        t.partitions,
                        TopicReplication::Fixed(t.replication),
                    ),
                    |nt, (k, v)| nt.set(k, v),
                )
            })
            .collect();
        let options =
            AdminOptions::new().operation_timeout(Some(self.inner.config.operation_timeout));
        let results = admin
            .create_topics(&new_topics, &options)
            .await
            .map_err(|e| backend("create topics", e))?;
        for result in results {
            match result {
                // created, here or by another client just now: usable once led
                Ok(topic) | Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    self.wait_led(&topic).await?;
                    self.known_topic(&topic);
                }
                Err((topic, code)) => {
                    return Err(BrokerError::Backend {
                        broker: NAME,
                        operation: "create topics",
                        source: Box::new(KafkaBackendError::CreateTopic { topic, code }),
                    });
                }
            }
        }
        Ok(())
    }

    fn known_topic(&self, topic: &str) {
        self.inner
            .known_topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.to_owned());
    }

    pub(crate) fn is_known_topic(&self, topic: &str) -> bool {
        self.inner
            .known_topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(topic)
    }

    fn check_open(&self) -> Result<(), BrokerError> {
        self.inner.lifecycle.check_open()
    }

    /// The topic's partition numbers. A missing topic is created when
    /// [`KafkaBrokerBuilder::create_topics`] is on; otherwise it is
    /// [`BrokerError::TopicNotFound`].
    pub(crate) async fn partitions(&self, topic: &str) -> Result<Vec<i32>, BrokerError> {
        if let Some(partitions) = self.read_partitions(topic, false).await? {
            return Ok(partitions);
        }
        if !self.inner.config.create_topics {
            return Err(BrokerError::TopicNotFound {
                broker: NAME,
                address: self.address(),
                topic: topic.to_owned(),
                hint: TOPIC_HINT.into(),
            });
        }
        self.create_topic(topic).await
    }

    /// Creates `topic` as [`KafkaBrokerBuilder::create_topics`] says and waits until the
    /// cluster's metadata shows it with a leader for each partition.
    async fn create_topic(&self, topic: &str) -> Result<Vec<i32>, BrokerError> {
        let spec = self.inner.config.provisioned_topic(topic);
        // a topic another client created meanwhile counts as created
        self.ensure_topics(std::slice::from_ref(&spec)).await?;
        tracing::info!(
            topic,
            partitions = spec.partitions,
            replication = spec.replication,
            "created the missing topic (create_topics is on; -1: the cluster's default)"
        );
        self.wait_led(topic).await
    }

    /// Waits until the cluster's metadata shows `topic` with a leader for each partition: a
    /// topic Kafka has just created has none for a moment, and reading or assigning it then
    /// fails with `NotLeaderForPartition`.
    async fn wait_led(&self, topic: &str) -> Result<Vec<i32>, BrokerError> {
        let timeout = self.inner.config.operation_timeout;
        let deadline = Instant::now() + timeout;
        let mut wait = Duration::from_millis(10);
        loop {
            // the metadata has no notification to await: read it until the topic shows
            if let Some(partitions) = self.read_partitions(topic, true).await? {
                return Ok(partitions);
            }
            if Instant::now() >= deadline {
                return Err(BrokerError::Timeout {
                    broker: NAME,
                    operation: "waiting for a created topic's partition leaders",
                    timeout,
                });
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(200));
        }
    }

    /// The topic's partition numbers as the metadata shows them; `None` when the topic is
    /// missing (or, with `led`, when a partition has no leader yet).
    async fn read_partitions(
        &self,
        topic: &str,
        led: bool,
    ) -> Result<Option<Vec<i32>>, BrokerError> {
        let producer = self.inner.producer.clone();
        let timeout = self.inner.config.operation_timeout;
        let name = topic.to_owned();
        let metadata = blocking("read topic metadata", move || {
            producer.client().fetch_metadata(Some(&name), timeout)
        })
        .await?
        .map_err(|error| match error {
            KafkaError::MetadataFetch(RDKafkaErrorCode::OperationTimedOut) => {
                BrokerError::Unavailable {
                    broker: NAME,
                    address: self.address(),
                    waited: timeout,
                }
            }
            error => backend("read topic metadata", error),
        })?;
        let found = metadata.topics().iter().find(|t| t.name() == topic);
        match found {
            Some(t)
                if t.error().is_none()
                    && !t.partitions().is_empty()
                    && (!led
                        || t.partitions()
                            .iter()
                            .all(|p| p.error().is_none() && p.leader() >= 0)) =>
            {
                self.known_topic(topic);
                Ok(Some(t.partitions().iter().map(|p| p.id()).collect()))
            }
            _ => Ok(None),
        }
    }

    /// Checks that the dead-letter topic of a subscription to `topic` exists (creates it when
    /// [`KafkaBrokerBuilder::create_topics`] is on): without it, the first message that
    /// fails for good would be held for as long as the topic is missing.
    async fn check_dead_letter_topic(
        &self,
        topic: &str,
        options: &SubscribeOptions,
    ) -> Result<(), BrokerError> {
        let dead_letter_topic = options.dead_letter_topic_for(topic);
        validate_topic(&dead_letter_topic)?;
        if self.is_known_topic(&dead_letter_topic) {
            return Ok(());
        }
        match self.partitions(&dead_letter_topic).await {
            Ok(_) => Ok(()),
            Err(BrokerError::TopicNotFound {
                broker,
                address,
                topic: missing,
                ..
            }) => Err(BrokerError::TopicNotFound {
                broker,
                address,
                topic: missing,
                hint: format!(
                    "it is the dead-letter topic of the subscription to {topic:?} (its \
                     messages that fail for good go there; SubscribeOptions::dead_letter_topic \
                     picks another); {TOPIC_HINT}"
                )
                .into(),
            }),
            Err(error) => Err(error),
        }
    }
}

/// Runs a blocking librdkafka call on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    operation: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BrokerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| BrokerError::Backend {
            broker: NAME,
            operation,
            source: Box::new(KafkaBackendError::Cancelled { operation }),
        })
}

#[async_trait]
impl Broker for KafkaBroker {
    fn name(&self) -> &'static str {
        NAME
    }

    fn address(&self) -> String {
        format!("kafka://{}", self.inner.config.bootstrap_servers)
    }

    fn message_attributes(&self, _topic: &str, message: &Message, sink: &mut AttributeSink<'_>) {
        if let Some(key) = message
            .key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
        {
            sink("messaging.kafka.message.key", AttributeValue::Str(key));
        }
    }

    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::none();
        c.persistent = true;
        c.replays_to_new_subscribers = true;
        c.ordered_per_key = true;
        c
    }

    async fn connect(&self) -> Result<(), BrokerError> {
        self.inner.lifecycle.open();
        let producer = self.inner.producer.clone();
        let timeout = self.inner.config.operation_timeout;
        blocking("connect", move || {
            producer.client().fetch_metadata(None, timeout)
        })
        .await?
        .map_err(|error| match error {
            KafkaError::MetadataFetch(RDKafkaErrorCode::OperationTimedOut)
            | KafkaError::MetadataFetch(RDKafkaErrorCode::AllBrokersDown)
            | KafkaError::MetadataFetch(RDKafkaErrorCode::BrokerTransportFailure) => {
                BrokerError::Unavailable {
                    broker: NAME,
                    address: self.address(),
                    waited: timeout,
                }
            }
            error => backend("connect", error),
        })?;
        self.ensure_topics(&self.inner.config.ensure_topics.clone())
            .await
    }

    async fn disconnect(&self) -> Result<(), BrokerError> {
        // drain first: handlers still running may publish (follow-ups, dead letters)
        self.inner.lifecycle.close().await;
        let producer = self.inner.producer.clone();
        let timeout = self.inner.config.flush_timeout;
        let flushed = blocking("flush", move || {
            let result = producer.flush(timeout);
            (result, producer.in_flight_count())
        })
        .await?;
        match flushed {
            (Ok(()), _) => Ok(()),
            (Err(_), pending) => {
                tracing::error!(
                    pending,
                    ?timeout,
                    "records still queued after the flush timeout; their publishes fail with the message given back"
                );
                Err(BrokerError::Timeout {
                    broker: NAME,
                    operation: "flushing queued records",
                    timeout,
                })
            }
        }
    }

    // Written out instead of `async fn` so that the record is enqueued when `publish` is
    // called, not when its future is first polled: publishes created one after another share
    // batches even if they are awaited later.
    fn publish<'life0, 'life1, 'async_trait>(
        &'life0 self,
        topic: &'life1 str,
        message: Message,
    ) -> Pin<Box<dyn Future<Output = Result<Receipt, PublishError>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        if let Err(error) = validate_topic(topic).and_then(|()| self.check_open()) {
            return Box::pin(std::future::ready(Err(PublishError::new(
                topic, message, error,
            ))));
        }
        if self.is_known_topic(topic) {
            match self.enqueue(topic, &message) {
                Ok(delivery) => return Box::pin(self.report(topic, message, delivery)),
                Err(Some(error)) => {
                    return Box::pin(std::future::ready(Err(PublishError::new(
                        topic, message, error,
                    ))));
                }
                // the local queue is full: wait for room below
                Err(None) => {}
            }
        }
        Box::pin(self.publish_waiting(topic, message))
    }

    async fn subscribe(
        &self,
        topic: &str,
        options: SubscribeOptions,
        handler: Arc<dyn RawHandler>,
    ) -> Result<Subscription, BrokerError> {
        let open = async {
            let partitions = self.partitions(topic).await?;
            self.check_dead_letter_topic(topic, &options).await?;
            self.start_subscription(topic, &options, partitions).await
        };
        self.inner
            .lifecycle
            .subscribe(
                Arc::new(self.clone()),
                topic,
                options.clone(),
                handler,
                open,
            )
            .await
    }
}
