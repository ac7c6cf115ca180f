//! The slots of a queue: how many of its messages are unacknowledged, and the wait of a
//! publisher for room (bounded, lossless backpressure).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

use crate::counted::Counted;

/// Keeps `T` on cache lines of its own (128 bytes: adjacent-line prefetching pairs lines),
/// so that a counter one thread writes for every message does not slow another thread's
/// reads of a neighbouring field.
#[repr(align(128))]
pub(super) struct Padded<T>(pub(super) T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Counts unacknowledged messages of a queue: a slot is taken when a message is queued and
/// given back when it is acknowledged. A message given back for redelivery keeps its slot.
///
/// The count is the difference of two counters that only grow: `taken`, written by
/// publishers, and `settled`, written by consumers, each on a cache line of its own. A
/// publisher reads the consumers' counter only when the queue looks full by the value it last
/// saw, so under load the two threads do not pass a cache line back and forth per message.
pub(super) struct Slots {
    capacity: usize,
    /// Freed slots after which waiting publishers are woken.
    wake_batch: usize,
    /// Publishers waiting for room (in [`Slots::take`]).
    pub(super) waiting: AtomicUsize,
    /// Wakes publishers waiting for room.
    pub(super) freed: Notify,
    publishers: Padded<Taken>,
    settled: Padded<AtomicUsize>,
}

struct Taken {
    taken: AtomicUsize,
    /// `settled` as publishers last read it; never ahead of it.
    settled_seen: AtomicUsize,
}

impl Slots {
    pub(super) fn new(capacity: usize) -> Self {
        Slots {
            capacity,
            // an eighth of the capacity, between 1 and 64: waking a publisher for every
            // acknowledged message would cost a thread wake-up per message while the queue
            // is full
            wake_batch: (capacity / 8).clamp(1, 64),
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
            publishers: Padded(Taken {
                taken: AtomicUsize::new(0),
                settled_seen: AtomicUsize::new(0),
            }),
            settled: Padded(AtomicUsize::new(0)),
        }
    }

    pub(super) fn try_take(&self) -> bool {
        let publishers = &*self.publishers;
        let mut taken = publishers.taken.load(Ordering::Relaxed);
        loop {
            if taken.wrapping_sub(publishers.settled_seen.load(Ordering::Relaxed)) >= self.capacity
            {
                // full by the last value seen: read the consumers' counter
                let settled = self.settled.load(Ordering::SeqCst);
                publishers
                    .settled_seen
                    .fetch_max(settled, Ordering::Relaxed);
                taken = publishers.taken.load(Ordering::SeqCst);
                if taken.wrapping_sub(settled) >= self.capacity {
                    return false;
                }
            }
            match publishers.taken.compare_exchange_weak(
                taken,
                taken + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => taken = actual,
            }
        }
    }

    /// Waits for a slot; `false` if the queue closed meanwhile.
    pub(super) async fn take(&self, closed: &AtomicBool) -> bool {
        let _waiting = Counted::on(&self.waiting);
        loop {
            if closed.load(Ordering::Acquire) {
                return false;
            }
            if self.try_take() {
                return true;
            }
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if closed.load(Ordering::Acquire) {
                return false;
            }
            if self.try_take() {
                return true;
            }
            freed.await;
        }
    }

    /// Gives back a slot taken by [`Slots::try_take`] for a message that was not queued.
    pub(super) fn untake(&self) {
        self.publishers.taken.fetch_sub(1, Ordering::SeqCst);
        self.wake_waiting();
    }

    /// Gives a slot back: its message was acknowledged. Waiting publishers are woken once
    /// [`Slots::wake_batch`] slots are free, not for every slot.
    pub(super) fn give_back(&self) {
        self.settled.fetch_add(1, Ordering::SeqCst);
        self.wake_waiting();
    }

    fn wake_waiting(&self) {
        // `SeqCst` on both sides: either this sees the waiter, or the waiter's second
        // `try_take` (after it registered for the wake-up) sees the slot given back
        if self.waiting.load(Ordering::SeqCst) > 0
            && self.capacity.saturating_sub(self.in_use()) >= self.wake_batch
        {
            self.freed.notify_waiters();
        }
    }

    pub(super) fn in_use(&self) -> usize {
        let settled = self.settled.load(Ordering::SeqCst);
        self.publishers
            .taken
            .load(Ordering::SeqCst)
            .wrapping_sub(settled)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    /// Publishers and a consumer hammer one queue's slots from several threads: the count
    /// never passes the capacity, and no waiting publisher is left asleep with room free.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slots_hold_the_capacity_and_wake_every_waiter() {
        const CAPACITY: usize = 8;
        const PER_PUBLISHER: usize = 20_000;
        let slots = Arc::new(Slots::new(CAPACITY));
        let closed = Arc::new(AtomicBool::new(false));
        let outstanding = Arc::new(AtomicUsize::new(0));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let publishers: Vec<_> = (0..3)
            .map(|_| {
                let (slots, closed, outstanding, tx) = (
                    slots.clone(),
                    closed.clone(),
                    outstanding.clone(),
                    tx.clone(),
                );
                tokio::spawn(async move {
                    for _ in 0..PER_PUBLISHER {
                        assert!(slots.take(&closed).await, "the queue never closes here");
                        let now = outstanding.fetch_add(1, Ordering::SeqCst) + 1;
                        assert!(now <= CAPACITY, "{now} slots in use, capacity {CAPACITY}");
                        tx.send(()).expect("consumer alive");
                    }
                })
            })
            .collect();
        drop(tx);
        let consumer = {
            let (slots, outstanding) = (slots.clone(), outstanding.clone());
            tokio::spawn(async move {
                let mut settled = 0;
                while rx.recv().await.is_some() {
                    outstanding.fetch_sub(1, Ordering::SeqCst);
                    slots.give_back();
                    settled += 1;
                }
                settled
            })
        };
        let all = async {
            for publisher in publishers {
                publisher.await.expect("publisher");
            }
            consumer.await.expect("consumer")
        };
        let settled = tokio::time::timeout(Duration::from_secs(30), all)
            .await
            .expect("a waiting publisher was never woken");
        assert_eq!(settled, 3 * PER_PUBLISHER);
        assert_eq!(slots.in_use(), 0);
        assert_eq!(slots.waiting.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_slot_taken_and_given_back_unused_is_free_again() {
        let slots = Slots::new(2);
        assert!(slots.try_take());
        assert!(slots.try_take());
        assert!(!slots.try_take(), "full at capacity");
        slots.untake();
        assert_eq!(slots.in_use(), 1);
        assert!(slots.try_take());
        slots.give_back();
        slots.give_back();
        assert_eq!(slots.in_use(), 0);
        assert!(slots.try_take() && slots.try_take() && !slots.try_take());
    }
}
