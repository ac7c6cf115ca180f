//! Message headers: an ordered multimap whose names are read case-insensitively.
//!
//! Kafka record headers and AMQP header tables are both ordered lists of name/value pairs in
//! which one name may repeat. [`Headers`] keeps that shape: it never reorders or merges entries,
//! and every lookup ignores ASCII case, so `Traceparent` written by go-micro is found by
//! `headers.get("traceparent")`.
//!
//! The names this crate writes itself are listed in [`names`]; see the crate documentation for
//! the full wire scheme.

use std::fmt;
use std::str::Utf8Error;
use std::sync::Arc;

use bytes::Bytes;

mod pool;

/// Header names written and read by the framework (DESIGN.md §3).
///
/// Kafka records carry them as written here (CloudEvents binary mode). Backends that need other
/// spellings (AMQP's `cloudEvents_` prefix, go-micro's `Micro-ID`) map them at the edge.
pub mod names {
    /// Media type of the payload, `application/protobuf` by default.
    pub const CONTENT_TYPE: &str = "content-type";
    /// CloudEvents spec version, always `1.0`.
    pub const CE_SPECVERSION: &str = "ce_specversion";
    /// Message id: a UUID v7 string.
    pub const CE_ID: &str = "ce_id";
    /// Producer identity: the name of the service that published the message.
    pub const CE_SOURCE: &str = "ce_source";
    /// Message type: the protobuf full name of the payload (`prost::Name::full_name()`).
    pub const CE_TYPE: &str = "ce_type";
    /// Publication time, RFC 3339 in UTC with millisecond precision.
    pub const CE_TIME: &str = "ce_time";
    /// W3C trace context parent.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C trace context vendor state.
    pub const TRACESTATE: &str = "tracestate";
    /// W3C baggage.
    pub const BAGGAGE: &str = "baggage";
    /// Id shared by every message of one causal chain (the id of its first message).
    pub const CORRELATION_ID: &str = "correlation-id";
    /// Id of the message whose handler published this one.
    pub const CAUSATION_ID: &str = "causation-id";
    /// go-micro's message id header (`Micro-Id` before v4; read case-insensitively).
    pub const MICRO_ID: &str = "Micro-ID";
    /// go-micro's topic header.
    pub const MICRO_TOPIC: &str = "Micro-Topic";
    /// Confluent Schema Registry header carrying the value schema GUID.
    pub const CONFLUENT_VALUE_SCHEMA_ID: &str = "__value_schema_id";

    /// Dead-letter header: the error that sent the message to the dead-letter topic.
    pub const X_EVENT_ERROR: &str = "x-event-error";
    /// Dead-letter header: the kind of that error (`handler-error`, `decode-error`, ...).
    pub const X_EVENT_ERROR_KIND: &str = "x-event-error-kind";
    /// Dead-letter header: the topic the message was consumed from.
    pub const X_EVENT_ORIGINAL_TOPIC: &str = "x-event-original-topic";
    /// Dead-letter header: the broker position the message was consumed at.
    pub const X_EVENT_ORIGINAL_POSITION: &str = "x-event-original-position";
    /// Dead-letter header: the handler that gave up on the message.
    pub const X_EVENT_HANDLER: &str = "x-event-handler";
    /// Dead-letter header: how many times the handler ran.
    pub const X_EVENT_ATTEMPTS: &str = "x-event-attempts";
    /// Dead-letter header: the payload classification of a decode failure.
    pub const X_EVENT_PAYLOAD_KIND: &str = "x-event-payload-kind";
}

/// The names this crate writes, as [`HeaderName`]s built at compile time (a `from_static`
/// call outside a constant checks its name at run time, for every message).
pub(crate) mod known {
    use super::{HeaderName, names};

    pub(crate) const CONTENT_TYPE: HeaderName = HeaderName::from_static(names::CONTENT_TYPE);
    pub(crate) const CE_SPECVERSION: HeaderName = HeaderName::from_static(names::CE_SPECVERSION);
    pub(crate) const CE_ID: HeaderName = HeaderName::from_static(names::CE_ID);
    pub(crate) const CE_SOURCE: HeaderName = HeaderName::from_static(names::CE_SOURCE);
    pub(crate) const CE_TYPE: HeaderName = HeaderName::from_static(names::CE_TYPE);
    pub(crate) const CE_TIME: HeaderName = HeaderName::from_static(names::CE_TIME);
    pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static(names::TRACEPARENT);
    pub(crate) const TRACESTATE: HeaderName = HeaderName::from_static(names::TRACESTATE);
    pub(crate) const BAGGAGE: HeaderName = HeaderName::from_static(names::BAGGAGE);
    pub(crate) const CORRELATION_ID: HeaderName = HeaderName::from_static(names::CORRELATION_ID);
    pub(crate) const CAUSATION_ID: HeaderName = HeaderName::from_static(names::CAUSATION_ID);
}

/// Whether `name` is reserved for the framework or a wire protocol it speaks.
///
/// Reserved names are written by the framework itself; [`Metadata`](crate::Metadata) rejects
/// them so that user metadata can never silently overwrite a message id or a trace context.
/// They belong to the framework, to CloudEvents, to W3C trace context, to go-micro, to
/// RabbitMQ (`x-death`, ...), to the Confluent serializers and to Spring (DESIGN.md §3):
///
/// - the names `content-type`, `traceparent`, `tracestate`, `baggage`, `correlation-id`,
///   `causation-id`;
/// - every name starting with `ce_`, `cloudevents`, `micro-`, `x-`, `__`, `kafka_` or
///   `spring_`.
///
/// Case is ignored.
pub fn is_reserved(name: &str) -> bool {
    !matches!(Role::of(name), Role::Metadata)
}

/// What a header name means to the framework, worked out once when the [`HeaderName`] is
/// made (at compile time for the names the framework writes), so that reading the context,
/// type and id of a delivery compares no strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// Not reserved: user metadata.
    Metadata,
    /// Reserved, with no role of its own below.
    Reserved,
    ContentType,
    CorrelationId,
    Traceparent,
    Tracestate,
    Baggage,
    /// A message id; the number ranks the aliases (`ce_id` first).
    Id(u8),
    /// A message type; the number ranks the aliases (`ce_type` first).
    Type(u8),
}

/// ASCII case-insensitive equality, usable in constants.
const fn eq_ignore_case(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if !a[i].eq_ignore_ascii_case(&b[i]) {
            return false;
        }
        i += 1;
    }
    true
}

/// Whether `name` starts with `prefix`, ignoring ASCII case; usable in constants.
const fn starts_ignore_case(name: &[u8], prefix: &[u8]) -> bool {
    name.len() >= prefix.len() && eq_ignore_case(name.split_at(prefix.len()).0, prefix)
}

impl Role {
    pub(crate) const fn of(name: &str) -> Role {
        let n = name.as_bytes();
        if n.is_empty() {
            return Role::Metadata;
        }
        // dispatch on the first letter
        match n[0].to_ascii_lowercase() {
            b'c' => {
                if eq_ignore_case(n, names::CE_ID.as_bytes()) {
                    Role::Id(0)
                } else if eq_ignore_case(n, names::CE_TYPE.as_bytes()) {
                    Role::Type(0)
                } else if eq_ignore_case(n, "cloudEvents_id".as_bytes()) {
                    Role::Id(1)
                } else if eq_ignore_case(n, "cloudEvents:id".as_bytes()) {
                    Role::Id(2)
                } else if eq_ignore_case(n, "cloudEvents_type".as_bytes()) {
                    Role::Type(1)
                } else if eq_ignore_case(n, "cloudEvents:type".as_bytes()) {
                    Role::Type(2)
                } else if starts_ignore_case(n, "ce_".as_bytes())
                    || starts_ignore_case(n, "cloudevents".as_bytes())
                    || eq_ignore_case(n, names::CAUSATION_ID.as_bytes())
                {
                    Role::Reserved
                } else if eq_ignore_case(n, names::CONTENT_TYPE.as_bytes()) {
                    Role::ContentType
                } else if eq_ignore_case(n, names::CORRELATION_ID.as_bytes()) {
                    Role::CorrelationId
                } else {
                    Role::Metadata
                }
            }
            b't' if eq_ignore_case(n, names::TRACEPARENT.as_bytes()) => Role::Traceparent,
            b't' if eq_ignore_case(n, names::TRACESTATE.as_bytes()) => Role::Tracestate,
            b'b' if eq_ignore_case(n, names::BAGGAGE.as_bytes()) => Role::Baggage,
            b'm' if eq_ignore_case(n, names::MICRO_ID.as_bytes()) => Role::Id(3),
            b'm' if starts_ignore_case(n, "micro-".as_bytes()) => Role::Reserved,
            b'x' if starts_ignore_case(n, "x-".as_bytes()) => Role::Reserved,
            b'_' if starts_ignore_case(n, "__".as_bytes()) => Role::Reserved,
            b'k' if starts_ignore_case(n, "kafka_".as_bytes()) => Role::Reserved,
            b's' if starts_ignore_case(n, "spring_".as_bytes()) => Role::Reserved,
            _ => Role::Metadata,
        }
    }
}

/// The name of a header. Cheap to clone; compared case-insensitively.
#[derive(Clone)]
pub struct HeaderName(NameRepr);

#[derive(Clone)]
enum NameRepr {
    Static(&'static str, Role),
    Shared(Arc<str>, Role),
}

/// An invalid header name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidHeaderName {
    /// The name was empty.
    #[error("header name is empty")]
    Empty,
    /// The name contained a control character or a non-ASCII character.
    #[error("header name {name:?} contains {found:?}; names are printable ASCII")]
    BadCharacter {
        /// The rejected name.
        name: String,
        /// The first character that is not allowed.
        found: char,
    },
}

impl HeaderName {
    /// A header name from a string literal.
    ///
    /// # Panics
    ///
    /// Panics (at compile time when used in a `const`) if `name` is empty or not printable
    /// ASCII.
    pub const fn from_static(name: &'static str) -> Self {
        let bytes = name.as_bytes();
        assert!(!bytes.is_empty(), "header name is empty");
        let mut i = 0;
        while i < bytes.len() {
            assert!(
                bytes[i] > b' ' && bytes[i] < 0x7f,
                "header name must be printable ASCII"
            );
            i += 1;
        }
        HeaderName(NameRepr::Static(name, Role::of(name)))
    }

    /// Validates and wraps a name received from a broker or given by a user.
    ///
    /// # Errors
    ///
    /// Returns [`InvalidHeaderName`] if the name is empty or contains a character outside
    /// printable ASCII.
    pub fn new(name: impl AsRef<str>) -> Result<Self, InvalidHeaderName> {
        let name = name.as_ref();
        if name.is_empty() {
            return Err(InvalidHeaderName::Empty);
        }
        if let Some(found) = name.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(InvalidHeaderName::BadCharacter {
                name: name.to_owned(),
                found,
            });
        }
        Ok(HeaderName(NameRepr::Shared(
            Arc::from(name),
            Role::of(name),
        )))
    }

    /// Wraps a name read from the wire without validation.
    ///
    /// Brokers deliver whatever other producers wrote; the framework keeps such names as they
    /// are rather than dropping the header.
    ///
    /// A name the framework writes itself (`ce_id`, `content-type`, `traceparent`, ...),
    /// spelled exactly so, is not copied: a consumer reads several of them on every message.
    pub fn from_wire(name: &str) -> Self {
        match WELL_KNOWN.iter().find(|known| known.as_str() == name) {
            Some(known) => known.clone(),
            None => HeaderName(NameRepr::Shared(Arc::from(name), Role::of(name))),
        }
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            NameRepr::Static(s, _) => s,
            NameRepr::Shared(s, _) => s,
        }
    }

    pub(crate) fn role(&self) -> Role {
        match &self.0 {
            NameRepr::Static(_, role) | NameRepr::Shared(_, role) => *role,
        }
    }

    /// Whether this name equals `other`, ignoring ASCII case.
    pub fn matches(&self, other: &str) -> bool {
        self.as_str().eq_ignore_ascii_case(other)
    }
}

/// The names [`HeaderName::from_wire`] hands out without copying: what the framework's own
/// publishers and dead-letter path write.
static WELL_KNOWN: [HeaderName; 16] = [
    HeaderName::from_static(names::CONTENT_TYPE),
    HeaderName::from_static(names::CE_SPECVERSION),
    HeaderName::from_static(names::CE_ID),
    HeaderName::from_static(names::CE_SOURCE),
    HeaderName::from_static(names::CE_TYPE),
    HeaderName::from_static(names::CE_TIME),
    HeaderName::from_static(names::TRACEPARENT),
    HeaderName::from_static(names::TRACESTATE),
    HeaderName::from_static(names::BAGGAGE),
    HeaderName::from_static(names::CORRELATION_ID),
    HeaderName::from_static(names::CAUSATION_ID),
    HeaderName::from_static(names::MICRO_ID),
    HeaderName::from_static(names::MICRO_TOPIC),
    HeaderName::from_static(names::X_EVENT_ERROR),
    HeaderName::from_static(names::X_EVENT_ORIGINAL_TOPIC),
    HeaderName::from_static(names::X_EVENT_ATTEMPTS),
];

impl PartialEq for HeaderName {
    fn eq(&self, other: &Self) -> bool {
        self.matches(other.as_str())
    }
}
impl Eq for HeaderName {}

impl fmt::Debug for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AsRef<str> for HeaderName {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

/// The value of a header: bytes, usually UTF-8 text. Cheap to clone.
///
/// Kafka header values are bytes and the Confluent `__value_schema_id` header is binary, so
/// values are not forced to be text; [`HeaderValue::to_str`] reads them as text.
///
/// Values of up to 38 bytes (message ids, times, most metadata) are stored inline: making,
/// cloning and dropping them touches no allocator and no shared reference count, which matters
/// when a message crosses threads. Longer values share their bytes.
#[derive(Clone)]
pub struct HeaderValue(ValueRepr);

/// The longest value stored inline: a hyphenated UUID (36 bytes) fits.
const INLINE: usize = 38;

#[derive(Clone)]
enum ValueRepr {
    Shared(Bytes),
    Inline { len: u8, bytes: [u8; INLINE] },
}

impl HeaderValue {
    /// A value from a string literal, without allocating.
    pub const fn from_static(value: &'static str) -> Self {
        HeaderValue(ValueRepr::Shared(Bytes::from_static(value.as_bytes())))
    }

    /// A value from raw bytes (copied inline when short, shared otherwise).
    pub fn from_bytes(value: impl Into<Bytes>) -> Self {
        let value = value.into();
        match Self::try_inline(&value) {
            Some(inline) => inline,
            None => HeaderValue(ValueRepr::Shared(value)),
        }
    }

    /// A value copied from `value`.
    pub fn copy_from_slice(value: &[u8]) -> Self {
        Self::try_inline(value)
            .unwrap_or_else(|| HeaderValue(ValueRepr::Shared(Bytes::copy_from_slice(value))))
    }

    fn try_inline(value: &[u8]) -> Option<Self> {
        (value.len() <= INLINE).then(|| {
            let mut bytes = [0u8; INLINE];
            bytes[..value.len()].copy_from_slice(value);
            HeaderValue(ValueRepr::Inline {
                len: value.len() as u8,
                bytes,
            })
        })
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            ValueRepr::Shared(bytes) => bytes,
            ValueRepr::Inline { len, bytes } => &bytes[..usize::from(*len)],
        }
    }

    /// The value as UTF-8 text.
    ///
    /// # Errors
    ///
    /// Returns the UTF-8 error when the value is not text.
    pub fn to_str(&self) -> Result<&str, Utf8Error> {
        std::str::from_utf8(self.as_bytes())
    }

    /// The value as [`Bytes`] (a short value is copied).
    pub fn into_bytes(self) -> Bytes {
        match self.0 {
            ValueRepr::Shared(bytes) => bytes,
            ValueRepr::Inline { .. } => Bytes::copy_from_slice(self.as_bytes()),
        }
    }
}

impl Default for HeaderValue {
    fn default() -> Self {
        HeaderValue::from_static("")
    }
}

impl PartialEq for HeaderValue {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}
impl Eq for HeaderValue {}

impl std::hash::Hash for HeaderValue {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl From<String> for HeaderValue {
    fn from(value: String) -> Self {
        HeaderValue::from_bytes(value)
    }
}

impl From<&str> for HeaderValue {
    fn from(value: &str) -> Self {
        HeaderValue::copy_from_slice(value.as_bytes())
    }
}

impl From<Bytes> for HeaderValue {
    fn from(value: Bytes) -> Self {
        HeaderValue::from_bytes(value)
    }
}

impl fmt::Debug for HeaderValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_str() {
            Ok(s) => fmt::Debug::fmt(s, f),
            Err(_) => write!(f, "0x{}", crate::codec::hex(self.as_bytes(), 64)),
        }
    }
}

/// Ordered header multimap with case-insensitive lookup.
///
/// ```
/// use event_core::Headers;
///
/// let mut headers = Headers::new();
/// headers.append("Traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
/// headers.append("tenant", "t-1");
/// headers.append("tenant", "t-2");
/// assert_eq!(headers.get_str("traceparent"), Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
/// assert_eq!(headers.get_str("TENANT"), Some("t-1"));
/// assert_eq!(headers.get_all("tenant").count(), 2);
/// ```
#[derive(Clone, Default)]
pub struct Headers {
    /// Entries every message of one publisher carries (its source, type and so on), made
    /// once and never freed ([`Headers::with_shared`]); they come before `entries`. A
    /// publisher then writes only what changes per message, and a consumer frees no more.
    shared: &'static [(HeaderName, HeaderValue)],
    entries: Vec<(HeaderName, HeaderValue)>,
}

impl Headers {
    /// No headers.
    pub const fn new() -> Self {
        Headers {
            shared: &[],
            entries: Vec::new(),
        }
    }

    /// No headers, with room for `capacity` entries.
    pub fn with_capacity(capacity: usize) -> Self {
        Headers {
            shared: &[],
            entries: Vec::with_capacity(capacity),
        }
    }

    /// No headers, with room for `capacity` entries, in a vector that is recycled when the
    /// headers are dropped, on whichever thread that happens: what a publisher uses for the
    /// headers of every message it builds, and what a backend that reads messages on one
    /// thread and hands them to handlers on another should use. Freeing memory another thread
    /// allocated is slow with glibc's allocator; a recycled vector is not freed. Up to 8
    /// entries are recycled; a larger `capacity` gets a vector of its own.
    pub fn pooled(capacity: usize) -> Self {
        if capacity > pool::CAPACITY {
            return Headers::with_capacity(capacity);
        }
        Headers {
            shared: &[],
            entries: pool::take(),
        }
    }

    /// Headers that start with `shared`, which are not copied: for the entries every message
    /// of a publisher carries. Changing or removing one of them makes the headers copy them
    /// first.
    pub(crate) fn with_shared(mut self, shared: &'static [(HeaderName, HeaderValue)]) -> Self {
        debug_assert!(self.shared.is_empty() && self.entries.is_empty());
        self.shared = shared;
        self
    }

    /// Copies the shared entries into `entries`, in front, before a change that touches one.
    fn own_shared(&mut self) {
        if !self.shared.is_empty() {
            self.entries.splice(0..0, self.shared.iter().cloned());
            self.shared = &[];
        }
    }

    /// All entries in order, for the lookups below.
    fn all(&self) -> impl Iterator<Item = &(HeaderName, HeaderValue)> {
        self.shared.iter().chain(&self.entries)
    }

    /// Appends an entry, keeping any earlier entry of the same name.
    ///
    /// Names given as `&str` are taken as they are (see [`HeaderName::from_wire`]); use
    /// [`HeaderName::new`] to validate them first.
    pub fn append(&mut self, name: impl IntoHeaderName, value: impl Into<HeaderValue>) {
        self.entries.push((name.into_header_name(), value.into()));
    }

    /// Appends a copy of `value`, written in place when it fits inline (see
    /// [`Headers::append_copied`]).
    #[inline(always)]
    pub(crate) fn append_copy(&mut self, name: HeaderName, value: &HeaderValue) {
        match &value.0 {
            ValueRepr::Shared(bytes) => self
                .entries
                .push((name, HeaderValue(ValueRepr::Shared(bytes.clone())))),
            ValueRepr::Inline { len, bytes } => {
                self.append_copied(name, &bytes[..usize::from(*len)]);
            }
        }
    }

    /// Appends a copy of `value`. A value that fits inline is written straight into the
    /// vector's memory: an entry built on the stack and then moved in is read back with wide
    /// loads over the narrow stores that built it, and such a load waits until every earlier
    /// store reached the cache, misses on the fresh header vector included (measured: most
    /// of a publish's encoding time). Pushing a constant and filling it in place avoids the
    /// stack copy.
    #[inline(always)] // with the name a constant, it is stored in place too
    pub(crate) fn append_copied(&mut self, name: HeaderName, value: &[u8]) {
        const BLANK: (HeaderName, HeaderValue) = (
            HeaderName(NameRepr::Static("", Role::Metadata)),
            HeaderValue(ValueRepr::Inline {
                len: 0,
                bytes: [0; INLINE],
            }),
        );
        if value.len() > INLINE {
            self.entries
                .push((name, HeaderValue::copy_from_slice(value)));
            return;
        }
        self.entries.push(BLANK);
        if let Some((slot, HeaderValue(ValueRepr::Inline { len, bytes }))) = self.entries.last_mut()
        {
            *slot = name;
            bytes[..value.len()].copy_from_slice(value);
            *len = value.len() as u8;
        }
    }

    /// Replaces every entry named `name` (any case) by one entry at the position of the first.
    pub fn insert(&mut self, name: impl IntoHeaderName, value: impl Into<HeaderValue>) {
        let name = name.into_header_name();
        let value = value.into();
        if self.shared.iter().any(|(n, _)| n == &name) {
            self.own_shared();
        }
        match self.entries.iter().position(|(n, _)| n == &name) {
            Some(first) => {
                self.entries[first] = (name.clone(), value);
                let mut i = first + 1;
                while i < self.entries.len() {
                    if self.entries[i].0 == name {
                        self.entries.remove(i);
                    } else {
                        i += 1;
                    }
                }
            }
            None => self.entries.push((name, value)),
        }
    }

    /// Removes every entry named `name` (any case); returns how many were removed.
    pub fn remove(&mut self, name: &str) -> usize {
        if self.shared.iter().any(|(n, _)| n.matches(name)) {
            self.own_shared();
        }
        let before = self.entries.len();
        self.entries.retain(|(n, _)| !n.matches(name));
        before - self.entries.len()
    }

    /// The first value named `name`, ignoring ASCII case.
    pub fn get(&self, name: &str) -> Option<&HeaderValue> {
        self.all().find(|(n, _)| n.matches(name)).map(|(_, v)| v)
    }

    /// The first value named `name` as text; `None` if absent or not UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value named `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a HeaderValue> + 'a {
        self.all()
            .filter(move |(n, _)| n.matches(name))
            .map(|(_, v)| v)
    }

    /// Whether an entry named `name` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// All entries in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&HeaderName, &HeaderValue)> {
        Iter {
            shared: self.shared.iter(),
            entries: self.entries.iter(),
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.shared.len() + self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.shared.is_empty() && self.entries.is_empty()
    }

    fn first_of(&self, aliases: &[&str]) -> Option<&HeaderValue> {
        aliases.iter().find_map(|name| self.get(name))
    }

    /// The first `traceparent` (any case).
    #[cfg(feature = "opentelemetry")]
    pub(crate) fn traceparent(&self) -> Option<&HeaderValue> {
        self.all()
            .find(|(name, _)| name.role() == Role::Traceparent)
            .map(|(_, value)| value)
    }

    /// The message id: `ce_id`, else AMQP's `cloudEvents_id`/`cloudEvents:id`, else go-micro's
    /// `Micro-ID`.
    pub fn message_id_value(&self) -> Option<&HeaderValue> {
        self.best_ranked(|role| match role {
            Role::Id(rank) => Some(rank),
            _ => None,
        })
    }

    /// The message id as text.
    pub fn message_id(&self) -> Option<&str> {
        self.message_id_value().and_then(|v| v.to_str().ok())
    }

    /// The message type (`ce_type`, `cloudEvents_type`, `cloudEvents:type`).
    pub fn message_type(&self) -> Option<&str> {
        self.message_type_value().and_then(|v| v.to_str().ok())
    }

    pub(crate) fn message_type_value(&self) -> Option<&HeaderValue> {
        self.best_ranked(|role| match role {
            Role::Type(rank) => Some(rank),
            _ => None,
        })
    }

    /// The content type (`content-type`, any case).
    pub fn content_type(&self) -> Option<&str> {
        self.content_type_value().and_then(|v| v.to_str().ok())
    }

    pub(crate) fn content_type_value(&self) -> Option<&HeaderValue> {
        self.best_ranked(|role| (role == Role::ContentType).then_some(0))
    }

    /// The value of the first header of the best rank `rank_of` gives (0 is best): the
    /// alias lookups of the id and type, with the names' roles worked out beforehand.
    fn best_ranked(&self, rank_of: impl Fn(Role) -> Option<u8>) -> Option<&HeaderValue> {
        let mut best: Option<(u8, &HeaderValue)> = None;
        for (name, value) in self.all() {
            if let Some(rank) = rank_of(name.role())
                && best.is_none_or(|(b, _)| rank < b)
            {
                if rank == 0 {
                    return Some(value);
                }
                best = Some((rank, value));
            }
        }
        best.map(|(_, value)| value)
    }

    /// The producer (`ce_source`, `cloudEvents_source`, `cloudEvents:source`).
    pub fn source(&self) -> Option<&str> {
        self.first_of(&[names::CE_SOURCE, "cloudEvents_source", "cloudEvents:source"])
            .and_then(|v| v.to_str().ok())
    }

    /// The publication time (`ce_time`, `cloudEvents_time`, `cloudEvents:time`), parsed as
    /// RFC 3339.
    pub fn time(&self) -> Option<std::time::SystemTime> {
        self.first_of(&[names::CE_TIME, "cloudEvents_time", "cloudEvents:time"])
            .and_then(|v| v.to_str().ok())
            .and_then(|s| humantime::parse_rfc3339_weak(s).ok())
    }
}

/// The entries of [`Headers::iter`].
struct Iter<'a> {
    shared: std::slice::Iter<'a, (HeaderName, HeaderValue)>,
    entries: std::slice::Iter<'a, (HeaderName, HeaderValue)>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a HeaderName, &'a HeaderValue);

    fn next(&mut self) -> Option<Self::Item> {
        self.shared
            .next()
            .or_else(|| self.entries.next())
            .map(|(name, value)| (name, value))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let len = self.shared.len() + self.entries.len();
        (len, Some(len))
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl PartialEq for Headers {
    /// The same entries in the same order, however they are stored.
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Headers {}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<N: IntoHeaderName, V: Into<HeaderValue>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        Headers {
            shared: &[],
            entries: iter
                .into_iter()
                .map(|(n, v)| (n.into_header_name(), v.into()))
                .collect(),
        }
    }
}

impl IntoIterator for Headers {
    type Item = (HeaderName, HeaderValue);
    type IntoIter = std::vec::IntoIter<(HeaderName, HeaderValue)>;
    fn into_iter(mut self) -> Self::IntoIter {
        self.own_shared();
        std::mem::take(&mut self.entries).into_iter()
    }
}

impl Drop for Headers {
    fn drop(&mut self) {
        if self.entries.capacity() == pool::CAPACITY {
            pool::give(std::mem::take(&mut self.entries));
        }
    }
}

impl<N: IntoHeaderName, V: Into<HeaderValue>> Extend<(N, V)> for Headers {
    fn extend<I: IntoIterator<Item = (N, V)>>(&mut self, iter: I) {
        self.entries.extend(
            iter.into_iter()
                .map(|(n, v)| (n.into_header_name(), v.into())),
        );
    }
}

/// Types that can name a header: [`HeaderName`], `&str` and `String`.
pub trait IntoHeaderName {
    /// Converts into a [`HeaderName`].
    fn into_header_name(self) -> HeaderName;
}

impl IntoHeaderName for HeaderName {
    fn into_header_name(self) -> HeaderName {
        self
    }
}

impl IntoHeaderName for &HeaderName {
    fn into_header_name(self) -> HeaderName {
        self.clone()
    }
}

impl IntoHeaderName for &str {
    fn into_header_name(self) -> HeaderName {
        HeaderName::from_wire(self)
    }
}

impl IntoHeaderName for String {
    fn into_header_name(self) -> HeaderName {
        let role = Role::of(&self);
        HeaderName(NameRepr::Shared(Arc::from(self), role))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_ignores_case_and_keeps_order() {
        let mut h = Headers::new();
        h.append("Micro-Id", "a");
        h.append("x", "1");
        h.append("X", "2");
        assert_eq!(h.get_str("micro-id"), Some("a"));
        assert_eq!(h.get_str("MICRO-ID"), Some("a"));
        let xs: Vec<_> = h.get_all("x").map(|v| v.to_str().unwrap()).collect();
        assert_eq!(xs, ["1", "2"]);
        let order: Vec<_> = h.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(order, ["Micro-Id", "x", "X"]);
    }

    #[test]
    fn insert_replaces_all_spellings_at_first_position() {
        let mut h = Headers::new();
        h.append("a", "0");
        h.append("Tenant", "1");
        h.append("b", "0");
        h.append("TENANT", "2");
        h.insert("tenant", "3");
        let all: Vec<_> = h
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap().to_owned()))
            .collect();
        assert_eq!(
            all,
            [
                ("a".to_owned(), "0".to_owned()),
                ("tenant".to_owned(), "3".to_owned()),
                ("b".to_owned(), "0".to_owned())
            ]
        );
        assert_eq!(h.remove("TENANT"), 1);
        assert!(!h.contains("tenant"));
    }

    fn pairs(h: &Headers) -> Vec<(String, String)> {
        h.iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap().to_owned()))
            .collect()
    }

    /// Headers that start with shared entries read, compare, change and give up their
    /// entries exactly as headers holding all of them would.
    #[test]
    fn shared_entries_behave_as_owned_ones() {
        static SHARED: std::sync::LazyLock<Vec<(HeaderName, HeaderValue)>> =
            std::sync::LazyLock::new(|| {
                vec![
                    (
                        HeaderName::from_wire("ce_type"),
                        HeaderValue::from("x.v1.A"),
                    ),
                    (HeaderName::from_wire("Tenant"), HeaderValue::from("1")),
                ]
            });
        let make = || {
            let mut h = Headers::with_capacity(4).with_shared(&SHARED);
            h.append("ce_id", "id-1");
            h.append("TENANT", "2");
            h
        };
        let plain: Headers = [
            ("ce_type", "x.v1.A"),
            ("Tenant", "1"),
            ("ce_id", "id-1"),
            ("TENANT", "2"),
        ]
        .into_iter()
        .collect();

        let h = make();
        assert_eq!(h, plain, "equal to the same entries held as owned ones");
        let other: Headers = [
            ("ce_type", "x.v1.A"),
            ("Tenant", "9"),
            ("ce_id", "id-1"),
            ("TENANT", "2"),
        ]
        .into_iter()
        .collect();
        assert_ne!(h, other, "a shared value that differs is a difference");
        assert_eq!(pairs(&h), pairs(&plain));
        assert_eq!(h.len(), 4);
        assert_eq!(h.iter().len(), 4);
        let only_shared = Headers::new().with_shared(&SHARED);
        assert!(!only_shared.is_empty());
        assert_eq!(only_shared.len(), 2);
        assert_eq!(h.message_type(), Some("x.v1.A"));
        assert_eq!(h.message_id(), Some("id-1"));
        assert_eq!(h.get_str("tenant"), Some("1"), "the first, a shared one");
        assert_eq!(h.get_all("tenant").count(), 2);
        assert_eq!(format!("{h:?}"), format!("{plain:?}"));
        let owned: Headers = h.clone().into_iter().collect();
        assert_eq!(
            pairs(&owned),
            pairs(&plain),
            "owned iteration yields the shared entries too, first"
        );

        // changing a shared name: replaced at the first position, as for owned entries, in a
        // publisher's pooled vector too
        let mut pooled = Headers::pooled(4).with_shared(&SHARED);
        pooled.append("ce_id", "id-1");
        pooled.append("TENANT", "2");
        pooled.insert("tenant", "3");
        let mut p = plain.clone();
        p.insert("tenant", "3");
        assert_eq!(pairs(&pooled), pairs(&p));
        let (mut h, mut p) = (make(), plain.clone());
        h.insert("tenant", "3");
        p.insert("tenant", "3");
        assert_eq!(pairs(&h), pairs(&p));
        assert_eq!(pairs(&h)[1], ("tenant".to_owned(), "3".to_owned()));

        let (mut h, mut p) = (make(), plain.clone());
        assert_eq!(h.remove("CE_TYPE"), p.remove("CE_TYPE"));
        assert_eq!(pairs(&h), pairs(&p));
        assert_eq!(h.message_type(), None);

        // a change that touches no shared name leaves them shared, and in front
        let mut h = make();
        h.insert("x-event-error", "boom");
        assert_eq!(h.remove("x-event-error"), 1);
        h.insert("x-event-error", "boom");
        assert_eq!(h.shared.len(), 2);
        assert_eq!(pairs(&h)[0].0, "ce_type");
        assert_eq!(h.get_str("x-event-error"), Some("boom"));
    }

    #[test]
    fn reserved_names() {
        for name in [
            "ce_id",
            "CE_TYPE",
            "cloudEvents_type",
            "cloudEvents:id",
            "Content-Type",
            "Traceparent",
            "tracestate",
            "baggage",
            "Micro-ID",
            "x-death",
            "X-Event-Error",
            "__value_schema_id",
            "correlation-id",
            "Causation-ID",
            "kafka_key",
            "spring_json_header_types",
        ] {
            assert!(is_reserved(name), "{name} should be reserved");
        }
        for name in [
            "tenant",
            "user-id",
            "c",
            "cex",
            "trace",
            "",
            "ce",
            "x",
            "_",
            "kafka",
            "spring",
            "micro",
            "baggages",
            "content",
            "cloudevent",
        ] {
            assert!(!is_reserved(name), "{name} should be free");
        }
    }

    #[test]
    fn roles_are_the_same_whichever_way_a_name_is_made() {
        for (name, role) in [
            ("ce_id", Role::Id(0)),
            ("CloudEvents_Id", Role::Id(1)),
            ("cloudEvents:id", Role::Id(2)),
            ("micro-id", Role::Id(3)),
            ("CE_TYPE", Role::Type(0)),
            ("cloudEvents_type", Role::Type(1)),
            ("cloudevents:TYPE", Role::Type(2)),
            ("Content-Type", Role::ContentType),
            ("correlation-id", Role::CorrelationId),
            ("Traceparent", Role::Traceparent),
            ("tracestate", Role::Tracestate),
            ("BAGGAGE", Role::Baggage),
            ("causation-id", Role::Reserved),
            ("ce_time", Role::Reserved),
            ("x-death", Role::Reserved),
            ("tenant", Role::Metadata),
            ("ce_idx", Role::Reserved),
            ("traceparents", Role::Metadata),
        ] {
            let leaked: &'static str = name.to_owned().leak();
            for made in [
                HeaderName::from_static(leaked),
                HeaderName::new(name).unwrap(),
                HeaderName::from_wire(name),
                name.into_header_name(),
                name.to_owned().into_header_name(),
            ] {
                assert_eq!(made.role(), role, "{name}");
            }
            assert_eq!(is_reserved(name), role != Role::Metadata, "{name}");
        }
    }

    #[test]
    fn aliases_are_ranked_not_ordered() {
        let h: Headers = [
            ("Micro-ID", "go"),
            ("cloudEvents:type", "amqp.Type"),
            ("cloudEvents_id", "amqp"),
            ("ce_type", "x.v1.Type"),
            ("ce_id", "ce"),
            ("ce_id", "second"),
            ("Content-Type", "application/json"),
            ("content-type", "application/protobuf"),
        ]
        .into_iter()
        .collect();
        assert_eq!(h.message_id(), Some("ce"));
        assert_eq!(h.message_type(), Some("x.v1.Type"));
        assert_eq!(h.content_type(), Some("application/json"));
        let go: Headers = [
            ("cloudEvents:id", "colon"),
            ("Micro-Id", "go"),
            ("cloudEvents_id", "underscore"),
        ]
        .into_iter()
        .collect();
        assert_eq!(go.message_id(), Some("underscore"));
    }

    #[test]
    fn header_name_validation() {
        assert_eq!(HeaderName::new(""), Err(InvalidHeaderName::Empty));
        assert!(matches!(
            HeaderName::new("a b"),
            Err(InvalidHeaderName::BadCharacter { found: ' ', .. })
        ));
        assert_eq!(
            HeaderName::new("Tenant").unwrap(),
            HeaderName::from_static("tenant")
        );
    }

    #[test]
    fn short_and_long_values_read_and_compare_alike() {
        use std::hash::BuildHasher;
        let hasher = std::collections::hash_map::RandomState::new();
        for len in [0, 1, INLINE - 1, INLINE, INLINE + 1, 200] {
            let text = "v".repeat(len);
            let values = [
                HeaderValue::from(text.as_str()),
                HeaderValue::from(text.clone()),
                HeaderValue::from_bytes(Bytes::from(text.clone())),
                HeaderValue::copy_from_slice(text.as_bytes()),
                HeaderValue::from_static(text.clone().leak()),
            ];
            for value in &values {
                assert_eq!(value.to_str().unwrap(), text);
                assert_eq!(value, &values[0]);
                assert_eq!(hasher.hash_one(value), hasher.hash_one(&values[0]));
                assert_eq!(value.clone().into_bytes(), text.as_bytes());
            }
            assert_eq!(
                matches!(values[0].0, ValueRepr::Inline { .. }),
                len <= INLINE
            );
        }
        assert_ne!(HeaderValue::from("a"), HeaderValue::from("b"));
        assert_eq!(HeaderValue::default().as_bytes(), b"");
    }

    #[test]
    fn binary_values_survive_and_debug_as_hex() {
        let v = HeaderValue::from_bytes(vec![0x01, 0xff]);
        assert!(v.to_str().is_err());
        assert_eq!(format!("{v:?}"), "0x01ff");
    }
}
