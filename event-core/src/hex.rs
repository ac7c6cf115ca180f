//! Lower-case hex: previews of untrusted bytes and fixed-width ids.
//!
//! A leaf module (it depends on nothing in the crate), so that headers, codec, publishing and
//! telemetry can all write hex without depending on each other.

/// Lower-case hex of the first `max` bytes, followed by `…` when `bytes` is longer.
///
/// ```
/// assert_eq!(event_core::codec::hex(&[0x0a, 0x03], 16), "0a03");
/// assert_eq!(event_core::codec::hex(&[0; 20], 2), "0000…");
/// ```
pub fn hex(bytes: &[u8], max: usize) -> String {
    let shown = &bytes[..bytes.len().min(max)];
    let mut out = vec![0; shown.len() * 2];
    hex_lower(shown, &mut out);
    let mut out = String::from_utf8(out).expect("hex digits are ASCII");
    if bytes.len() > max {
        out.push('…');
    }
    out
}

/// Writes `bytes` as lower-case hex into `out`, which is twice as long.
pub(crate) fn hex_lower(bytes: &[u8], out: &mut [u8]) {
    /// The two hex digits of every byte value.
    static PAIRS: [[u8; 2]; 256] = {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut pairs = [[0; 2]; 256];
        let mut i = 0;
        while i < 256 {
            pairs[i] = [HEX[i >> 4], HEX[i & 0xf]];
            i += 1;
        }
        pairs
    };
    debug_assert_eq!(out.len(), bytes.len() * 2);
    for (byte, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair.copy_from_slice(&PAIRS[usize::from(*byte)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preview_truncates() {
        assert_eq!(hex(&[0x0a, 0x03], 16), "0a03");
        assert_eq!(hex(&[0; 20], 2), "0000…");
        assert_eq!(hex(&[], 2), "");
        assert_eq!(hex(&[0xff, 0x10], 2), "ff10");
    }

    #[test]
    fn every_byte_value() {
        let bytes: Vec<u8> = (0..=255).collect();
        let mut out = vec![0; 512];
        hex_lower(&bytes, &mut out);
        let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }
}
