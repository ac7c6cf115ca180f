//! Acknowledgements off the delivery path: one settle worker per channel.
//!
//! The delivery loop records each outcome in the channel's settle state and goes on to the
//! next message; the worker sends them:
//!
//! - a run of acknowledged tags with nothing unsettled below it becomes one `basic.ack` with
//!   `multiple = true` (delivery tags count up from 1 on each channel, so "everything up to
//!   tag n is settled" is known exactly), sent once the run covers half the prefetch, or
//!   1 ms after the run began, or when the channel closes: one acknowledgement per half
//!   prefetch of a busy channel instead of one per message or two, which is RabbitMQ's own
//!   work saved (every `basic.ack` is a frame its channel process reads), while the broker
//!   still has the other half of the prefetch to deliver into;
//! - an acknowledgement above an unsettled tag (a slower handler at concurrency > 1) is sent on
//!   its own at once, so it never waits for that handler;
//! - a message given back (`basic.nack`, requeue) is sent on its own, before any
//!   acknowledgement that covers it: a `multiple` acknowledgement must not cover it first.
//!
//! An outcome that only extends the run wakes the worker only when the run begins (to time
//! its 1 ms) and when it reaches half the prefetch: a busy channel wakes its worker about
//! twice per half prefetch, not once per message. (Woken for every message, the worker ran
//! beside the loop on the runtime's other worker thread, and a consuming process used 7–11 %
//! more CPU: `BENCHMARKS.md`, RabbitMQ, eleventh machine.)
//!
//! What waits to be sent is bounded by the prefetch: RabbitMQ delivers no more than that many
//! unacknowledged messages on the channel, and each is settled once. Closing the subscription
//! waits for the worker to send what is recorded before the channel closes. An
//! acknowledgement that fails (the channel is gone) is logged; the broker redelivers.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lapin::Acker;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::connection::{CLOSE_TIMEOUT, Shared};

/// What to do with one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// `basic.ack`: the message is done.
    Ack,
    /// `basic.nack` with requeue: the message goes back to the queue.
    Requeue,
}

/// One outcome, recorded for the channel's worker.
#[derive(Debug)]
pub(crate) struct Settle {
    pub(crate) tag: u64,
    pub(crate) acker: Acker,
    pub(crate) verdict: Verdict,
}

/// The settle worker is gone: it ended early (it panicked); the broker redelivers what it
/// did not send when the channel closes.
#[derive(Debug, thiserror::Error)]
#[error("the channel's settle worker is gone")]
pub(crate) struct WorkerGone;

/// Where the deliveries of one channel record their outcomes; cloned into every acker of the
/// channel. The worker ends once every handle is gone.
#[derive(Debug, Clone)]
pub(crate) struct SettleQueue {
    state: Arc<Mutex<Outcomes>>,
    /// Rung when the worker has something to do. It holds one ring: a full bell is a wake-up
    /// already on its way.
    bell: mpsc::Sender<()>,
}

impl SettleQueue {
    /// Records `settle`, waking the worker if it has something to do now.
    pub(crate) fn record(&self, settle: Settle) -> Result<(), WorkerGone> {
        let wake = lock(&self.state).record(settle, Instant::now);
        if wake {
            match self.bell.try_send(()) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(())) => {}
                Err(mpsc::error::TrySendError::Closed(())) => return Err(WorkerGone),
            }
        }
        Ok(())
    }
}

/// A channel's settle worker.
#[derive(Debug)]
pub(crate) struct Settler {
    queue: SettleQueue,
    worker: JoinHandle<()>,
}

impl Settler {
    /// Starts the worker of a channel whose consumer has `prefetch` (at least 1) deliveries
    /// unacknowledged at most.
    pub(crate) fn start(shared: Arc<Shared>, topic: Arc<str>, prefetch: u16) -> Settler {
        let (bell, rings) = mpsc::channel(1);
        let state = Arc::new(Mutex::new(Outcomes::new(prefetch)));
        let worker = tokio::spawn(run(rings, state.clone(), Reporter { shared, topic }));
        Settler {
            queue: SettleQueue { state, bell },
            worker,
        }
    }

    /// A queue handle for one delivery's acker.
    pub(crate) fn queue(&self) -> SettleQueue {
        self.queue.clone()
    }

    /// Waits (at most [`CLOSE_TIMEOUT`]) until everything recorded on the channel was sent.
    /// The worker ends once the last acker is gone; at close the delivery loop has settled or
    /// dropped every one.
    pub(crate) async fn finish(self) {
        let Settler { queue, worker } = self;
        drop(queue);
        if tokio::time::timeout(CLOSE_TIMEOUT, worker).await.is_err() {
            tracing::warn!(
                timeout = ?CLOSE_TIMEOUT,
                "acknowledgements still queued at close; the broker redelivers those messages"
            );
        }
    }
}

/// Which tags of a channel are settled: all up to `through`, and those in `above`.
#[derive(Debug, Default)]
struct Ledger {
    through: u64,
    above: BTreeSet<u64>,
}

impl Ledger {
    /// Marks `tag` settled.
    fn settle(&mut self, tag: u64) {
        if tag == self.through + 1 {
            // the common case, one handler at a time: the run grows without touching the set
            self.through = tag;
        } else if tag > self.through {
            self.above.insert(tag);
        }
    }

    /// Moves `through` up past every settled tag that now joins it.
    fn advance(&mut self) {
        while self.above.first() == Some(&(self.through + 1)) {
            self.above.pop_first();
            self.through += 1;
        }
    }
}

/// The outcomes of one channel not sent yet, and what was settled.
#[derive(Debug)]
struct Outcomes {
    ledger: Ledger,
    /// Outcomes sent on their own, in the order they came: requeues, and acknowledgements
    /// above an unsettled tag.
    alone: Vec<Settle>,
    /// The acker of the highest tag of the settled run not acknowledged yet, and that tag.
    pending: Option<(u64, Acker)>,
    /// When the run not acknowledged yet began: it goes out [`FLUSH_AFTER`] later at the
    /// latest, however often other outcomes come.
    pending_since: Option<Instant>,
    /// Where the last acknowledgement of a run reached.
    acked_through: u64,
    /// A run is acknowledged once it covers this many tags (half the prefetch), so that the
    /// broker always has room to deliver while the run gathers.
    enough: u64,
}

/// What the worker sends next: the requeues in `alone` in order, its acknowledgements, then
/// `multiple` (a tag and its acker).
#[derive(Debug)]
struct Due {
    alone: Vec<Settle>,
    multiple: Option<(u64, Acker)>,
}

impl Outcomes {
    fn new(prefetch: u16) -> Outcomes {
        Outcomes {
            ledger: Ledger::default(),
            alone: Vec::new(),
            pending: None,
            pending_since: None,
            acked_through: 0,
            enough: u64::from(prefetch / 2).max(1),
        }
    }

    /// Records one outcome (`now` is read only when it begins a run); true when the worker
    /// has something to do now.
    fn record(&mut self, settle: Settle, now: impl FnOnce() -> Instant) -> bool {
        let tag = settle.tag;
        self.ledger.settle(tag);
        self.ledger.advance();
        if settle.verdict == Verdict::Requeue || tag > self.ledger.through {
            self.alone.push(settle);
            return true;
        }
        // the run's acknowledgement names its highest tag: a lower one (settled late, below
        // tags acknowledged on their own) adds nothing to it
        if self.pending.as_ref().is_none_or(|(top, _)| *top < tag) {
            self.pending = Some((tag, settle.acker));
        }
        let began = self.pending_since.is_none();
        if began {
            self.pending_since = Some(now());
        }
        began || self.ledger.through - self.acked_through >= self.enough
    }

    /// What is due at `now`; with `closing`, everything recorded.
    fn take_due(&mut self, now: Instant, closing: bool) -> Due {
        let alone = std::mem::take(&mut self.alone);
        let run_due = closing
            || self.ledger.through - self.acked_through >= self.enough
            || self
                .pending_since
                .is_some_and(|since| now >= since + FLUSH_AFTER);
        let multiple = if run_due {
            self.pending_since = None;
            self.acked_through = self.ledger.through;
            self.pending.take()
        } else {
            None
        };
        Due { alone, multiple }
    }
}

fn lock(state: &Mutex<Outcomes>) -> MutexGuard<'_, Outcomes> {
    // no code that can panic runs under the lock; a poisoned state is still the truth
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How long an acknowledgement of a settled run waits, at most, for more of the run.
const FLUSH_AFTER: Duration = Duration::from_millis(1);

async fn run(mut rings: mpsc::Receiver<()>, state: Arc<Mutex<Outcomes>>, reporter: Reporter) {
    loop {
        let flush_at = lock(&state).pending_since.map(|since| since + FLUSH_AFTER);
        let closing = match flush_at {
            Some(at) => matches!(tokio::time::timeout_at(at, rings.recv()).await, Ok(None)),
            None => rings.recv().await.is_none(),
        };
        let due = lock(&state).take_due(Instant::now(), closing);
        let (requeues, singles): (Vec<&Settle>, Vec<&Settle>) = due
            .alone
            .iter()
            .partition(|settle| settle.verdict == Verdict::Requeue);
        for settle in requeues {
            let requeue = BasicNackOptions {
                multiple: false,
                requeue: true,
            };
            reporter.sent("nack", settle.acker.nack(requeue)).await;
        }
        // acknowledgements of different tags: in flight together
        let singles = singles
            .into_iter()
            .map(|settle| reporter.sent("ack", settle.acker.ack(BasicAckOptions::default())));
        futures_util::future::join_all(singles).await;
        if let Some((_, acker)) = due.multiple {
            reporter
                .sent("ack", acker.ack(BasicAckOptions { multiple: true }))
                .await;
        }
        if closing {
            break;
        }
    }
}

/// Where a worker reports what went wrong.
struct Reporter {
    shared: Arc<Shared>,
    topic: Arc<str>,
}

impl Reporter {
    /// Awaits one frame (bounded by [`CLOSE_TIMEOUT`]) and logs what went wrong.
    async fn sent(&self, operation: &'static str, sent: impl Future<Output = lapin::Result<bool>>) {
        let topic = &*self.topic;
        match tokio::time::timeout(CLOSE_TIMEOUT, sent).await {
            Ok(Ok(true)) => {}
            // a poisoned acker belongs to a closed channel: its tag must not be sent anywhere
            Ok(Ok(false)) => tracing::debug!(
                topic,
                operation,
                "the channel that delivered these messages is gone; the broker redelivers them"
            ),
            Ok(Err(error)) => {
                // the connection may be failing: let its supervisor look
                self.shared.kick();
                tracing::warn!(
                    topic,
                    operation,
                    error = %event_core::error_chain(&error),
                    "acknowledgement failed; the broker redelivers the messages"
                );
            }
            Err(_) => tracing::warn!(
                topic,
                operation,
                timeout = ?CLOSE_TIMEOUT,
                "acknowledgement timed out; the broker redelivers the messages if it did not arrive"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Verdict::{Ack, Requeue};
    use lapin::types::ShortString;

    fn placeholder_acker() -> Acker {
        lapin::message::Delivery::mock(
            0,
            ShortString::default(),
            ShortString::default(),
            false,
            Vec::new(),
        )
        .acker
    }

    /// A channel of prefetch 64 (runs of 32) and the moment its outcomes come.
    fn channel() -> (Outcomes, Instant) {
        (Outcomes::new(64), Instant::now())
    }

    /// Records each `(tag, verdict)` at `now`; whether each woke the worker.
    fn record(outcomes: &mut Outcomes, now: Instant, settles: &[(u64, Verdict)]) -> Vec<bool> {
        settles
            .iter()
            .map(|&(tag, verdict)| {
                let acker = placeholder_acker();
                outcomes.record(
                    Settle {
                        tag,
                        acker,
                        verdict,
                    },
                    || now,
                )
            })
            .collect()
    }

    /// What the worker sends at `now`, in order: `nack n`, `ack n`, `ack ..=n`.
    fn sent(outcomes: &mut Outcomes, now: Instant, closing: bool) -> Vec<String> {
        let due = outcomes.take_due(now, closing);
        let alone = due.alone.iter().map(|s| match s.verdict {
            Requeue => format!("nack {}", s.tag),
            Ack => format!("ack {}", s.tag),
        });
        let multiple = due.multiple.map(|(tag, _)| format!("ack ..={tag}"));
        alone.chain(multiple).collect()
    }

    #[test]
    fn a_contiguous_run_is_one_multiple_ack_of_its_highest_tag_after_the_flush_delay() {
        let (mut outcomes, t) = channel();
        record(&mut outcomes, t, &[(1, Ack), (2, Ack), (3, Ack)]);
        assert!(sent(&mut outcomes, t, false).is_empty(), "the run gathers");
        assert_eq!(sent(&mut outcomes, t + FLUSH_AFTER, false), ["ack ..=3"]);
        assert!(sent(&mut outcomes, t + FLUSH_AFTER * 2, false).is_empty());
    }

    #[test]
    fn a_run_wakes_the_worker_when_it_begins_and_when_it_reaches_half_the_prefetch() {
        let (mut outcomes, t) = channel();
        let tags: Vec<(u64, Verdict)> = (1..=40).map(|tag| (tag, Ack)).collect();
        let woke = record(&mut outcomes, t, &tags);
        let wakes: Vec<u64> = (1..=40).filter(|&tag| woke[tag as usize - 1]).collect();
        // when it begins, at half the prefetch, then every outcome until the worker sends it
        let expected: Vec<u64> = [1].into_iter().chain(32..=40).collect();
        assert_eq!(wakes, expected);
        assert_eq!(sent(&mut outcomes, t, false), ["ack ..=40"]);
        // the next run begins
        assert_eq!(
            record(&mut outcomes, t, &[(41, Ack), (42, Ack)]),
            [true, false]
        );
    }

    #[test]
    fn an_ack_above_an_unsettled_tag_goes_alone_and_later_joins_the_run() {
        let (mut outcomes, t) = channel();
        // tag 2's handler is still running
        assert_eq!(
            record(&mut outcomes, t, &[(1, Ack), (3, Ack), (4, Ack)]),
            [true, true, true]
        );
        assert_eq!(
            sent(&mut outcomes, t + FLUSH_AFTER, false),
            ["ack 3", "ack 4", "ack ..=1"]
        );
        // 2 settles: the run reaches 4, and only 2 itself is still unacknowledged below it
        record(&mut outcomes, t, &[(2, Ack)]);
        assert_eq!(outcomes.ledger.through, 4);
        assert!(outcomes.ledger.above.is_empty());
        assert_eq!(sent(&mut outcomes, t + FLUSH_AFTER, false), ["ack ..=2"]);
        record(&mut outcomes, t, &[(5, Ack)]);
        assert_eq!(sent(&mut outcomes, t, true), ["ack ..=5"]);
    }

    #[test]
    fn a_requeued_tag_is_nacked_alone_before_any_ack_that_covers_it() {
        let (mut outcomes, t) = channel();
        record(&mut outcomes, t, &[(1, Ack), (2, Requeue), (3, Ack)]);
        assert_eq!(
            sent(&mut outcomes, t + FLUSH_AFTER, false),
            ["nack 2", "ack ..=3"]
        );
        // a requeue above a gap leaves the acks above it single as well
        record(&mut outcomes, t, &[(5, Requeue), (6, Ack)]);
        assert_eq!(sent(&mut outcomes, t, false), ["nack 5", "ack 6"]);
        record(&mut outcomes, t, &[(4, Ack)]);
        assert_eq!(outcomes.ledger.through, 6);
        assert_eq!(sent(&mut outcomes, t, true), ["ack ..=4"]);
    }

    #[test]
    fn a_tag_never_settled_keeps_later_acks_single() {
        let (mut outcomes, t) = channel();
        // tag 1 was abandoned and never reached the worker
        for tag in 2..6 {
            assert_eq!(record(&mut outcomes, t, &[(tag, Ack)]), [true]);
            assert_eq!(sent(&mut outcomes, t, true), [format!("ack {tag}")]);
        }
        assert_eq!(outcomes.ledger.through, 0);
    }
}
