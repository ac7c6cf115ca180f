//! Message headers: an ordered multimap whose names are read case-insensitively.
//!
//! Kafka record headers and AMQP header tables are both ordered lists of name/value pairs in
//! which one name may repeat. [`Headers`] keeps that shape: it never reorders or merges entries,
//! and every lookup ignores ASCII case, so `Traceparent` written by go-micro is found by
//! `headers.get("traceparent")`.
//!
//! The names this crate writes itself are listed in [`names`]; see the crate documentation for
//! the full wire scheme.
//!
//! The module is split by concept: [`HeaderName`] and the reserved names in `name`,
//! [`HeaderValue`] in `value`, the name constants in [`names`], and the recycling of header
//! vectors across threads in `pool`; the map itself is here.

use std::fmt;

mod name;
pub mod names;
mod pool;
mod value;

use name::NameRepr;
pub use name::{HeaderName, IntoHeaderName, InvalidHeaderName, is_reserved};
pub(crate) use name::{Role, known};
pub use value::HeaderValue;
use value::{INLINE, ValueRepr};

/// One header: its name and value, as [`Headers::split_shared`] gives them.
pub type HeaderEntry = (HeaderName, HeaderValue);

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

    /// Appends a copy of `value`, as `append(name, HeaderValue::copy_from_slice(value))`
    /// does, but faster: what a backend that copies headers out of its client library uses.
    ///
    /// A value that fits inline is written straight into the vector's memory: an entry built
    /// on the stack and then moved in is read back with wide loads over the narrow stores
    /// that built it, and such a load waits until every earlier store reached the cache,
    /// misses on the fresh header vector included (measured: most of a publish's encoding
    /// time; copying a typed event's six headers, 101 ns with `copy_from_slice` and 68 ns
    /// with this). Pushing a constant and filling it in place avoids the stack copy.
    ///
    /// ```
    /// use event_core::Headers;
    /// use event_core::headers::HeaderName;
    ///
    /// let mut headers = Headers::new();
    /// headers.append_copied(HeaderName::from_wire("ce_type"), b"bench.v1.Tick");
    /// assert_eq!(headers.get_str("ce_type"), Some("bench.v1.Tick"));
    /// ```
    #[inline(always)] // with the name a constant, it is stored in place too
    pub fn append_copied(&mut self, name: HeaderName, value: &[u8]) {
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

    /// The entries in two parts, in the order [`iter`](Self::iter) gives them: those every
    /// message of the publisher that made these headers carries (its source, type, content
    /// type and so on), then this message's own. The first part is made once per source,
    /// message type and content type, shared by every publisher of them, and never freed, so
    /// its address names it for as long as the process runs: a backend can translate it into
    /// its broker's form once, and only the second part per message.
    ///
    /// The first part may be empty for any message: headers not made by a publisher have
    /// none, nor have those of a process past the number of such triples it shares, nor
    /// headers in which a shared entry was changed or removed (they own every entry then).
    pub fn split_shared(&self) -> (&'static [HeaderEntry], &[HeaderEntry]) {
        (self.shared, &self.entries)
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

    /// Whether the one `correlation-id` (any case) only repeats the message id, as on the
    /// first message of a chain: a transport may leave it out, since a reader takes the
    /// message id for a missing correlation id (as [`Context::from_headers`] does). `false`
    /// with no id, and with several correlation ids (of two, the one left would be read
    /// instead).
    ///
    /// [`Context::from_headers`]: crate::Context::from_headers
    pub fn correlation_repeats_id(&self) -> bool {
        let mut correlation = self.get_all(names::CORRELATION_ID);
        match (correlation.next(), correlation.next()) {
            (Some(only), None) => self.message_id_value() == Some(only),
            _ => false,
        }
    }

    /// The message id as text.
    pub fn message_id(&self) -> Option<&str> {
        self.message_id_value().and_then(|v| v.to_str().ok())
    }

    /// The message type (`ce_type`, `cloudEvents_type`, `cloudEvents:type`).
    pub fn message_type(&self) -> Option<&str> {
        self.message_type_value().and_then(|v| v.to_str().ok())
    }

    /// The message type's raw value, text or not (see [`Headers::message_type`]).
    pub fn message_type_value(&self) -> Option<&HeaderValue> {
        self.best_ranked(|role| match role {
            Role::Type(rank) => Some(rank),
            _ => None,
        })
    }

    /// The content type (`content-type`, any case).
    pub fn content_type(&self) -> Option<&str> {
        self.content_type_value().and_then(|v| v.to_str().ok())
    }

    /// The content type's raw value, text or not (see [`Headers::content_type`]).
    pub fn content_type_value(&self) -> Option<&HeaderValue> {
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
    fn a_correlation_id_repeats_the_id_only_when_it_is_the_one_equal_to_it() {
        let headers = |pairs: &[(&str, &str)]| -> Headers { pairs.iter().copied().collect() };
        let id = "0190f4c2-0000-7000-8000-000000000001";
        assert!(headers(&[("ce_id", id), ("Correlation-ID", id)]).correlation_repeats_id());
        // the best-ranked id is the one it must repeat
        assert!(
            headers(&[("Micro-Id", "other"), ("correlation-id", id), ("ce_id", id)])
                .correlation_repeats_id()
        );
        assert!(!headers(&[("ce_id", id), ("correlation-id", "root")]).correlation_repeats_id());
        assert!(
            !headers(&[
                ("ce_id", id),
                ("correlation-id", id),
                ("correlation-id", "root")
            ])
            .correlation_repeats_id()
        );
        assert!(!headers(&[("correlation-id", id)]).correlation_repeats_id());
        assert!(!headers(&[("ce_id", id)]).correlation_repeats_id());
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
}
