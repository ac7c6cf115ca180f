//! Publishing with publisher confirms on the session's shared channel.

use std::time::Instant;

use event_core::broker::{BrokerError, Message, PublishError, Receipt};
use event_core::headers::names;
use lapin::Confirmation;
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;

use crate::BROKER_NAME;
use crate::connection::{Shared, Wait};
use crate::error::AmqpBackendError;
use crate::wire;

const UNROUTABLE_HINT: &str = "no queue is bound to this routing key on the exchange: start a \
    subscriber (or declare and bind a queue) before publishing";

/// Publishes `message` and waits for its confirm; retries on a new connection when the
/// connection drops before the confirm (at-least-once), until the publish timeout.
pub(crate) async fn publish(
    shared: &Shared,
    topic: &str,
    message: Message,
) -> Result<Receipt, PublishError> {
    let fail = |message: Message, error: BrokerError| Err(PublishError::new(topic, message, error));
    let backend = |error: AmqpBackendError| BrokerError::Backend {
        broker: BROKER_NAME,
        operation: "publish",
        source: Box::new(error),
    };
    let routing_key = match ShortString::try_new(topic) {
        Ok(key) => key,
        Err(_) => {
            return fail(
                message,
                BrokerError::InvalidTopic {
                    topic: topic.to_owned(),
                    reason: "an AMQP routing key is at most 255 bytes",
                },
            );
        }
    };
    let mut properties = match wire::to_amqp(topic, &message, shared.config.wire) {
        Ok(p) => Some(p),
        Err(error) => return fail(message, backend(error)),
    };
    // a dead letter stands for a message acknowledged once it is published: it must be in a
    // queue, whatever the setting
    let mandatory =
        shared.config.mandatory || message.headers.contains(names::X_EVENT_ORIGINAL_TOPIC);
    let _in_flight = shared.track_publish();
    let started = Instant::now();
    let timeout = shared.config.publish_timeout;
    let deadline = started + timeout;
    // the broker closed the publishing channel over a publish (a message over its
    // max_message_size, say): it may have been this one or another in flight beside it, so
    // it is sent once more on a new channel, and refused with the broker's reason if the
    // broker closes that one too
    let mut channel_refusals = 0u32;
    loop {
        let session = match shared.wait_up(Some(deadline)).await {
            Wait::Up(session) => session,
            Wait::Closed => {
                return fail(
                    message,
                    BrokerError::Closed {
                        broker: BROKER_NAME,
                        address: shared.config.address.clone(),
                    },
                );
            }
            Wait::TimedOut => {
                return fail(
                    message,
                    BrokerError::Unavailable {
                        broker: BROKER_NAME,
                        address: shared.config.address.clone(),
                        waited: started.elapsed(),
                    },
                );
            }
        };
        // the first attempt takes the properties; a retry (rare) builds them again
        let attempt_properties = match properties.take() {
            Some(p) => p,
            None => match wire::to_amqp(topic, &message, shared.config.wire) {
                Ok(p) => p,
                Err(error) => return fail(message, backend(error)),
            },
        };
        let attempt = async {
            session
                .publisher
                .basic_publish(
                    shared.exchange.clone(),
                    routing_key.clone(),
                    BasicPublishOptions {
                        mandatory,
                        immediate: false,
                    },
                    &message.payload,
                    attempt_properties,
                )
                .await?
                .await
        };
        match tokio::time::timeout_at(deadline.into(), attempt).await {
            Ok(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)) => {
                return Ok(Receipt::new(wire::confirmed()));
            }
            Ok(Ok(Confirmation::Ack(Some(_returned)))) => {
                return fail(
                    message,
                    BrokerError::Unroutable {
                        broker: BROKER_NAME,
                        topic: topic.to_owned(),
                        hint: UNROUTABLE_HINT,
                    },
                );
            }
            Ok(Ok(Confirmation::Nack(_))) => {
                return fail(
                    message,
                    backend(AmqpBackendError::Nacked {
                        routing_key: topic.to_owned(),
                    }),
                );
            }
            Ok(Err(error)) => {
                let refused_by_broker = matches!(error.kind(), lapin::ErrorKind::ProtocolError(_))
                    && session.connection.status().connected();
                if refused_by_broker {
                    channel_refusals += 1;
                    if channel_refusals > 1 {
                        shared.kick();
                        return fail(message, backend(error.into()));
                    }
                }
                // The channel or connection failed before the confirm: the broker may or may
                // not have the message. Send it again on the next connection (at-least-once).
                tracing::debug!(
                    topic,
                    generation = session.generation,
                    error = %error,
                    "publish interrupted; retrying on the next connection"
                );
                shared.kick();
                if session.is_usable() {
                    // not a connection problem: the broker refused the publish
                    return fail(message, backend(error.into()));
                }
            }
            Err(_elapsed) => {
                return fail(
                    message,
                    BrokerError::Timeout {
                        broker: BROKER_NAME,
                        operation: "publish (waiting for the publisher confirm)",
                        timeout,
                    },
                );
            }
        }
    }
}
