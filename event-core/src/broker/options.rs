//! The options of one subscription: [`SubscribeOptions`] and [`StartFrom`].

use std::num::NonZeroUsize;
use std::time::Duration;

use super::RetryPolicy;

/// Where a new consumer group starts reading (brokers with persistence).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum StartFrom {
    /// Only messages published after the subscription started.
    #[default]
    Latest,
    /// Everything the broker still has.
    Earliest,
}

/// Options of one subscription.
///
/// ```
/// use std::time::Duration;
/// use event_core::broker::{RetryPolicy, SubscribeOptions};
///
/// let options = SubscribeOptions::new()
///     .queue("mailer")
///     .concurrency(8)
///     .retry(RetryPolicy::exponential(5, Duration::from_millis(50)));
/// assert_eq!(options.queue_name(), Some("mailer"));
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct SubscribeOptions {
    pub(crate) queue: Option<String>,
    pub(crate) concurrency: NonZeroUsize,
    pub(crate) retry: RetryPolicy,
    pub(crate) dead_letter_topic: Option<String>,
    pub(crate) drain_timeout: Duration,
    pub(crate) start_from: StartFrom,
    pub(crate) schema_registry_framing: bool,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions {
            queue: None,
            concurrency: NonZeroUsize::MIN,
            retry: RetryPolicy::default(),
            dead_letter_topic: None,
            drain_timeout: Duration::from_secs(30),
            start_from: StartFrom::Latest,
            schema_registry_framing: false,
        }
    }
}

impl SubscribeOptions {
    /// Broadcast, one message at a time, the default retry policy, `<topic>.dlq`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Joins queue group `name`: each message goes to one member of the group.
    pub fn queue(mut self, name: impl Into<String>) -> Self {
        self.queue = Some(name.into());
        self
    }

    /// Sets the queue group, or broadcast with `None`.
    pub fn queue_opt(mut self, name: Option<String>) -> Self {
        self.queue = name;
        self
    }

    /// How many messages may be handled at once (at least 1). With more than one, messages of
    /// this subscription may finish out of order.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN);
        self
    }

    /// How failed handlers are retried before dead-lettering.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Dead-letter topic; `<topic>.dlq` when not set.
    pub fn dead_letter_topic(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter_topic = Some(topic.into());
        self
    }

    /// How long unsubscribe and shutdown wait for in-flight handlers.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Where a new consumer group starts (brokers with persistence).
    pub fn start_from(mut self, start: StartFrom) -> Self {
        self.start_from = start;
        self
    }

    /// Strips the Confluent Schema Registry prefix (magic byte 0, 4-byte schema id, message
    /// indexes) from protobuf payloads before a typed subscriber decodes them (off by
    /// default). The type header is still checked when there is one; a payload that does not
    /// start with the magic byte is decoded as it is (protobuf never starts with a zero byte).
    pub fn schema_registry_framing(mut self, strip: bool) -> Self {
        self.schema_registry_framing = strip;
        self
    }

    /// The queue group, if any.
    pub fn queue_name(&self) -> Option<&str> {
        self.queue.as_deref()
    }

    /// The concurrency limit.
    pub fn concurrency_limit(&self) -> usize {
        self.concurrency.get()
    }

    /// The retry policy.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// The drain timeout.
    pub fn drain_timeout_value(&self) -> Duration {
        self.drain_timeout
    }

    /// Where a new group starts.
    pub fn start_position(&self) -> StartFrom {
        self.start_from
    }

    /// The dead-letter topic for messages consumed from `topic`.
    pub fn dead_letter_topic_for(&self, topic: &str) -> String {
        match &self.dead_letter_topic {
            Some(t) => t.clone(),
            None => format!("{topic}.dlq"),
        }
    }
}
