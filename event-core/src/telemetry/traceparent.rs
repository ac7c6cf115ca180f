//! The W3C `traceparent` header (`vv-<trace id>-<span id>-<flags>`, lower-case hex), read by
//! the rules of OpenTelemetry's W3C propagator and written as it writes it: one place for
//! its layout, which the sampling decision, the `trace_id` field and the propagation fast
//! paths share.

/// The length of a version-00 `traceparent`.
pub(super) const LEN: usize = 55;

/// The fields of a valid `traceparent`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Parsed<'a> {
    /// 32 lower-case hex digits, not all zero.
    pub(super) trace_id: &'a str,
    /// 16 lower-case hex digits, not all zero.
    #[cfg_attr(not(feature = "opentelemetry"), allow(dead_code))]
    pub(super) span_id: &'a str,
    #[cfg_attr(not(feature = "opentelemetry"), allow(dead_code))]
    pub(super) flags: u8,
}

impl Parsed<'_> {
    /// Whether the sampled flag is set.
    #[cfg_attr(not(feature = "opentelemetry"), allow(dead_code))]
    pub(super) fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// `value` read as a `traceparent`; `None` when it is not a valid one. Surrounding
/// blanks are ignored; version `00` is exactly [`LEN`] bytes long, a later version
/// (`ff` excepted) may go on after a `-`.
pub(super) fn parse(value: &[u8]) -> Option<Parsed<'_>> {
    let value = value.trim_ascii();
    let lower_hex = |bytes: &[u8]| bytes.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let zero = |bytes: &[u8]| bytes.iter().all(|&b| b == b'0');
    let valid = value.len() >= LEN
        && value[2] == b'-'
        && value[35] == b'-'
        && value[52] == b'-'
        && lower_hex(&value[..2])
        && value[..2] != *b"ff"
        && (value.len() == LEN || (value[..2] != *b"00" && value[LEN] == b'-'))
        && lower_hex(&value[3..35])
        && lower_hex(&value[36..52])
        && lower_hex(&value[53..LEN])
        && !zero(&value[3..35])
        && !zero(&value[36..52]);
    if !valid {
        return None;
    }
    let text = std::str::from_utf8(&value[..LEN]).ok()?;
    Some(Parsed {
        trace_id: &text[3..35],
        span_id: &text[36..52],
        flags: u8::from_str_radix(&text[53..], 16).ok()?,
    })
}

/// A version-00 `traceparent` of these ids, with no flag but `sampled`.
#[cfg(feature = "opentelemetry")]
pub(super) fn format(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> [u8; LEN] {
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    crate::hex::hex_lower(trace_id, &mut out[3..35]);
    crate::hex::hex_lower(span_id, &mut out[36..52]);
    if sampled {
        out[LEN - 1] = b'1';
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_is_read_by_the_propagators_rules() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7";
        let valid = |flags| {
            Some(Parsed {
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736",
                span_id: "00f067aa0ba902b7",
                flags,
            })
        };
        for (traceparent, expected) in [
            (format!("00-{id}-01"), valid(1)),
            (format!("00-{id}-00"), valid(0)),
            (format!("00-{id}-03"), valid(3)),
            (format!(" 00-{id}-01\t"), valid(1)),
            // a later version may append fields; version 00 may not
            (format!("01-{id}-01-extra"), valid(1)),
            (format!("00-{id}-01-extra"), None),
            (format!("01-{id}-01extra"), None),
            (format!("ff-{id}-01"), None),
            // upper case and non-hex digits
            (format!("00-{id}-0F"), None),
            (format!("00-{}-01", id.to_uppercase()), None),
            (format!("00-{id}-0x"), None),
            // ids of zeros
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_owned(),
                None,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01".to_owned(),
                None,
            ),
            (format!("00-{id}"), None),
            ("00-aa-bb-01".to_owned(), None),
            (String::new(), None),
        ] {
            assert_eq!(parse(traceparent.as_bytes()), expected, "{traceparent:?}");
        }
    }

    #[cfg(feature = "opentelemetry")]
    #[test]
    fn what_is_written_reads_back() {
        let trace_id = [0xab; 16];
        let span_id = [0x01; 8];
        for sampled in [false, true] {
            let written = format(&trace_id, &span_id, sampled);
            let parsed = parse(&written).expect("valid");
            assert_eq!(parsed.trace_id, "ab".repeat(16));
            assert_eq!(parsed.span_id, "01".repeat(8));
            assert_eq!(parsed.sampled(), sampled);
        }
    }
}
