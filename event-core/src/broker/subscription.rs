//! A running subscription, and how its delivery loop is told to stop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running subscription. Dropping it stops fetching and drains in the background; call
/// [`Subscription::unsubscribe`] to wait for the drain.
#[must_use = "dropping a Subscription unsubscribes"]
#[derive(Debug)]
pub struct Subscription {
    topic: Arc<str>,
    queue: Option<Arc<str>>,
    stop: Stop,
    stalled: Arc<AtomicUsize>,
    task: Option<JoinHandle<DrainReport>>,
}

/// What happened to the messages in flight when a subscription stopped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// Messages whose handler finished during the drain (acknowledged or dead-lettered).
    pub completed: usize,
    /// Messages given back to the broker unfinished (waiting for a retry when the
    /// subscription stopped), to be redelivered.
    pub returned: usize,
    /// Handlers still running when the drain timeout expired; their messages were given back.
    pub abandoned: usize,
}

impl Subscription {
    pub(crate) fn new(
        topic: Arc<str>,
        queue: Option<Arc<str>>,
        stop: Stop,
        stalled: Arc<AtomicUsize>,
        task: JoinHandle<DrainReport>,
    ) -> Self {
        Subscription {
            topic,
            queue,
            stop,
            stalled,
            task: Some(task),
        }
    }

    /// The subscribed topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The queue group, or `None` for a broadcast subscription.
    pub fn queue(&self) -> Option<&str> {
        self.queue.as_deref()
    }

    /// Whether the subscription has stopped (unsubscribed, or its broker disconnected).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }

    /// How many messages are held because their dead-letter publish keeps failing (the
    /// dead-letter topic is missing, or its broker refuses them); 0 when none is.
    ///
    /// Such a message is never acknowledged without its dead letter: it stays unsettled, its
    /// publish is retried with backoff (up to 10 s apart), and each failure is counted in
    /// [`DEAD_LETTER_FAILURES`](crate::telemetry::metric::DEAD_LETTER_FAILURES) and logged
    /// (rate limited). Meanwhile it holds its place: its partition or key on Kafka, a
    /// handler slot of the subscription's concurrency everywhere. Once the dead-letter topic
    /// takes it, it is acknowledged and no longer counted here. A stop gives it back to the
    /// broker, for redelivery.
    pub fn stalled(&self) -> usize {
        self.stalled.load(Ordering::Acquire)
    }

    /// Whether any message is held because its dead-letter publish keeps failing
    /// ([`stalled`](Self::stalled) is not 0).
    pub fn is_stalled(&self) -> bool {
        self.stalled() > 0
    }

    /// Stops fetching, lets in-flight handlers finish (bounded by the drain timeout) and
    /// returns what happened to them.
    pub async fn unsubscribe(mut self) -> DrainReport {
        self.stop.stop();
        match self.task.take() {
            Some(task) => task.await.unwrap_or_else(|error| {
                // the delivery loop itself failed (handlers' panics are caught inside it):
                // what it held went back to the broker as it unwound
                tracing::error!(
                    topic = %self.topic,
                    queue = self.queue.as_deref().unwrap_or("(broadcast)"),
                    %error,
                    "the subscription's delivery loop ended abnormally"
                );
                DrainReport::default()
            }),
            None => DrainReport::default(),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.stop.stop();
    }
}

/// How a subscription's loop is told to stop: a cancellation token that the loop waits on
/// while idle, and flags that a busy loop reads before each fetch. Reading a token takes its
/// lock; reading a flag is a load. So every stop goes through [`Stop::stop`] or
/// the backend's shutdown, which set a flag before they cancel.
#[derive(Debug, Clone)]
pub(crate) struct Stop {
    pub(crate) token: CancellationToken,
    stopped: Arc<AtomicBool>,
    shutting_down: Arc<AtomicBool>,
}

impl Stop {
    /// A stop of its own, under `token`, that also reads the backend's `shutting_down`.
    pub(crate) fn new(token: CancellationToken, shutting_down: Arc<AtomicBool>) -> Self {
        Stop {
            token,
            stopped: Arc::default(),
            shutting_down,
        }
    }

    /// Stops the loop: it fetches nothing more and drains.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.token.cancel();
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire) || self.shutting_down.load(Ordering::Acquire)
    }
}
