//! Acknowledgements off the delivery path: one settle worker per channel.
//!
//! The delivery loop hands each outcome to the channel's queue and goes on to the next
//! message; the worker sends them. While it waits for a batch of frames to leave, the next
//! outcomes gather in the queue, and it sends those as the next batch:
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
//! - a message given back (`basic.nack`, requeue) is sent on its own, before the batch's
//!   acknowledgements: a `multiple` acknowledgement must not cover it.
//!
//! The queue holds at most the subscription's prefetch: RabbitMQ delivers no more than that
//! many unacknowledged messages on the channel, and each is settled once. Closing the
//! subscription waits for the worker to send what is queued before the channel closes. An
//! acknowledgement that fails (the channel is gone) is logged; the broker redelivers.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use lapin::Acker;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::connection::{CLOSE_TIMEOUT, Shared};

/// What to do with one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// `basic.ack`: the message is done.
    Ack,
    /// `basic.nack` with requeue: the message goes back to the queue.
    Requeue,
}

/// One outcome, queued for the channel's worker.
#[derive(Debug)]
pub(crate) struct Settle {
    pub(crate) tag: u64,
    pub(crate) acker: Acker,
    pub(crate) verdict: Verdict,
}

/// The sending end of a channel's settle queue; cloned into every acker of the channel.
pub(crate) type SettleQueue = mpsc::Sender<Settle>;

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
        let (queue, outcomes) = mpsc::channel(usize::from(prefetch.max(1)));
        let worker = tokio::spawn(run(outcomes, Reporter { shared, topic }));
        Settler { queue, worker }
    }

    /// A queue handle for one delivery's acker.
    pub(crate) fn queue(&self) -> SettleQueue {
        self.queue.clone()
    }

    /// Waits (at most [`CLOSE_TIMEOUT`]) until everything queued on the channel was sent.
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
        if tag > self.through {
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

/// How one batch of outcomes goes on the wire.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    /// Tags given back, each with its own `basic.nack`, first.
    requeue: Vec<usize>,
    /// The batch entry whose tag closes a settled run: one `basic.ack` with `multiple`.
    multiple: Option<usize>,
    /// Acknowledgements above an unsettled tag, each on its own.
    single: Vec<usize>,
}

/// Plans `batch` against what was settled before it, and records it in `ledger`.
fn plan(ledger: &mut Ledger, batch: &[Settle]) -> Plan {
    let mut plan = Plan::default();
    for settle in batch {
        ledger.settle(settle.tag);
    }
    ledger.advance();
    for (index, settle) in batch.iter().enumerate() {
        match settle.verdict {
            Verdict::Requeue => plan.requeue.push(index),
            Verdict::Ack if settle.tag > ledger.through => plan.single.push(index),
            Verdict::Ack => {
                let closes_more = plan
                    .multiple
                    .is_none_or(|best| batch[best].tag < settle.tag);
                if closes_more {
                    plan.multiple = Some(index);
                }
            }
        }
    }
    plan
}

/// How long an acknowledgement of a settled run waits, at most, for more of the run.
const FLUSH_AFTER: Duration = Duration::from_millis(1);

async fn run(mut outcomes: mpsc::Receiver<Settle>, reporter: Reporter) {
    let limit = outcomes.max_capacity();
    // a run is acknowledged once it covers half the prefetch, so that the broker always has
    // room to deliver while the worker gathers it
    let enough = u64::try_from(limit / 2).unwrap_or(u64::MAX).max(1);
    let mut batch = Vec::with_capacity(limit);
    let mut ledger = Ledger::default();
    // the highest tag of the settled run not acknowledged yet, and where the last
    // acknowledgement of a run reached
    let mut pending: Option<Acker> = None;
    let mut acked_through = 0;
    // when the run not acknowledged yet began: it goes out FLUSH_AFTER later at the latest,
    // however often other outcomes (acknowledgements above a slow handler's tag) come
    let mut pending_since = tokio::time::Instant::now();
    loop {
        let received = if pending.is_some() {
            let flush_at = pending_since + FLUSH_AFTER;
            match tokio::time::timeout_at(flush_at, outcomes.recv_many(&mut batch, limit)).await {
                Ok(received) => received,
                Err(_quiet) => {
                    if let Some(acker) = pending.take() {
                        acked_through = ledger.through;
                        reporter
                            .sent("ack", acker.ack(BasicAckOptions { multiple: true }))
                            .await;
                    }
                    continue;
                }
            }
        } else {
            outcomes.recv_many(&mut batch, limit).await
        };
        if received == 0 {
            break;
        }
        let plan = plan(&mut ledger, &batch);
        for &index in &plan.requeue {
            let requeue = BasicNackOptions {
                multiple: false,
                requeue: true,
            };
            reporter
                .sent("nack", batch[index].acker.nack(requeue))
                .await;
        }
        let singles = plan
            .single
            .iter()
            .map(|&index| reporter.sent("ack", batch[index].acker.ack(BasicAckOptions::default())));
        futures_util::future::join_all(singles).await;
        if let Some(index) = plan.multiple {
            if pending.is_none() {
                pending_since = tokio::time::Instant::now();
            }
            pending = Some(batch.swap_remove(index).acker);
        }
        if ledger.through - acked_through >= enough
            && let Some(acker) = pending.take()
        {
            acked_through = ledger.through;
            reporter
                .sent("ack", acker.ack(BasicAckOptions { multiple: true }))
                .await;
        }
        batch.clear();
    }
    // the channel is closing: what is settled goes now
    if let Some(acker) = pending.take() {
        reporter
            .sent("ack", acker.ack(BasicAckOptions { multiple: true }))
            .await;
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

    /// Plans a batch of `(tag, verdict)` and returns the tags: (requeued, multiple, single).
    fn tags(ledger: &mut Ledger, batch: &[(u64, Verdict)]) -> (Vec<u64>, Option<u64>, Vec<u64>) {
        // the planner only reads tags and verdicts; the ackers are placeholders
        let batch: Vec<Settle> = batch
            .iter()
            .map(|&(tag, verdict)| Settle {
                tag,
                acker: placeholder_acker(),
                verdict,
            })
            .collect();
        let plan = plan(ledger, &batch);
        (
            plan.requeue.iter().map(|&i| batch[i].tag).collect(),
            plan.multiple.map(|i| batch[i].tag),
            plan.single.iter().map(|&i| batch[i].tag).collect(),
        )
    }

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

    use Verdict::{Ack, Requeue};
    use lapin::types::ShortString;

    #[test]
    fn a_contiguous_run_is_one_multiple_ack_of_its_highest_tag() {
        let mut ledger = Ledger::default();
        assert_eq!(
            tags(&mut ledger, &[(1, Ack), (2, Ack), (3, Ack)]),
            (vec![], Some(3), vec![])
        );
        // out of order within the batch makes no difference
        assert_eq!(
            tags(&mut ledger, &[(6, Ack), (4, Ack), (5, Ack)]),
            (vec![], Some(6), vec![])
        );
        assert_eq!(ledger.through, 6);
    }

    #[test]
    fn an_ack_above_an_unsettled_tag_goes_alone_and_later_joins_the_run() {
        let mut ledger = Ledger::default();
        // tag 2's handler is still running
        assert_eq!(
            tags(&mut ledger, &[(1, Ack), (3, Ack), (4, Ack)]),
            (vec![], Some(1), vec![3, 4])
        );
        // 2 settles: the run reaches 4, and only 2 itself is still unacknowledged below it
        assert_eq!(tags(&mut ledger, &[(2, Ack)]), (vec![], Some(2), vec![]));
        assert_eq!(ledger.through, 4);
        assert!(ledger.above.is_empty());
        assert_eq!(tags(&mut ledger, &[(5, Ack)]), (vec![], Some(5), vec![]));
    }

    #[test]
    fn a_requeued_tag_is_nacked_alone_and_counts_as_settled() {
        let mut ledger = Ledger::default();
        assert_eq!(
            tags(&mut ledger, &[(1, Ack), (2, Requeue), (3, Ack)]),
            (vec![2], Some(3), vec![])
        );
        // a requeue above a gap leaves the acks above it single as well
        assert_eq!(
            tags(&mut ledger, &[(5, Requeue), (6, Ack)]),
            (vec![5], None, vec![6])
        );
        assert_eq!(tags(&mut ledger, &[(4, Ack)]), (vec![], Some(4), vec![]));
        assert_eq!(ledger.through, 6);
    }

    #[test]
    fn a_tag_never_settled_keeps_later_acks_single() {
        let mut ledger = Ledger::default();
        // tag 1 was abandoned and never reached the queue
        for tag in 2..6 {
            assert_eq!(tags(&mut ledger, &[(tag, Ack)]), (vec![], None, vec![tag]));
        }
        assert_eq!(ledger.through, 0);
    }
}
