//! One message through the handler: run it (a panic caught and counted as a failure), then
//! acknowledge, retry after a backoff or dead-letter it; a message dropped unsettled goes back
//! to the broker.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tracing::Span;

use crate::backend::{Acknowledge, Incoming};
use crate::broker::{
    BrokerError, Delivery, Failure, FailureKind, HandlerPanicked, Outcome, RawHandler,
};
use crate::telemetry::RunOutcome;

use super::dead_letter::dead_letter;
use super::{LoopContext, Settled};

/// Holds a message until it is settled; gives it back to the broker if dropped unsettled.
pub(super) struct Pending<A: Acknowledge> {
    delivery: Option<Delivery>,
    acker: Option<A>,
}

impl<A: Acknowledge> Pending<A> {
    pub(super) fn new(incoming: Incoming<A>) -> Self {
        Pending {
            delivery: Some(incoming.delivery),
            acker: Some(incoming.acker),
        }
    }

    pub(super) fn delivery(&self) -> &Delivery {
        self.delivery
            .as_ref()
            .expect("pending delivery present until settled")
    }

    /// Whether the message is still the subscriber's ([`Acknowledge::owned`]).
    pub(super) fn owned(&self) -> bool {
        self.acker.as_ref().is_none_or(Acknowledge::owned)
    }

    pub(super) fn take(&mut self) -> (Delivery, A) {
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

pub(super) async fn process_owned<A: Acknowledge>(
    ctx: Arc<LoopContext>,
    mut pending: Pending<A>,
) -> Settled {
    process(&ctx, &mut pending).await
}

/// Runs the handler on a message and settles it. The message stays where the caller keeps
/// it: a future that took it by value would move the whole delivery twice more (into the
/// future, then into the future's body), and a message that is not settled when the caller
/// drops it goes back to the broker all the same ([`Pending`]'s `Drop`).
pub(super) async fn process<A: Acknowledge>(
    ctx: &LoopContext,
    pending: &mut Pending<A>,
) -> Settled {
    let _in_flight = ctx.telemetry.received();
    if let Some(delivery) = &mut pending.delivery {
        delivery.drift = ctx.telemetry.drift().clone();
        if let Some(reason) = delivery.undeliverable_reason().map(str::to_owned) {
            // given up on by the broker: no handler runs on it again
            let span = ctx.telemetry.span(pending.delivery(), ctx.handler.name());
            let failure = Failure::new(FailureKind::Undeliverable, reason);
            return Box::pin(dead_letter(ctx, pending, failure, span)).await;
        }
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
                    ack_failed(ctx, &span, &error);
                }
                ctx.telemetry.settled(&span, RunOutcome::Acked, None);
                return Settled::Done;
            }
            Outcome::Retry(failure)
                if !failure.kind().is_permanent()
                    && ctx.retry.should_retry(pending.delivery().attempt()) =>
            {
                if !pending.owned() {
                    // not retried at all: no backoff for a message that is not ours
                    return Box::pin(let_go(ctx, pending)).await;
                }
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
                    None if !pending.owned() => return Box::pin(let_go(ctx, pending)).await,
                    None => continue,
                }
            }
            Outcome::Retry(failure) | Outcome::DeadLetter(failure) => failure,
        };
        if !pending.owned() {
            return Box::pin(let_go(ctx, pending)).await;
        }
        return Box::pin(dead_letter(ctx, pending, failure, span)).await;
    }
}

/// Gives back a failed message the broker took away meanwhile ([`Acknowledge::owned`]):
/// its new owner runs it again, or dead-letters it.
pub(super) async fn let_go<A: Acknowledge>(ctx: &LoopContext, pending: &mut Pending<A>) -> Settled {
    let (delivery, acker) = pending.take();
    tracing::debug!(
        topic = %ctx.topic,
        handler = ctx.handler.name(),
        position = %delivery.position(),
        "the broker took this failed message away (its partition went to another member): \
         neither retried nor dead-lettered here"
    );
    if let Err(error) = acker.nack(delivery).await {
        tracing::warn!(topic = %ctx.topic, %error, "giving a message back failed");
    }
    Settled::Returned
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

/// Counts a failed acknowledgement, and logs it (once per 10 s per topic and handler, with
/// how many were not logged: a broker that is gone fails every one).
pub(super) fn ack_failed(ctx: &LoopContext, span: &Span, error: &BrokerError) {
    ctx.telemetry.ack_failed(error.kind());
    ctx.log.error(
        (
            ctx.topic.to_string(),
            ctx.handler.name().to_owned(),
            "ack-failed",
        ),
        |suppressed| {
            tracing::warn!(
                parent: span,
                topic = %ctx.topic,
                handler = ctx.handler.name(),
                %error,
                suppressed_since_last = suppressed,
                "acknowledge failed; the broker will deliver the message again"
            );
        },
    );
}

/// Polls `future` inside `span`, entering it for each poll only (no guard is held across an
/// await). Unlike `Instrument::instrument`, it borrows the span instead of taking a clone:
/// a clone and its drop are two calls into the subscriber's registry for every message.
pub(super) async fn in_span<F: Future>(span: &Span, future: F) -> F::Output {
    tokio::pin!(future);
    std::future::poll_fn(|cx| {
        let _entered = span.enter();
        future.as_mut().poll(cx)
    })
    .await
}

async fn run_handler(handler: &dyn RawHandler, delivery: &Delivery) -> Outcome {
    // `handle` is called inside the guarded future, so that a panic in its synchronous part
    // (a decode, an extractor, a closure's body before its `async` block) is caught as well
    match AssertUnwindSafe(async { handler.handle(delivery).await })
        .catch_unwind()
        .await
    {
        Ok(outcome) => outcome,
        Err(panic) => Outcome::Retry(Failure::new(
            FailureKind::Panic,
            HandlerPanicked::new(panic_message(&*panic)),
        )),
    }
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
