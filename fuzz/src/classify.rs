//! `classify`: [`event_core::codec::classify`] on arbitrary headers and payload.
//!
//! Input: headers (at most 6), then the payload. Checks, besides "no panic": every
//! documented property of [`PayloadKind`] (its name is kebab-case, its hint and
//! its `Display` are not empty, the classification is deterministic, and what each variant
//! says about the bytes is true of them), with serde_json and base64 as oracles for the JSON
//! keys and the go-micro body length.

use base64::Engine as _;
use event_core::Headers;
use event_core::codec::{PayloadKind, classify};

use crate::input::Reader;

/// The target.
pub fn run(data: &[u8]) {
    let mut input = Reader::new(data);
    let headers = input.headers(6);
    let payload = input.rest();
    check(&headers, payload);
}

/// Classifies `payload` and checks what the classification says.
pub fn check(headers: &Headers, payload: &[u8]) -> PayloadKind {
    let kind = classify(headers, payload);
    if crate::input::debug() {
        eprintln!(
            "classify: {headers:?}, {} payload bytes: {kind:?}",
            payload.len()
        );
    }
    let name = kind.as_str();
    assert!(
        !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'),
        "{name:?} is not kebab-case"
    );
    assert!(!kind.hint().is_empty());
    let shown = kind.to_string();
    assert!(!shown.is_empty());
    assert_eq!(
        classify(headers, payload),
        kind,
        "classify is deterministic"
    );

    let cloudevents = headers
        .get_str("content-type")
        .map(str::trim)
        .is_some_and(|ct| {
            ct.get(..23)
                .is_some_and(|p| p.eq_ignore_ascii_case("application/cloudevents"))
        });
    if payload.is_empty() && !cloudevents {
        assert_eq!(kind, PayloadKind::Empty);
    }
    match &kind {
        PayloadKind::CloudEventsStructured { format } => {
            assert!(cloudevents, "{kind:?} without a CloudEvents content type");
            assert_eq!(*format, format.to_ascii_lowercase());
        }
        PayloadKind::Empty => assert!(payload.is_empty()),
        PayloadKind::ConfluentFramed {
            schema_id,
            message_indexes,
            header_mode: true,
        } => {
            assert!(headers.contains("__value_schema_id"));
            assert_eq!(*schema_id, None);
            assert!(message_indexes.iter().all(|&i| i >= 0), "{kind:?}");
        }
        PayloadKind::ConfluentFramed {
            schema_id,
            message_indexes,
            header_mode: false,
        } => {
            assert_eq!(payload[0], 0);
            let id = u32::from_be_bytes(payload[1..5].try_into().unwrap());
            assert_eq!(*schema_id, Some(id));
            assert!(!message_indexes.is_empty(), "{kind:?}");
            assert!(message_indexes.iter().all(|&i| i >= 0), "{kind:?}");
        }
        PayloadKind::GrpcFramed {
            compressed,
            inner_len,
        } => {
            assert_eq!(inner_len + 5, payload.len());
            assert_eq!(*compressed, payload[0] != 0);
            let declared = u32::from_be_bytes(payload[1..5].try_into().unwrap());
            assert_eq!(declared as usize, *inner_len);
        }
        PayloadKind::Gzip => assert!(payload.starts_with(&[0x1f, 0x8b])),
        PayloadKind::Json { top_level_keys } => {
            let document: serde_json::Value =
                serde_json::from_slice(payload).expect("classified as JSON: it parses");
            assert!(top_level_keys.len() <= 8);
            match document.as_object() {
                Some(object) => {
                    for key in top_level_keys {
                        assert!(
                            object.contains_key(key),
                            "{key:?} is not a key of {object:?}"
                        );
                    }
                    let mut distinct = top_level_keys.clone();
                    distinct.sort();
                    distinct.dedup();
                    assert_eq!(distinct.len(), top_level_keys.len(), "{top_level_keys:?}");
                    assert_eq!(
                        top_level_keys.len(),
                        object.len().min(8),
                        "keys {top_level_keys:?} of {object:?}"
                    );
                }
                None => assert!(top_level_keys.is_empty()),
            }
        }
        PayloadKind::GoMicroEnvelope { body_len, .. } => {
            let document: serde_json::Value =
                serde_json::from_slice(payload).expect("classified as an envelope: it parses");
            let body = document["Body"]
                .as_str()
                .expect("an envelope has a string Body");
            if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(body) {
                assert_eq!(*body_len, Some(decoded.len()), "Body {body:?}");
            }
        }
        PayloadKind::Text { preview } => {
            let text = std::str::from_utf8(payload).expect("classified as text: it is UTF-8");
            let shown: String = text
                .chars()
                .take(40)
                .map(|c| match c {
                    '\t' => "\\t".to_owned(),
                    '\r' => "\\r".to_owned(),
                    '\n' => "\\n".to_owned(),
                    c => c.to_string(),
                })
                .collect();
            let ellipsis = if text.chars().count() > 40 { "…" } else { "" };
            assert_eq!(*preview, format!("{shown}{ellipsis}"));
        }
        PayloadKind::Protobuf { field_numbers } => {
            assert!(field_numbers.len() <= 16);
            assert!(
                field_numbers.iter().all(|&f| f != 0 && f < 1 << 29),
                "{field_numbers:?}"
            );
            let mut distinct = field_numbers.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), field_numbers.len(), "{field_numbers:?}");
        }
        // Binary, and kinds added after this target was written
        _ => {}
    }
    kind
}
