//! A topic of the memory broker: its sequence and its queues, which subscribers join and leave.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::Notify;

use super::queue::{Pending, Queue};
use super::slots::{Padded, Slots};

#[derive(Default)]
pub(super) struct Topic {
    /// The topic's name, for the per-thread lookup cache ([`RecentTopics`]).
    pub(super) name: Box<str>,
    pub(super) sequence: AtomicU64,
    /// Copy-on-write list of queues: publishers take a cheap snapshot.
    pub(super) queues: RwLock<Arc<[Arc<Queue>]>>,
    /// Publishers waiting for room: while any waits, no publish takes the fast path, so that
    /// no message overtakes one published before it.
    pub(super) waiting: AtomicUsize,
}

impl Topic {
    pub(super) fn snapshot(&self) -> Arc<[Arc<Queue>]> {
        self.queues
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Joins `group` (or adds a broadcast queue) and returns the member's queue.
    pub(super) fn join(&self, group: Option<&str>, capacity: usize) -> Arc<Queue> {
        let mut queues = self.queues.write().unwrap_or_else(|e| e.into_inner());
        if let Some(group) = group
            && let Some(q) = queues
                .iter()
                .find(|q| q.group.as_deref() == Some(group) && !q.closed.load(Ordering::Acquire))
        {
            q.members.fetch_add(1, Ordering::AcqRel);
            return q.clone();
        }
        let queue = Arc::new(Queue {
            group: group.map(str::to_owned),
            members: AtomicUsize::new(1),
            closed: AtomicBool::new(false),
            pending: Padded(Pending {
                entries: Mutex::new(VecDeque::new()),
                ready: Notify::new(),
            }),
            slots: Slots::new(capacity),
            #[cfg(test)]
            batch_waits: AtomicUsize::new(0),
        });
        let mut next: Vec<_> = queues.iter().cloned().collect();
        next.push(queue.clone());
        *queues = next.into();
        queue
    }

    /// Leaves the queue; the last member removes it and its waiting messages.
    pub(super) fn leave(&self, queue: &Arc<Queue>) {
        let mut queues = self.queues.write().unwrap_or_else(|e| e.into_inner());
        if queue.members.fetch_sub(1, Ordering::AcqRel) == 1 {
            queue.closed.store(true, Ordering::Release);
            queue.slots.freed.notify_waiters();
            let dropped = {
                let mut entries = queue
                    .pending
                    .entries
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                std::mem::take(&mut *entries).len()
            };
            if dropped > 0 {
                tracing::warn!(
                    group = queue.group.as_deref().unwrap_or("(broadcast)"),
                    dropped,
                    "the last member left; the in-memory queue and its waiting messages are gone"
                );
            }
            let next: Vec<_> = queues
                .iter()
                .filter(|q| !Arc::ptr_eq(q, queue))
                .cloned()
                .collect();
            *queues = next.into();
        }
    }
}
