//! Publishing: to JetStream with a PubAck per message, or to core NATS with a round trip.

use std::time::{Duration, Instant};

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use event_core::backend::Backoff;
use event_core::broker::{BrokerError, Message, PublishError, Receipt};

use crate::BROKER_NAME;
use crate::broker::{Inner, Session, client_error};
use crate::error::NatsBackendError;
use crate::wire;

/// How much further than async-nats's own timeouts a deadline must be for a publish attempt
/// to go without a timer of ours.
const TIMER_MARGIN: Duration = Duration::from_millis(50);

fn backend(error: NatsBackendError) -> BrokerError {
    BrokerError::Backend {
        broker: BROKER_NAME,
        operation: "publish",
        source: Box::new(error),
    }
}

/// Publishes `message` and waits for JetStream's PubAck; the receipt's position is the stream
/// sequence. A subject in no stream gets one first (with `create_streams`). A PubAck that does
/// not come (connection lost, server restarting) is waited for again with the same
/// `Nats-Msg-Id`, until the publish timeout: the stream's duplicate detection keeps one copy.
pub(crate) async fn publish(
    inner: &Inner,
    session: &Session,
    topic: &str,
    message: Message,
) -> Result<Receipt, PublishError> {
    let fail = |message: Message, error: BrokerError| Err(PublishError::new(topic, message, error));
    let mut message = message;
    if message.headers.message_id_value().is_none()
        && message.headers.get(wire::MSG_ID_HEADER).is_none()
    {
        // a message without an id (a raw `Broker::publish`) gets one for the stream's
        // duplicate detection, so that a retry below, or the caller's with the message it gets
        // back, is kept once
        let (id, _) = event_core::publish::message_id_and_time();
        message.headers.insert(
            event_core::headers::HeaderName::from_static(wire::MSG_ID_HEADER),
            id,
        );
    }
    let envelope = inner.config.go_micro_envelope;
    // one id for every attempt of this publish
    let dedup = wire::publish_dedup_id(topic, &message);
    let go_micro = |message: &Message| {
        let (payload, mut headers) = wire::to_go_micro(topic, message, true);
        if let (Some(map), Some(id)) = (headers.as_mut(), &dedup) {
            map.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        }
        (payload, headers)
    };
    let (payload, mut headers) = if envelope {
        let (payload, headers) = go_micro(&message);
        (payload, Some(headers))
    } else {
        match wire::to_nats_with_id(&message, true, dedup.clone()) {
            Ok(headers) => (message.payload.clone(), Some(headers)),
            Err(error) => return fail(message, backend(error)),
        }
    };
    let config = &inner.config;
    let started = Instant::now();
    let deadline = started + config.publish_timeout;
    let mut backoff = Backoff::between(config.reconnect_min, config.reconnect_max);
    let no_room = || BrokerError::Timeout {
        broker: BROKER_NAME,
        operation: "publish (waiting for room among the PubAcks in flight)",
        timeout: config.publish_timeout,
    };
    // a place among the PubAcks in flight, waited for only when every one is taken (boxed
    // there: a wait rarely taken, kept out of every publish's future)
    let _place = match session.pubacks.try_acquire() {
        Ok(place) => place,
        Err(_) => match Box::pin(tokio::time::timeout_at(
            deadline.into(),
            session.pubacks.acquire(),
        ))
        .await
        {
            Ok(Ok(place)) => place,
            // timed out (the semaphore is never closed)
            Ok(Err(_)) | Err(_) => return fail(message, no_room()),
        },
    };
    let mut provisioned = false;
    loop {
        let mut publish = PublishMessage::build().payload(payload.clone());
        // the first attempt takes the headers; a retry (rare) builds them again
        let attempt_headers = match headers.take() {
            Some(headers) => headers,
            None if envelope => go_micro(&message).1,
            None => wire::to_nats_with_id(&message, true, dedup.clone()).unwrap_or_default(),
        };
        if let Some(headers) = attempt_headers {
            publish = publish.headers(headers);
        }
        // boxed on its own (one more allocation per publish): the two halves of a publish's
        // future each stay small enough for the allocator's per-thread cache, where one box
        // of both is not
        let attempt = Box::pin(async {
            session
                .js
                .send_publish(topic.to_owned(), publish)
                .await?
                .await
        });
        // async-nats bounds both halves of an attempt by the request timeout (handing the
        // message to the connection, and the PubAck), and with its backpressure off
        // (`Inner::connect_session`) nothing else in it waits: while the deadline is further
        // away than both (and a margin for the timers' rounding), a timer of ours (one more
        // entry in tokio's timer wheel per publish) would not fire first
        let bounded = deadline.saturating_duration_since(Instant::now())
            >= config.request_timeout.saturating_mul(2) + TIMER_MARGIN;
        let outcome = if bounded {
            Ok(attempt.await)
        } else {
            tokio::time::timeout_at(deadline.into(), attempt).await
        };
        let error = match outcome {
            Ok(Ok(ack)) => {
                if ack.duplicate {
                    tracing::debug!(
                        topic,
                        stream = %ack.stream,
                        sequence = ack.sequence,
                        "JetStream already had this message id: kept once"
                    );
                }
                return Ok(Receipt::new(wire::stream_position(ack.sequence, 1)));
            }
            Ok(Err(error)) => error,
            Err(_elapsed) => {
                return fail(
                    message,
                    BrokerError::Timeout {
                        broker: BROKER_NAME,
                        operation: "publish (waiting for JetStream's PubAck)",
                        timeout: config.publish_timeout,
                    },
                );
            }
        };
        match error.kind() {
            PublishErrorKind::StreamNotFound => {
                inner.streams.forget(topic);
                if !config.create_streams {
                    return fail(message, crate::streams::not_found(config, topic, None));
                }
                if provisioned {
                    // made, and still nobody answers: JetStream itself is not there
                    return fail(message, crate::streams::unavailable(config));
                }
                if let Err(error) = inner
                    .streams
                    .resolve(config, &session.js, topic, None)
                    .await
                {
                    return fail(message, error);
                }
                provisioned = true;
            }
            PublishErrorKind::MaxAckPending => {
                // every place taken though this publish holds one of ours: the PubAcks of
                // publishes dropped midway keep theirs, each for at most the request timeout
                let wait = backoff.next_delay();
                tracing::debug!(
                    topic,
                    "as many publishes as async-nats keeps await their PubAck; again in {wait:?}"
                );
                if Instant::now() + wait >= deadline {
                    return fail(message, no_room());
                }
                tokio::time::sleep(wait).await;
            }
            PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => {
                // the server may or may not have it: the same id again, after a pause
                let wait = backoff.next_delay();
                tracing::debug!(
                    topic,
                    error = %error,
                    "no PubAck; publishing again with the same Nats-Msg-Id in {wait:?}"
                );
                if Instant::now() + wait >= deadline {
                    return fail(message, inner.unavailable(started.elapsed()));
                }
                tokio::time::sleep(wait).await;
            }
            _ => {
                return fail(
                    message,
                    backend(NatsBackendError::Publish {
                        subject: topic.to_owned(),
                        source: error,
                    }),
                );
            }
        }
    }
}

/// Publishes `message` to core NATS and waits for a round trip through the server: the server
/// then has the message and forwarded it to the subscriptions it had. Nothing is stored: with
/// no subscriber, the message is gone.
pub(crate) async fn publish_core(
    inner: &Inner,
    session: &Session,
    topic: &str,
    message: Message,
) -> Result<Receipt, PublishError> {
    let fail = |message: Message, error: BrokerError| Err(PublishError::new(topic, message, error));
    let (payload, headers) = if inner.config.go_micro_envelope {
        wire::to_go_micro(topic, &message, false)
    } else {
        match wire::to_nats(topic, &message, false) {
            Ok(headers) => (message.payload.clone(), headers),
            Err(error) => return fail(message, backend(error)),
        }
    };
    let subject = topic.to_owned();
    let timeout = inner.config.publish_timeout;
    let started = Instant::now();
    // bounded: while async-nats reconnects it takes no commands, and its channel fills
    let sent = tokio::time::timeout(timeout, async {
        match headers {
            Some(headers) => {
                session
                    .client
                    .publish_with_headers(subject, headers, payload)
                    .await
            }
            None => session.client.publish(subject, payload).await,
        }
    })
    .await;
    match sent {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return fail(message, client_error("publish", error)),
        Err(_elapsed) => {
            return fail(
                message,
                BrokerError::Timeout {
                    broker: BROKER_NAME,
                    operation: "publish (handing the message to the client)",
                    timeout,
                },
            );
        }
    }
    let barrier = session
        .barrier
        .as_ref()
        .expect("core NATS sessions have one");
    match barrier
        .pass(timeout.saturating_sub(started.elapsed()))
        .await
    {
        Ok(()) => Ok(Receipt::new(wire::core_position(0))),
        Err(error) => fail(message, error),
    }
}

#[cfg(test)]
mod tests {
    use event_core::broker::{Broker, Message};

    /// Every publish allocates its future: a slow path's state held inline (connecting, or
    /// looking a stream up, each kilobytes) once made it 7 KiB, allocated and copied per
    /// message. Those paths are boxed where they are taken, and the wait for the PubAck is a
    /// box of its own (936 bytes in a release build of this writing, not checked here: it
    /// needs a connection), so that the allocations every publish makes stay within the sizes
    /// glibc's allocator serves from its per-thread cache (up to 1032 bytes). This checks the
    /// outer one, which is where slow paths creep in.
    #[test]
    fn a_publish_future_is_small() {
        let broker = crate::NatsBroker::builder("nats://127.0.0.1:4222")
            .build()
            .expect("builds");
        let publishing = broker.publish("a", Message::new("x"));
        let size = std::mem::size_of_val(&*publishing);
        assert!(size <= 1024, "a publish future is {size} bytes");
    }
}
