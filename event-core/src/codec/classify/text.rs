//! Content types and text: the CloudEvents structured-mode format of a content type, and a
//! printable preview of a payload that is text.

/// How many characters of text [`PayloadKind::Text`](super::PayloadKind::Text) previews.
const PREVIEW_CHARS: usize = 40;

/// The format of a CloudEvents structured-mode content type, or `None` for other types.
pub(super) fn cloudevents_format(content_type: &str) -> Option<String> {
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
pub(super) fn starts_with_ignore_ascii_case(text: &str, prefix: &str) -> bool {
    text.as_bytes()
        .get(..prefix.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(prefix.as_bytes()))
}

/// A preview of the payload if it is text: valid UTF-8 without control characters other than
/// tab, CR and LF. Text containing those three is only accepted if it is not also well-formed
/// protobuf (`0a 03 61 62 63` is UTF-8 starting with `\n`).
pub(super) fn text_preview(payload: &[u8], is_protobuf: bool) -> Option<String> {
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
}
