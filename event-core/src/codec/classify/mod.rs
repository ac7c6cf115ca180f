//! Payload classification for codec-mismatch diagnostics.
//!
//! When a typed subscriber cannot decode a message (or the content type says the payload is not
//! protobuf at all), [`classify`] looks at the headers and the first bytes and says what the
//! payload most likely is: a CloudEvents structured event, a go-micro JSON envelope, a Confluent
//! Schema Registry frame, a gRPC frame, JSON, text, gzip, protobuf of another shape, or opaque
//! binary. [`PayloadKind::hint`] turns that into advice for the user.
//!
//! The readers of each family of formats live in submodules: `wire` (protobuf wire format,
//! Confluent and gRPC framing), `json` (JSON documents and go-micro's envelope) and `text`
//! (content types and text previews).
//!
//! Everything here works on untrusted bytes: no function panics, allocates without bound or
//! recurses on its input.

use std::fmt;

use crate::headers::Headers;

mod json;
mod text;
mod wire;

#[cfg(test)]
mod tests;

pub(crate) use json::top_level_keys;
pub(crate) use wire::{confluent_frame_len, protobuf_fields};

use json::{go_micro_envelope, parse_json_document};
use text::{cloudevents_format, starts_with_ignore_ascii_case, text_preview};
use wire::{confluent_prefix, grpc_frame, header_message_indexes};

/// Header carrying the payload's media type.
const CONTENT_TYPE: &str = "content-type";
/// Header in which Confluent's header-mode serializer stores the value's schema GUID.
const VALUE_SCHEMA_ID: &str = "__value_schema_id";

/// What a payload looks like, from its headers and its first bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PayloadKind {
    /// CloudEvents structured mode (`content-type: application/cloudevents+...`).
    CloudEventsStructured {
        /// The event format: the media-type suffix after `+`, lowercased, without parameters
        /// (`"json"`, `"protobuf"`); empty if the content type has no suffix.
        format: String,
    },
    /// go-micro broker JSON envelope `{"Header":{...},"Body":"<base64>"}`.
    GoMicroEnvelope {
        /// The envelope's `Header["Content-Type"]` (key matched ignoring case).
        content_type: Option<String>,
        /// The envelope's `Header["Micro-Topic"]` (key matched ignoring case).
        topic: Option<String>,
        /// Length of the decoded `Body`, or `None` if it is not standard padded base64.
        body_len: Option<usize>,
    },
    /// Confluent Schema Registry framing.
    ConfluentFramed {
        /// The schema id from the 5-byte payload prefix; `None` in header mode, where the
        /// schema is identified by a GUID in the `__value_schema_id` header.
        schema_id: Option<u32>,
        /// The message-index path into the schema's `.proto` file (`[0]` is its first
        /// message); empty if the header-mode value could not be parsed.
        message_indexes: Vec<i32>,
        /// Whether the schema is identified by the `__value_schema_id` header rather than by a
        /// payload prefix (the payload itself is then plain protobuf).
        header_mode: bool,
    },
    /// gRPC length-prefixed frame (1 flag byte + u32 BE length == len-5).
    GrpcFramed {
        /// Whether the flag byte marks the message as compressed.
        compressed: bool,
        /// Length of the message after the 5-byte prefix.
        inner_len: usize,
    },
    /// A JSON document (object or array) that parses.
    Json {
        /// The first (up to 8) keys of a top-level object, in document order; empty for an
        /// array or an empty object.
        top_level_keys: Vec<String>,
    },
    /// UTF-8 text that is not JSON.
    Text {
        /// The first (up to 40) characters, with tab, CR and LF escaped as `\t`, `\r`, `\n`,
        /// followed by `…` if the text is longer.
        preview: String,
    },
    /// gzip-compressed bytes (1f 8b).
    Gzip,
    /// Zero bytes.
    Empty,
    /// Parses as protobuf wire format, but not as the expected message.
    Protobuf {
        /// Distinct top-level field numbers in order of first appearance (at most 16).
        field_numbers: Vec<u32>,
    },
    /// None of the above.
    Binary,
}

impl PayloadKind {
    /// Short kebab-case name, used in the `x-event-payload-kind` header and metrics:
    /// "cloudevents-structured", "go-micro-envelope", "confluent-framed", "grpc-framed",
    /// "json", "text", "gzip", "empty", "protobuf", "binary".
    pub fn as_str(&self) -> &'static str {
        match self {
            PayloadKind::CloudEventsStructured { .. } => "cloudevents-structured",
            PayloadKind::GoMicroEnvelope { .. } => "go-micro-envelope",
            PayloadKind::ConfluentFramed { .. } => "confluent-framed",
            PayloadKind::GrpcFramed { .. } => "grpc-framed",
            PayloadKind::Json { .. } => "json",
            PayloadKind::Text { .. } => "text",
            PayloadKind::Gzip => "gzip",
            PayloadKind::Empty => "empty",
            PayloadKind::Protobuf { .. } => "protobuf",
            PayloadKind::Binary => "binary",
        }
    }

    /// A one-sentence hint telling the user what probably happened and what to do.
    pub fn hint(&self) -> &'static str {
        match self {
            PayloadKind::CloudEventsStructured { .. } => {
                "the producer sent a CloudEvents structured-mode event (the whole event in the \
                 payload): decode the CloudEvents envelope first, or have the producer use binary \
                 mode (ce_* headers, raw protobuf payload)"
            }
            PayloadKind::GoMicroEnvelope { .. } => {
                "a go-micro Kafka/NATS producer wrapped the message in its JSON envelope \
                 ({\"Header\":…,\"Body\":\"<base64>\"}), which this subscription did not \
                 unwrap: add wire=go-micro to the kafka:// or nats:// URL \
                 (KafkaBrokerBuilder::go_micro_envelope(true), \
                 NatsBrokerBuilder::go_micro_envelope(true)) to read go-micro's envelope (with \
                 it on already, this envelope is malformed: a Header value that is not a \
                 string, or a Body that is not base64), or have the producer publish the bare \
                 message"
            }
            PayloadKind::ConfluentFramed {
                header_mode: true, ..
            } => {
                "the producer uses the Confluent Schema Registry header-mode serializer (schema \
                 GUID in the __value_schema_id header, the payload itself bare protobuf) and the \
                 payload is not the subscriber's message type: check that the registered schema \
                 and its message indexes name the subscriber's message type"
            }
            PayloadKind::ConfluentFramed { .. } => {
                "the producer uses the Confluent Schema Registry serializer: enable \
                 schema-registry framing on the subscriber \
                 (SubscribeOptions::schema_registry_framing(true)), which strips the 5-byte \
                 prefix and the message indexes"
            }
            PayloadKind::GrpcFramed { .. } => {
                "the payload carries a gRPC 5-byte length prefix (go-micro grpc codec or \
                 application/grpc): strip the prefix, or have the producer send \
                 application/protobuf"
            }
            PayloadKind::Json { .. } => {
                "the producer sent JSON: if it is the proto3 JSON of the subscriber's type, have \
                 the producer send content-type application/json and register the type's \
                 descriptors with event_core::codec::json::register_file_descriptor_set; \
                 otherwise publish with a typed Publisher, or have it send application/protobuf"
            }
            PayloadKind::Text { .. } => {
                "the producer sent plain text, not protobuf: check its value serializer (a string \
                 serializer?) and that it publishes to the right topic"
            }
            PayloadKind::Gzip => {
                "the payload is gzip-compressed at the application level: decompress it before \
                 decoding, or have the producer rely on broker compression (Kafka \
                 compression.type) instead"
            }
            PayloadKind::Empty => "an empty payload: a tombstone or a producer that sent nothing",
            PayloadKind::Protobuf { .. } => {
                "protobuf of another message type: check that producer and subscriber agree on \
                 the topic's type (published with the raw Broker API?)"
            }
            PayloadKind::Binary => {
                "bytes that are neither protobuf nor a known framing: possibly encrypted, \
                 compressed with another codec, or another serialization (Avro, MessagePack, …); \
                 check the producer's serializer"
            }
        }
    }
}

impl fmt::Display for PayloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadKind::CloudEventsStructured { format } if format.is_empty() => {
                f.write_str("CloudEvents structured-mode event")
            }
            PayloadKind::CloudEventsStructured { format } => {
                write!(f, "CloudEvents structured-mode event (format {format:?})")
            }
            PayloadKind::GoMicroEnvelope {
                content_type,
                topic,
                body_len,
            } => {
                f.write_str("go-micro JSON envelope (")?;
                match content_type {
                    Some(content_type) => write!(f, "content type {content_type:?}")?,
                    None => f.write_str("no content type")?,
                }
                if let Some(topic) = topic {
                    write!(f, ", topic {topic:?}")?;
                }
                match body_len {
                    Some(len) => write!(f, ", body {len} bytes)"),
                    None => f.write_str(", body not valid base64)"),
                }
            }
            PayloadKind::ConfluentFramed {
                schema_id,
                message_indexes,
                header_mode,
            } => {
                f.write_str("Confluent Schema Registry ")?;
                if *header_mode {
                    f.write_str(
                        "header-mode message (schema GUID in the __value_schema_id header",
                    )?;
                } else {
                    f.write_str("frame (")?;
                    match schema_id {
                        Some(id) => write!(f, "schema id {id}")?,
                        None => f.write_str("unknown schema id")?,
                    }
                }
                if message_indexes.is_empty() {
                    f.write_str(", message indexes unknown)")
                } else {
                    write!(f, ", message indexes {message_indexes:?})")
                }
            }
            PayloadKind::GrpcFramed {
                compressed,
                inner_len,
            } => {
                let compression = if *compressed {
                    "compressed"
                } else {
                    "uncompressed"
                };
                write!(
                    f,
                    "gRPC length-prefixed frame ({compression}, {inner_len}-byte message)"
                )
            }
            PayloadKind::Json { top_level_keys } if top_level_keys.is_empty() => {
                f.write_str("JSON array or empty JSON object")
            }
            PayloadKind::Json { top_level_keys } => {
                write!(f, "JSON object with keys {top_level_keys:?}")
            }
            PayloadKind::Text { preview } => write!(f, "text \"{preview}\""),
            PayloadKind::Gzip => f.write_str("gzip-compressed data"),
            PayloadKind::Empty => f.write_str("an empty payload"),
            PayloadKind::Protobuf { field_numbers } if field_numbers.is_empty() => {
                f.write_str("protobuf wire format without fields")
            }
            PayloadKind::Protobuf { field_numbers } => {
                write!(f, "protobuf wire format with fields {field_numbers:?}")
            }
            PayloadKind::Binary => f.write_str("binary data that is not protobuf wire format"),
        }
    }
}

/// Classifies a payload. `headers` are the message headers.
///
/// Checks, in order (the first match wins): a CloudEvents structured content type, an empty
/// payload, the Confluent `__value_schema_id` header, a go-micro JSON envelope, a gRPC frame, a
/// Confluent Schema Registry prefix, gzip, JSON, text, protobuf wire format; anything else is
/// [`PayloadKind::Binary`].
pub fn classify(headers: &Headers, payload: &[u8]) -> PayloadKind {
    let content_type = headers.get_str(CONTENT_TYPE).map(str::trim);

    if let Some(format) = content_type.and_then(cloudevents_format) {
        return PayloadKind::CloudEventsStructured { format };
    }
    if payload.is_empty() {
        return PayloadKind::Empty;
    }
    if let Some(value) = headers.get(VALUE_SCHEMA_ID) {
        return PayloadKind::ConfluentFramed {
            schema_id: None,
            message_indexes: header_message_indexes(value.as_bytes()).unwrap_or_default(),
            header_mode: true,
        };
    }

    // Parsed once, used by the go-micro envelope check and the JSON check.
    let json = parse_json_document(payload);
    if let Some(envelope) = json.as_ref().and_then(go_micro_envelope) {
        return envelope;
    }

    let grpc_content_type =
        content_type.is_some_and(|ct| starts_with_ignore_ascii_case(ct, "application/grpc"));
    if let Some(frame) = grpc_frame(payload, grpc_content_type) {
        return frame;
    }
    if let Some(frame) = confluent_prefix(payload) {
        return frame;
    }
    if payload.starts_with(&[0x1f, 0x8b]) {
        return PayloadKind::Gzip;
    }
    if let Some(document) = json {
        let top_level_keys = if document.is_object() {
            top_level_keys(payload)
        } else {
            Vec::new()
        };
        return PayloadKind::Json { top_level_keys };
    }

    let fields = protobuf_fields(payload);
    if let Some(preview) = text_preview(payload, fields.is_some()) {
        return PayloadKind::Text { preview };
    }
    match fields {
        Some(field_numbers) => PayloadKind::Protobuf { field_numbers },
        None => PayloadKind::Binary,
    }
}
