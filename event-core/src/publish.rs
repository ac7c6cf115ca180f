//! Typed publishing: [`Publisher<T>`] and typed [`Topic<T>`] constants.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::{Bytes, BytesMut};

use crate::broker::{Broker, Message, PublishError, Receipt, TryPublish};
use crate::clock;
use crate::context::Context;
use crate::headers::{HeaderName, HeaderValue, Headers, known};
use crate::telemetry::PublishTelemetry;
use tracing::Instrument;

/// A topic bound to its message type at compile time.
///
/// Declare it once and use it on both sides, so that publisher and subscriber of a topic
/// cannot disagree on its type:
///
/// ```
/// use event_core::Topic;
/// # #[derive(Clone, PartialEq, prost::Message)] pub struct UserCreated { #[prost(string, tag = "1")] pub id: String }
/// # impl prost::Name for UserCreated { const NAME: &'static str = "UserCreated"; const PACKAGE: &'static str = "users.v1"; }
///
/// pub const USERS_CREATED: Topic<UserCreated> = Topic::new("users.created");
/// assert_eq!(USERS_CREATED.name(), "users.created");
/// ```
pub struct Topic<T> {
    name: &'static str,
    _type: PhantomData<fn() -> T>,
}

impl<T> Topic<T> {
    /// A topic named `name` carrying `T`.
    pub const fn new(name: &'static str) -> Self {
        Topic {
            name,
            _type: PhantomData,
        }
    }

    /// The topic name.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

impl<T> Clone for Topic<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Topic<T> {}

impl<T> fmt::Debug for Topic<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic<{}>({:?})", std::any::type_name::<T>(), self.name)
    }
}

/// A topic name for `T`: a plain string, or a typed [`Topic<T>`].
pub trait TopicFor<T> {
    /// The topic name.
    fn topic_name(&self) -> &str;
}

impl<T> TopicFor<T> for Topic<T> {
    fn topic_name(&self) -> &str {
        self.name
    }
}
impl<T> TopicFor<T> for &str {
    fn topic_name(&self) -> &str {
        self
    }
}
impl<T> TopicFor<T> for String {
    fn topic_name(&self) -> &str {
        self
    }
}
impl<T> TopicFor<T> for &String {
    fn topic_name(&self) -> &str {
        self
    }
}

/// Publishes `T` messages to one topic. Cheap to clone.
///
/// Every message gets the headers of DESIGN.md §3: `ce_specversion`, `ce_id` (UUID v7),
/// `ce_source` (the service name), `ce_type` (`T`'s protobuf full name), `ce_time`,
/// `content-type: application/protobuf`, a `correlation-id`, and from the current
/// [`Context`]: `causation-id`, trace context and user metadata. Their order is not part of
/// the contract. `ce_time` and the id's timestamp come from the system clock, which a thread
/// reads at most once a second and extends with the monotonic clock in between: a step of
/// the system clock shows in them within a second.
///
/// ```
/// use event_core::{memory::MemoryBroker, Publisher};
/// # #[derive(Clone, PartialEq, prost::Message)] pub struct UserCreated { #[prost(string, tag = "1")] pub id: String }
/// # impl prost::Name for UserCreated { const NAME: &'static str = "UserCreated"; const PACKAGE: &'static str = "users.v1"; }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let publisher = Publisher::<UserCreated>::new(std::sync::Arc::new(MemoryBroker::new()), "signup", "users.created");
/// let message = publisher.encode(&UserCreated { id: "u-1".into() }, None);
/// assert_eq!(message.headers.get_str("ce_type"), Some("users.v1.UserCreated"));
/// assert_eq!(message.headers.get_str("ce_source"), Some("signup"));
/// let receipt = publisher.publish(&UserCreated { id: "u-1".into() }).await?;
/// assert!(receipt.message_id().is_some());
/// # Ok(()) }
/// ```
pub struct Publisher<T> {
    inner: Arc<Inner>,
    _type: PhantomData<fn(&T)>,
}

struct Inner {
    broker: Arc<dyn Broker>,
    topic: String,
    message_type: HeaderValue,
    /// `ce_specversion`, `ce_source`, `ce_type` and `content-type`: the same on every message;
    /// shared by reference, or (past [`MAX_SHARED_PAIRS`]) this publisher's own to copy.
    constant_headers: Result<SharedHeaders, Box<[Entry]>>,
    telemetry: PublishTelemetry,
}

impl<T> Clone for Publisher<T> {
    fn clone(&self) -> Self {
        Publisher {
            inner: self.inner.clone(),
            _type: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Publisher<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("topic", &self.inner.topic)
            .field("type", &self.inner.message_type)
            .field("broker", &self.inner.broker.name())
            .finish()
    }
}

const SPECVERSION: (HeaderName, HeaderValue) =
    (known::CE_SPECVERSION, HeaderValue::from_static("1.0"));
const CONTENT_TYPE_PROTOBUF: (HeaderName, HeaderValue) = (
    known::CONTENT_TYPE,
    HeaderValue::from_static(crate::codec::PROTOBUF),
);

/// The headers every message of `source` of type `message_type` carries: made once per pair
/// and shared by every publisher of that pair, for the life of the process. A process has few
/// pairs (one per service and message type); past [`MAX_SHARED_PAIRS`] of them, a publisher
/// gets its own copy (`Err`) and writes them into each message instead.
fn shared_headers(source: &str, message_type: &str) -> Result<SharedHeaders, Box<[Entry]>> {
    type Made = HashMap<String, HashMap<String, SharedHeaders>>;
    static MADE: OnceLock<Mutex<Made>> = OnceLock::new();
    let make = || -> Box<[Entry]> {
        Box::new([
            SPECVERSION,
            (known::CE_SOURCE, HeaderValue::from(source)),
            (known::CE_TYPE, HeaderValue::from(message_type)),
            CONTENT_TYPE_PROTOBUF,
        ])
    };
    let mut made = MADE
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(shared) = made.get(source).and_then(|types| types.get(message_type)) {
        return Ok(shared);
    }
    if made.values().map(HashMap::len).sum::<usize>() >= MAX_SHARED_PAIRS {
        return Err(make());
    }
    let shared: SharedHeaders = Box::leak(make());
    made.entry(source.to_owned())
        .or_default()
        .insert(message_type.to_owned(), shared);
    Ok(shared)
}

/// A header entry.
type Entry = (HeaderName, HeaderValue);

/// Header entries made once and kept for the life of the process.
type SharedHeaders = &'static [Entry];

/// How many (source, message type) pairs get shared headers (about 300 bytes each).
const MAX_SHARED_PAIRS: usize = 1024;

impl<T: prost::Message + prost::Name> Publisher<T> {
    /// A publisher of `T` to `topic` through `broker`, naming `source` as the producer.
    ///
    /// The headers that are the same on every message (`ce_source`, `ce_type` and the like)
    /// are made once per `source` and `T` and kept for the life of the process, shared by
    /// every publisher of that pair, for the first 1,024 pairs: a source is meant to name a
    /// service, not a request or a tenant (put those in [`Context`] metadata).
    pub fn new(broker: Arc<dyn Broker>, source: &str, topic: impl TopicFor<T>) -> Self {
        let topic = topic.topic_name();
        clock::calibrate();
        Publisher {
            inner: Arc::new(Inner {
                telemetry: PublishTelemetry::new(
                    broker.messaging_system(),
                    broker.name(),
                    topic,
                    &T::full_name(),
                ),
                broker,
                topic: topic.to_owned(),
                constant_headers: shared_headers(source, &T::full_name()),
                message_type: HeaderValue::from(T::full_name()),
            }),
            _type: PhantomData,
        }
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    /// Publishes `message` with the current [`Context`]'s headers.
    ///
    /// The message is encoded and handed to the broker when this is called, not when the
    /// returned future is first polled: with a backend that enqueues without waiting (Kafka),
    /// publishes created one after another are pipelined even if they are awaited later.
    /// For the same reason the `publish {topic}` span (see [`crate::telemetry`]) is a child of
    /// the span current when this is called: inside an instrumented `async` block or
    /// `#[tracing::instrument]` function, not `publish(..).instrument(span)`.
    ///
    /// # Errors
    ///
    /// A [`PublishError`] holding the encoded message (with its id) when the broker does not
    /// take it; publishing that message again keeps its id, so consumers can deduplicate.
    pub fn publish(
        &self,
        message: &T,
    ) -> impl Future<Output = Result<Receipt, PublishError>> + Send + '_ {
        let (raw, id) = Context::with_current(|ctx| self.encode_identified(message, ctx));
        self.send(raw, Some(id))
    }

    /// Publishes `message` in `ctx` (for code that runs outside a handler).
    ///
    /// # Errors
    ///
    /// As [`Publisher::publish`].
    pub fn publish_with(
        &self,
        ctx: &Context,
        message: &T,
    ) -> impl Future<Output = Result<Receipt, PublishError>> + Send + '_ {
        let (raw, id) = self.encode_identified(message, Some(ctx));
        self.send(raw, Some(id))
    }

    /// Publishes `message` with a partition key (Kafka keeps order per key).
    ///
    /// # Errors
    ///
    /// As [`Publisher::publish`].
    pub fn publish_keyed(
        &self,
        key: impl Into<Bytes>,
        message: &T,
    ) -> impl Future<Output = Result<Receipt, PublishError>> + Send + '_ {
        let (mut raw, id) = Context::with_current(|ctx| self.encode_identified(message, ctx));
        raw.key = Some(key.into());
        self.send(raw, Some(id))
    }

    /// Publishes a message returned by a failed publish, unchanged (same id).
    ///
    /// # Errors
    ///
    /// As [`Publisher::publish`].
    pub fn republish(
        &self,
        message: Message,
    ) -> impl Future<Output = Result<Receipt, PublishError>> + Send + '_ {
        let id = message.headers.message_id_value().cloned();
        self.send(message, id)
    }

    /// Encodes `message` with its headers, as [`Publisher::publish`] would send it.
    pub fn encode(&self, message: &T, ctx: Option<&Context>) -> Message {
        self.encode_identified(message, ctx).0
    }

    /// [`Publisher::encode`], and the message's id, for the receipt (so that it is not looked
    /// up in the headers again).
    fn encode_identified(&self, message: &T, ctx: Option<&Context>) -> (Message, HeaderValue) {
        let (id, time) = new_id_and_time();
        // only what changes per message is written: the rest is shared by all of them. Id,
        // time and correlation id, and in a context the causation id, trace headers and
        // metadata:
        let changing = 3 + ctx.map_or(0, |c| 4 + c.metadata().len());
        let mut headers = match &self.inner.constant_headers {
            Ok(shared) => Headers::pooled(changing).with_shared(shared),
            Err(own) => {
                let mut headers = Headers::pooled(own.len() + changing);
                for (name, value) in own.iter() {
                    headers.append_copy(name.clone(), value);
                }
                headers
            }
        };
        headers.append_copied(known::CE_ID, &id);
        headers.append_copied(known::CE_TIME, &time);
        match ctx {
            Some(ctx) => ctx.write_headers(&mut headers, &id),
            None => Context::write_empty(&mut headers, &id),
        }
        let message = Message {
            headers,
            key: None,
            payload: encode_payload(message),
        };
        (message, HeaderValue::copy_from_slice(&id))
    }

    /// Hands the message to the broker now (a backend that can enqueue without waiting does
    /// so before this returns), then waits for the broker's answer; the receipt carries `id`.
    ///
    /// The publish runs in a `publish {topic}` span (see [`crate::telemetry`]) whose trace
    /// context, with the `opentelemetry` feature, replaces the message's trace headers.
    fn send(
        &self,
        mut message: Message,
        id: Option<HeaderValue>,
    ) -> impl Future<Output = Result<Receipt, PublishError>> + Send + '_ {
        let inner = &*self.inner;
        let span = inner.telemetry.span(&inner.topic, &mut message);
        // the fast path (no boxed future) when the broker can take the message at once
        let publishing = span.in_scope(|| match inner.broker.try_publish(&inner.topic, message) {
            TryPublish::Done(result) => Ok(result),
            TryPublish::WouldWait(message) => Err(inner.broker.publish(&inner.topic, message)),
        });
        async move {
            let result = match publishing {
                Ok(result) => result,
                Err(publishing) => publishing.instrument(span.clone()).await,
            };
            inner.telemetry.finish(&span, &result);
            let receipt = result?;
            Ok(match id {
                Some(id) => receipt.with_message_id(id),
                None => receipt,
            })
        }
    }
}

/// How many bytes a thread's shared encode buffer takes at a time.
const ENCODE_CHUNK: usize = 8 * 1024;

/// Payloads longer than this get an allocation of their own instead of a slice of the
/// thread's shared encode buffer.
const OWN_BUFFER_ABOVE: usize = 1024;

thread_local! {
    /// The unused rest of this thread's current encode chunk, initialized (see
    /// [`cut_from_encode_buffer`]).
    static ENCODE_BUFFER: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// `message`, encoded.
///
/// Small payloads are cut from a per-thread chunk of [`ENCODE_CHUNK`] bytes, as a codec's read
/// buffer is: the payloads of one chunk share one allocation and one reference count. That
/// saves two allocations per message (the payload's own, and the one `Bytes` makes when a
/// payload built from a vector is first cloned, as decoding does to keep `bytes` fields
/// zero-copy), and the consumer frees one chunk instead of every payload. A chunk is freed
/// when the last payload cut from it is dropped; once every payload of the current chunk is
/// gone, the thread writes over it again instead of allocating.
fn encode_payload<T: prost::Message>(message: &T) -> Bytes {
    let len = message.encoded_len();
    if len > OWN_BUFFER_ABOVE {
        let mut payload = BytesMut::with_capacity(len);
        message
            .encode(&mut payload)
            .expect("a BytesMut sized to encoded_len has room");
        return payload.freeze();
    }
    cut_from_encode_buffer(len, |buffer| {
        message
            .encode(buffer)
            .expect("the encode buffer was given room for encoded_len");
    })
}

/// What `write` writes into this thread's encode buffer (given room for at least `len`
/// bytes), cut off as a `Bytes` that shares the buffer's allocation (see [`encode_payload`]).
///
/// The buffer's unused rest is kept initialized (a new or reused chunk is zeroed once), so
/// that `write` fills a plain byte slice: prost writes a varint a byte at a time, and a slice
/// takes a byte for a bounds check where a `BytesMut` checks its capacity and length.
fn cut_from_encode_buffer(len: usize, write: impl FnOnce(&mut &mut [u8])) -> Bytes {
    ENCODE_BUFFER.with_borrow_mut(|buffer| {
        if buffer.len() < len {
            // writes over the chunk again when no payload cut from it is alive, else starts
            // a new one
            buffer.clear();
            buffer.reserve(ENCODE_CHUNK);
            let capacity = buffer.capacity();
            buffer.resize(capacity, 0);
        }
        // the whole rest, not `len` bytes: what was written is cut off, even from a message
        // that writes less than its `encoded_len` (prost's own messages write exactly that).
        // One that writes past the chunk's end panics, as it would encoding into any slice.
        let mut out = &mut buffer[..];
        let rest = out.len();
        write(&mut out);
        let written = rest - out.len();
        buffer.split_to(written).freeze()
    })
}

/// A copy of `bytes` (at most [`OWN_BUFFER_ABOVE`] long) cut from this thread's encode
/// buffer, as payloads are: for header values too long to be stored inline that every
/// message carries (`traceparent`). A copy of its own would cost an allocation, and the
/// first clone of it (the consumer's [`Context`] takes one) a second.
#[cfg(feature = "opentelemetry")]
pub(crate) fn copy_shared(bytes: &[u8]) -> Bytes {
    debug_assert!(bytes.len() <= OWN_BUFFER_ABOVE);
    cut_from_encode_buffer(bytes.len(), |out| bytes::BufMut::put_slice(out, bytes))
}

/// A hyphenated UUID: 32 hex digits and 4 hyphens.
const ID_LEN: usize = 36;
const TIME_LEN: usize = "2026-08-20T12:34:56.789Z".len();

/// A new UUID v7 message id (hyphenated, lower case) and the current time (RFC 3339, UTC,
/// milliseconds), from one clock reading. The id's timestamp is that time, except after the
/// clock stepped back (or in the rare millisecond whose counter ran out): the id then keeps
/// counting from the last one, so that a thread's ids still increase, while the time is the
/// clock's.
fn new_id_and_time() -> ([u8; ID_LEN], [u8; TIME_LEN]) {
    let since_epoch = clock::since_epoch();
    let (id_millis, counter) = next_v7_millis_and_counter(since_epoch.as_millis() as u64);
    // random bits from `fastrand` (seeded per thread from the OS's randomness, not a
    // cryptographic generator): message ids must be unique, not unguessable
    let id = hyphenated(&uuid_v7(id_millis, counter, fastrand::u32(..)));
    // the date and time to the second change once a second: a thread keeps the last one
    thread_local! {
        static SECOND: std::cell::Cell<(u64, [u8; TIME_LEN])> =
            const { std::cell::Cell::new((u64::MAX, [0; TIME_LEN])) };
    }
    let secs = since_epoch.as_secs();
    let mut time = SECOND.with(|second| {
        let (cached, mut text) = second.get();
        if cached != secs {
            format_rfc3339_millis(secs, 0, &mut text);
            second.set((secs, text));
        }
        text
    });
    let millis = since_epoch.subsec_millis();
    time[20] = b'0' + (millis / 100) as u8;
    time[21] = b'0' + (millis / 10 % 10) as u8;
    time[22] = b'0' + (millis % 10) as u8;
    (id, time)
}

/// The largest value of the 42-bit counter of a UUID v7 (RFC 9562, section 6.2, method 1).
const V7_COUNTER_MAX: u64 = (1 << 42) - 1;

/// The millisecond and counter of this thread's next UUID v7, `now` being the clock's
/// millisecond. Ids made by one thread increase strictly, without a process-wide lock:
///
/// - in a new millisecond the counter starts at a random value below 2^41 (room to count);
/// - within the same millisecond, or if the clock stepped back, the last millisecond is kept
///   and the counter counts on;
/// - should the counter ever run out, the next millisecond is taken early.
fn next_v7_millis_and_counter(now: u64) -> (u64, u64) {
    thread_local! {
        static LAST: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
    }
    LAST.with(|last| {
        let next = advance_v7(last.get(), now, || fastrand::u64(..) >> 23);
        last.set(next);
        next
    })
}

/// The step of [`next_v7_millis_and_counter`] from `(millisecond, counter)` of the last id;
/// `seed` gives a new millisecond's first counter.
fn advance_v7(
    (last_millis, last_counter): (u64, u64),
    now: u64,
    seed: impl FnOnce() -> u64,
) -> (u64, u64) {
    if now > last_millis {
        (now, seed())
    } else if last_counter < V7_COUNTER_MAX {
        (last_millis, last_counter + 1)
    } else {
        (last_millis + 1, seed())
    }
}

/// The 16 bytes of a UUID v7: 48 bits of Unix milliseconds, the version, the counter's top 12
/// bits, the variant, the counter's low 30 bits and 32 random bits.
fn uuid_v7(millis: u64, counter: u64, random: u32) -> [u8; 16] {
    let high = (millis & 0xffff_ffff_ffff) << 16 | 0x7 << 12 | (counter >> 30 & 0xfff);
    let low = 0b10 << 62 | (counter & 0x3fff_ffff) << 32 | u64::from(random);
    let mut bytes = [0; 16];
    bytes[..8].copy_from_slice(&high.to_be_bytes());
    bytes[8..].copy_from_slice(&low.to_be_bytes());
    bytes
}

/// A UUID's 8-4-4-4-12 lower-case text.
fn hyphenated(bytes: &[u8; 16]) -> [u8; ID_LEN] {
    let mut out = [b'-'; ID_LEN];
    hex_lower(&bytes[..4], &mut out[..8]);
    hex_lower(&bytes[4..6], &mut out[9..13]);
    hex_lower(&bytes[6..8], &mut out[14..18]);
    hex_lower(&bytes[8..10], &mut out[19..23]);
    hex_lower(&bytes[10..], &mut out[24..]);
    out
}

/// Writes `bytes` as lower-case hex into `out`, which is twice as long.
pub(crate) fn hex_lower(bytes: &[u8], out: &mut [u8]) {
    /// The two hex digits of every byte value.
    static PAIRS: [[u8; 2]; 256] = {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut pairs = [[0; 2]; 256];
        let mut i = 0;
        while i < 256 {
            pairs[i] = [HEX[i >> 4], HEX[i & 0xf]];
            i += 1;
        }
        pairs
    };
    debug_assert_eq!(out.len(), bytes.len() * 2);
    for (byte, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair.copy_from_slice(&PAIRS[usize::from(*byte)]);
    }
}

/// Writes the time `secs` and `millis` after the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`
/// (24 bytes) into `out`.
fn format_rfc3339_millis(secs: u64, millis: u32, out: &mut [u8]) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (hour, minute, second) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // civil date from days since 1970-01-01 (proleptic Gregorian calendar)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut put = |at: usize, value: u64, width: usize| {
        let mut v = value;
        for i in (0..width).rev() {
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year.clamp(0, 9999) as u64, 4);
    put(5, month as u64, 2);
    put(8, day as u64, 2);
    put(11, hour, 2);
    put(14, minute, 2);
    put(17, second, 2);
    put(20, u64::from(millis), 3);
    out[4] = b'-';
    out[7] = b'-';
    out[10] = b'T';
    out[13] = b':';
    out[16] = b':';
    out[19] = b'.';
    out[23] = b'Z';
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn ids_are_uuid_v7_increasing_and_match_the_time() {
        let mut last = uuid::Uuid::nil();
        for _ in 0..10_000 {
            let (id, time) = new_id_and_time();
            let parsed = uuid::Uuid::parse_str(std::str::from_utf8(&id).unwrap()).unwrap();
            assert_eq!(parsed.get_version_num(), 7);
            // ids of one thread sort in the order they were made, even within a millisecond
            assert!(parsed > last, "{parsed} after {last}");
            last = parsed;
            // the id's timestamp is the ce_time of the same message
            let (secs, nanos) = parsed.get_timestamp().unwrap().to_unix();
            let id_millis = secs * 1000 + u64::from(nanos / 1_000_000);
            let time = humantime::parse_rfc3339(std::str::from_utf8(&time).unwrap()).unwrap();
            let time_millis = time
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
            assert_eq!(id_millis, time_millis);
        }
    }

    fn tick(seq: u64, payload_len: usize) -> event_proto::bench::v1::Tick {
        event_proto::bench::v1::Tick {
            seq,
            payload: Bytes::from(vec![seq as u8; payload_len]),
        }
    }

    fn own_encoding(message: &impl prost::Message) -> Vec<u8> {
        message.encode_to_vec()
    }

    #[test]
    fn payloads_are_cut_from_one_chunk_and_never_overwritten_while_alive() {
        // a thread of its own: a fresh encode buffer
        std::thread::spawn(|| {
            let first = tick(1, 40);
            let second = tick(2, 40);
            let a = encode_payload(&first);
            let b = encode_payload(&second);
            assert_eq!(a, own_encoding(&first));
            assert_eq!(b, own_encoding(&second));
            // one allocation: the second payload follows the first
            assert_eq!(b.as_ptr(), a.as_ptr().wrapping_add(a.len()));

            // many chunks' worth while `a` and `b` stay alive, half of the rest kept too
            let mut kept = Vec::new();
            for seq in 0..20_000u64 {
                let message = tick(seq, (seq % 97) as usize);
                let payload = encode_payload(&message);
                if seq % 2 == 0 {
                    kept.push((message, payload));
                }
            }
            assert_eq!(a, own_encoding(&first), "a live payload was written over");
            assert_eq!(b, own_encoding(&second), "a live payload was written over");
            for (message, payload) in &kept {
                assert_eq!(payload, &own_encoding(message), "seq {}", message.seq);
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_large_payload_gets_an_allocation_of_its_own() {
        std::thread::spawn(|| {
            let small = encode_payload(&tick(1, 10));
            let large_message = tick(2, OWN_BUFFER_ABOVE + 1);
            let large = encode_payload(&large_message);
            assert_eq!(large, own_encoding(&large_message));
            let next = encode_payload(&tick(3, 10));
            // the chunk was not used, nor grown, by the large payload
            assert_eq!(next.as_ptr(), small.as_ptr().wrapping_add(small.len()));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn uuid_v7_fields_sit_where_rfc_9562_puts_them() {
        let millis = 0x0192_3456_789a;
        let counter = 0x2ab_cdef_0123; // 42 bits
        let bytes = uuid_v7(millis, counter, 0xdead_beef);
        let parsed = uuid::Uuid::from_bytes(bytes);
        assert_eq!(parsed.get_version_num(), 7);
        assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122);
        let (secs, nanos) = parsed.get_timestamp().expect("a v7 timestamp").to_unix();
        assert_eq!(secs * 1000 + u64::from(nanos / 1_000_000), millis);
        // rand_a: the counter's top 12 bits; rand_b: its low 30 bits, then the random word
        assert_eq!(
            u64::from(u16::from_be_bytes([bytes[6], bytes[7]]) & 0xfff),
            counter >> 30
        );
        let low = u64::from_be_bytes(bytes[8..].try_into().unwrap());
        assert_eq!(low >> 32 & 0x3fff_ffff, counter & 0x3fff_ffff);
        assert_eq!(low as u32, 0xdead_beef);
    }

    #[test]
    fn the_v7_counter_orders_ids_within_a_millisecond_and_across_a_clock_step_back() {
        let seed = || 5;
        assert_eq!(
            advance_v7((0, 0), 1_000, seed),
            (1_000, 5),
            "a new millisecond: seeded"
        );
        assert_eq!(
            advance_v7((1_000, 5), 1_000, seed),
            (1_000, 6),
            "the same: counts on"
        );
        assert_eq!(
            advance_v7((1_000, 6), 990, seed),
            (1_000, 7),
            "a step back: keeps the last"
        );
        assert_eq!(
            advance_v7((1_000, V7_COUNTER_MAX), 1_000, seed),
            (1_001, 5),
            "counter run out: the next millisecond early"
        );
        // and the ids built from them sort in that order
        let ids = [(1_000, 5), (1_000, 6), (1_000, 7), (1_001, 5)]
            .map(|(millis, counter)| uuid::Uuid::from_bytes(uuid_v7(millis, counter, u32::MAX)));
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");
    }

    /// The headers of an encoded message: every entry but the per-message id, time and
    /// correlation id (the id again), by name.
    fn constant_part(message: &Message) -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> = message
            .headers
            .iter()
            .filter(|(n, _)| !matches!(n.as_str(), "ce_id" | "ce_time" | "correlation-id"))
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap().to_owned()))
            .collect();
        all.sort();
        all
    }

    /// A publisher past the shared pairs writes the same headers into each message as a
    /// publisher that shares them.
    #[test]
    fn publishers_with_and_without_shared_headers_write_the_same_headers() {
        let broker: Arc<dyn Broker> = Arc::new(crate::memory::MemoryBroker::new());
        let shared = Publisher::<event_proto::bench::v1::Tick>::new(broker, "bench", "t");
        let Ok(entries) = shared.inner.constant_headers else {
            panic!("the first pairs of a process are shared");
        };
        let own = Publisher::<event_proto::bench::v1::Tick> {
            inner: Arc::new(Inner {
                broker: shared.inner.broker.clone(),
                topic: "t".to_owned(),
                message_type: shared.inner.message_type.clone(),
                constant_headers: Err(entries.to_vec().into_boxed_slice()),
                telemetry: PublishTelemetry::new("memory", "memory", "t", "bench.v1.Tick"),
            }),
            _type: PhantomData,
        };
        let (a, b) = (
            shared.encode(&tick(1, 8), None),
            own.encode(&tick(1, 8), None),
        );
        assert_eq!(a.headers.len(), 7);
        assert_eq!(b.headers.len(), 7);
        assert_eq!(constant_part(&a), constant_part(&b));
        assert_eq!(a.headers.message_type(), Some("bench.v1.Tick"));
        assert_eq!(b.headers.source(), Some("bench"));
        assert!(a.headers.message_id().is_some() && b.headers.message_id().is_some());
    }

    #[test]
    fn ids_read_as_the_uuid_they_encode() {
        for _ in 0..1000 {
            let uuid = uuid::Uuid::now_v7();
            let mut expected = [0u8; ID_LEN];
            uuid.hyphenated().encode_lower(&mut expected);
            assert_eq!(hyphenated(uuid.as_bytes()), expected);
        }
        assert_eq!(
            &hyphenated(&[0xff; 16]),
            b"ffffffff-ffff-ffff-ffff-ffffffffffff"
        );
    }

    #[test]
    fn time_formatting_matches_a_reference_implementation() {
        // humantime is the reference; check dates across leap years and centuries
        for secs in [
            0u64,
            951_782_400,   // 2000-02-29
            1_709_164_800, // 2024-02-29
            1_787_228_096,
            4_102_444_799, // 2099-12-31T23:59:59
            253_402_300_799,
        ] {
            for millis in [0u32, 7, 999] {
                let t = SystemTime::UNIX_EPOCH
                    + std::time::Duration::from_millis(secs * 1000 + u64::from(millis));
                let mut out = [0u8; TIME_LEN];
                format_rfc3339_millis(secs, millis, &mut out);
                assert_eq!(
                    std::str::from_utf8(&out).unwrap(),
                    humantime::format_rfc3339_millis(t).to_string()
                );
            }
        }
    }
}
