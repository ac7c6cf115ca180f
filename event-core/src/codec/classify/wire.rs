//! Binary framings and protobuf wire format, read without a schema: the top-level field
//! numbers of a payload, Confluent Schema Registry frames (payload prefix and header mode) and
//! gRPC length prefixes.
//!
//! Everything here works on untrusted bytes: no function panics, allocates without bound or
//! recurses on its input.

use super::PayloadKind;

/// How many distinct field numbers [`PayloadKind::Protobuf`] reports.
const MAX_FIELDS: usize = 16;
/// Largest plausible Confluent message-index path.
const MAX_MESSAGE_INDEXES: i32 = 32;
/// Deepest group nesting accepted when walking protobuf wire format (prost's recursion limit).
pub(super) const MAX_GROUP_DEPTH: usize = 100;
/// Length of the schema GUID following the `0x01` magic byte in the `__value_schema_id` header.
const SCHEMA_GUID_LEN: usize = 16;

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
pub(super) fn header_message_indexes(value: &[u8]) -> Option<Vec<i32>> {
    let (&magic, rest) = value.split_first()?;
    if magic != 0x01 {
        return None;
    }
    let (_guid, rest) = rest.split_at_checked(SCHEMA_GUID_LEN)?;
    let (indexes, trailing) = read_message_indexes(rest)?;
    trailing.is_empty().then_some(indexes)
}

/// The Confluent prefix: `0x00`, a big-endian u32 schema id, a message-index array.
pub(super) fn confluent_prefix(payload: &[u8]) -> Option<PayloadKind> {
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

/// The length of the Confluent Schema Registry prefix `payload` starts with (`0x00`, a
/// big-endian u32 schema id, a message-index array), or `None` if it starts with none. Reads
/// the indexes without keeping them: this runs for every message of a subscription that
/// strips the prefix.
pub(crate) fn confluent_frame_len(payload: &[u8]) -> Option<usize> {
    let (&magic, rest) = payload.split_first()?;
    if magic != 0x00 {
        return None;
    }
    let (count, mut rest) = read_zigzag_i32(rest.get(4..)?)?;
    if !(0..=MAX_MESSAGE_INDEXES).contains(&count) {
        return None;
    }
    for _ in 0..count {
        let (index, after) = read_zigzag_i32(rest)?;
        if index < 0 {
            return None;
        }
        rest = after;
    }
    Some(payload.len() - rest.len())
}

/// A gRPC frame: a flag byte, then a big-endian u32 equal to the length of the rest.
///
/// Without an `application/grpc` content type the flag byte must be 0 or 1, as gRPC writes it.
pub(super) fn grpc_frame(payload: &[u8], grpc_content_type: bool) -> Option<PayloadKind> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn confluent_frame_lengths() {
        // the shorthand [0], explicit [1], [2, 0, 3]
        assert_eq!(
            confluent_frame_len(&[0, 0, 0, 0, 42, 0x00, 0x0a, 0x01]),
            Some(6)
        );
        assert_eq!(
            confluent_frame_len(&[0, 0, 0, 1, 0, 0x02, 0x02, 0x0a]),
            Some(7)
        );
        assert_eq!(
            confluent_frame_len(&[0, 0, 0, 0, 7, 0x06, 0x04, 0x00, 0x06]),
            Some(9)
        );
        // a frame around an empty message
        assert_eq!(confluent_frame_len(&[0, 0, 0, 0, 7, 0x00]), Some(6));
        // not a frame: another magic byte, too short, a negative count or index, truncated
        assert_eq!(confluent_frame_len(&[0x0a, 0, 0, 0, 7, 0x00]), None);
        assert_eq!(confluent_frame_len(&[0, 0, 0, 0, 7]), None);
        assert_eq!(confluent_frame_len(&[0, 0, 0, 0, 7, 0x01, 0x01]), None);
        assert_eq!(confluent_frame_len(&[0, 0, 0, 0, 7, 0x02, 0x01]), None);
        assert_eq!(confluent_frame_len(&[0, 0, 0, 0, 7, 0x04, 0x02]), None);
        // agrees with the classification on every frame it accepts
        for payload in [
            &[0u8, 0, 0, 0, 42, 0x00, 0x0a, 0x01][..],
            &[0, 0, 0, 0, 7, 0x06, 0x04, 0x00, 0x06],
        ] {
            assert!(confluent_prefix(payload).is_some());
        }
    }
}
