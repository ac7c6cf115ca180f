//! Payload classification for codec-mismatch diagnostics.
//!
//! When a typed subscriber cannot decode a message (or the content type says the payload is not
//! protobuf at all), [`classify`] looks at the headers and the first bytes and says what the
//! payload most likely is: a CloudEvents structured event, a go-micro JSON envelope, a Confluent
//! Schema Registry frame, a gRPC frame, JSON, text, gzip, protobuf of another shape, or opaque
//! binary. [`PayloadKind::hint`] turns that into advice for the user.
//!
//! Everything here works on untrusted bytes: no function panics, allocates without bound or
//! recurses on its input.

use std::fmt;

use crate::headers::Headers;

/// Header carrying the payload's media type.
const CONTENT_TYPE: &str = "content-type";
/// Header in which Confluent's header-mode serializer stores the value's schema GUID.
const VALUE_SCHEMA_ID: &str = "__value_schema_id";

/// How many top-level JSON object keys [`PayloadKind::Json`] reports.
const MAX_JSON_KEYS: usize = 8;
/// How many characters of text [`PayloadKind::Text`] previews.
const PREVIEW_CHARS: usize = 40;
/// How many distinct field numbers [`PayloadKind::Protobuf`] reports.
const MAX_FIELDS: usize = 16;
/// Largest plausible Confluent message-index path.
const MAX_MESSAGE_INDEXES: i32 = 32;
/// Deepest group nesting accepted when walking protobuf wire format (prost's recursion limit).
const MAX_GROUP_DEPTH: usize = 100;
/// Length of the schema GUID following the `0x01` magic byte in the `__value_schema_id` header.
const SCHEMA_GUID_LEN: usize = 16;

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
                "a go-micro Kafka/NATS producer wrapped the message in its JSON envelope; enable \
                 go-micro envelope decoding or switch the producer to raw protobuf"
            }
            PayloadKind::ConfluentFramed {
                header_mode: true, ..
            } => {
                "the producer uses the Confluent Schema Registry header-mode serializer (schema \
                 GUID in the __value_schema_id header): enable schema-registry framing, or check \
                 that the registered schema is the subscriber's message type"
            }
            PayloadKind::ConfluentFramed { .. } => {
                "the producer uses the Confluent Schema Registry serializer: enable \
                 schema-registry framing (strip the 5-byte prefix and message indexes)"
            }
            PayloadKind::GrpcFramed { .. } => {
                "the payload carries a gRPC 5-byte length prefix (go-micro grpc codec or \
                 application/grpc): strip the prefix, or have the producer send \
                 application/protobuf"
            }
            PayloadKind::Json { .. } => {
                "the producer sent JSON; publish with a typed Publisher, or have it send \
                 application/protobuf"
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

/// Walks `payload` as protobuf wire format (no schema) and returns the distinct top-level
/// field numbers in order of first appearance (max 16), or `None` if the bytes are not
/// well-formed wire format (bad varint, field number 0, wire types 6/7, length past the end,
/// group nesting mismatch). Must never panic on any input.
pub(crate) fn protobuf_fields(payload: &[u8]) -> Option<Vec<u32>> {
    let mut fields = Vec::new();
    // Field numbers of the groups currently open, innermost last.
    let mut open_groups: Vec<u32> = Vec::new();
    let mut rest = payload;

    while !rest.is_empty() {
        let (tag, after_tag) = read_varint(rest)?;
        rest = after_tag;
        let tag = u32::try_from(tag).ok()?;
        let field = tag >> 3;
        if field == 0 {
            return None;
        }
        let top_level = open_groups.is_empty();

        match tag & 0b111 {
            // varint
            0 => rest = read_varint(rest)?.1,
            // 64-bit
            1 => rest = rest.get(8..)?,
            // length-delimited
            2 => {
                let (len, after_len) = read_varint(rest)?;
                rest = after_len.get(usize::try_from(len).ok()?..)?;
            }
            // start group
            3 => {
                if open_groups.len() >= MAX_GROUP_DEPTH {
                    return None;
                }
                open_groups.push(field);
            }
            // end group: must close the innermost open group
            4 => {
                if open_groups.pop()? != field {
                    return None;
                }
            }
            // 32-bit
            5 => rest = rest.get(4..)?,
            // wire types 6 and 7 do not exist
            _ => return None,
        }

        if top_level && fields.len() < MAX_FIELDS && !fields.contains(&field) {
            fields.push(field);
        }
    }

    open_groups.is_empty().then_some(fields)
}

/// Reads a protobuf (LEB128) varint of at most 10 bytes that fits in a `u64`.
fn read_varint(buf: &[u8]) -> Option<(u64, &[u8])> {
    let mut value: u64 = 0;
    for (i, &byte) in buf.iter().enumerate().take(10) {
        // The tenth byte may only carry the 64th bit.
        if i == 9 && byte > 1 {
            return None;
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, buf.get(i + 1..)?));
        }
    }
    None
}

/// Reads a Kafka-style zigzag varint (`ByteUtils.readVarint`): at most 5 bytes, 32 bits.
fn read_zigzag_i32(buf: &[u8]) -> Option<(i32, &[u8])> {
    let mut raw: u32 = 0;
    for (i, &byte) in buf.iter().enumerate().take(5) {
        // The fifth byte may only carry the top 4 bits.
        if i == 4 && byte > 0x0f {
            return None;
        }
        raw |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let magnitude = i32::from_ne_bytes((raw >> 1).to_ne_bytes());
            let value = if raw & 1 == 0 { magnitude } else { !magnitude };
            return Some((value, buf.get(i + 1..)?));
        }
    }
    None
}

/// Reads a Confluent message-index array: a zigzag count, then that many zigzag indexes.
/// A count of 0 is the serializer's shorthand for `[0]`.
fn read_message_indexes(buf: &[u8]) -> Option<(Vec<i32>, &[u8])> {
    let (count, mut rest) = read_zigzag_i32(buf)?;
    if !(0..=MAX_MESSAGE_INDEXES).contains(&count) {
        return None;
    }
    if count == 0 {
        return Some((vec![0], rest));
    }
    let mut indexes = Vec::new();
    for _ in 0..count {
        let (index, after) = read_zigzag_i32(rest)?;
        if index < 0 {
            return None;
        }
        indexes.push(index);
        rest = after;
    }
    Some((indexes, rest))
}

/// Parses the value of a `__value_schema_id` header: `0x01`, a 16-byte GUID, message indexes.
fn header_message_indexes(value: &[u8]) -> Option<Vec<i32>> {
    let (&magic, rest) = value.split_first()?;
    if magic != 0x01 {
        return None;
    }
    let (_guid, rest) = rest.split_at_checked(SCHEMA_GUID_LEN)?;
    let (indexes, trailing) = read_message_indexes(rest)?;
    trailing.is_empty().then_some(indexes)
}

/// The Confluent prefix: `0x00`, a big-endian u32 schema id, a message-index array.
fn confluent_prefix(payload: &[u8]) -> Option<PayloadKind> {
    let (&magic, rest) = payload.split_first()?;
    if magic != 0x00 {
        return None;
    }
    let (id, rest) = rest.split_at_checked(4)?;
    let schema_id = u32::from_be_bytes(id.try_into().ok()?);
    let (message_indexes, _message) = read_message_indexes(rest)?;
    Some(PayloadKind::ConfluentFramed {
        schema_id: Some(schema_id),
        message_indexes,
        header_mode: false,
    })
}

/// A gRPC frame: a flag byte, then a big-endian u32 equal to the length of the rest.
///
/// Without an `application/grpc` content type the flag byte must be 0 or 1, as gRPC writes it.
fn grpc_frame(payload: &[u8], grpc_content_type: bool) -> Option<PayloadKind> {
    let (&flag, rest) = payload.split_first()?;
    let (declared, message) = rest.split_at_checked(4)?;
    let declared = usize::try_from(u32::from_be_bytes(declared.try_into().ok()?)).ok()?;
    if declared != message.len() || !(grpc_content_type || flag <= 1) {
        return None;
    }
    Some(PayloadKind::GrpcFramed {
        compressed: flag != 0,
        inner_len: message.len(),
    })
}

/// The format of a CloudEvents structured-mode content type, or `None` for other types.
fn cloudevents_format(content_type: &str) -> Option<String> {
    if !starts_with_ignore_ascii_case(content_type, "application/cloudevents") {
        return None;
    }
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    let format = media_type
        .rsplit_once('+')
        .map(|(_, suffix)| suffix.trim().to_ascii_lowercase())
        .unwrap_or_default();
    Some(format)
}

/// Whether `text` starts with `prefix`, ignoring ASCII case.
fn starts_with_ignore_ascii_case(text: &str, prefix: &str) -> bool {
    text.as_bytes()
        .get(..prefix.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(prefix.as_bytes()))
}

/// Parses the payload as JSON if it is an object or an array (after optional whitespace).
fn parse_json_document(payload: &[u8]) -> Option<serde_json::Value> {
    let first = payload.iter().find(|b| !b.is_ascii_whitespace())?;
    if !matches!(first, b'{' | b'[') {
        return None;
    }
    serde_json::from_slice(payload).ok()
}

/// Recognizes go-micro's broker envelope: an object with a `Header` object and a `Body` string.
fn go_micro_envelope(document: &serde_json::Value) -> Option<PayloadKind> {
    let envelope = document.as_object()?;
    let header = envelope.get("Header")?.as_object()?;
    let body = envelope.get("Body")?.as_str()?;
    let header_str = |name: &str| {
        header
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .and_then(|(_, value)| value.as_str())
            .map(str::to_owned)
    };
    Some(PayloadKind::GoMicroEnvelope {
        content_type: header_str("Content-Type"),
        topic: header_str("Micro-Topic"),
        body_len: base64_decoded_len(body),
    })
}

/// The decoded length of standard-alphabet, padded base64 (as Go's `encoding/json` writes
/// `[]byte`), or `None` if `encoded` is not such base64.
fn base64_decoded_len(encoded: &str) -> Option<usize> {
    let bytes = encoded.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let padding = bytes.iter().rev().take_while(|&&b| b == b'=').count();
    if padding > 2 {
        return None;
    }
    let (data, _) = bytes.split_at_checked(bytes.len().checked_sub(padding)?)?;
    if !data
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    {
        return None;
    }
    (bytes.len() / 4).checked_mul(3)?.checked_sub(padding)
}

/// The keys of a valid JSON object, in document order, deduplicated, at most
/// [`MAX_JSON_KEYS`]. `document` must already be known to be a valid JSON object.
fn top_level_keys(document: &[u8]) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    let mut depth = 0usize;
    let mut expect_key = false;
    let mut i = 0;
    while keys.len() < MAX_JSON_KEYS {
        let Some(&byte) = document.get(i) else { break };
        match byte {
            b'"' => {
                let Some(end) = json_string_end(document, i) else {
                    break;
                };
                if depth == 1 && expect_key {
                    let key = document
                        .get(i..=end)
                        .and_then(|raw| serde_json::from_slice::<String>(raw).ok());
                    if let Some(key) = key
                        && !keys.contains(&key)
                    {
                        keys.push(key);
                    }
                    expect_key = false;
                }
                i = end;
            }
            b'{' => {
                depth += 1;
                expect_key = depth == 1;
            }
            b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => expect_key = true,
            _ => {}
        }
        i += 1;
    }
    keys
}

/// Index of the quote closing the JSON string whose opening quote is at `start`.
fn json_string_end(document: &[u8], start: usize) -> Option<usize> {
    let mut escaped = false;
    for (offset, &byte) in document.get(start + 1..)?.iter().enumerate() {
        match byte {
            _ if escaped => escaped = false,
            b'\\' => escaped = true,
            b'"' => return start.checked_add(offset)?.checked_add(1),
            _ => {}
        }
    }
    None
}

/// A preview of the payload if it is text: valid UTF-8 without control characters other than
/// tab, CR and LF. Text containing those three is only accepted if it is not also well-formed
/// protobuf (`0a 03 61 62 63` is UTF-8 starting with `\n`).
fn text_preview(payload: &[u8], is_protobuf: bool) -> Option<String> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut has_control = false;
    for c in text.chars() {
        if c.is_control() {
            if !matches!(c, '\t' | '\r' | '\n') {
                return None;
            }
            has_control = true;
        }
    }
    if has_control && is_protobuf {
        return None;
    }

    let mut preview = String::new();
    let mut chars = text.chars();
    for c in chars.by_ref().take(PREVIEW_CHARS) {
        match c {
            '\t' => preview.push_str("\\t"),
            '\r' => preview.push_str("\\r"),
            '\n' => preview.push_str("\\n"),
            c => preview.push(c),
        }
    }
    if chars.next().is_some() {
        preview.push('…');
    }
    Some(preview)
}

#[cfg(test)]
mod tests {
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

    // ---- protobuf_fields ------------------------------------------------------------------

    #[test]
    fn protobuf_fields_accepts_all_wire_types() {
        let payload = [
            0x08, 0x96, 0x01, // field 1 varint 150
            0x11, 1, 2, 3, 4, 5, 6, 7, 8, // field 2 fixed64
            0x1a, 0x02, 0x68, 0x69, // field 3 bytes "hi"
            0x23, 0x08, 0x01, 0x2b, 0x2c, 0x24, // field 4 group { 1: 1, group 5 {} }
            0x2d, 1, 2, 3, 4, // field 5 fixed32
            0x08, 0x00, // field 1 again
            0xf8, 0xff, 0xff, 0xff, 0x0f, 0x00, // field 536870911 varint
        ];
        assert_eq!(
            protobuf_fields(&payload),
            Some(vec![1, 2, 3, 4, 5, 536_870_911])
        );
        assert_eq!(protobuf_fields(&[]), Some(vec![]));
    }

    #[test]
    fn protobuf_fields_caps_at_sixteen() {
        let mut payload = Vec::new();
        for field in (1..=40u64).rev() {
            // Tag varint for `field` with wire type 0, then the value 1.
            let mut tag = field << 3;
            while tag >= 0x80 {
                payload.push(u8::try_from(tag & 0x7f).unwrap() | 0x80);
                tag >>= 7;
            }
            payload.push(u8::try_from(tag).unwrap());
            payload.push(0x01);
        }
        let fields = protobuf_fields(&payload).unwrap();
        assert_eq!(fields, (25..=40).rev().collect::<Vec<u32>>());
    }

    #[test]
    fn protobuf_fields_rejects_malformed_input() {
        let malformed: &[&[u8]] = &[
            &[0x00],       // field number 0
            &[0x02, 0x00], // field 0, wire type 2
            &[0x0e, 0x00], // wire type 6
            &[0x0f, 0x00], // wire type 7
            &[0x08],       // missing varint value
            &[0x08, 0x80], // truncated varint
            &[0x80, 0x80], // truncated tag
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
            ], // varint > 64 bits
            &[
                0x08, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01,
            ], // 11 bytes
            &[0x80, 0x80, 0x80, 0x80, 0x80, 0x01], // tag > u32::MAX
            &[0x09, 1, 2, 3], // fixed64 past the end
            &[0x0d, 1, 2, 3], // fixed32 past the end
            &[0x0a, 0x05, 0x61], // length past the end
            &[0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], // huge length
            &[0x0b],       // unclosed group
            &[0x0c],       // end group without start
            &[0x0b, 0x14], // end group 2 closes group 1
            &[0x0b, 0x13, 0x0c, 0x14], // crossed groups
            &[0xff, 0xff, 0xff, 0xff], // unterminated
        ];
        for bytes in malformed {
            assert_eq!(protobuf_fields(bytes), None, "{bytes:02x?}");
        }
    }

    #[test]
    fn protobuf_fields_limits_group_depth() {
        let depth = MAX_GROUP_DEPTH + 1;
        let mut payload = vec![0x0b; depth];
        payload.extend(std::iter::repeat_n(0x0c, depth));
        assert_eq!(protobuf_fields(&payload), None);

        let mut payload = vec![0x0b; MAX_GROUP_DEPTH];
        payload.extend(std::iter::repeat_n(0x0c, MAX_GROUP_DEPTH));
        assert_eq!(protobuf_fields(&payload), Some(vec![1]));
    }

    // ---- helpers --------------------------------------------------------------------------

    #[test]
    fn base64_lengths() {
        assert_eq!(base64_decoded_len(""), Some(0));
        assert_eq!(base64_decoded_len("CgNhYmM="), Some(5));
        assert_eq!(base64_decoded_len("YQ=="), Some(1));
        assert_eq!(base64_decoded_len("YWJj"), Some(3));
        assert_eq!(base64_decoded_len("+/+/"), Some(3));
        assert_eq!(base64_decoded_len("YQ"), None); // unpadded
        assert_eq!(base64_decoded_len("Y==="), None);
        assert_eq!(base64_decoded_len("===="), None);
        assert_eq!(base64_decoded_len("Y=Q="), None);
        assert_eq!(base64_decoded_len("-_-_"), None); // URL alphabet
        assert_eq!(base64_decoded_len("YW Jj"), None);
    }

    #[test]
    fn zigzag_varints() {
        assert_eq!(read_zigzag_i32(&[0x00]), Some((0, &[][..])));
        assert_eq!(read_zigzag_i32(&[0x01]), Some((-1, &[][..])));
        assert_eq!(read_zigzag_i32(&[0x02, 0x09]), Some((1, &[0x09][..])));
        assert_eq!(
            read_zigzag_i32(&[0xfe, 0xff, 0xff, 0xff, 0x0f]),
            Some((i32::MAX, &[][..]))
        );
        assert_eq!(
            read_zigzag_i32(&[0xff, 0xff, 0xff, 0xff, 0x0f]),
            Some((i32::MIN, &[][..]))
        );
        assert_eq!(read_zigzag_i32(&[0xff, 0xff, 0xff, 0xff, 0x1f]), None);
        assert_eq!(read_zigzag_i32(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00]), None);
        assert_eq!(read_zigzag_i32(&[0x80]), None);
    }

    #[test]
    fn cloudevents_formats() {
        assert_eq!(cloudevents_format("application/json"), None);
        assert_eq!(
            cloudevents_format("application/cloudevents"),
            Some(String::new())
        );
        assert_eq!(
            cloudevents_format("APPLICATION/CLOUDEVENTS+Protobuf ;x=y"),
            Some("protobuf".into())
        );
        // Non-ASCII content types do not panic.
        assert_eq!(cloudevents_format("applicatioñ/cloudevents"), None);
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
}
