//! Protobuf binary: the [`Protobuf`] codec, the encoder publishers use, and the zero-copy
//! reader typed subscribers decode from.

use bytes::{Buf, Bytes, BytesMut};

use super::{Codec, CodecError, PROTOBUF};
use crate::buffer::{OWN_BUFFER_ABOVE, cut_from_encode_buffer};

/// Protobuf binary (`application/protobuf`): the message's bytes and nothing else. The
/// default codec of publishers and of messages without a content type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Protobuf;

impl<T: prost::Message + Default> Codec<T> for Protobuf {
    fn content_type(&self) -> &str {
        PROTOBUF
    }

    fn encode(&self, message: &T) -> Result<Bytes, CodecError> {
        Ok(encode_payload(message))
    }

    fn decode(&self, payload: &Bytes) -> Result<T, CodecError> {
        T::decode(PayloadReader::new(payload, 0)).map_err(|source| CodecError::Protobuf { source })
    }
}

/// `message`, encoded.
///
/// Small payloads are cut from the thread's encode buffer (see
/// [`cut_from_encode_buffer`]): the payloads of one chunk share one allocation and one
/// reference count. Payloads longer than [`OWN_BUFFER_ABOVE`] get an allocation of their own.
#[inline]
pub(crate) fn encode_payload<T: prost::Message>(message: &T) -> Bytes {
    let len = message.encoded_len();
    if len > OWN_BUFFER_ABOVE {
        let mut payload = BytesMut::with_capacity(len);
        message
            .encode(&mut payload)
            .expect("a BytesMut sized to encoded_len has room");
        return payload.freeze();
    }
    cut_from_encode_buffer(len, |buffer| {
        message
            .encode(buffer)
            .expect("the encode buffer was given room for encoded_len");
    })
}

/// A delivery's payload read as a [`Buf`] without taking a handle on it: `bytes` fields are cut
/// from the payload (zero-copy, one handle each), everything else is read in place. Decoding
/// from a clone of the payload instead costs a handle per message, and the first clone of a
/// payload built from a vector allocates.
pub(super) struct PayloadReader<'a> {
    payload: &'a Bytes,
    at: usize,
}

impl<'a> PayloadReader<'a> {
    /// Reads `payload` from byte `at` on (past a frame prefix, or 0), at most its length.
    #[inline]
    pub(super) fn new(payload: &'a Bytes, at: usize) -> Self {
        debug_assert!(at <= payload.len(), "start {at} past the payload's end");
        PayloadReader { payload, at }
    }
}

impl Buf for PayloadReader<'_> {
    fn remaining(&self) -> usize {
        self.payload.len() - self.at
    }

    fn chunk(&self) -> &[u8] {
        &self.payload[self.at..]
    }

    fn advance(&mut self, count: usize) {
        assert!(
            count <= self.remaining(),
            "advance by {count} past the {} bytes left",
            self.remaining()
        );
        self.at += count;
    }

    fn copy_to_bytes(&mut self, len: usize) -> Bytes {
        assert!(
            len <= self.remaining(),
            "{len} bytes asked of the {} left",
            self.remaining()
        );
        let bytes = self.payload.slice(self.at..self.at + len);
        self.at += len;
        bytes
    }
}

/// Top-level field numbers present in `payload` but absent from `decoded` re-encoded.
pub(super) fn unknown_fields<T: prost::Message>(payload: &[u8], decoded: &T) -> Vec<u32> {
    let Some(seen) = super::classify::protobuf_fields(payload) else {
        return Vec::new();
    };
    let known = super::classify::protobuf_fields(&decoded.encode_to_vec()).unwrap_or_default();
    seen.into_iter().filter(|f| !known.contains(f)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_proto::bench::v1::Tick;
    use prost::Message as _;

    fn tick(seq: u64, payload_len: usize) -> Tick {
        Tick {
            seq,
            payload: Bytes::from(vec![seq as u8; payload_len]),
        }
    }

    #[test]
    fn bytes_fields_are_cut_from_the_payload_not_copied() {
        let tick = Tick {
            seq: 300,
            payload: Bytes::from_static(b"0123456789"),
        };
        let payload = Bytes::from(tick.encode_to_vec());
        let decoded = Tick::decode(PayloadReader::new(&payload, 0)).expect("decodes");
        assert_eq!(decoded, tick);
        let range = payload.as_ptr_range();
        assert!(
            range.contains(&decoded.payload.as_ptr()),
            "the bytes field was copied out of the payload"
        );
        // a truncated payload is an error, not a panic
        let truncated = payload.slice(..payload.len() - 3);
        assert!(Tick::decode(PayloadReader::new(&truncated, 0)).is_err());
    }

    #[test]
    fn a_reader_can_start_past_a_prefix() {
        let tick = tick(7, 3);
        let mut framed = vec![0, 0, 0, 0, 42, 0];
        framed.extend(tick.encode_to_vec());
        let framed = Bytes::from(framed);
        assert_eq!(Tick::decode(PayloadReader::new(&framed, 6)).unwrap(), tick);
        assert!(Tick::decode(PayloadReader::new(&framed, 0)).is_err());
    }

    #[test]
    fn the_codec_round_trips_and_reports_invalid_bytes() {
        let message = tick(9, 5);
        let bytes = Codec::<Tick>::encode(&Protobuf, &message).unwrap();
        assert_eq!(bytes, message.encode_to_vec());
        assert_eq!(Codec::<Tick>::decode(&Protobuf, &bytes).unwrap(), message);
        let error = Codec::<Tick>::decode(&Protobuf, &Bytes::from_static(&[0x08])).unwrap_err();
        assert!(matches!(error, CodecError::Protobuf { .. }), "{error:?}");
        assert_eq!(error.to_string(), "invalid protobuf binary");
        assert!(std::error::Error::source(&error).is_some());
    }

    #[test]
    fn payloads_are_cut_from_one_chunk_and_never_overwritten_while_alive() {
        // a thread of its own: a fresh encode buffer
        std::thread::spawn(|| {
            let first = tick(1, 40);
            let second = tick(2, 40);
            let a = encode_payload(&first);
            let b = encode_payload(&second);
            assert_eq!(a, first.encode_to_vec());
            assert_eq!(b, second.encode_to_vec());
            // one allocation: the second payload follows the first
            assert_eq!(b.as_ptr(), a.as_ptr().wrapping_add(a.len()));

            // many chunks' worth while `a` and `b` stay alive, half of the rest kept too
            let mut kept = Vec::new();
            for seq in 0..20_000u64 {
                let message = tick(seq, (seq % 97) as usize);
                let payload = encode_payload(&message);
                if seq % 2 == 0 {
                    kept.push((message, payload));
                }
            }
            assert_eq!(a, first.encode_to_vec(), "a live payload was written over");
            assert_eq!(b, second.encode_to_vec(), "a live payload was written over");
            for (message, payload) in &kept {
                assert_eq!(payload, &message.encode_to_vec(), "seq {}", message.seq);
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_large_payload_gets_an_allocation_of_its_own() {
        std::thread::spawn(|| {
            let small = encode_payload(&tick(1, 10));
            let large_message = tick(2, OWN_BUFFER_ABOVE + 1);
            let large = encode_payload(&large_message);
            assert_eq!(large, large_message.encode_to_vec());
            let next = encode_payload(&tick(3, 10));
            // the chunk was not used, nor grown, by the large payload
            assert_eq!(next.as_ptr(), small.as_ptr().wrapping_add(small.len()));
        })
        .join()
        .unwrap();
    }
}
