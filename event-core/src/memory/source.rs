//! A subscriber's end of a queue: the [`DeliverySource`] the delivery loop fetches from, and
//! the acknowledgement that frees a slot or gives a message back to the front of its queue.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use super::pacing::Pacing;
use super::queue::{Entry, Queue};
use super::topic::Topic;
use crate::backend::{Acknowledge, DeliverySource, Incoming};
use crate::broker::{BrokerError, Delivery, Position};

/// How often an idle consumer yields before it parks.
const SPIN_YIELDS: usize = 16;

pub(super) struct MemorySource {
    pub(super) topic_name: Arc<str>,
    pub(super) topic: Arc<Topic>,
    pub(super) queue: Arc<Queue>,
    /// Messages taken from the queue, not yet handed to the delivery loop.
    pub(super) batch: VecDeque<Entry>,
    /// When to wait for a backlog.
    pub(super) pacing: Pacing,
    /// When `batch` was taken from the queue: its messages' receive time.
    pub(super) taken_at: SystemTime,
    /// Still counted among its queue's members (until it leaves, once).
    pub(super) member: bool,
}

impl Drop for MemorySource {
    fn drop(&mut self) {
        // also when the delivery loop ended without closing its source (its task panicked
        // or was aborted)
        self.leave();
    }
}

pub(super) struct MemoryAcker {
    queue: Arc<Queue>,
    sequence: u64,
}

impl MemoryAcker {
    fn give_back(self, delivery: Delivery) {
        let attempt = delivery.attempt() + 1;
        self.queue.push_front(Entry {
            message: delivery.into_message(),
            sequence: self.sequence,
            attempt,
        });
    }
}

impl Acknowledge for MemoryAcker {
    async fn ack(self) -> Result<(), BrokerError> {
        self.queue.slots.give_back();
        Ok(())
    }

    async fn nack(self, delivery: Delivery) -> Result<(), BrokerError> {
        self.give_back(delivery);
        Ok(())
    }

    fn abandon(self, delivery: Delivery) {
        self.give_back(delivery);
    }
}

impl MemorySource {
    /// Gives back what was taken and not handed out, and leaves the queue (once): the last
    /// member to leave closes it, so that publishers do not wait for room no one frees.
    fn leave(&mut self) {
        // messages taken but never handed out stay available to the group
        self.queue.put_back(&mut self.batch);
        if std::mem::take(&mut self.member) {
            self.topic.leave(&self.queue);
        }
    }

    /// Before a fetch from the queue: lets a backlog build up while the publishers keep this
    /// subscriber busy (see [`MemoryBrokerBuilder::batch_wait`] and [`Pacing`]).
    async fn wait_for_batch(&mut self) {
        // with one message handled at a time and none left in `batch`, every unsettled
        // message waits in the queue
        let waiting = self.queue.slots.in_use();
        let alone = self.queue.has_one_member();
        let Some(mut wait) = self.pacing.before_fetch(waiting, alone, Instant::now()) else {
            return;
        };
        #[cfg(test)]
        self.queue.batch_waits.fetch_add(1, Ordering::Relaxed);
        loop {
            // yields rather than spins: other tasks of this thread run meanwhile
            tokio::task::yield_now().await;
            if self.queue.closed.load(Ordering::Acquire) {
                return;
            }
            let publishers_wait = self.queue.slots.waiting.load(Ordering::SeqCst) > 0;
            let now = Instant::now();
            if let Some(end) = wait.is_over(self.queue.slots.in_use(), publishers_wait, now) {
                self.pacing.after_wait(end);
                return;
            }
        }
    }

    /// The next waiting message, if any.
    fn take_next(&mut self) -> Option<Incoming<MemoryAcker>> {
        if self.batch.is_empty() {
            let alone = self.queue.has_one_member();
            self.queue.take_into(&mut self.batch, alone);
            if self.batch.is_empty() {
                return None;
            }
            // the messages of a batch are received together: one clock reading
            self.taken_at = SystemTime::now();
        }
        self.next_at_hand()
    }

    fn incoming(&self, entry: Entry) -> Incoming<MemoryAcker> {
        let mut delivery = Delivery::received(
            self.topic_name.clone(),
            entry.message,
            Position::sequence(entry.sequence),
            self.taken_at,
        );
        // set in place: the builder would move the delivery twice more
        delivery.set_attempt(entry.attempt);
        Incoming {
            delivery,
            acker: MemoryAcker {
                queue: self.queue.clone(),
                sequence: entry.sequence,
            },
        }
    }
}

impl DeliverySource for MemorySource {
    type Acker = MemoryAcker;

    fn next_at_hand(&mut self) -> Option<Incoming<MemoryAcker>> {
        let entry = self.batch.pop_front()?;
        Some(self.incoming(entry))
    }

    async fn next(&mut self) -> Option<Incoming<MemoryAcker>> {
        if self.batch.is_empty() {
            self.wait_for_batch().await;
        }
        loop {
            if let Some(incoming) = self.take_next() {
                return Some(incoming);
            }
            self.pacing.went_idle();
            if self.queue.closed.load(Ordering::Acquire) {
                return None;
            }
            // A publisher is often about to push: yield a few times before parking, which
            // saves a thread wake-up per message when the consumer is faster than the producer.
            for _ in 0..SPIN_YIELDS {
                tokio::task::yield_now().await;
                if let Some(incoming) = self.take_next() {
                    return Some(incoming);
                }
            }
            let queue = self.queue.clone();
            let ready = queue.pending.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            if let Some(incoming) = self.take_next() {
                return Some(incoming);
            }
            if self.queue.closed.load(Ordering::Acquire) {
                return None;
            }
            ready.await;
        }
    }

    async fn close(mut self) {
        self.leave();
    }
}
