//! How a busy subscriber paces its fetches when [`MemoryBrokerBuilder::batch_wait`] is set: when
//! it waits for a backlog, and when it skips waits that would find none coming.
//!
//! [`MemoryBrokerBuilder::batch_wait`]: super::MemoryBrokerBuilder::batch_wait

use std::time::{Duration, Instant};

use super::queue::BATCH;

/// The backlog a busy subscriber lets build up: a batch to take, and a batch that stays
/// queued meanwhile, so that the publishers never find the queue empty (see [`BatchWait`]).
pub(super) const BACKLOG: usize = 2 * BATCH;

/// The smallest queue whose subscriber waits for a backlog: room for two.
const MIN_CAPACITY: usize = 2 * BACKLOG;

/// Messages waiting at a fetch that show a busy subscriber: more than one, so that a client
/// that waits for each message's answer before it sends the next (one message waits at every
/// fetch) never waits for a backlog that cannot come.
const BUSY: usize = 2;

/// A wait of [`MemoryBrokerBuilder::batch_wait`] ends this long after the last message
/// arrived: the publishers paused, and what they sent is taken.
const QUIET: Duration = Duration::from_micros(5);

/// The most fetches a subscriber goes without waiting after waits that ended on a pause.
const MAX_SKIP: u32 = 64;

/// How a busy subscriber paces its fetches ([`MemoryBrokerBuilder::batch_wait`]): when it
/// waits for a backlog, and when it skips waits that would find none coming.
///
/// Why: when a subscriber is as fast as its publishers, the queue is nearly empty, and the
/// two threads meet on it for every message (its lock, the slot just written, the header
/// vector and payload buffer just used, a wake-up when the queue was empty). With a backlog
/// they meet once per batch, on lines neither touched recently. Whether that pays depends on
/// the machine, hence off by default (see [`MemoryBrokerBuilder::batch_wait`] and
/// `BENCHMARKS.md`).
#[derive(Debug)]
pub(super) struct Pacing {
    /// Zero (no waits) with a concurrency above 1 or in a queue of less than [`MIN_CAPACITY`].
    batch_wait: Duration,
    /// Whether the last fetch found [`BUSY`] messages or more waiting.
    busy: bool,
    /// Fetches to go without waiting. Publishers that wait for this subscriber's answers
    /// (clients that each keep a request in flight) send no backlog: a wait for one ends on a
    /// pause, and then the next 1, 2, 4, ... (at most [`MAX_SKIP`]) fetches skip theirs, until
    /// a wait ends with its backlog or deadline.
    skip: u32,
    /// How many fetches the next wait that ends on a pause makes skip theirs.
    next_skip: u32,
}

/// Why a [`BatchWait`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WaitEnd {
    /// The backlog is there, or publishers wait for room.
    Backlog,
    /// [`MemoryBrokerBuilder::batch_wait`] passed.
    Deadline,
    /// No message arrived for [`QUIET`].
    Pause,
}

impl Pacing {
    /// Pacing for a subscriber of a queue of `capacity` that handles up to `concurrency`
    /// messages at once.
    pub(super) fn new(batch_wait: Duration, capacity: usize, concurrency: usize) -> Self {
        Pacing {
            // - a subscriber with several messages in flight cannot tell them from waiting
            //   ones (the count of unsettled messages holds both);
            // - in a queue without room for two backlogs the publishers would fill it while
            //   the subscriber waits, and then wait for it to empty: the two threads would
            //   take turns instead of working side by side
            batch_wait: if concurrency == 1 && capacity >= MIN_CAPACITY {
                batch_wait
            } else {
                Duration::ZERO
            },
            busy: false,
            skip: 0,
            next_skip: 1,
        }
    }

    /// Before a fetch that finds `waiting` messages: a wait to start, or `None` to fetch at
    /// once. A wait starts only if this fetch and the last both find [`BUSY`] or more (the
    /// publishers keep the subscriber busy), the subscriber is its queue's only member
    /// (`alone`), waiting is on, the backlog is not there yet, and no skip is left.
    pub(super) fn before_fetch(
        &mut self,
        waiting: usize,
        alone: bool,
        now: Instant,
    ) -> Option<BatchWait> {
        let was_busy = std::mem::replace(&mut self.busy, waiting >= BUSY);
        if !was_busy || !alone || self.batch_wait.is_zero() || !(BUSY..BACKLOG).contains(&waiting) {
            return None;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return None;
        }
        Some(BatchWait {
            deadline: now + self.batch_wait,
            waiting,
            last_arrival: now,
        })
    }

    /// The subscriber found the queue empty: it is not kept busy.
    pub(super) fn went_idle(&mut self) {
        self.busy = false;
    }

    /// After a wait that ended for `end`.
    pub(super) fn after_wait(&mut self, end: WaitEnd) {
        if end == WaitEnd::Pause {
            self.skip = self.next_skip;
            self.next_skip = (self.next_skip * 2).min(MAX_SKIP);
        } else {
            self.next_skip = 1;
        }
    }
}

/// One wait of a busy subscriber for its backlog (see [`Pacing`]).
#[derive(Debug)]
pub(super) struct BatchWait {
    deadline: Instant,
    waiting: usize,
    last_arrival: Instant,
}

impl BatchWait {
    /// Whether, and why, the wait is over with `waiting` messages at `now`;
    /// `publishers_wait`: a publisher waits for room in the queue.
    pub(super) fn is_over(
        &mut self,
        waiting: usize,
        publishers_wait: bool,
        now: Instant,
    ) -> Option<WaitEnd> {
        if waiting != self.waiting {
            self.waiting = waiting;
            self.last_arrival = now;
        }
        if waiting >= BACKLOG || publishers_wait {
            Some(WaitEnd::Backlog)
        } else if now >= self.deadline {
            Some(WaitEnd::Deadline)
        } else if now >= self.last_arrival + QUIET {
            Some(WaitEnd::Pause)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// When a busy subscriber waits for a backlog, and when it fetches at once.
    #[test]
    fn a_batch_wait_starts_only_for_a_busy_subscriber() {
        let now = Instant::now();
        let wait = Duration::from_micros(50);
        // `busy_then(n)`: pacing whose last fetch found BUSY, now finding `n`
        let busy_then = |batch_wait, capacity, waiting, alone| {
            let mut pacing = Pacing::new(batch_wait, capacity, 1);
            assert!(
                pacing.before_fetch(BUSY, alone, now).is_none(),
                "first fetch"
            );
            pacing.before_fetch(waiting, alone, now)
        };
        // the last fetch found less than BUSY: a message to an idle subscriber, or a client
        // that waits for each answer, is taken at once
        let mut pacing = Pacing::new(wait, 1024, 1);
        assert!(pacing.before_fetch(BUSY - 1, true, now).is_none());
        assert!(pacing.before_fetch(5, true, now).is_none());
        // this fetch finds less than BUSY
        assert!(busy_then(wait, 1024, BUSY - 1, true).is_none());
        // the backlog is there
        assert!(busy_then(wait, 1024, BACKLOG, true).is_none());
        // a queue without room for two backlogs: no waits
        assert!(busy_then(wait, 16, 8, true).is_none());
        assert!(busy_then(wait, MIN_CAPACITY - 1, 8, true).is_none());
        assert!(busy_then(wait, MIN_CAPACITY, 8, true).is_some());
        // several messages in flight, which the count of unsettled ones includes
        let mut concurrent = Pacing::new(wait, 1024, 4);
        assert!(concurrent.before_fetch(BUSY, true, now).is_none());
        assert!(concurrent.before_fetch(BUSY, true, now).is_none());
        // waiting is off, or the subscriber shares its queue with others
        assert!(busy_then(Duration::ZERO, 1024, BUSY, true).is_none());
        assert!(busy_then(wait, 1024, BUSY, false).is_none());
        assert!(busy_then(wait, 1024, BUSY, true).is_some());
        assert!(busy_then(wait, 1024, BACKLOG - 1, true).is_some());
        // an empty queue ends the streak
        let mut pacing = Pacing::new(wait, 1024, 1);
        assert!(pacing.before_fetch(BUSY, true, now).is_none());
        pacing.went_idle();
        assert!(pacing.before_fetch(BUSY, true, now).is_none());
    }

    /// A wait ends with the backlog, when publishers wait for room, at the deadline, or once
    /// no message arrived for [`QUIET`]; arrivals keep it going until then.
    #[test]
    fn a_batch_wait_ends_with_the_backlog_the_deadline_or_a_pause() {
        let start = Instant::now();
        let us = |n| start + Duration::from_micros(n);
        let new = || {
            let mut pacing = Pacing::new(Duration::from_micros(50), 1024, 1);
            assert!(pacing.before_fetch(10, true, start).is_none());
            pacing.before_fetch(10, true, start).expect("busy")
        };

        let mut wait = new();
        assert_eq!(wait.is_over(10, false, us(1)), None);
        assert_eq!(wait.is_over(BACKLOG, false, us(2)), Some(WaitEnd::Backlog));

        let mut wait = new();
        assert_eq!(
            wait.is_over(10, true, us(1)),
            Some(WaitEnd::Backlog),
            "a publisher waits for room: the backlog cannot grow"
        );

        // a message every 3 µs (closer than QUIET) keeps the wait going to its deadline
        let mut wait = new();
        let mut at = 0;
        let mut waiting = 10;
        while at + 3 < 50 {
            at += 3;
            waiting += 1;
            assert_eq!(wait.is_over(waiting, false, us(at)), None, "at {at} µs");
        }
        assert_eq!(
            wait.is_over(waiting + 1, false, us(50)),
            Some(WaitEnd::Deadline)
        );

        // the publishers paused: the wait ends QUIET after the last arrival
        let quiet = QUIET.as_micros() as u64;
        let mut wait = new();
        assert_eq!(wait.is_over(11, false, us(2)), None);
        assert_eq!(wait.is_over(11, false, us(2 + quiet - 1)), None);
        assert_eq!(wait.is_over(11, false, us(2 + quiet)), Some(WaitEnd::Pause));
    }

    /// Waits that end on a pause (publishers that wait for this subscriber) make the next
    /// 1, 2, 4, ... fetches skip theirs; a wait that gets its backlog starts that over.
    #[test]
    fn waits_that_end_on_a_pause_are_skipped_more_and_more() {
        let now = Instant::now();
        let mut pacing = Pacing::new(Duration::from_micros(50), 1024, 1);
        assert!(pacing.before_fetch(10, true, now).is_none(), "first fetch");
        // (waits started, fetches skipped) over a run of fetches
        let run = |pacing: &mut Pacing, fetches: usize, end: WaitEnd| {
            let (mut waits, mut skipped) = (0, 0);
            for _ in 0..fetches {
                match pacing.before_fetch(10, true, now) {
                    Some(_) => {
                        waits += 1;
                        pacing.after_wait(end);
                    }
                    None => skipped += 1,
                }
            }
            (waits, skipped)
        };
        // waits at fetches 1, 3, 6, 11, 20, 37, 70 and 135, each followed by 1, 2, 4, 8, 16,
        // 32, 64 and 64 skips: 8 waits in 150 fetches, 49 skips left
        assert_eq!(run(&mut pacing, 150, WaitEnd::Pause), (8, 142));
        // the skips left run out, then a wait that gets its backlog starts over
        assert_eq!(run(&mut pacing, 50, WaitEnd::Backlog), (1, 49));
        assert_eq!(run(&mut pacing, 3, WaitEnd::Backlog), (3, 0));
        assert_eq!(run(&mut pacing, 4, WaitEnd::Pause), (2, 2));
    }
}
