//! The decoding of a delivery into a typed message: the type check, the choice of codec by
//! content type, Confluent frame stripping, and schema drift.

use std::fmt;

use bytes::Bytes;

use super::classify::{self, PayloadKind};
use super::diagnosis::{DecodeError, Diagnosis};
use super::json::{self, DescriptorCell, JsonFailure};
use super::protobuf::{PayloadReader, unknown_fields};
use super::{Selected, select};
use crate::broker::{Delivery, SubscribeOptions};

/// How a subscription decodes, from its [`SubscribeOptions`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct DecodeSettings {
    /// Strip a Confluent Schema Registry prefix from protobuf payloads.
    pub(crate) schema_registry_framing: bool,
}

impl From<&SubscribeOptions> for DecodeSettings {
    fn from(options: &SubscribeOptions) -> Self {
        DecodeSettings {
            schema_registry_framing: options.schema_registry_framing,
        }
    }
}

/// A successfully decoded message.
#[derive(Debug)]
pub(crate) struct Decoded<T> {
    pub(crate) message: T,
    /// Whether a type header vouched for the type.
    pub(crate) type_verified: bool,
    /// What the payload had that the decoded message does not (the producer's schema is
    /// newer), if anything.
    pub(crate) drift: Option<Drift>,
}

/// Fields a payload had that the subscriber's type does not know.
#[derive(PartialEq, Eq)]
pub(crate) enum Drift {
    /// Top-level protobuf field numbers.
    Fields(Vec<u32>),
    /// Top-level JSON keys (empty when only nested keys were unknown).
    Keys(Vec<String>),
}

impl fmt::Debug for Drift {
    /// The list alone: `[15]`, `["referralCode"]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Drift::Fields(fields) => fields.fmt(f),
            Drift::Keys(keys) => keys.fmt(f),
        }
    }
}

/// Decodes `delivery` as `T`, checking type header and content type first.
///
/// `descriptor` keeps the JSON descriptor of `T` once found; nothing is looked up until a JSON
/// message arrives.
pub(crate) fn decode<T: prost::Message + prost::Name + Default>(
    delivery: &Delivery,
    expected_type: &str,
    settings: DecodeSettings,
    descriptor: &DescriptorCell,
) -> Result<Decoded<T>, DecodeError> {
    let headers = delivery.headers();
    let diagnose = || {
        Box::new(Diagnosis::with_framing(
            delivery,
            expected_type,
            settings.schema_registry_framing,
        ))
    };
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
    match select(headers) {
        Selected::Protobuf => decode_protobuf(delivery, found.is_some(), settings, diagnose),
        Selected::Json => {
            let Some(descriptor) = descriptor.get(expected_type) else {
                return Err(DecodeError::DescriptorNotRegistered {
                    diagnosis: diagnose(),
                });
            };
            // with a type header, a key the type does not know is drift, as an unknown
            // protobuf field is; without one it may as well be another type's
            match json::from_json::<T>(descriptor, delivery.payload(), found.is_some()) {
                Ok((message, unknown)) => Ok(Decoded {
                    message,
                    type_verified: found.is_some(),
                    drift: unknown.map(Drift::Keys),
                }),
                Err(JsonFailure::Invalid(source)) => Err(DecodeError::InvalidJson {
                    diagnosis: diagnose(),
                    source,
                }),
                Err(JsonFailure::Mismatch(source)) => Err(DecodeError::DescriptorMismatch {
                    diagnosis: diagnose(),
                    source,
                }),
            }
        }
        Selected::Unsupported => Err(DecodeError::UnsupportedContentType {
            diagnosis: diagnose(),
        }),
    }
}

/// The protobuf binary half of [`decode`].
fn decode_protobuf<T: prost::Message + Default>(
    delivery: &Delivery,
    type_verified: bool,
    settings: DecodeSettings,
    diagnose: impl Fn() -> Box<Diagnosis>,
) -> Result<Decoded<T>, DecodeError> {
    let payload: &Bytes = delivery.payload();
    // A protobuf message cannot start with a zero byte (field number 0 does not exist): with
    // framing on, a payload that does is a frame, and one that does not is decoded as it is.
    let framed = settings.schema_registry_framing && payload.first() == Some(&0);
    let start = if framed {
        match classify::confluent_frame_len(payload) {
            Some(len) => len,
            None => {
                return Err(DecodeError::InvalidFrame {
                    diagnosis: diagnose(),
                });
            }
        }
    } else {
        0
    };
    let message = match T::decode(PayloadReader::new(payload, start)) {
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
    // protobuf is refused rather than handed over as a default-valued message. A Confluent
    // frame says what follows is protobuf, even when it is empty.
    if !type_verified && !framed && vouches_for_nothing(delivery) {
        return Err(DecodeError::NotProtobuf {
            diagnosis: diagnose(),
        });
    }
    let body = &payload[start..];
    let drift = if message.encoded_len() != body.len() {
        Some(unknown_fields(body, &message)).filter(|fields| !fields.is_empty())
    } else {
        None
    };
    Ok(Decoded {
        message,
        type_verified,
        drift: drift.map(Drift::Fields),
    })
}

/// Whether the bytes of a delivery without a type header, which decoded as protobuf, are not
/// to be taken as such: empty (a Kafka tombstone, a producer that sent nothing), or a JSON
/// document (or go-micro envelope) that happens to parse as protobuf.
pub(super) fn vouches_for_nothing(delivery: &Delivery) -> bool {
    let payload = delivery.payload();
    payload.is_empty()
        || (payload.first().is_some_and(|b| matches!(b, b'{' | b'['))
            && matches!(
                classify::classify(delivery.headers(), payload),
                PayloadKind::Json { .. } | PayloadKind::GoMicroEnvelope { .. }
            ))
}

#[cfg(test)]
mod tests;
