//! The check a typed subscriber makes, for code that knows a message type only by its name:
//! [`check`].

use prost_reflect::DynamicMessage;

use super::decode::vouches_for_nothing;
use super::diagnosis::{DecodeError, Diagnosis};
use super::json::lookup;
use super::{Selected, select};
use crate::broker::Delivery;

/// Whether a subscriber of `expected_type` would decode `delivery`, through the descriptor of
/// that type registered with [`register_file_descriptor_set`](super::json::register_file_descriptor_set).
///
/// The same checks as a typed subscriber's, in the same order (see [the module](super)): the
/// type header, the content type, then the bytes, protobuf binary or proto3 JSON. For gateways
/// and proxies that take payloads from clients with no Rust type at hand and must refuse what
/// the subscribers would dead-letter. Confluent Schema Registry frames are not stripped.
///
/// ```
/// use event_core::broker::{Delivery, Message, Position};
/// use event_core::codec::{self, DecodeError};
///
/// codec::json::register_file_descriptor_set(event_proto::FILE_DESCRIPTOR_SET)?;
/// let delivery = Delivery::new("users", Message::new(&b"{\"a\":1}"[..]), Position::unknown());
/// let refused = codec::check(&delivery, "users.v1.UserCreated").unwrap_err();
/// assert!(matches!(refused, DecodeError::Malformed { .. }), "{refused}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
///
/// The [`DecodeError`] the subscriber would meet, with its [`Diagnosis`];
/// [`DecodeError::DescriptorNotRegistered`] when no descriptor of `expected_type` is
/// registered.
pub fn check(delivery: &Delivery, expected_type: &str) -> Result<(), DecodeError> {
    let diagnose = || Box::new(Diagnosis::of(delivery, expected_type));
    let headers = delivery.headers();
    let type_verified = match headers.message_type() {
        Some(found) if found == expected_type => true,
        Some(_) => {
            return Err(DecodeError::TypeMismatch {
                diagnosis: diagnose(),
            });
        }
        None => false,
    };
    let Some(descriptor) = lookup(expected_type) else {
        return Err(DecodeError::DescriptorNotRegistered {
            diagnosis: diagnose(),
        });
    };
    let payload = delivery.payload();
    match select(headers) {
        Selected::Protobuf => {
            if let Err(source) = DynamicMessage::decode(descriptor, payload.as_ref()) {
                return Err(DecodeError::Malformed {
                    diagnosis: diagnose(),
                    source,
                });
            }
            // as in the subscriber: without a type header nothing vouches for an empty
            // payload or a JSON document that happens to parse as protobuf
            if !type_verified && vouches_for_nothing(delivery) {
                return Err(DecodeError::NotProtobuf {
                    diagnosis: diagnose(),
                });
            }
            Ok(())
        }
        Selected::Json => {
            super::json::check_json(&descriptor, payload, type_verified).map_err(|source| {
                DecodeError::InvalidJson {
                    diagnosis: diagnose(),
                    source,
                }
            })
        }
        Selected::Unsupported => Err(DecodeError::UnsupportedContentType {
            diagnosis: diagnose(),
        }),
    }
}
