//! Configuration: [`NatsBrokerBuilder`] and the URL query parameters that map onto it.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::NatsConfigError;

/// The port used when a server has none.
pub const DEFAULT_PORT: u16 = 4222;

/// The prefix of the streams made for one topic each (see [`NatsBrokerBuilder::stream_prefix`]).
pub const DEFAULT_STREAM_PREFIX: &str = "EVENT_";

/// How many times a consumer made new by this backend delivers a message at most, unless
/// [`NatsBrokerBuilder::max_deliver`] says otherwise.
pub const DEFAULT_MAX_DELIVER: i64 = 10;

/// The query parameters this backend reads.
const PARAMETERS: &[&str] = &[
    "mode",
    "servers",
    "name",
    "stream",
    "stream_prefix",
    "create_streams",
    "storage",
    "retention",
    "replicas",
    "max_age_ms",
    "max_bytes",
    "max_messages",
    "duplicate_window_ms",
    "ack_wait_ms",
    "max_deliver",
    "prefetch",
    "group_inactive_threshold_ms",
    "broadcast_inactive_threshold_ms",
    "connect_timeout_ms",
    "publish_timeout_ms",
    "request_timeout_ms",
    "reconnect_min_ms",
    "reconnect_max_ms",
    "tls",
    "tls_ca",
    "tls_cert",
    "tls_key",
    "wire",
];

const KNOWN_PARAMETERS: &str = "mode, servers, name, stream, stream_prefix, create_streams, \
    storage, retention, replicas, max_age_ms, max_bytes, max_messages, duplicate_window_ms, \
    ack_wait_ms, max_deliver, prefetch, group_inactive_threshold_ms, \
    broadcast_inactive_threshold_ms, connect_timeout_ms, publish_timeout_ms, request_timeout_ms, \
    reconnect_min_ms, reconnect_max_ms, tls, tls_ca, tls_cert, tls_key, wire";

/// How the broker uses NATS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// JetStream (the default): topics are subjects kept in streams, queue groups are durable
    /// pull consumers with explicit acknowledgements: at-least-once, persistent, replayable.
    #[default]
    JetStream,
    /// Core NATS (`mode=core`): plain subjects and queue subscriptions, no JetStream. At most
    /// once: nothing is stored, a message nobody subscribes to is gone, a message given back
    /// cannot be redelivered. See the [crate documentation](crate#core-nats-mode).
    Core,
}

/// Where a stream made by this backend keeps its messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Storage {
    /// On disk (JetStream's `file` storage, the default): kept across server restarts.
    #[default]
    File,
    /// In memory: lost when the server restarts.
    Memory,
}

/// When a stream made by this backend drops messages (JetStream's retention policy).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Retention {
    /// Kept until the stream's limits (age, bytes, count) say otherwise (the default): every
    /// queue group and every later subscriber from the earliest gets every message.
    #[default]
    Limits,
    /// Kept while a consumer has not acknowledged it; a message no consumer exists for is not
    /// kept.
    Interest,
    /// Removed once one consumer acknowledged it. JetStream then allows only one consumer per
    /// subject: one queue group, no broadcast subscribers beside it.
    WorkQueue,
}

/// How the broker authenticates: from the URL's user information.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Auth {
    None,
    /// `nats://user:password@host`.
    UserPassword(String, String),
    /// `nats://token@host`.
    Token(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::UserPassword(user, _) => write!(f, "UserPassword({user:?}, ***)"),
            Auth::Token(_) => f.write_str("Token(***)"),
        }
    }
}

/// Configures a [`NatsBroker`](crate::NatsBroker). Created by
/// [`NatsBroker::builder`](crate::NatsBroker::builder); [`build`](Self::build) makes the broker.
///
/// The URL names the servers and credentials: `nats://host:4222`, several servers comma
/// separated (`nats://a:4222,b:4222`, or `servers=b:4222,c:4222`, which also works where the
/// URL must parse as one URL, as in `EVENT_BROKER`), `nats://user:password@host` or
/// `nats://token@host`, and `tls://host:4222` for TLS. Every setting can also be given as a
/// query parameter; a setting made on the builder wins over the same setting in the URL.
///
/// | builder method | query parameter | default |
/// |---|---|---|
/// | [`mode`](Self::mode) | `mode` = `jetstream` (or `js`) \| `core` | `jetstream` |
/// | [`server`](Self::server) | `servers` (comma separated `host:port`) | the URL's |
/// | [`connection_name`](Self::connection_name) | `name` | none |
/// | [`stream`](Self::stream) | `stream` | none: one stream per topic |
/// | [`stream_prefix`](Self::stream_prefix) | `stream_prefix` | `EVENT_` |
/// | [`create_streams`](Self::create_streams) | `create_streams` | `true` |
/// | [`storage`](Self::storage) | `storage` = `file` \| `memory` | `file` |
/// | [`retention`](Self::retention) | `retention` = `limits` \| `interest` \| `workqueue` | `limits` |
/// | [`replicas`](Self::replicas) | `replicas` | 1 |
/// | [`max_age`](Self::max_age) | `max_age_ms` | 0: unlimited |
/// | [`max_bytes`](Self::max_bytes) | `max_bytes` | -1: unlimited |
/// | [`max_messages`](Self::max_messages) | `max_messages` | -1: unlimited |
/// | [`duplicate_window`](Self::duplicate_window) | `duplicate_window_ms` (at least 1) | the server's (2 min) |
/// | [`ack_wait`](Self::ack_wait) | `ack_wait_ms` (at least 100) | 30 s |
/// | [`max_deliver`](Self::max_deliver) | `max_deliver` (-1: unlimited) | 10 |
/// | [`prefetch`](Self::prefetch) | `prefetch` (raised to the concurrency if smaller) | the subscription's concurrency |
/// | [`group_inactive_threshold`](Self::group_inactive_threshold) | `group_inactive_threshold_ms` | none: kept |
/// | [`broadcast_inactive_threshold`](Self::broadcast_inactive_threshold) | `broadcast_inactive_threshold_ms` | 60 s |
/// | [`connect_timeout`](Self::connect_timeout) | `connect_timeout_ms` | 10 s |
/// | [`publish_timeout`](Self::publish_timeout) | `publish_timeout_ms` | 30 s |
/// | [`request_timeout`](Self::request_timeout) | `request_timeout_ms` | 10 s |
/// | [`reconnect_backoff`](Self::reconnect_backoff) | `reconnect_min_ms`, `reconnect_max_ms` | 100 ms … 5 s |
/// | [`tls_root_certificates`](Self::tls_root_certificates) | `tls_ca` (a PEM file; `tls=true` without one) | the platform's roots, TLS only with `tls://` |
/// | [`tls_client_certificate`](Self::tls_client_certificate) | `tls_cert`, `tls_key` (PEM files) | none |
/// | [`go_micro_envelope`](Self::go_micro_envelope) | `wire` = `cloudevents` \| `go-micro` | `cloudevents`: off |
/// | [`tls`](Self::tls) | `tls` = `true` \| `false` | `false`: TLS with `tls://` or a certificate setting only |
///
/// An unknown parameter is an error that lists these.
///
/// ```
/// use std::time::Duration;
/// use event_nats::{NatsBroker, Storage};
///
/// let broker = NatsBroker::builder("nats://app:secret@127.0.0.1:4222,127.0.0.1:4223?prefetch=16")
///     .stream("ORDERS")
///     .storage(Storage::Memory)
///     .ack_wait(Duration::from_secs(10))
///     .connection_name("orders")
///     .build()?;
/// assert_eq!(
///     event_core::Broker::address(&broker),
///     "nats://127.0.0.1:4222,127.0.0.1:4223"
/// );
/// # Ok::<(), event_nats::NatsConfigError>(())
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct NatsBrokerBuilder {
    url: SecretUrl,
    mode: Option<Mode>,
    servers: Vec<String>,
    name: Option<String>,
    stream: Option<String>,
    stream_prefix: Option<String>,
    create_streams: Option<bool>,
    storage: Option<Storage>,
    retention: Option<Retention>,
    replicas: Option<usize>,
    max_age: Option<Duration>,
    max_bytes: Option<i64>,
    max_messages: Option<i64>,
    duplicate_window: Option<Duration>,
    ack_wait: Option<Duration>,
    max_deliver: Option<i64>,
    prefetch: Option<usize>,
    go_micro_envelope: Option<bool>,
    group_inactive_threshold: Option<Duration>,
    broadcast_inactive_threshold: Option<Duration>,
    connect_timeout: Option<Duration>,
    publish_timeout: Option<Duration>,
    request_timeout: Option<Duration>,
    reconnect_min: Option<Duration>,
    reconnect_max: Option<Duration>,
    tls: Option<bool>,
    tls_ca: Option<PathBuf>,
    tls_client: Option<(PathBuf, PathBuf)>,
}

impl NatsBrokerBuilder {
    pub(crate) fn new(url: &str) -> Self {
        NatsBrokerBuilder {
            url: SecretUrl(url.to_owned()),
            mode: None,
            servers: Vec::new(),
            name: None,
            stream: None,
            stream_prefix: None,
            create_streams: None,
            storage: None,
            retention: None,
            replicas: None,
            max_age: None,
            max_bytes: None,
            max_messages: None,
            duplicate_window: None,
            ack_wait: None,
            max_deliver: None,
            prefetch: None,
            go_micro_envelope: None,
            group_inactive_threshold: None,
            broadcast_inactive_threshold: None,
            connect_timeout: None,
            publish_timeout: None,
            request_timeout: None,
            reconnect_min: None,
            reconnect_max: None,
            tls: None,
            tls_ca: None,
            tls_client: None,
        }
    }

    /// JetStream (the default) or core NATS ([`Mode::Core`], at most once).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = Some(mode);
        self
    }

    /// Adds a server (`host:port`) besides those of the URL; the client connects to one of
    /// them and fails over to the others.
    pub fn server(mut self, address: impl Into<String>) -> Self {
        self.servers.push(address.into());
        self
    }

    /// The connection name the server shows (`nats-server` monitoring, `nats server report
    /// connections`).
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// One stream for every topic, named `name`: when a topic is in no stream yet, its subject
    /// is added to this stream (created when missing, with [`create_streams`](Self::create_streams)).
    /// Without it, each topic gets a stream of its own, named by
    /// [`NatsBroker::stream_name_for`](crate::NatsBroker::stream_name_for). Either way, a topic
    /// whose subject is already in a stream (any stream, e.g. one made by `nats stream add` with
    /// the subjects `orders.>`) uses that stream.
    ///
    /// Adding a subject rewrites the stream's subject list, and JetStream (2.9) has no
    /// conditional update: two processes adding subjects to this stream at the same moment
    /// can each write the list the other had not seen, and one subject is gone again. This
    /// backend adds it back when one of its publishes finds no stream for it, but other
    /// publishers to that subject are refused meanwhile. Where many services start at once,
    /// give the stream its subjects up front (a wildcard such as `orders.>`), or leave this
    /// unset: a stream per topic has no such race.
    pub fn stream(mut self, name: impl Into<String>) -> Self {
        self.stream = Some(name.into());
        self
    }

    /// The prefix of the streams made for one topic each (default `EVENT_`): topic
    /// `users.created` is kept in the stream `EVENT_users_created`.
    pub fn stream_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.stream_prefix = Some(prefix.into());
        self
    }

    /// Whether a topic that is in no stream gets one (default `true`): at subscribe, the
    /// topic and its dead-letter topic; at publish, the topic. With `false`, such a subscribe
    /// or publish fails with
    /// [`BrokerError::TopicNotFound`](event_core::broker::BrokerError::TopicNotFound), and the
    /// streams are made by whoever runs the server.
    pub fn create_streams(mut self, create: bool) -> Self {
        self.create_streams = Some(create);
        self
    }

    /// Where the streams this backend makes keep messages (default [`Storage::File`]).
    pub fn storage(mut self, storage: Storage) -> Self {
        self.storage = Some(storage);
        self
    }

    /// The retention policy of the streams this backend makes (default [`Retention::Limits`]).
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = Some(retention);
        self
    }

    /// The replicas of the streams this backend makes (default 1; at most 5, and no more than
    /// the cluster has servers).
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = Some(replicas);
        self
    }

    /// How long the streams this backend makes keep a message (default: no limit).
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    /// The size limit of the streams this backend makes, in bytes (default -1: none); the
    /// oldest messages go first.
    pub fn max_bytes(mut self, bytes: i64) -> Self {
        self.max_bytes = Some(bytes);
        self
    }

    /// The message count limit of the streams this backend makes (default -1: none); the
    /// oldest messages go first.
    pub fn max_messages(mut self, messages: i64) -> Self {
        self.max_messages = Some(messages);
        self
    }

    /// How long the streams this backend makes remember message ids (`Nats-Msg-Id`) to drop
    /// a publish that repeats one (default: the server's, 2 minutes; at least 1 ms, as the
    /// server reads 0 as its default).
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = Some(window);
        self
    }

    /// JetStream's `AckWait` of the consumers this backend makes (default 30 s, at least
    /// 100 ms): how long the server waits for an acknowledgement before it redelivers. A
    /// message a handler holds longer (a slow handler, retries with backoff) is kept in
    /// progress: every half `AckWait` the backend tells the server it is still being worked
    /// on (`+WPI`), so it is never redelivered while this process holds it. After a crash,
    /// what was held comes again `AckWait` later.
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = Some(ack_wait);
        self
    }

    /// JetStream's `MaxDeliver` of the consumers this backend makes (-1 for unlimited;
    /// default: [`DEFAULT_MAX_DELIVER`] for a consumer made new, and a queue group's consumer
    /// that exists keeps its own, so that an upgrade changes no limit).
    ///
    /// Failures are retried in place by the delivery loop (the subscription's
    /// [`RetryPolicy`](event_core::broker::RetryPolicy)) and then dead-lettered and
    /// acknowledged, so the server redelivers a message only when the member holding it went
    /// away (crashed, lost its connection) or gave it back at shutdown, or when the client
    /// could not read it (async-nats drops the connection on a header block it refuses, see
    /// [`UNREADABLE_HEADERS`](crate::UNREADABLE_HEADERS)). The limit therefore counts such
    /// deliveries, not failures.
    ///
    /// A message that reaches it is delivered no more: the server says so in an advisory, a
    /// member of the subscription reads the message from the stream, and the delivery loop
    /// dead-letters it to `<topic>.dlq` without running the handler (`x-event-error-kind:
    /// undeliverable`, and `x-event-error` says why), then acknowledges it. Unlimited, such a
    /// message comes back every [`ack_wait`](Self::ack_wait), forever.
    ///
    /// Messages pulled in the same batch right behind one the client cannot read are lost
    /// with the connection too, and may reach the limit with it: they are dead-lettered the
    /// same way (the reason says so), to be replayed from `<topic>.dlq`.
    ///
    /// The advisory is a core NATS message, sent once: one sent while no member is connected
    /// or listening (the subscriptions stopping, the user not permitted to subscribe to
    /// `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>`, or to read from the stream with
    /// `$JS.API.STREAM.MSG.GET.<stream>`) is lost, and its message stays in the stream,
    /// delivered no more; each such loss that a member sees is logged as an error with the
    /// stream and sequence.
    pub fn max_deliver(mut self, max_deliver: i64) -> Self {
        self.max_deliver = Some(max_deliver);
        self
    }

    /// Speaks go-micro's NATS broker (default off; the URL form is `wire=go-micro`).
    ///
    /// go-micro's NATS broker does not use NATS headers: it publishes each message as a JSON
    /// envelope, `{"Header":{"Content-Type":…,"Micro-ID":…},"Body":"<base64>"}`, and reads
    /// only that. When on, publishing writes that envelope as the payload (the headers inside
    /// it in go-micro's spelling; only `Nats-Msg-Id` stays a NATS header, for JetStream's
    /// deduplication), so go-micro subscribers read our events; and consuming unwraps every
    /// message that is such an envelope, so go-micro's messages arrive with their headers and
    /// payload as typed events. Other messages are consumed as they are. The mapping is in
    /// `event_core::backend::go_micro`. go-micro publishes on core NATS; a JetStream stream
    /// that holds the subject keeps its messages all the same, and JetStream publishes reach
    /// core NATS subscribers, so either [`Mode`] works.
    pub fn go_micro_envelope(mut self, on: bool) -> Self {
        self.go_micro_envelope = Some(on);
        self
    }

    /// How many messages a subscription fetches ahead (default, and least: its concurrency,
    /// so a member of a queue group holds no more than it works on; a smaller value is
    /// raised to the concurrency). Messages fetched ahead are kept in progress like those in
    /// a handler. More saves round trips; in a queue group, a member holds up to this many
    /// messages that the other members cannot take meanwhile.
    pub fn prefetch(mut self, prefetch: usize) -> Self {
        self.prefetch = Some(prefetch);
        self
    }

    /// How long the server keeps a queue group's durable consumer once no member pulls from it
    /// (default: forever, so a group that is down keeps its place).
    pub fn group_inactive_threshold(mut self, threshold: Duration) -> Self {
        self.group_inactive_threshold = Some(threshold);
        self
    }

    /// How long the server keeps a broadcast subscriber's consumer once it stops pulling
    /// (default 60 s). A broadcast subscriber whose connection comes back later resumes from
    /// the message after the last one it received, on a new consumer.
    pub fn broadcast_inactive_threshold(mut self, threshold: Duration) -> Self {
        self.broadcast_inactive_threshold = Some(threshold);
        self
    }

    /// How long [`connect`](event_core::Broker::connect) (or the first publish or subscribe)
    /// waits for a server (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// How long a publish may take, retries on a lost connection included, before it fails
    /// and gives the message back (default 30 s).
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = Some(timeout);
        self
    }

    /// How long one JetStream API request (stream and consumer management) or one publish
    /// acknowledgement is awaited (default 10 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// The delay between reconnection attempts: starts at `min`, doubles up to `max` (default
    /// 100 ms … 5 s).
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = Some(min);
        self.reconnect_max = Some(max);
        self
    }

    /// Requires TLS (`true`), verifying the server against the platform's roots and those of
    /// [`tls_root_certificates`](Self::tls_root_certificates). `false` overrides the URL's
    /// `tls=true`, but a `tls://` URL or a certificate setting requires TLS all the same.
    /// Without either call or parameter, TLS is used only for `tls://` or a certificate.
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = Some(on || self.tls_ca.is_some() || self.tls_client.is_some());
        self
    }

    /// Requires TLS and trusts the certificates of this PEM file (besides the platform's).
    pub fn tls_root_certificates(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls = Some(true);
        self.tls_ca = Some(path.into());
        self
    }

    /// Requires TLS and authenticates with this client certificate and key (PEM files).
    pub fn tls_client_certificate(
        mut self,
        certificate: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.tls = Some(true);
        self.tls_client = Some((certificate.into(), key.into()));
        self
    }

    pub(crate) fn into_config(mut self) -> Result<Config, NatsConfigError> {
        let parsed = ParsedUrl::parse(&self.url.0)?;
        for (name, value) in &parsed.query {
            if !PARAMETERS.contains(&name.as_str()) {
                return Err(NatsConfigError::UnknownParameter {
                    name: name.clone(),
                    known: KNOWN_PARAMETERS,
                });
            }
            self.apply_parameter(name, value)?;
        }
        if let Some((cert, key)) = &self.tls_client {
            for (name, path) in [("tls_cert", cert), ("tls_key", key)] {
                if path.as_os_str().is_empty() {
                    return Err(invalid(
                        name,
                        "",
                        "a PEM file: tls_cert and tls_key are given together",
                    ));
                }
            }
        }
        let tls = parsed.tls || self.tls.unwrap_or(false);
        let mut hosts = parsed.hosts;
        for server in std::mem::take(&mut self.servers) {
            for address in server.split(',').filter(|s| !s.is_empty()) {
                hosts.push(parse_host(&redact(&self.url.0), address)?);
            }
        }
        let scheme = if parsed.tls { "tls" } else { "nats" };
        let address = format!(
            "{scheme}://{}",
            hosts
                .iter()
                .map(|(host, port)| format!("{host}:{port}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let servers: Vec<String> = hosts
            .iter()
            .map(|(host, port)| format!("{}://{host}:{port}", if tls { "tls" } else { "nats" }))
            .collect();
        // checked here, not dropped at connect: a server async-nats cannot read is an error
        for server in &servers {
            if server.parse::<async_nats::ServerAddr>().is_err() {
                return Err(invalid(
                    "servers",
                    server,
                    "host:port addresses (a name, an IPv4 address or a bracketed IPv6 one)",
                ));
            }
        }

        let stream_prefix = self
            .stream_prefix
            .unwrap_or_else(|| DEFAULT_STREAM_PREFIX.to_owned());
        check_name("stream_prefix", &stream_prefix, true)?;
        if let Some(stream) = &self.stream {
            check_name("stream", stream, false)?;
        }
        let replicas = self.replicas.unwrap_or(1);
        if !(1..=5).contains(&replicas) {
            return Err(NatsConfigError::InvalidValue {
                name: "replicas",
                value: replicas.to_string(),
                expected: "1 to 5",
            });
        }
        let ack_wait = self.ack_wait.unwrap_or(Duration::from_secs(30));
        if ack_wait < Duration::from_millis(100) {
            // named as in the URL, in its unit (the builder's `ack_wait` is the same setting)
            return Err(NatsConfigError::InvalidValue {
                name: "ack_wait_ms",
                value: ack_wait.as_millis().to_string(),
                expected: "at least 100 milliseconds",
            });
        }
        if self
            .duplicate_window
            .is_some_and(|window| window < Duration::from_millis(1))
        {
            // the server reads 0 as its own default (2 minutes), not as no window
            return Err(NatsConfigError::InvalidValue {
                name: "duplicate_window_ms",
                value: self
                    .duplicate_window
                    .unwrap_or_default()
                    .as_millis()
                    .to_string(),
                expected: "at least 1 millisecond (leave it out for the server's 2 minutes)",
            });
        }
        let max_deliver = self.max_deliver;
        if let Some(max_deliver) = max_deliver
            && (max_deliver == 0 || max_deliver < -1)
        {
            return Err(NatsConfigError::InvalidValue {
                name: "max_deliver",
                value: max_deliver.to_string(),
                expected: "a positive number, or -1 for unlimited",
            });
        }
        let reconnect_min = self.reconnect_min.unwrap_or(Duration::from_millis(100));
        let reconnect_max = self
            .reconnect_max
            .unwrap_or(Duration::from_secs(5))
            .max(reconnect_min);
        Ok(Config {
            servers,
            address,
            auth: parsed.auth,
            tls,
            tls_ca: self.tls_ca,
            tls_client: self.tls_client,
            name: self.name,
            mode: self.mode.unwrap_or_default(),
            stream: self.stream,
            stream_prefix,
            create_streams: self.create_streams.unwrap_or(true),
            storage: self.storage.unwrap_or_default(),
            retention: self.retention.unwrap_or_default(),
            replicas,
            max_age: self.max_age.unwrap_or_default(),
            max_bytes: self.max_bytes.unwrap_or(-1),
            max_messages: self.max_messages.unwrap_or(-1),
            duplicate_window: self.duplicate_window,
            ack_wait,
            max_deliver,
            prefetch: self.prefetch.unwrap_or(0),
            go_micro_envelope: self.go_micro_envelope.unwrap_or(false),
            group_inactive_threshold: self.group_inactive_threshold,
            broadcast_inactive_threshold: self
                .broadcast_inactive_threshold
                .unwrap_or(Duration::from_secs(60)),
            connect_timeout: self.connect_timeout.unwrap_or(Duration::from_secs(10)),
            publish_timeout: self.publish_timeout.unwrap_or(Duration::from_secs(30)),
            request_timeout: self.request_timeout.unwrap_or(Duration::from_secs(10)),
            reconnect_min,
            reconnect_max,
        })
    }

    /// Applies one query parameter unless the builder already set it.
    fn apply_parameter(&mut self, name: &str, value: &str) -> Result<(), NatsConfigError> {
        match name {
            "mode" => {
                let mode = match value {
                    "jetstream" | "js" => Mode::JetStream,
                    "core" => Mode::Core,
                    _ => return Err(invalid("mode", value, "jetstream (or js) or core")),
                };
                self.mode.get_or_insert(mode);
            }
            // added to the builder's: several servers are several servers
            "servers" => self.servers.push(value.to_owned()),
            "name" => {
                self.name.get_or_insert_with(|| value.to_owned());
            }
            "stream" => {
                self.stream.get_or_insert_with(|| value.to_owned());
            }
            "stream_prefix" => {
                self.stream_prefix.get_or_insert_with(|| value.to_owned());
            }
            "create_streams" => {
                let v = boolean("create_streams", value)?;
                self.create_streams.get_or_insert(v);
            }
            "storage" => {
                let v = match value {
                    "file" => Storage::File,
                    "memory" => Storage::Memory,
                    _ => return Err(invalid("storage", value, "file or memory")),
                };
                self.storage.get_or_insert(v);
            }
            "retention" => {
                let v = match value {
                    "limits" => Retention::Limits,
                    "interest" => Retention::Interest,
                    "workqueue" => Retention::WorkQueue,
                    _ => {
                        return Err(invalid("retention", value, "limits, interest or workqueue"));
                    }
                };
                self.retention.get_or_insert(v);
            }
            "replicas" => {
                let v = number::<usize>("replicas", value, "a whole number from 1 to 5")?;
                self.replicas.get_or_insert(v);
            }
            "max_age_ms" => {
                let v = millis("max_age_ms", value)?;
                self.max_age.get_or_insert(v);
            }
            "max_bytes" => {
                let v = number::<i64>("max_bytes", value, "a number of bytes, or -1")?;
                self.max_bytes.get_or_insert(v);
            }
            "max_messages" => {
                let v = number::<i64>("max_messages", value, "a number of messages, or -1")?;
                self.max_messages.get_or_insert(v);
            }
            "duplicate_window_ms" => {
                let v = millis("duplicate_window_ms", value)?;
                self.duplicate_window.get_or_insert(v);
            }
            "ack_wait_ms" => {
                // its least, 100 ms, is checked with the builder's
                let v = millis("ack_wait_ms", value)?;
                self.ack_wait.get_or_insert(v);
            }
            "max_deliver" => {
                let v = number::<i64>(
                    "max_deliver",
                    value,
                    "a positive number, or -1 for unlimited",
                )?;
                self.max_deliver.get_or_insert(v);
            }
            "prefetch" => {
                let v = number::<usize>("prefetch", value, "a whole number of messages")?;
                self.prefetch.get_or_insert(v);
            }
            "wire" => {
                let v = match value {
                    "cloudevents" => false,
                    "go-micro" => true,
                    _ => {
                        return Err(invalid(
                            "wire",
                            value,
                            "cloudevents (our headers in NATS headers, the default) or go-micro \
                             (go-micro's JSON envelope as the payload)",
                        ));
                    }
                };
                self.go_micro_envelope.get_or_insert(v);
            }
            "group_inactive_threshold_ms" => {
                let v = positive_millis("group_inactive_threshold_ms", value)?;
                self.group_inactive_threshold.get_or_insert(v);
            }
            "broadcast_inactive_threshold_ms" => {
                let v = positive_millis("broadcast_inactive_threshold_ms", value)?;
                self.broadcast_inactive_threshold.get_or_insert(v);
            }
            "connect_timeout_ms" => {
                let v = positive_millis("connect_timeout_ms", value)?;
                self.connect_timeout.get_or_insert(v);
            }
            "publish_timeout_ms" => {
                let v = positive_millis("publish_timeout_ms", value)?;
                self.publish_timeout.get_or_insert(v);
            }
            "request_timeout_ms" => {
                let v = positive_millis("request_timeout_ms", value)?;
                self.request_timeout.get_or_insert(v);
            }
            "reconnect_min_ms" => {
                let v = positive_millis("reconnect_min_ms", value)?;
                self.reconnect_min.get_or_insert(v);
            }
            "reconnect_max_ms" => {
                let v = positive_millis("reconnect_max_ms", value)?;
                self.reconnect_max.get_or_insert(v);
            }
            "tls" => {
                let v = boolean("tls", value)?;
                self.tls.get_or_insert(v);
            }
            "tls_ca" => {
                self.tls = Some(true);
                self.tls_ca.get_or_insert_with(|| PathBuf::from(value));
            }
            "tls_cert" | "tls_key" => {
                self.tls = Some(true);
                let (cert, key) = self
                    .tls_client
                    .get_or_insert_with(|| (PathBuf::new(), PathBuf::new()));
                let slot = if name == "tls_cert" { cert } else { key };
                if slot.as_os_str().is_empty() {
                    *slot = PathBuf::from(value);
                }
            }
            _ => unreachable!("only PARAMETERS are applied"),
        }
        Ok(())
    }
}

fn invalid(name: &'static str, value: &str, expected: &'static str) -> NatsConfigError {
    NatsConfigError::InvalidValue {
        name,
        value: value.to_owned(),
        expected,
    }
}

fn boolean(name: &'static str, value: &str) -> Result<bool, NatsConfigError> {
    match value {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(invalid(name, value, "true or false")),
    }
}

fn number<T: std::str::FromStr>(
    name: &'static str,
    value: &str,
    expected: &'static str,
) -> Result<T, NatsConfigError> {
    value.parse().map_err(|_| invalid(name, value, expected))
}

fn millis(name: &'static str, value: &str) -> Result<Duration, NatsConfigError> {
    number::<u64>(name, value, "a whole number of milliseconds").map(Duration::from_millis)
}

/// A timeout, a backoff or a threshold: 0 would fail every call, spin, or mean the server's
/// own default, so it is refused.
fn positive_millis(name: &'static str, value: &str) -> Result<Duration, NatsConfigError> {
    match number::<u64>(name, value, "a whole number of milliseconds, at least 1")? {
        0 => Err(invalid(
            name,
            value,
            "a whole number of milliseconds, at least 1",
        )),
        ms => Ok(Duration::from_millis(ms)),
    }
}

/// Checks a stream name (or prefix) against what JetStream accepts in names.
fn check_name(name: &'static str, value: &str, prefix: bool) -> Result<(), NatsConfigError> {
    let bad = (!prefix && value.is_empty())
        || value.len() > 64
        || value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || ".*>/\\".contains(c));
    if bad {
        return Err(invalid(
            name,
            value,
            "at most 64 characters without whitespace, '.', '*', '>', '/' or '\\'",
        ));
    }
    Ok(())
}

/// The parts of a NATS URL: scheme, credentials, servers, query.
struct ParsedUrl {
    tls: bool,
    auth: Auth,
    hosts: Vec<(String, u16)>,
    query: Vec<(String, String)>,
}

impl ParsedUrl {
    fn parse(url: &str) -> Result<ParsedUrl, NatsConfigError> {
        let fail = |reason: String| NatsConfigError::InvalidUrl {
            url: redact(url),
            reason,
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| fail("expected nats://host:port or tls://host:port".to_owned()))?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "nats" => false,
            "tls" => true,
            other => {
                return Err(fail(format!(
                    "the scheme is {other:?}; use nats:// or tls://"
                )));
            }
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let auth = match userinfo {
            None | Some("") => Auth::None,
            Some(userinfo) => match userinfo.split_once(':') {
                Some((user, password)) => Auth::UserPassword(
                    crate::wire::percent_decode_str(user),
                    crate::wire::percent_decode_str(password),
                ),
                None => Auth::Token(crate::wire::percent_decode_str(userinfo)),
            },
        };
        let redacted = redact(url);
        let mut parsed_hosts = Vec::new();
        for host in hosts.split(',').filter(|h| !h.is_empty()) {
            parsed_hosts.push(parse_host(&redacted, host)?);
        }
        if parsed_hosts.is_empty() {
            return Err(fail("no server: expected nats://host:port".to_owned()));
        }
        let (path, query) = match tail.split_once('?') {
            Some((path, query)) => (path, query),
            None => (tail, ""),
        };
        let query = query.split('#').next().unwrap_or_default();
        if !(path.is_empty() || path == "/") || tail.starts_with('#') {
            return Err(fail(format!(
                "a NATS URL has no path ({path:?}); settings go in query parameters"
            )));
        }
        let query = url::form_urlencoded::parse(query.as_bytes())
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect();
        Ok(ParsedUrl {
            tls,
            auth,
            hosts: parsed_hosts,
            query,
        })
    }
}

/// `host[:port]` (IPv6 in brackets).
fn parse_host(url: &str, address: &str) -> Result<(String, u16), NatsConfigError> {
    let fail = |reason: String| NatsConfigError::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    let address = address
        .strip_prefix("nats://")
        .or_else(|| address.strip_prefix("tls://"))
        .unwrap_or(address);
    let (host, port) = if let Some(v6) = address.strip_prefix('[') {
        let (host, rest) = v6
            .split_once(']')
            .ok_or_else(|| fail(format!("unclosed '[' in server {address:?}")))?;
        (format!("[{host}]"), rest.strip_prefix(':'))
    } else {
        match address.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (address.to_owned(), None),
        }
    };
    if host.is_empty() || host.contains(['/', '@', ' ']) {
        return Err(fail(format!("bad server {address:?}: expected host:port")));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(port) => port
            .parse::<u16>()
            .map_err(|_| fail(format!("bad port in server {address:?}")))?,
    };
    Ok((host, port))
}

/// The URL without its password or token.
/// A URL that may hold a password or token: `Debug` shows it redacted.
#[derive(Clone)]
struct SecretUrl(String);

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<unparsable URL>".to_owned();
    };
    // the credentials end at the last `@` before the query: a password with an unencoded
    // `/` (a base64 token, say) is hidden whole, not taken for the start of a path
    let query = rest.find(['?', '#']).unwrap_or(rest.len());
    let end = match rest[..query].rfind('@') {
        Some(at) => at + rest[at..].find(['/', '?', '#']).unwrap_or(rest.len() - at),
        None => rest.find(['/', '?', '#']).unwrap_or(rest.len()),
    };
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let userinfo = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None => "***".to_owned(),
            };
            format!("{scheme}://{userinfo}@{hosts}{tail}")
        }
        None => url.to_owned(),
    }
}

/// The validated configuration of a broker.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// `nats://host:port` (or `tls://`) per server, for async-nats.
    pub(crate) servers: Vec<String>,
    /// The servers, comma separated, without credentials: the broker's address.
    pub(crate) address: String,
    pub(crate) auth: Auth,
    pub(crate) tls: bool,
    pub(crate) tls_ca: Option<PathBuf>,
    pub(crate) tls_client: Option<(PathBuf, PathBuf)>,
    pub(crate) name: Option<String>,
    pub(crate) mode: Mode,
    pub(crate) stream: Option<String>,
    pub(crate) stream_prefix: String,
    pub(crate) create_streams: bool,
    pub(crate) storage: Storage,
    pub(crate) retention: Retention,
    pub(crate) replicas: usize,
    pub(crate) max_age: Duration,
    pub(crate) max_bytes: i64,
    pub(crate) max_messages: i64,
    pub(crate) duplicate_window: Option<Duration>,
    pub(crate) ack_wait: Duration,
    /// -1: unlimited; `None`: [`DEFAULT_MAX_DELIVER`] for a consumer made new, an existing
    /// group consumer's own.
    pub(crate) max_deliver: Option<i64>,
    /// 0: the subscription's concurrency.
    pub(crate) prefetch: usize,
    /// Publish and read go-micro's JSON envelope.
    pub(crate) go_micro_envelope: bool,
    pub(crate) group_inactive_threshold: Option<Duration>,
    pub(crate) broadcast_inactive_threshold: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) publish_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) reconnect_min: Duration,
    pub(crate) reconnect_max: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> Result<Config, NatsConfigError> {
        NatsBrokerBuilder::new(url).into_config()
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let error = config("nats://h?tls_cert=/etc/c.pem").unwrap_err();
        assert!(error.to_string().contains("tls_key"), "{error}");
        let error = config("nats://h?tls_key=/etc/k.pem").unwrap_err();
        assert!(error.to_string().contains("tls_cert"), "{error}");
        assert!(config("nats://h?tls_cert=/etc/c.pem&tls_key=/etc/k.pem").is_ok());
    }

    #[test]
    fn a_zero_timeout_or_backoff_is_refused() {
        for name in [
            "publish_timeout_ms",
            "request_timeout_ms",
            "reconnect_min_ms",
            "ack_wait_ms",
        ] {
            let error = config(&format!("nats://h?{name}=0")).unwrap_err();
            assert!(error.to_string().contains(name), "{error}");
        }
        // the server would read 0 as its default window of 2 minutes
        let error = config("nats://h?duplicate_window_ms=0").unwrap_err();
        assert!(
            error.to_string().contains("duplicate_window_ms = \"0\""),
            "{error}"
        );
        let error = NatsBrokerBuilder::new("nats://h")
            .duplicate_window(Duration::ZERO)
            .into_config()
            .unwrap_err();
        assert!(error.to_string().contains("duplicate_window_ms"), "{error}");
        // named as the URL names it, in its unit, whichever way it was set
        let error = config("nats://h?ack_wait_ms=50").unwrap_err();
        assert_eq!(
            error.to_string(),
            "ack_wait_ms = \"50\" is not valid: expected at least 100 milliseconds"
        );
        let error = NatsBrokerBuilder::new("nats://h")
            .ack_wait(Duration::from_millis(50))
            .into_config()
            .unwrap_err();
        assert!(
            error.to_string().starts_with("ack_wait_ms = \"50\""),
            "{error}"
        );
        // 0 keeps its meaning where it has one: no age limit
        assert!(config("nats://h?max_age_ms=0").is_ok());
    }

    #[test]
    fn the_wire_parameter_chooses_go_micro_s_envelope() {
        assert!(!config("nats://h").unwrap().go_micro_envelope);
        assert!(
            !config("nats://h?wire=cloudevents")
                .unwrap()
                .go_micro_envelope
        );
        assert!(config("nats://h?wire=go-micro").unwrap().go_micro_envelope);
        let builder = NatsBrokerBuilder::new("nats://h?wire=go-micro").go_micro_envelope(false);
        assert!(
            !builder.into_config().unwrap().go_micro_envelope,
            "the builder wins"
        );
        let err = config("nats://h?wire=micro").unwrap_err().to_string();
        assert!(err.contains("cloudevents (our headers"), "{err}");
    }

    #[test]
    fn defaults() {
        let c = config("nats://127.0.0.1:4222").unwrap();
        assert_eq!(c.address, "nats://127.0.0.1:4222");
        assert_eq!(c.servers, ["nats://127.0.0.1:4222"]);
        assert_eq!(c.mode, Mode::JetStream);
        assert_eq!(c.auth, Auth::None);
        assert!(c.create_streams && !c.tls);
        assert_eq!(c.stream, None);
        assert_eq!(c.stream_prefix, "EVENT_");
        assert_eq!(c.ack_wait, Duration::from_secs(30));
        assert_eq!(c.max_deliver, None);
        assert_eq!(c.prefetch, 0);
        assert_eq!(c.storage, Storage::File);
        assert_eq!(c.retention, Retention::Limits);
        let c = config("nats://localhost").unwrap();
        assert_eq!(c.servers, ["nats://localhost:4222"]);
    }

    #[test]
    fn servers_credentials_and_tls() {
        let c = config("nats://app:p%40ss@a:4222,b:4223?servers=c:4224,[::1]:4225").unwrap();
        assert_eq!(c.address, "nats://a:4222,b:4223,c:4224,[::1]:4225");
        assert_eq!(c.servers.len(), 4);
        assert_eq!(c.auth, Auth::UserPassword("app".into(), "p@ss".into()));
        let c = config("nats://s3cr3t@a").unwrap();
        assert_eq!(c.auth, Auth::Token("s3cr3t".into()));
        let c = config("tls://a:4443").unwrap();
        assert!(c.tls);
        assert_eq!(c.servers, ["tls://a:4443"]);
        assert_eq!(c.address, "tls://a:4443");
        let c = config("nats://a?tls_ca=/etc/ca.pem").unwrap();
        assert!(c.tls);
        assert_eq!(c.servers, ["tls://a:4222"]);
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }

    #[test]
    fn query_parameters_map_onto_the_builder() {
        let c = config(
            "nats://h?mode=core&stream=ORDERS&create_streams=false&storage=memory\
             &retention=workqueue&replicas=3&max_age_ms=60000&ack_wait_ms=2000&max_deliver=10\
             &prefetch=64&name=orders&publish_timeout_ms=1500&duplicate_window_ms=1000",
        )
        .unwrap();
        assert_eq!(c.mode, Mode::Core);
        assert_eq!(c.stream.as_deref(), Some("ORDERS"));
        assert!(!c.create_streams);
        assert_eq!(c.storage, Storage::Memory);
        assert_eq!(c.retention, Retention::WorkQueue);
        assert_eq!(c.replicas, 3);
        assert_eq!(c.max_age, Duration::from_secs(60));
        assert_eq!(c.ack_wait, Duration::from_secs(2));
        assert_eq!(c.max_deliver, Some(10));
        assert_eq!(c.prefetch, 64);
        assert_eq!(c.name.as_deref(), Some("orders"));
        assert_eq!(c.publish_timeout, Duration::from_millis(1500));
        assert_eq!(c.duplicate_window, Some(Duration::from_secs(1)));
    }

    #[test]
    fn builder_settings_win_over_the_url() {
        let c = NatsBrokerBuilder::new("nats://h?stream=A&prefetch=4")
            .stream("B")
            .into_config()
            .unwrap();
        assert_eq!(c.stream.as_deref(), Some("B"));
        assert_eq!(c.prefetch, 4);
    }

    #[test]
    fn errors_are_clear() {
        let e = config("nats://u:pw@h?strem=A").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("unknown query parameter \"strem\" in the NATS URL; known: mode,"),
            "{e}"
        );
        for name in PARAMETERS {
            assert!(KNOWN_PARAMETERS.contains(name), "{name} is not listed");
        }
        let e = config("nats://h?storage=disk").unwrap_err();
        assert_eq!(
            e.to_string(),
            "storage = \"disk\" is not valid: expected file or memory"
        );
        let e = config("nats://h?stream=a.b").unwrap_err();
        assert!(e.to_string().contains("without whitespace, '.'"), "{e}");
        let e = config("nats://h?max_deliver=0").unwrap_err();
        assert!(e.to_string().contains("-1 for unlimited"), "{e}");
        let e = config("amqp://u:pw@h:5672").unwrap_err();
        assert!(e.to_string().contains("use nats:// or tls://"), "{e}");
        assert!(!e.to_string().contains("pw"), "{e}");
        let e = config("nats://h:port").unwrap_err();
        assert!(e.to_string().contains("bad port"), "{e}");
        let e = config("nats://h/path").unwrap_err();
        assert!(e.to_string().contains("no path"), "{e}");
        assert!(config("not a url").is_err());
    }

    #[test]
    fn redaction() {
        let builder = NatsBrokerBuilder::new("nats://u:secret@h:1");
        assert!(!format!("{builder:?}").contains("secret"), "{builder:?}");
        assert_eq!(redact("nats://u:pw@h:1?x=y"), "nats://u:***@h:1?x=y");
        assert_eq!(redact("nats://token@h"), "nats://***@h");
        assert_eq!(redact("nats://h"), "nats://h");
        assert_eq!(redact("nats://app:pa/ss@h:1/x"), "nats://app:***@h:1/x");
        assert_eq!(redact("nats://ab/c+d==@h?x=a@b"), "nats://***@h?x=a@b");
    }
}
