//! Tests of [`decode`]: both codecs, the type check, the choice by content type, Confluent
//! framing and the diagnosis of what does not decode.

use bytes::Bytes;
use event_proto::shop::v1::{LineItem, OrderPlaced};
use event_proto::users::v1::UserCreated;
use prost::Message as _;

use super::*;
use crate::broker::{FailureKind, Message, Position};
use crate::codec::CodecChoice;

const USER: &str = "users.v1.UserCreated";

fn registered() {
    json::register_file_descriptor_set(event_proto::FILE_DESCRIPTOR_SET).expect("registers");
}

fn user() -> UserCreated {
    UserCreated {
        user_id: "u-1".into(),
        email: "ada@example.com".into(),
        display_name: "Ada".into(),
    }
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

const USER_JSON: &str = r#"{"userId":"u-1","email":"ada@example.com","displayName":"Ada"}"#;
const ORDER_JSON: &str = r#"{"orderId":"o-1","userId":"u-1","items":[{"sku":"sku-1","quantity":2,"unitPriceCents":"120"}],"totalCents":"240"}"#;

fn delivery(message: Message) -> Delivery {
    Delivery::new("users.created", message, Position::sequence(3))
}

fn decode_as<T: prost::Message + prost::Name + Default>(
    message: Message,
    settings: DecodeSettings,
) -> Result<Decoded<T>, DecodeError> {
    decode::<T>(
        &delivery(message),
        &T::full_name(),
        settings,
        &DescriptorCell::default(),
    )
}

fn user_from(message: Message) -> Result<Decoded<UserCreated>, DecodeError> {
    decode_as::<UserCreated>(message, DecodeSettings::default())
}

fn framed() -> DecodeSettings {
    DecodeSettings {
        schema_registry_framing: true,
    }
}

/// The dead letter's `x-event-error`: the error and its sources.
fn described(error: &DecodeError) -> String {
    crate::error_chain(error)
}

/// A Confluent prefix: magic byte, schema id 42, message indexes (already zigzag-encoded).
fn confluent(indexes: &[u8], body: &[u8]) -> Vec<u8> {
    let mut payload = vec![0x00];
    payload.extend(42u32.to_be_bytes());
    payload.extend(indexes);
    payload.extend(body);
    payload
}

// ---- protobuf binary ----------------------------------------------------------------------

#[test]
fn protobuf_round_trip() {
    let message = Message::new(user().encode_to_vec())
        .with_header("ce_type", USER)
        .with_header("content-type", "application/protobuf");
    let decoded = user_from(message).unwrap();
    assert_eq!(decoded.message, user());
    assert!(decoded.type_verified);
    assert_eq!(decoded.drift, None);
}

#[test]
fn protobuf_with_another_type_header_is_not_decoded() {
    // the bytes would decode as a UserCreated: only the type header refuses them
    let message =
        Message::new(order().encode_to_vec()).with_header("ce_type", "shop.v1.OrderPlaced");
    let error = user_from(message).unwrap_err();
    assert!(
        matches!(error, DecodeError::TypeMismatch { .. }),
        "{error:?}"
    );
    assert_eq!(error.failure_kind(), FailureKind::TypeMismatch);
    assert!(
        error
            .diagnosis()
            .hint()
            .contains("share one typed Topic<T> constant")
    );
}

#[test]
fn protobuf_fields_this_build_does_not_know_are_drift() {
    #[derive(Clone, PartialEq, prost::Message)]
    struct Newer {
        #[prost(string, tag = "1")]
        user_id: String,
        #[prost(string, tag = "15")]
        referral_code: String,
    }
    let newer = Newer {
        user_id: "u-1".into(),
        referral_code: "r".into(),
    };
    let decoded =
        user_from(Message::new(newer.encode_to_vec()).with_header("ce_type", USER)).unwrap();
    assert_eq!(decoded.message.user_id, "u-1");
    assert_eq!(decoded.drift, Some(Drift::Fields(vec![15])));
    assert_eq!(format!("{:?}", decoded.drift.unwrap()), "[15]");
}

#[test]
fn a_content_type_neither_protobuf_nor_json_is_refused() {
    let message = Message::new("hello").with_header("content-type", "text/plain");
    let error = user_from(message).unwrap_err();
    assert!(
        matches!(error, DecodeError::UnsupportedContentType { .. }),
        "{error:?}"
    );
    assert_eq!(error.failure_kind(), FailureKind::UnsupportedContentType);
    assert_eq!(error.diagnosis().codec, CodecChoice::Unsupported);
    assert!(
        error
            .to_string()
            .starts_with("cannot decode content type text/plain as protobuf or proto3 JSON"),
        "{error}"
    );
}

// ---- proto3 JSON ----------------------------------------------------------------------------

#[test]
fn json_round_trip_with_a_type_header() {
    registered();
    for content_type in [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
    ] {
        let message = Message::new(USER_JSON)
            .with_header("ce_type", USER)
            .with_header("content-type", content_type);
        let decoded = user_from(message).unwrap();
        assert_eq!(decoded.message, user(), "{content_type}");
        assert!(decoded.type_verified);
        assert_eq!(decoded.drift, None);
    }
}

#[test]
fn json_with_another_type_header_is_not_decoded() {
    registered();
    let message = Message::new(ORDER_JSON)
        .with_header("ce_type", "shop.v1.OrderPlaced")
        .with_header("content-type", "application/json");
    let error = user_from(message).unwrap_err();
    assert!(
        matches!(error, DecodeError::TypeMismatch { .. }),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("expected users.v1.UserCreated, the message is shop.v1.OrderPlaced")
    );
}

#[test]
fn json_without_a_type_header_is_decoded_when_the_content_type_says_json() {
    registered();
    let message = Message::new(USER_JSON).with_header("Content-Type", "application/json");
    let decoded = user_from(message).unwrap();
    assert_eq!(decoded.message, user());
    assert!(!decoded.type_verified, "nothing vouched for the type");
}

#[test]
fn json_without_a_type_header_is_refused_when_the_content_type_is_protobuf_or_absent() {
    registered();
    for message in [
        Message::new(USER_JSON),
        Message::new(USER_JSON).with_header("content-type", "application/protobuf"),
    ] {
        // refused whether or not the bytes happen to parse as protobuf
        let error = user_from(message).unwrap_err();
        assert!(
            matches!(
                error,
                DecodeError::NotProtobuf { .. } | DecodeError::Malformed { .. }
            ),
            "{error:?}"
        );
        assert_eq!(error.failure_kind(), FailureKind::Decode);
        let diagnosis = error.diagnosis();
        assert_eq!(
            diagnosis.payload_kind,
            PayloadKind::Json {
                top_level_keys: vec!["userId".into(), "email".into(), "displayName".into()]
            }
        );
        // the fix: say it is JSON
        assert!(
            diagnosis.hint().contains("content-type application/json"),
            "{}",
            diagnosis.hint()
        );
    }
}

#[test]
fn json_of_another_shape_is_diagnosed_with_its_keys_and_the_expected_fields() {
    registered();
    let message = Message::new(ORDER_JSON)
        .with_header("content-type", "application/json")
        .with_header("ce_id", "m-1");
    let error = user_from(message).unwrap_err();
    assert!(
        matches!(error, DecodeError::InvalidJson { .. }),
        "{error:?}"
    );
    assert_eq!(error.failure_kind(), FailureKind::Decode);
    let diagnosis = error.diagnosis();
    assert_eq!(diagnosis.payload_kind.as_str(), "json");
    assert_eq!(
        diagnosis.codec,
        CodecChoice::ProtoJson {
            expected_fields: vec!["userId".into(), "email".into(), "displayName".into()]
        }
    );
    let text = described(&error);
    for fragment in [
        "payload is not the proto3 JSON of users.v1.UserCreated",
        "message id m-1",
        r#"JSON object with keys ["orderId", "userId", "items", "totalCents"]"#,
        r#"the JSON does not fit users.v1.UserCreated, whose fields are ["userId", "email", "displayName"]"#,
        "without a type header, a key that is not a field is refused",
        "(the message has no type header",
        // the parser names the first key that does not fit
        "unrecognized field name 'orderId'",
    ] {
        assert!(text.contains(fragment), "no {fragment:?} in:\n{text}");
    }
}

#[test]
fn json_keys_unknown_to_a_type_vouched_for_by_its_header_are_drift() {
    registered();
    let message = Message::new(r#"{"userId":"u-1","referralCode":"friends"}"#)
        .with_header("ce_type", USER)
        .with_header("content-type", "application/json");
    let decoded = user_from(message).unwrap();
    assert_eq!(decoded.message.user_id, "u-1");
    assert_eq!(
        decoded.drift,
        Some(Drift::Keys(vec!["referralCode".into()]))
    );
    assert_eq!(
        format!("{:?}", decoded.drift.unwrap()),
        r#"["referralCode"]"#
    );
}

#[test]
fn json_values_of_the_wrong_type_are_refused_even_with_a_type_header() {
    registered();
    let message = Message::new(r#"{"userId":5}"#)
        .with_header("ce_type", USER)
        .with_header("content-type", "application/json");
    let error = user_from(message).unwrap_err();
    assert!(
        matches!(error, DecodeError::InvalidJson { .. }),
        "{error:?}"
    );
    assert!(!error.diagnosis().hint().contains("without a type header"));
}

#[test]
fn json_that_is_not_json_is_diagnosed_as_what_it_is() {
    registered();
    let empty = Message::new(Bytes::new()).with_header("content-type", "application/json");
    let error = user_from(empty).unwrap_err();
    assert!(
        matches!(error, DecodeError::InvalidJson { .. }),
        "{error:?}"
    );
    assert_eq!(error.diagnosis().payload_kind, PayloadKind::Empty);
    let hint = error.diagnosis().hint();
    assert!(
        hint.contains("the content type says proto3 JSON of users.v1.UserCreated, but the payload is not a JSON object of it"),
        "{hint}"
    );
    assert!(hint.contains("tombstone"), "{hint}");

    let binary = Message::new(user().encode_to_vec())
        .with_header("ce_type", USER)
        .with_header("content-type", "application/json");
    let error = user_from(binary).unwrap_err();
    assert_eq!(error.diagnosis().payload_kind.as_str(), "protobuf");
}

#[test]
fn json_of_a_type_without_a_registered_descriptor_names_the_register_function() {
    #[derive(Clone, PartialEq, prost::Message)]
    struct Unregistered {
        #[prost(string, tag = "1")]
        id: String,
    }
    impl prost::Name for Unregistered {
        const NAME: &'static str = "Unregistered";
        const PACKAGE: &'static str = "nowhere.v1";
    }
    let message = Message::new(r#"{"id":"x"}"#).with_header("content-type", "application/json");
    let error = decode_as::<Unregistered>(message, DecodeSettings::default()).unwrap_err();
    assert!(
        matches!(error, DecodeError::DescriptorNotRegistered { .. }),
        "{error:?}"
    );
    assert_eq!(error.failure_kind(), FailureKind::UnsupportedContentType);
    assert_eq!(error.diagnosis().codec, CodecChoice::ProtoJsonUnregistered);
    let text = described(&error);
    for fragment in [
        "cannot decode content type application/json as protobuf, nor as proto3 JSON without a \
         registered descriptor of nowhere.v1.Unregistered",
        "call event_core::codec::json::register_file_descriptor_set with the file descriptor set",
        "event_proto::FILE_DESCRIPTOR_SET",
    ] {
        assert!(text.contains(fragment), "no {fragment:?} in:\n{text}");
    }
    // an empty payload gets the tombstone remark as well
    let empty = Message::new(Bytes::new()).with_header("content-type", "application/json");
    let error = decode_as::<Unregistered>(empty, DecodeSettings::default()).unwrap_err();
    assert!(
        error
            .diagnosis()
            .hint()
            .contains("; besides, an empty payload: a tombstone")
    );
}

// ---- Confluent Schema Registry framing ------------------------------------------------------

#[test]
fn a_framed_payload_decodes_with_the_setting() {
    let body = user().encode_to_vec();
    // the shorthand index [0], without and with a type header
    for message in [
        Message::new(confluent(&[0x00], &body)),
        Message::new(confluent(&[0x00], &body)).with_header("ce_type", USER),
    ] {
        let verified = message.headers.message_type().is_some();
        let decoded = decode_as::<UserCreated>(message, framed()).unwrap();
        assert_eq!(decoded.message, user());
        assert_eq!(decoded.type_verified, verified);
        assert_eq!(decoded.drift, None);
    }
    // explicit indexes [2, 0, 3]
    let decoded = decode_as::<UserCreated>(
        Message::new(confluent(&[0x06, 0x04, 0x00, 0x06], &body)),
        framed(),
    )
    .unwrap();
    assert_eq!(decoded.message, user());
    // a frame around a message with every field at its default is that message, not a
    // tombstone
    let decoded =
        decode_as::<UserCreated>(Message::new(confluent(&[0x00], &[])), framed()).unwrap();
    assert_eq!(decoded.message, UserCreated::default());
    // a payload without the magic byte is decoded as it is
    let decoded = decode_as::<UserCreated>(Message::new(body.clone()), framed()).unwrap();
    assert_eq!(decoded.message, user());
}

#[test]
fn a_framed_payload_keeps_its_bytes_fields_zero_copy_and_its_drift() {
    use event_proto::bench::v1::Tick;
    let tick = Tick {
        seq: 5,
        payload: Bytes::from_static(b"abc"),
    };
    let framed_payload = Bytes::from(confluent(&[0x00], &tick.encode_to_vec()));
    let d = delivery(Message::new(framed_payload.clone()));
    let decoded =
        decode::<Tick>(&d, "bench.v1.Tick", framed(), &DescriptorCell::default()).unwrap();
    assert_eq!(decoded.message, tick);
    assert!(
        d.payload()
            .as_ptr_range()
            .contains(&decoded.message.payload.as_ptr())
    );
}

#[test]
fn the_type_header_is_checked_before_the_frame_is_stripped() {
    let message = Message::new(confluent(&[0x00], &order().encode_to_vec()))
        .with_header("ce_type", "shop.v1.OrderPlaced");
    let error = decode_as::<UserCreated>(message, framed()).unwrap_err();
    assert!(
        matches!(error, DecodeError::TypeMismatch { .. }),
        "{error:?}"
    );
}

#[test]
fn a_framed_payload_without_the_setting_is_diagnosed_with_the_setting_to_enable() {
    let message = Message::new(confluent(&[0x00], &user().encode_to_vec()));
    let error = user_from(message).unwrap_err();
    assert!(matches!(error, DecodeError::Malformed { .. }), "{error:?}");
    let diagnosis = error.diagnosis();
    assert_eq!(
        diagnosis.payload_kind,
        PayloadKind::ConfluentFramed {
            schema_id: Some(42),
            message_indexes: vec![0],
            header_mode: false,
        }
    );
    assert_eq!(
        diagnosis.codec,
        CodecChoice::Protobuf {
            schema_registry_framing: false
        }
    );
    let hint = diagnosis.hint();
    assert!(
        hint.contains("SubscribeOptions::schema_registry_framing(true)"),
        "{hint}"
    );
}

#[test]
fn a_payload_with_the_magic_byte_but_no_frame_is_refused_with_the_setting() {
    let message = Message::new(vec![0x00, 0x00, 0x00]);
    let error = decode_as::<UserCreated>(message, framed()).unwrap_err();
    assert!(
        matches!(error, DecodeError::InvalidFrame { .. }),
        "{error:?}"
    );
    assert_eq!(error.failure_kind(), FailureKind::Decode);
    let hint = error.diagnosis().hint();
    assert!(
        hint.starts_with("schema-registry framing is on, but the payload does not start with a valid Confluent prefix"),
        "{hint}"
    );
}

#[test]
fn a_frame_around_another_shape_is_diagnosed_as_such() {
    use event_proto::bench::v1::Tick;
    let tick = Tick {
        seq: 7,
        payload: Bytes::from_static(b"\xca\xfe"),
    };
    let message = Message::new(confluent(&[0x02, 0x02], &tick.encode_to_vec()));
    let error = decode_as::<UserCreated>(message, framed()).unwrap_err();
    assert!(matches!(error, DecodeError::Malformed { .. }), "{error:?}");
    let hint = error.diagnosis().hint();
    assert!(
        hint.starts_with("schema-registry framing stripped the Confluent prefix, but what follows is not a valid users.v1.UserCreated"),
        "{hint}"
    );
}
