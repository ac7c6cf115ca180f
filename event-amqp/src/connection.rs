//! The connection supervisor: one AMQP connection at a time, re-established with backoff.
//!
//! Each successful connection is a [`Session`] with a generation number, its publishing
//! channel (publisher confirms on) and the declared exchange. The supervisor publishes the
//! current session through a watch channel; publishers and subscriptions wait on it while the
//! connection is down. A new connection is a new lapin `Connection`: delivery tags (and lapin
//! ackers) of an old one can never reach a channel of the new one.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use event_core::backend::Backoff;
use futures_util::StreamExt;
use lapin::options::{ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::AmqpBackendError;

/// How often the supervisor checks the connection status, besides lapin's error events.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// Bound on closing a channel or connection.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection must have lasted for its loss to start the reconnect backoff over.
///
/// A connection lost sooner counts as one more failure, as a failed connect does, so the
/// next one waits longer. Without this, a connection that fails at once would be made again
/// and again without a pause. One such case is a message whose properties lapin cannot
/// parse: lapin closes the connection, RabbitMQ puts the message back, and the next
/// connection meets it again.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// One live connection.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) generation: u64,
    pub(crate) connection: Connection,
    /// Shared by every publish: confirms on, many messages in flight.
    pub(crate) publisher: Channel,
}

impl Session {
    pub(crate) fn is_usable(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }
}

/// What the supervisor reports.
#[derive(Clone, Debug)]
pub(crate) enum Link {
    /// Not connected (yet, or any more); reconnecting.
    Down,
    /// Connected.
    Up(Arc<Session>),
    /// Disconnected on purpose; nothing will reconnect.
    Closed,
}

/// State shared by the broker handle, its supervisor, publishers and subscriptions.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) exchange: ShortString,
    link: watch::Sender<Link>,
    /// Wakes the supervisor when a user of the connection saw it fail.
    kick: Notify,
    /// Publishes between their start and their confirm, for the drain at disconnect.
    in_flight: AtomicUsize,
    idle: Notify,
}

impl Shared {
    pub(crate) fn new(config: Config) -> Self {
        let exchange = ShortString::from(config.exchange.as_str());
        Shared {
            config,
            exchange,
            link: watch::Sender::new(Link::Down),
            kick: Notify::new(),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
        }
    }

    pub(crate) fn link(&self) -> Link {
        self.link.borrow().clone()
    }

    pub(crate) fn set_link(&self, link: Link) {
        self.link.send_replace(link);
    }

    /// Tells the supervisor that an operation failed; it checks the connection at once.
    pub(crate) fn kick(&self) {
        self.kick.notify_one();
    }

    /// Waits until a usable session is up, `Closed`, or `deadline`.
    pub(crate) async fn wait_up(&self, deadline: Option<Instant>) -> Wait {
        // fast path: connected
        if let Link::Up(session) = &*self.link.borrow()
            && session.is_usable()
        {
            return Wait::Up(session.clone());
        }
        let mut rx = self.link.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                Link::Up(session) if session.is_usable() => return Wait::Up(session.clone()),
                Link::Up(_) => self.kick(),
                Link::Closed => return Wait::Closed,
                Link::Down => {}
            }
            let changed = rx.changed();
            match deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline.into(), changed).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Wait::Closed,
                    Err(_) => return Wait::TimedOut,
                },
                None => {
                    if changed.await.is_err() {
                        return Wait::Closed;
                    }
                }
            }
        }
    }

    /// Counts a publish until the returned guard is dropped.
    pub(crate) fn track_publish(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self)
    }

    /// Waits until no publish is in flight.
    pub(crate) async fn publishes_settled(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// The result of [`Shared::wait_up`].
pub(crate) enum Wait {
    Up(Arc<Session>),
    Closed,
    TimedOut,
}

/// A publish in flight; see [`Shared::track_publish`].
pub(crate) struct InFlight<'a>(&'a Shared);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Opens a connection, its publishing channel, and declares the exchange.
async fn open_session(shared: &Shared, generation: u64) -> Result<Session, AmqpBackendError> {
    let config = &shared.config;
    let mut properties = ConnectionProperties::default();
    if let Some(name) = &config.connection_name {
        properties = properties.with_connection_name(LongString::from(name.as_bytes()));
    }
    let connection = Connection::connect(&config.uri.0, properties).await?;
    let setup = async {
        let publisher = connection.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        publisher
            .exchange_declare(
                shared.exchange.clone(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: config.exchange_durable,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok::<_, lapin::Error>(publisher)
    };
    match setup.await {
        Ok(publisher) => Ok(Session {
            generation,
            connection,
            publisher,
        }),
        Err(error) => {
            let _ =
                tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, "setup failed".into()))
                    .await;
            Err(error.into())
        }
    }
}

/// Keeps a session up until `stop`: connects, watches, reconnects with backoff.
pub(crate) async fn supervise(shared: Arc<Shared>, stop: CancellationToken) {
    let config = &shared.config;
    let mut generation = 0u64;
    let mut backoff = Backoff::between(config.reconnect_min, config.reconnect_max);
    let mut down_since = Instant::now();
    loop {
        let attempt = tokio::time::timeout(
            config.connect_timeout,
            open_session(&shared, generation + 1),
        );
        let result = tokio::select! {
            result = attempt => result,
            _ = stop.cancelled() => return,
        };
        let retry_after = match result {
            Ok(Ok(session)) => {
                generation += 1;
                if generation > 1 {
                    tracing::info!(
                        broker = %config.address,
                        generation,
                        down_for = ?down_since.elapsed(),
                        "reconnected to RabbitMQ"
                    );
                } else {
                    tracing::debug!(broker = %config.address, "connected to RabbitMQ");
                }
                let up_at = Instant::now();
                let session = Arc::new(session);
                shared.set_link(Link::Up(session.clone()));
                let error = watch_session(&shared, &session, &stop).await;
                if stop.is_cancelled() {
                    // the broker's disconnect closes the session
                    return;
                }
                down_since = Instant::now();
                shared.set_link(Link::Down);
                let up_for = up_at.elapsed();
                if up_for >= STABLE_AFTER {
                    backoff.reset();
                }
                let (wait, failures) = (backoff.next_delay(), backoff.failures());
                lost(config, generation, up_for, failures, error.as_ref(), wait);
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(
                        CLOSE_TIMEOUT,
                        session.connection.close(320, "reconnecting".into()),
                    )
                    .await;
                });
                wait
            }
            Ok(Err(error)) => {
                let (wait, failures) = (backoff.next_delay(), backoff.failures());
                // the first failure and then every tenth, so an outage is not a log flood
                if failures == 1 || failures.is_multiple_of(10) {
                    tracing::warn!(
                        broker = %config.address,
                        failures,
                        error = %event_core::error_chain(&error),
                        "cannot connect to RabbitMQ; retrying in {wait:?}"
                    );
                }
                wait
            }
            Err(_) => {
                let (wait, failures) = (backoff.next_delay(), backoff.failures());
                tracing::warn!(
                    broker = %config.address,
                    failures,
                    timeout = ?config.connect_timeout,
                    "connecting to RabbitMQ timed out; retrying in {wait:?}"
                );
                wait
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(retry_after) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Returns when the session stops being usable, with the last error lapin reported on its
/// connection, or at `stop`.
async fn watch_session(
    shared: &Shared,
    session: &Session,
    stop: &CancellationToken,
) -> Option<lapin::Error> {
    let mut events = Box::pin(session.connection.events_listener());
    let mut events_open = true;
    let mut error = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return error,
            _ = shared.kick.notified() => {}
            event = events.next(), if events_open => match event {
                Some(lapin::Event::Error(e)) => error = Some(e),
                Some(_) => {}
                None => events_open = false,
            },
            _ = tokio::time::sleep(WATCH_INTERVAL) => {}
        }
        if !session.is_usable() {
            return error;
        }
    }
}

/// Logs the loss of connection `generation` after `up_for`, which lapin gave as `error`.
///
/// A loss soon after the last one (`failures` above 1) is logged as an error the first time
/// and then every tenth time, as failed connects are.
fn lost(
    config: &Config,
    generation: u64,
    up_for: Duration,
    failures: u32,
    error: Option<&lapin::Error>,
    wait: Duration,
) {
    let text = error.map(|e| event_core::error_chain(e).to_string());
    let text = text.as_deref().unwrap_or("none reported");
    if failures <= 1 {
        tracing::warn!(
            broker = %config.address,
            generation,
            ?up_for,
            error = text,
            "lost the RabbitMQ connection; reconnecting in {wait:?}"
        );
        return;
    }
    if failures != 2 && !failures.is_multiple_of(10) {
        return;
    }
    let unparsable = error.is_some_and(|e| matches!(e.kind(), lapin::ErrorKind::ParsingError(_)));
    let cause = if unparsable { UNPARSABLE } else { "" };
    tracing::error!(
        broker = %config.address,
        generation,
        ?up_for,
        failures,
        error = text,
        "the RabbitMQ connection keeps failing soon after it is made; reconnecting in {wait:?}{cause}"
    );
}

/// What a connection that keeps failing on a frame lapin cannot parse means.
const UNPARSABLE: &str = ". lapin closes it on a frame it cannot parse, most likely a message \
    whose properties or headers hold text that is not UTF-8 (a header name, say): RabbitMQ puts \
    it back in its queue each time, and until it is removed from there, the subscription cannot \
    get past it. A quorum queue with a delivery limit and a dead-letter exchange moves such a \
    message aside (queue arguments x-queue-type=quorum, x-delivery-limit, \
    x-dead-letter-exchange; the event-amqp crate documentation, Reconnection)";

/// Closes a session's channel and connection, bounded by [`CLOSE_TIMEOUT`].
pub(crate) async fn close_session(session: &Session) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, session.publisher.close(200, "bye".into())).await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, session.connection.close(200, "bye".into())).await;
}
