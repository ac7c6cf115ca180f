//! The shared delivery loop: fetch → handler → outcome → ack / retry / dead-letter.
//!
//! Written once, here, for every backend. A backend implements [`DeliverySource`] (fetch the
//! next message) and [`Acknowledge`] (settle one message), and starts subscriptions with
//! [`Lifecycle::subscribe`](crate::backend::Lifecycle::subscribe). The loop then keeps the
//! contract of [`crate::broker`]:
//!
//! - at most `concurrency` handlers run at once; the source is not polled beyond that;
//! - a message is acknowledged only after its handler succeeded or after it was dead-lettered;
//! - failures are retried in place with the subscription's [`RetryPolicy`]
//!   backoff, then dead-lettered with `x-event-*` headers; permanent failures (decode errors,
//!   type mismatches) are dead-lettered at once;
//! - a panicking handler is caught and counts as a failure;
//! - a message whose dead-letter publish fails is held, unacknowledged, and the publish
//!   retried with backoff until it succeeds or the loop stops
//!   ([`Subscription::stalled`] counts such messages);
//! - on stop, fetching ends, running handlers get the drain timeout to finish, and messages
//!   that did not finish are given back to the broker, never dead-lettered.

use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

use crate::backend::DeliverySource;
use crate::broker::{Broker, RawHandler, RetryPolicy, Stop, SubscribeOptions, Subscription};
use crate::ratelimit::RateLimitedLog;
use crate::telemetry::ConsumerTelemetry;

mod dead_letter;
mod settle;

pub use dead_letter::dead_letter_message;
use settle::{Pending, process, process_owned};

/// The subscription loops of one backend: started by [`Runs::spawn`], stopped together by
/// [`Runs::shutdown`]. [`Lifecycle`](crate::backend::Lifecycle) keeps one per connection.
#[derive(Debug, Clone, Default)]
pub(crate) struct Runs {
    token: CancellationToken,
    /// Set by [`Runs::shutdown`] before it cancels `token` (see [`Stop`]).
    shutting_down: Arc<AtomicBool>,
    tracker: TaskTracker,
}

impl Runs {
    /// A token cancelled at shutdown, for a backend task of its own to watch. It is a child
    /// of the loops' token: cancelling it stops nothing else.
    pub(crate) fn token(&self) -> CancellationToken {
        self.token.child_token()
    }

    /// Runs the delivery loop for `source` on the current tokio runtime.
    ///
    /// `broker` is the broker the subscription belongs to: dead letters are published through
    /// it to [`SubscribeOptions::dead_letter_topic_for`] the topic, and its name and messaging
    /// system label the subscription's spans and metrics.
    pub(crate) fn spawn<S: DeliverySource>(
        &self,
        topic: &str,
        source: S,
        options: &SubscribeOptions,
        handler: Arc<dyn RawHandler>,
        broker: Arc<dyn Broker>,
    ) -> Subscription {
        let topic: Arc<str> = Arc::from(topic);
        let stop = Stop::new(self.token.child_token(), self.shutting_down.clone());
        let telemetry = Arc::new(ConsumerTelemetry::new(
            broker.clone(),
            &topic,
            options.queue.as_deref(),
            handler.message_type(),
        ));
        let stalled = Arc::new(AtomicUsize::new(0));
        let ctx = Arc::new(LoopContext {
            telemetry,
            dead_letter_topic: options.dead_letter_topic_for(&topic),
            topic: topic.clone(),
            handler,
            retry: options.retry.clone(),
            concurrency: options.concurrency.get(),
            drain_timeout: options.drain_timeout,
            dead_letter_broker: broker,
            stop: stop.clone(),
            log: RateLimitedLog::new(Duration::from_secs(10)),
            stalled: stalled.clone(),
        });
        crate::clock::calibrate();
        let task = self.tracker.spawn(run(source, ctx));
        Subscription::new(
            topic,
            options.queue.as_deref().map(Arc::from),
            stop,
            stalled,
            task,
        )
    }

    /// Whether `other` is a handle of these same runs (not of the runs an `open` made since).
    pub(crate) fn same(&self, other: &Runs) -> bool {
        Arc::ptr_eq(&self.shutting_down, &other.shutting_down)
    }

    /// Whether a shutdown began and every loop has ended since.
    pub(crate) fn drained(&self) -> bool {
        self.tracker.is_closed() && self.tracker.is_empty()
    }

    /// Stops every subscription and waits until each has drained.
    pub(crate) async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.token.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

struct LoopContext {
    telemetry: Arc<ConsumerTelemetry>,
    topic: Arc<str>,
    dead_letter_topic: String,
    handler: Arc<dyn RawHandler>,
    retry: RetryPolicy,
    concurrency: usize,
    drain_timeout: Duration,
    dead_letter_broker: Arc<dyn Broker>,
    stop: Stop,
    log: RateLimitedLog,
    /// Messages held because their dead-letter publish fails; read by
    /// [`Subscription::stalled`].
    stalled: Arc<AtomicUsize>,
}

enum Settled {
    Done,
    Returned,
}

impl crate::broker::DrainReport {
    fn tally(&mut self, settled: Settled) {
        match settled {
            Settled::Done => self.completed += 1,
            Settled::Returned => self.returned += 1,
        }
    }
}

async fn run<S: DeliverySource>(source: S, ctx: Arc<LoopContext>) -> crate::broker::DrainReport {
    if ctx.concurrency == 1 {
        run_sequential(source, ctx).await
    } else {
        run_concurrent(source, ctx).await
    }
}

pin_project_lite::pin_project! {
    /// Polls a future to completion, or until the loop's stop token is cancelled (`None`),
    /// whichever comes first; the future is polled first.
    ///
    /// The stop token's waiter is only made once the future was not ready: under load the source
    /// has a message and a handler that does not wait finishes on its first poll, and making
    /// and dropping a waiter for each would cost more than the rest of the loop's bookkeeping.
    /// A future of its own rather than an `async fn`: each `async` layer moves the output once
    /// more on its way out, and here the output is a whole message.
    struct UnlessStopped<'a, F> {
        future: Pin<&'a mut F>,
        stop: &'a CancellationToken,
        #[pin]
        stopped: Option<WaitForCancellationFuture<'a>>,
    }
}

fn unless_stopped<'a, F: Future>(
    future: Pin<&'a mut F>,
    stop: &'a CancellationToken,
) -> UnlessStopped<'a, F> {
    UnlessStopped {
        future,
        stop,
        stopped: None,
    }
}

impl<F: Future> Future for UnlessStopped<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(output) = this.future.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        if this.stopped.is_none() {
            this.stopped.set(Some(this.stop.cancelled()));
        }
        let stopped = this.stopped.as_pin_mut().expect("set above");
        stopped.poll(cx).map(|()| None)
    }
}

/// Concurrency 1: handle each message inline, in order.
async fn run_sequential<S: DeliverySource>(
    mut source: S,
    ctx: Arc<LoopContext>,
) -> crate::broker::DrainReport {
    let mut report = crate::broker::DrainReport::default();
    // the flag check before each fetch makes a busy loop stop fetching as soon as it is told to
    while !ctx.stop.is_stopped() {
        let mut pending = match source.next_at_hand() {
            Some(incoming) => Pending::new(incoming),
            // a `let` of its own: the finished fetch future is dropped here, before the
            // handler runs (in a `while let` condition it would live until the end of the body)
            None => match unless_stopped(pin!(source.next()), &ctx.stop.token).await {
                Some(Some(incoming)) => Pending::new(incoming),
                _ => break,
            },
        };
        let mut processing = pin!(process(&ctx, &mut pending));
        if unless_stopped(processing.as_mut(), &ctx.stop.token)
            .await
            .is_some()
        {
            continue;
        }
        // stopped while handling: give the handler the drain timeout
        match tokio::time::timeout(ctx.drain_timeout, processing).await {
            Ok(Settled::Done) => report.completed += 1,
            Ok(Settled::Returned) => report.returned += 1,
            Err(_) => {
                report.abandoned = 1;
                warn_abandoned(&ctx, 1);
            }
        }
        break;
    }
    source.close().await;
    report
}

async fn run_concurrent<S: DeliverySource>(
    mut source: S,
    ctx: Arc<LoopContext>,
) -> crate::broker::DrainReport {
    let mut in_flight = FuturesUnordered::new();
    let mut report = crate::broker::DrainReport::default();
    let stopped = ctx.stop.token.cancelled();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            biased;
            _ = &mut stopped => break,
            Some(settled) = in_flight.next(), if !in_flight.is_empty() => {
                // a handler can finish in the same wake-up that brings the stop: it belongs
                // to the drain
                if ctx.stop.token.is_cancelled() {
                    report.tally(settled);
                }
            }
            incoming = source.next(), if in_flight.len() < ctx.concurrency => match incoming {
                Some(incoming) => in_flight.push(process_owned(ctx.clone(), Pending::new(incoming))),
                None => break,
            },
        }
    }

    if !in_flight.is_empty() {
        let deadline = tokio::time::sleep(ctx.drain_timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                settled = in_flight.next() => match settled {
                    Some(settled) => report.tally(settled),
                    None => break,
                },
                _ = &mut deadline => {
                    report.abandoned = in_flight.len();
                    warn_abandoned(&ctx, report.abandoned);
                    break;
                }
            }
        }
    }
    drop(in_flight);
    source.close().await;
    report
}

fn warn_abandoned(ctx: &LoopContext, abandoned: usize) {
    tracing::warn!(
        topic = %ctx.topic,
        handler = ctx.handler.name(),
        abandoned,
        timeout = ?ctx.drain_timeout,
        "drain timeout expired; unfinished messages are given back to the broker"
    );
}
