//! Header vectors handed from the threads that drop messages back to the threads that build
//! them.
//!
//! A publisher builds a message's header vector on its thread; the consumer that handles the
//! message drops it on another. For the allocator that is a free of foreign memory for every
//! message: glibc's malloc takes the owning arena's lock for it, the lock the publishing
//! thread holds while it allocates (measured: most of the memory broker's time with glibc
//! went to waiting for and waking on that lock). So vectors of the publish size are not
//! freed but kept: each thread keeps up to [`BATCH`] spare vectors, passes a full batch to a
//! shared depot under one lock, and takes a batch from it when it runs out. A message
//! then costs a thread-local push and pop, and the lock is taken once per [`BATCH`] messages.
//!
//! What is kept is bounded: [`BATCH`] vectors per thread and [`DEPOT_BATCHES`] batches
//! shared, of 512 bytes each (16 KiB per thread, 128 KiB shared); beyond that, vectors are
//! freed as usual.

use std::cell::RefCell;
use std::sync::Mutex;

use super::{HeaderName, HeaderValue};

/// The entries of a header map.
pub(super) type Entries = Vec<(HeaderName, HeaderValue)>;

/// The capacity of every pooled vector (512 bytes): a typed publish writes 3 entries of its
/// own (the rest are shared, see `Headers::with_shared`), plus, in a handler, the causation
/// id and up to 3 trace headers, which leaves room for one metadata entry. Headers that need
/// more get a vector of their own. Not more: every message in flight holds one, and a queue
/// of a thousand messages then spans 512 KiB of them instead of 1 MiB, which matters to the
/// caches of the threads that write and read them (measured on the memory broker: 15-40 ns
/// per message).
///
/// Vectors of another capacity are neither handed out nor kept.
pub(super) const CAPACITY: usize = 8;

/// Spare vectors a thread keeps, and the size of a batch passed through the depot.
const BATCH: usize = 32;

/// Full batches the depot keeps.
const DEPOT_BATCHES: usize = 8;

thread_local! {
    static SPARE: RefCell<Vec<Entries>> = const { RefCell::new(Vec::new()) };
}

/// Full batches of spare vectors, shared by all threads.
struct Depot(Mutex<Vec<Vec<Entries>>>);

static DEPOT: Depot = Depot(Mutex::new(Vec::new()));

/// An empty vector of capacity [`CAPACITY`], kept or new.
pub(super) fn take() -> Entries {
    DEPOT.take()
}

/// Keeps `entries` for a later [`take`] when it is of the pooled capacity; frees it otherwise.
pub(super) fn give(entries: Entries) {
    DEPOT.give(entries);
}

impl Depot {
    fn take(&self) -> Entries {
        SPARE
            .try_with(|spare| {
                let mut spare = spare.borrow_mut();
                if let Some(entries) = spare.pop() {
                    return Some(entries);
                }
                let batch = self.0.lock().ok()?.pop()?;
                *spare = batch;
                spare.pop()
            })
            .ok()
            .flatten()
            .unwrap_or_else(|| Vec::with_capacity(CAPACITY))
    }

    fn give(&self, mut entries: Entries) {
        if entries.capacity() != CAPACITY {
            return;
        }
        entries.clear();
        // during the thread's teardown the vector is freed
        let _ = SPARE.try_with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.len() < BATCH {
                if spare.capacity() == 0 {
                    spare.reserve_exact(BATCH);
                }
                spare.push(entries);
                return;
            }
            if let Ok(mut depot) = self.0.lock()
                && depot.len() < DEPOT_BATCHES
            {
                let mut batch = Vec::with_capacity(BATCH);
                batch.push(entries);
                depot.push(std::mem::replace(&mut *spare, batch));
            }
            // else: the depot is full, `entries` is freed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(entries: &Entries) -> usize {
        entries.as_ptr() as usize
    }

    fn spare_len() -> usize {
        SPARE.with_borrow(Vec::len)
    }

    /// Runs `test` on a thread of its own: a fresh spare list.
    fn on_new_thread<R: Send + 'static>(test: impl FnOnce() -> R + Send + 'static) -> R {
        std::thread::spawn(test).join().expect("test thread")
    }

    #[test]
    fn a_thread_gets_back_what_it_gave() {
        on_new_thread(|| {
            let depot = Depot(Mutex::new(Vec::new()));
            let entries = depot.take();
            assert_eq!(entries.capacity(), CAPACITY);
            let at = address(&entries);
            depot.give(entries);
            assert_eq!(spare_len(), 1);
            let again = depot.take();
            assert_eq!(address(&again), at);
            assert!(again.is_empty());
            assert_eq!(spare_len(), 0);
        });
    }

    #[test]
    fn other_capacities_are_not_kept() {
        on_new_thread(|| {
            let depot = Depot(Mutex::new(Vec::new()));
            depot.give(Vec::with_capacity(CAPACITY + 1));
            depot.give(Vec::with_capacity(CAPACITY - 1));
            assert_eq!(spare_len(), 0);
        });
    }

    #[test]
    fn given_vectors_are_emptied() {
        on_new_thread(|| {
            let depot = Depot(Mutex::new(Vec::new()));
            let mut entries = depot.take();
            let value = HeaderValue::from(bytes::Bytes::from(vec![7u8; 100]));
            entries.push((HeaderName::from_static("tenant"), value.clone()));
            depot.give(entries);
            // the value's shared bytes were released, not kept alive by the spare vector
            let HeaderValue(super::super::ValueRepr::Shared(bytes)) = value else {
                panic!("a 100-byte value is shared");
            };
            assert!(bytes.is_unique());
            assert!(depot.take().is_empty());
        });
    }

    #[test]
    fn full_batches_cross_threads_and_the_depot_is_bounded() {
        let depot = std::sync::Arc::new(Depot(Mutex::new(Vec::new())));
        let giver = depot.clone();
        let given: Vec<usize> = on_new_thread(move || {
            let all: Vec<Entries> = (0..BATCH * (DEPOT_BATCHES + 2))
                .map(|_| Vec::with_capacity(CAPACITY))
                .collect();
            let addresses = all.iter().map(address).collect();
            for entries in all {
                giver.give(entries);
            }
            // a full spare list of its own, the depot full, the rest freed
            assert_eq!(spare_len(), BATCH);
            addresses
        });
        assert_eq!(depot.0.lock().unwrap().len(), DEPOT_BATCHES);
        // another thread takes the depot's batches, as they were given (no vector freed and
        // allocated again in between: the depot holds them all)
        let taker = depot.clone();
        let taken: Vec<usize> = on_new_thread(move || {
            let taken: Vec<Entries> = (0..BATCH * DEPOT_BATCHES).map(|_| taker.take()).collect();
            taken.iter().map(address).collect()
        });
        assert!(depot.0.lock().unwrap().is_empty());
        let mut expected = given[..BATCH * DEPOT_BATCHES].to_vec();
        let mut taken = taken;
        expected.sort_unstable();
        taken.sort_unstable();
        assert_eq!(taken, expected);
    }
}
