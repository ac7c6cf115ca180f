//! [`NatsBroker`]: the [`Broker`] implementation, and the connection it keeps.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use event_core::backend::Lifecycle;
use event_core::broker::{
    Broker, BrokerError, BrokerUrlError, Capabilities, Message, PublishError, RawHandler, Receipt,
    SubscribeOptions, Subscription, validate_topic,
};
use futures_util::StreamExt;
use tokio::sync::{Notify, watch};

use crate::BROKER_NAME;
use crate::config::{Auth, Config, Mode, NatsBrokerBuilder};
use crate::error::NatsBackendError;
use crate::streams::Streams;

/// A NATS broker client, on JetStream (the default) or core NATS (`mode=core`). Cheap to
/// clone: clones share the connection.
///
/// See the [crate documentation](crate) for the mapping and what each mode promises.
///
/// ```no_run
/// use event_nats::NatsBroker;
/// use event_core::broker::{Broker, Message};
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let broker = NatsBroker::builder("nats://127.0.0.1:4222").build()?;
/// broker.connect().await?;
/// let receipt = broker.publish("greetings", Message::new("hello")).await?;
/// println!("{}", receipt.position()); // stream sequence 1
/// broker.disconnect().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct NatsBroker {
    pub(crate) inner: Arc<Inner>,
}

/// What the clones of a broker share.
pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) lifecycle: Lifecycle,
    state: tokio::sync::Mutex<State>,
    /// The session of `state` while it is up, read without waiting by every publish.
    up: std::sync::RwLock<Option<Session>>,
    /// Counts the connections the client made: a pull consumer sends its pull requests again
    /// when it changes (the server may have forgotten them).
    pub(crate) reconnects: watch::Sender<u64>,
    pub(crate) publishes: InFlight,
    pub(crate) streams: Streams,
}

enum State {
    /// Built, or disconnected: connects on first use.
    Idle,
    Up(Session),
    /// Disconnected; [`Broker::connect`] makes it usable again.
    Closed,
}

/// A connected client; cheap to clone.
pub(crate) type Session = Arc<Connected>;

/// A connected client.
pub(crate) struct Connected {
    pub(crate) client: async_nats::Client,
    pub(crate) js: async_nats::jetstream::Context,
    /// Core NATS mode: a round trip that proves the server processed what came before.
    pub(crate) barrier: Option<Barrier>,
    /// A place for each of the [`PUBACKS_IN_FLIGHT`] publishes `js` waits for at once: a
    /// publish takes one before it hands its message over, and waits for one (under its
    /// deadline) when every one is taken.
    pub(crate) pubacks: tokio::sync::Semaphore,
}

/// How many JetStream publishes of one connection wait for their PubAck at once (as many as
/// async-nats keeps by default).
pub(crate) const PUBACKS_IN_FLIGHT: usize = 5_000;

impl fmt::Debug for NatsBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsBroker")
            .field("address", &self.inner.config.address)
            .field("mode", &self.inner.config.mode)
            .field("stream", &self.inner.config.stream)
            .finish_non_exhaustive()
    }
}

impl NatsBroker {
    /// Configures a broker for `url` (`nats://host:4222`, several servers comma separated,
    /// `nats://user:password@host` or `nats://token@host`, `tls://host:4222` for TLS). Query
    /// parameters of the URL map onto the builder (see [`NatsBrokerBuilder`]).
    pub fn builder(url: &str) -> NatsBrokerBuilder {
        NatsBrokerBuilder::new(url)
    }

    /// Builds a broker from a parsed `nats://` or `tls://` URL (used by
    /// [`event_core::broker::connect`] for `EVENT_BROKER=nats://...`).
    ///
    /// # Errors
    ///
    /// [`BrokerUrlError::Invalid`] for a URL the builder rejects.
    pub fn from_url(url: &url::Url) -> Result<NatsBroker, BrokerUrlError> {
        NatsBroker::builder(url.as_str())
            .build()
            .map_err(|error| BrokerUrlError::Invalid {
                url: event_core::broker::redact(url),
                problem: error.to_string(),
            })
    }

    pub(crate) fn from_config(config: Config) -> NatsBroker {
        let lifecycle = Lifecycle::new(BROKER_NAME, config.address.clone());
        NatsBroker {
            inner: Arc::new(Inner {
                config,
                lifecycle,
                state: tokio::sync::Mutex::new(State::Idle),
                up: std::sync::RwLock::new(None),
                reconnects: watch::channel(0).0,
                publishes: InFlight::default(),
                streams: Streams::default(),
            }),
        }
    }

    /// JetStream or core NATS.
    pub fn mode(&self) -> Mode {
        self.inner.config.mode
    }

    /// The stream this broker makes for `topic` when no stream holds its subject: the one
    /// stream of [`NatsBrokerBuilder::stream`] if set, otherwise `<prefix><topic>` with `.` as
    /// `_` (a topic with other characters than ASCII letters, digits, `-` and `.` gets a hash
    /// suffix).
    ///
    /// ```
    /// # let broker = event_nats::NatsBroker::builder("nats://127.0.0.1").build().unwrap();
    /// assert_eq!(broker.stream_name_for("users.created"), "EVENT_users_created");
    /// ```
    pub fn stream_name_for(&self, topic: &str) -> String {
        match &self.inner.config.stream {
            Some(stream) => stream.clone(),
            None => crate::wire::stream_name(&self.inner.config.stream_prefix, topic),
        }
    }

    /// The durable JetStream consumer of queue group `group` on `topic`: `<topic>_<group>`
    /// with `.` as `_` (hashed like [`stream_name_for`](Self::stream_name_for) when either has
    /// other characters, or the group a `.`).
    ///
    /// ```
    /// # let broker = event_nats::NatsBroker::builder("nats://127.0.0.1").build().unwrap();
    /// assert_eq!(broker.group_consumer_name("users.created", "mailer"), "users_created_mailer");
    /// ```
    pub fn group_consumer_name(&self, topic: &str, group: &str) -> String {
        crate::wire::consumer_name(topic, group)
    }

    /// The stream that holds `topic`'s subject, found or made as a subscribe would (made only
    /// with [`create_streams`](NatsBrokerBuilder::create_streams)). For operators and tests:
    /// publishing and subscribing do this on their own.
    ///
    /// # Errors
    ///
    /// [`BrokerError::TopicNotFound`] when no stream holds the subject and streams are not
    /// made, [`BrokerError::Backend`] when the JetStream API fails, and the errors of
    /// connecting.
    pub async fn ensure_stream(&self, topic: &str) -> Result<String, BrokerError> {
        validate_topic(topic)?;
        crate::wire::check_subject(topic)?;
        let session = self.inner.session().await?;
        self.inner
            .streams
            .resolve(&self.inner.config, &session.js, topic, None)
            .await
    }
}

// Here, not in `config`, so that the configuration does not depend on the broker it
// configures.
impl NatsBrokerBuilder {
    /// Builds the broker. It connects on [`connect`](event_core::Broker::connect) (or on the
    /// first publish or subscribe).
    ///
    /// # Errors
    ///
    /// [`NatsConfigError`](crate::NatsConfigError) when the URL does not parse, has another
    /// scheme than `nats` or `tls`, or has an unknown or malformed query parameter.
    pub fn build(self) -> Result<NatsBroker, crate::NatsConfigError> {
        Ok(NatsBroker::from_config(self.into_config()?))
    }
}

impl Inner {
    /// The connected client; connects when idle.
    pub(crate) async fn session(&self) -> Result<Session, BrokerError> {
        if let Some(session) = &*self.up.read().unwrap_or_else(|p| p.into_inner()) {
            return Ok(session.clone());
        }
        let mut state = self.state.lock().await;
        match &*state {
            State::Up(session) => return Ok(session.clone()),
            State::Closed => return Err(self.lifecycle.closed_error()),
            State::Idle => {}
        }
        // boxed: connecting is kilobytes of future state that every publish's future would
        // carry for the one publish that connects
        let session = Box::pin(self.connect_session()).await?;
        *state = State::Up(session.clone());
        *self.up.write().unwrap_or_else(|p| p.into_inner()) = Some(session.clone());
        Ok(session)
    }

    async fn connect_session(&self) -> Result<Session, BrokerError> {
        let config = &self.config;
        let reconnects = self.reconnects.clone();
        let address = config.address.clone();
        let (min, max) = (config.reconnect_min, config.reconnect_max);
        let mut options = async_nats::ConnectOptions::new()
            .connection_timeout(config.connect_timeout)
            .request_timeout(Some(config.request_timeout))
            .max_reconnects(None)
            .reconnect_delay_callback(move |attempts| {
                let exponent = u32::try_from(attempts.saturating_sub(1).min(16)).unwrap_or(16);
                min.saturating_mul(1 << exponent).min(max)
            })
            .event_callback(move |event| {
                let reconnects = reconnects.clone();
                let address = address.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            reconnects.send_modify(|n| *n += 1);
                            tracing::debug!(broker = %address, "connected to NATS");
                        }
                        async_nats::Event::Disconnected => {
                            tracing::info!(broker = %address, "NATS connection lost; reconnecting");
                        }
                        async_nats::Event::SlowConsumer(sid) => {
                            tracing::warn!(
                                broker = %address,
                                sid,
                                "a NATS subscription is full: the client drops its messages"
                            );
                        }
                        // a permissions violation (a subscription or publish the user may not
                        // make) comes only this way
                        async_nats::Event::ServerError(error) => {
                            tracing::warn!(broker = %address, %error, "the NATS server reported an error");
                        }
                        other => tracing::debug!(broker = %address, event = %other, "NATS event"),
                    }
                }
            });
        if let Some(name) = &config.name {
            options = options.name(name);
        }
        options = match &config.auth {
            Auth::None => options,
            Auth::UserPassword(user, password) => {
                options.user_and_password(user.clone(), password.clone())
            }
            Auth::Token(token) => options.token(token.clone()),
        };
        if config.tls {
            options = options.require_tls(true);
        }
        if let Some(ca) = &config.tls_ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &config.tls_client {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        let servers: Vec<async_nats::ServerAddr> = config
            .servers
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        let connecting = options.connect(servers);
        let client = match tokio::time::timeout(config.connect_timeout, connecting).await {
            Ok(Ok(client)) => client,
            Ok(Err(source)) => {
                return Err(BrokerError::Backend {
                    broker: BROKER_NAME,
                    operation: "connect",
                    source: Box::new(NatsBackendError::Connect {
                        servers: config.address.clone(),
                        source,
                    }),
                });
            }
            Err(_) => {
                return Err(BrokerError::Unavailable {
                    broker: BROKER_NAME,
                    address: config.address.clone(),
                    waited: config.connect_timeout,
                });
            }
        };
        // async-nats's own wait for a place among the PubAcks in flight has no timeout: it
        // is off, and a publish waits for one of ours instead (`Connected::pubacks`), under
        // its deadline. `ack_timeout` bounds how long the PubAck of a publish dropped midway
        // (its caller gave up) keeps its place.
        let js = async_nats::jetstream::context::ContextBuilder::new()
            .timeout(config.request_timeout)
            .ack_timeout(config.request_timeout)
            .max_ack_inflight(PUBACKS_IN_FLIGHT)
            .backpressure_on_inflight(false)
            .build(client.clone());
        let barrier = match config.mode {
            Mode::JetStream => None,
            Mode::Core => Some(Barrier::start(&client, &config.address).await?),
        };
        Ok(Arc::new(Connected {
            client,
            js,
            barrier,
            pubacks: tokio::sync::Semaphore::new(PUBACKS_IN_FLIGHT),
        }))
    }

    /// Closes the connection after the subscriptions drained; the next [`Inner::session`]
    /// fails until [`Inner::reopen`].
    async fn close_session(&self) {
        let session = {
            let mut state = self.state.lock().await;
            *self.up.write().unwrap_or_else(|p| p.into_inner()) = None;
            match std::mem::replace(&mut *state, State::Closed) {
                State::Up(session) => Some(session),
                State::Idle | State::Closed => None,
            }
        };
        if let Some(session) = session {
            let timeout = self.config.publish_timeout;
            if tokio::time::timeout(timeout, self.publishes.settled())
                .await
                .is_err()
            {
                tracing::warn!(
                    broker = %self.config.address,
                    ?timeout,
                    "publishes were still waiting for acknowledgements when the broker closed"
                );
            }
            let _ = tokio::time::timeout(self.config.request_timeout, session.client.flush()).await;
            if let Some(barrier) = &session.barrier {
                barrier.stop();
            }
            // bounded: while async-nats reconnects it reads no commands, and a full command
            // channel would make the drain wait for the server without end
            if tokio::time::timeout(self.config.request_timeout, session.client.drain())
                .await
                .is_err()
            {
                tracing::warn!(
                    broker = %self.config.address,
                    timeout = ?self.config.request_timeout,
                    "the connection did not drain in time; closing it as it is"
                );
            }
        }
    }

    async fn reopen(&self) {
        let mut state = self.state.lock().await;
        self.lifecycle.open();
        if matches!(*state, State::Closed) {
            *state = State::Idle;
        }
    }

    pub(crate) fn unavailable(&self, waited: Duration) -> BrokerError {
        BrokerError::Unavailable {
            broker: BROKER_NAME,
            address: self.config.address.clone(),
            waited,
        }
    }
}

/// Publishes under way, so that `disconnect` waits for their acknowledgements.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

/// One publish under way; counted off when dropped.
pub(crate) struct Tracked<'a>(&'a InFlight);

impl InFlight {
    pub(crate) fn track(&self) -> Tracked<'_> {
        self.count.fetch_add(1, Ordering::AcqRel);
        Tracked(self)
    }

    async fn settled(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// A round trip through the server for core NATS: a probe published to an inbox of our own
/// comes back once the server processed everything this connection sent before it (a server
/// handles one connection's messages in order).
pub(crate) struct Barrier {
    client: async_nats::Client,
    address: String,
    inbox: async_nats::Subject,
    next: AtomicU64,
    seen: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Barrier {
    async fn start(client: &async_nats::Client, address: &str) -> Result<Barrier, BrokerError> {
        let inbox = async_nats::Subject::from(client.new_inbox());
        let mut probes = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| client_error("subscribe to the probe inbox", e))?;
        let (seen, _) = watch::channel(0u64);
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                while let Some(probe) = probes.next().await {
                    if let Some(n) = std::str::from_utf8(&probe.payload)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                    {
                        seen.send_if_modified(|highest| {
                            let newer = n > *highest;
                            if newer {
                                *highest = n;
                            }
                            newer
                        });
                    }
                }
            }
        });
        Ok(Barrier {
            client: client.clone(),
            address: address.to_owned(),
            inbox,
            next: AtomicU64::new(0),
            seen,
            task,
        })
    }

    /// Resolves once the server processed what this connection sent before the call.
    pub(crate) async fn pass(&self, timeout: Duration) -> Result<(), BrokerError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let n = self.next.fetch_add(1, Ordering::AcqRel) + 1;
        let mut seen = self.seen.subscribe();
        let probe = self
            .client
            .publish(self.inbox.clone(), n.to_string().into());
        match tokio::time::timeout_at(deadline, probe).await {
            Ok(sent) => sent.map_err(|e| client_error("publish a probe", e))?,
            Err(_) => return Err(round_trip_timed_out(timeout)),
        }
        match tokio::time::timeout_at(deadline, seen.wait_for(|highest| *highest >= n)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(BrokerError::Closed {
                broker: BROKER_NAME,
                address: self.address.clone(),
            }),
            Err(_) => Err(round_trip_timed_out(timeout)),
        }
    }

    fn stop(&self) {
        self.task.abort();
    }
}

/// A failed core NATS operation as a [`BrokerError`].
pub(crate) fn client_error(
    operation: &'static str,
    source: impl std::error::Error + Send + Sync + 'static,
) -> BrokerError {
    BrokerError::Backend {
        broker: BROKER_NAME,
        operation,
        source: Box::new(NatsBackendError::Client {
            operation,
            source: Box::new(source),
        }),
    }
}

#[async_trait]
impl Broker for NatsBroker {
    fn name(&self) -> &'static str {
        BROKER_NAME
    }

    fn messaging_system(&self) -> &'static str {
        "nats"
    }

    fn address(&self) -> String {
        self.inner.config.address.clone()
    }

    fn capabilities(&self) -> Capabilities {
        let mut capabilities = Capabilities::none();
        match self.inner.config.mode {
            Mode::JetStream => {
                // streams keep messages; durable consumers keep a group's place
                capabilities.persistent = true;
                // a consumer from DeliverPolicy::All reads the stream from its start
                capabilities.replays_to_new_subscribers = true;
                // a consumer delivers its subject in stream order; with concurrency 1 (and
                // the prefetch kept in order) handled in that order
                capabilities.ordered_per_key = true;
            }
            Mode::Core => {
                // the server forwards one connection's messages in the order it sent them
                capabilities.ordered_per_key = true;
            }
        }
        capabilities
    }

    async fn connect(&self) -> Result<(), BrokerError> {
        self.inner.reopen().await;
        self.inner.session().await.map(|_| ())
    }

    async fn disconnect(&self) -> Result<(), BrokerError> {
        // subscriptions stop and drain first; their dead letters and follow-ups still go out
        self.inner.lifecycle.close().await;
        self.inner.close_session().await;
        Ok(())
    }

    async fn publish(&self, topic: &str, message: Message) -> Result<Receipt, PublishError> {
        if let Err(error) = validate_topic(topic).and_then(|()| crate::wire::check_subject(topic)) {
            return Err(PublishError::new(topic, message, error));
        }
        if let Err(error) = self.inner.lifecycle.check_open() {
            return Err(PublishError::new(topic, message, error));
        }
        let _tracked = self.inner.publishes.track();
        let session = match self.inner.session().await {
            Ok(session) => session,
            Err(error) => return Err(PublishError::new(topic, message, error)),
        };
        match self.inner.config.mode {
            Mode::JetStream => crate::produce::publish(&self.inner, &session, topic, message).await,
            // boxed: the JetStream path is the one to keep small
            Mode::Core => {
                Box::pin(crate::produce::publish_core(
                    &self.inner,
                    &session,
                    topic,
                    message,
                ))
                .await
            }
        }
    }

    async fn subscribe(
        &self,
        topic: &str,
        options: SubscribeOptions,
        handler: Arc<dyn RawHandler>,
    ) -> Result<Subscription, BrokerError> {
        validate_topic(topic)?;
        crate::wire::check_subject(topic)?;
        let dead_letter_topic = options.dead_letter_topic_for(topic);
        validate_topic(&dead_letter_topic)?;
        crate::wire::check_subject(&dead_letter_topic)?;
        if let Some(group) = options.queue_name()
            && group.contains(|c: char| c.is_whitespace() || c.is_control())
        {
            return Err(BrokerError::InvalidQueue {
                queue: group.to_owned(),
                reason: "a NATS queue group name has no whitespace",
            });
        }
        let inner = self.inner.clone();
        let open_options = options.clone();
        let topic_owned = topic.to_owned();
        match self.inner.config.mode {
            Mode::JetStream => {
                let open = async move {
                    let session = inner.session().await?;
                    crate::consume::open_jetstream(
                        inner,
                        session,
                        &topic_owned,
                        &dead_letter_topic,
                        &open_options,
                    )
                    .await
                };
                self.inner
                    .lifecycle
                    .subscribe(Arc::new(self.clone()), topic, options, handler, open)
                    .await
            }
            Mode::Core => {
                let open = async move {
                    let session = inner.session().await?;
                    crate::consume::open_core(&inner, session, &topic_owned, &open_options).await
                };
                self.inner
                    .lifecycle
                    .subscribe(Arc::new(self.clone()), topic, options, handler, open)
                    .await
            }
        }
    }
}

event_core::register_broker_scheme!("nats", |url| Ok(Arc::new(NatsBroker::from_url(url)?)));
event_core::register_broker_scheme!("tls", |url| Ok(Arc::new(NatsBroker::from_url(url)?)));

fn round_trip_timed_out(timeout: Duration) -> BrokerError {
    BrokerError::Timeout {
        broker: BROKER_NAME,
        operation: "a round trip through the NATS server",
        timeout,
    }
}
