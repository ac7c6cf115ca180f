//! Topic creation through the admin API.

/// A topic to create when it is missing: name, partitions and replication factor.
///
/// ```
/// use event_kafka::TopicSpec;
///
/// let orders = TopicSpec::new("shop.orders").partitions(6).replication(3);
/// assert_eq!(orders.name(), "shop.orders");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct TopicSpec {
    pub(crate) name: String,
    pub(crate) partitions: i32,
    pub(crate) replication: i32,
    pub(crate) config: Vec<(String, String)>,
}

impl TopicSpec {
    /// One partition, replication factor 1, unless set otherwise.
    pub fn new(name: impl Into<String>) -> Self {
        TopicSpec {
            name: name.into(),
            partitions: 1,
            replication: 1,
            config: Vec::new(),
        }
    }

    /// Number of partitions (at least 1).
    pub fn partitions(mut self, n: i32) -> Self {
        self.partitions = n.max(1);
        self
    }

    /// Replication factor (at least 1).
    pub fn replication(mut self, n: i32) -> Self {
        self.replication = n.max(1);
        self
    }

    /// A topic-level configuration entry (`retention.ms`, `cleanup.policy`, …).
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.push((key.into(), value.into()));
        self
    }

    /// The topic name.
    pub fn name(&self) -> &str {
        &self.name
    }
}
