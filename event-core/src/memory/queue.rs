//! A queue of the memory broker: one per queue group and per broadcast subscriber, holding the
//! messages that wait for a member.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

use super::slots::{Padded, Slots};
use crate::broker::Message;

pub(super) struct Queue {
    pub(super) group: Option<String>,
    pub(super) members: AtomicUsize,
    pub(super) closed: AtomicBool,
    /// Written by publishers and read by consumers; on a cache line of its own.
    pub(super) pending: Padded<Pending>,
    pub(super) slots: Slots,
    /// Waits for a backlog its members started ([`Pacing`]), for tests.
    #[cfg(test)]
    pub(super) batch_waits: AtomicUsize,
}

/// The messages waiting in a queue and the consumers' wake-up.
pub(super) struct Pending {
    pub(super) entries: Mutex<VecDeque<Entry>>,
    /// Wakes consumers when an entry arrives in an empty queue.
    pub(super) ready: Notify,
}

pub(super) struct Entry {
    pub(super) message: Message,
    pub(super) sequence: u64,
    pub(super) attempt: u32,
}

impl Queue {
    /// Whether one subscriber alone takes this queue's messages.
    pub(super) fn has_one_member(&self) -> bool {
        self.members.load(Ordering::Acquire) == 1
    }

    pub(super) fn push(&self, entry: Entry) {
        let mut entries = self
            .pending
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let was_empty = entries.is_empty();
        entries.push_back(entry);
        drop(entries);
        // a consumer only waits after it found the queue empty under the lock, so only the
        // first entry of an empty queue needs a wake-up; members of a group pass it on
        if was_empty {
            self.pending.ready.notify_one();
        }
    }

    pub(super) fn push_front(&self, entry: Entry) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        self.pending
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_front(entry);
        self.pending.ready.notify_one();
    }

    /// Moves waiting entries into `batch`: up to [`BATCH`] when `alone` (the queue's only
    /// member), else one, passing the wake-up on to another member when more wait.
    pub(super) fn take_into(&self, batch: &mut VecDeque<Entry>, alone: bool) {
        let mut entries = self
            .pending
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if alone {
            let n = entries.len().min(BATCH);
            batch.extend(entries.drain(..n));
        } else if let Some(entry) = entries.pop_front() {
            batch.push_back(entry);
            if !entries.is_empty() {
                drop(entries);
                self.pending.ready.notify_one();
            }
        }
    }

    /// Puts `batch` back at the front of the queue, in publish order with entries given back
    /// meanwhile.
    pub(super) fn put_back(&self, batch: &mut VecDeque<Entry>) {
        if batch.is_empty() {
            return;
        }
        let mut entries = self
            .pending
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        while let Some(entry) = batch.pop_back() {
            entries.push_front(entry);
        }
        // a message given back (nack, abandon) went to the front while later ones sat in the
        // batch: restore publish order
        entries
            .make_contiguous()
            .sort_by_key(|entry| entry.sequence);
        drop(entries);
        self.pending.ready.notify_one();
    }
}

/// How many waiting messages the only member of a queue takes per lock of the queue.
pub(super) const BATCH: usize = 64;
