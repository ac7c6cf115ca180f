//! A global allocator for benchmarks: the system allocator, counting allocations per thread.
//!
//! ```ignore
//! #[global_allocator]
//! static GLOBAL: event_bench_alloc::Counting = event_bench_alloc::Counting;
//!
//! let before = event_bench_alloc::allocations();
//! // ... the measured code ...
//! let made = event_bench_alloc::allocations() - before;
//! ```
//!
//! Beside it, [`thread_cpu_times`]: the CPU time each thread of the process has used, for
//! benchmarks that report CPU per message (steadier than rates on a machine whose cores the
//! broker shares).
//!
//! Each thread counts in a cache line of its own. A counter shared by all threads (as in
//! `stats_alloc`) is written by the producer and the consumer thread of a cross-thread
//! benchmark on every allocation, and that cache-line traffic, not the allocations, then
//! dominates what the benchmark measures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

const SLOTS: usize = 64;

#[repr(align(128))]
struct Slot(AtomicU64);

static COUNTS: [Slot; SLOTS] = [const { Slot(AtomicU64::new(0)) }; SLOTS];
static NEXT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static MINE: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn count() {
    // `try_with`: a thread that is being torn down still allocates, uncounted
    let _ = MINE.try_with(|mine| {
        if mine.get() == usize::MAX {
            mine.set(NEXT.fetch_add(1, Ordering::Relaxed) % SLOTS);
        }
        // a slot is written by its thread alone (by two after 64 threads, still correct)
        COUNTS[mine.get()].0.fetch_add(1, Ordering::Relaxed);
    });
}

/// Allocations and reallocations made so far by every thread.
pub fn allocations() -> u64 {
    COUNTS.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
}

/// The system allocator, counting allocations and reallocations.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counting;

// SAFETY: every call is forwarded unchanged to the system allocator, whose contract is the
// caller's; counting touches no memory the allocator hands out.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller upholds `GlobalAlloc::alloc_zeroed`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// The CPU time each live thread of this process has used, with its name: from
/// `/proc/self/task/<tid>/schedstat` (nanoseconds on a CPU) and `comm`. `None` where that is
/// not readable (not Linux). A thread that ended is not in the list, nor its time.
pub fn thread_cpu_times() -> Option<Vec<(String, std::time::Duration)>> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let Ok(task) = task else { continue };
        // a thread that ended meanwhile has no files any more
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        let ns = stat.split_whitespace().next()?.parse::<u64>().ok()?;
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        threads.push((
            name.trim_end().to_owned(),
            std::time::Duration::from_nanos(ns),
        ));
    }
    Some(threads)
}

#[cfg(test)]
mod tests {
    #[global_allocator]
    static GLOBAL: super::Counting = super::Counting;

    #[test]
    fn counts_allocations_of_every_thread() {
        let before = super::allocations();
        let boxes: Vec<Box<u64>> = std::thread::spawn(|| (0..100).map(Box::new).collect())
            .join()
            .expect("thread");
        let after = super::allocations();
        // 100 boxes and the vector's growth, plus whatever the thread machinery allocated
        assert!(after - before >= 101, "{} allocations", after - before);
        drop(boxes);
    }
}
