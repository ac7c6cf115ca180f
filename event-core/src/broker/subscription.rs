use std::sync::Arc;

use tokio::task::JoinHandle;

use super::delivery::Stop;

/// A running subscription. Dropping it stops fetching and drains in the background; call
/// [`Subscription::unsubscribe`] to wait for the drain.
#[must_use = "dropping a Subscription unsubscribes"]
#[derive(Debug)]
pub struct Subscription {
    topic: Arc<str>,
    queue: Option<Arc<str>>,
    stop: Stop,
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
        task: JoinHandle<DrainReport>,
    ) -> Self {
        Subscription {
            topic,
            queue,
            stop,
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

    /// Stops fetching, lets in-flight handlers finish (bounded by the drain timeout) and
    /// returns what happened to them.
    pub async fn unsubscribe(mut self) -> DrainReport {
        self.stop.stop();
        match self.task.take() {
            Some(task) => task.await.unwrap_or_default(),
            None => DrainReport::default(),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.stop.stop();
    }
}
