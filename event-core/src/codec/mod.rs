//! Encoding, decoding, and the diagnosis of messages that do not decode.
//!
//! # Codecs
//!
//! A [`Codec`] turns a message into payload bytes and back, and names the content type it
//! writes. Two come with the crate:
//!
//! | codec | content type | |
//! |---|---|---|
//! | [`Protobuf`] | `application/protobuf` | protobuf binary, the body and nothing else; the default |
//! | [`ProtoJson`] | `application/json` | the proto3 canonical JSON mapping, through the descriptors registered with [`json::register_file_descriptor_set`] |
//!
//! A [`Publisher`](crate::Publisher) encodes with [`Protobuf`] unless told otherwise
//! ([`Publisher::json`](crate::Publisher::json),
//! [`Publisher::with_codec`](crate::Publisher::with_codec)). A typed subscriber picks the codec
//! of each message by its content type: protobuf binary for `application/protobuf` and its
//! aliases ([`is_protobuf`]) or no content type at all, proto3 JSON for `application/json`
//! with any parameters ([`is_json`]). proto3 JSON needs nothing from the message type beyond
//! what protobuf binary needs (`prost::Message + prost::Name + Default`): the type's
//! descriptor is looked up at run time by its full name, so code that never meets JSON
//! registers nothing.
//!
//! # Checks before decoding
//!
//! On the way in, a typed subscriber checks the message before decoding it:
//!
//! 1. a type header (`ce_type`) naming another type than the subscriber's is refused, and
//!    nothing is decoded;
//! 2. a content type that is neither protobuf nor JSON (CloudEvents structured, text, ...) is
//!    refused, and so is JSON of a type whose descriptor is not registered;
//! 3. the bytes are decoded by the codec of their content type. Protobuf: a subscription with
//!    [`schema_registry_framing`](crate::broker::SubscribeOptions::schema_registry_framing)
//!    strips a Confluent Schema Registry prefix first; if decoding fails, or if a message
//!    *without* a type header turns out to be empty or a JSON document, the payload is
//!    classified ([`PayloadKind`]). JSON: without a type header a key that is not a field of
//!    the type is refused (nothing else vouches for the type); with one it is schema drift,
//!    as an unknown protobuf field is.
//!
//! Each refusal is a [`DecodeError`] whose [`Diagnosis`] names the topic, position, message
//! id, expected and found type, content type, what the bytes look like and a hint. The
//! delivery loop dead-letters such a message at once, with that diagnosis in its
//! `x-event-error` header.

use std::fmt;

use bytes::Bytes;

mod check;
mod classify;
mod decode;
mod diagnosis;
pub mod json;
mod protobuf;

pub use check::check;
pub use classify::{PayloadKind, classify};
pub use diagnosis::{CodecChoice, DecodeError, Diagnosis};
pub use json::ProtoJson;
pub use protobuf::Protobuf;

/// Lower-case hex of the first bytes (kept here, where it was first public).
pub use crate::hex::hex;

pub(crate) use decode::{DecodeSettings, decode};
pub(crate) use protobuf::encode_payload;

/// The content type of protobuf binary, which [`Protobuf`] writes.
pub const PROTOBUF: &str = "application/protobuf";

/// The content type of proto3 JSON, which [`ProtoJson`] writes.
pub const JSON: &str = "application/json";

/// A payload encoding: the content type it writes, and how a `T` becomes payload bytes and
/// back.
///
/// [`Protobuf`] and [`ProtoJson`] implement it for every prost message; a
/// [`Publisher`](crate::Publisher) takes any implementation
/// ([`Publisher::with_codec`](crate::Publisher::with_codec)). On the way in, typed
/// subscribers choose between the crate's own codecs by content type.
///
/// ```
/// use event_core::codec::{Codec, Protobuf};
/// # #[derive(Clone, PartialEq, prost::Message)] pub struct UserCreated { #[prost(string, tag = "1")] pub email: String }
/// # impl prost::Name for UserCreated { const NAME: &'static str = "UserCreated"; const PACKAGE: &'static str = "users.v1"; }
///
/// let user = UserCreated { email: "ada@example.com".into() };
/// let bytes = Codec::<UserCreated>::encode(&Protobuf, &user)?;
/// assert_eq!(Codec::<UserCreated>::decode(&Protobuf, &bytes)?, user);
/// assert_eq!(Codec::<UserCreated>::content_type(&Protobuf), "application/protobuf");
/// # Ok::<(), event_core::codec::CodecError>(())
/// ```
pub trait Codec<T>: Send + Sync + fmt::Debug {
    /// The content type of what [`Codec::encode`] writes, sent in the `content-type` header.
    fn content_type(&self) -> &str;

    /// Encodes `message`.
    ///
    /// # Errors
    ///
    /// A [`CodecError`] when the message cannot be written in this encoding (never for
    /// [`Protobuf`]).
    fn encode(&self, message: &T) -> Result<Bytes, CodecError>;

    /// Decodes a payload.
    ///
    /// # Errors
    ///
    /// A [`CodecError`] when the bytes are not a valid encoding of `T`.
    fn decode(&self, payload: &Bytes) -> Result<T, CodecError>;
}

/// Why a [`Codec`] could not encode or decode a message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The bytes are not protobuf binary of the type.
    #[error("invalid protobuf binary")]
    Protobuf {
        /// prost's error.
        #[source]
        source: prost::DecodeError,
    },
    /// proto3 JSON of a type whose descriptor is not registered.
    #[error(
        "no descriptor of {message_type} is registered for proto3 JSON: register its file \
         descriptor set with event_core::codec::json::register_file_descriptor_set"
    )]
    DescriptorNotRegistered {
        /// The protobuf full name of the type.
        message_type: String,
    },
    /// The bytes are not proto3 JSON of the type.
    #[error("invalid proto3 JSON of {message_type}")]
    Json {
        /// The protobuf full name of the type.
        message_type: String,
        /// The JSON parser's error: where, and which key or value does not fit.
        #[source]
        source: serde_json::Error,
    },
    /// The message could not be written as proto3 JSON.
    #[error("cannot write {message_type} as proto3 JSON")]
    JsonWrite {
        /// The protobuf full name of the type.
        message_type: String,
        /// The JSON writer's error.
        #[source]
        source: serde_json::Error,
    },
    /// The registered descriptor of the type does not describe its Rust type: one of them was
    /// built from another version of the `.proto` file.
    #[error("the registered descriptor of {message_type} does not match its Rust type")]
    DescriptorMismatch {
        /// The protobuf full name of the type.
        message_type: String,
        /// The error of decoding one through the other.
        #[source]
        source: prost::DecodeError,
    },
}

/// The essence of a content type (the media type without parameters), trimmed.
fn essence(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

/// Whether a content type denotes plain protobuf bytes.
///
/// Accepts `application/protobuf` and its aliases (`application/x-protobuf`,
/// `application/x-protobuffer`, `application/vnd.google.protobuf`), `application/octet-stream`
/// (go-micro's gRPC codec) and go-micro's `application/grpc`, `application/grpc+proto`
/// (raw protobuf when written by its gRPC client), ignoring parameters and case.
pub fn is_protobuf(content_type: &str) -> bool {
    let essence = essence(content_type);
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

/// Whether a content type denotes proto3 JSON: `application/json`, ignoring parameters
/// (`application/json; charset=utf-8`) and case. go-micro's default content type.
pub fn is_json(content_type: &str) -> bool {
    essence(content_type).eq_ignore_ascii_case(JSON)
}

/// The codec a content type selects, as a typed subscriber sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Selected {
    Protobuf,
    Json,
    /// Neither: the content type is refused.
    Unsupported,
}

/// The codec a message's `content-type` header selects.
#[inline]
pub(crate) fn select(headers: &crate::headers::Headers) -> Selected {
    let Some(value) = headers.content_type_value() else {
        return Selected::Protobuf;
    };
    // compared as bytes first: the usual case needs no UTF-8 check, nor a case-blind one
    let bytes = value.as_bytes();
    if bytes == PROTOBUF.as_bytes() || bytes.eq_ignore_ascii_case(PROTOBUF.as_bytes()) {
        return Selected::Protobuf;
    }
    match value.to_str() {
        Ok(ct) if is_protobuf(ct) => Selected::Protobuf,
        Ok(ct) if is_json(ct) => Selected::Json,
        Ok(_) => Selected::Unsupported,
        // a content type that is not text says nothing: read as protobuf, as without one
        Err(_) => Selected::Protobuf,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::{HeaderValue, Headers};

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
            assert!(!is_json(ct), "{ct}");
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
    fn json_content_types() {
        for ct in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            " application/json ;charset=UTF-8",
        ] {
            assert!(is_json(ct), "{ct}");
        }
        for ct in [
            "application/cloudevents+json",
            "application/jsonl",
            "text/json",
            "application/protobuf",
            "",
        ] {
            assert!(!is_json(ct), "{ct}");
        }
    }

    #[test]
    fn the_content_type_selects_the_codec() {
        let with = |ct: HeaderValue| {
            let mut headers = Headers::new();
            headers.append("Content-Type", ct);
            select(&headers)
        };
        assert_eq!(select(&Headers::new()), Selected::Protobuf);
        assert_eq!(
            with(HeaderValue::from("application/protobuf")),
            Selected::Protobuf
        );
        assert_eq!(
            with(HeaderValue::from("application/x-protobuf")),
            Selected::Protobuf
        );
        assert_eq!(
            with(HeaderValue::from("application/json; charset=utf-8")),
            Selected::Json
        );
        assert_eq!(with(HeaderValue::from("text/plain")), Selected::Unsupported);
        assert_eq!(
            with(HeaderValue::from_bytes(vec![0xff, 0xfe])),
            Selected::Protobuf
        );
    }
}
