//! Dead-lettering: the dead-letter copy of a delivery, and its publish, retried while it fails
//! with the message held unacknowledged.

use std::time::Duration;

use tracing::{Instrument, Span};

use crate::backend::{Acknowledge, Backoff};
use crate::broker::{Delivery, Failure, Message};
use crate::counted::Counted;
use crate::headers::names;
use crate::telemetry::{RunOutcome, publish_span, sampling};

use super::settle::{Pending, in_span};
use super::{LoopContext, Settled};

/// The longest `x-event-error` a dead letter carries: a handler's error text has no bound of
/// its own, and a dead letter too large for its broker could never be published.
const MAX_ERROR_LEN: usize = 4096;

/// The dead-letter copy of a delivery: original headers, key and bytes, plus the reason (its
/// text cut at 4 KiB).
pub fn dead_letter_message(delivery: &Delivery, handler: &str, failure: &Failure) -> Message {
    let mut message = delivery.message().clone();
    let headers = &mut message.headers;
    headers.insert(names::X_EVENT_ERROR, bounded(failure.describe()));
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

/// `error` cut to [`MAX_ERROR_LEN`] bytes (at a character boundary), saying so.
fn bounded(mut error: String) -> String {
    if error.len() > MAX_ERROR_LEN {
        let total = error.len();
        let mut cut = MAX_ERROR_LEN;
        while !error.is_char_boundary(cut) {
            cut -= 1;
        }
        error.truncate(cut);
        error.push_str(&format!("… (cut at {cut} of {total} bytes)"));
    }
    error
}

pub(super) async fn dead_letter<A: Acknowledge>(
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
    let mut backoff = Backoff::between(Duration::from_millis(100), Duration::from_secs(10));
    let mut wait = backoff.next_delay();
    // set at the first failed publish: the message is held until its dead letter is published
    let mut stalled = None;
    loop {
        let publishing = span.in_scope(|| {
            publish_span(
                &publish_name,
                &*ctx.dead_letter_broker,
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
                let failures = backoff.failures();
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
                if !pending.owned() {
                    // its new owner dead-letters it: this one is held no more
                    drop(stalled.take());
                    return super::settle::let_go(ctx, pending).await;
                }
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
                wait = backoff.next_delay();
            }
        }
    }
    // no longer held: counted off before the acknowledgement, which may wait on the broker
    drop(stalled);
    let (_, acker) = pending.take();
    if let Err(error) = in_span(&span, acker.ack()).await {
        // the dead letter is out; the original comes again, and is dead-lettered again
        super::settle::ack_failed(ctx, &span, &error);
    }
    ctx.telemetry.settled(
        &span,
        RunOutcome::DeadLettered,
        Some((failure.kind(), failure.payload_kind())),
    );
    Settled::Done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_error_is_cut_at_a_character_boundary_and_says_so() {
        assert_eq!(bounded("short".to_owned()), "short");
        let long = "é".repeat(3000);
        let cut = bounded(long);
        assert!(cut.len() < MAX_ERROR_LEN + 40, "{}", cut.len());
        assert!(
            cut.ends_with("… (cut at 4096 of 6000 bytes)"),
            "{}",
            &cut[4000..]
        );
    }
}
