//! Encoding, decoding, and the diagnosis of messages that do not decode.
//!
//! Payloads are protobuf binary (`application/protobuf`), the body and nothing else. On the
//! way in, a typed subscriber checks the message before decoding it (DESIGN.md §5):
//!
//! 1. a type header (`ce_type`) naming another type than the subscriber's is refused, and
//!    nothing is decoded;
//! 2. a content type that is not protobuf (JSON, CloudEvents structured, ...) is refused;
//! 3. the bytes are decoded; if that fails, or if a message *without* a type header turns out
//!    to be empty or a JSON document, the payload is classified ([`PayloadKind`]).
//!
//! Each refusal is a [`DecodeError`] whose [`Diagnosis`] names the topic, position, message
//! id, expected and found type, content type, what the bytes look like and a hint. The
//! delivery loop dead-letters such a message at once, with that diagnosis in its
//! `x-event-error` header.

use std::fmt;

use bytes::{Buf, Bytes};

use crate::broker::{Delivery, FailureKind, Position};

mod classify;

pub use classify::{PayloadKind, classify};

/// The content type this crate writes.
pub const PROTOBUF: &str = "application/protobuf";

/// Whether a content type denotes plain protobuf bytes.
///
/// Accepts `application/protobuf` and its aliases (`application/x-protobuf`,
/// `application/x-protobuffer`, `application/vnd.google.protobuf`), `application/octet-stream`
/// (go-micro's gRPC codec) and go-micro's `application/grpc`, `application/grpc+proto`
/// (raw protobuf when written by its gRPC client), ignoring parameters and case.
pub fn is_protobuf(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    [
        "application/protobuf",
        "application/x-protobuf",
        "application/x-protobuffer",
        "application/vnd.google.protobuf",
        "application/octet-stream",
        "application/grpc",
        "application/grpc+proto",
    ]
    .iter()
    .any(|known| known.eq_ignore_ascii_case(essence))
}

/// Lower-case hex of the first `max` bytes.
pub fn hex(bytes: &[u8], max: usize) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len().min(max) * 2 + 1);
    for b in bytes.iter().take(max) {
        let _ = write!(out, "{b:02x}");
    }
    if bytes.len() > max {
        out.push('…');
    }
    out
}

/// Everything known about a message that did not decode.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Diagnosis {
    /// Topic it was consumed from.
    pub topic: String,
    /// Where it sits in the broker.
    pub position: Position,
    /// Its id, if it had one.
    pub message_id: Option<String>,
    /// The protobuf type the subscriber expects.
    pub expected_type: String,
    /// The type header it carried, if any.
    pub found_type: Option<String>,
    /// The content type it carried, if any.
    pub content_type: Option<String>,
    /// What the payload looks like.
    pub payload_kind: PayloadKind,
    /// Payload length in bytes.
    pub payload_len: usize,
    /// The first bytes, hex.
    pub payload_preview: String,
}

impl Diagnosis {
    /// Diagnoses `delivery` for a subscriber expecting `expected_type`.
    pub fn of(delivery: &Delivery, expected_type: &str) -> Diagnosis {
        let headers = delivery.headers();
        let payload = delivery.payload();
        Diagnosis {
            topic: delivery.topic().to_owned(),
            position: delivery.position().clone(),
            message_id: headers.message_id().map(str::to_owned),
            expected_type: expected_type.to_owned(),
            found_type: headers.message_type().map(str::to_owned),
            content_type: headers.content_type().map(str::to_owned),
            payload_kind: classify(headers, payload),
            payload_len: payload.len(),
            payload_preview: hex(payload, 16),
        }
    }

    /// What probably happened and what to do about it.
    pub fn hint(&self) -> String {
        match &self.found_type {
            Some(found) if found != &self.expected_type => format!(
                "the publisher sends {found} on this topic but this subscriber expects {}: \
                 share one typed Topic<T> constant between publisher and subscriber",
                self.expected_type
            ),
            Some(_) => self.payload_kind.hint().to_owned(),
            None if self.payload_kind.hint().contains("raw Broker API") => {
                self.payload_kind.hint().to_owned()
            }
            None => format!(
                "{} (the message has no type header: published with the raw Broker API or by \
                 another framework?)",
                self.payload_kind.hint()
            ),
        }
    }
}

impl fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "topic {:?}, {}", self.topic, self.position)?;
        if let Some(id) = &self.message_id {
            write!(f, ", message id {id}")?;
        }
        write!(f, "; expected type {}", self.expected_type)?;
        match &self.found_type {
            Some(t) => write!(f, ", type header {t}")?,
            None => f.write_str(", no type header")?,
        }
        match &self.content_type {
            Some(ct) => write!(f, ", content type {ct}")?,
            None => f.write_str(", no content type")?,
        }
        write!(
            f,
            "; payload: {} ({} bytes: {}); hint: {}",
            self.payload_kind,
            self.payload_len,
            if self.payload_preview.is_empty() {
                "-"
            } else {
                &self.payload_preview
            },
            self.hint()
        )
    }
}

/// Why a delivery could not become a typed message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The type header names another message type; nothing was decoded.
    #[error("type mismatch: expected {}, the message is {} ({diagnosis})", diagnosis.expected_type, diagnosis.found_type.as_deref().unwrap_or("?"))]
    TypeMismatch {
        /// The diagnosis.
        diagnosis: Box<Diagnosis>,
    },
    /// The content type is not protobuf.
    #[error("cannot decode content type {} as protobuf ({diagnosis})", diagnosis.content_type.as_deref().unwrap_or("?"))]
    UnsupportedContentType {
        /// The diagnosis.
        diagnosis: Box<Diagnosis>,
    },
    /// The bytes are not a valid encoding of the expected type.
    #[error("payload is not a valid {} ({diagnosis})", diagnosis.expected_type)]
    Malformed {
        /// The diagnosis.
        diagnosis: Box<Diagnosis>,
        /// prost's error.
        #[source]
        source: prost::DecodeError,
    },
    /// No type header vouches for the bytes and they are empty, or a JSON document that
    /// decoded as protobuf by accident.
    #[error("payload is {}, not protobuf ({diagnosis})", diagnosis.payload_kind)]
    NotProtobuf {
        /// The diagnosis.
        diagnosis: Box<Diagnosis>,
    },
}

impl DecodeError {
    /// The diagnosis.
    pub fn diagnosis(&self) -> &Diagnosis {
        match self {
            DecodeError::TypeMismatch { diagnosis }
            | DecodeError::UnsupportedContentType { diagnosis }
            | DecodeError::Malformed { diagnosis, .. }
            | DecodeError::NotProtobuf { diagnosis } => diagnosis,
        }
    }

    /// The failure kind it is dead-lettered with.
    pub fn failure_kind(&self) -> FailureKind {
        match self {
            DecodeError::TypeMismatch { .. } => FailureKind::TypeMismatch,
            DecodeError::UnsupportedContentType { .. } => FailureKind::UnsupportedContentType,
            DecodeError::Malformed { .. } | DecodeError::NotProtobuf { .. } => FailureKind::Decode,
        }
    }
}

/// A successfully decoded message.
#[derive(Debug)]
pub(crate) struct Decoded<T> {
    pub(crate) message: T,
    /// Whether a type header vouched for the type.
    pub(crate) type_verified: bool,
    /// Top-level fields the payload had that the decoded message does not (schema drift).
    pub(crate) unknown_fields: Vec<u32>,
}

/// Decodes `delivery` as `T`, checking content type and type header first.
pub(crate) fn decode<T: prost::Message + Default>(
    delivery: &Delivery,
    expected_type: &str,
) -> Result<Decoded<T>, DecodeError> {
    let headers = delivery.headers();
    let diagnose = || Box::new(Diagnosis::of(delivery, expected_type));
    // compared as bytes first: the usual case needs no UTF-8 check
    let found = match headers.message_type_value() {
        Some(value) if value.as_bytes() == expected_type.as_bytes() => Some(expected_type),
        // a type header that is not text counts as absent, as in `Headers::message_type`
        Some(value) => match value.to_str() {
            Ok(_) => {
                return Err(DecodeError::TypeMismatch {
                    diagnosis: diagnose(),
                });
            }
            Err(_) => None,
        },
        None => None,
    };
    if let Some(ct) = headers.content_type_value()
        && !ct.as_bytes().eq_ignore_ascii_case(PROTOBUF.as_bytes())
        && ct.to_str().is_ok_and(|ct| !is_protobuf(ct))
    {
        return Err(DecodeError::UnsupportedContentType {
            diagnosis: diagnose(),
        });
    }
    let payload: &Bytes = delivery.payload();
    let message = match T::decode(PayloadReader::new(payload)) {
        Ok(m) => m,
        Err(source) => {
            return Err(DecodeError::Malformed {
                diagnosis: diagnose(),
                source,
            });
        }
    };
    // Without a type header nothing vouches for the bytes: an empty payload (a Kafka
    // tombstone, a producer that sent nothing) or a JSON document that happens to parse as
    // protobuf is refused rather than handed over as a default-valued message.
    if found.is_none() && payload.is_empty() {
        return Err(DecodeError::NotProtobuf {
            diagnosis: diagnose(),
        });
    }
    if found.is_none() && payload.first().is_some_and(|b| matches!(b, b'{' | b'[')) {
        let kind = classify(headers, payload);
        if matches!(
            kind,
            PayloadKind::Json { .. } | PayloadKind::GoMicroEnvelope { .. }
        ) {
            return Err(DecodeError::NotProtobuf {
                diagnosis: diagnose(),
            });
        }
    }
    let unknown_fields = if message.encoded_len() != payload.len() {
        unknown_fields(payload, &message)
    } else {
        Vec::new()
    };
    Ok(Decoded {
        message,
        type_verified: found.is_some(),
        unknown_fields,
    })
}

/// A delivery's payload read as a [`Buf`] without taking a handle on it: `bytes` fields are cut
/// from the payload (zero-copy, one handle each), everything else is read in place. Decoding
/// from a clone of the payload instead costs a handle per message, and the first clone of a
/// payload built from a vector allocates.
struct PayloadReader<'a> {
    payload: &'a Bytes,
    at: usize,
}

impl<'a> PayloadReader<'a> {
    fn new(payload: &'a Bytes) -> Self {
        PayloadReader { payload, at: 0 }
    }
}

impl Buf for PayloadReader<'_> {
    fn remaining(&self) -> usize {
        self.payload.len() - self.at
    }

    fn chunk(&self) -> &[u8] {
        &self.payload[self.at..]
    }

    fn advance(&mut self, count: usize) {
        assert!(
            count <= self.remaining(),
            "advance by {count} past the {} bytes left",
            self.remaining()
        );
        self.at += count;
    }

    fn copy_to_bytes(&mut self, len: usize) -> Bytes {
        assert!(
            len <= self.remaining(),
            "{len} bytes asked of the {} left",
            self.remaining()
        );
        let bytes = self.payload.slice(self.at..self.at + len);
        self.at += len;
        bytes
    }
}

/// Top-level field numbers present in `payload` but absent from `decoded` re-encoded.
fn unknown_fields<T: prost::Message>(payload: &[u8], decoded: &T) -> Vec<u32> {
    let Some(seen) = classify::protobuf_fields(payload) else {
        return Vec::new();
    };
    let known = classify::protobuf_fields(&decoded.encode_to_vec()).unwrap_or_default();
    seen.into_iter().filter(|f| !known.contains(f)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protobuf_content_types() {
        for ct in [
            "application/protobuf",
            "Application/X-Protobuf",
            "application/protobuf; proto=users.v1.UserCreated",
            "application/octet-stream",
            "application/grpc+proto",
        ] {
            assert!(is_protobuf(ct), "{ct}");
        }
        for ct in [
            "application/json",
            "application/cloudevents+json",
            "text/plain",
        ] {
            assert!(!is_protobuf(ct), "{ct}");
        }
    }

    #[test]
    fn bytes_fields_are_cut_from_the_payload_not_copied() {
        use prost::Message as _;
        let tick = event_proto::bench::v1::Tick {
            seq: 300,
            payload: Bytes::from_static(b"0123456789"),
        };
        let payload = Bytes::from(tick.encode_to_vec());
        let decoded =
            event_proto::bench::v1::Tick::decode(PayloadReader::new(&payload)).expect("decodes");
        assert_eq!(decoded, tick);
        let range = payload.as_ptr_range();
        assert!(
            range.contains(&decoded.payload.as_ptr()),
            "the bytes field was copied out of the payload"
        );
        // a truncated payload is an error, not a panic
        let truncated = payload.slice(..payload.len() - 3);
        assert!(event_proto::bench::v1::Tick::decode(PayloadReader::new(&truncated)).is_err());
    }

    #[test]
    fn hex_preview_truncates() {
        assert_eq!(hex(&[0x0a, 0x03], 16), "0a03");
        assert_eq!(hex(&[0; 20], 2), "0000…");
    }
}
