//! Header names: the validated, case-insensitive [`HeaderName`], what each name means to the
//! framework ([`Role`], worked out once when a name is made) and which names are reserved.
//!
//! The framework's own names are constants ([`known`]) and the names it reads on every message
//! are handed out without copying ([`HeaderName::from_wire`]).

use std::fmt;
use std::sync::Arc;

use super::names;

/// The names this crate writes, as [`HeaderName`]s built at compile time (a `from_static`
/// call outside a constant checks its name at run time, for every message).
pub(crate) mod known {
    use super::HeaderName;
    use crate::headers::names;

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
/// RabbitMQ (`x-death`, ...), to the Confluent serializers and to Spring (the list is part of
/// the wire scheme, in the crate documentation):
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
                    || starts_ignore_case(n, "ce-".as_bytes())
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
pub struct HeaderName(pub(super) NameRepr);

/// A name from a literal or one that owns its text, with its role worked out when made.
#[derive(Clone)]
pub(super) enum NameRepr {
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
            ("ce-tenant", Role::Reserved),
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
}
