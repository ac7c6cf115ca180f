//! `decode`: both codecs on arbitrary bytes, and the diagnosis of an arbitrary delivery.
//!
//! Input: a selector byte (the type the diagnosis expects), a position byte and 8 bytes for
//! its number, headers (at most 6), then the payload. The payload is decoded as
//! `users.v1.UserCreated` and as `shop.v1.OrderPlaced`, as protobuf binary and as proto3
//! JSON; whatever decodes is encoded again by the same codec and by the other one, and
//! decoded again: the message must come back equal, and encoding it again must give the same
//! bytes. Then a [`Delivery`] of the headers and payload is diagnosed ([`Diagnosis::of`],
//! which is what a typed subscriber attaches to a message it cannot decode; the typed decode
//! itself, `event_core::codec::decode`, is `pub(crate)`), and the diagnosis must agree with
//! the headers, the payload and [`classify`].

use std::sync::OnceLock;

use bytes::Bytes;
use event_core::broker::{Delivery, Message, Position};
use event_core::codec::{
    Codec, CodecChoice, Diagnosis, ProtoJson, Protobuf, classify, hex, is_json, is_protobuf, json,
};
use event_proto::shop::v1::OrderPlaced;
use event_proto::users::v1::UserCreated;

use crate::input::Reader;

/// The types the diagnosis may expect, picked by the selector byte: two registered ones, a
/// registered one no payload here is meant for, and one that nothing registers.
pub const EXPECTED: &[&str] = &[
    "users.v1.UserCreated",
    "shop.v1.OrderPlaced",
    "bench.v1.Tick",
    "nowhere.v1.Unregistered",
];

/// One proto3 JSON codec for both types: the first type it meets is kept in its cache, the
/// other one is looked up on each call (both paths run).
fn proto_json() -> &'static ProtoJson {
    static CODEC: OnceLock<ProtoJson> = OnceLock::new();
    CODEC.get_or_init(|| {
        json::register_file_descriptor_set(event_proto::FILE_DESCRIPTOR_SET)
            .expect("event-proto's descriptors register");
        ProtoJson::new()
    })
}

/// The target.
pub fn run(data: &[u8]) {
    let json = proto_json();
    let mut input = Reader::new(data);
    let expected = EXPECTED[usize::from(input.byte()) % EXPECTED.len()];
    let position_byte = input.byte();
    let number = u64::from_le_bytes(input.array());
    let position = match position_byte % 3 {
        0 => Position::unknown(),
        1 => Position::sequence(number),
        _ => Position::sequence(number).in_partition((number >> 40) as i32),
    }
    .redelivered(position_byte & 0x80 != 0);
    let headers = input.headers(6);
    let payload = Bytes::copy_from_slice(input.rest());

    round_trips::<UserCreated>(json, &payload);
    round_trips::<OrderPlaced>(json, &payload);

    let message = Message {
        headers,
        key: None,
        payload,
    };
    let delivery = Delivery::new("users.created", message, position)
        .with_attempt(u32::from(position_byte >> 4) + 1);
    diagnose(&delivery, expected);
}

/// Decodes `payload` as `T` with both codecs; checks the round trips of what decodes.
pub fn round_trips<T>(json: &ProtoJson, payload: &Bytes)
where
    T: prost::Message + prost::Name + Default + PartialEq + std::fmt::Debug + 'static,
{
    let name = T::full_name();
    let debug = crate::input::debug();
    let decoded = Codec::<T>::decode(&Protobuf, payload);
    if debug {
        eprintln!("decode: {name} from protobuf: {decoded:?}");
    }
    if let Ok(message) = decoded {
        // prost's own encoding: what `encode_payload`'s buffer cutting must agree with
        let canonical = message.encode_to_vec();
        let bytes = Codec::<T>::encode(&Protobuf, &message).expect("protobuf encodes");
        assert_eq!(
            bytes, canonical,
            "{name}: Protobuf::encode is not prost's encoding"
        );
        stable(&Protobuf, &message, &bytes, "protobuf");
        // every message protobuf can carry, proto3 JSON can carry
        let text = Codec::<T>::encode(json, &message).unwrap_or_else(|e| {
            panic!("{name} decoded from protobuf, but not written as JSON: {e:?}")
        });
        stable(json, &message, &text, "protobuf → JSON");
    }
    let decoded = Codec::<T>::decode(json, payload);
    if debug {
        eprintln!("decode: {name} from JSON: {decoded:?}");
    }
    if let Ok(message) = decoded {
        let text = Codec::<T>::encode(json, &message)
            .unwrap_or_else(|e| panic!("{name} decoded from JSON, but not written back: {e:?}"));
        stable(json, &message, &text, "JSON");
        let bytes = Codec::<T>::encode(&Protobuf, &message).expect("protobuf encodes");
        stable(&Protobuf, &message, &bytes, "JSON → protobuf");
    }
}

/// `encoded` (what `codec` wrote for `message`) decodes to `message`, which encodes to
/// `encoded` again.
fn stable<T, C>(codec: &C, message: &T, encoded: &Bytes, what: &str)
where
    T: prost::Message + prost::Name + PartialEq + std::fmt::Debug,
    C: Codec<T>,
{
    let name = T::full_name();
    let again = codec.decode(encoded).unwrap_or_else(|e| {
        panic!("{name} ({what}): what the codec wrote does not decode: {e:?}; {encoded:?}")
    });
    assert!(
        again == *message,
        "{name} ({what}): the round trip changed the message: {message:?} became {again:?}"
    );
    let encoded_again = codec.encode(&again).expect("encoded once, encodes again");
    assert_eq!(
        encoded_again, *encoded,
        "{name} ({what}): encoding the decoded message gave other bytes"
    );
}

/// Diagnoses `delivery` for `expected` and checks that the diagnosis agrees with it.
pub fn diagnose(delivery: &Delivery, expected: &str) -> Diagnosis {
    let headers = delivery.headers();
    let payload = delivery.payload();
    let diagnosis = Diagnosis::of(delivery, expected);
    if crate::input::debug() {
        eprintln!("decode: {delivery:?}\ndiagnosis: {diagnosis}");
    }
    assert_eq!(diagnosis.topic, delivery.topic());
    assert_eq!(diagnosis.position, *delivery.position());
    assert_eq!(diagnosis.expected_type, expected);
    assert_eq!(diagnosis.found_type.as_deref(), headers.message_type());
    assert_eq!(diagnosis.message_id.as_deref(), headers.message_id());
    assert_eq!(diagnosis.content_type.as_deref(), headers.content_type());
    assert_eq!(diagnosis.payload_kind, classify(headers, payload));
    assert_eq!(diagnosis.payload_len, payload.len());
    assert_eq!(diagnosis.payload_preview, hex(payload, 16));

    // the codec the content type selects (a content type that is not text selects protobuf)
    let selects_json = headers
        .content_type()
        .is_some_and(|ct| !is_protobuf(ct) && is_json(ct));
    let unsupported = headers
        .content_type()
        .is_some_and(|ct| !is_protobuf(ct) && !is_json(ct));
    match &diagnosis.codec {
        CodecChoice::Protobuf {
            schema_registry_framing,
        } => {
            assert!(
                !selects_json && !unsupported,
                "{:?}",
                diagnosis.content_type
            );
            assert!(
                !schema_registry_framing,
                "Diagnosis::of uses the default settings"
            );
        }
        CodecChoice::ProtoJson { expected_fields } => {
            assert!(selects_json, "{:?}", diagnosis.content_type);
            assert!(json::is_registered(expected));
            assert!(!expected_fields.is_empty());
        }
        CodecChoice::ProtoJsonUnregistered => {
            assert!(selects_json, "{:?}", diagnosis.content_type);
            assert!(!json::is_registered(expected));
        }
        CodecChoice::Unsupported => assert!(unsupported, "{:?}", diagnosis.content_type),
        _ => {}
    }

    let hint = diagnosis.hint();
    assert!(!hint.is_empty());
    if let Some(found) = &diagnosis.found_type
        && found != expected
    {
        assert!(
            hint.contains(found.as_str()),
            "the hint names the type found: {hint}"
        );
    }
    let shown = diagnosis.to_string();
    assert!(shown.contains(&hint), "the Display ends with the hint");
    assert!(shown.contains(expected));
    diagnosis
}
