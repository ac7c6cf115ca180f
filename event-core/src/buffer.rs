//! The per-thread buffer that small payloads and per-message header values are cut from.
//!
//! A leaf module (it depends on nothing in the crate): the codec encodes payloads into it and
//! telemetry copies `traceparent` values into it, without depending on each other.

use std::cell::RefCell;
use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// How many bytes a thread's shared encode buffer takes at a time.
const ENCODE_CHUNK: usize = 8 * 1024;

/// Payloads longer than this get an allocation of their own instead of a slice of the
/// thread's shared encode buffer.
pub(crate) const OWN_BUFFER_ABOVE: usize = 1024;

/// How many used chunks a thread keeps, to write over once every payload cut from them is
/// gone, before it lets the oldest go.
const KEPT_CHUNKS: usize = 8;

thread_local! {
    /// This thread's encode chunks (see [`cut_from_encode_buffer`]).
    static ENCODE_BUFFER: RefCell<Chunks> = RefCell::new(Chunks {
        current: BytesMut::zeroed(ENCODE_CHUNK),
        used: VecDeque::new(),
    });
}

/// The chunk payloads are cut from, and the used ones kept for later.
struct Chunks {
    /// The unused rest of the current chunk, initialized.
    current: BytesMut,
    /// Used chunks (emptied views of them), the oldest first, at most [`KEPT_CHUNKS`].
    used: VecDeque<BytesMut>,
}

impl Chunks {
    /// Makes `current` a whole chunk again: the same one when no payload cut from it is
    /// alive, else a used one none of whose payloads is, else a new one.
    fn next(&mut self) {
        self.current.clear();
        if !self.current.try_reclaim(ENCODE_CHUNK) {
            let busy = std::mem::take(&mut self.current);
            // the oldest first: the likeliest to be free
            let free = self
                .used
                .iter_mut()
                .position(|c| c.try_reclaim(ENCODE_CHUNK));
            self.current = match free.and_then(|i| self.used.remove(i)) {
                Some(chunk) => chunk,
                None => {
                    if self.used.len() == KEPT_CHUNKS {
                        // every one busy: the oldest is freed with its last payload
                        self.used.pop_front();
                    }
                    BytesMut::with_capacity(ENCODE_CHUNK)
                }
            };
            self.used.push_back(busy);
        }
        let capacity = self.current.capacity();
        self.current.resize(capacity, 0);
    }
}

/// What `write` writes into this thread's encode buffer (given room for at least `len`
/// bytes, at most [`OWN_BUFFER_ABOVE`]), cut off as a `Bytes` that shares the buffer's
/// allocation.
///
/// Small payloads are cut from a per-thread chunk of [`ENCODE_CHUNK`] bytes, as a codec's read
/// buffer is: the payloads of one chunk share one allocation and one reference count. That
/// saves two allocations per message (the payload's own, and the one `Bytes` makes when a
/// payload built from a vector is first cloned, as decoding does to keep `bytes` fields
/// zero-copy), and the consumer frees one chunk instead of every payload. A used chunk is
/// written over again once every payload cut from it is gone: the thread keeps up to
/// [`KEPT_CHUNKS`] of them, so that a publisher with messages in flight (each holding its
/// chunk) still allocates none in a steady state. That matters beyond the allocation: a
/// request this large makes glibc's allocator consolidate its small free chunks first, and a
/// backend whose connection runs on another thread frees many of those into this thread's
/// arena.
///
/// The buffer's unused rest is kept initialized (a new or reused chunk is zeroed once), so
/// that `write` fills a plain byte slice: prost writes a varint a byte at a time, and a slice
/// takes a byte for a bounds check where a `BytesMut` checks its capacity and length.
pub(crate) fn cut_from_encode_buffer(len: usize, write: impl FnOnce(&mut &mut [u8])) -> Bytes {
    debug_assert!(len <= OWN_BUFFER_ABOVE);
    ENCODE_BUFFER.with_borrow_mut(|chunks| {
        if chunks.current.len() < len {
            chunks.next();
        }
        let buffer = &mut chunks.current;
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
    fn a_used_chunk_is_written_over_once_its_payloads_are_gone() {
        std::thread::spawn(|| {
            let kilobyte = [7u8; 1024];
            let per_chunk = ENCODE_CHUNK / kilobyte.len();
            // the first chunk, kept alive while the second fills
            let first: Vec<Bytes> = (0..per_chunk).map(|_| cut(&kilobyte)).collect();
            let second: Vec<Bytes> = (0..per_chunk).map(|_| cut(&kilobyte)).collect();
            assert_ne!(first[0].as_ptr(), second[0].as_ptr());
            let first_start = first[0].as_ptr();
            drop(first);
            // what the allocator would hand a new chunk of that size, had the first one been
            // freed
            let hog = vec![0u8; ENCODE_CHUNK];
            // the second is still alive: the third chunk is the first one again
            let third = cut(&kilobyte);
            assert_eq!(third.as_ptr(), first_start);
            assert!(second.iter().all(|b| b[..] == kilobyte[..]));
            // none free: a new one
            let rest: Vec<Bytes> = (1..per_chunk).map(|_| cut(&kilobyte)).collect();
            let fourth = cut(&kilobyte);
            assert_ne!(fourth.as_ptr(), first_start);
            assert_ne!(fourth.as_ptr(), second[0].as_ptr());
            drop((rest, third, hog));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn payloads_in_flight_across_more_chunks_than_are_kept_stay_intact() {
        std::thread::spawn(|| {
            // a window of live payloads spanning about twelve chunks, more than are kept:
            // chunks are written over, dropped and made while payloads come and go
            let window = 12 * ENCODE_CHUNK / 500;
            let mut live = std::collections::VecDeque::new();
            for i in 0..20_000u32 {
                let data = vec![(i % 251) as u8; 400 + (i % 200) as usize];
                live.push_back((cut(&data), data));
                if live.len() > window {
                    let (bytes, data) = live.pop_front().expect("full");
                    assert_eq!(bytes, data, "cut {}", i as usize - window);
                }
            }
            for (bytes, data) in live {
                assert_eq!(bytes, data);
            }
        })
        .join()
        .unwrap();
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
