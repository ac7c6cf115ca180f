//! A backend's open/closed state and the subscriptions it runs.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;

use super::DeliverySource;
use super::delivery::Runs;
use crate::broker::{
    Broker, BrokerError, RawHandler, SubscribeOptions, Subscription, validate_subscription,
};

const OPEN: u8 = 0;
const CLOSING: u8 = 1;
const CLOSED: u8 = 2;

/// The open/closed state of a backend and the delivery loops of its subscriptions.
///
/// A backend keeps one, made open, and
/// - calls [`Lifecycle::open`] in [`Broker::connect`] (which reopens it after a disconnect,
///   or after one given up on once its subscriptions have drained),
/// - checks [`Lifecycle::check_open`] before it publishes,
/// - subscribes through [`Lifecycle::subscribe`], which validates the topic and queue group,
///   refuses while closing or closed, opens the backend's source and runs the shared delivery
///   loop on it (dead letters go through the broker given),
/// - calls [`Lifecycle::close`] first in [`Broker::disconnect`]: subscriptions stop and drain
///   while publishing still works (handlers that are finishing may publish follow-ups and
///   dead letters); then it is closed, and publishing fails with [`BrokerError::Closed`].
///
/// ```
/// use event_core::backend::Lifecycle;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let lifecycle = Lifecycle::new("example", "example://localhost");
/// assert!(lifecycle.check_open().is_ok());
/// lifecycle.close().await;
/// assert_eq!(
///     lifecycle.check_open().unwrap_err().to_string(),
///     "the example broker at example://localhost is closed"
/// );
/// lifecycle.open();
/// assert!(lifecycle.check_open().is_ok());
/// # }
/// ```
#[derive(Debug)]
pub struct Lifecycle {
    broker: &'static str,
    address: String,
    /// `OPEN`, `CLOSING` or `CLOSED`, read without the lock on every publish.
    phase: AtomicU8,
    runs: Mutex<Runs>,
}

impl Lifecycle {
    /// An open lifecycle for the backend `broker` (its [`Broker::name`]) at `address` (no
    /// credentials), which name it in [`BrokerError::Closed`].
    pub fn new(broker: &'static str, address: impl Into<String>) -> Self {
        Lifecycle {
            broker,
            address: address.into(),
            phase: AtomicU8::new(OPEN),
            runs: Mutex::new(Runs::default()),
        }
    }

    fn runs(&self) -> MutexGuard<'_, Runs> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a closed lifecycle again; returns whether it was closed. An open one is left as
    /// it is, and so is one whose close is under way. A close given up on (its future
    /// dropped) counts as closed once its subscriptions have drained.
    pub fn open(&self) -> bool {
        let mut runs = self.runs();
        match self.phase.load(Ordering::Acquire) {
            CLOSED => {}
            CLOSING if runs.drained() => {}
            _ => return false,
        }
        *runs = Runs::default();
        self.phase.store(OPEN, Ordering::Release);
        true
    }

    /// Whether [`Lifecycle::close`] finished and no [`Lifecycle::open`] followed.
    pub fn is_closed(&self) -> bool {
        self.phase.load(Ordering::Acquire) == CLOSED
    }

    /// `Ok` unless closed: what a publish checks first. While subscriptions drain
    /// ([`Lifecycle::close`] under way) publishing is still allowed.
    ///
    /// # Errors
    ///
    /// [`BrokerError::Closed`] once closed.
    pub fn check_open(&self) -> Result<(), BrokerError> {
        if self.is_closed() {
            return Err(self.closed_error());
        }
        Ok(())
    }

    /// The error of an operation on this closed backend.
    pub fn closed_error(&self) -> BrokerError {
        BrokerError::Closed {
            broker: self.broker,
            address: self.address.clone(),
        }
    }

    /// A token cancelled when the lifecycle closes, for a task of the backend's own.
    pub fn token(&self) -> CancellationToken {
        self.runs().token()
    }

    /// Subscribes `handler` to `topic`: validates the topic and queue group, refuses while
    /// the lifecycle is closing or closed, then awaits `open` for the backend's source of
    /// messages and runs the shared delivery loop on it. `broker` is the broker the
    /// subscription belongs to: its dead letters are published through it, and its name and
    /// messaging system label the subscription's spans and metrics.
    ///
    /// When the lifecycle closes while `open` runs, the source is closed again and the
    /// subscription refused.
    ///
    /// # Errors
    ///
    /// [`BrokerError::InvalidTopic`] or [`BrokerError::InvalidQueue`] for names no broker
    /// takes, [`BrokerError::Closed`], or what `open` returns.
    pub async fn subscribe<S, F>(
        &self,
        broker: Arc<dyn Broker>,
        topic: &str,
        options: SubscribeOptions,
        handler: Arc<dyn RawHandler>,
        open: F,
    ) -> Result<Subscription, BrokerError>
    where
        S: DeliverySource,
        F: Future<Output = Result<S, BrokerError>>,
    {
        validate_subscription(topic, &options)?;
        if self.phase.load(Ordering::Acquire) != OPEN {
            return Err(self.closed_error());
        }
        let source = open.await?;
        {
            // under the lock that `close` takes: a loop either starts before the close
            // begins, and is drained by it, or not at all
            let runs = self.runs();
            if self.phase.load(Ordering::Acquire) == OPEN {
                return Ok(runs.spawn(topic, source, &options, handler, broker));
            }
        }
        source.close().await;
        Err(self.closed_error())
    }

    /// Stops every subscription and waits until each has drained, then closes: publishing
    /// fails from then on. Returns whether it was open.
    ///
    /// A close whose future was dropped before the drain ended (a caller's timeout) leaves
    /// the subscriptions draining on their own; the next `close` waits for them and finishes
    /// the close (and returns `false`: the lifecycle was no longer open).
    pub async fn close(&self) -> bool {
        let (runs, was_open) = {
            let runs = self.runs();
            match self
                .phase
                .compare_exchange(OPEN, CLOSING, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => (runs.clone(), true),
                Err(CLOSING) => (runs.clone(), false),
                Err(_) => return false,
            }
        };
        runs.shutdown().await;
        // only the runs this close drained: after an `open` (and perhaps a close of its own
        // under way) a slower close of the runs before leaves the phase alone
        let current = self.runs();
        if current.same(&runs) {
            let _ =
                self.phase
                    .compare_exchange(CLOSING, CLOSED, Ordering::AcqRel, Ordering::Acquire);
        }
        was_open
    }
}
