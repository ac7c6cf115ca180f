//! Tests of [`classify`]: one per classification, its name, display and hint, and robustness
//! against arbitrary bytes.

use super::*;

fn no_headers() -> Headers {
    Headers::new()
}

fn with_header(name: &str, value: &str) -> Headers {
    let mut headers = Headers::new();
    headers.append(name, value);
    headers
}

/// Deterministic pseudo-random bytes (64-bit LCG, Knuth's MMIX constants).
struct Lcg(u64);

impl Lcg {
    fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0
    }

    fn next_byte(&mut self) -> u8 {
        self.next_u64().to_be_bytes()[0]
    }

    fn below(&mut self, bound: u64) -> usize {
        usize::try_from((self.next_u64() >> 33) % bound).unwrap()
    }
}

// ---- one test per variant -------------------------------------------------------------

#[test]
fn cloudevents_structured_json() {
    let headers = with_header(
        "Content-Type",
        "application/cloudevents+JSON; charset=UTF-8",
    );
    let payload = br#"{"specversion":"1.0","type":"com.example.order","data":{}}"#;
    let kind = classify(&headers, payload);
    assert_eq!(
        kind,
        PayloadKind::CloudEventsStructured {
            format: "json".into()
        }
    );
    assert_eq!(kind.as_str(), "cloudevents-structured");
    assert_eq!(
        kind.to_string(),
        "CloudEvents structured-mode event (format \"json\")"
    );
}

#[test]
fn cloudevents_structured_protobuf_even_when_empty() {
    let headers = with_header("content-type", "application/cloudevents+protobuf");
    assert_eq!(
        classify(&headers, b""),
        PayloadKind::CloudEventsStructured {
            format: "protobuf".into()
        }
    );
    let batch = with_header("content-type", "Application/CloudEvents-Batch+json");
    assert_eq!(
        classify(&batch, b"[]"),
        PayloadKind::CloudEventsStructured {
            format: "json".into()
        }
    );
}

#[test]
fn go_micro_envelope() {
    let payload = br#"{"Header":{"Content-Type":"application/protobuf","Micro-ID":"2b1c","Micro-Topic":"orders"},"Body":"CgNhYmM="}"#;
    let kind = classify(&no_headers(), payload);
    assert_eq!(
        kind,
        PayloadKind::GoMicroEnvelope {
            content_type: Some("application/protobuf".into()),
            topic: Some("orders".into()),
            body_len: Some(5),
        }
    );
    assert_eq!(kind.as_str(), "go-micro-envelope");
    assert_eq!(
        kind.to_string(),
        "go-micro JSON envelope (content type \"application/protobuf\", topic \"orders\", \
         body 5 bytes)"
    );
}

#[test]
fn go_micro_envelope_variants() {
    // Lowercase header keys, leading whitespace, bad base64, escaped characters.
    let payload = b" \n{\"Header\":{\"content-type\":\"application/json\",\"x\":\"\\u003c\"},\"Body\":\"abc\"}";
    assert_eq!(
        classify(&no_headers(), payload),
        PayloadKind::GoMicroEnvelope {
            content_type: Some("application/json".into()),
            topic: None,
            body_len: None,
        }
    );
    // Empty body.
    assert_eq!(
        classify(&no_headers(), br#"{"Body":"","Header":{}}"#),
        PayloadKind::GoMicroEnvelope {
            content_type: None,
            topic: None,
            body_len: Some(0),
        }
    );
    // Keys are case-sensitive, and the members must have the right types.
    assert!(matches!(
        classify(&no_headers(), br#"{"header":{},"body":""}"#),
        PayloadKind::Json { .. }
    ));
    assert!(matches!(
        classify(&no_headers(), br#"{"Header":{},"Body":null}"#),
        PayloadKind::Json { .. }
    ));
}

#[test]
fn confluent_prefix_default_index() {
    let payload = [
        0x00, 0x00, 0x00, 0x00, 0x2a, 0x00, 0x0a, 0x03, 0x61, 0x62, 0x63,
    ];
    let kind = classify(&no_headers(), &payload);
    assert_eq!(
        kind,
        PayloadKind::ConfluentFramed {
            schema_id: Some(42),
            message_indexes: vec![0],
            header_mode: false,
        }
    );
    assert_eq!(kind.as_str(), "confluent-framed");
    assert_eq!(
        kind.to_string(),
        "Confluent Schema Registry frame (schema id 42, message indexes [0])"
    );
}

#[test]
fn confluent_prefix_explicit_indexes() {
    // [1] is `02 02`, [2, 0, 3] is `06 04 00 06`.
    let one = [0x00, 0x00, 0x00, 0x01, 0x00, 0x02, 0x02, 0x0a, 0x01, 0x61];
    assert_eq!(
        classify(&no_headers(), &one),
        PayloadKind::ConfluentFramed {
            schema_id: Some(256),
            message_indexes: vec![1],
            header_mode: false,
        }
    );
    let nested = [0x00, 0x00, 0x00, 0x00, 0x07, 0x06, 0x04, 0x00, 0x06];
    assert_eq!(
        classify(&no_headers(), &nested),
        PayloadKind::ConfluentFramed {
            schema_id: Some(7),
            message_indexes: vec![2, 0, 3],
            header_mode: false,
        }
    );
    // A negative count (zigzag 0x01 = -1) is not an index array.
    assert_ne!(
        classify(&no_headers(), &[0x00, 0x00, 0x00, 0x00, 0x07, 0x01, 0x01]).as_str(),
        "confluent-framed"
    );
    // Five bytes is too short.
    assert_ne!(
        classify(&no_headers(), &[0x00, 0x00, 0x00, 0x00, 0x07]).as_str(),
        "confluent-framed"
    );
}

#[test]
fn confluent_header_mode() {
    let mut value = vec![0x01];
    value.extend_from_slice(&[0xab; 16]);
    value.extend_from_slice(&[0x02, 0x02]);
    let mut headers = Headers::new();
    headers.append(
        "__value_schema_id",
        crate::headers::HeaderValue::from_bytes(value),
    );
    let kind = classify(&headers, &[0x0a, 0x03, 0x61, 0x62, 0x63]);
    assert_eq!(
        kind,
        PayloadKind::ConfluentFramed {
            schema_id: None,
            message_indexes: vec![1],
            header_mode: true,
        }
    );
    assert_eq!(
        kind.to_string(),
        "Confluent Schema Registry header-mode message (schema GUID in the \
         __value_schema_id header, message indexes [1])"
    );
    assert!(kind.hint().contains("__value_schema_id"));

    // Unparseable header value: indexes unknown, still header mode.
    let headers = with_header("__VALUE_SCHEMA_ID", "garbage");
    assert_eq!(
        classify(&headers, b"\x0a\x00"),
        PayloadKind::ConfluentFramed {
            schema_id: None,
            message_indexes: vec![],
            header_mode: true,
        }
    );
}

#[test]
fn grpc_frame() {
    let payload = [0x00, 0x00, 0x00, 0x00, 0x05, 0x0a, 0x03, 0x61, 0x62, 0x63];
    let kind = classify(&no_headers(), &payload);
    assert_eq!(
        kind,
        PayloadKind::GrpcFramed {
            compressed: false,
            inner_len: 5,
        }
    );
    assert_eq!(kind.as_str(), "grpc-framed");
    assert_eq!(
        kind.to_string(),
        "gRPC length-prefixed frame (uncompressed, 5-byte message)"
    );

    let compressed = [0x01, 0x00, 0x00, 0x00, 0x02, 0x1f, 0x8b];
    assert_eq!(
        classify(&no_headers(), &compressed),
        PayloadKind::GrpcFramed {
            compressed: true,
            inner_len: 2,
        }
    );
}

#[test]
fn grpc_content_type_still_needs_matching_length() {
    let headers = with_header("content-type", "application/grpc+proto");
    // Any flag byte with the content type, as long as the length matches.
    assert_eq!(
        classify(&headers, &[0x02, 0x00, 0x00, 0x00, 0x01, 0x08]),
        PayloadKind::GrpcFramed {
            compressed: true,
            inner_len: 1,
        }
    );
    // Length mismatch: not gRPC, here a Confluent frame.
    assert_eq!(
        classify(&headers, &[0x00, 0x00, 0x00, 0x00, 0x09, 0x00, 0x08, 0x01]).as_str(),
        "confluent-framed"
    );
}

#[test]
fn json_object() {
    let kind = classify(&no_headers(), b"{\"orderId\":\"abc\"}\n");
    assert_eq!(
        kind,
        PayloadKind::Json {
            top_level_keys: vec!["orderId".into()]
        }
    );
    assert_eq!(kind.as_str(), "json");
    assert_eq!(kind.to_string(), "JSON object with keys [\"orderId\"]");
}

#[test]
fn json_keys_in_document_order_capped_and_unescaped() {
    let payload = br#" {"z":{"inner":[1,{"deep":2}]},"a":"x,\"y\":1","k\u00e9y":[],"b":1,"c":2,"d":3,"e":4,"f":5,"g":6}"#;
    assert_eq!(
        classify(&no_headers(), payload),
        PayloadKind::Json {
            top_level_keys: vec![
                "z".into(),
                "a".into(),
                "kéy".into(),
                "b".into(),
                "c".into(),
                "d".into(),
                "e".into(),
                "f".into(),
            ]
        }
    );
}

#[test]
fn json_array_and_empty_object() {
    let kind = classify(&no_headers(), br#"[{"a":1},"b"]"#);
    assert_eq!(
        kind,
        PayloadKind::Json {
            top_level_keys: vec![]
        }
    );
    assert_eq!(kind.to_string(), "JSON array or empty JSON object");
    assert_eq!(
        classify(&no_headers(), b"{}"),
        PayloadKind::Json {
            top_level_keys: vec![]
        }
    );
}

#[test]
fn text() {
    let kind = classify(&no_headers(), b"hello world");
    assert_eq!(
        kind,
        PayloadKind::Text {
            preview: "hello world".into()
        }
    );
    assert_eq!(kind.as_str(), "text");
    assert_eq!(kind.to_string(), "text \"hello world\"");
}

#[test]
fn text_preview_truncates_and_escapes() {
    let long = "order 1234 was created by customer 42 at noon\tand more";
    let PayloadKind::Text { preview } = classify(&no_headers(), long.as_bytes()) else {
        panic!("not text");
    };
    assert_eq!(preview, "order 1234 was created by customer 42 at…");

    let multiline = "line one\r\nline two ü\n";
    assert_eq!(
        classify(&no_headers(), multiline.as_bytes()),
        PayloadKind::Text {
            preview: "line one\\r\\nline two ü\\n".into()
        }
    );
    // JSON scalars are text, not JSON documents.
    assert_eq!(
        classify(&no_headers(), b"42"),
        PayloadKind::Text {
            preview: "42".into()
        }
    );
    // Not JSON despite the brace.
    assert_eq!(classify(&no_headers(), b"{oops").as_str(), "text");
}

#[test]
fn gzip() {
    let kind = classify(&no_headers(), &[0x1f, 0x8b, 0x08, 0x00]);
    assert_eq!(kind, PayloadKind::Gzip);
    assert_eq!(kind.as_str(), "gzip");
    assert_eq!(kind.to_string(), "gzip-compressed data");
}

#[test]
fn empty() {
    let kind = classify(&with_header("content-type", "application/protobuf"), b"");
    assert_eq!(kind, PayloadKind::Empty);
    assert_eq!(kind.as_str(), "empty");
    assert_eq!(kind.to_string(), "an empty payload");
    assert!(kind.hint().contains("tombstone"));
    // Empty wins over the schema id header.
    assert_eq!(
        classify(&with_header("__value_schema_id", "x"), b""),
        PayloadKind::Empty
    );
}

#[test]
fn protobuf() {
    let kind = classify(&no_headers(), &[0x0a, 0x03, 0x61, 0x62, 0x63, 0x10, 0x07]);
    assert_eq!(
        kind,
        PayloadKind::Protobuf {
            field_numbers: vec![1, 2]
        }
    );
    assert_eq!(kind.as_str(), "protobuf");
    assert_eq!(kind.to_string(), "protobuf wire format with fields [1, 2]");
}

#[test]
fn protobuf_that_is_valid_utf8_with_control_chars_is_not_text() {
    assert_eq!(
        classify(&no_headers(), &[0x0a, 0x03, 0x61, 0x62, 0x63]),
        PayloadKind::Protobuf {
            field_numbers: vec![1]
        }
    );
    // Text with newlines that is not protobuf stays text.
    assert_eq!(classify(&no_headers(), b"a\nb\n").as_str(), "text");
}

#[test]
fn binary() {
    let kind = classify(&no_headers(), &[0xff, 0xff, 0xff, 0xff]);
    assert_eq!(kind, PayloadKind::Binary);
    assert_eq!(kind.as_str(), "binary");
    assert_eq!(
        kind.to_string(),
        "binary data that is not protobuf wire format"
    );
    // A leading zero that is neither gRPC nor Confluent.
    assert_eq!(classify(&no_headers(), &[0x00, 0x01]), PayloadKind::Binary);
}

#[test]
fn every_variant_has_a_name_and_a_hint() {
    let kinds = [
        PayloadKind::CloudEventsStructured {
            format: "json".into(),
        },
        PayloadKind::GoMicroEnvelope {
            content_type: None,
            topic: None,
            body_len: None,
        },
        PayloadKind::ConfluentFramed {
            schema_id: Some(1),
            message_indexes: vec![0],
            header_mode: false,
        },
        PayloadKind::ConfluentFramed {
            schema_id: None,
            message_indexes: vec![],
            header_mode: true,
        },
        PayloadKind::GrpcFramed {
            compressed: false,
            inner_len: 0,
        },
        PayloadKind::Json {
            top_level_keys: vec![],
        },
        PayloadKind::Text {
            preview: String::new(),
        },
        PayloadKind::Gzip,
        PayloadKind::Empty,
        PayloadKind::Protobuf {
            field_numbers: vec![],
        },
        PayloadKind::Binary,
    ];
    for kind in &kinds {
        let name = kind.as_str();
        assert!(!name.is_empty());
        assert!(
            name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'),
            "{name}"
        );
        assert!(kind.hint().len() > 30, "{name}");
        assert!(!kind.to_string().is_empty(), "{name}");
    }
    assert!(kinds[2].hint().contains("5-byte prefix"));
    assert!(kinds[9].hint().contains("raw Broker API"));
}

// ---- robustness -----------------------------------------------------------------------

#[test]
fn classify_never_panics_on_pseudo_random_input() {
    let mut rng = Lcg(0x5eed_0fc1_a551_f1ed);
    let prefixes: &[&[u8]] = &[
        b"",
        &[0x00],
        &[0x00, 0x00, 0x00, 0x00],
        &[0x01, 0x00, 0x00, 0x00],
        &[0x1f, 0x8b],
        b"{",
        b"{\"Header\":{\"Content-Type\":\"",
        b"[",
        b" \t\n",
        &[0x0a],
        &[0x0b],
    ];
    let header_sets = [
        no_headers(),
        with_header("content-type", "application/grpc"),
        with_header("content-type", "application/json"),
        with_header("Content-Type", "application/cloudevents+json"),
        with_header("__value_schema_id", "\u{1}0123456789abcdef\u{2}\u{2}"),
    ];
    // Realistic payloads, mutated below.
    let samples: &[&[u8]] = &[
        br#"{"Header":{"Content-Type":"application/protobuf","Micro-Topic":"orders"},"Body":"CgNhYmM="}"#,
        b"{\"orderId\":\"abc\",\"total\":[1,2.5,{\"x\":null}]}\n",
        &[0x00, 0x00, 0x00, 0x00, 0x2a, 0x06, 0x04, 0x00, 0x06, 0x0a, 0x03, 0x61, 0x62, 0x63],
        &[0x00, 0x00, 0x00, 0x00, 0x05, 0x0a, 0x03, 0x61, 0x62, 0x63],
        &[0x0a, 0x03, 0x61, 0x62, 0x63, 0x10, 0x07, 0x1b, 0x08, 0x01, 0x1c],
        b"hello world\r\n",
    ];
    let mut seen = std::collections::BTreeSet::new();
    for round in 0..6000 {
        let mut payload = if round % 4 == 0 {
            // A sample with up to two bytes replaced, then possibly truncated.
            let mut payload = samples[rng.below(samples.len() as u64)].to_vec();
            for _ in 0..rng.below(3) {
                let at = rng.below(payload.len() as u64);
                payload[at] = rng.next_byte();
            }
            if rng.below(4) == 0 {
                payload.truncate(rng.below(payload.len() as u64 + 1));
            }
            payload
        } else {
            prefixes[rng.below(prefixes.len() as u64)].to_vec()
        };
        let len = match round % 10 {
            0 => rng.below(512),
            1..=4 => 0,
            _ => rng.below(24),
        };
        let printable = round % 3 == 0;
        payload.extend((0..len).map(|_| {
            let byte = rng.next_byte();
            if printable { 0x20 + byte % 0x5f } else { byte }
        }));
        let headers = &header_sets[rng.below(header_sets.len() as u64)];

        let kind = classify(headers, &payload);
        assert!(!kind.to_string().is_empty());
        assert!(!kind.hint().is_empty());
        seen.insert(kind.as_str());
        let _ = protobuf_fields(&payload);
    }
    // The generator reaches most branches.
    for name in [
        "cloudevents-structured",
        "go-micro-envelope",
        "confluent-framed",
        "grpc-framed",
        "json",
        "text",
        "gzip",
        "empty",
        "protobuf",
        "binary",
    ] {
        assert!(seen.contains(name), "never classified as {name}: {seen:?}");
    }
}

#[test]
fn classify_never_panics_on_short_inputs() {
    // Every input of up to two bytes, and every three-byte input with a leading tag byte.
    let headers = no_headers();
    for a in 0..=255u8 {
        let _ = classify(&headers, &[a]);
        for b in 0..=255u8 {
            let _ = classify(&headers, &[a, b]);
            let _ = classify(&headers, &[0x0a, a, b]);
        }
    }
}

#[test]
fn hints_name_only_settings_that_exist() {
    // the one setting a hint names; this does not compile if it is gone
    let _ = crate::broker::SubscribeOptions::new().schema_registry_framing(true);
    let framed = PayloadKind::ConfluentFramed {
        schema_id: Some(1),
        message_indexes: vec![0],
        header_mode: false,
    };
    assert!(
        framed
            .hint()
            .contains("SubscribeOptions::schema_registry_framing(true)")
    );
    // header mode has nothing to strip; go-micro's envelope is read by the Kafka and NATS
    // backends' `wire=go-micro`, the setting its hint names
    let envelope = PayloadKind::GoMicroEnvelope {
        content_type: None,
        topic: None,
        body_len: None,
    };
    let header_mode = PayloadKind::ConfluentFramed {
        schema_id: None,
        message_indexes: vec![],
        header_mode: true,
    };
    for kind in [&envelope, &header_mode] {
        let hint = kind.hint();
        assert!(!hint.contains("enable"), "{hint}");
        assert!(!hint.contains("framing"), "{hint}");
    }
    for setting in [
        "wire=go-micro",
        "KafkaBrokerBuilder::go_micro_envelope(true)",
        "NatsBrokerBuilder::go_micro_envelope(true)",
    ] {
        assert!(envelope.hint().contains(setting), "{setting}");
    }
    // the JSON hint names the real function
    let json = PayloadKind::Json {
        top_level_keys: vec![],
    };
    assert!(
        json.hint()
            .contains("event_core::codec::json::register_file_descriptor_set")
    );
}
