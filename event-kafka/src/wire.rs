//! How Kafka records map onto the framework's messages: headers (a [`Message`]'s onto a
//! record's, a record's onto a [`Delivery`]'s, headers rdkafka cannot read left out and
//! named), and positions.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use event_core::backend::{Position, PositionKind, go_micro};
use event_core::broker::{Delivery, Message};
use event_core::headers::{HeaderName, Headers, names};
use rdkafka::message::{BorrowedMessage, Header, Headers as _, Message as _, OwnedHeaders};

fn render_offset(position: &Position, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    write!(
        f,
        "partition {} offset {}",
        position.partition().unwrap_or_default(),
        position.number()
    )
}

/// A record's place: partition and offset.
static OFFSET: PositionKind =
    PositionKind::new("kafka offset", render_offset).with_attribute("messaging.kafka.offset");

/// The position of the record at `offset` of `partition` (offsets of stored records are never
/// negative; a negative one, which librdkafka uses for "unknown", reads as 0).
pub(crate) fn position(partition: i32, offset: i64) -> Position {
    Position::new(&OFFSET, u64::try_from(offset).unwrap_or_default()).in_partition(partition)
}

/// The header a delivery carries when some of its record's headers could not be read: their
/// places among the record's headers (from 0), comma-separated, such as `0` or `2,5`.
///
/// rdkafka reads only header names that are UTF-8 text (it panics on another, and the
/// poller catches that), so a header named otherwise, which a producer writing names as raw
/// bytes can send, is left out of the delivery; its bytes cannot be had. The record's other
/// headers are delivered as usual, and each such record is logged as a warning.
pub const UNREADABLE_HEADERS: &str = "x-kafka-unreadable-headers";

/// What the deliveries of one batch of records read from librdkafka share: the topic name,
/// the time they were received, and a buffer their payloads and keys are copied into.
pub(crate) struct Batch {
    /// A reference of the batch's own: a clone per record from one shared `Arc` would move
    /// its count between the thread that reads records and the one that drops them.
    topic: Arc<str>,
    received_at: SystemTime,
    copies: Copies,
}

impl Batch {
    /// A batch of records of `topic`, received now.
    pub(crate) fn new(topic: &str, copies: Copies) -> Self {
        Batch {
            topic: Arc::from(topic),
            received_at: SystemTime::now(),
            copies,
        }
    }

    /// The buffer the batch copied into, for the next batch.
    pub(crate) fn into_copies(self) -> Copies {
        self.copies
    }

    /// The delivery of `record`; with `go_micro_envelope`, a record whose value is go-micro's
    /// envelope is unwrapped (its headers, then the record's own that it does not name).
    pub(crate) fn delivery(
        &mut self,
        record: &BorrowedMessage<'_>,
        go_micro_envelope: bool,
    ) -> Delivery {
        let topic = &self.topic;
        let value = record.payload().unwrap_or_default();
        let unwrapped = if go_micro_envelope {
            go_micro::from_envelope(topic, value)
        } else {
            None
        };
        let enveloped = unwrapped.is_some();
        let mut message = unwrapped.unwrap_or_else(|| Message::new(self.copies.copy(value)));
        message.key = record.key().map(|key| self.copies.copy(key));
        if enveloped {
            if let Some(headers) = record.headers() {
                let own = read_headers(topic, record, headers);
                for (name, value) in own.iter() {
                    if !message.headers.contains(name.as_str()) {
                        message.headers.append(name.clone(), value.clone());
                    }
                }
            }
        } else if let Some(headers) = record.headers() {
            message.headers = read_headers(topic, record, headers);
        }
        Delivery::received(
            topic.clone(),
            message,
            position(record.partition(), record.offset()),
            self.received_at,
        )
    }
}

/// The size of the buffers [`Copies`] copies payloads and keys into.
const COPIES_CHUNK: usize = 16 * 1024;

/// The longest payload or key copied into a shared buffer; a longer one gets its own.
const COPIES_LARGEST: usize = 2 * 1024;

/// Copies of records' payloads and keys, out of librdkafka's memory: the short ones into
/// shared buffers of [`COPIES_CHUNK`] bytes, so that one allocation (and, on the thread that
/// drops the last of them, one free) serves many records rather than one each; glibc's
/// allocator serializes a free of memory another thread allocated on that thread's arena
/// lock. A buffer is freed when the last copy in it is dropped, so a payload kept after its
/// handler returned (or a decoded message that borrows from it) keeps up to
/// [`COPIES_CHUNK`] bytes alive, never more.
#[derive(Default)]
pub(crate) struct Copies {
    chunk: BytesMut,
}

impl Copies {
    /// A copy of `bytes`.
    fn copy(&mut self, bytes: &[u8]) -> Bytes {
        if bytes.is_empty() {
            return Bytes::new();
        }
        if bytes.len() > COPIES_LARGEST {
            return Bytes::copy_from_slice(bytes);
        }
        if self.chunk.capacity() - self.chunk.len() < bytes.len() {
            // the full buffer stays with the copies made in it
            self.chunk = BytesMut::with_capacity(COPIES_CHUNK);
        }
        self.chunk.extend_from_slice(bytes);
        self.chunk.split().freeze()
    }
}

/// A record's headers, those whose name is not UTF-8 left out and named in
/// [`UNREADABLE_HEADERS`].
fn read_headers(
    topic: &str,
    record: &BorrowedMessage<'_>,
    headers: &rdkafka::message::BorrowedHeaders,
) -> Headers {
    let count = headers.count();
    // copied without an allocation where that can be: a pooled vector, the names the
    // framework writes shared, short values inline
    let mut out = Headers::pooled(count);
    // rdkafka panics on a header name that is not UTF-8: the consumer must not go down for
    // it, nor lose the record's other headers
    let mut read = 0;
    let all = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for header in headers.iter() {
            out.append_copied(
                HeaderName::from_wire(header.key),
                header.value.unwrap_or_default(),
            );
            read += 1;
        }
    }));
    if all.is_ok() {
        return out;
    }
    // header `read` is the first unreadable one; each after it is read on its own
    let mut unreadable = read.to_string();
    for index in read + 1..count {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| headers.try_get(index))) {
            Ok(Some(header)) => out.append_copied(
                HeaderName::from_wire(header.key),
                header.value.unwrap_or_default(),
            ),
            Ok(None) => {}
            Err(_) => {
                unreadable.push(',');
                unreadable.push_str(&index.to_string());
            }
        }
    }
    tracing::warn!(
        %topic,
        partition = record.partition(),
        offset = record.offset(),
        headers = %unreadable,
        "record headers whose name is not UTF-8 cannot be read; delivering the record without them, named in {UNREADABLE_HEADERS}"
    );
    out.append(UNREADABLE_HEADERS, unreadable);
    out
}

/// A message's headers as a record's, except a `correlation-id` that only repeats the message's
/// id ([`Headers::correlation_repeats_id`]): a chain's first message carries its id once, so
/// the record loses nothing and every consumer parses one header less.
pub(crate) fn record_headers(message: &Message) -> OwnedHeaders {
    let headers = &message.headers;
    let repeated_id = headers.correlation_repeats_id();
    headers.iter().fold(
        OwnedHeaders::new_with_capacity(headers.len()),
        |record, (name, value)| {
            if repeated_id && name.matches(names::CORRELATION_ID) {
                return record;
            }
            record.insert(Header {
                key: name.as_str(),
                value: Some(value.as_bytes()),
            })
        },
    )
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use event_core::Context;
    use event_core::broker::Message;
    use event_core::headers::Headers;

    use super::{COPIES_CHUNK, COPIES_LARGEST, Copies};

    #[test]
    fn short_copies_share_a_buffer_until_it_is_full() {
        let mut copies = Copies::default();
        let a = copies.copy(b"first payload");
        let b = copies.copy(b"second");
        assert_eq!((&a[..], &b[..]), (&b"first payload"[..], &b"second"[..]));
        assert_eq!(
            b.as_ptr(),
            a.as_ptr().wrapping_add(a.len()),
            "one buffer, one copy after the other"
        );
        // fill the buffer: the copy that does not fit starts a new one, the old copies stay
        let filler = vec![7u8; COPIES_LARGEST];
        let mut kept = Vec::new();
        let mut previous = b.clone();
        let mut buffers = 1;
        for _ in 0..COPIES_CHUNK / COPIES_LARGEST {
            let copy = copies.copy(&filler);
            if copy.as_ptr() != previous.as_ptr().wrapping_add(previous.len()) {
                buffers += 1;
            }
            previous = copy.clone();
            kept.push(copy);
        }
        assert_eq!(
            buffers, 2,
            "the copy that did not fit started a second buffer"
        );
        assert_eq!(&a[..], b"first payload");
        assert_eq!(&b[..], b"second");
        assert!(kept.iter().all(|copy| copy[..] == filler[..]));
    }

    #[test]
    fn long_and_empty_copies_get_no_share_of_a_buffer() {
        let mut copies = Copies::default();
        let small = copies.copy(b"small");
        let long = vec![1u8; COPIES_LARGEST + 1];
        let copy = copies.copy(&long);
        assert_eq!(copy[..], long[..]);
        let after = copies.copy(b"after");
        assert_eq!(
            after.as_ptr(),
            small.as_ptr().wrapping_add(small.len()),
            "the long copy took nothing of the shared buffer"
        );
        assert!(copies.copy(b"").is_empty());
    }

    /// The headers of the record `headers` makes, in order, as a consumer reads them back.
    fn record_headers(headers: Headers) -> Headers {
        use rdkafka::message::Headers as _;
        let mut message = Message::new(Bytes::from_static(b"payload"));
        message.headers = headers;
        let mut read = Headers::default();
        for header in super::record_headers(&message).iter() {
            let value = Bytes::copy_from_slice(header.value.unwrap_or_default());
            read.append(header.key.to_owned(), value);
        }
        read
    }

    fn names(headers: &Headers) -> Vec<&str> {
        headers.iter().map(|(name, _)| name.as_str()).collect()
    }

    #[test]
    fn a_correlation_id_that_repeats_the_message_id_is_left_out() {
        // when it only repeats the id is `Headers::correlation_repeats_id`'s (tested in
        // event-core); here, that the record leaves out that header and keeps the others
        const ID: &str = "0190f4c2-0000-7000-8000-000000000001";
        let mut chain_start = Headers::default();
        chain_start.append("ce_id", ID);
        chain_start.append("ce_type", "shop.v1.OrderPlaced");
        chain_start.append("correlation-id", ID);
        chain_start.append("tenant", "t-1");
        let read = record_headers(chain_start);
        assert_eq!(names(&read), ["ce_id", "ce_type", "tenant"]);
        // read back from the record, the chain still starts at the message id
        assert_eq!(Context::from_headers(&read).correlation_id(), Some(ID));

        let mut own = Headers::default();
        own.append("ce_id", ID);
        own.append("Correlation-ID", "root");
        let read = record_headers(own);
        assert_eq!(names(&read), ["ce_id", "Correlation-ID"]);
        assert_eq!(Context::from_headers(&read).correlation_id(), Some("root"));
    }

    #[test]
    fn a_record_position_names_partition_and_offset() {
        let position = super::position(2, 17);
        assert_eq!(position.to_string(), "partition 2 offset 17");
        assert_eq!(position.partition(), Some(2));
        assert_eq!(position.number(), 17);
        assert_eq!(position.kind().attribute(), Some("messaging.kafka.offset"));
    }
}
