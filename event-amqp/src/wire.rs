//! The AMQP edge of the header scheme (the wire table in the `event_core` crate documentation,
//! `event-core/docs/wire.md` in the repository): [`Message`] ↔ AMQP properties and header
//! table, written in the broker's [`WireProfile`].
//!
//! **Publishing: each fact once (the lean profile, the default).** A fact AMQP has a property
//! for travels in that property, and only there:
//!
//! | `Message` header | property |
//! |---|---|
//! | `ce_id` | `message_id` |
//! | `ce_type` | `type` |
//! | `ce_source` | `app_id` |
//! | `ce_time` | `timestamp`, in whole seconds |
//! | `content-type` | `content_type` |
//! | `correlation-id` | `correlation_id` |
//!
//! and every message is persistent (`delivery_mode` 2). AMQP's `timestamp` counts whole
//! seconds, so the lean profile carries the time at second resolution (`…12:34:56.789Z` is
//! consumed as `…12:34:56.000Z`); the `cloudevents` profile keeps the full RFC 3339 value.
//! `ce_specversion` `1.0` is left out: nothing in the consumer reads it (another value, from a
//! forwarded foreign event, is kept in a header). So is a correlation id that only repeats the
//! message id (the first message of a chain): the consumer's context and tracing span take the
//! id for a missing one, so such a message is consumed without a `correlation-id` header and
//! with the same context.
//!
//! Everything that has no property goes into the header table, as long strings (bytes kept as
//! they are; a name that repeats becomes a field array): `traceparent`, `tracestate`,
//! `baggage`, `causation-id`, other `ce_*` attributes as `cloudEvents_*` (the CloudEvents AMQP
//! binding's prefix), user metadata under its own name, and the key, which AMQP does not have,
//! in `x-event-key`. A fact that cannot go in its property goes to the header table instead
//! (`cloudEvents_X` for `ce_X`, `Content-Type`, `correlation-id`), so nothing is lost: a value
//! longer than 255 bytes or not UTF-8, a time that is not RFC 3339 in UTC (`Z`) or is before
//! 1970, an attribute with several values (or also in another CloudEvents form), and an id
//! when the message carries a `Micro-ID` of its own (which consumption would read first).
//!
//! **Profiles** add copies for other readers, and combine:
//! - `go-micro`: the `Content-Type` header (go-micro's spelling), `Micro-ID` (the message id,
//!   unless the message carries one) and `Micro-Topic` (the topic);
//! - `cloudevents`: a `cloudEvents_*` header for every `ce_` attribute (id, type, source, time
//!   with its full value, specversion, ...) beside the properties: a consumed message has
//!   exactly the headers that were published, as on Kafka.
//!
//! Consuming reverses it whatever the profile, and reads what other AMQP producers write too.
//!
//! **CloudEvents attributes.** Producers spell a CloudEvents attribute `X` (`id`, `type`,
//! `source`, `time`, `specversion`, an extension...) in four ways on RabbitMQ: `ce_X` (the
//! Kafka binding's prefix, which some SDKs use on AMQP as well), `cloudEvents_X` (the AMQP
//! binding's, and what the `cloudevents` profile publishes), `cloudEvents:X` (the AMQP
//! binding's other form) and `ce-X` (the HTTP binding's, the default prefix of some SDKs when
//! they do not know the transport).
//! Every form, in any case, is read into the header `ce_X` (the attribute in lower case), so a
//! message from any of them is consumed with its id and type, and its type is checked. The
//! CloudEvents headers come first in the consumed headers.
//!
//! **Precedence.** When one attribute comes in several forms, every distinct value is kept, in
//! this order: `ce_X`, `cloudEvents_X`, `cloudEvents:X`, `ce-X` (the order in which
//! `Headers::message_id` ranks the aliases); a value that repeats one of an earlier form is
//! dropped. The first value is the one the framework reads (`Headers::message_id`,
//! `message_type`, `source`, `time`), and a type check sees it. The AMQP properties come last:
//! a property only fills in an attribute that no header carries (`content_type` →
//! `content-type`, `message_id` → `ce_id`, `type` → `ce_type`, `app_id` → `ce_source`,
//! `timestamp` → `ce_time`, `correlation_id` → `correlation-id`). Headers go first because a
//! header named for a CloudEvents attribute says what it is, while other AMQP clients and
//! frameworks fill the generic properties for purposes of their own (a client-made
//! `message_id`, a class name in `type`), and because properties are limited to 255 bytes. Our
//! own messages carry a fact either in its property alone (lean) or the same value in both
//! (`cloudevents`). `Micro-ID` (go-micro's id) ranks after every CloudEvents form and before
//! the properties, as it does in `Headers::message_id`.
//!
//! **The rest.** `Micro-ID` is dropped when it only repeats an id read from the CloudEvents
//! headers, and read as the id (`ce_id`) when no header carries one and it repeats the
//! `message_id` property (a `go-micro` profile message); `Micro-Topic` is dropped when it only
//! repeats the routing key; `x-event-key` becomes the key; other values are stringified
//! (numbers in decimal, booleans as `true`/`false`, nested tables and arrays as JSON, byte
//! arrays as their bytes).
//!
//! **Positions.** A consumed message sits at its delivery tag (channel-scoped), flagged when
//! RabbitMQ says it is redelivered; a published one is only confirmed: AMQP reports no place
//! for it.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::{BitOr, BitOrAssign};
use std::str::FromStr;
use std::time::SystemTime;

use bytes::Bytes;
use event_core::backend::{Position, PositionKind};
use event_core::broker::Message;
use event_core::headers::{HeaderName, HeaderValue, Headers, IntoHeaderName, names};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};

use crate::error::{AmqpBackendError, AmqpConfigError};

/// The header that carries [`Message::key`].
pub(crate) const KEY_HEADER: &str = "x-event-key";
/// The AMQP CloudEvents prefix written for `ce_` headers.
const CLOUDEVENTS_PREFIX: &str = "cloudEvents_";
/// The prefixes of a CloudEvents attribute read on consumption, in order of precedence (the
/// index is a form's rank).
const CLOUDEVENTS_FORMS: [&str; 4] = ["ce_", CLOUDEVENTS_PREFIX, "cloudEvents:", "ce-"];
/// The attributes the framework writes and reads, as their `ce_` header names: read into
/// these exact names, which the consumer then neither copies nor allocates.
const CLOUDEVENTS_KNOWN: [&str; 5] = [
    names::CE_ID,
    names::CE_TYPE,
    names::CE_SOURCE,
    names::CE_TIME,
    names::CE_SPECVERSION,
];
/// go-micro's content type header spelling.
const GO_MICRO_CONTENT_TYPE: &str = "Content-Type";
/// RabbitMQ's redelivery counter on quorum queues.
const DELIVERY_COUNT: &str = "x-delivery-count";
/// The CloudEvents spec version the framework writes, which the lean profile leaves out.
const SPECVERSION: &[u8] = b"1.0";

/// What the `wire` URL parameter accepts.
const WIRE_EXPECTED: &str = "lean, go-micro, cloudevents, or a comma-separated combination \
    (go-micro,cloudevents)";

/// Which copies of a message's facts an AMQP publish writes: the broker's wire profile
/// ([`AmqpBrokerBuilder::wire_profile`](crate::AmqpBrokerBuilder::wire_profile), URL
/// parameter `wire`).
///
/// [`WireProfile::LEAN`], the default, writes each fact once: in its AMQP property where AMQP
/// has one (`message_id`, `type`, `app_id`, `timestamp` in whole seconds, `content_type`,
/// `correlation_id`), in the header table otherwise (trace context, `causation-id`, user
/// metadata, the key). The other profiles add headers for other readers, and combine with `|`:
///
/// - [`WireProfile::GO_MICRO`]: `Content-Type`, `Micro-ID` and `Micro-Topic`, the headers
///   go-micro's RabbitMQ broker reads;
/// - [`WireProfile::CLOUDEVENTS`]: a `cloudEvents_*` header for every CloudEvents attribute,
///   with the full RFC 3339 time and `specversion`, for readers of the CloudEvents AMQP
///   binding; a consumed message then has exactly the headers that were published.
///
/// Consuming reads every form whatever the profile, so services with different profiles share
/// exchanges and queues. The crate documentation lists what each profile writes.
///
/// ```
/// use event_amqp::WireProfile;
///
/// let both = WireProfile::GO_MICRO | WireProfile::CLOUDEVENTS;
/// assert_eq!(both.to_string(), "go-micro,cloudevents");
/// assert_eq!("go-micro,cloudevents".parse::<WireProfile>()?, both);
/// assert!(both.contains(WireProfile::GO_MICRO));
/// assert_eq!(WireProfile::default(), WireProfile::LEAN);
/// assert!("kafka".parse::<WireProfile>().is_err());
/// # Ok::<(), event_amqp::AmqpConfigError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct WireProfile {
    go_micro: bool,
    cloudevents: bool,
}

impl WireProfile {
    /// Each fact once, in its AMQP property where there is one (the default; `wire=lean`).
    pub const LEAN: WireProfile = WireProfile {
        go_micro: false,
        cloudevents: false,
    };
    /// Adds go-micro's headers `Content-Type`, `Micro-ID` and `Micro-Topic`
    /// (`wire=go-micro`).
    pub const GO_MICRO: WireProfile = WireProfile {
        go_micro: true,
        cloudevents: false,
    };
    /// Adds a `cloudEvents_*` header for every CloudEvents attribute, with the full time and
    /// `specversion` (`wire=cloudevents`).
    pub const CLOUDEVENTS: WireProfile = WireProfile {
        go_micro: false,
        cloudevents: true,
    };

    /// This profile with what `other` adds too (the same as `self | other`).
    #[must_use]
    pub const fn with(self, other: WireProfile) -> WireProfile {
        WireProfile {
            go_micro: self.go_micro || other.go_micro,
            cloudevents: self.cloudevents || other.cloudevents,
        }
    }

    /// Whether this profile adds everything `other` adds (every profile contains
    /// [`LEAN`](Self::LEAN)).
    pub const fn contains(self, other: WireProfile) -> bool {
        (self.go_micro || !other.go_micro) && (self.cloudevents || !other.cloudevents)
    }
}

impl BitOr for WireProfile {
    type Output = WireProfile;

    fn bitor(self, other: WireProfile) -> WireProfile {
        self.with(other)
    }
}

impl BitOrAssign for WireProfile {
    fn bitor_assign(&mut self, other: WireProfile) {
        *self = self.with(other);
    }
}

/// The `wire` URL value: `lean`, or the added profiles separated by commas.
impl fmt::Display for WireProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.go_micro, self.cloudevents) {
            (false, false) => f.write_str("lean"),
            (true, false) => f.write_str("go-micro"),
            (false, true) => f.write_str("cloudevents"),
            (true, true) => f.write_str("go-micro,cloudevents"),
        }
    }
}

/// Reads the `wire` URL value: `lean`, `go-micro`, `cloudevents`, or several separated by
/// commas (`go-micro,cloudevents`; `lean` adds nothing).
impl FromStr for WireProfile {
    type Err = AmqpConfigError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let invalid = || AmqpConfigError::InvalidValue {
            name: "wire",
            value: value.to_owned(),
            expected: WIRE_EXPECTED,
        };
        let mut profile = WireProfile::LEAN;
        for part in value.split(',') {
            profile |= match part.trim() {
                "lean" => WireProfile::LEAN,
                "go-micro" => WireProfile::GO_MICRO,
                "cloudevents" => WireProfile::CLOUDEVENTS,
                _ => return Err(invalid()),
            };
        }
        Ok(profile)
    }
}

fn starts_with_ignore_case(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len()
        && name.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

fn short(what: &'static str, name: &str) -> Result<ShortString, AmqpBackendError> {
    ShortString::try_new(name).map_err(|_| AmqpBackendError::NameTooLong {
        what,
        name: name.chars().take(64).collect(),
        len: name.len(),
    })
}

/// A property value, if it fits (properties are short strings: at most 255 bytes of UTF-8).
fn short_value(value: &HeaderValue) -> Option<ShortString> {
    value
        .to_str()
        .ok()
        .and_then(|s| ShortString::try_new(s).ok())
}

/// The `timestamp` property of a `ce_time` value: whole seconds since 1970, if it is an
/// RFC 3339 time in UTC from 1970 on.
fn seconds(value: &HeaderValue) -> Option<u64> {
    let time = humantime::parse_rfc3339(value.to_str().ok()?).ok()?;
    time.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|since| since.as_secs())
}

/// The AMQP binding's name for the `ce_X` header `name` (`cloudEvents_X`), unless it would
/// not fit in a short string (a name that came in as `ce-X` or `ce_X`): then `ce_X`, which
/// receiving reads first.
fn cloudevents_header(name: &str) -> Result<ShortString, AmqpBackendError> {
    let attribute = &name["ce_".len()..];
    let mut wire = String::with_capacity(CLOUDEVENTS_PREFIX.len() + attribute.len());
    wire.push_str(CLOUDEVENTS_PREFIX);
    wire.push_str(attribute);
    match ShortString::try_new(wire) {
        Ok(wire) => Ok(wire),
        Err(_) => short("header name", name),
    }
}

/// A fact that has an AMQP property (and `ce_specversion`, which the lean profile leaves out).
#[derive(Clone, Copy)]
enum Fact {
    Id,
    Type,
    Source,
    Time,
    SpecVersion,
    ContentType,
    Correlation,
}

impl Fact {
    const COUNT: usize = 7;

    /// The fact header `name` carries, and whether in the form its property replaces: `ce_X`
    /// for a CloudEvents attribute. The other CloudEvents forms are read into the same
    /// attribute, so they count as values of it, but stay headers as they are.
    fn of(name: &str) -> Option<(Fact, bool)> {
        // the spellings the framework's publishers write, each a single comparison
        let exact = match name {
            names::CE_ID => Some(Fact::Id),
            names::CE_TYPE => Some(Fact::Type),
            names::CE_SOURCE => Some(Fact::Source),
            names::CE_TIME => Some(Fact::Time),
            names::CE_SPECVERSION => Some(Fact::SpecVersion),
            names::CONTENT_TYPE => Some(Fact::ContentType),
            names::CORRELATION_ID => Some(Fact::Correlation),
            _ => None,
        };
        if let Some(fact) = exact {
            return Some((fact, true));
        }
        // any other spelling, in any case
        if let Some((rank, attribute)) = cloudevents_form(name) {
            let fact = [
                ("id", Fact::Id),
                ("type", Fact::Type),
                ("source", Fact::Source),
                ("time", Fact::Time),
                ("specversion", Fact::SpecVersion),
            ]
            .into_iter()
            .find(|(known, _)| attribute.eq_ignore_ascii_case(known))?
            .1;
            return Some((fact, rank == 0));
        }
        if name.eq_ignore_ascii_case(names::CONTENT_TYPE) {
            Some((Fact::ContentType, true))
        } else if name.eq_ignore_ascii_case(names::CORRELATION_ID) {
            Some((Fact::Correlation, true))
        } else {
            None
        }
    }
}

/// The values a message has for one [`Fact`].
#[derive(Clone, Copy, Default)]
struct Values<'a> {
    count: u8,
    first: Option<&'a HeaderValue>,
    /// Whether the first value is in the form the property replaces.
    movable: bool,
}

/// Properties and header table of `message` published to `topic` in `profile`.
pub(crate) fn to_amqp(
    topic: &str,
    message: &Message,
    profile: WireProfile,
) -> Result<BasicProperties, AmqpBackendError> {
    let headers = &message.headers;
    // which facts have a single value, in the form their property can carry alone
    let mut facts = [Values::default(); Fact::COUNT];
    let mut has_micro_id = false;
    for (name, value) in headers.iter() {
        let name = name.as_str();
        if let Some((fact, movable)) = Fact::of(name) {
            let values = &mut facts[fact as usize];
            if values.count == 0 {
                values.first = Some(value);
                values.movable = movable;
            }
            values.count = values.count.saturating_add(1);
        } else if name.eq_ignore_ascii_case(names::MICRO_ID) {
            has_micro_id = true;
        }
    }
    let single = |fact: Fact| {
        let values = facts[fact as usize];
        values.first.filter(|_| values.count == 1 && values.movable)
    };

    // `carried[fact]`: its property carries the fact (or nothing needs to), so its header is
    // written only by a profile that adds it
    let mut carried = [false; Fact::COUNT];
    let mut props = BasicProperties::default().with_delivery_mode(2);
    // a Micro-ID of the message's own would be read as the id before the property
    if !has_micro_id && let Some(v) = single(Fact::Id).and_then(short_value) {
        props = props.with_message_id(v);
        carried[Fact::Id as usize] = true;
    }
    if let Some(v) = single(Fact::Type).and_then(short_value) {
        props = props.with_type(v);
        carried[Fact::Type as usize] = true;
    }
    if let Some(v) = single(Fact::Source).and_then(short_value) {
        props = props.with_app_id(v);
        carried[Fact::Source as usize] = true;
    }
    if let Some(secs) = single(Fact::Time).and_then(seconds) {
        props = props.with_timestamp(secs);
        carried[Fact::Time as usize] = true;
    }
    if let Some(v) = single(Fact::ContentType).and_then(short_value) {
        props = props.with_content_type(v);
        carried[Fact::ContentType as usize] = true;
    }
    carried[Fact::SpecVersion as usize] =
        single(Fact::SpecVersion).is_some_and(|v| v.as_bytes() == SPECVERSION);
    // left out when it only repeats the message id in `message_id` (the first message of a
    // chain): the consumer's context and tracing span take the id for a missing one
    let correlation = single(Fact::Correlation);
    if carried[Fact::Id as usize] && correlation.is_some_and(|c| Some(c) == single(Fact::Id)) {
        carried[Fact::Correlation as usize] = true;
    } else if let Some(v) = correlation.and_then(short_value) {
        props = props.with_correlation_id(v);
        carried[Fact::Correlation as usize] = true;
    }

    let mut table: BTreeMap<ShortString, AMQPValue> = BTreeMap::new();
    for (name, value) in headers.iter() {
        let name = name.as_str();
        let wire: ShortString = match Fact::of(name) {
            Some((fact, _)) if carried[fact as usize] => match fact {
                Fact::ContentType if profile.go_micro => ShortString::from(GO_MICRO_CONTENT_TYPE),
                Fact::ContentType | Fact::Correlation => continue,
                // a carried attribute is in the `ce_` form
                _ if profile.cloudevents => cloudevents_header(name)?,
                _ => continue,
            },
            Some((Fact::ContentType, _)) => ShortString::from(GO_MICRO_CONTENT_TYPE),
            _ if starts_with_ignore_case(name, "ce_") => cloudevents_header(name)?,
            // written below from the topic and the key
            _ if name.eq_ignore_ascii_case(names::MICRO_TOPIC)
                || name.eq_ignore_ascii_case(KEY_HEADER) =>
            {
                continue;
            }
            // RabbitMQ's to set (quorum queues); one written by a producer would set the
            // consumer's attempt number and cut its retries short
            _ if name.eq_ignore_ascii_case(DELIVERY_COUNT) => continue,
            _ => short("header name", name)?,
        };
        push(&mut table, wire, long(value.as_bytes()));
    }
    if profile.go_micro {
        if !has_micro_id && let Some(id) = headers.message_id_value() {
            push(
                &mut table,
                ShortString::from(names::MICRO_ID),
                long(id.as_bytes()),
            );
        }
        push(
            &mut table,
            ShortString::from(names::MICRO_TOPIC),
            long(topic.as_bytes()),
        );
    }
    if let Some(key) = &message.key {
        push(&mut table, ShortString::from(KEY_HEADER), long(key));
    }
    if !table.is_empty() {
        props = props.with_headers(FieldTable::from(table));
    }
    Ok(props)
}

fn long(bytes: &[u8]) -> AMQPValue {
    AMQPValue::LongString(LongString::from(bytes))
}

/// Adds a value; a name that is already present collects its values in a field array.
fn push(table: &mut BTreeMap<ShortString, AMQPValue>, name: ShortString, value: AMQPValue) {
    use std::collections::btree_map::Entry;
    match table.entry(name) {
        Entry::Vacant(slot) => {
            slot.insert(value);
        }
        Entry::Occupied(mut slot) => match slot.get_mut() {
            AMQPValue::FieldArray(values) => values.push(value),
            first => {
                let first = std::mem::replace(first, AMQPValue::Void);
                *slot.get_mut() = AMQPValue::FieldArray(FieldArray::from(vec![first, value]));
            }
        },
    }
}

/// A consumed message: what the delivery loop sees, and its attempt number.
pub(crate) struct Received {
    pub(crate) message: Message,
    pub(crate) attempt: u32,
}

/// Reads a consumed AMQP message back into a [`Message`].
pub(crate) fn from_amqp(
    routing_key: &str,
    redelivered: bool,
    props: &BasicProperties,
    payload: Vec<u8>,
) -> Received {
    let empty = FieldTable::default();
    let table = props.headers().as_ref().unwrap_or(&empty);
    // room for the table and the six properties `fill_from_properties` may add, so that the
    // vector never grows
    let mut headers = Headers::with_capacity(table.inner().len() + 6);
    let mut key = None;
    let mut delivery_count = None;
    read_cloudevents(table, &mut headers);
    for (wire, value) in table {
        let wire = wire.as_str();
        if cloudevents_form(wire).is_some() {
            continue;
        }
        if wire.eq_ignore_ascii_case(KEY_HEADER) {
            key = Some(text(value).into_bytes());
            continue;
        }
        if wire.eq_ignore_ascii_case(DELIVERY_COUNT) {
            delivery_count = integer(value);
        }
        if wire.eq_ignore_ascii_case(names::MICRO_ID) {
            let micro_id = text(value);
            if headers.get_all(names::CE_ID).any(|id| *id == micro_id) {
                continue;
            }
            // a `go-micro` profile message: the id in `message_id` and in `Micro-ID`, and in
            // no CloudEvents header
            if !headers.contains(names::CE_ID)
                && props
                    .message_id()
                    .as_ref()
                    .is_some_and(|id| id.as_str().as_bytes() == micro_id.as_bytes())
            {
                headers.append(names::CE_ID, micro_id);
                continue;
            }
        }
        if wire.eq_ignore_ascii_case(names::MICRO_TOPIC)
            && text(value).as_bytes() == routing_key.as_bytes()
        {
            continue;
        }
        let name = HeaderName::from_wire(wire);
        for v in values(value) {
            headers.append(name.clone(), text(v));
        }
    }
    fill_from_properties(&mut headers, props);
    let attempt = match delivery_count {
        // RabbitMQ counts from 0; a negative count is not RabbitMQ's, and reads as none
        Some(count) if count < 0 => 1,
        Some(count) => u32::try_from(count).map_or(u32::MAX, |c| c.saturating_add(1)),
        None if redelivered => 2,
        None => 1,
    };
    Received {
        message: Message {
            headers,
            key,
            payload: Bytes::from(payload),
        },
        attempt,
    }
}

/// The rank of the CloudEvents form `wire` is written in (its index in [`CLOUDEVENTS_FORMS`])
/// and the attribute it names; `None` for any other header.
fn cloudevents_form(wire: &str) -> Option<(usize, &str)> {
    if !wire.as_bytes().first()?.eq_ignore_ascii_case(&b'c') {
        return None;
    }
    CLOUDEVENTS_FORMS
        .iter()
        .enumerate()
        .find_map(|(rank, prefix)| {
            // the prefixes are ASCII, so the attribute starts at a character boundary
            (wire.len() > prefix.len() && starts_with_ignore_case(wire, prefix))
                .then(|| (rank, &wire[prefix.len()..]))
        })
}

/// The `ce_` header an attribute is read into.
fn cloudevents_name(attribute: &str) -> HeaderName {
    match CLOUDEVENTS_KNOWN
        .iter()
        .find(|name| name["ce_".len()..].eq_ignore_ascii_case(attribute))
    {
        Some(name) => HeaderName::from_wire(name),
        None => format!("ce_{}", attribute.to_ascii_lowercase()).into_header_name(),
    }
}

/// Appends the CloudEvents attributes of `table` as `ce_` headers, best form first (see the
/// module documentation): a value an earlier form of the same attribute carries is not
/// repeated.
fn read_cloudevents(table: &FieldTable, headers: &mut Headers) {
    let mut ranks = [false; CLOUDEVENTS_FORMS.len()];
    for wire in table.inner().keys() {
        if let Some((rank, _)) = cloudevents_form(wire.as_str()) {
            ranks[rank] = true;
        }
    }
    for rank in (0..ranks.len()).filter(|&rank| ranks[rank]) {
        for (wire, value) in table {
            let Some((form, attribute)) = cloudevents_form(wire.as_str()) else {
                continue;
            };
            if form != rank {
                continue;
            }
            if is_empty_array(value) {
                // no value for the attribute: its property (`message_id`, `type`, ...) or a
                // later form may have one
                continue;
            }
            let name = cloudevents_name(attribute);
            let earlier = headers.len();
            for v in values(value) {
                let v = text(v);
                if !headers
                    .iter()
                    .take(earlier)
                    .any(|(n, seen)| *n == name && *seen == v)
                {
                    headers.append(name.clone(), v);
                }
            }
        }
    }
}

/// The values of a header table entry: each element of a field array, else the value itself
/// (an empty array too, which reads as `[]`: the header is there, with nothing in it).
fn values(value: &AMQPValue) -> &[AMQPValue] {
    match value {
        AMQPValue::FieldArray(values) if !values.as_slice().is_empty() => values.as_slice(),
        value => std::slice::from_ref(value),
    }
}

fn is_empty_array(value: &AMQPValue) -> bool {
    matches!(value, AMQPValue::FieldArray(values) if values.as_slice().is_empty())
}

fn fill_from_properties(headers: &mut Headers, props: &BasicProperties) {
    // names made once, so that no read looks them up; values copied in place where they fit.
    // Presence is tested by value, not as text: a header that is not UTF-8 is still there,
    // and the property must not be added beside it again on every hop
    const CONTENT_TYPE: HeaderName = HeaderName::from_static(names::CONTENT_TYPE);
    const CE_ID: HeaderName = HeaderName::from_static(names::CE_ID);
    const CE_TYPE: HeaderName = HeaderName::from_static(names::CE_TYPE);
    const CE_SOURCE: HeaderName = HeaderName::from_static(names::CE_SOURCE);
    const CE_TIME: HeaderName = HeaderName::from_static(names::CE_TIME);
    const CORRELATION_ID: HeaderName = HeaderName::from_static(names::CORRELATION_ID);
    if let Some(v) = props.content_type()
        && headers.content_type_value().is_none()
    {
        headers.append_copied(CONTENT_TYPE, v.as_str().as_bytes());
    }
    if let Some(v) = props.message_id()
        && headers.message_id_value().is_none()
    {
        headers.append_copied(CE_ID, v.as_str().as_bytes());
    }
    if let Some(v) = props.kind()
        && headers.message_type_value().is_none()
    {
        headers.append_copied(CE_TYPE, v.as_str().as_bytes());
    }
    if let Some(v) = props.app_id()
        && !headers.contains(names::CE_SOURCE)
    {
        headers.append_copied(CE_SOURCE, v.as_str().as_bytes());
    }
    if let Some(secs) = props.timestamp()
        && !headers.contains(names::CE_TIME)
    {
        match event_core::backend::rfc3339_millis(*secs, 0) {
            Some(text) => headers.append_copied(CE_TIME, &text),
            // RFC 3339 ends at year 9999; a larger value (a producer writing milliseconds, or
            // garbage) is kept as the number it is rather than turned into a date
            None => headers.append(CE_TIME, secs.to_string()),
        }
    }
    if let Some(v) = props.correlation_id()
        && !headers.contains(names::CORRELATION_ID)
    {
        headers.append_copied(CORRELATION_ID, v.as_str().as_bytes());
    }
}

fn integer(value: &AMQPValue) -> Option<i64> {
    Some(match value {
        AMQPValue::ShortShortInt(v) => i64::from(*v),
        AMQPValue::ShortShortUInt(v) => i64::from(*v),
        AMQPValue::ShortInt(v) => i64::from(*v),
        AMQPValue::ShortUInt(v) => i64::from(*v),
        AMQPValue::LongInt(v) => i64::from(*v),
        AMQPValue::LongUInt(v) => i64::from(*v),
        AMQPValue::LongLongInt(v) => *v,
        _ => return None,
    })
}

/// A header value from any AMQP value.
fn text(value: &AMQPValue) -> HeaderValue {
    match value {
        AMQPValue::LongString(s) => HeaderValue::from_bytes(Bytes::copy_from_slice(s.as_bytes())),
        AMQPValue::ShortString(s) => HeaderValue::from(s.as_str()),
        AMQPValue::ByteArray(b) => HeaderValue::from_bytes(Bytes::copy_from_slice(b.as_slice())),
        AMQPValue::Void => HeaderValue::default(),
        AMQPValue::FieldArray(_) | AMQPValue::FieldTable(_) => {
            HeaderValue::from(json(value).to_string())
        }
        AMQPValue::Boolean(b) => HeaderValue::from_static(if *b { "true" } else { "false" }),
        AMQPValue::Float(f) => HeaderValue::from(f.to_string()),
        AMQPValue::Double(f) => HeaderValue::from(f.to_string()),
        AMQPValue::DecimalValue(d) => HeaderValue::from(decimal(d.value, d.scale)),
        AMQPValue::Timestamp(t) => HeaderValue::from(t.to_string()),
        other => match integer(other) {
            Some(n) => HeaderValue::from(n.to_string()),
            None => HeaderValue::from(format!("{other:?}")),
        },
    }
}

fn decimal(value: u32, scale: u8) -> String {
    let digits = value.to_string();
    let scale = usize::from(scale);
    if scale == 0 {
        return digits;
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{int}.{frac}")
}

/// Nested values (RabbitMQ's `x-death`, arrays inside arrays) as JSON.
fn json(value: &AMQPValue) -> serde_json::Value {
    use serde_json::Value;
    match value {
        AMQPValue::FieldTable(t) => Value::Object(
            t.inner()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), json(v)))
                .collect(),
        ),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(json).collect()),
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::Void => Value::Null,
        AMQPValue::Float(f) => {
            serde_json::Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number)
        }
        AMQPValue::Double(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        AMQPValue::Timestamp(t) => Value::from(*t),
        other => match integer(other) {
            Some(n) => Value::from(n),
            None => Value::String(String::from_utf8_lossy(text(other).as_bytes()).into_owned()),
        },
    }
}

fn render_tag(position: &Position, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    write!(f, "delivery tag {}", position.number())?;
    if position.is_redelivered() {
        f.write_str(" (redelivered)")?;
    }
    Ok(())
}

fn render_confirmed(_: &Position, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    f.write_str("confirmed")
}

static DELIVERY_TAG: PositionKind = PositionKind::new("amqp delivery tag", render_tag)
    .with_attribute("messaging.rabbitmq.message.delivery_tag");

static CONFIRMED: PositionKind = PositionKind::new("amqp confirmed", render_confirmed);

/// A consumed message: its channel-scoped delivery tag, and whether RabbitMQ flagged it as
/// redelivered.
pub(crate) fn delivered(delivery_tag: u64, redelivered: bool) -> Position {
    Position::new(&DELIVERY_TAG, delivery_tag).redelivered(redelivered)
}

/// A published message the broker confirmed; AMQP reports no place for it.
pub(crate) fn confirmed() -> Position {
    Position::new(&CONFIRMED, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;
    use std::time::Duration;

    use event_core::Context;

    const ID: &str = "0190f4c2-7b1e-7c3a-9d55-3b1f2a9c0e11";
    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const BOTH: WireProfile = WireProfile::GO_MICRO.with(WireProfile::CLOUDEVENTS);
    const PROFILES: [WireProfile; 4] = [
        WireProfile::LEAN,
        WireProfile::GO_MICRO,
        WireProfile::CLOUDEVENTS,
        BOTH,
    ];

    fn table(props: &BasicProperties) -> &BTreeMap<ShortString, AMQPValue> {
        props.headers().as_ref().unwrap().inner()
    }

    /// The names of the header table, in order (none when there is no table).
    fn header_names(props: &BasicProperties) -> Vec<&str> {
        props
            .headers()
            .as_ref()
            .map(|t| t.inner().keys().map(ShortString::as_str).collect())
            .unwrap_or_default()
    }

    /// A long-string entry of the header table, as text.
    fn header(props: &BasicProperties, name: &str) -> String {
        match table(props).get(name) {
            Some(AMQPValue::LongString(s)) => String::from_utf8(s.as_bytes().to_vec()).unwrap(),
            other => panic!("{name}: {other:?}"),
        }
    }

    /// What a typed publisher sends as the first message of a chain, with a trace context
    /// and metadata.
    fn typed_message() -> Message {
        Message::new(&b"\x0a\x03abc"[..])
            .with_header("ce_specversion", "1.0")
            .with_header("ce_id", ID)
            .with_header("ce_source", "orders")
            .with_header("ce_type", "shop.v1.OrderPlaced")
            .with_header("ce_time", "2026-08-20T12:34:56.789Z")
            .with_header("content-type", "application/protobuf")
            .with_header("correlation-id", ID)
            .with_header("traceparent", TRACEPARENT)
            .with_header("tenant", "t-42")
            .with_header("tenant", "t-43")
    }

    /// The lean properties of [`typed_message`], without a header table: no `correlation_id`,
    /// which only repeats the message id.
    fn lean_properties() -> BasicProperties {
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(ID.into())
            .with_type("shop.v1.OrderPlaced".into())
            .with_app_id("orders".into())
            .with_timestamp(1_787_229_296)
            .with_content_type("application/protobuf".into())
    }

    fn consume(props: &BasicProperties, payload: &[u8]) -> Message {
        from_amqp("orders.placed", false, props, payload.to_vec()).message
    }

    /// Headers as (lower-case name, value), sorted: what a consumer can tell apart.
    fn sorted(headers: &Headers) -> Vec<(String, HeaderValue)> {
        let mut all: Vec<_> = headers
            .iter()
            .map(|(n, v)| (n.as_str().to_ascii_lowercase(), v.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    #[test]
    fn lean_writes_each_fact_once_in_its_property() {
        let message = typed_message().with_key("k-1");
        let props = to_amqp("orders.placed", &message, WireProfile::LEAN).unwrap();
        let mut expected_table = FieldTable::default();
        expected_table.insert("traceparent".into(), long(TRACEPARENT.as_bytes()));
        expected_table.insert(
            "tenant".into(),
            AMQPValue::FieldArray(vec![long(b"t-42"), long(b"t-43")].into()),
        );
        expected_table.insert("x-event-key".into(), long(b"k-1"));
        // every property and header, and nothing else: no specversion, no go-micro or
        // CloudEvents copies
        assert_eq!(props, lean_properties().with_headers(expected_table));
    }

    #[test]
    fn lean_writes_no_header_table_when_every_fact_has_a_property() {
        let mut message = typed_message();
        message.headers.remove("traceparent");
        message.headers.remove("tenant");
        let props = to_amqp("orders.placed", &message, WireProfile::LEAN).unwrap();
        assert_eq!(props, lean_properties());
    }

    #[test]
    fn facts_in_another_case_go_to_their_properties_as_ours_do() {
        // the names the framework writes are matched exactly first; any other case still
        // names the same facts
        let message = Message::new(&b"\x0a\x03abc"[..])
            .with_header("CE_SpecVersion", "1.0")
            .with_header("CE_ID", ID)
            .with_header("Ce_Source", "orders")
            .with_header("ce_TYPE", "shop.v1.OrderPlaced")
            .with_header("CE_TIME", "2026-08-20T12:34:56.789Z")
            .with_header("Content-Type", "application/protobuf")
            .with_header("Correlation-ID", ID);
        let props = to_amqp("orders.placed", &message, WireProfile::LEAN).unwrap();
        assert_eq!(props, lean_properties());
    }

    #[test]
    fn lean_keeps_headers_for_what_has_no_property() {
        let message = Message::new("x")
            .with_header("ce_id", ID)
            .with_header("correlation-id", "0190f4c2-0000-7000-8000-000000000001")
            .with_header("causation-id", "0190f4c2-0000-7000-8000-000000000002")
            .with_header("tracestate", "vendor=1")
            .with_header("baggage", "user=ada")
            .with_header("ce_subject", "u-1")
            .with_header("ce_specversion", "0.3");
        let props = to_amqp("t", &message, WireProfile::LEAN).unwrap();
        assert_eq!(
            header_names(&props),
            [
                "baggage",
                "causation-id",
                "cloudEvents_specversion",
                "cloudEvents_subject",
                "tracestate"
            ]
        );
        assert_eq!(header(&props, "cloudEvents_specversion"), "0.3");
        assert_eq!(
            props.correlation_id().as_ref().map(ShortString::as_str),
            Some("0190f4c2-0000-7000-8000-000000000001"),
            "a correlation id of its own is kept"
        );
        let back = consume(&props, b"x");
        assert_eq!(sorted(&back.headers), sorted(&message.headers));
    }

    #[test]
    fn go_micro_adds_its_three_headers() {
        let message = typed_message().with_key("k-1");
        let lean = to_amqp("orders.placed", &message, WireProfile::LEAN).unwrap();
        let props = to_amqp("orders.placed", &message, WireProfile::GO_MICRO).unwrap();
        assert_eq!(
            header_names(&props),
            [
                "Content-Type",
                "Micro-ID",
                "Micro-Topic",
                "tenant",
                "traceparent",
                "x-event-key"
            ]
        );
        assert_eq!(header(&props, "Content-Type"), "application/protobuf");
        assert_eq!(header(&props, "Micro-ID"), ID);
        assert_eq!(header(&props, "Micro-Topic"), "orders.placed");
        let lean_table = table(&lean).clone();
        assert_eq!(
            props.clone().with_headers(FieldTable::from(lean_table)),
            lean,
            "the properties are lean's"
        );
        // a message that carries its own Micro-ID keeps it
        let forwarded = Message::new("x").with_header("Micro-ID", "9b5d0c4e");
        let props = to_amqp("t", &forwarded, WireProfile::GO_MICRO).unwrap();
        assert_eq!(header_names(&props), ["Micro-ID", "Micro-Topic"]);
        assert_eq!(header(&props, "Micro-ID"), "9b5d0c4e");
    }

    #[test]
    fn cloudevents_adds_every_attribute() {
        let message = typed_message().with_key("k-1");
        let props = to_amqp("orders.placed", &message, WireProfile::CLOUDEVENTS).unwrap();
        assert_eq!(
            header_names(&props),
            [
                "cloudEvents_id",
                "cloudEvents_source",
                "cloudEvents_specversion",
                "cloudEvents_time",
                "cloudEvents_type",
                "tenant",
                "traceparent",
                "x-event-key"
            ]
        );
        assert_eq!(header(&props, "cloudEvents_id"), ID);
        assert_eq!(header(&props, "cloudEvents_source"), "orders");
        assert_eq!(header(&props, "cloudEvents_specversion"), "1.0");
        assert_eq!(
            header(&props, "cloudEvents_time"),
            "2026-08-20T12:34:56.789Z"
        );
        assert_eq!(header(&props, "cloudEvents_type"), "shop.v1.OrderPlaced");
        let table = table(&props).clone();
        assert_eq!(
            props,
            lean_properties().with_headers(FieldTable::from(table))
        );
    }

    #[test]
    fn both_profiles_write_what_each_adds() {
        let message = typed_message().with_key("k-1");
        let props = to_amqp("orders.placed", &message, BOTH).unwrap();
        assert_eq!(
            header_names(&props),
            [
                "Content-Type",
                "Micro-ID",
                "Micro-Topic",
                "cloudEvents_id",
                "cloudEvents_source",
                "cloudEvents_specversion",
                "cloudEvents_time",
                "cloudEvents_type",
                "tenant",
                "traceparent",
                "x-event-key"
            ]
        );
        // it only repeats the message id: left out in every profile
        assert_eq!(*props.correlation_id(), None);
        assert_eq!(*props.timestamp(), Some(1_787_229_296));
    }

    #[test]
    fn every_profile_is_consumed_with_the_same_facts() {
        let message = typed_message().with_key("k-1");
        let sent = Context::from_headers(&message.headers);
        for profile in PROFILES {
            let props = to_amqp("orders.placed", &message, profile).unwrap();
            let back = from_amqp("orders.placed", false, &props, message.payload.to_vec());
            assert_eq!(back.attempt, 1);
            let (got, h) = (&back.message, &back.message.headers);
            assert_eq!(h.message_id(), Some(ID), "{profile}: {h:?}");
            assert_eq!(h.get_all("ce_id").count(), 1, "{profile}: {h:?}");
            assert_eq!(h.message_type(), Some("shop.v1.OrderPlaced"), "{profile}");
            assert_eq!(h.source(), Some("orders"), "{profile}");
            assert_eq!(h.content_type(), Some("application/protobuf"), "{profile}");
            assert_eq!(h.get_all("content-type").count(), 1, "{profile}: {h:?}");
            assert_eq!(h.get_str("traceparent"), Some(TRACEPARENT), "{profile}");
            let tenants: Vec<_> = h.get_all("tenant").map(|v| v.to_str().unwrap()).collect();
            assert_eq!(tenants, ["t-42", "t-43"], "{profile}");
            assert!(
                !h.contains("Micro-ID") && !h.contains("Micro-Topic"),
                "{h:?}"
            );
            assert_eq!(got.key.as_deref(), Some(&b"k-1"[..]), "{profile}");
            assert_eq!(got.payload, message.payload, "{profile}");
            // the same context as the message published: correlation, causation, trace,
            // metadata
            assert_eq!(Context::from_headers(h), sent, "{profile}");
            assert_eq!(Context::from_headers(h).correlation_id(), Some(ID));
            let time = humantime::parse_rfc3339("2026-08-20T12:34:56.789Z").unwrap();
            // a correlation id that only repeats the message id is left out in every profile
            assert!(!h.contains("correlation-id"), "{profile}: {h:?}");
            let mut published = message.headers.clone();
            published.remove("correlation-id");
            if profile.contains(WireProfile::CLOUDEVENTS) {
                // exactly the other headers that were published
                assert_eq!(sorted(h), sorted(&published), "{profile}");
                assert_eq!(h.time(), Some(time));
            } else {
                // the time at second resolution, no specversion
                assert_eq!(h.get_str("ce_time"), Some("2026-08-20T12:34:56.000Z"));
                assert_eq!(h.time(), Some(time - Duration::from_millis(789)));
                assert!(!h.contains("ce_specversion"), "{h:?}");
                let mut expected = published;
                for name in ["ce_specversion", "ce_time"] {
                    expected.remove(name);
                }
                expected.append("ce_time", "2026-08-20T12:34:56.000Z");
                assert_eq!(sorted(h), sorted(&expected), "{profile}");
            }
        }
    }

    #[test]
    fn a_consumed_lean_message_has_the_context_of_the_old_wire() {
        // the first message of a chain (correlation id = its id) and a follow-up (its own
        // correlation and causation ids), both with trace and metadata
        let follow_up = Message::new("x")
            .with_header("ce_id", "0190f4c2-0000-7000-8000-00000000000f")
            .with_header("ce_type", "shop.v1.OrderShipped")
            .with_header("correlation-id", ID)
            .with_header("causation-id", ID)
            .with_header("traceparent", TRACEPARENT)
            .with_header("tenant", "t-42");
        for message in [typed_message(), follow_up] {
            let old = consume(&old_wire(&message), b"x");
            let lean = consume(
                &to_amqp("orders.placed", &message, WireProfile::LEAN).unwrap(),
                b"x",
            );
            assert_eq!(
                Context::from_headers(&lean.headers),
                Context::from_headers(&old.headers),
                "{:?}",
                message.headers
            );
            assert_eq!(
                Context::from_headers(&lean.headers),
                Context::from_headers(&message.headers)
            );
        }
    }

    /// What the previous versions published for `message` (every name, every copy): the
    /// go-micro and CloudEvents profiles, plus the `correlation-id` header and property.
    fn old_wire(message: &Message) -> BasicProperties {
        let mut props = to_amqp("orders.placed", message, BOTH).unwrap();
        let mut table = props.headers().clone().unwrap_or_default();
        if let Some(correlation) = message.headers.get("correlation-id") {
            table.insert("correlation-id".into(), long(correlation.as_bytes()));
            props = props.with_correlation_id(correlation.to_str().unwrap().into());
        }
        props.with_headers(table)
    }

    #[test]
    fn old_messages_and_go_micro_ones_are_read_with_id_type_and_time() {
        let message = typed_message();
        let old = consume(&old_wire(&message), b"x");
        assert_eq!(old.headers.message_id(), Some(ID));
        assert_eq!(old.headers.message_type(), Some("shop.v1.OrderPlaced"));
        assert_eq!(
            old.headers.get_str("ce_time"),
            Some("2026-08-20T12:34:56.789Z")
        );
        assert_eq!(sorted(&old.headers), sorted(&message.headers));
        // the go-micro profile alone: the id in `message_id` and `Micro-ID` is read as `ce_id`
        let props = to_amqp("orders.placed", &message, WireProfile::GO_MICRO).unwrap();
        let h = consume(&props, b"x").headers;
        assert_eq!(h.get_str("ce_id"), Some(ID), "{h:?}");
        assert!(!h.contains("Micro-ID"), "{h:?}");
    }

    /// Publishes `message` lean and consumes it back.
    fn lean_round_trip(message: &Message) -> (BasicProperties, Message) {
        let props = to_amqp("t", message, WireProfile::LEAN).unwrap();
        let back = from_amqp("t", false, &props, Vec::new()).message;
        (props, back)
    }

    #[test]
    fn a_value_that_does_not_fit_its_property_goes_to_the_header() {
        let long_text = "x".repeat(256);
        let not_text: &[u8] = &[0xff, 0xfe];
        for (name, wire) in [
            ("ce_id", "cloudEvents_id"),
            ("ce_type", "cloudEvents_type"),
            ("ce_source", "cloudEvents_source"),
            ("ce_time", "cloudEvents_time"),
            ("content-type", "Content-Type"),
            ("correlation-id", "correlation-id"),
        ] {
            for value in [long_text.as_bytes(), not_text] {
                let message = Message::new("x")
                    .with_header(name, HeaderValue::copy_from_slice(value))
                    .with_header("tenant", "t");
                let (props, back) = lean_round_trip(&message);
                assert_eq!(header_names(&props), [wire, "tenant"], "{name}");
                assert_eq!(
                    table(&props).get(wire),
                    Some(&long(value)),
                    "{name}: the value as it is"
                );
                let empty = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_headers(props.headers().clone().unwrap());
                assert_eq!(props, empty, "{name}: no property");
                assert_eq!(
                    back.headers.get(name).map(HeaderValue::as_bytes),
                    Some(value),
                    "{name}: nothing lost"
                );
            }
        }
    }

    #[test]
    fn a_time_that_is_not_rfc_3339_in_utc_goes_to_the_header() {
        for time in [
            "yesterday",
            "2026-08-20T14:34:56+02:00",
            "2026-08-20 12:34:56",
            "1969-12-31T23:59:59Z",
        ] {
            let message = Message::new("x").with_header("ce_time", time);
            let (props, back) = lean_round_trip(&message);
            assert_eq!(*props.timestamp(), None, "{time}");
            assert_eq!(header(&props, "cloudEvents_time"), time);
            assert_eq!(back.headers.get_str("ce_time"), Some(time));
        }
        // whole seconds and any fraction are RFC 3339: the property, in seconds
        for (time, secs) in [
            ("2026-08-20T12:34:56Z", 1_787_229_296),
            ("2026-08-20T12:34:56.999999Z", 1_787_229_296),
            ("1970-01-01T00:00:00Z", 0),
        ] {
            let (props, back) = lean_round_trip(&Message::new("x").with_header("ce_time", time));
            assert_eq!(*props.timestamp(), Some(secs), "{time}");
            assert!(props.headers().is_none(), "{time}");
            assert_eq!(
                back.headers.time(),
                SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs)),
                "{time}"
            );
        }
    }

    #[test]
    fn an_attribute_with_several_values_stays_in_the_headers() {
        let message = Message::new("x")
            .with_header("ce_type", "a.v1.A")
            .with_header("ce_type", "b.v1.B")
            .with_header("content-type", "application/protobuf")
            .with_header("Content-Type", "application/json")
            .with_header("ce_source", "s")
            .with_header("ce-source", "other");
        let (props, back) = lean_round_trip(&message);
        assert_eq!(*props.kind(), None);
        assert_eq!(*props.content_type(), None);
        assert_eq!(*props.app_id(), None);
        assert_eq!(
            header_names(&props),
            [
                "Content-Type",
                "ce-source",
                "cloudEvents_source",
                "cloudEvents_type"
            ]
        );
        let types: Vec<_> = back
            .headers
            .get_all("ce_type")
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(types, ["a.v1.A", "b.v1.B"], "in order");
        let content_types: Vec<_> = back
            .headers
            .get_all("content-type")
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(content_types, ["application/protobuf", "application/json"]);
        assert_eq!(back.headers.source(), Some("s"), "the `ce_` value first");
    }

    #[test]
    fn an_id_beside_a_micro_id_of_its_own_stays_in_the_headers() {
        let message = Message::new("x")
            .with_header("ce_id", ID)
            .with_header("Micro-ID", "9b5d0c4e");
        let (props, back) = lean_round_trip(&message);
        assert_eq!(*props.message_id(), None);
        assert_eq!(header_names(&props), ["Micro-ID", "cloudEvents_id"]);
        assert_eq!(back.headers.message_id(), Some(ID));
        assert_eq!(back.headers.get_str("Micro-ID"), Some("9b5d0c4e"));
    }

    #[test]
    fn a_specversion_other_than_1_0_is_kept() {
        let (props, back) =
            lean_round_trip(&Message::new("x").with_header("ce_specversion", "0.3"));
        assert_eq!(header_names(&props), ["cloudEvents_specversion"]);
        assert_eq!(back.headers.get_str("ce_specversion"), Some("0.3"));
        let (props, back) =
            lean_round_trip(&Message::new("x").with_header("ce_specversion", "1.0"));
        assert!(props.headers().is_none());
        assert!(!back.headers.contains("ce_specversion"));
    }

    #[test]
    fn a_micro_id_is_read_as_the_id_only_when_it_repeats_message_id() {
        let with = |micro_id: &str, message_id: &str| {
            let props = BasicProperties::default()
                .with_headers(strings(&[("Micro-ID", micro_id)]))
                .with_message_id(message_id.into());
            from_amqp("t", false, &props, Vec::new()).message.headers
        };
        let h = with("m-1", "m-1");
        assert_eq!(sorted(&h), [("ce_id".to_owned(), HeaderValue::from("m-1"))]);
        let h = with("m-1", "client-made");
        assert_eq!(
            h.message_id(),
            Some("m-1"),
            "Micro-ID ranks before message_id"
        );
        assert!(!h.contains("ce_id"), "{h:?}");
    }

    /// The encoded size of the properties and header table (property flags included) of a
    /// typed `UserCreated` from service `signup` on `users.created`, as lapin serializes them
    /// into the content header frame: the numbers in the README's "RabbitMQ wire profiles".
    #[test]
    fn encoded_size_per_profile() {
        use event_proto::users::v1::UserCreated;
        let publisher = event_core::Publisher::<UserCreated>::new(
            Arc::new(event_core::memory::MemoryBroker::new()),
            "signup",
            "users.created",
        );
        let user = UserCreated {
            user_id: "u-1".into(),
            email: "ada@example.com".into(),
            display_name: "Ada".into(),
        };
        let mut trace = Headers::default();
        trace.append("traceparent", TRACEPARENT);
        let mut traced = Context::new();
        traced.set_trace(event_core::context::TraceContext::from_headers(&trace));
        let size = |message: &Message, profile: WireProfile| {
            let props = to_amqp("users.created", message, profile).unwrap();
            let encoded = lapin::protocol::basic::gen_properties(&props)(Vec::new().into())
                .expect("serialized");
            encoded.write.len()
        };
        let plain = publisher.encode(&user, None);
        let with_trace = publisher.encode(&user, Some(&traced));
        let old = |message: &Message| {
            let props = old_wire(message);
            lapin::protocol::basic::gen_properties(&props)(Vec::new().into())
                .expect("serialized")
                .write
                .len()
        };
        let measured: Vec<_> = PROFILES
            .iter()
            .map(|&p| (p.to_string(), size(&plain, p), size(&with_trace, p)))
            .collect();
        println!("bytes per profile (plain, with traceparent): {measured:?}");
        println!(
            "the previous wire: {} and {}",
            old(&plain),
            old(&with_trace)
        );
        assert_eq!(
            measured,
            [
                ("lean".to_owned(), 97, 173),
                ("go-micro".to_owned(), 219, 291),
                ("cloudevents".to_owned(), 307, 379),
                ("go-micro,cloudevents".to_owned(), 425, 497),
            ]
        );
        assert_eq!((old(&plain), old(&with_trace)), (518, 590));
    }

    // The three tests below keep what `fuzz/` (target `amqp_wire`) found; the inputs are in
    // fuzz/regressions/amqp_wire/.

    #[test]
    fn a_delivery_count_header_is_not_published() {
        let message = Message::new("x").with_header("x-delivery-count", "9");
        let props = to_amqp("t", &message, WireProfile::LEAN).expect("publish");
        assert!(props.headers().is_none(), "{props:?}");
        assert_eq!(from_amqp("t", false, &props, Vec::new()).attempt, 1);
    }

    #[test]
    fn a_negative_delivery_count_is_a_first_attempt() {
        for (count, attempt) in [(-1, 1), (-2, 1), (i64::MIN, 1), (0, 1), (3, 4)] {
            let mut t = FieldTable::default();
            t.insert("x-delivery-count".into(), AMQPValue::LongLongInt(count));
            let props = BasicProperties::default().with_headers(t);
            assert_eq!(
                from_amqp("t", false, &props, Vec::new()).attempt,
                attempt,
                "x-delivery-count {count}"
            );
        }
    }

    #[test]
    fn a_consumed_cloudevents_header_of_the_longest_name_can_be_published_again() {
        for prefix in ["ce-", "ce_"] {
            let name = format!("{prefix}{}", "a".repeat(252));
            let mut t = FieldTable::default();
            t.insert(name.as_str().into(), long(b"v"));
            let props = BasicProperties::default().with_headers(t);
            let got = from_amqp("t", false, &props, Vec::new()).message;
            let again = to_amqp("t", &got, WireProfile::LEAN).expect("published again");
            let back = from_amqp("t", false, &again, Vec::new()).message;
            assert_eq!(
                back.headers.get_str(&format!("ce_{}", "a".repeat(252))),
                Some("v"),
                "{prefix}"
            );
        }
    }

    #[test]
    fn a_property_is_not_added_again_beside_a_header_that_is_not_text() {
        let mut t = FieldTable::default();
        t.insert("cloudEvents_type".into(), long(&[0xff, 0x01]));
        t.insert("Content-Type".into(), long(&[0xff]));
        let props = BasicProperties::default()
            .with_headers(t)
            .with_type("users.v1.UserCreated".into())
            .with_content_type("application/protobuf".into());
        let once = from_amqp("t", false, &props, Vec::new()).message;
        let twice = from_amqp(
            "t",
            false,
            &to_amqp("t", &once, WireProfile::LEAN).expect("publish"),
            Vec::new(),
        )
        .message;
        assert_eq!(once.headers, twice.headers, "a fixpoint after one hop");
        assert_eq!(
            once.headers.get_all("ce_type").count(),
            1,
            "{:?}",
            once.headers
        );
        assert_eq!(
            once.headers.get_all("content-type").count(),
            1,
            "{:?}",
            once.headers
        );
    }

    #[test]
    fn go_micro_message_is_read_with_its_headers() {
        let mut t = FieldTable::default();
        t.insert("Content-Type".into(), long(b"application/protobuf"));
        t.insert("Micro-ID".into(), long(b"9b5d0c4e"));
        t.insert("Micro-Topic".into(), long(b"users.created"));
        t.insert("Traceparent".into(), long(b"00-abc-def-01"));
        let props = BasicProperties::default().with_headers(t);
        let got = from_amqp("users.created", true, &props, vec![1, 2]).message;
        assert_eq!(got.headers.content_type(), Some("application/protobuf"));
        assert_eq!(got.headers.message_id(), Some("9b5d0c4e"));
        assert_eq!(got.headers.get_str("traceparent"), Some("00-abc-def-01"));
        assert_eq!(got.headers.message_type(), None);
        // the routing key says it already
        assert!(!got.headers.contains("Micro-Topic"));
    }

    #[test]
    fn properties_fill_missing_headers_and_values_are_stringified() {
        let mut nested = FieldTable::default();
        nested.insert("queue".into(), AMQPValue::LongString("q".into()));
        nested.insert("count".into(), AMQPValue::LongLongInt(2));
        let mut t = FieldTable::default();
        t.insert("n".into(), AMQPValue::LongInt(-7));
        t.insert("flag".into(), AMQPValue::Boolean(true));
        t.insert("short".into(), AMQPValue::ShortString("s".into()));
        t.insert(
            "x-death".into(),
            AMQPValue::FieldArray(vec![AMQPValue::FieldTable(nested)].into()),
        );
        t.insert(
            "price".into(),
            AMQPValue::DecimalValue(lapin::types::DecimalValue { scale: 2, value: 5 }),
        );
        t.insert("x-delivery-count".into(), AMQPValue::LongLongInt(3));
        let props = BasicProperties::default()
            .with_headers(t)
            .with_content_type("application/json".into())
            .with_message_id("m-1".into())
            .with_type("users.v1.UserCreated".into())
            .with_app_id("legacy".into())
            .with_timestamp(1_787_229_296)
            .with_correlation_id("c-1".into());
        let got = from_amqp("t", false, &props, Vec::new());
        assert_eq!(got.attempt, 4);
        let h = &got.message.headers;
        assert_eq!(h.get_str("n"), Some("-7"));
        assert_eq!(h.get_str("flag"), Some("true"));
        assert_eq!(h.get_str("short"), Some("s"));
        assert_eq!(h.get_str("price"), Some("0.05"));
        assert_eq!(h.get_str("x-death"), Some(r#"{"count":2,"queue":"q"}"#));
        assert_eq!(h.content_type(), Some("application/json"));
        assert_eq!(h.message_id(), Some("m-1"));
        assert_eq!(h.message_type(), Some("users.v1.UserCreated"));
        assert_eq!(h.source(), Some("legacy"));
        assert_eq!(h.get_str("ce_time"), Some("2026-08-20T12:34:56.000Z"));
        assert_eq!(h.get_str("correlation-id"), Some("c-1"));
    }

    /// A header table of long strings.
    fn strings(entries: &[(&str, &str)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (name, value) in entries {
            t.insert((*name).into(), long(value.as_bytes()));
        }
        t
    }

    #[test]
    fn every_cloudevents_form_is_read_as_our_headers() {
        for prefix in [
            "ce_",
            "ce-",
            "cloudEvents_",
            "cloudEvents:",
            "CE-",
            "CloudEvents_",
        ] {
            let name = |attribute: &str| format!("{prefix}{attribute}");
            let mut t = FieldTable::default();
            for (attribute, value) in [
                ("id", "0190f4c2-7b1e-7c3a-9d55-3b1f2a9c0e11"),
                ("type", "users.v1.UserCreated"),
                ("source", "signup"),
                ("time", "2026-08-20T12:34:56.789Z"),
                ("specversion", "1.0"),
                ("subject", "u-1"),
            ] {
                t.insert(name(attribute).as_str().into(), long(value.as_bytes()));
            }
            let props = BasicProperties::default().with_headers(t);
            let h = from_amqp("users.created", false, &props, Vec::new())
                .message
                .headers;
            assert_eq!(
                h.message_id(),
                Some("0190f4c2-7b1e-7c3a-9d55-3b1f2a9c0e11"),
                "{prefix}: {h:?}"
            );
            assert_eq!(h.message_type(), Some("users.v1.UserCreated"), "{prefix}");
            assert_eq!(h.source(), Some("signup"), "{prefix}");
            assert_eq!(
                h.time(),
                humantime::parse_rfc3339("2026-08-20T12:34:56.789Z").ok(),
                "{prefix}"
            );
            assert_eq!(h.get_str("ce_specversion"), Some("1.0"), "{prefix}");
            assert_eq!(h.get_str("ce_subject"), Some("u-1"), "{prefix}");
            let names: Vec<_> = h.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(
                names,
                [
                    "ce_id",
                    "ce_source",
                    "ce_specversion",
                    "ce_subject",
                    "ce_time",
                    "ce_type"
                ],
                "{prefix}: each read into the `ce_` name, nothing left under the wire name"
            );
        }
    }

    #[test]
    fn several_forms_of_one_attribute_are_ranked_and_deduplicated() {
        let t = strings(&[
            ("ce-id", "dash"),
            ("cloudEvents:id", "colon"),
            ("cloudEvents_id", "underscore"),
            ("ce_id", "ce"),
            ("ce-type", "x.v1.Dash"),
            ("cloudEvents_type", "x.v1.Type"),
            ("CE_TYPE", "x.v1.Type"),
            ("ce-source", "spring"),
            ("Micro-ID", "dash"),
        ]);
        let props = BasicProperties::default()
            .with_headers(t)
            .with_message_id("property".into())
            .with_type("x.v1.Property".into())
            .with_app_id("property".into());
        let h = from_amqp("t", false, &props, Vec::new()).message.headers;
        let ids: Vec<_> = h.get_all("ce_id").map(|v| v.to_str().unwrap()).collect();
        assert_eq!(
            ids,
            ["ce", "underscore", "colon", "dash"],
            "best form first"
        );
        assert_eq!(h.message_id(), Some("ce"));
        let types: Vec<_> = h.get_all("ce_type").map(|v| v.to_str().unwrap()).collect();
        assert_eq!(
            types,
            ["x.v1.Type", "x.v1.Dash"],
            "a repeated value is kept once"
        );
        assert_eq!(h.message_type(), Some("x.v1.Type"));
        assert_eq!(
            h.source(),
            Some("spring"),
            "a header beats the app_id property"
        );
        assert!(
            !h.contains("Micro-ID"),
            "Micro-ID repeats one of the ids: {h:?}"
        );
        assert!(
            !h.iter()
                .any(|(n, _)| n.as_str().starts_with("ce-") || n.as_str().starts_with("cloud")),
            "no CloudEvents header under its wire name: {h:?}"
        );
    }

    #[test]
    fn properties_come_after_every_cloudevents_form_and_micro_id() {
        let t = strings(&[("ce-type", "x.v1.Header"), ("Micro-ID", "go")]);
        let props = BasicProperties::default()
            .with_headers(t)
            .with_message_id("property".into())
            .with_type("x.v1.Property".into());
        let h = from_amqp("t", false, &props, Vec::new()).message.headers;
        assert_eq!(h.message_type(), Some("x.v1.Header"));
        assert_eq!(h.get_all("ce_type").count(), 1, "{h:?}");
        assert_eq!(
            h.message_id(),
            Some("go"),
            "Micro-ID ranks before message_id"
        );
        assert!(!h.contains("ce_id"), "{h:?}");

        let props = BasicProperties::default()
            .with_headers(strings(&[("ce-type", "x.v1.Header")]))
            .with_message_id("property".into());
        let h = from_amqp("t", false, &props, Vec::new()).message.headers;
        assert_eq!(
            h.message_id(),
            Some("property"),
            "fills in what no header has"
        );
    }

    #[test]
    fn a_header_holding_an_empty_array_is_kept() {
        let mut t = FieldTable::default();
        t.insert(
            "x-tags".into(),
            AMQPValue::FieldArray(FieldArray::default()),
        );
        // an attribute with no value gives way to its property and to its other forms
        t.insert(
            "cloudEvents_id".into(),
            AMQPValue::FieldArray(FieldArray::default()),
        );
        t.insert(
            "cloudEvents:type".into(),
            AMQPValue::FieldArray(FieldArray::default()),
        );
        t.insert("ce-type".into(), long(b"users.v1.UserCreated"));
        let props = BasicProperties::default()
            .with_message_id("m-1".into())
            .with_headers(t);
        let h = from_amqp("t", false, &props, Vec::new()).message.headers;
        assert_eq!(h.get_str("x-tags"), Some("[]"), "{h:?}");
        assert_eq!(h.get_all("ce_id").count(), 1, "{h:?}");
        assert_eq!(h.get_str("ce_id"), Some("m-1"), "{h:?}");
        assert_eq!(h.get_all("ce_type").count(), 1, "{h:?}");
        assert_eq!(h.get_str("ce_type"), Some("users.v1.UserCreated"), "{h:?}");
    }

    #[test]
    fn repeated_values_of_one_form_are_kept_and_other_names_untouched() {
        let mut t = strings(&[
            ("ce", "a"),
            ("ce_", "b"),
            ("cerberus", "c"),
            ("cloudEventsX", "d"),
            ("ce-Tenant", "e"),
        ]);
        t.insert(
            "cloudEvents_traceid".into(),
            AMQPValue::FieldArray(vec![long(b"one"), long(b"one"), long(b"two")].into()),
        );
        let props = BasicProperties::default().with_headers(t);
        let h = from_amqp("t", false, &props, Vec::new()).message.headers;
        let traces: Vec<_> = h
            .get_all("ce_traceid")
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(
            traces,
            ["one", "one", "two"],
            "one entry's values are all kept"
        );
        for (name, value) in [
            ("ce", "a"),
            ("ce_", "b"),
            ("cerberus", "c"),
            ("cloudEventsX", "d"),
        ] {
            assert_eq!(h.get_str(name), Some(value), "{name}: {h:?}");
        }
        assert_eq!(
            h.get_str("ce_tenant"),
            Some("e"),
            "an extension in the `ce-` form too"
        );
    }

    #[test]
    fn long_header_names_are_an_error() {
        let message = Message::new("x").with_header("a".repeat(300), "v");
        let err = to_amqp("t", &message, WireProfile::LEAN).unwrap_err();
        assert!(err.to_string().contains("300 bytes long"), "{err}");
    }

    #[test]
    fn decimals() {
        assert_eq!(decimal(12345, 2), "123.45");
        assert_eq!(decimal(5, 3), "0.005");
        assert_eq!(decimal(7, 0), "7");
    }

    #[test]
    fn a_timestamp_past_year_9999_is_kept_as_a_number_not_a_panic() {
        for (secs, expected) in [
            (1_787_229_296u64, "2026-08-20T12:34:56.000Z".to_owned()),
            // milliseconds written where seconds belong
            (1_787_229_296_789, "1787229296789".to_owned()),
            (u64::MAX, u64::MAX.to_string()),
        ] {
            let props = BasicProperties::default().with_timestamp(secs);
            let got = from_amqp("users.created", false, &props, vec![]).message;
            assert_eq!(
                got.headers.get_str("ce_time"),
                Some(expected.as_str()),
                "{secs}"
            );
        }
    }

    #[test]
    fn positions_read_as_amqp_names_them() {
        assert_eq!(
            super::delivered(9, true).to_string(),
            "delivery tag 9 (redelivered)"
        );
        assert_eq!(super::delivered(9, false).to_string(), "delivery tag 9");
        assert_eq!(super::confirmed().to_string(), "confirmed");
    }
}
