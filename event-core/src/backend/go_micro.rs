//! go-micro's broker envelope, for backends whose go-micro broker wraps every message in it.
//!
//! go-micro's Kafka broker plugin and its NATS broker do not use the transport's headers:
//! they write the whole `broker.Message` as JSON into the record value or the NATS payload,
//! `{"Header":{"Content-Type":"application/protobuf","Micro-ID":"…","Micro-Topic":"orders"},
//! "Body":"<base64>"}` (field names as Go spells them, the body in standard padded base64,
//! header values strings). A backend set to speak go-micro wraps what it publishes with
//! [`to_envelope`] and unwraps what it consumes with [`from_envelope`], so that both sides
//! see the same headers and payload as on every other transport.
//!
//! | our header | in the envelope's `Header` |
//! |---|---|
//! | `content-type` | `Content-Type` (go-micro picks its codec by it) |
//! | `ce_id` (the message id) | `Micro-ID` (go-micro's id; read back as the message id) |
//! | the topic | `Micro-Topic` |
//! | `traceparent`, `tracestate`, `baggage` | `Traceparent`, `Tracestate`, `Baggage` (go-micro's spelling) |
//! | everything else (`ce_type`, `ce_source`, `ce_time`, correlation, user metadata) | the same name |
//!
//! A correlation id that only repeats the message id is left out, as on RabbitMQ (the reader's
//! context takes the id for a missing one). A name with several values keeps its first:
//! go-micro's header is a map of strings. A value
//! that is not UTF-8 text cannot travel in JSON and is left out. The key is not in the
//! envelope (go-micro has none); a backend keeps it where its transport has one.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde_json::{Map, Value};

use crate::broker::Message;
use crate::headers::{HeaderName, Headers, names};

/// go-micro's spelling of the names it reads; others keep ours.
fn go_micro_name(name: &str) -> Option<&'static str> {
    const SPELLINGS: [(&str, &str); 5] = [
        (names::CONTENT_TYPE, "Content-Type"),
        (names::CE_ID, names::MICRO_ID),
        (names::TRACEPARENT, "Traceparent"),
        (names::TRACESTATE, "Tracestate"),
        (names::BAGGAGE, "Baggage"),
    ];
    SPELLINGS
        .iter()
        .find(|(ours, _)| name.eq_ignore_ascii_case(ours))
        .map(|(_, theirs)| *theirs)
}

/// `message`, published to `topic`, as go-micro's envelope: the bytes to put in a Kafka
/// record value or a NATS payload.
pub fn to_envelope(topic: &str, message: &Message) -> Bytes {
    let mut header = Map::new();
    let mut has_micro_id = false;
    let repeated_id = message.headers.correlation_repeats_id();
    for (name, value) in message.headers.iter() {
        let Ok(value) = value.to_str() else {
            continue;
        };
        let name = name.as_str();
        if name.eq_ignore_ascii_case(names::MICRO_TOPIC) {
            continue;
        }
        // a chain's first message: the reader's context takes the id for a missing one
        if repeated_id && name.eq_ignore_ascii_case(names::CORRELATION_ID) {
            continue;
        }
        let wire = go_micro_name(name).unwrap_or(name);
        if wire == names::MICRO_ID || name.eq_ignore_ascii_case(names::MICRO_ID) {
            // one id: a `Micro-ID` the message already carries ranks after `ce_id`
            if has_micro_id {
                continue;
            }
            has_micro_id = true;
            header.insert(names::MICRO_ID.to_owned(), Value::from(value));
            continue;
        }
        header
            .entry(wire.to_owned())
            .or_insert_with(|| Value::from(value));
    }
    header.insert(names::MICRO_TOPIC.to_owned(), Value::from(topic));
    let mut envelope = Map::new();
    envelope.insert("Header".to_owned(), Value::Object(header));
    envelope.insert(
        "Body".to_owned(),
        Value::from(STANDARD.encode(&message.payload)),
    );
    Bytes::from(serde_json::to_vec(&Value::Object(envelope)).expect("a JSON map serializes"))
}

/// The message inside go-micro's envelope `value`, consumed from `topic`; `None` when `value`
/// is not such an envelope (an object with a `Header` object of strings and a `Body` string
/// of base64), so that the backend hands it over as it is, to be decoded or diagnosed.
///
/// `Micro-Topic` is dropped when it only repeats `topic`; `Micro-ID` stays, and reads as the
/// message id ([`Headers::message_id`]). The message has no key.
pub fn from_envelope(topic: &str, value: &[u8]) -> Option<Message> {
    if value.first() != Some(&b'{') {
        return None;
    }
    let Value::Object(mut envelope) = serde_json::from_slice::<Value>(value).ok()? else {
        return None;
    };
    let Value::String(body) = envelope.remove("Body")? else {
        return None;
    };
    let Value::Object(header) = envelope.remove("Header")? else {
        return None;
    };
    let payload = STANDARD.decode(body.as_bytes()).ok()?;
    let mut headers = Headers::with_capacity(header.len());
    for (name, value) in header {
        let Value::String(value) = value else {
            return None;
        };
        if name.eq_ignore_ascii_case(names::MICRO_TOPIC) && value == topic {
            continue;
        }
        headers.append(HeaderName::from_wire(&name), value);
    }
    Some(Message {
        headers,
        key: None,
        payload: Bytes::from(payload),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours() -> Message {
        Message::new(&b"\x0a\x03abc"[..])
            .with_header("ce_id", "0190d4b6-0000-7000-8000-000000000001")
            .with_header("ce_type", "users.v1.UserCreated")
            .with_header("content-type", "application/protobuf")
            .with_header("correlation-id", "0190d4b6-0000-7000-8000-000000000001")
            .with_header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .with_header("tenant", "acme")
            .with_header("tenant", "second value is dropped")
            .with_key("user-1")
    }

    #[test]
    fn the_envelope_is_what_go_micro_writes() {
        let envelope = to_envelope("users.created", &ours());
        let json: Value = serde_json::from_slice(&envelope).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "Header": {
                    "Micro-ID": "0190d4b6-0000-7000-8000-000000000001",
                    "ce_type": "users.v1.UserCreated",
                    "Content-Type": "application/protobuf",
                    "Traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                    "tenant": "acme",
                    "Micro-Topic": "users.created",
                },
                "Body": "CgNhYmM=",
            })
        );
    }

    #[test]
    fn an_envelope_round_trips_to_the_same_facts() {
        let message = from_envelope("users.created", &to_envelope("users.created", &ours()))
            .expect("an envelope");
        let headers = &message.headers;
        assert_eq!(
            headers.message_id(),
            Some("0190d4b6-0000-7000-8000-000000000001")
        );
        assert_eq!(headers.message_type(), Some("users.v1.UserCreated"));
        assert_eq!(headers.content_type(), Some("application/protobuf"));
        assert_eq!(
            headers.get_str("traceparent"),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        assert_eq!(headers.get_str("tenant"), Some("acme"));
        assert!(!headers.contains("Micro-Topic"), "it repeated the topic");
        assert_eq!(&message.payload[..], b"\x0a\x03abc");
        assert_eq!(message.key, None);
    }

    #[test]
    fn a_go_micro_envelope_is_read_with_its_own_names() {
        // as go-micro's Kafka plugin writes it: sorted keys, escaped characters
        let value = br#"{"Header":{"Content-Type":"application/json","Micro-ID":"2b1c","Micro-Topic":"orders.v2","X-Note":"a \u003c b"},"Body":"eyJpZCI6MX0="}"#;
        let message = from_envelope("orders", value).expect("an envelope");
        assert_eq!(message.headers.message_id(), Some("2b1c"));
        assert_eq!(message.headers.content_type(), Some("application/json"));
        // another topic than the one it was consumed from is kept
        assert_eq!(message.headers.get_str("micro-topic"), Some("orders.v2"));
        assert_eq!(message.headers.get_str("x-note"), Some("a < b"));
        assert_eq!(&message.payload[..], br#"{"id":1}"#);
    }

    #[test]
    fn what_is_not_an_envelope_is_left_alone() {
        for value in [
            &b""[..],
            b"\x0a\x03abc",
            br#"{"id":1}"#,
            br#"{"Header":{},"Body":"not base64!"}"#,
            br#"{"Header":{"n":1},"Body":""}"#,
            br#"{"Header":[],"Body":""}"#,
            br#"{"Header":{}}"#,
            br#"{"Header":{},"Body":"" "#,
        ] {
            assert!(
                from_envelope("t", value).is_none(),
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
        // an empty body is a message with an empty payload
        let empty = from_envelope("t", br#"{"Header":{},"Body":""}"#).expect("an envelope");
        assert!(empty.payload.is_empty() && empty.headers.is_empty());
    }

    #[test]
    fn a_message_that_carries_micro_id_keeps_one_id() {
        let message = Message::new("x")
            .with_header("ce_id", "ours")
            .with_header("Micro-ID", "theirs");
        let json: Value = serde_json::from_slice(&to_envelope("t", &message)).unwrap();
        assert_eq!(json["Header"]["Micro-ID"], "ours");
        assert_eq!(json["Header"].as_object().unwrap().len(), 2);
    }
}
