//! How Kafka records map onto the framework's messages: headers (a [`Message`]'s onto a
//! record's, a record's onto a [`Delivery`]'s), positions, and the content type of a record
//! whose headers cannot be read.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use event_core::backend::{Position, PositionKind, go_micro};
use event_core::broker::{Delivery, Message};
use event_core::headers::{HeaderName, HeaderValue, Headers};
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

/// Content type given to a record whose headers cannot be read, so that a typed subscriber
/// dead-letters it with a diagnosis instead of decoding it blind.
pub(crate) const INVALID_HEADERS_CONTENT_TYPE: &str = "application/x-kafka-invalid-headers";

/// The delivery of `record`; with `go_micro_envelope`, a record whose value is go-micro's
/// envelope is unwrapped (its headers, then the record's own that it does not name).
pub(crate) fn to_delivery(
    topic: &Arc<str>,
    record: &BorrowedMessage<'_>,
    go_micro_envelope: bool,
) -> Delivery {
    let value = record.payload().unwrap_or_default();
    let unwrapped = if go_micro_envelope {
        go_micro::from_envelope(topic, value)
    } else {
        None
    };
    let enveloped = unwrapped.is_some();
    let mut message = unwrapped.unwrap_or_else(|| Message::new(Bytes::copy_from_slice(value)));
    message.key = record.key().map(Bytes::copy_from_slice);
    if enveloped {
        if let Some(headers) = record.headers() {
            let own = read_headers(topic, record, headers);
            for (name, value) in own.iter() {
                if !message.headers.contains(name.as_str()) {
                    message.headers.append(name.clone(), value.clone());
                }
            }
        }
        return Delivery::new(
            topic.clone(),
            message,
            position(record.partition(), record.offset()),
        );
    }
    if let Some(headers) = record.headers() {
        message.headers = read_headers(topic, record, headers);
    }
    Delivery::new(
        topic.clone(),
        message,
        position(record.partition(), record.offset()),
    )
}

/// A record's headers; a record whose headers cannot be read is marked
/// [`INVALID_HEADERS_CONTENT_TYPE`].
fn read_headers(
    topic: &str,
    record: &BorrowedMessage<'_>,
    headers: &rdkafka::message::BorrowedHeaders,
) -> Headers {
    // rdkafka panics on a header name that is not UTF-8; such a record must still be
    // delivered (and diagnosed), not take the consumer down
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // copied without an allocation where that can be: a pooled vector, the names the
        // framework writes shared, short values inline
        let mut out = Headers::pooled(headers.count());
        for header in headers.iter() {
            out.append(
                HeaderName::from_wire(header.key),
                HeaderValue::copy_from_slice(header.value.unwrap_or_default()),
            );
        }
        out
    }));
    read.unwrap_or_else(|_| {
        tracing::error!(
            %topic,
            partition = record.partition(),
            offset = record.offset(),
            "record headers are not readable (a header name is not UTF-8); delivering it marked as {INVALID_HEADERS_CONTENT_TYPE}"
        );
        let mut marked = Headers::with_capacity(2);
        marked.append("content-type", INVALID_HEADERS_CONTENT_TYPE);
        marked.append(
            "x-event-error",
            "the record's headers could not be read: a header name is not UTF-8",
        );
        marked
    })
}

pub(crate) fn record_headers(message: &Message) -> OwnedHeaders {
    message.headers.iter().fold(
        OwnedHeaders::new_with_capacity(message.headers.len()),
        |headers, (name, value)| {
            headers.insert(Header {
                key: name.as_str(),
                value: Some(value.as_bytes()),
            })
        },
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_record_position_names_partition_and_offset() {
        let position = super::position(2, 17);
        assert_eq!(position.to_string(), "partition 2 offset 17");
        assert_eq!(position.partition(), Some(2));
        assert_eq!(position.number(), 17);
        assert_eq!(position.kind().attribute(), Some("messaging.kafka.offset"));
    }
}
