//! Configuration: [`AmqpBrokerBuilder`] and the URL query parameters that map onto it.

use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use crate::error::AmqpConfigError;
use crate::wire::WireProfile;

/// The exchange used when none is configured.
pub const DEFAULT_EXCHANGE: &str = "event";

/// The least `basic.qos` prefetch of a subscription when none is configured
/// ([`AmqpBrokerBuilder::prefetch`]).
pub const DEFAULT_PREFETCH: u16 = 32;

/// The query parameters this backend reads (besides `x-*` queue arguments).
const OWN_PARAMETERS: &[&str] = &[
    "exchange",
    "exchange_durable",
    "durable_queues",
    "prefetch",
    "connection_name",
    "publish_timeout_ms",
    "connect_timeout_ms",
    "reconnect_min_ms",
    "reconnect_max_ms",
    "wire",
    "mandatory",
];

/// The query parameters lapin reads from the URI itself.
const LAPIN_PARAMETERS: &[&str] = &[
    "heartbeat",
    "frame_max",
    "channel_max",
    "connection_timeout",
    "auth_mechanism",
];

const KNOWN_PARAMETERS: &str = "exchange, exchange_durable, durable_queues, prefetch, \
    connection_name, publish_timeout_ms, connect_timeout_ms, reconnect_min_ms, reconnect_max_ms, \
    wire, mandatory, x-* (queue arguments), and lapin's heartbeat, frame_max, channel_max, \
    connection_timeout, auth_mechanism";

/// The value of a queue argument (`x-queue-type`, `x-message-ttl`, ...).
///
/// Built from strings, integers and booleans:
///
/// ```
/// use event_amqp::QueueArgument;
///
/// assert_eq!(QueueArgument::from("quorum"), QueueArgument::Text("quorum".into()));
/// assert_eq!(QueueArgument::from(60_000), QueueArgument::Int(60_000));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueueArgument {
    /// A string (sent as an AMQP long string).
    Text(String),
    /// An integer (sent as an AMQP 64-bit signed integer).
    Int(i64),
    /// A boolean.
    Bool(bool),
}

impl QueueArgument {
    /// Reads a URL query value: an integer if it parses as one, `true`/`false` as a boolean,
    /// otherwise text.
    fn parse(value: &str) -> Self {
        if let Ok(n) = value.parse::<i64>() {
            QueueArgument::Int(n)
        } else if value == "true" || value == "false" {
            QueueArgument::Bool(value == "true")
        } else {
            QueueArgument::Text(value.to_owned())
        }
    }

    fn to_amqp(&self) -> AMQPValue {
        match self {
            QueueArgument::Text(s) => AMQPValue::LongString(LongString::from(s.as_bytes())),
            QueueArgument::Int(n) => AMQPValue::LongLongInt(*n),
            QueueArgument::Bool(b) => AMQPValue::Boolean(*b),
        }
    }
}

impl From<&str> for QueueArgument {
    fn from(value: &str) -> Self {
        QueueArgument::Text(value.to_owned())
    }
}
impl From<String> for QueueArgument {
    fn from(value: String) -> Self {
        QueueArgument::Text(value)
    }
}
impl From<i64> for QueueArgument {
    fn from(value: i64) -> Self {
        QueueArgument::Int(value)
    }
}
impl From<i32> for QueueArgument {
    fn from(value: i32) -> Self {
        QueueArgument::Int(i64::from(value))
    }
}
impl From<u32> for QueueArgument {
    fn from(value: u32) -> Self {
        QueueArgument::Int(i64::from(value))
    }
}
impl From<bool> for QueueArgument {
    fn from(value: bool) -> Self {
        QueueArgument::Bool(value)
    }
}

/// Configures an [`AmqpBroker`](crate::AmqpBroker). Created by
/// [`AmqpBroker::builder`](crate::AmqpBroker::builder); [`build`](Self::build) makes the broker.
///
/// Every setting can also be given as a query parameter of the URI
/// (`amqp://host/%2f?exchange=micro&prefetch=16&connection_name=orders&x-queue-type=quorum`);
/// a setting made on the builder wins over the same setting in the URI.
///
/// | builder method | query parameter | default |
/// |---|---|---|
/// | [`exchange`](Self::exchange) | `exchange` | `event` |
/// | [`exchange_durable`](Self::exchange_durable) | `exchange_durable` | `true` |
/// | [`durable_queues`](Self::durable_queues) | `durable_queues` | `true` |
/// | [`prefetch`](Self::prefetch) | `prefetch` | 32, or the subscription's concurrency if larger |
/// | [`queue_argument`](Self::queue_argument) | `x-...=value` | none |
/// | [`connection_name`](Self::connection_name) | `connection_name` | none |
/// | [`publish_timeout`](Self::publish_timeout) | `publish_timeout_ms` | 30 s |
/// | [`connect_timeout`](Self::connect_timeout) | `connect_timeout_ms` | 30 s |
/// | [`reconnect_backoff`](Self::reconnect_backoff) | `reconnect_min_ms`, `reconnect_max_ms` | 100 ms … 5 s |
/// | [`wire_profile`](Self::wire_profile) | `wire` (`lean`, `go-micro`, `cloudevents`, `go-micro,cloudevents`) | `lean` |
/// | [`mandatory`](Self::mandatory) | `mandatory` | `true` |
///
/// lapin's own URI parameters (`heartbeat`, `frame_max`, `channel_max`, `connection_timeout`,
/// `auth_mechanism`) are passed through. TLS is chosen by the `amqps://` scheme (rustls, with
/// the platform's trust store).
///
/// ```
/// use std::time::Duration;
/// use event_amqp::{AmqpBroker, WireProfile};
///
/// let broker = AmqpBroker::builder("amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=10")
///     .exchange("micro")
///     .exchange_durable(false)
///     .queue_argument("x-queue-type", "quorum")
///     .connection_name("orders")
///     .publish_timeout(Duration::from_secs(10))
///     .wire_profile(WireProfile::GO_MICRO)
///     .build()?;
/// assert_eq!(event_core::Broker::address(&broker), "amqp://127.0.0.1:5672/%2f");
/// # Ok::<(), event_amqp::AmqpConfigError>(())
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct AmqpBrokerBuilder {
    uri: SecretUri,
    exchange: Option<String>,
    exchange_durable: Option<bool>,
    durable_queues: Option<bool>,
    prefetch: Option<u16>,
    queue_arguments: Vec<(String, QueueArgument)>,
    connection_name: Option<String>,
    publish_timeout: Option<Duration>,
    connect_timeout: Option<Duration>,
    reconnect_min: Option<Duration>,
    reconnect_max: Option<Duration>,
    wire: Option<WireProfile>,
    mandatory: Option<bool>,
}

impl AmqpBrokerBuilder {
    pub(crate) fn new(uri: &str) -> Self {
        AmqpBrokerBuilder {
            uri: SecretUri(uri.to_owned()),
            exchange: None,
            exchange_durable: None,
            durable_queues: None,
            prefetch: None,
            queue_arguments: Vec::new(),
            connection_name: None,
            publish_timeout: None,
            connect_timeout: None,
            reconnect_min: None,
            reconnect_max: None,
            wire: None,
            mandatory: None,
        }
    }

    /// The topic exchange messages are published to and queues are bound to (default
    /// `event`). go-micro's RabbitMQ broker uses `micro`: set it there (with
    /// [`exchange_durable(false)`](Self::exchange_durable), go-micro's default, and
    /// [`wire_profile(WireProfile::GO_MICRO)`](Self::wire_profile) so that go-micro finds its
    /// headers) to share events with go-micro services.
    pub fn exchange(mut self, name: impl Into<String>) -> Self {
        self.exchange = Some(name.into());
        self
    }

    /// Whether the exchange is declared durable (default `true`). It must match how the
    /// exchange was first declared, or RabbitMQ refuses the declaration.
    pub fn exchange_durable(mut self, durable: bool) -> Self {
        self.exchange_durable = Some(durable);
        self
    }

    /// Whether queue-group queues and dead-letter queues are durable (default `true`).
    /// Broadcast queues are always exclusive and auto-delete.
    pub fn durable_queues(mut self, durable: bool) -> Self {
        self.durable_queues = Some(durable);
        self
    }

    /// The least `basic.qos` prefetch of a subscription (default [`DEFAULT_PREFETCH`]). The
    /// prefetch is the subscription's
    /// [concurrency](event_core::broker::SubscribeOptions::concurrency) if that is larger.
    ///
    /// With concurrency 1 messages are still handled one at a time, in order; the prefetch
    /// lets RabbitMQ send the next messages while a handler runs and its acknowledgement
    /// travels, so that no round trip stands between one message and the next (with a
    /// prefetch of 1, RabbitMQ waits for each acknowledgement before it delivers again). In a
    /// queue group, a member holds up to this many messages, which the other members cannot
    /// take meanwhile: for handlers that take long, where sharing matters more than round
    /// trips, set it low (`prefetch(1)`).
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = Some(prefetch);
        self
    }

    /// Adds an argument to the declaration of durable queues (queue groups and dead-letter
    /// queues): `x-queue-type = quorum`, `x-message-ttl = 60000`, `x-expires`, ...
    /// Broadcast queues are declared without arguments.
    pub fn queue_argument(
        mut self,
        name: impl Into<String>,
        value: impl Into<QueueArgument>,
    ) -> Self {
        self.queue_arguments.push((name.into(), value.into()));
        self
    }

    /// The connection name shown by RabbitMQ (management UI, `rabbitmqctl list_connections`).
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = Some(name.into());
        self
    }

    /// How long a publish waits for the connection and for the broker's confirm before it
    /// fails and gives the message back (default 30 s).
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = Some(timeout);
        self
    }

    /// How long [`connect`](event_core::Broker::connect) and a subscribe wait for the
    /// connection (default 30 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// The delay between reconnection attempts: starts at `min`, doubles up to `max`
    /// (default 100 ms … 5 s). A connection lost less than 10 s after it was made counts as
    /// a failed attempt, so one that keeps failing as soon as it is made (lapin closes a
    /// connection on a message it cannot parse, and RabbitMQ gives the message back) is made
    /// again at most every `max`, and logged as an error.
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = Some(min);
        self.reconnect_max = Some(max);
        self
    }

    /// What a publish writes besides each fact once (default [`WireProfile::LEAN`]): add
    /// go-micro's headers ([`WireProfile::GO_MICRO`]), the CloudEvents AMQP headers
    /// ([`WireProfile::CLOUDEVENTS`]), or both (`WireProfile::GO_MICRO |
    /// WireProfile::CLOUDEVENTS`). Consuming reads every form whatever the profile.
    pub fn wire_profile(mut self, profile: WireProfile) -> Self {
        self.wire = Some(profile);
        self
    }

    /// Whether a publish is `mandatory` (default `true`): a message that no queue receives
    /// (no queue is bound to its routing key) is returned by RabbitMQ, and the publish fails
    /// with [`BrokerError::Unroutable`](event_core::broker::BrokerError::Unroutable), giving
    /// the message back.
    ///
    /// With `false`, RabbitMQ confirms such a message and drops it: the publish succeeds and
    /// the message is lost. That is how go-micro and most AMQP clients publish: a service
    /// may then publish events that no one subscribes to yet. Set it only where losing a
    /// message nobody listens for is acceptable. It is not a speed setting: on the
    /// benchmark machines the rate with and without it was the same within RabbitMQ's
    /// run-to-run noise (`BENCHMARKS.md`).
    ///
    /// A dead letter (a message the delivery loop sends to a subscription's dead-letter topic,
    /// which carries [`X_EVENT_ORIGINAL_TOPIC`](event_core::headers::names::X_EVENT_ORIGINAL_TOPIC))
    /// is always published mandatory: the message it stands for is acknowledged only once the
    /// dead letter is in a queue.
    pub fn mandatory(mut self, mandatory: bool) -> Self {
        self.mandatory = Some(mandatory);
        self
    }

    pub(crate) fn into_config(mut self) -> Result<Config, AmqpConfigError> {
        // a parser's reason may quote the whole URI, password included
        let invalid_uri = |uri: &str, reason: String| AmqpConfigError::InvalidUri {
            uri: redact(uri),
            reason: reason.replace(uri, &redact(uri)),
        };
        let mut url =
            url::Url::parse(&self.uri.0).map_err(|e| invalid_uri(&self.uri.0, e.to_string()))?;
        if matches!(url.host(), Some(url::Host::Ipv6(_))) {
            // lapin's URI parser takes only a domain and falls back to localhost
            return Err(invalid_uri(
                &self.uri.0,
                "an IPv6 address literal is not supported (lapin would connect to localhost): \
                 use a host name that resolves to it"
                    .to_owned(),
            ));
        }
        let default_port = match url.scheme() {
            "amqp" => 5672,
            "amqps" => 5671,
            other => {
                return Err(invalid_uri(
                    &self.uri.0,
                    format!("the scheme is {other:?}; use amqp:// or amqps://"),
                ));
            }
        };
        let mut queue_arguments = Vec::new();
        let mut passthrough = Vec::new();
        for (name, value) in url.query_pairs() {
            let (name, value) = (name.into_owned(), value.into_owned());
            if LAPIN_PARAMETERS.contains(&name.as_str()) {
                passthrough.push((name, value));
                continue;
            }
            if name.starts_with("x-") {
                let parsed = QueueArgument::parse(&value);
                queue_arguments.push((name, parsed));
                continue;
            }
            if !OWN_PARAMETERS.contains(&name.as_str()) {
                return Err(AmqpConfigError::UnknownParameter {
                    name,
                    known: KNOWN_PARAMETERS,
                });
            }
            self.apply_parameter(&name, &value)?;
        }
        // builder arguments come after the URI's, so a builder setting of the same name wins
        queue_arguments.append(&mut self.queue_arguments);

        url.set_query(None);
        if !passthrough.is_empty() {
            url.query_pairs_mut().extend_pairs(passthrough);
        }
        let lapin_uri = url.to_string();
        lapin_uri
            .parse::<lapin::uri::AMQPUri>()
            .map_err(|reason| invalid_uri(&self.uri.0, reason))?;

        let host = url.host_str().unwrap_or("localhost");
        let port = url.port().unwrap_or(default_port);
        let path = match url.path() {
            "" => "/",
            p => p,
        };
        let address = format!("{}://{host}:{port}{path}", url.scheme());

        let exchange = self.exchange.unwrap_or_else(|| DEFAULT_EXCHANGE.to_owned());
        check_short("exchange", &exchange)?;
        let mut arguments = FieldTable::default();
        for (name, value) in &queue_arguments {
            let key =
                ShortString::try_new(name.as_str()).map_err(|_| AmqpConfigError::InvalidValue {
                    name: "queue argument",
                    value: name.clone(),
                    expected: "a name of at most 255 bytes",
                })?;
            arguments.insert(key, value.to_amqp());
        }
        let reconnect_min = self.reconnect_min.unwrap_or(Duration::from_millis(100));
        let reconnect_max = self
            .reconnect_max
            .unwrap_or(Duration::from_secs(5))
            .max(reconnect_min);
        Ok(Config {
            uri: SecretUri(lapin_uri),
            address,
            exchange,
            exchange_durable: self.exchange_durable.unwrap_or(true),
            durable_queues: self.durable_queues.unwrap_or(true),
            prefetch: self.prefetch.unwrap_or(DEFAULT_PREFETCH),
            queue_arguments: arguments,
            connection_name: self.connection_name,
            publish_timeout: self.publish_timeout.unwrap_or(Duration::from_secs(30)),
            connect_timeout: self.connect_timeout.unwrap_or(Duration::from_secs(30)),
            reconnect_min,
            reconnect_max,
            wire: self.wire.unwrap_or_default(),
            mandatory: self.mandatory.unwrap_or(true),
        })
    }

    /// Applies one of [`OWN_PARAMETERS`] unless the builder already set it.
    fn apply_parameter(&mut self, name: &str, value: &str) -> Result<(), AmqpConfigError> {
        fn boolean(name: &'static str, value: &str) -> Result<bool, AmqpConfigError> {
            match value {
                "true" | "1" | "yes" => Ok(true),
                "false" | "0" | "no" => Ok(false),
                _ => Err(AmqpConfigError::InvalidValue {
                    name,
                    value: value.to_owned(),
                    expected: "true or false",
                }),
            }
        }
        // every one is a timeout or a backoff: 0 would fail every call or retry in a tight loop
        fn millis(name: &'static str, value: &str) -> Result<Duration, AmqpConfigError> {
            match value.parse::<u64>() {
                Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
                _ => Err(AmqpConfigError::InvalidValue {
                    name,
                    value: value.to_owned(),
                    expected: "a whole number of milliseconds, at least 1",
                }),
            }
        }
        match name {
            "exchange" => {
                self.exchange.get_or_insert_with(|| value.to_owned());
            }
            "exchange_durable" => {
                let v = boolean("exchange_durable", value)?;
                self.exchange_durable.get_or_insert(v);
            }
            "durable_queues" => {
                let v = boolean("durable_queues", value)?;
                self.durable_queues.get_or_insert(v);
            }
            "prefetch" => {
                let v = value
                    .parse::<u16>()
                    .map_err(|_| AmqpConfigError::InvalidValue {
                        name: "prefetch",
                        value: value.to_owned(),
                        expected: "a whole number from 0 to 65535",
                    })?;
                self.prefetch.get_or_insert(v);
            }
            "connection_name" => {
                self.connection_name.get_or_insert_with(|| value.to_owned());
            }
            "publish_timeout_ms" => {
                let v = millis("publish_timeout_ms", value)?;
                self.publish_timeout.get_or_insert(v);
            }
            "connect_timeout_ms" => {
                let v = millis("connect_timeout_ms", value)?;
                self.connect_timeout.get_or_insert(v);
            }
            "reconnect_min_ms" => {
                let v = millis("reconnect_min_ms", value)?;
                self.reconnect_min.get_or_insert(v);
            }
            "reconnect_max_ms" => {
                let v = millis("reconnect_max_ms", value)?;
                self.reconnect_max.get_or_insert(v);
            }
            "wire" => {
                let v = value.parse::<WireProfile>()?;
                self.wire.get_or_insert(v);
            }
            "mandatory" => {
                let v = boolean("mandatory", value)?;
                self.mandatory.get_or_insert(v);
            }
            _ => unreachable!("only OWN_PARAMETERS are applied"),
        }
        Ok(())
    }
}

fn check_short(name: &'static str, value: &str) -> Result<(), AmqpConfigError> {
    if value.len() > 255 {
        return Err(AmqpConfigError::InvalidValue {
            name,
            value: value.to_owned(),
            expected: "a name of at most 255 bytes",
        });
    }
    Ok(())
}

/// The URI without its password.
/// A URI that may hold a password: `Debug` shows it redacted.
#[derive(Clone)]
pub(crate) struct SecretUri(pub(crate) String);

impl std::fmt::Debug for SecretUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

pub(crate) fn redact(uri: &str) -> String {
    match url::Url::parse(uri) {
        // `amqp:user:pass@host` (no `//`) has no authority to take a password from
        Ok(url) if url.cannot_be_a_base() => format!("{}:<not shown>", url.scheme()),
        Ok(url) => event_core::broker::redact(&url),
        Err(_) => "<unparsable URI>".to_owned(),
    }
}

/// The validated configuration of a broker.
#[derive(Debug)]
pub(crate) struct Config {
    /// The URI handed to lapin: credentials, vhost and lapin's own query parameters.
    pub(crate) uri: SecretUri,
    /// `amqp://host:port/vhost`, without credentials.
    pub(crate) address: String,
    pub(crate) exchange: String,
    pub(crate) exchange_durable: bool,
    pub(crate) durable_queues: bool,
    /// Least prefetch; 0 means "the concurrency".
    pub(crate) prefetch: u16,
    pub(crate) queue_arguments: FieldTable,
    pub(crate) connection_name: Option<String>,
    pub(crate) publish_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) reconnect_min: Duration,
    pub(crate) reconnect_max: Duration,
    /// What a publish writes besides each fact once.
    pub(crate) wire: WireProfile,
    /// Whether publishes other than dead letters are mandatory.
    pub(crate) mandatory: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(uri: &str) -> Result<Config, AmqpConfigError> {
        AmqpBrokerBuilder::new(uri).into_config()
    }

    #[test]
    fn an_ipv6_literal_is_refused_rather_than_connecting_to_localhost() {
        let error = config("amqp://u:p@[fd00::5]:5672/%2f").unwrap_err();
        assert!(error.to_string().contains("IPv6"), "{error}");
        assert!(!error.to_string().contains(":p@"), "{error}");
    }

    #[test]
    fn a_zero_timeout_or_backoff_is_refused() {
        for name in [
            "publish_timeout_ms",
            "connect_timeout_ms",
            "reconnect_min_ms",
        ] {
            let error = config(&format!("amqp://h/%2f?{name}=0")).unwrap_err();
            assert!(error.to_string().contains(name), "{error}");
        }
    }

    #[test]
    fn debug_output_hides_the_password() {
        let builder = AmqpBrokerBuilder::new("amqp://u:secret@h:5672/%2f");
        assert!(!format!("{builder:?}").contains("secret"), "{builder:?}");
        let config = builder.into_config().unwrap();
        assert!(!format!("{config:?}").contains("secret"), "{config:?}");
        // a URI lapin cannot read quotes itself in the reason: redacted there too
        let error = AmqpBrokerBuilder::new("amqp:u:secret@h")
            .into_config()
            .unwrap_err();
        assert!(!error.to_string().contains("secret"), "{error}");
    }

    #[test]
    fn defaults() {
        let c = config("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(c.exchange, "event");
        assert!(c.exchange_durable && c.durable_queues);
        assert_eq!(c.prefetch, DEFAULT_PREFETCH);
        assert_eq!(c.address, "amqp://127.0.0.1:5672/%2f");
        assert_eq!(c.uri.0, "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(c.publish_timeout, Duration::from_secs(30));
        assert_eq!(c.wire, WireProfile::LEAN);
        assert!(c.mandatory);
    }

    #[test]
    fn mandatory_comes_from_the_uri_or_the_builder() {
        let c = config("amqp://h/%2f?mandatory=false").unwrap();
        assert!(!c.mandatory);
        assert_eq!(c.uri.0, "amqp://h/%2f", "not passed to lapin");
        let c = AmqpBrokerBuilder::new("amqp://h/%2f?mandatory=false")
            .mandatory(true)
            .into_config()
            .unwrap();
        assert!(c.mandatory, "the builder wins");
        let e = config("amqp://h/%2f?mandatory=sometimes").unwrap_err();
        assert_eq!(
            e.to_string(),
            "mandatory = \"sometimes\" is not valid: expected true or false"
        );
    }

    #[test]
    fn the_wire_profile_comes_from_the_uri_or_the_builder() {
        for (query, expected) in [
            ("wire=lean", WireProfile::LEAN),
            ("wire=go-micro", WireProfile::GO_MICRO),
            ("wire=cloudevents", WireProfile::CLOUDEVENTS),
            (
                "wire=go-micro,cloudevents",
                WireProfile::GO_MICRO | WireProfile::CLOUDEVENTS,
            ),
            (
                "wire=cloudevents%2Cgo-micro",
                WireProfile::GO_MICRO | WireProfile::CLOUDEVENTS,
            ),
            ("wire=lean,go-micro", WireProfile::GO_MICRO),
        ] {
            let c = config(&format!("amqp://h/%2f?{query}")).unwrap();
            assert_eq!(c.wire, expected, "{query}");
            assert_eq!(c.uri.0, "amqp://h/%2f", "{query}: not passed to lapin");
        }
        let c = AmqpBrokerBuilder::new("amqp://h/%2f?wire=go-micro")
            .wire_profile(WireProfile::CLOUDEVENTS)
            .into_config()
            .unwrap();
        assert_eq!(c.wire, WireProfile::CLOUDEVENTS, "the builder wins");
        for bad in ["micro", "", "go-micro,", "GO-MICRO", "go_micro"] {
            let e = config(&format!("amqp://h/%2f?wire={bad}")).unwrap_err();
            assert_eq!(
                e,
                AmqpConfigError::InvalidValue {
                    name: "wire",
                    value: bad.to_owned(),
                    expected: "lean, go-micro, cloudevents, or a comma-separated combination \
                        (go-micro,cloudevents)",
                },
            );
            assert_eq!(
                e.to_string(),
                format!(
                    "wire = {bad:?} is not valid: expected lean, go-micro, cloudevents, or a \
                     comma-separated combination (go-micro,cloudevents)"
                )
            );
        }
    }

    #[test]
    fn query_parameters_map_onto_the_builder() {
        let c = config(
            "amqps://u:secret@rabbit.example/prod?exchange=micro&prefetch=16&connection_name=orders\
             &x-queue-type=quorum&x-message-ttl=60000&heartbeat=10&publish_timeout_ms=1500\
             &exchange_durable=false",
        )
        .unwrap();
        assert_eq!(c.exchange, "micro");
        assert!(!c.exchange_durable);
        assert_eq!(c.prefetch, 16);
        assert_eq!(c.connection_name.as_deref(), Some("orders"));
        assert_eq!(c.publish_timeout, Duration::from_millis(1500));
        assert_eq!(c.address, "amqps://rabbit.example:5671/prod");
        assert_eq!(c.uri.0, "amqps://u:secret@rabbit.example/prod?heartbeat=10");
        assert_eq!(
            c.queue_arguments.inner().get("x-queue-type"),
            Some(&AMQPValue::LongString("quorum".into()))
        );
        assert_eq!(
            c.queue_arguments.inner().get("x-message-ttl"),
            Some(&AMQPValue::LongLongInt(60_000))
        );
    }

    #[test]
    fn builder_settings_win_over_the_uri() {
        let c = AmqpBrokerBuilder::new("amqp://h/%2f?exchange=micro&prefetch=4")
            .exchange("mine")
            .queue_argument("x-message-ttl", 5)
            .into_config()
            .unwrap();
        assert_eq!(c.exchange, "mine");
        assert_eq!(c.prefetch, 4);
    }

    #[test]
    fn errors_are_clear() {
        let e = config("amqp://u:pw@h/%2f?exchnage=micro").unwrap_err();
        assert!(
            e.to_string().starts_with(
                "unknown query parameter \"exchnage\" in the AMQP URI; known: exchange,"
            ),
            "{e}"
        );
        let e = config("amqp://h/%2f?prefetch=lots").unwrap_err();
        assert_eq!(
            e.to_string(),
            "prefetch = \"lots\" is not valid: expected a whole number from 0 to 65535"
        );
        let e = config("kafka://u:pw@h:9092").unwrap_err();
        assert!(e.to_string().contains("use amqp:// or amqps://"), "{e}");
        assert!(!e.to_string().contains("pw"), "{e}");
        assert!(config("not a uri").is_err());
    }
}
