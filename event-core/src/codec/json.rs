//! proto3 JSON (`application/json`): the [`ProtoJson`] codec and the process-wide registry of
//! the descriptors it needs.
//!
//! prost's generated types know their fields only as Rust code; the proto3 JSON mapping needs
//! their names, JSON names and types at run time, from the `.proto` files' descriptors. A
//! program registers them once, at start-up, as the encoded `FileDescriptorSet` its build
//! script wrote (protox's `compile`, or prost-build's `file_descriptor_set_path`):
//!
//! ```
//! use event_core::codec::json;
//! use event_core::Publisher;
//! use event_proto::users::v1::UserCreated;
//!
//! json::register_file_descriptor_set(event_proto::FILE_DESCRIPTOR_SET)?;
//! assert!(json::is_registered("users.v1.UserCreated"));
//!
//! # let broker = std::sync::Arc::new(event_core::memory::MemoryBroker::new());
//! let publisher = Publisher::<UserCreated>::new(broker, "signup", "users.created").json()?;
//! let message = publisher.encode(&UserCreated { user_id: "u-1".into(), ..Default::default() }, None);
//! assert_eq!(message.payload, r#"{"userId":"u-1"}"#);
//! assert_eq!(message.headers.content_type(), Some("application/json"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A message type's descriptor is found by the type's protobuf full name
//! (`prost::Name::full_name`), so the message types need nothing beyond what protobuf binary
//! needs. The registry is prost-reflect's global descriptor pool: descriptors other code adds
//! there are found too. A file already registered under the same name is kept (registering a
//! set twice, or two sets sharing an import, is harmless); the codecs look a type up once and
//! keep what they found, so register before publishing or consuming.
//!
//! The mapping is the canonical one: lowerCamelCase JSON names on output (either name on
//! input), 64-bit integers as strings, `bytes` as base64, enums by name, fields with default
//! values left out.

use std::any::TypeId;
use std::sync::OnceLock;

use bytes::Bytes;
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions,
};

use super::{Codec, CodecError, JSON};
use crate::broker::BoxError;

/// Why a file descriptor set could not be registered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// The bytes are not an encoded `FileDescriptorSet`, or one of its files refers to types
    /// neither it nor an earlier registration defines.
    #[error("not a usable encoded FileDescriptorSet")]
    Invalid {
        /// The descriptor library's error.
        #[source]
        source: BoxError,
    },
}

/// Registers the message types of an encoded `FileDescriptorSet` for proto3 JSON.
///
/// Call it once at start-up with what the build script wrote: for the types of `event-proto`,
/// `event_proto::FILE_DESCRIPTOR_SET`. Registering the same files again changes nothing.
///
/// # Errors
///
/// [`RegisterError::Invalid`] when the bytes are not a descriptor set, or refer to files that
/// are neither in it nor registered before (a set written without its imports).
pub fn register_file_descriptor_set(bytes: &[u8]) -> Result<(), RegisterError> {
    DescriptorPool::decode_global_file_descriptor_set(bytes).map_err(|error| {
        RegisterError::Invalid {
            source: Box::new(error),
        }
    })
}

/// Whether the descriptor of the message type named `full_name` (`users.v1.UserCreated`) is
/// registered.
pub fn is_registered(full_name: &str) -> bool {
    lookup(full_name).is_some()
}

/// The registered descriptor of `full_name`.
pub(super) fn lookup(full_name: &str) -> Option<MessageDescriptor> {
    DescriptorPool::global().get_message_by_name(full_name)
}

/// The JSON names of a registered type's fields, in declaration order.
pub(super) fn json_field_names(full_name: &str) -> Option<Vec<String>> {
    let descriptor = lookup(full_name)?;
    Some(
        descriptor
            .fields()
            .map(|field| field.json_name().to_owned())
            .collect(),
    )
}

/// proto3 JSON (`application/json`), through the descriptors registered with
/// [`register_file_descriptor_set`].
///
/// JSON → a dynamic message of the registered descriptor → `T`, and back. Decoding refuses a
/// key that is not a field of the type, as the proto3 JSON mapping asks by default.
/// A codec keeps the descriptor of the last type it encoded or decoded, so a publisher looks it
/// up once.
#[derive(Debug, Default)]
pub struct ProtoJson {
    descriptor: OnceLock<(TypeId, MessageDescriptor)>,
}

impl ProtoJson {
    /// The codec.
    pub fn new() -> Self {
        ProtoJson::default()
    }

    /// The registered descriptor of `T`.
    fn descriptor<T: prost::Name + 'static>(&self) -> Result<MessageDescriptor, CodecError> {
        let type_id = TypeId::of::<T>();
        if let Some((cached, descriptor)) = self.descriptor.get()
            && *cached == type_id
        {
            return Ok(descriptor.clone());
        }
        let full_name = T::full_name();
        let descriptor = lookup(&full_name).ok_or(CodecError::DescriptorNotRegistered {
            message_type: full_name,
        })?;
        // the first type wins the cache; another type is looked up on each call
        let _ = self.descriptor.set((type_id, descriptor.clone()));
        Ok(descriptor)
    }
}

impl Clone for ProtoJson {
    fn clone(&self) -> Self {
        let descriptor = OnceLock::new();
        if let Some(cached) = self.descriptor.get() {
            let _ = descriptor.set(cached.clone());
        }
        ProtoJson { descriptor }
    }
}

impl<T: prost::Message + prost::Name + Default + 'static> Codec<T> for ProtoJson {
    fn content_type(&self) -> &str {
        JSON
    }

    fn encode(&self, message: &T) -> Result<Bytes, CodecError> {
        let descriptor = self.descriptor::<T>()?;
        to_json(descriptor, message).map(Bytes::from)
    }

    fn decode(&self, payload: &Bytes) -> Result<T, CodecError> {
        let descriptor = self.descriptor::<T>()?;
        let message_type = || descriptor.full_name().to_owned();
        match from_json(&descriptor, payload, false) {
            Ok((message, _)) => Ok(message),
            Err(JsonFailure::Invalid(source)) => Err(CodecError::Json {
                message_type: message_type(),
                source,
            }),
            Err(JsonFailure::Mismatch(source)) => Err(CodecError::DescriptorMismatch {
                message_type: message_type(),
                source,
            }),
        }
    }
}

/// The descriptor of one message type, looked up on first use and kept once found (a type
/// registered later is found then).
#[derive(Debug, Default)]
pub(crate) struct DescriptorCell(OnceLock<MessageDescriptor>);

impl DescriptorCell {
    /// The descriptor of `full_name`, if registered.
    pub(crate) fn get(&self, full_name: &str) -> Option<&MessageDescriptor> {
        if let Some(descriptor) = self.0.get() {
            return Some(descriptor);
        }
        let found = lookup(full_name)?;
        Some(self.0.get_or_init(|| found))
    }
}

/// Why [`from_json`] failed.
#[derive(Debug)]
pub(crate) enum JsonFailure {
    /// Not proto3 JSON of the type.
    Invalid(serde_json::Error),
    /// The descriptor does not describe `T`.
    Mismatch(prost::DecodeError),
}

/// Decodes proto3 JSON of `descriptor`'s type as `T`.
///
/// A key that is not a field of the type is refused, unless `unknown_allowed`: then the
/// message is decoded without it, and the second value lists the top-level keys that are not
/// fields (`Some`, perhaps empty when only nested keys were unknown); `None` when every key was
/// known.
pub(crate) fn from_json<T: prost::Message + Default>(
    descriptor: &MessageDescriptor,
    payload: &[u8],
    unknown_allowed: bool,
) -> Result<(T, Option<Vec<String>>), JsonFailure> {
    const STRICT: DeserializeOptions = DeserializeOptions::new();
    const LENIENT: DeserializeOptions = DeserializeOptions::new().deny_unknown_fields(false);
    let parse = |options: &DeserializeOptions| {
        let mut deserializer = serde_json::Deserializer::from_slice(payload);
        let message = DynamicMessage::deserialize_with_options(
            descriptor.clone(),
            &mut deserializer,
            options,
        )?;
        deserializer.end()?;
        Ok::<_, serde_json::Error>(message)
    };
    let (dynamic, unknown) = match parse(&STRICT) {
        Ok(dynamic) => (dynamic, None),
        Err(strict) if !unknown_allowed => return Err(JsonFailure::Invalid(strict)),
        // the slow path, only when a strict parse failed: unknown keys, or invalid JSON
        Err(_) => {
            let dynamic = parse(&LENIENT).map_err(JsonFailure::Invalid)?;
            let unknown = super::classify::top_level_keys(payload)
                .into_iter()
                .filter(|key| {
                    descriptor.get_field_by_json_name(key).is_none()
                        && descriptor.get_field_by_name(key).is_none()
                })
                .collect();
            (dynamic, Some(unknown))
        }
    };
    let message = T::decode(dynamic.encode_to_vec().as_slice()).map_err(JsonFailure::Mismatch)?;
    Ok((message, unknown))
}

/// Whether `payload` is proto3 JSON of `descriptor`'s type; a key that is not a field of the
/// type is refused unless `unknown_allowed` (a type header vouches for the type).
pub(super) fn check_json(
    descriptor: &MessageDescriptor,
    payload: &[u8],
    unknown_allowed: bool,
) -> Result<(), serde_json::Error> {
    let options = DeserializeOptions::new().deny_unknown_fields(!unknown_allowed);
    let mut deserializer = serde_json::Deserializer::from_slice(payload);
    DynamicMessage::deserialize_with_options(descriptor.clone(), &mut deserializer, &options)
        .and_then(|_| deserializer.end())
}

/// Encodes `message` as proto3 JSON of `descriptor`'s type.
pub(crate) fn to_json<T: prost::Message>(
    descriptor: MessageDescriptor,
    message: &T,
) -> Result<Vec<u8>, CodecError> {
    let message_type = || descriptor.full_name().to_owned();
    let dynamic = DynamicMessage::decode(descriptor.clone(), message.encode_to_vec().as_slice())
        .map_err(|source| CodecError::DescriptorMismatch {
            message_type: message_type(),
            source,
        })?;
    // about what the JSON takes: a guess that saves most of the vector's regrowth
    let mut out = Vec::with_capacity(message.encoded_len() * 2 + 16);
    dynamic
        .serialize_with_options(
            &mut serde_json::Serializer::new(&mut out),
            &SerializeOptions::new(),
        )
        .map_err(|source| CodecError::JsonWrite {
            message_type: message_type(),
            source,
        })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_proto::bench::v1::Tick;
    use event_proto::shop::v1::{LineItem, OrderPlaced};
    use event_proto::users::v1::UserCreated;

    fn registered() {
        register_file_descriptor_set(event_proto::FILE_DESCRIPTOR_SET).expect("registers");
    }

    fn order() -> OrderPlaced {
        OrderPlaced {
            order_id: "o-1".into(),
            user_id: "u-1".into(),
            items: vec![LineItem {
                sku: "sku-1".into(),
                quantity: 2,
                unit_price_cents: 120,
            }],
            total_cents: 240,
        }
    }

    #[test]
    fn round_trip_in_the_canonical_mapping() {
        registered();
        let codec = ProtoJson::new();
        let json = Codec::<OrderPlaced>::encode(&codec, &order()).unwrap();
        assert_eq!(
            json,
            r#"{"orderId":"o-1","userId":"u-1","items":[{"sku":"sku-1","quantity":2,"unitPriceCents":"120"}],"totalCents":"240"}"#
        );
        assert_eq!(
            Codec::<OrderPlaced>::decode(&codec, &json).unwrap(),
            order()
        );
        // the proto field names are read too, and 64-bit integers as numbers
        let snake = Bytes::from_static(
            br#"{"order_id":"o-1","user_id":"u-1","items":[{"sku":"sku-1","quantity":2,"unit_price_cents":120}],"total_cents":240}"#,
        );
        assert_eq!(
            Codec::<OrderPlaced>::decode(&codec, &snake).unwrap(),
            order()
        );
        // bytes as base64
        let tick = Tick {
            seq: 7,
            payload: Bytes::from_static(b"\xca\xfe"),
        };
        let json = Codec::<Tick>::encode(&codec, &tick).unwrap();
        assert_eq!(json, r#"{"seq":"7","payload":"yv4="}"#);
        assert_eq!(Codec::<Tick>::decode(&codec, &json).unwrap(), tick);
    }

    #[test]
    fn one_codec_serves_several_types() {
        registered();
        let codec = ProtoJson::new();
        let user = UserCreated {
            user_id: "u-1".into(),
            email: "ada@example.com".into(),
            display_name: String::new(),
        };
        let a = Codec::<UserCreated>::encode(&codec, &user).unwrap();
        let b = Codec::<OrderPlaced>::encode(&codec, &order()).unwrap();
        assert_eq!(a, r#"{"userId":"u-1","email":"ada@example.com"}"#);
        assert_eq!(Codec::<OrderPlaced>::decode(&codec, &b).unwrap(), order());
        assert_eq!(
            Codec::<UserCreated>::decode(&codec.clone(), &a).unwrap(),
            user
        );
    }

    #[test]
    fn unknown_keys_are_refused_unless_allowed() {
        registered();
        let descriptor = lookup("users.v1.UserCreated").unwrap();
        let payload = br#"{"userId":"u-1","referralCode":"x","nested":{"a":1}}"#;
        let error = from_json::<UserCreated>(&descriptor, payload, false).unwrap_err();
        let JsonFailure::Invalid(source) = &error else {
            panic!("{error:?}");
        };
        assert!(source.to_string().contains("referralCode"), "{source}");
        let error = Codec::<UserCreated>::decode(&ProtoJson::new(), &Bytes::from_static(payload))
            .unwrap_err();
        assert!(
            matches!(&error, CodecError::Json { message_type, .. } if message_type == "users.v1.UserCreated"),
            "{error:?}"
        );

        let (user, unknown) = from_json::<UserCreated>(&descriptor, payload, true).unwrap();
        assert_eq!(user.user_id, "u-1");
        assert_eq!(
            unknown,
            Some(vec!["referralCode".to_owned(), "nested".to_owned()])
        );
        let (_, unknown) =
            from_json::<UserCreated>(&descriptor, br#"{"user_id":"u-1"}"#, true).unwrap();
        assert_eq!(unknown, None);
        // a value of the wrong type is refused either way
        assert!(from_json::<UserCreated>(&descriptor, br#"{"userId":5}"#, true).is_err());
        // so is trailing garbage
        assert!(from_json::<UserCreated>(&descriptor, br#"{"userId":"u"} x"#, false).is_err());
    }

    #[test]
    fn a_type_without_a_registered_descriptor_names_the_fix() {
        /// A type no descriptor set knows.
        #[derive(Clone, PartialEq, prost::Message)]
        struct Unregistered {
            #[prost(string, tag = "1")]
            id: String,
        }
        impl prost::Name for Unregistered {
            const NAME: &'static str = "Unregistered";
            const PACKAGE: &'static str = "nowhere.v1";
        }
        let error =
            Codec::<Unregistered>::encode(&ProtoJson::new(), &Unregistered::default()).unwrap_err();
        assert!(
            matches!(&error, CodecError::DescriptorNotRegistered { message_type } if message_type == "nowhere.v1.Unregistered"),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .contains("event_core::codec::json::register_file_descriptor_set"),
            "{error}"
        );
        assert!(!is_registered("nowhere.v1.Unregistered"));
    }

    #[test]
    fn a_descriptor_of_another_shape_is_a_mismatch() {
        registered();
        // a Rust type that claims to be users.v1.UserCreated, with a varint where it has a
        // string
        #[derive(Clone, PartialEq, prost::Message)]
        struct Impostor {
            #[prost(uint64, tag = "1")]
            user_id: u64,
        }
        impl prost::Name for Impostor {
            const NAME: &'static str = "UserCreated";
            const PACKAGE: &'static str = "users.v1";
        }
        let error =
            Codec::<Impostor>::encode(&ProtoJson::new(), &Impostor { user_id: 3 }).unwrap_err();
        assert!(
            matches!(error, CodecError::DescriptorMismatch { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn garbage_is_not_a_descriptor_set() {
        let error = register_file_descriptor_set(b"\xff\xff\xff").unwrap_err();
        assert!(matches!(error, RegisterError::Invalid { .. }));
        assert!(std::error::Error::source(&error).is_some());
        // registering twice is harmless
        registered();
        registered();
        assert!(is_registered("shop.v1.OrderPlaced"));
    }
}
