//! What a gateway is configured with.

use std::time::Duration;

use crate::typed::TypedTopics;

/// How a [`Gateway`](crate::Gateway) serves.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub(crate) password: Option<String>,
    pub(crate) max_bulk: usize,
    pub(crate) source: String,
    pub(crate) group_window: usize,
    pub(crate) max_groups: usize,
    pub(crate) max_subscriptions: usize,
    pub(crate) subscriber_buffer: usize,
    pub(crate) drain_timeout: Duration,
    pub(crate) max_in_flight: usize,
    pub(crate) reclaim_after: Duration,
    pub(crate) typed: TypedTopics,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            password: None,
            max_bulk: 16 * 1024 * 1024,
            source: "event-gateway".to_owned(),
            group_window: 256,
            max_groups: 1024,
            max_subscriptions: 4096,
            subscriber_buffer: 1024,
            drain_timeout: Duration::from_secs(5),
            max_in_flight: 1024,
            reclaim_after: Duration::from_secs(10),
            typed: TypedTopics::new(),
        }
    }
}

impl GatewayConfig {
    /// The defaults: no password, 16 MiB arguments, `ce_source` `event-gateway`, 256 messages
    /// per group, 1024 groups, 4096 `SUBSCRIBE` subscriptions, 1024 messages per subscribing
    /// connection, 5 s to drain, 10 s before a message of a closed connection goes to the next
    /// reader.
    pub fn new() -> Self {
        GatewayConfig::default()
    }

    /// Requires `AUTH password` (or `HELLO ... AUTH default password`) before any other
    /// command.
    #[must_use]
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// The longest argument (payload, field, topic) a request may have; a request that
    /// declares a longer one gets an error and the connection ends. A request may have four
    /// times that in all.
    #[must_use]
    pub fn max_bulk(mut self, bytes: usize) -> Self {
        self.max_bulk = bytes.max(1);
        self
    }

    /// The `ce_source` of messages published without one.
    #[must_use]
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// How many messages a group holds at most, handed out or waiting for a reader: the
    /// concurrency of its broker subscription.
    #[must_use]
    pub fn group_window(mut self, messages: usize) -> Self {
        self.group_window = messages.max(1);
        self
    }

    /// How many queue groups the gateway joins at most (each is a member of the broker's
    /// group and holds up to [`group_window`](Self::group_window) messages). A group beyond
    /// it (`XGROUP CREATE`, or the first `XREADGROUP` of a group the gateway has not
    /// joined) is refused with an error, so that clients naming random groups cannot make
    /// the gateway join without bound.
    #[must_use]
    pub fn max_groups(mut self, groups: usize) -> Self {
        self.max_groups = groups.max(1);
        self
    }

    /// How many topics the gateway's connections hold subscribed at most, all together (each
    /// `SUBSCRIBE` of a topic by a connection is a broker subscription of its own). A
    /// subscription beyond it gets an error, so that clients subscribing to many topics
    /// cannot make the gateway subscribe without bound.
    #[must_use]
    pub fn max_subscriptions(mut self, subscriptions: usize) -> Self {
        self.max_subscriptions = subscriptions.max(1);
        self
    }

    /// How many messages wait for a slow `SUBSCRIBE` connection before its broker
    /// subscription is slowed.
    #[must_use]
    pub fn subscriber_buffer(mut self, messages: usize) -> Self {
        self.subscriber_buffer = messages.max(1);
        self
    }

    /// How long a stopping gateway waits for connections to finish their replies and for
    /// subscriptions to drain.
    #[must_use]
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// How many pipelined publishes of one connection wait for the broker at once.
    #[must_use]
    pub fn max_in_flight(mut self, publishes: usize) -> Self {
        self.max_in_flight = publishes.max(1);
        self
    }

    /// How long a message read by a consumer whose connection ended stays that consumer's
    /// (to be acknowledged, or read again with `XREADGROUP ... STREAMS topic 0`, by a new
    /// connection) before it goes to the next reader of the group. Zero hands it over at once.
    #[must_use]
    pub fn reclaim_after(mut self, delay: Duration) -> Self {
        self.reclaim_after = delay;
        self
    }

    /// The typed topics.
    #[must_use]
    pub fn typed_topics(mut self, typed: TypedTopics) -> Self {
        self.typed = typed;
        self
    }
}
