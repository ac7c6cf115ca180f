//! `amqp_wire`: event-amqp's header mapping, `wire::from_amqp` and `wire::to_amqp` (through
//! `event_amqp::__fuzz`).
//!
//! Input: the routing key (a name), a redelivered byte, a properties byte (which of
//! `content_type`, `message_id`, `type`, `app_id`, `timestamp`, `correlation_id` are set)
//! and their values, the header table (at most 8 entries; values of every AMQP type, tables
//! and arrays nested at most [`MAX_DEPTH`] deep), then the payload.
//!
//! The consumed message is mapped back to AMQP, as the dead-letter path and a forwarding
//! handler do, in every wire profile (lean, go-micro, cloudevents, both), and consumed again.
//! Checks: no panic; the attempt number; the payload; no
//! CloudEvents form other than `ce_` and no `x-event-key` header survives consumption; and
//! what the first consumption produced (message id, type, content type, source,
//! correlation id, key) survives the round trip, and a second round trip changes nothing
//! (tag `property-beside-non-text` when it does). `to_amqp` must not refuse a message
//! `from_amqp` made (it does for a `ce_`/`ce-` header whose `cloudEvents_` form is longer than
//! 255 bytes: reported, tag `republish-too-long`).

use event_amqp::__fuzz::{from_amqp, to_amqp_with};
use event_amqp::WireProfile;
use event_core::Context;
use event_core::broker::Message;
use lapin::BasicProperties;
use lapin::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};

use crate::input::{AMQP_NAMES, Reader, known};

/// How deep field tables and arrays nest in the header table.
pub const MAX_DEPTH: u32 = 4;

/// The wire profiles a consumed message is published again in.
const PROFILES: [WireProfile; 4] = [
    WireProfile::LEAN,
    WireProfile::GO_MICRO,
    WireProfile::CLOUDEVENTS,
    WireProfile::GO_MICRO.with(WireProfile::CLOUDEVENTS),
];

/// Routing keys, picked by index.
pub const TOPICS: &[&str] = &["users.created", "orders.placed", "users.created.dlq", ""];

/// The target.
pub fn run(data: &[u8]) {
    let mut input = Reader::new(data);
    let routing_key = input.name(TOPICS);
    let routing_key = truncate(&routing_key, 255);
    let redelivered = input.byte() & 1 == 1;
    let props = properties(&mut input);
    let payload = input.rest().to_vec();
    check(routing_key, redelivered, &props, payload);
}

/// The longest prefix of `s` of at most `max` bytes that ends at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// An AMQP short string: a name from `table` or a blob, cut to 255 bytes.
fn short(input: &mut Reader<'_>, table: &[&'static str]) -> ShortString {
    let name = input.name(table);
    ShortString::from(truncate(&name, 255))
}

/// A short string value (a property): a value or a blob, as lossy UTF-8 cut to 255 bytes.
fn short_value(input: &mut Reader<'_>) -> ShortString {
    let value = String::from_utf8_lossy(input.value()).into_owned();
    ShortString::from(truncate(&value, 255))
}

fn properties(input: &mut Reader<'_>) -> BasicProperties {
    let set = input.byte();
    let mut props = BasicProperties::default();
    if set & 0x01 != 0 {
        props = props.with_content_type(short_value(input));
    }
    if set & 0x02 != 0 {
        props = props.with_message_id(short_value(input));
    }
    if set & 0x04 != 0 {
        props = props.with_type(short_value(input));
    }
    if set & 0x08 != 0 {
        props = props.with_app_id(short_value(input));
    }
    if set & 0x10 != 0 {
        props = props.with_timestamp(u64::from_le_bytes(input.array()));
    }
    if set & 0x20 != 0 {
        props = props.with_correlation_id(short_value(input));
    }
    if set & 0x40 != 0 {
        props = props.with_delivery_mode(2);
    }
    if set & 0x80 != 0 {
        props = props.with_headers(table(input, 0));
    }
    props
}

fn table(input: &mut Reader<'_>, depth: u32) -> FieldTable {
    let mut table = FieldTable::default();
    for _ in 0..input.byte() % 9 {
        let key = short(input, AMQP_NAMES);
        let value = value(input, depth);
        table.insert(key, value);
    }
    table
}

fn value(input: &mut Reader<'_>, depth: u32) -> AMQPValue {
    match input.byte() % 22 {
        0 => AMQPValue::Boolean(input.byte() & 1 == 1),
        1 => AMQPValue::ShortShortInt(i8::from_le_bytes(input.array())),
        2 => AMQPValue::ShortShortUInt(input.byte()),
        3 => AMQPValue::ShortInt(i16::from_le_bytes(input.array())),
        4 => AMQPValue::ShortUInt(u16::from_le_bytes(input.array())),
        5 => AMQPValue::LongInt(i32::from_le_bytes(input.array())),
        6 => AMQPValue::LongUInt(u32::from_le_bytes(input.array())),
        7 => AMQPValue::LongLongInt(i64::from_le_bytes(input.array())),
        8 => AMQPValue::Float(f32::from_le_bytes(input.array())),
        9 => AMQPValue::Double(f64::from_le_bytes(input.array())),
        10 => AMQPValue::DecimalValue(DecimalValue {
            scale: input.byte(),
            value: u32::from_le_bytes(input.array()),
        }),
        11 => AMQPValue::ShortString(short_value(input)),
        12 if depth < MAX_DEPTH => {
            let count = input.byte() % 5;
            let values: Vec<AMQPValue> = (0..count).map(|_| value(input, depth + 1)).collect();
            AMQPValue::FieldArray(FieldArray::from(values))
        }
        13 => AMQPValue::Timestamp(u64::from_le_bytes(input.array())),
        14 if depth < MAX_DEPTH => AMQPValue::FieldTable(table(input, depth + 1)),
        15 => AMQPValue::ByteArray(ByteArray::from(input.blob())),
        16 => AMQPValue::Void,
        // a long string made long: a value repeated up to 256 times
        17 => {
            let repeat = usize::from(input.byte()) + 1;
            AMQPValue::LongString(LongString::from(input.value().repeat(repeat)))
        }
        // long strings, the type every producer writes, most of the time
        _ => AMQPValue::LongString(LongString::from(input.value().to_vec())),
    }
}

/// An AMQP integer, as RabbitMQ's `x-delivery-count` may be written.
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

/// The CloudEvents forms that consumption rewrites into `ce_`.
const REWRITTEN: [&str; 3] = ["cloudEvents_", "cloudEvents:", "ce-"];

fn starts_with_ignore_case(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len()
        && name.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// Consumes `props` and `payload`, maps the message back to AMQP and consumes it again.
pub fn check(routing_key: &str, redelivered: bool, props: &BasicProperties, payload: Vec<u8>) {
    // the attempt number: RabbitMQ's x-delivery-count (the last one of the table, of an
    // integer type) + 1, else 2 if redelivered, else 1
    let mut delivery_count = None;
    if let Some(table) = props.headers() {
        for (key, value) in table {
            if key.as_str().eq_ignore_ascii_case("x-delivery-count") {
                delivery_count = integer(value);
            }
        }
    }
    let (first, attempt) = from_amqp(routing_key, redelivered, props, payload.clone());
    let debug = crate::input::debug();
    if debug {
        eprintln!("amqp_wire: routing key {routing_key:?}, redelivered {redelivered}, {props:?}");
        eprintln!("consumed (attempt {attempt}): {first:?}");
    }
    match delivery_count {
        Some(count) if count < 0 => {
            // reported: a negative count gives attempt 0 (-1) or u32::MAX (below -1)
            if !known("negative-delivery-count") {
                assert_eq!(
                    attempt, 1,
                    "x-delivery-count {count}: the attempt number must be 1-based"
                );
            }
        }
        Some(count) => assert_eq!(
            attempt,
            u32::try_from(count.saturating_add(1)).unwrap_or(u32::MAX),
            "x-delivery-count {count}"
        ),
        None => assert_eq!(attempt, if redelivered { 2 } else { 1 }),
    }
    assert_eq!(first.payload, payload);
    for (name, _) in first.headers.iter() {
        let name = name.as_str();
        assert!(
            !REWRITTEN
                .iter()
                .any(|form| name.len() > form.len() && starts_with_ignore_case(name, form)),
            "the CloudEvents header {name:?} was not read into ce_"
        );
        assert!(
            !name.eq_ignore_ascii_case("x-event-key"),
            "x-event-key is the key, not a header"
        );
    }

    for profile in PROFILES {
        republish(routing_key, &first, &payload, profile, debug);
    }
}

/// Publishes `first`, a consumed message, again in `profile`, and consumes it twice more.
fn republish(
    routing_key: &str,
    first: &Message,
    payload: &[u8],
    profile: WireProfile,
    debug: bool,
) {
    let republished = to_amqp_with(routing_key, first, profile);
    if debug {
        eprintln!("republished ({profile}): {republished:?}");
    }
    let republished = match republished {
        Ok(republished) => republished,
        Err(error) => {
            // only a name that AMQP cannot carry: a ce_ name whose cloudEvents_ form is
            // longer than 255 bytes
            let too_long = first.headers.iter().any(|(name, _)| {
                let name = name.as_str();
                name.len() > 255 || (starts_with_ignore_case(name, "ce_") && name.len() + 9 > 255)
            });
            assert!(too_long, "to_amqp refused a consumed message: {error:?}");
            // reported: such a message cannot be dead-lettered (the dead-letter publish fails
            // with the same error, and is retried until the subscription stops)
            assert!(
                known("republish-too-long"),
                "a consumed message cannot be published again: {error}"
            );
            return;
        }
    };
    assert_eq!(*republished.delivery_mode(), Some(2));
    let (second, attempt) = from_amqp(routing_key, false, &republished, payload.to_vec());
    if debug {
        eprintln!("consumed again (attempt {attempt}): {second:?}");
    }
    assert_eq!(attempt, 1);
    assert_eq!(second.payload, payload);
    survives(first, &second);

    // after one round trip, a second one changes nothing. Reported: a content type, type or
    // source whose first value is not text does not count as present, so the property is
    // appended beside it on every consumption (tag `property-beside-non-text`)
    let not_text_first = |name: &str| {
        second
            .headers
            .get(name)
            .is_some_and(|v| v.to_str().is_err())
    };
    let skip = known("property-beside-non-text")
        && ["content-type", "ce_type", "ce_source"]
            .into_iter()
            .any(not_text_first);
    if !skip {
        let third =
            to_amqp_with(routing_key, &second, profile).expect("published once, publishes again");
        let (third, _) = from_amqp(routing_key, false, &third, payload.to_vec());
        let view = |m: &Message| {
            let mut headers: Vec<_> = m
                .headers
                .iter()
                .map(|(n, v)| (n.as_str().to_ascii_lowercase(), v.as_bytes().to_vec()))
                .collect();
            headers.sort();
            (headers, m.key.clone())
        };
        assert_eq!(
            view(&second),
            view(&third),
            "not a fixpoint ({profile}): {second:?} became {third:?}"
        );
    }
}

/// What consuming `first` produced is what consuming it again after `to_amqp` produces.
fn survives(first: &Message, second: &Message) {
    let (a, b) = (&first.headers, &second.headers);
    if let Some(id) = a.message_id_value() {
        assert_eq!(
            b.message_id_value(),
            Some(id),
            "message id; {a:?} became {b:?}"
        );
    }
    if let Some(kind) = a.message_type() {
        assert_eq!(
            b.message_type(),
            Some(kind),
            "message type; {a:?} became {b:?}"
        );
    }
    if let Some(ct) = a.content_type() {
        assert_eq!(
            b.content_type(),
            Some(ct),
            "content type; {a:?} became {b:?}"
        );
    }
    if let Some(source) = a.source() {
        assert_eq!(b.source(), Some(source), "source; {a:?} became {b:?}");
    }
    // as the handler's context reads it: a correlation id that only repeats the message id
    // is left out on the wire, and the context takes the id for a missing one
    if a.contains("correlation-id") {
        assert_eq!(
            Context::from_headers(b).correlation_id(),
            Context::from_headers(a).correlation_id(),
            "correlation id; {a:?} became {b:?}"
        );
    }
    assert_eq!(first.key, second.key, "key; {a:?} became {b:?}");
}
