//! The AMQP edge of the header scheme (the wire table in the `event_core` crate documentation,
//! `docs/wire.md` in the repository): [`Message`] ↔ AMQP properties and header table.
//!
//! Publishing:
//! - every header goes into the AMQP header table as a long string (bytes kept as they are);
//!   a name that repeats becomes a field array of long strings;
//! - `ce_*` headers are written as `cloudEvents_*` (the CloudEvents AMQP binding's prefix);
//! - the content type becomes the `content_type` property and the `Content-Type` header
//!   (go-micro's exact spelling);
//! - `Micro-ID` (the message id, unless the message already carries one) and `Micro-Topic`
//!   (the topic) are added for go-micro;
//! - properties: `message_id` ← id, `type` ← `ce_type`, `app_id` ← `ce_source`,
//!   `correlation_id` ← `correlation-id`, `timestamp` ← `ce_time` (seconds), `delivery_mode`
//!   2 (persistent); values longer than 255 bytes stay in the headers only;
//! - the key, which AMQP does not have, travels in the `x-event-key` header.
//!
//! Consuming reverses it, and reads what other AMQP producers write too.
//!
//! **CloudEvents attributes.** Producers spell a CloudEvents attribute `X` (`id`, `type`,
//! `source`, `time`, `specversion`, an extension...) in four ways on RabbitMQ: `ce_X` (the
//! Kafka binding's prefix, which some SDKs use on AMQP as well), `cloudEvents_X` (the AMQP
//! binding's, and what we publish), `cloudEvents:X` (the AMQP binding's other form) and `ce-X`
//! (the HTTP binding's, the default prefix of some SDKs when they do not know the transport).
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
//! own messages carry the same value in both. `Micro-ID` (go-micro's id) ranks after every
//! CloudEvents form and before the properties, as it does in `Headers::message_id`.
//!
//! **The rest.** `Micro-ID` is dropped when it only repeats an id read from the CloudEvents
//! headers, `Micro-Topic` when it only repeats the routing key; `x-event-key` becomes the key;
//! other values are stringified (numbers in decimal, booleans as `true`/`false`, nested tables
//! and arrays as JSON, byte arrays as their bytes).
//!
//! **Positions.** A consumed message sits at its delivery tag (channel-scoped), flagged when
//! RabbitMQ says it is redelivered; a published one is only confirmed: AMQP reports no place
//! for it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use event_core::backend::{Position, PositionKind};
use event_core::broker::Message;
use event_core::headers::{HeaderName, HeaderValue, Headers, IntoHeaderName, names};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};

use crate::error::AmqpBackendError;

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

/// Properties and header table of `message` published to `topic`.
pub(crate) fn to_amqp(topic: &str, message: &Message) -> Result<BasicProperties, AmqpBackendError> {
    let mut table: BTreeMap<ShortString, AMQPValue> = BTreeMap::new();
    let mut props = BasicProperties::default().with_delivery_mode(2);
    let mut has_micro_id = false;
    for (name, value) in message.headers.iter() {
        let name = name.as_str();
        let wire: ShortString = if starts_with_ignore_case(name, "ce_") {
            let attribute = &name[3..];
            match attribute.to_ascii_lowercase().as_str() {
                "id" => {
                    if let Some(v) = short_value(value) {
                        props = props.with_message_id(v);
                    }
                }
                "type" => {
                    if let Some(v) = short_value(value) {
                        props = props.with_type(v);
                    }
                }
                "source" => {
                    if let Some(v) = short_value(value) {
                        props = props.with_app_id(v);
                    }
                }
                "time" => {
                    if let Some(t) = value
                        .to_str()
                        .ok()
                        .and_then(|s| humantime::parse_rfc3339_weak(s).ok())
                        && let Ok(since) = t.duration_since(SystemTime::UNIX_EPOCH)
                    {
                        props = props.with_timestamp(since.as_secs());
                    }
                }
                _ => {}
            }
            // the AMQP binding's spelling, unless it would not fit in a short string (a name
            // that came in as `ce-X` or `ce_X`): then `ce_X`, which receiving reads first
            match ShortString::try_new(format!("{CLOUDEVENTS_PREFIX}{attribute}")) {
                Ok(wire) => wire,
                Err(_) => short("header name", name)?,
            }
        } else if name.eq_ignore_ascii_case(names::CONTENT_TYPE) {
            if let Some(v) = short_value(value) {
                props = props.with_content_type(v);
            }
            ShortString::from(GO_MICRO_CONTENT_TYPE)
        } else if name.eq_ignore_ascii_case(names::MICRO_TOPIC)
            || name.eq_ignore_ascii_case(KEY_HEADER)
        {
            // written below from the topic and the key
            continue;
        } else if name.eq_ignore_ascii_case(DELIVERY_COUNT) {
            // RabbitMQ's to set (quorum queues); one written by a producer would set the
            // consumer's attempt number and cut its retries short
            continue;
        } else {
            if name.eq_ignore_ascii_case(names::MICRO_ID) {
                has_micro_id = true;
            } else if name.eq_ignore_ascii_case(names::CORRELATION_ID)
                && let Some(v) = short_value(value)
            {
                props = props.with_correlation_id(v);
            }
            short("header name", name)?
        };
        push(&mut table, wire, long(value.as_bytes()));
    }
    if !has_micro_id && let Some(id) = message.headers.message_id_value() {
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
    if let Some(key) = &message.key {
        push(&mut table, ShortString::from(KEY_HEADER), long(key));
    }
    Ok(props.with_headers(FieldTable::from(table)))
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
    let mut headers = Headers::with_capacity(table.inner().len() + 2);
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

/// The values of a header table entry: each element of a field array, else the value itself.
fn values(value: &AMQPValue) -> &[AMQPValue] {
    match value {
        AMQPValue::FieldArray(values) => values.as_slice(),
        value => std::slice::from_ref(value),
    }
}

fn fill_from_properties(headers: &mut Headers, props: &BasicProperties) {
    // presence is tested by value, not as text: a header that is not UTF-8 is still there,
    // and the property must not be added beside it again on every hop
    if let Some(v) = props.content_type()
        && headers.content_type_value().is_none()
    {
        headers.append(names::CONTENT_TYPE, v.as_str());
    }
    if let Some(v) = props.message_id()
        && headers.message_id_value().is_none()
    {
        headers.append(names::CE_ID, v.as_str());
    }
    if let Some(v) = props.kind()
        && headers.message_type_value().is_none()
    {
        headers.append(names::CE_TYPE, v.as_str());
    }
    if let Some(v) = props.app_id()
        && !headers.contains(names::CE_SOURCE)
    {
        headers.append(names::CE_SOURCE, v.as_str());
    }
    if let Some(secs) = props.timestamp()
        && !headers.contains(names::CE_TIME)
    {
        // RFC 3339 ends at year 9999; a larger value (a producer writing milliseconds, or
        // garbage) is kept as the number it is rather than turned into a date
        const YEAR_10000: u64 = 253_402_300_800;
        let value = match SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(*secs)) {
            Some(time) if *secs < YEAR_10000 => humantime::format_rfc3339_millis(time).to_string(),
            _ => secs.to_string(),
        };
        headers.append(names::CE_TIME, value);
    }
    if let Some(v) = props.correlation_id()
        && !headers.contains(names::CORRELATION_ID)
    {
        headers.append(names::CORRELATION_ID, v.as_str());
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

    fn table(props: &BasicProperties) -> &BTreeMap<ShortString, AMQPValue> {
        props.headers().as_ref().unwrap().inner()
    }

    fn typed_message() -> Message {
        Message::new(&b"\x0a\x03abc"[..])
            .with_header("ce_specversion", "1.0")
            .with_header("ce_id", "0190f4c2-7b1e-7c3a-9d55-3b1f2a9c0e11")
            .with_header("ce_source", "orders")
            .with_header("ce_type", "shop.v1.OrderPlaced")
            .with_header("ce_time", "2026-08-20T12:34:56.789Z")
            .with_header("content-type", "application/protobuf")
            .with_header("correlation-id", "0190f4c2-7b1e-7c3a-9d55-3b1f2a9c0e11")
            .with_header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .with_header("tenant", "t-42")
            .with_header("tenant", "t-43")
    }

    #[test]
    fn publish_writes_go_micro_and_cloudevents_names() {
        let message = typed_message().with_key("k-1");
        let props = to_amqp("orders.placed", &message).unwrap();
        let t = table(&props);
        let s = |name: &str| match t.get(name) {
            Some(AMQPValue::LongString(s)) => String::from_utf8(s.as_bytes().to_vec()).unwrap(),
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(s("cloudEvents_type"), "shop.v1.OrderPlaced");
        assert_eq!(s("cloudEvents_id"), "0190f4c2-7b1e-7c3a-9d55-3b1f2a9c0e11");
        assert_eq!(s("cloudEvents_specversion"), "1.0");
        assert_eq!(s("Content-Type"), "application/protobuf");
        assert_eq!(s("Micro-ID"), "0190f4c2-7b1e-7c3a-9d55-3b1f2a9c0e11");
        assert_eq!(s("Micro-Topic"), "orders.placed");
        assert_eq!(s("x-event-key"), "k-1");
        assert!(!t.contains_key("ce_type"));
        assert!(
            matches!(t.get("tenant"), Some(AMQPValue::FieldArray(a)) if a.as_slice().len() == 2)
        );
        assert_eq!(
            props.content_type().as_ref().unwrap().as_str(),
            "application/protobuf"
        );
        assert_eq!(
            props.kind().as_ref().unwrap().as_str(),
            "shop.v1.OrderPlaced"
        );
        assert_eq!(props.app_id().as_ref().unwrap().as_str(), "orders");
        assert_eq!(
            props.message_id().as_ref().unwrap().as_str(),
            "0190f4c2-7b1e-7c3a-9d55-3b1f2a9c0e11"
        );
        assert_eq!(*props.timestamp(), Some(1_787_229_296));
        assert_eq!(*props.delivery_mode(), Some(2));
    }

    #[test]
    fn round_trip_gives_the_same_headers_and_key() {
        let message = typed_message().with_key("k-1");
        let props = to_amqp("orders.placed", &message).unwrap();
        let back = from_amqp("orders.placed", false, &props, message.payload.to_vec());
        assert_eq!(back.attempt, 1);
        assert_eq!(back.message.key.as_deref(), Some(&b"k-1"[..]));
        assert_eq!(back.message.payload, message.payload);
        let mut got: Vec<_> = back
            .message
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().to_ascii_lowercase(), v.clone()))
            .collect();
        let mut sent: Vec<_> = message
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().to_ascii_lowercase(), v.clone()))
            .collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        sent.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(got, sent);
    }

    // The three tests below keep what `fuzz/` (target `amqp_wire`) found; the inputs are in
    // fuzz/regressions/amqp_wire/.

    #[test]
    fn a_delivery_count_header_is_not_published() {
        let message = Message::new("x").with_header("x-delivery-count", "9");
        let props = to_amqp("t", &message).expect("publish");
        assert!(!table(&props).contains_key(&ShortString::from("x-delivery-count")));
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
            let again = to_amqp("t", &got).expect("published again");
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
            &to_amqp("t", &once).expect("publish"),
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
        let err = to_amqp("t", &message).unwrap_err();
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
