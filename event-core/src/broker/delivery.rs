//! The shared delivery loop: fetch → handler → outcome → ack / retry / dead-letter.
//!
//! Written once, here, for every backend. A backend implements [`DeliverySource`] (fetch the
//! next message) and [`Acknowledge`] (settle one message), and starts subscriptions with
//! [`Lifecycle::spawn`]. The loop then keeps the contract of [`crate::broker`]:
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

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;
use tracing::{Instrument, Span};

use super::{
    Broker, BrokerError, Delivery, Failure, FailureKind, Message, Outcome, RawHandler, RetryPolicy,
    SubscribeOptions, Subscription,
};
use crate::counted::Counted;
use crate::headers::names;
use crate::ratelimit::RateLimitedLog;
use crate::telemetry::{ConsumerTelemetry, RunOutcome, publish_span, sampling};

/// A message fetched by a backend, with the means to settle it.
#[derive(Debug)]
pub struct Incoming<A> {
    /// The message and its metadata.
    pub delivery: Delivery,
    /// Settles the message with the broker.
    pub acker: A,
}

/// Settles one message with its broker.
///
/// If an acker is dropped without [`ack`](Acknowledge::ack) or [`nack`](Acknowledge::nack)
/// (its handler was cut off by the drain timeout), [`Acknowledge::abandon`] is called: the
/// message must stay available for redelivery.
pub trait Acknowledge: Send + 'static {
    /// The message is done: the broker may forget it (commit the offset, `basic.ack`).
    fn ack(self) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// The message was not processed: give it back for redelivery.
    fn nack(self, delivery: Delivery) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// The handler was cut off; called synchronously from a destructor. The default does
    /// nothing, which suits brokers that redeliver whatever was not acknowledged.
    fn abandon(self, delivery: Delivery)
    where
        Self: Sized,
    {
        let _ = delivery;
    }
}

/// Where a subscription's messages come from.
pub trait DeliverySource: Send + 'static {
    /// How this source's messages are settled.
    type Acker: Acknowledge;

    /// The next message; `None` once the source is closed for good.
    ///
    /// Must be cancel-safe: the loop may drop the future and call again later, and no message
    /// may be lost when that happens.
    fn next(&mut self) -> impl Future<Output = Option<Incoming<Self::Acker>>> + Send;

    /// The next message if one is at hand without waiting (fetched earlier in a batch, say);
    /// `None` otherwise, and then the loop calls [`DeliverySource::next`].
    ///
    /// The loop asks before each fetch of a subscription that handles one message at a time:
    /// a message returned here skips building and polling the `next` future, and moves less
    /// on its way to the handler. The default has nothing at hand.
    fn next_at_hand(&mut self) -> Option<Incoming<Self::Acker>> {
        None
    }

    /// Called once after the loop stopped and drained.
    fn close(self) -> impl Future<Output = ()> + Send;
}

/// Starts subscription loops and stops them all on shutdown; a backend keeps one.
#[derive(Debug, Clone, Default)]
pub struct Lifecycle {
    token: CancellationToken,
    /// Set by [`Lifecycle::shutdown`] before it cancels `token` (see [`Stop`]).
    shutting_down: Arc<AtomicBool>,
    tracker: TaskTracker,
}

/// How a subscription's loop is told to stop: a cancellation token that the loop waits on
/// while idle, and flags that a busy loop reads before each fetch. Reading a token takes its
/// lock; reading a flag is a load. So every stop goes through [`Stop::stop`] or
/// [`Lifecycle::shutdown`], which set a flag before they cancel.
#[derive(Debug, Clone)]
pub(crate) struct Stop {
    token: CancellationToken,
    stopped: Arc<AtomicBool>,
    shutting_down: Arc<AtomicBool>,
}

impl Stop {
    /// Stops the loop: it fetches nothing more and drains.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.token.cancel();
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire) || self.shutting_down.load(Ordering::Acquire)
    }
}

impl Lifecycle {
    /// A fresh lifecycle with no subscriptions.
    pub fn new() -> Self {
        Lifecycle::default()
    }

    /// Whether [`Lifecycle::shutdown`] was called.
    pub fn is_shut_down(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Starts a fresh lifecycle if this one was shut down: a backend calls it when it
    /// connects again after a disconnect.
    pub fn renew_if_shut_down(&mut self) {
        if self.is_shut_down() {
            *self = Lifecycle::new();
        }
    }

    /// A token cancelled at shutdown, for a backend task of its own to watch. It is a child
    /// of the lifecycle's: cancelling it stops nothing else ([`Lifecycle::shutdown`] stops
    /// the subscriptions).
    pub fn token(&self) -> CancellationToken {
        self.token.child_token()
    }

    /// Runs the delivery loop for `source` on the current tokio runtime.
    ///
    /// `broker` is the broker the subscription belongs to: dead letters are published through
    /// it to [`SubscribeOptions::dead_letter_topic_for`] the topic, and its name and messaging
    /// system label the subscription's spans and metrics.
    pub fn spawn<S: DeliverySource>(
        &self,
        topic: &str,
        source: S,
        options: &SubscribeOptions,
        handler: Arc<dyn RawHandler>,
        broker: Arc<dyn Broker>,
    ) -> Subscription {
        let topic: Arc<str> = Arc::from(topic);
        let stop = Stop {
            token: self.token.child_token(),
            stopped: Arc::default(),
            shutting_down: self.shutting_down.clone(),
        };
        let telemetry = Arc::new(ConsumerTelemetry::new(
            broker.messaging_system(),
            broker.name(),
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

    /// Stops every subscription and waits until each has drained.
    pub async fn shutdown(&self) {
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

impl super::DrainReport {
    fn tally(&mut self, settled: Settled) {
        match settled {
            Settled::Done => self.completed += 1,
            Settled::Returned => self.returned += 1,
        }
    }
}

async fn run<S: DeliverySource>(source: S, ctx: Arc<LoopContext>) -> super::DrainReport {
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
) -> super::DrainReport {
    let mut report = super::DrainReport::default();
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
) -> super::DrainReport {
    let mut in_flight = FuturesUnordered::new();
    let mut report = super::DrainReport::default();
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

/// Holds a message until it is settled; gives it back to the broker if dropped unsettled.
struct Pending<A: Acknowledge> {
    delivery: Option<Delivery>,
    acker: Option<A>,
}

impl<A: Acknowledge> Pending<A> {
    fn new(incoming: Incoming<A>) -> Self {
        Pending {
            delivery: Some(incoming.delivery),
            acker: Some(incoming.acker),
        }
    }

    fn delivery(&self) -> &Delivery {
        self.delivery
            .as_ref()
            .expect("pending delivery present until settled")
    }

    fn take(&mut self) -> (Delivery, A) {
        (
            self.delivery.take().expect("settled once"),
            self.acker.take().expect("settled once"),
        )
    }
}

impl<A: Acknowledge> Drop for Pending<A> {
    fn drop(&mut self) {
        // the acker first: a settled message has none, and its delivery is not moved out
        if let Some(acker) = self.acker.take()
            && let Some(delivery) = self.delivery.take()
        {
            acker.abandon(delivery);
        }
    }
}

async fn process_owned<A: Acknowledge>(ctx: Arc<LoopContext>, mut pending: Pending<A>) -> Settled {
    process(&ctx, &mut pending).await
}

/// Runs the handler on a message and settles it. The message stays where the caller keeps
/// it: a future that took it by value would move the whole delivery twice more (into the
/// future, then into the future's body), and a message that is not settled when the caller
/// drops it goes back to the broker all the same ([`Pending`]'s `Drop`).
async fn process<A: Acknowledge>(ctx: &LoopContext, pending: &mut Pending<A>) -> Settled {
    let _in_flight = ctx.telemetry.received();
    if let Some(delivery) = &mut pending.delivery {
        delivery.drift = ctx.telemetry.drift().clone();
    }
    loop {
        let span = ctx.telemetry.span(pending.delivery(), ctx.handler.name());
        // read twice per message: the cheaper clock (see `crate::clock`)
        let started = crate::clock::Instant::now();
        let outcome = in_span(&span, run_handler(&*ctx.handler, pending.delivery())).await;
        ctx.telemetry.ran(started.elapsed());
        let failure = match outcome {
            Outcome::Ack => {
                let acker = pending.acker.take().expect("settled once");
                // dropped where it lies (moving it out to drop it is a copy), and before the
                // acknowledgement, which may wait on the broker
                pending.delivery = None;
                if let Err(error) = in_span(&span, acker.ack()).await {
                    tracing::warn!(parent: &span, topic = %ctx.topic, %error, "acknowledge failed; the broker will redeliver");
                }
                ctx.telemetry.settled(&span, RunOutcome::Acked, None);
                return Settled::Done;
            }
            Outcome::Retry(failure)
                if !failure.kind().is_permanent()
                    && ctx.retry.should_retry(pending.delivery().attempt()) =>
            {
                ctx.telemetry.settled(
                    &span,
                    RunOutcome::Retried,
                    Some((failure.kind(), failure.payload_kind())),
                );
                let delivery = pending.delivery();
                let backoff = ctx.retry.backoff(delivery.attempt());
                tracing::debug!(
                    parent: &span,
                    topic = %ctx.topic,
                    handler = ctx.handler.name(),
                    attempt = delivery.attempt(),
                    position = %delivery.position(),
                    ?backoff,
                    error = %failure.describe(),
                    "handler failed; retrying"
                );
                drop(span);
                // boxed, as is the dead-letter path below: the rare paths' futures (a timer,
                // a publish) would otherwise make this future, which is built and moved for
                // every message, several times larger
                match Box::pin(back_off(ctx, pending, backoff)).await {
                    Some(settled) => return settled,
                    None => continue,
                }
            }
            Outcome::Retry(failure) | Outcome::DeadLetter(failure) => failure,
        };
        return Box::pin(dead_letter(ctx, pending, failure, span)).await;
    }
}

/// Waits `backoff` before the next attempt; if the loop is stopped meanwhile, gives the
/// message back to the broker and returns [`Settled::Returned`].
async fn back_off<A: Acknowledge>(
    ctx: &LoopContext,
    pending: &mut Pending<A>,
    backoff: Duration,
) -> Option<Settled> {
    tokio::select! {
        _ = tokio::time::sleep(backoff) => {
            pending.delivery.as_mut().expect("present").next_attempt();
            None
        }
        _ = ctx.stop.token.cancelled() => {
            let (delivery, acker) = pending.take();
            if let Err(error) = acker.nack(delivery).await {
                tracing::warn!(topic = %ctx.topic, %error, "giving a message back failed");
            }
            Some(Settled::Returned)
        }
    }
}

/// Polls `future` inside `span`, entering it for each poll only (no guard is held across an
/// await). Unlike `Instrument::instrument`, it borrows the span instead of taking a clone:
/// a clone and its drop are two calls into the subscriber's registry for every message.
async fn in_span<F: Future>(span: &Span, future: F) -> F::Output {
    tokio::pin!(future);
    std::future::poll_fn(|cx| {
        let _entered = span.enter();
        future.as_mut().poll(cx)
    })
    .await
}

async fn run_handler(handler: &dyn RawHandler, delivery: &Delivery) -> Outcome {
    match AssertUnwindSafe(handler.handle(delivery))
        .catch_unwind()
        .await
    {
        Ok(outcome) => outcome,
        Err(panic) => Outcome::Retry(Failure::new(
            FailureKind::Panic,
            HandlerPanicked {
                message: panic_message(&*panic),
            },
        )),
    }
}

/// A handler panicked; the panic message is kept.
#[derive(Debug, thiserror::Error)]
#[error("handler panicked: {message}")]
pub struct HandlerPanicked {
    message: String,
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// The dead-letter copy of a delivery: original headers, key and bytes, plus the reason.
pub fn dead_letter_message(delivery: &Delivery, handler: &str, failure: &Failure) -> Message {
    let mut message = delivery.message().clone();
    let headers = &mut message.headers;
    headers.insert(names::X_EVENT_ERROR, failure.describe());
    headers.insert(names::X_EVENT_ERROR_KIND, failure.kind().as_str());
    headers.insert(names::X_EVENT_ORIGINAL_TOPIC, delivery.topic());
    headers.insert(
        names::X_EVENT_ORIGINAL_POSITION,
        delivery.position().to_string(),
    );
    headers.insert(names::X_EVENT_HANDLER, handler);
    headers.insert(names::X_EVENT_ATTEMPTS, delivery.attempt().to_string());
    match failure.payload_kind() {
        Some(kind) => headers.insert(names::X_EVENT_PAYLOAD_KIND, kind),
        None => {
            headers.remove(names::X_EVENT_PAYLOAD_KIND);
        }
    }
    message
}

async fn dead_letter<A: Acknowledge>(
    ctx: &LoopContext,
    pending: &mut Pending<A>,
    failure: Failure,
    span: Span,
) -> Settled {
    let delivery = pending.delivery();
    let entered = span.enter();
    ctx.log.error(
        (
            ctx.topic.to_string(),
            ctx.handler.name().to_owned(),
            failure.kind().as_str(),
        ),
        |suppressed| {
            tracing::error!(
                topic = %ctx.topic,
                handler = ctx.handler.name(),
                position = %delivery.position(),
                attempts = delivery.attempt(),
                kind = failure.kind().as_str(),
                dead_letter_topic = %ctx.dead_letter_topic,
                suppressed_since_last = suppressed,
                "dead-lettering message: {}",
                failure.describe()
            );
        },
    );
    // the original headers stay as they were, trace context included: a replay of the dead
    // letter continues the original publisher's trace
    let mut message = dead_letter_message(delivery, ctx.handler.name(), &failure);
    let publish_name = format!("publish {}", ctx.dead_letter_topic);
    drop(entered);
    let mut wait = Duration::from_millis(100);
    // set at the first failed publish: the message is held until its dead letter is published
    let mut stalled = None;
    let mut failures: u32 = 0;
    loop {
        let publishing = span.in_scope(|| {
            publish_span(
                &publish_name,
                ctx.dead_letter_broker.messaging_system(),
                &ctx.dead_letter_topic,
                &message,
                // the original headers: decided as the message's process span was
                sampling::of_delivery(&message.headers),
            )
        });
        let published = ctx
            .dead_letter_broker
            .publish(&ctx.dead_letter_topic, message)
            .instrument(publishing)
            .await;
        match published {
            Ok(_) => break,
            Err(error) => {
                let held = stalled.get_or_insert_with(|| Counted::on(&ctx.stalled));
                failures += 1;
                ctx.telemetry
                    .dead_letter_failed(error.broker_error().kind());
                ctx.log.error(
                    (
                        ctx.topic.to_string(),
                        ctx.handler.name().to_owned(),
                        "dead-letter-publish",
                    ),
                    |suppressed| {
                        tracing::error!(
                            parent: &span,
                            topic = %ctx.topic,
                            handler = ctx.handler.name(),
                            position = %pending.delivery().position(),
                            dead_letter_topic = %ctx.dead_letter_topic,
                            failures,
                            stalled = held.count(),
                            suppressed_since_last = suppressed,
                            error = %crate::error_chain(&error),
                            "publishing to the dead-letter topic failed; the message is held, \
                             not acknowledged, and the publish retried in {wait:?}"
                        );
                    },
                );
                message = error.into_message();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = ctx.stop.token.cancelled() => {
                        drop(stalled.take());
                        let (delivery, acker) = pending.take();
                        if let Err(error) = acker.nack(delivery).await {
                            tracing::warn!(topic = %ctx.topic, %error, "giving a message back failed");
                        }
                        ctx.telemetry.settled(&span, RunOutcome::Returned, Some((failure.kind(), failure.payload_kind())));
                        return Settled::Returned;
                    }
                }
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        }
    }
    // no longer held: counted off before the acknowledgement, which may wait on the broker
    drop(stalled);
    let (_, acker) = pending.take();
    if let Err(error) = in_span(&span, acker.ack()).await {
        tracing::warn!(parent: &span, topic = %ctx.topic, %error, "acknowledge after dead-lettering failed; the broker will redeliver");
    }
    ctx.telemetry.settled(
        &span,
        RunOutcome::DeadLettered,
        Some((failure.kind(), failure.payload_kind())),
    );
    Settled::Done
}
