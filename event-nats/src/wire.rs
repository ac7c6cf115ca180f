//! The NATS edge of the header scheme (the wire table in the `event_core` crate documentation,
//! `event-core/docs/wire.md` in the repository): [`Message`] ↔ NATS headers, positions, and
//! the names of streams and consumers.
//!
//! Publishing:
//! - every header goes into the NATS headers under its own name (`ce_id`, `ce_type`,
//!   `content-type`, `traceparent`, user metadata: the names of Kafka record headers);
//! - the key, which NATS does not have, travels in the `x-event-key` header;
//! - `Nats-Msg-Id` (JetStream's duplicate detection) is the message id; for a dead letter
//!   (a message whose `x-event-original-topic` names another topic) it is
//!   `<id>@<topic>#<handler>#<UUID v7 of the publish>`, so that a dead letter kept in the
//!   same stream as its original is not taken for a duplicate of it, nor the dead letters of
//!   one message from two queue groups (whose handlers may have the same name) for duplicates
//!   of each other; the retries of one publish send the same id;
//! - NATS header values are text lines that the client trims: a value that is not UTF-8,
//!   holds a line break or starts or ends with whitespace is sent percent-encoded, and its
//!   name is listed in an `x-event-escaped` header (once per name), which receiving undoes.
//!
//! Consuming reverses it: `x-event-key` becomes the key, escaped values are decoded,
//! `Nats-Msg-Id` is dropped when it only repeats the message id, everything else (other
//! `Nats-*` headers included) is kept under its own name.
//!
//! **Positions.** A JetStream message sits at its stream sequence (flagged redelivered when the
//! server delivered it before); a publish's receipt names the stream sequence of the PubAck. In
//! core NATS mode a message has no place: consumed ones are numbered per subscription, a
//! published one is only flushed.

use std::fmt;

use bytes::Bytes;
use event_core::backend::{Position, PositionKind, go_micro};
use event_core::broker::{BrokerError, Message};
use event_core::headers::{HeaderEntry, HeaderName, HeaderValue, Headers, names};

use crate::error::NatsBackendError;

/// The header a dead letter carries when JetStream gave up delivering a message whose header
/// block the client cannot read (see
/// [`NatsBrokerBuilder::max_deliver`](crate::NatsBrokerBuilder::max_deliver)): the lines of
/// the block that could not be read, as they were, separated by CRLF.
///
/// async-nats reads only header lines with a colon after a name of printable ASCII; a message
/// with another line, which a client writing the protocol itself can publish, makes it drop
/// the connection, so the message never reaches a subscription. Once the server gave up on
/// it, it is read from the stream and dead-lettered with its readable headers, and these.
pub const UNREADABLE_HEADERS: &str = "x-nats-unreadable-headers";

/// The header that carries [`Message::key`].
pub(crate) const KEY_HEADER: &str = "x-event-key";
/// Lists the headers whose values are percent-encoded.
pub(crate) const ESCAPED_HEADER: &str = "x-event-escaped";
/// JetStream's duplicate detection id.
pub(crate) const MSG_ID_HEADER: &str = "Nats-Msg-Id";

const KEY: async_nats::HeaderName = async_nats::HeaderName::from_static(KEY_HEADER);
const ESCAPED: async_nats::HeaderName = async_nats::HeaderName::from_static(ESCAPED_HEADER);

// --- percent encoding -------------------------------------------------------------------------

/// Whether `value` can travel as a NATS header value as it is: UTF-8 without line breaks or
/// other controls (a tab aside), not starting or ending with whitespace.
fn travels_as_is(value: &[u8]) -> bool {
    // printable ASCII (and tabs), the values the framework writes: one pass over the bytes
    if value
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) || b == b'\t')
    {
        let edge = |b: Option<&u8>| b.is_some_and(|&b| b == b' ' || b == b'\t');
        return !edge(value.first()) && !edge(value.last());
    }
    let Ok(text) = std::str::from_utf8(value) else {
        return false;
    };
    !text.contains(['\r', '\n'])
        && text.trim() == text
        && !text.chars().any(|c| c.is_control() && c != '\t')
}

fn hex(n: u8) -> char {
    char::from(b"0123456789ABCDEF"[usize::from(n & 0x0f)])
}

/// Percent-encodes `%`, controls, bytes of 0x80 and above, and spaces at either end.
fn percent_encode(value: &[u8]) -> String {
    let first_kept = value.iter().position(|b| *b != b' ').unwrap_or(value.len());
    let last_kept = value
        .iter()
        .rposition(|b| *b != b' ')
        .map_or(first_kept, |i| i + 1);
    let mut out = String::with_capacity(value.len() + 8);
    for (i, &b) in value.iter().enumerate() {
        let edge_space = b == b' ' && (i < first_kept || i >= last_kept);
        if b == b'%' || !(0x20..0x7f).contains(&b) || edge_space {
            out.push('%');
            out.push(hex(b >> 4));
            out.push(hex(b));
        } else {
            out.push(char::from(b));
        }
    }
    out
}

fn unhex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` sequences; anything else (a `%` not followed by two hex digits included) is
/// kept as it is.
pub(crate) fn percent_decode(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        if value[i] == b'%'
            && let (Some(h), Some(l)) = (
                value.get(i + 1).copied().and_then(unhex),
                value.get(i + 2).copied().and_then(unhex),
            )
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(value[i]);
        i += 1;
    }
    out
}

/// [`percent_decode`] into text (URL user information); invalid UTF-8 is replaced.
pub(crate) fn percent_decode_str(value: &str) -> String {
    String::from_utf8_lossy(&percent_decode(value.as_bytes())).into_owned()
}

// --- headers ----------------------------------------------------------------------------------

/// The names the framework writes on every message, as NATS names that need no allocation
/// (nor validation) per message.
static KNOWN_NAMES: [(&str, async_nats::HeaderName); 17] = {
    use async_nats::HeaderName as N;
    [
        (names::CE_SPECVERSION, N::from_static(names::CE_SPECVERSION)),
        (names::CE_ID, N::from_static(names::CE_ID)),
        (names::CE_SOURCE, N::from_static(names::CE_SOURCE)),
        (names::CE_TYPE, N::from_static(names::CE_TYPE)),
        (names::CE_TIME, N::from_static(names::CE_TIME)),
        (names::CONTENT_TYPE, N::from_static(names::CONTENT_TYPE)),
        (names::TRACEPARENT, N::from_static(names::TRACEPARENT)),
        (names::TRACESTATE, N::from_static(names::TRACESTATE)),
        (names::BAGGAGE, N::from_static(names::BAGGAGE)),
        (names::CORRELATION_ID, N::from_static(names::CORRELATION_ID)),
        (names::CAUSATION_ID, N::from_static(names::CAUSATION_ID)),
        (names::X_EVENT_ERROR, N::from_static(names::X_EVENT_ERROR)),
        (
            names::X_EVENT_ERROR_KIND,
            N::from_static(names::X_EVENT_ERROR_KIND),
        ),
        (
            names::X_EVENT_ORIGINAL_TOPIC,
            N::from_static(names::X_EVENT_ORIGINAL_TOPIC),
        ),
        (
            names::X_EVENT_ORIGINAL_POSITION,
            N::from_static(names::X_EVENT_ORIGINAL_POSITION),
        ),
        (
            names::X_EVENT_HANDLER,
            N::from_static(names::X_EVENT_HANDLER),
        ),
        (
            names::X_EVENT_ATTEMPTS,
            N::from_static(names::X_EVENT_ATTEMPTS),
        ),
    ]
};

/// `name` as a NATS name: one of [`KNOWN_NAMES`] (spelled exactly so, with its index), or
/// parsed (validated and copied).
fn nats_name(name: &str) -> Result<(async_nats::HeaderName, Option<usize>), NatsBackendError> {
    if let Some(i) = KNOWN_NAMES.iter().position(|(known, _)| *known == name) {
        return Ok((KNOWN_NAMES[i].1.clone(), Some(i)));
    }
    name.parse::<async_nats::HeaderName>()
        .map(|parsed| (parsed, None))
        .map_err(|_| NatsBackendError::HeaderName {
            name: name.chars().take(64).collect(),
            reason: "NATS header names are printable ASCII without ':' or spaces",
        })
}

/// Text that [`travels_as_is`]: not checked again by async-nats's conversion.
fn nats_value(text: String) -> async_nats::HeaderValue {
    async_nats::HeaderValue::from(text)
}

fn is_dead_letter(topic: &str, message: &Message) -> bool {
    message
        .headers
        .get(names::X_EVENT_ORIGINAL_TOPIC)
        .is_some_and(|original| original.as_bytes() != topic.as_bytes())
}

/// The `Nats-Msg-Id` one publish call sends (every retry within it the same): the
/// [`dedup_id`], and for a dead letter one more part of its own, `#<UUID v7>`. Two queue
/// groups whose handlers have the same name may dead-letter one message; without it the
/// stream would keep the first dead letter and drop the second as a duplicate.
pub(crate) fn publish_dedup_id(topic: &str, message: &Message) -> Option<String> {
    let id = dedup_id(topic, message)?;
    if !is_dead_letter(topic, message) {
        return Some(id);
    }
    let (unique, _) = event_core::publish::message_id_and_time();
    Some(format!(
        "{id}#{}",
        String::from_utf8_lossy(unique.as_bytes())
    ))
}

/// The `Nats-Msg-Id` a message is published with: its id (or the `Nats-Msg-Id` it carries);
/// for a dead letter `<id>@<topic>#<handler>` (its `x-event-handler`).
pub(crate) fn dedup_id(topic: &str, message: &Message) -> Option<String> {
    let id = message
        .headers
        .message_id_value()
        .or_else(|| message.headers.get(MSG_ID_HEADER))?;
    let id = String::from_utf8_lossy(id.as_bytes());
    if !is_dead_letter(topic, message) {
        return Some(id.into_owned());
    }
    // two subscriptions (queue groups) that dead-letter one message make two dead letters
    Some(match message.headers.get(names::X_EVENT_HANDLER) {
        Some(handler) => format!(
            "{id}@{topic}#{}",
            String::from_utf8_lossy(handler.as_bytes())
        ),
        None => format!("{id}@{topic}"),
    })
}

/// `message` as go-micro's NATS broker publishes it: go-micro's JSON envelope as the payload,
/// and as the only NATS header the `Nats-Msg-Id` JetStream deduplicates by (`jetstream`).
pub(crate) fn to_go_micro(
    topic: &str,
    message: &Message,
    jetstream: bool,
) -> (Bytes, Option<async_nats::HeaderMap>) {
    let headers = dedup_id(topic, message).filter(|_| jetstream).map(|id| {
        let id = if travels_as_is(id.as_bytes()) {
            id
        } else {
            percent_encode(id.as_bytes())
        };
        let mut map = async_nats::HeaderMap::new();
        map.insert(async_nats::header::NATS_MESSAGE_ID, nats_value(id));
        map
    });
    (go_micro::to_envelope(topic, message), headers)
}

/// A consumed message: with `go_micro_envelope`, the message inside go-micro's envelope when
/// the payload is one (go-micro writes no NATS headers); otherwise [`from_nats`].
pub(crate) fn received(
    topic: &str,
    headers: Option<&async_nats::HeaderMap>,
    payload: Bytes,
    go_micro_envelope: bool,
) -> Message {
    if go_micro_envelope && let Some(message) = go_micro::from_envelope(topic, &payload) {
        return message;
    }
    from_nats(headers, payload)
}

/// The names of [`KNOWN_NAMES`] written to a map so far (a bit per index): the first value of
/// a known name is inserted (one hash; there is nothing to append to), any other appended.
#[derive(Default)]
struct KnownWritten(u32);

impl KnownWritten {
    fn put(
        &mut self,
        map: &mut async_nats::HeaderMap,
        (name, known): (async_nats::HeaderName, Option<usize>),
        text: String,
    ) {
        match known {
            Some(i) if self.0 & (1 << i) == 0 => {
                self.0 |= 1 << i;
                map.insert(name, nats_value(text));
            }
            _ => map.append(name, nats_value(text)),
        }
    }
}

/// The NATS headers `message` is published to `topic` with (see the module documentation);
/// `None` when there are none.
///
/// # Errors
///
/// [`NatsBackendError::HeaderName`] for a header name NATS cannot carry.
pub(crate) fn to_nats(
    topic: &str,
    message: &Message,
    jetstream: bool,
) -> Result<Option<async_nats::HeaderMap>, NatsBackendError> {
    let dedup = if jetstream {
        dedup_id(topic, message)
    } else {
        None
    };
    to_nats_with_id(message, jetstream, dedup)
}

/// `value` as the text it travels as, when it travels as it is (see [`travels_as_is`]).
fn as_is(value: &[u8]) -> Option<&str> {
    if travels_as_is(value) {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}

/// Whether a message's header `name` is one of those [`to_nats_with_id`] writes from the key,
/// the escapes and the id rather than from the header itself.
fn written_below(name: &str, jetstream: bool) -> bool {
    // the first letter first: most names start with neither
    match name.as_bytes().first() {
        Some(b'x' | b'X') => {
            name.eq_ignore_ascii_case(KEY_HEADER) || name.eq_ignore_ascii_case(ESCAPED_HEADER)
        }
        Some(b'n' | b'N') => jetstream && name.eq_ignore_ascii_case(MSG_ID_HEADER),
        _ => false,
    }
}

/// Writes `entries` into `map`, all of them as they are; `false` (with some written) when one
/// must be escaped.
fn put_as_is(
    map: &mut async_nats::HeaderMap,
    known_written: &mut KnownWritten,
    entries: &[HeaderEntry],
    jetstream: bool,
) -> Result<bool, NatsBackendError> {
    for (name, value) in entries {
        let name = name.as_str();
        if written_below(name, jetstream) {
            continue;
        }
        let Some(text) = as_is(value.as_bytes()) else {
            return Ok(false);
        };
        known_written.put(map, nats_name(name)?, text.to_owned());
    }
    Ok(true)
}

/// A publisher's shared headers (see [`Headers::split_shared`]) in NATS form, for each
/// message's map to start from: `None` when one of them does not travel as it is (the
/// message is then written whole, escapes and all).
type SharedNats = Option<(async_nats::HeaderMap, KnownWritten)>;

/// How many publishers' shared headers a thread keeps in NATS form.
const SHARED_KEPT: usize = 64;

/// Which shared headers, for which mode: their address and length, and whether JetStream's.
type SharedKey = (usize, usize, bool);

thread_local! {
    /// The shared headers translated so far on this thread.
    static SHARED_NATS: std::cell::RefCell<Vec<(SharedKey, SharedNats)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// The map a message whose shared headers are `shared` starts from: a copy of their NATS form,
/// made once per thread (a copy of a map costs no hashing, and it is already as large as
/// the shared headers need), with the known names it holds.
fn start_from_shared(
    shared: &'static [HeaderEntry],
    jetstream: bool,
) -> Result<SharedNats, NatsBackendError> {
    let key = (shared.as_ptr() as usize, shared.len(), jetstream);
    let copy = |made: &SharedNats| {
        made.as_ref()
            .map(|(map, known)| (map.clone(), KnownWritten(known.0)))
    };
    let found = SHARED_NATS.with_borrow_mut(|kept| {
        let i = kept.iter().position(|(k, _)| *k == key)?;
        // the most recently used first: a thread that serves more publishers than it keeps
        // loses the ones it uses least
        kept[..=i].rotate_right(1);
        Some(copy(&kept[0].1))
    });
    if let Some(found) = found {
        return Ok(found);
    }
    let mut map = async_nats::HeaderMap::new();
    let mut known_written = KnownWritten::default();
    let made =
        put_as_is(&mut map, &mut known_written, shared, jetstream)?.then_some((map, known_written));
    let copied = copy(&made);
    SHARED_NATS.with_borrow_mut(|kept| {
        kept.truncate(SHARED_KEPT - 1);
        kept.insert(0, (key, made));
    });
    Ok(copied)
}

/// [`to_nats`] with the `Nats-Msg-Id` given (see [`publish_dedup_id`]).
pub(crate) fn to_nats_with_id(
    message: &Message,
    jetstream: bool,
    dedup: Option<String>,
) -> Result<Option<async_nats::HeaderMap>, NatsBackendError> {
    if message.headers.is_empty() && message.key.is_none() && dedup.is_none() {
        return Ok(None);
    }
    // the common case, every value text that travels as it is (what the framework writes):
    // the publisher's shared headers translated once, this message's own checked once each
    let (shared, own) = message.headers.split_shared();
    let start = if shared.is_empty() {
        Some((async_nats::HeaderMap::new(), KnownWritten::default()))
    } else {
        start_from_shared(shared, jetstream)?
    };
    let mut escaped: Vec<&str> = Vec::new();
    let fast = match start {
        Some((mut map, mut known_written)) => {
            put_as_is(&mut map, &mut known_written, own, jetstream)?.then_some(map)
        }
        None => None,
    };
    let mut map = match fast {
        Some(map) => map,
        None => {
            // escaping is listed per name (receiving decodes every value of a listed name),
            // so a name one of whose values must be escaped has all of them escaped: two
            // passes over the whole message
            let mut map = async_nats::HeaderMap::new();
            let mut known_written = KnownWritten::default();
            for (name, value) in message.headers.iter() {
                let name = name.as_str();
                if !written_below(name, jetstream)
                    && !travels_as_is(value.as_bytes())
                    && !escaped.iter().any(|n| n.eq_ignore_ascii_case(name))
                {
                    escaped.push(name);
                }
            }
            for (name, value) in message.headers.iter() {
                let name = name.as_str();
                if written_below(name, jetstream) {
                    continue;
                }
                let text = if escaped.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                    percent_encode(value.as_bytes())
                } else {
                    value.to_str().expect("checked").to_owned()
                };
                known_written.put(&mut map, nats_name(name)?, text);
            }
            map
        }
    };
    if let Some(key) = &message.key {
        if travels_as_is(key) {
            let text = std::str::from_utf8(key).expect("checked").to_owned();
            map.insert(KEY, nats_value(text));
        } else {
            map.insert(KEY, nats_value(percent_encode(key)));
            escaped.push(KEY_HEADER);
        }
    }
    for name in escaped {
        map.append(ESCAPED, nats_value(name.to_owned()));
    }
    if let Some(id) = dedup {
        let id = if travels_as_is(id.as_bytes()) {
            id
        } else {
            percent_encode(id.as_bytes())
        };
        map.insert(async_nats::header::NATS_MESSAGE_ID, nats_value(id));
    }
    Ok(Some(map))
}

/// Reads the headers of a consumed NATS message back into a [`Message`].
pub(crate) fn from_nats(headers: Option<&async_nats::HeaderMap>, payload: Bytes) -> Message {
    let Some(map) = headers else {
        return Message::new(payload);
    };
    let escaped: Vec<&str> = map
        .get_all(ESCAPED)
        .map(async_nats::HeaderValue::as_str)
        .collect();
    let is_escaped = |name: &str| escaped.iter().any(|n| n.eq_ignore_ascii_case(name));
    let value_of = |name: &str, value: &async_nats::HeaderValue| -> HeaderValue {
        if is_escaped(name) {
            HeaderValue::from_bytes(percent_decode(value.as_str().as_bytes()))
        } else {
            HeaderValue::from(value.as_str())
        }
    };
    let mut headers = Headers::with_capacity(map.len());
    let mut key = None;
    let mut msg_id = None;
    for (name, values) in map.iter() {
        let name: &str = name.as_ref();
        if name.eq_ignore_ascii_case(ESCAPED_HEADER) {
            continue;
        }
        if name.eq_ignore_ascii_case(KEY_HEADER) {
            key = values.first().map(|v| value_of(name, v).into_bytes());
            continue;
        }
        if name.eq_ignore_ascii_case(MSG_ID_HEADER) {
            msg_id = values.first().map(|v| value_of(name, v));
            continue;
        }
        let header = HeaderName::from_wire(name);
        for value in values {
            headers.append(header.clone(), value_of(name, value));
        }
    }
    // the id repeats the message id: dropped; anything else is the producer's and kept
    if let Some(id) = msg_id {
        let repeats = headers.message_id_value().is_some_and(|mine| {
            let mine = mine.as_bytes();
            let id = id.as_bytes();
            id == mine || (id.starts_with(mine) && id.get(mine.len()) == Some(&b'@'))
        });
        if !repeats {
            headers.append(MSG_ID_HEADER, id);
        }
    }
    Message {
        headers,
        key,
        payload,
    }
}

// --- subjects and names -----------------------------------------------------------------------

/// Checks that `topic` is a subject one can publish to and filter on literally.
///
/// # Errors
///
/// [`BrokerError::InvalidTopic`] for wildcards (`*`, `>`) and empty tokens.
pub(crate) fn check_subject(topic: &str) -> Result<(), BrokerError> {
    // one pass over the bytes (every publish checks its topic): each token's first byte and
    // length
    let mut empty = false;
    let mut wildcard = false;
    for token in topic.as_bytes().split(|&b| b == b'.') {
        match token {
            [] => empty = true,
            [b'*' | b'>'] => wildcard = true,
            _ => {}
        }
    }
    let reason = if empty {
        "a NATS subject has no empty tokens (no leading, trailing or doubled '.')"
    } else if wildcard {
        "a topic is a literal NATS subject: '*' and '>' are wildcards"
    } else {
        return Ok(());
    };
    Err(BrokerError::InvalidTopic {
        topic: topic.to_owned(),
        reason,
    })
}

/// FNV-1a, 32 bits: a short, stable suffix that keeps derived names apart.
fn fnv(parts: &[&str]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            // a byte no name holds, between the parts
            hash ^= 0xff;
            hash = hash.wrapping_mul(0x0100_0193);
        }
        for b in part.bytes() {
            hash ^= u32::from(b);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    }
    hash
}

fn plain(s: &str, dots: bool) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || (dots && b == b'.'))
}

/// `s` with `.` (and anything a name cannot hold) as `_`.
fn flatten(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Longest derived name; longer ones are cut and keep their hash.
const MAX_NAME: usize = 200;

fn finish(mut name: String, hashed: bool, parts: &[&str]) -> String {
    if hashed || name.len() > MAX_NAME {
        name.truncate(MAX_NAME - 9);
        name.push('_');
        name.push_str(&format!("{:08x}", fnv(parts)));
    }
    name
}

/// The stream made for `topic` alone: `prefix` + the topic with `.` as `_`; a topic with
/// other characters than ASCII letters, digits, `-` and `.` gets a hash suffix, so that two
/// topics never share a name.
pub(crate) fn stream_name(prefix: &str, topic: &str) -> String {
    finish(
        format!("{prefix}{}", flatten(topic)),
        !plain(topic, true),
        &[topic],
    )
}

/// The durable consumer of queue group `group` on `topic`: `<topic>_<group>` with `.` as `_`,
/// hashed like [`stream_name`] when either has other characters (or the group a `.`).
pub(crate) fn consumer_name(topic: &str, group: &str) -> String {
    finish(
        format!("{}_{}", flatten(topic), flatten(group)),
        !plain(topic, true) || !plain(group, false),
        &[topic, group],
    )
}

// --- positions --------------------------------------------------------------------------------

fn render_sequence(position: &Position, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    write!(f, "stream sequence {}", position.number())?;
    if position.is_redelivered() {
        f.write_str(" (redelivered)")?;
    }
    Ok(())
}

fn render_core(position: &Position, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    if position.number() == 0 {
        f.write_str("core NATS, flushed")
    } else {
        write!(f, "core NATS delivery {}", position.number())
    }
}

/// A JetStream stream sequence. OpenTelemetry's semantic conventions have no NATS attributes,
/// so the kind names none: the rendered position travels in `event.position`.
static STREAM_SEQUENCE: PositionKind = PositionKind::new("nats stream sequence", render_sequence);

/// Core NATS: no place in the broker.
static CORE: PositionKind = PositionKind::new("nats core", render_core);

/// A message at stream sequence `sequence`, delivered `delivered` times.
pub(crate) fn stream_position(sequence: u64, delivered: i64) -> Position {
    Position::new(&STREAM_SEQUENCE, sequence).redelivered(delivered > 1)
}

/// The `n`-th message of a core NATS subscription (from 1), or a flushed publish (0).
pub(crate) fn core_position(n: u64) -> Position {
    Position::new(&CORE, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed_message() -> Message {
        Message::new(&b"\x0a\x03abc"[..])
            .with_header("ce_specversion", "1.0")
            .with_header("ce_id", "0190f4c2-7b1e-7c3a-9d55-3b1f2a9c0e11")
            .with_header("ce_source", "orders")
            .with_header("ce_type", "shop.v1.OrderPlaced")
            .with_header("ce_time", "2026-08-20T12:34:56.789Z")
            .with_header("content-type", "application/protobuf")
            .with_header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .with_header("tenant", "t-42")
            .with_header("tenant", "t-43")
    }

    fn sorted(headers: &Headers) -> Vec<(String, Vec<u8>)> {
        let mut all: Vec<_> = headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect();
        all.sort();
        all
    }

    #[test]
    fn go_micro_s_envelope_is_the_payload_and_read_back() {
        let message = typed_message();
        let (payload, headers) = to_go_micro("orders.placed", &message, true);
        let headers = headers.expect("the dedup id");
        assert_eq!(headers.iter().count(), 1, "only Nats-Msg-Id: {headers:?}");
        assert_eq!(
            headers.get("Nats-Msg-Id").map(|v| v.as_str().to_owned()),
            message.headers.message_id().map(str::to_owned)
        );
        assert!(to_go_micro("orders.placed", &message, false).1.is_none());
        let envelope: serde_json::Value = serde_json::from_slice(&payload).expect("JSON");
        assert_eq!(envelope["Header"]["Micro-Topic"], "orders.placed");
        let back = received("orders.placed", Some(&headers), payload.clone(), true);
        assert_eq!(back.headers.message_id(), message.headers.message_id());
        assert_eq!(back.headers.message_type(), Some("shop.v1.OrderPlaced"));
        assert_eq!(back.payload, message.payload);
        // without the setting the envelope is a payload like any other
        let raw = received("orders.placed", None, payload.clone(), false);
        assert_eq!(raw.payload, payload);
    }

    #[test]
    fn publish_writes_the_kafka_names_the_key_and_the_dedup_id() {
        let message = typed_message().with_key("k-1");
        let map = to_nats("orders.placed", &message, true).unwrap().unwrap();
        let one = |name: &str| map.get(name).map(|v| v.as_str().to_owned());
        assert_eq!(one("ce_type").as_deref(), Some("shop.v1.OrderPlaced"));
        assert_eq!(one("content-type").as_deref(), Some("application/protobuf"));
        assert_eq!(one("x-event-key").as_deref(), Some("k-1"));
        assert_eq!(
            one("Nats-Msg-Id").as_deref(),
            Some("0190f4c2-7b1e-7c3a-9d55-3b1f2a9c0e11")
        );
        assert_eq!(map.get_all("tenant").count(), 2);
        assert!(map.get(ESCAPED_HEADER).is_none());
        // core NATS has no duplicate detection
        let core = to_nats("orders.placed", &message, false).unwrap().unwrap();
        assert!(core.get("Nats-Msg-Id").is_none());
        assert!(to_nats("t", &Message::new("x"), true).unwrap().is_none());
    }

    #[test]
    fn round_trip_gives_the_same_headers_and_key() {
        let message = typed_message()
            .with_key(&b"\xff\x00key"[..])
            .with_header("multi-line", "first\nsecond")
            .with_header("padded", "  kept  ")
            .with_header("percent", "100%")
            .with_header("binary", HeaderValue::from_bytes(&b"\x01\xfe"[..]));
        let map = to_nats("orders.placed", &message, true).unwrap().unwrap();
        for (_, values) in map.iter() {
            for v in values {
                assert!(!v.as_str().contains(['\r', '\n']), "{v}");
            }
        }
        assert_eq!(map.get("multi-line").unwrap().as_str(), "first%0Asecond");
        let back = from_nats(Some(&map), message.payload.clone());
        assert_eq!(back.key.as_deref(), Some(&b"\xff\x00key"[..]));
        assert_eq!(sorted(&back.headers), sorted(&message.headers));
    }

    /// A publisher's message (shared headers, then its own) and the same message with every
    /// header its own.
    fn published_and_unshared(source: &str, own: &[(&str, &str)]) -> (Message, Message) {
        let publisher = event_core::Publisher::<event_proto::bench::v1::Tick>::new(
            std::sync::Arc::new(event_core::memory::MemoryBroker::new()),
            source,
            "orders.placed",
        );
        let mut published = publisher.encode(&Default::default(), None);
        for (name, value) in own {
            published.headers.append(*name, *value);
        }
        assert!(!published.headers.split_shared().0.is_empty(), "shared");
        let mut unshared = Message::new(published.payload.clone());
        for (name, value) in published.headers.iter() {
            unshared.headers.append(name.clone(), value.clone());
        }
        assert!(unshared.headers.split_shared().0.is_empty());
        (published, unshared)
    }

    #[test]
    fn a_publisher_s_shared_headers_are_written_as_its_own_are() {
        for own in [
            &[][..],
            &[("tenant", "t-1"), ("tenant", "t-2")][..],
            // one of the shared names again, nothing to escape: appended to the shared value
            &[("ce_source", "again")][..],
            // one of the shared names again, and a value to escape: the whole message escaped
            &[("ce_source", "again"), ("note", "a\nb")][..],
            &[("ce_type", "line\nbreak")][..],
        ] {
            // a source that must be escaped: its messages are written whole
            for source in ["orders", " spaced source "] {
                // twice: the shared headers translated, then found translated
                for _ in 0..2 {
                    let (published, unshared) = published_and_unshared(source, own);
                    for jetstream in [true, false] {
                        let fast = to_nats("orders.placed", &published, jetstream).unwrap();
                        let whole = to_nats("orders.placed", &unshared, jetstream).unwrap();
                        assert_eq!(fast, whole, "{source:?} {own:?} {jetstream}");
                    }
                    let fast = to_nats("orders.placed", &published, true).unwrap().unwrap();
                    let back = from_nats(Some(&fast), published.payload.clone());
                    assert_eq!(sorted(&back.headers), sorted(&published.headers), "{own:?}");
                }
            }
        }
    }

    #[test]
    fn every_value_of_a_name_with_one_escaped_value_is_escaped() {
        // escaping is listed per name: "50%41" alone travels as it is, but beside a value
        // that must be escaped it is escaped too, or it would come back as "50A"
        let message = Message::new("x")
            .with_header("note", "50%41")
            .with_header("note", "a\nb")
            .with_header("Tag", "x%41")
            .with_header("tag", "line\nbreak");
        let map = to_nats("orders.placed", &message, false).unwrap().unwrap();
        let back = from_nats(Some(&map), message.payload.clone());
        assert_eq!(sorted(&back.headers), sorted(&message.headers));
    }

    #[test]
    fn a_dead_letter_gets_its_own_dedup_id() {
        let dead = typed_message().with_header("x-event-original-topic", "orders.placed");
        let id = dedup_id("orders.placed.dlq", &dead).unwrap();
        assert_eq!(id, "0190f4c2-7b1e-7c3a-9d55-3b1f2a9c0e11@orders.placed.dlq");
        // replayed onto its own topic, it is the original message again
        assert_eq!(
            dedup_id("orders.placed", &dead).unwrap(),
            "0190f4c2-7b1e-7c3a-9d55-3b1f2a9c0e11"
        );
        // each publish of a dead letter has an id of its own: two groups' dead letters of one
        // message are both kept
        let one = publish_dedup_id("orders.placed.dlq", &dead).unwrap();
        let two = publish_dedup_id("orders.placed.dlq", &dead).unwrap();
        assert!(one.starts_with(&format!("{id}#")) && two.starts_with(&format!("{id}#")));
        assert_ne!(one, two);
        assert_eq!(
            publish_dedup_id("orders.placed", &dead).as_deref(),
            Some("0190f4c2-7b1e-7c3a-9d55-3b1f2a9c0e11")
        );
        // the consumer drops the id that repeats the message id, suffixed or not
        let map = to_nats_with_id(&dead, true, Some(one)).unwrap().unwrap();
        let back = from_nats(Some(&map), Bytes::new());
        assert!(!back.headers.contains("Nats-Msg-Id"), "{:?}", back.headers);
    }

    #[test]
    fn a_foreign_dedup_id_is_kept_and_used() {
        let mut map = async_nats::HeaderMap::new();
        map.insert("Nats-Msg-Id", "order-17");
        map.insert("Content-Type", "application/json");
        let got = from_nats(Some(&map), Bytes::from_static(b"{}"));
        assert_eq!(got.headers.get_str("Nats-Msg-Id"), Some("order-17"));
        assert_eq!(got.headers.content_type(), Some("application/json"));
        assert_eq!(dedup_id("t", &got).as_deref(), Some("order-17"));
    }

    #[test]
    fn bad_header_names_are_an_error() {
        let message = Message::new("x").with_header("has:colon", "v");
        let err = to_nats("t", &message, true).unwrap_err();
        assert!(err.to_string().contains("has:colon"), "{err}");
    }

    #[test]
    fn subjects() {
        assert!(check_subject("users.created").is_ok());
        assert!(check_subject("users.created.v1-x_y").is_ok());
        for bad in ["users.*", "users.>", ">", "a..b", ".a", "a."] {
            assert!(check_subject(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names() {
        assert_eq!(
            stream_name("EVENT_", "users.created"),
            "EVENT_users_created"
        );
        assert_ne!(stream_name("EVENT_", "a_b"), stream_name("EVENT_", "a.b"));
        assert!(stream_name("EVENT_", "a_b").starts_with("EVENT_a_b_"));
        assert_eq!(
            consumer_name("users.created", "mailer"),
            "users_created_mailer"
        );
        assert_ne!(consumer_name("a.b", "c"), consumer_name("a", "b.c"));
        let long = "x".repeat(240);
        assert!(stream_name("EVENT_", &long).len() <= MAX_NAME);
        assert_ne!(
            stream_name("EVENT_", &format!("{long}a")),
            stream_name("EVENT_", &format!("{long}b"))
        );
    }

    #[test]
    fn positions() {
        assert_eq!(
            stream_position(9, 2).to_string(),
            "stream sequence 9 (redelivered)"
        );
        assert_eq!(stream_position(9, 1).to_string(), "stream sequence 9");
        assert_eq!(core_position(3).to_string(), "core NATS delivery 3");
        assert_eq!(core_position(0).to_string(), "core NATS, flushed");
    }

    #[test]
    fn travels_as_is_agrees_with_the_text_rules() {
        let slow = |value: &[u8]| {
            std::str::from_utf8(value).is_ok_and(|text| {
                !text.contains(['\r', '\n'])
                    && text.trim() == text
                    && !text.chars().any(|c| c.is_control() && c != '\t')
            })
        };
        let cases: [&[u8]; 16] = [
            b"",
            b"plain",
            b"a b",
            b" a",
            b"a ",
            b"\ta",
            b"a\t",
            b"a\tb",
            b"a\nb",
            b"a\rb",
            b"a\x7fb",
            b"a\x01b",
            "caf\u{e9}".as_bytes(),
            "a\u{a0}".as_bytes(),
            "a\u{85}b".as_bytes(),
            b"\xff",
        ];
        for case in cases {
            assert_eq!(travels_as_is(case), slow(case), "{case:?}");
        }
    }

    #[test]
    fn known_names_are_the_names_as_parsed() {
        for (name, known) in &KNOWN_NAMES {
            assert_eq!(*known, name.parse::<async_nats::HeaderName>().unwrap());
            let (got, index) = nats_name(name).unwrap();
            assert_eq!(&got, known);
            assert!(index.is_some());
        }
        assert_eq!(nats_name("tenant").unwrap().1, None);
    }

    #[test]
    fn percent_coding() {
        assert_eq!(percent_encode(b" a b "), "%20a b%20");
        assert_eq!(percent_decode(b"%20a b%20"), b" a b ");
        assert_eq!(percent_decode(b"50%"), b"50%");
        assert_eq!(percent_decode(b"%zz"), b"%zz");
    }
}
