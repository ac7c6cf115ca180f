//! What is known about a message that did not decode ([`Diagnosis`]), and the error that
//! carries it ([`DecodeError`]).

use std::fmt;

use super::{PayloadKind, Selected, classify, json, select};
use crate::broker::{Delivery, FailureKind, Position};
use crate::hex::hex;

/// The codec a message's content type selects for the subscriber's type, and what it lacked.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecChoice {
    /// Protobuf binary: a protobuf content type, or none.
    Protobuf {
        /// Whether the subscription strips a Confluent Schema Registry prefix first
        /// ([`SubscribeOptions::schema_registry_framing`](crate::broker::SubscribeOptions::schema_registry_framing)).
        schema_registry_framing: bool,
    },
    /// proto3 JSON (`application/json`) of a type whose descriptor is registered.
    ProtoJson {
        /// The JSON names of the expected type's fields, in declaration order.
        expected_fields: Vec<String>,
    },
    /// proto3 JSON of a type whose descriptor is not registered: nothing can decode it.
    ProtoJsonUnregistered,
    /// A content type that is neither protobuf nor JSON.
    Unsupported,
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
    /// The codec its content type selects.
    pub codec: CodecChoice,
    /// What the payload looks like.
    pub payload_kind: PayloadKind,
    /// Payload length in bytes.
    pub payload_len: usize,
    /// The first bytes, hex.
    pub payload_preview: String,
}

impl Diagnosis {
    /// Diagnoses `delivery` for a subscriber expecting `expected_type`, with the default
    /// decoding settings.
    pub fn of(delivery: &Delivery, expected_type: &str) -> Diagnosis {
        Diagnosis::with_framing(delivery, expected_type, false)
    }

    /// [`Diagnosis::of`] for a subscription that does or does not strip Confluent frames.
    pub(crate) fn with_framing(
        delivery: &Delivery,
        expected_type: &str,
        schema_registry_framing: bool,
    ) -> Diagnosis {
        let headers = delivery.headers();
        let payload = delivery.payload();
        let codec = match select(headers) {
            Selected::Protobuf => CodecChoice::Protobuf {
                schema_registry_framing,
            },
            Selected::Json => match json::json_field_names(expected_type) {
                Some(expected_fields) => CodecChoice::ProtoJson { expected_fields },
                None => CodecChoice::ProtoJsonUnregistered,
            },
            Selected::Unsupported => CodecChoice::Unsupported,
        };
        Diagnosis {
            topic: delivery.topic().to_owned(),
            position: *delivery.position(),
            message_id: headers.message_id().map(str::to_owned),
            expected_type: expected_type.to_owned(),
            found_type: headers.message_type().map(str::to_owned),
            content_type: headers.content_type().map(str::to_owned),
            codec,
            payload_kind: classify(headers, payload),
            payload_len: payload.len(),
            payload_preview: hex(payload, 16),
        }
    }

    /// What probably happened and what to do about it.
    pub fn hint(&self) -> String {
        let expected = &self.expected_type;
        if let Some(found) = &self.found_type
            && found != expected
        {
            return format!(
                "the publisher sends {found} on this topic but this subscriber expects \
                 {expected}: share one typed Topic<T> constant between publisher and subscriber"
            );
        }
        let kind = &self.payload_kind;
        let hint = match &self.codec {
            CodecChoice::ProtoJsonUnregistered => {
                let mut hint = format!(
                    "the content type is proto3 JSON and no descriptor of {expected} is \
                     registered: call event_core::codec::json::register_file_descriptor_set \
                     with the file descriptor set of its .proto files at start-up \
                     (event_proto::FILE_DESCRIPTOR_SET for the event-proto types)"
                );
                if !matches!(kind, PayloadKind::Json { .. }) {
                    hint.push_str("; besides, ");
                    hint.push_str(kind.hint());
                }
                hint
            }
            CodecChoice::ProtoJson { expected_fields } => match kind {
                PayloadKind::Json { .. } => {
                    let mut hint = format!(
                        "the JSON does not fit {expected}, whose fields are \
                         {expected_fields:?}: check the producer's keys and values against \
                         them (the error names the first that does not fit) and that it \
                         publishes {expected} on this topic"
                    );
                    if self.found_type.is_none() {
                        hint.push_str(
                            "; without a type header, a key that is not a field is refused",
                        );
                    }
                    hint
                }
                other => format!(
                    "the content type says proto3 JSON of {expected}, but the payload is not \
                     a JSON object of it: {}",
                    other.hint()
                ),
            },
            CodecChoice::Protobuf {
                schema_registry_framing: true,
            } => match kind {
                PayloadKind::ConfluentFramed {
                    header_mode: false, ..
                } => format!(
                    "schema-registry framing stripped the Confluent prefix, but what follows is \
                     not a valid {expected}: check that the schema the producer registered \
                     (schema id and message indexes above) is {expected}"
                ),
                other if self.payload_preview.starts_with("00") => format!(
                    "schema-registry framing is on, but the payload does not start with a valid \
                     Confluent prefix (magic byte 0, 4-byte schema id, message indexes): {}",
                    other.hint()
                ),
                other => other.hint().to_owned(),
            },
            CodecChoice::Protobuf { .. } | CodecChoice::Unsupported => kind.hint().to_owned(),
        };
        if self.found_type.is_some() || hint.contains("raw Broker API") {
            hint
        } else {
            format!(
                "{hint} (the message has no type header: published with the raw Broker API or \
                 by another framework?)"
            )
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
    /// The content type is neither protobuf nor JSON.
    #[error("cannot decode content type {} as protobuf or proto3 JSON ({diagnosis})", diagnosis.content_type.as_deref().unwrap_or("?"))]
    UnsupportedContentType {
        /// The diagnosis.
        diagnosis: Box<Diagnosis>,
    },
    /// The content type is JSON and no descriptor of the expected type is registered
    /// ([`json::register_file_descriptor_set`]).
    #[error("cannot decode content type {} as protobuf, nor as proto3 JSON without a registered descriptor of {} ({diagnosis})", diagnosis.content_type.as_deref().unwrap_or("?"), diagnosis.expected_type)]
    DescriptorNotRegistered {
        /// The diagnosis.
        diagnosis: Box<Diagnosis>,
    },
    /// The bytes are not a valid protobuf encoding of the expected type.
    #[error("payload is not a valid {} ({diagnosis})", diagnosis.expected_type)]
    Malformed {
        /// The diagnosis.
        diagnosis: Box<Diagnosis>,
        /// prost's error.
        #[source]
        source: prost::DecodeError,
    },
    /// The subscription strips Confluent Schema Registry frames and the payload starts with
    /// the frame's magic byte, but not with a valid frame.
    #[error("payload does not start with a valid Confluent Schema Registry frame ({diagnosis})")]
    InvalidFrame {
        /// The diagnosis.
        diagnosis: Box<Diagnosis>,
    },
    /// The bytes are not proto3 JSON of the expected type.
    #[error("payload is not the proto3 JSON of {} ({diagnosis})", diagnosis.expected_type)]
    InvalidJson {
        /// The diagnosis.
        diagnosis: Box<Diagnosis>,
        /// The JSON parser's error: where, and which key or value does not fit.
        #[source]
        source: serde_json::Error,
    },
    /// The registered descriptor of the expected type does not describe its Rust type.
    #[error("the registered descriptor of {} does not match its Rust type ({diagnosis})", diagnosis.expected_type)]
    DescriptorMismatch {
        /// The diagnosis.
        diagnosis: Box<Diagnosis>,
        /// The error of decoding one through the other.
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
            | DecodeError::DescriptorNotRegistered { diagnosis }
            | DecodeError::Malformed { diagnosis, .. }
            | DecodeError::InvalidFrame { diagnosis }
            | DecodeError::InvalidJson { diagnosis, .. }
            | DecodeError::DescriptorMismatch { diagnosis, .. }
            | DecodeError::NotProtobuf { diagnosis } => diagnosis,
        }
    }

    /// The failure kind it is dead-lettered with.
    pub fn failure_kind(&self) -> FailureKind {
        match self {
            DecodeError::TypeMismatch { .. } => FailureKind::TypeMismatch,
            DecodeError::UnsupportedContentType { .. }
            | DecodeError::DescriptorNotRegistered { .. } => FailureKind::UnsupportedContentType,
            DecodeError::Malformed { .. }
            | DecodeError::InvalidFrame { .. }
            | DecodeError::InvalidJson { .. }
            | DecodeError::DescriptorMismatch { .. }
            | DecodeError::NotProtobuf { .. } => FailureKind::Decode,
        }
    }
}
