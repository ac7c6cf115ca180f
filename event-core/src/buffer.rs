//! The per-thread buffer that small payloads and per-message header values are cut from.
//!
//! A leaf module (it depends on nothing in the crate): the codec encodes payloads into it and
//! telemetry copies `traceparent` values into it, without depending on each other.

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};

/// How many bytes a thread's shared encode buffer takes at a time.
const ENCODE_CHUNK: usize = 8 * 1024;

/// Payloads longer than this get an allocation of their own instead of a slice of the
/// thread's shared encode buffer.
pub(crate) const OWN_BUFFER_ABOVE: usize = 1024;

thread_local! {
    /// The unused rest of this thread's current encode chunk, initialized (see
    /// [`cut_from_encode_buffer`]).
    static ENCODE_BUFFER: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// What `write` writes into this thread's encode buffer (given room for at least `len`
/// bytes, at most [`OWN_BUFFER_ABOVE`]), cut off as a `Bytes` that shares the buffer's
/// allocation.
///
/// Small payloads are cut from a per-thread chunk of [`ENCODE_CHUNK`] bytes, as a codec's read
/// buffer is: the payloads of one chunk share one allocation and one reference count. That
/// saves two allocations per message (the payload's own, and the one `Bytes` makes when a
/// payload built from a vector is first cloned, as decoding does to keep `bytes` fields
/// zero-copy), and the consumer frees one chunk instead of every payload. A chunk is freed
/// when the last payload cut from it is dropped; once every payload of the current chunk is
/// gone, the thread writes over it again instead of allocating.
///
/// The buffer's unused rest is kept initialized (a new or reused chunk is zeroed once), so
/// that `write` fills a plain byte slice: prost writes a varint a byte at a time, and a slice
/// takes a byte for a bounds check where a `BytesMut` checks its capacity and length.
pub(crate) fn cut_from_encode_buffer(len: usize, write: impl FnOnce(&mut &mut [u8])) -> Bytes {
    debug_assert!(len <= OWN_BUFFER_ABOVE);
    ENCODE_BUFFER.with_borrow_mut(|buffer| {
        if buffer.len() < len {
            // writes over the chunk again when no payload cut from it is alive, else starts
            // a new one
            buffer.clear();
            buffer.reserve(ENCODE_CHUNK);
            let capacity = buffer.capacity();
            buffer.resize(capacity, 0);
        }
        // the whole rest, not `len` bytes: what was written is cut off, even from a message
        // that writes less than its `encoded_len` (prost's own messages write exactly that).
        // One that writes past the chunk's end panics, as it would encoding into any slice.
        let mut out = &mut buffer[..];
        let rest = out.len();
        write(&mut out);
        let written = rest - out.len();
        buffer.split_to(written).freeze()
    })
}

/// A copy of `bytes` (at most [`OWN_BUFFER_ABOVE`] long) cut from this thread's encode
/// buffer, as payloads are: for header values too long to be stored inline that every
/// message carries (`traceparent`). A copy of its own would cost an allocation, and the
/// first clone of it (the consumer's context takes one) a second.
#[cfg(feature = "opentelemetry")]
pub(crate) fn copy_shared(bytes: &[u8]) -> Bytes {
    cut_from_encode_buffer(bytes.len(), |out| bytes::BufMut::put_slice(out, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(bytes: &[u8]) -> Bytes {
        cut_from_encode_buffer(bytes.len(), |out| bytes::BufMut::put_slice(out, bytes))
    }

    #[test]
    fn cuts_follow_each_other_and_live_ones_are_never_written_over() {
        // a thread of its own: a fresh encode buffer
        std::thread::spawn(|| {
            let a = cut(b"first");
            let b = cut(b"second");
            assert_eq!(b.as_ptr(), a.as_ptr().wrapping_add(a.len()));
            let mut kept = Vec::new();
            for i in 0..20_000u32 {
                let data = vec![i as u8; (i % 97) as usize];
                let bytes = cut(&data);
                if i % 2 == 0 {
                    kept.push((data, bytes));
                }
            }
            assert_eq!(a, &b"first"[..]);
            assert_eq!(b, &b"second"[..]);
            for (data, bytes) in &kept {
                assert_eq!(bytes, data);
            }
        })
        .join()
        .unwrap();
    }
}
