//! JSON payloads: documents, go-micro's broker envelope and the keys of a top-level object.
//!
//! Everything here works on untrusted bytes: no function panics, allocates without bound or
//! recurses on its input (serde_json limits its own recursion).

use super::PayloadKind;

/// How many top-level JSON object keys [`PayloadKind::Json`] reports.
const MAX_JSON_KEYS: usize = 8;

/// Parses the payload as JSON if it is an object or an array (after optional whitespace).
pub(super) fn parse_json_document(payload: &[u8]) -> Option<serde_json::Value> {
    let first = payload.iter().find(|b| !b.is_ascii_whitespace())?;
    if !matches!(first, b'{' | b'[') {
        return None;
    }
    serde_json::from_slice(payload).ok()
}

/// Recognizes go-micro's broker envelope: an object with a `Header` object and a `Body` string.
pub(super) fn go_micro_envelope(document: &serde_json::Value) -> Option<PayloadKind> {
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
pub(crate) fn top_level_keys(document: &[u8]) -> Vec<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn top_level_keys_skip_nested_objects_and_strings() {
        let keys = top_level_keys(br#"{"a":{"b":1},"c":"{\"d\":2}","e":[{"f":3}]}"#);
        assert_eq!(keys, ["a", "c", "e"]);
        assert!(top_level_keys(b"{}").is_empty());
    }
}
