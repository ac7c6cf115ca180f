//! A counter that counts something for as long as a guard lives.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Adds one to a counter when made and takes it away when dropped, so the count stays right
/// when the code holding it returns early or its future is cancelled.
pub(crate) struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    /// Counts one in `counter` until the guard is dropped.
    pub(crate) fn on(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Counted(counter)
    }

    /// The counter's current value.
    pub(crate) fn count(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
