//! The typed builder and the `kafka://` URL form of the same settings.

use std::collections::BTreeMap;
use std::time::Duration;

use event_core::broker::BrokerUrlError;

use crate::KafkaBroker;
use crate::admin::TopicSpec;
use crate::error::KafkaBackendError;

/// How many replicas must acknowledge a record before its publish resolves (`acks`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Acks {
    /// Fire and forget (`acks=0`): the receipt proves nothing. Not recommended.
    None,
    /// The partition leader has it (`acks=1`).
    Leader,
    /// Every in-sync replica has it (`acks=all`), the default.
    #[default]
    All,
}

impl Acks {
    fn as_str(self) -> &'static str {
        match self {
            Acks::None => "0",
            Acks::Leader => "1",
            Acks::All => "all",
        }
    }
}

/// Record batch compression (`compression.type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compression {
    /// No compression, the default.
    #[default]
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// Builds a [`KafkaBroker`].
///
/// The typed methods cover the common settings; [`set`](KafkaBrokerBuilder::set) passes any
/// other librdkafka property through (TLS and SASL included: `security.protocol`,
/// `ssl.ca.location`, `sasl.mechanism`, `sasl.username`, …; TLS needs this crate's `ssl`
/// feature). A passthrough property wins over the typed setting of the same key.
///
/// ```
/// use std::time::Duration;
/// use event_kafka::{Acks, Compression, KafkaBroker};
///
/// let broker = KafkaBroker::builder("127.0.0.1:9092")
///     .client_id("orders-service")
///     .linger(Duration::from_millis(5))
///     .acks(Acks::All)
///     .compression(Compression::Lz4)
///     .set("socket.keepalive.enable", "true")
///     .build()
///     .expect("valid configuration");
/// assert_eq!(broker.bootstrap_servers(), "127.0.0.1:9092");
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct KafkaBrokerBuilder {
    pub(crate) bootstrap_servers: String,
    pub(crate) client_id: String,
    pub(crate) linger: Duration,
    pub(crate) acks: Acks,
    pub(crate) idempotence: bool,
    pub(crate) compression: Compression,
    pub(crate) delivery_timeout: Duration,
    pub(crate) operation_timeout: Duration,
    pub(crate) flush_timeout: Duration,
    pub(crate) join_timeout: Duration,
    pub(crate) revoke_timeout: Duration,
    pub(crate) parallel_keys: bool,
    pub(crate) max_buffered_per_partition: usize,
    pub(crate) statistics_interval: Duration,
    pub(crate) ensure_topics: Vec<TopicSpec>,
    pub(crate) create_topics: bool,
    pub(crate) go_micro_envelope: bool,
    pub(crate) default_partitions: Option<i32>,
    pub(crate) default_replication: Option<i32>,
    pub(crate) producer_properties: BTreeMap<String, String>,
    pub(crate) consumer_properties: BTreeMap<String, String>,
    pub(crate) properties: BTreeMap<String, String>,
}

impl KafkaBrokerBuilder {
    pub(crate) fn new(bootstrap_servers: impl Into<String>) -> Self {
        KafkaBrokerBuilder {
            bootstrap_servers: bootstrap_servers.into(),
            client_id: "event".to_owned(),
            linger: Duration::from_millis(5),
            acks: Acks::All,
            idempotence: false,
            compression: Compression::None,
            delivery_timeout: Duration::from_secs(30),
            operation_timeout: Duration::from_secs(10),
            flush_timeout: Duration::from_secs(30),
            join_timeout: Duration::from_secs(60),
            revoke_timeout: Duration::from_secs(30),
            parallel_keys: false,
            max_buffered_per_partition: 512,
            statistics_interval: Duration::from_secs(5),
            ensure_topics: Vec::new(),
            create_topics: false,
            go_micro_envelope: false,
            default_partitions: None,
            default_replication: None,
            producer_properties: BTreeMap::new(),
            consumer_properties: BTreeMap::new(),
            properties: BTreeMap::new(),
        }
    }

    /// `client.id`, shown in broker logs and quotas (default `event`).
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = id.into();
        self
    }

    /// How long the producer waits to fill a batch (`linger.ms`, default 5 ms).
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Acknowledgements a publish waits for (default [`Acks::All`]).
    pub fn acks(mut self, acks: Acks) -> Self {
        self.acks = acks;
        self
    }

    /// Idempotent producer (`enable.idempotence`): no duplicates from producer retries, order
    /// kept per partition. Off by default because not every Kafka-compatible broker supports it.
    pub fn idempotence(mut self, on: bool) -> Self {
        self.idempotence = on;
        self
    }

    /// Batch compression (default none).
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// How long a publish may take, retries included, before it fails and gives the message
    /// back (`message.timeout.ms`, default 30 s).
    pub fn delivery_timeout(mut self, timeout: Duration) -> Self {
        self.delivery_timeout = timeout;
        self
    }

    /// Time limit of metadata, offset and admin requests (default 10 s). Joining a consumer
    /// group has its own, [`join_timeout`](Self::join_timeout).
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// How long [`disconnect`](event_core::broker::Broker::disconnect) waits for queued records
    /// (default 30 s).
    pub fn flush_timeout(mut self, timeout: Duration) -> Self {
        self.flush_timeout = timeout;
        self
    }

    /// How long subscribing to a queue group waits for the group to assign partitions
    /// (default 60 s).
    pub fn join_timeout(mut self, timeout: Duration) -> Self {
        self.join_timeout = timeout;
        self
    }

    /// How long a rebalance that takes partitions away waits for their handlers (default
    /// 30 s): the revoked partitions are fetched no more, the records of theirs that are in a
    /// handler or a retry backoff get this long to finish, the offsets of what finished are
    /// committed, and only then are the partitions let go. So the next owner starts after
    /// the last record finished here, and a hand-over redelivers only what was still
    /// unfinished at the deadline. Keep it below the group's `max.poll.interval.ms`
    /// (5 minutes by default), which bounds a rebalance.
    pub fn revoke_timeout(mut self, timeout: Duration) -> Self {
        self.revoke_timeout = timeout;
        self
    }

    /// Handle different keys of one partition concurrently (default off: one message per
    /// partition at a time). Order per key is kept either way, and the committed offset never
    /// passes an unfinished message.
    pub fn parallel_keys(mut self, on: bool) -> Self {
        self.parallel_keys = on;
        self
    }

    /// How many fetched messages of one partition may wait for a handler (default 512). A
    /// partition that reaches it and does not drain to half within 50 ms (a stuck or slow key,
    /// not a burst) is paused, alone, until half of them are taken; the others keep flowing.
    pub fn max_buffered_per_partition(mut self, n: usize) -> Self {
        self.max_buffered_per_partition = n.max(1);
        self
    }

    /// How often each subscription's consumer reports librdkafka statistics
    /// (`statistics.interval.ms`, default 5 s); each report updates the consumer lag gauge
    /// ([`CONSUMER_LAG`](event_core::telemetry::metric::CONSUMER_LAG)) of the partitions the
    /// subscription holds. [`Duration::ZERO`] turns the statistics, and so the gauge, off. The
    /// producer and admin clients report no statistics. A `statistics.interval.ms` passed
    /// through [`set`](Self::set) or [`set_consumer`](Self::set_consumer) wins over this.
    pub fn statistics_interval(mut self, interval: Duration) -> Self {
        self.statistics_interval = interval;
        self
    }

    /// Creates `topic` on [`connect`](event_core::broker::Broker::connect) when it does not
    /// exist (many clusters do not create topics on demand).
    pub fn ensure_topic(mut self, topic: TopicSpec) -> Self {
        self.ensure_topics.push(topic);
        self
    }

    /// Creates missing topics when they are first used (default off: most clusters are
    /// provisioned by their operators, and a typo in a topic name had better fail than create
    /// a topic). When on, [`subscribe`](event_core::broker::Broker::subscribe) creates its
    /// topic and the subscription's dead-letter topic (`<topic>.dlq`) if they are missing, and
    /// a [`publish`](event_core::broker::Broker::publish) (a typed publisher's too) creates the
    /// topic it publishes to; with [`default_partitions`](Self::default_partitions) and
    /// [`default_replication`](Self::default_replication). Topics that exist are left as they
    /// are. The URL form is `create_topics=true`.
    ///
    /// The client needs the `CREATE` permission on the topics (or the cluster) for this. To
    /// give some topics other settings, create them with [`ensure_topic`](Self::ensure_topic).
    pub fn create_topics(mut self, on: bool) -> Self {
        self.create_topics = on;
        self
    }

    /// Speaks go-micro's Kafka broker (default off; the URL form is `wire=go-micro`).
    ///
    /// go-micro's Kafka broker plugin does not use record headers: it writes each message
    /// as a JSON envelope in the record value, `{"Header":{"Content-Type":…,"Micro-ID":…},
    /// "Body":"<base64>"}`, and reads only that. When on, publishing writes that envelope (the
    /// headers inside it, in go-micro's spelling, the payload as its body; the key stays the
    /// record key), so go-micro subscribers read our events; and consuming unwraps every
    /// record that is such an envelope, so go-micro's messages arrive with their headers and
    /// payload as typed events. Records that are not envelopes are consumed as they are, so a
    /// topic can carry both. The mapping is in `event_core::backend::go_micro`.
    ///
    /// When off (the default), records carry CloudEvents binary-mode headers, and an envelope
    /// that arrives is diagnosed and dead-lettered as `go-micro-envelope`.
    pub fn go_micro_envelope(mut self, on: bool) -> Self {
        self.go_micro_envelope = on;
        self
    }

    /// Partitions of the topics [`create_topics`](Self::create_topics) creates, at least 1
    /// (default: the cluster's `num.partitions`, 1 unless its operators changed it). URL:
    /// `partitions=N`.
    pub fn default_partitions(mut self, n: i32) -> Self {
        self.default_partitions = Some(n.max(1));
        self
    }

    /// Replication factor of the topics [`create_topics`](Self::create_topics) creates, at
    /// least 1 (default: the cluster's `default.replication.factor`). URL: `replication=N`.
    pub fn default_replication(mut self, n: i32) -> Self {
        self.default_replication = Some(n.max(1));
        self
    }

    /// How [`create_topics`](Self::create_topics) creates `topic`; -1 lets the cluster choose
    /// (its `num.partitions`, `default.replication.factor`).
    pub(crate) fn provisioned_topic(&self, topic: &str) -> TopicSpec {
        TopicSpec {
            name: topic.to_owned(),
            partitions: self.default_partitions.unwrap_or(-1),
            replication: self.default_replication.unwrap_or(-1),
            config: Vec::new(),
        }
    }

    /// Any librdkafka property, for the producer and every consumer.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// A librdkafka property for the producer only.
    pub fn set_producer(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.producer_properties.insert(key.into(), value.into());
        self
    }

    /// A librdkafka property for consumers only.
    pub fn set_consumer(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.consumer_properties.insert(key.into(), value.into());
        self
    }

    /// Builds the broker; nothing connects until
    /// [`connect`](event_core::broker::Broker::connect).
    ///
    /// # Errors
    ///
    /// [`KafkaBackendError::Config`] when librdkafka rejects a property (the message names it).
    pub fn build(self) -> Result<KafkaBroker, KafkaBackendError> {
        KafkaBroker::from_builder(self)
    }

    /// The producer's librdkafka configuration.
    pub(crate) fn producer_config(&self) -> rdkafka::ClientConfig {
        let mut config = self.common_config();
        config
            .set("linger.ms", self.linger.as_millis().to_string())
            .set("acks", self.acks.as_str())
            .set("enable.idempotence", self.idempotence.to_string())
            .set("compression.type", self.compression.as_str())
            .set(
                "message.timeout.ms",
                self.delivery_timeout.as_millis().max(1).to_string(),
            );
        for (k, v) in self.properties.iter().chain(&self.producer_properties) {
            config.set(k, v);
        }
        config
    }

    /// A consumer's librdkafka configuration.
    pub(crate) fn consumer_config(
        &self,
        group: Option<&str>,
        commit: bool,
    ) -> rdkafka::ClientConfig {
        let mut config = self.common_config();
        if let Some(group) = group {
            config.set("group.id", group);
        }
        config
            .set(
                "enable.auto.commit",
                (commit && group.is_some()).to_string(),
            )
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", "1000")
            // the start of a new group is resolved by the rebalance handler; this is the
            // fallback when that fails
            .set("auto.offset.reset", "latest")
            .set("enable.partition.eof", "false")
            // a partition resumed after its read-ahead emptied waits for the fetch request in
            // flight, which the broker may hold this long when it has nothing new: librdkafka's
            // 500 ms would make a paused partition crawl (measured: 16-record read-ahead, ~36
            // records/s at 500 ms, ~500/s at 10 ms); 100 ms costs an idle consumer 10 empty
            // fetches a second
            .set("fetch.wait.max.ms", "100")
            // librdkafka stops fetching a partition for this long once its local queue holds
            // `queued.max.messages.kbytes` (64 MiB): 1 s by default, longer than a consumer
            // that handles a few hundred thousand records a second takes to empty that queue
            // (measured: 300,000 records of 64 B ran at 135 k/s, with two ~800 ms gaps)
            .set("fetch.queue.backoff.ms", "20")
            .set("partition.assignment.strategy", "range,roundrobin")
            // read by the consumer lag gauge; 0 turns statistics off
            .set("statistics.interval.ms", millis(self.statistics_interval));
        for (k, v) in self.properties.iter().chain(&self.consumer_properties) {
            config.set(k, v);
        }
        config
    }

    /// The admin client's librdkafka configuration.
    pub(crate) fn admin_config(&self) -> rdkafka::ClientConfig {
        let mut config = self.common_config();
        for (k, v) in &self.properties {
            config.set(k, v);
        }
        config
    }

    fn common_config(&self) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("client.id", &self.client_id)
            .set("allow.auto.create.topics", "false")
            .set("log_level", "3");
        config
    }

    /// Parses `url` and reads it with [`from_url`](Self::from_url).
    ///
    /// ```
    /// let builder = event_kafka::KafkaBrokerBuilder::parse("kafka://127.0.0.1:9092?linger_ms=1")
    ///     .expect("valid URL");
    /// let broker = builder.client_id("orders").build().expect("valid configuration");
    /// assert_eq!(broker.bootstrap_servers(), "127.0.0.1:9092");
    /// ```
    ///
    /// # Errors
    ///
    /// [`BrokerUrlError::Parse`] when it is not a URL, else as [`from_url`](Self::from_url).
    pub fn parse(url: &str) -> Result<Self, BrokerUrlError> {
        let parsed = url::Url::parse(url).map_err(|source| BrokerUrlError::Parse {
            url: url.to_owned(),
            source,
        })?;
        Self::from_url(&parsed)
    }

    /// Reads a `kafka://host:port[,host:port…]?key=value…` URL.
    ///
    /// More than one bootstrap server: `bootstrap_servers=host1:9092,host2:9092` (a URL has
    /// one host). Other query parameters: `client_id`, `linger_ms`, `acks` (`0`, `1`, `all`), `idempotence`,
    /// `compression`, `delivery_timeout_ms`, `operation_timeout_ms`, `flush_timeout_ms`, `join_timeout_ms`,
    /// `revoke_timeout_ms`, `parallel_keys`, `max_buffered_per_partition`, `statistics_interval_ms` (`0` turns
    /// consumer statistics and the lag gauge off), `create_topics` (see
    /// [`create_topics`](Self::create_topics)) with `partitions` and `replication` for the
    /// topics it creates, `wire` (`cloudevents`, the default, or `go-micro`: see
    /// [`go_micro_envelope`](Self::go_micro_envelope)); any parameter with a dot in its name is
    /// a librdkafka property (`security.protocol=sasl_ssl`, `sasl.mechanism=PLAIN`, …).
    /// `kafkas://` sets `security.protocol=ssl`.
    ///
    /// # Errors
    ///
    /// [`BrokerUrlError::Invalid`] naming the parameter that is wrong.
    pub fn from_url(url: &url::Url) -> Result<Self, BrokerUrlError> {
        let invalid = |problem: String| BrokerUrlError::Invalid {
            url: event_core::broker::redact(url),
            problem,
        };
        let host = url
            .host_str()
            .ok_or_else(|| invalid("the URL names no host (kafka://HOST:PORT)".to_owned()))?;
        let servers = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => format!("{host}:9092"),
        };
        let mut builder = KafkaBrokerBuilder::new(servers);
        if url.scheme().eq_ignore_ascii_case("kafkas") {
            builder = builder.set("security.protocol", "ssl");
        }
        if !url.username().is_empty() {
            builder = builder
                .set("sasl.username", percent_decode(url.username()))
                .set(
                    "sasl.password",
                    percent_decode(url.password().unwrap_or("")),
                );
        }
        for (key, value) in url.query_pairs() {
            let (key, value) = (key.into_owned(), value.into_owned());
            let number = |value: &str| {
                value.parse::<u64>().map_err(|_| {
                    invalid(format!(
                        "query parameter {key} must be a whole number, not {value:?}"
                    ))
                })
            };
            let flag = |value: &str| match value {
                "true" | "1" | "yes" => Ok(true),
                "false" | "0" | "no" => Ok(false),
                _ => Err(invalid(format!(
                    "query parameter {key} must be true or false, not {value:?}"
                ))),
            };
            builder = match key.as_str() {
                "bootstrap_servers" => {
                    builder.bootstrap_servers = value;
                    builder
                }
                "client_id" => builder.client_id(value),
                "linger_ms" => builder.linger(Duration::from_millis(number(&value)?)),
                "acks" => builder.acks(match value.as_str() {
                    "0" => Acks::None,
                    "1" => Acks::Leader,
                    "all" | "-1" => Acks::All,
                    _ => return Err(invalid(format!("acks must be 0, 1 or all, not {value:?}"))),
                }),
                "idempotence" => builder.idempotence(flag(&value)?),
                "compression" => builder.compression(match value.as_str() {
                    "none" => Compression::None,
                    "gzip" => Compression::Gzip,
                    "snappy" => Compression::Snappy,
                    "lz4" => Compression::Lz4,
                    "zstd" => Compression::Zstd,
                    _ => {
                        return Err(invalid(format!(
                            "compression must be none, gzip, snappy, lz4 or zstd, not {value:?}"
                        )));
                    }
                }),
                "delivery_timeout_ms" => {
                    builder.delivery_timeout(Duration::from_millis(number(&value)?))
                }
                "operation_timeout_ms" => {
                    builder.operation_timeout(Duration::from_millis(number(&value)?))
                }
                "flush_timeout_ms" => builder.flush_timeout(Duration::from_millis(number(&value)?)),
                "join_timeout_ms" => builder.join_timeout(Duration::from_millis(number(&value)?)),
                "revoke_timeout_ms" => {
                    builder.revoke_timeout(Duration::from_millis(number(&value)?))
                }
                "parallel_keys" => builder.parallel_keys(flag(&value)?),
                "max_buffered_per_partition" => {
                    builder.max_buffered_per_partition(number(&value)? as usize)
                }
                "statistics_interval_ms" => {
                    builder.statistics_interval(Duration::from_millis(number(&value)?))
                }
                "create_topics" => builder.create_topics(flag(&value)?),
                "wire" => match value.as_ref() {
                    "cloudevents" => builder.go_micro_envelope(false),
                    "go-micro" => builder.go_micro_envelope(true),
                    other => {
                        return Err(invalid(format!(
                            "query parameter wire must be cloudevents (record headers, the \
                             default) or go-micro (go-micro's JSON envelope), not {other:?}"
                        )));
                    }
                },
                "partitions" | "replication" => {
                    let n = number(&value)?;
                    let n = i32::try_from(n).ok().filter(|n| *n >= 1).ok_or_else(|| {
                        invalid(format!(
                            "query parameter {key} must be from 1 to {}, not {n}",
                            i32::MAX
                        ))
                    })?;
                    if key == "partitions" {
                        builder.default_partitions(n)
                    } else {
                        builder.default_replication(n)
                    }
                }
                property if property.contains('.') => builder.set(property, value),
                other => {
                    return Err(invalid(format!(
                        "unknown query parameter {other:?}; known: bootstrap_servers, client_id, linger_ms, acks, \
                         idempotence, compression, delivery_timeout_ms, operation_timeout_ms, \
                         flush_timeout_ms, join_timeout_ms, revoke_timeout_ms, parallel_keys, \
                         max_buffered_per_partition, \
                         statistics_interval_ms, create_topics, partitions, replication, wire, or any \
                         librdkafka property (a name with a dot)"
                    )));
                }
            };
        }
        Ok(builder)
    }
}

/// Whole milliseconds for a librdkafka `*.ms` property, rounded up so that a non-zero
/// duration never becomes 0 (which often means "off").
fn millis(duration: Duration) -> String {
    duration.as_nanos().div_ceil(1_000_000).to_string()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<KafkaBrokerBuilder, BrokerUrlError> {
        KafkaBrokerBuilder::from_url(&url::Url::parse(url).unwrap())
    }

    #[test]
    fn url_maps_onto_the_builder() {
        let b = parse("kafka://127.0.0.1:9092?client_id=orders&linger_ms=20&acks=1&compression=zstd&parallel_keys=true&socket.keepalive.enable=true").unwrap();
        assert_eq!(b.bootstrap_servers, "127.0.0.1:9092");
        assert_eq!(b.client_id, "orders");
        assert_eq!(b.linger, Duration::from_millis(20));
        assert_eq!(b.acks, Acks::Leader);
        assert_eq!(b.compression, Compression::Zstd);
        assert!(b.parallel_keys);
        assert_eq!(
            b.properties
                .get("socket.keepalive.enable")
                .map(String::as_str),
            Some("true")
        );
        let config = b.producer_config();
        assert_eq!(config.get("linger.ms"), Some("20"));
        assert_eq!(config.get("compression.type"), Some("zstd"));
        assert_eq!(config.get("socket.keepalive.enable"), Some("true"));
    }

    #[test]
    fn url_defaults_port_and_lists_servers() {
        assert_eq!(
            parse("kafka://broker").unwrap().bootstrap_servers,
            "broker:9092"
        );
        assert_eq!(
            parse("kafka://a:9092?bootstrap_servers=a:9092,b:9093")
                .unwrap()
                .bootstrap_servers,
            "a:9092,b:9093"
        );
    }

    #[test]
    fn url_credentials_become_sasl_and_kafkas_means_tls() {
        let b = parse("kafkas://user:p%40ss@broker:9093?sasl.mechanism=PLAIN").unwrap();
        assert_eq!(b.properties["security.protocol"], "ssl");
        assert_eq!(b.properties["sasl.username"], "user");
        assert_eq!(b.properties["sasl.password"], "p@ss");
        assert_eq!(b.properties["sasl.mechanism"], "PLAIN");
    }

    #[test]
    fn the_wire_parameter_chooses_go_micro_s_envelope() {
        assert!(!parse("kafka://h:9092").unwrap().go_micro_envelope);
        assert!(
            !parse("kafka://h:9092?wire=cloudevents")
                .unwrap()
                .go_micro_envelope
        );
        assert!(
            parse("kafka://h:9092?wire=go-micro")
                .unwrap()
                .go_micro_envelope
        );
        let err = parse("kafka://h:9092?wire=micro").unwrap_err().to_string();
        assert!(
            err.contains("wire must be cloudevents (record headers, the default) or go-micro"),
            "{err}"
        );
    }

    #[test]
    fn url_errors_name_the_parameter() {
        let err = parse("kafka://h:9092?lingr_ms=5").unwrap_err().to_string();
        assert!(
            err.contains("unknown query parameter \"lingr_ms\""),
            "{err}"
        );
        let err = parse("kafka://h:9092?linger_ms=soon")
            .unwrap_err()
            .to_string();
        assert!(err.contains("linger_ms must be a whole number"), "{err}");
        let err = parse("kafka://h:9092?acks=2").unwrap_err().to_string();
        assert!(err.contains("acks must be 0, 1 or all"), "{err}");
    }

    #[test]
    fn cooperative_assignment_and_the_revoke_timeout_are_accepted() {
        let b = parse("kafka://h:9092?revoke_timeout_ms=1500&partition.assignment.strategy=cooperative-sticky")
            .unwrap();
        assert_eq!(b.revoke_timeout, Duration::from_millis(1500));
        assert_eq!(
            b.consumer_config(Some("g"), true)
                .get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        b.build().expect("cooperative-sticky is supported");
    }

    #[test]
    fn url_turns_topic_provisioning_on() {
        let off = parse("kafka://h:9092").unwrap();
        assert!(!off.create_topics);
        let spec = off.provisioned_topic("orders");
        assert_eq!(
            (spec.partitions, spec.replication),
            (-1, -1),
            "the cluster's defaults"
        );

        let on = parse("kafka://h:9092?create_topics=true&partitions=3&replication=2").unwrap();
        assert!(on.create_topics);
        let spec = on.provisioned_topic("orders.dlq");
        assert_eq!(spec.name(), "orders.dlq");
        assert_eq!((spec.partitions, spec.replication), (3, 2));
        assert!(spec.config.is_empty());
        assert!(
            !parse("kafka://h:9092?create_topics=0")
                .unwrap()
                .create_topics
        );
    }

    #[test]
    fn url_provisioning_errors_name_the_parameter() {
        let err = |url| parse(url).unwrap_err().to_string();
        let e = err("kafka://h:9092?create_topics=maybe");
        assert!(e.contains("create_topics must be true or false"), "{e}");
        let e = err("kafka://h:9092?create_topics=true&partitions=0");
        assert!(
            e.contains("partitions must be from 1 to 2147483647, not 0"),
            "{e}"
        );
        let e = err("kafka://h:9092?replication=three");
        assert!(e.contains("replication must be a whole number"), "{e}");
        let e = err("kafka://h:9092?partitions=99999999999");
        assert!(e.contains("not 99999999999"), "{e}");
        let e = err("kafka://h:9092?create_topic=true");
        assert!(
            e.contains("unknown query parameter \"create_topic\"")
                && e.contains("create_topics, partitions, replication"),
            "{e}"
        );
    }

    #[test]
    fn passthrough_wins_over_typed_settings() {
        let b = KafkaBrokerBuilder::new("h:9092")
            .linger(Duration::from_millis(5))
            .set_producer("linger.ms", "50");
        assert_eq!(b.producer_config().get("linger.ms"), Some("50"));
        let consumer = b
            .set_consumer("auto.commit.interval.ms", "200")
            .consumer_config(Some("g"), true);
        assert_eq!(consumer.get("auto.commit.interval.ms"), Some("200"));
        assert_eq!(consumer.get("enable.auto.offset.store"), Some("false"));
    }

    #[test]
    fn consumers_report_statistics_every_five_seconds_by_default() {
        let b = KafkaBrokerBuilder::new("h:9092");
        assert_eq!(
            b.consumer_config(Some("g"), true)
                .get("statistics.interval.ms"),
            Some("5000")
        );
        assert_eq!(b.producer_config().get("statistics.interval.ms"), None);
        assert_eq!(b.admin_config().get("statistics.interval.ms"), None);
        let off = b.clone().statistics_interval(Duration::ZERO);
        assert_eq!(
            off.consumer_config(None, false)
                .get("statistics.interval.ms"),
            Some("0")
        );
        let tiny = b.clone().statistics_interval(Duration::from_micros(1));
        assert_eq!(
            tiny.consumer_config(None, false)
                .get("statistics.interval.ms"),
            Some("1"),
            "a non-zero interval never rounds down to off"
        );
        let passthrough = b
            .statistics_interval(Duration::from_millis(100))
            .set_consumer("statistics.interval.ms", "60000");
        assert_eq!(
            passthrough
                .consumer_config(Some("g"), true)
                .get("statistics.interval.ms"),
            Some("60000")
        );
        let everywhere = KafkaBrokerBuilder::new("h:9092").set("statistics.interval.ms", "0");
        assert_eq!(
            everywhere
                .consumer_config(Some("g"), true)
                .get("statistics.interval.ms"),
            Some("0")
        );
    }

    #[test]
    fn url_sets_the_statistics_interval() {
        let b = parse("kafka://h:9092?statistics_interval_ms=250").unwrap();
        assert_eq!(b.statistics_interval, Duration::from_millis(250));
        assert_eq!(
            b.consumer_config(Some("g"), true)
                .get("statistics.interval.ms"),
            Some("250")
        );
        let off = parse("kafka://h:9092?statistics_interval_ms=0").unwrap();
        assert_eq!(off.statistics_interval, Duration::ZERO);
        let err = parse("kafka://h:9092?statistics_interval_ms=5s")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("statistics_interval_ms must be a whole number"),
            "{err}"
        );
        let err = parse("kafka://h:9092?statistics_interval=5000")
            .unwrap_err()
            .to_string();
        assert!(err.contains("statistics_interval_ms"), "{err}");
    }
}
