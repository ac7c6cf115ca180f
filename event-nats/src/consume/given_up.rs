//! Messages JetStream gave up delivering: those that reached the consumer's `max_deliver`.
//!
//! The server stops delivering such a message and says so in an advisory
//! (`$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>`). Each subscription
//! listens for its consumer's (a queue group's members in a queue group of their own, so that
//! one of them takes each), reads the message from the stream by its sequence (the stream's
//! message-get API, whose JSON carries the header block as bytes), and hands it to the
//! delivery loop marked [undeliverable](event_core::broker::Delivery::undeliverable): the loop
//! dead-letters it without running the handler, and the acknowledgement then settles it with
//! the consumer (an `+ACK` on the subject the server would have sent it with), which lets the
//! consumer's acknowledgement floor pass it.
//!
//! Two kinds of message get there. One whose every delivery ended without an outcome: the
//! member it went to crashed, or lost its connection, while it was on its way or in a handler
//! (a message that makes its handler's process crash comes back to every member). And one
//! the client cannot read at all: async-nats drops the connection when a header block has a
//! name that is not printable ASCII (or a line without a colon), so such a message never
//! reaches the subscription, and without a limit it would be redelivered, with the
//! connection dropped, every `AckWait`, forever. Its header block is read here line by line:
//! the readable headers are kept, and the lines that are not are kept as they were in
//! [`UNREADABLE_HEADERS`](crate::UNREADABLE_HEADERS).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_nats::{HeaderMap, HeaderName, HeaderValue};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use event_core::backend::Incoming;
use event_core::broker::Delivery;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{NatsAcker, Sub};
use crate::wire;

/// The subject of every consumer's max-deliveries advisory (the last two tokens are the
/// stream and the consumer).
const ADVISORIES: &str = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.*.*";

/// The advisory the server sends when a message reached its consumer's `max_deliver`.
#[derive(Debug, Deserialize)]
struct Advisory {
    stream: String,
    consumer: String,
    stream_seq: u64,
    deliveries: u64,
}

/// The answer of `STREAM.MSG.GET`.
#[derive(Debug, Deserialize)]
struct MessageGet {
    message: Option<StoredMessage>,
    error: Option<ApiError>,
}

#[derive(Debug, Deserialize)]
struct StoredMessage {
    subject: String,
    /// The header block, base64.
    #[serde(default)]
    hdrs: Option<String>,
    /// The payload, base64.
    #[serde(default)]
    data: String,
}

#[derive(Debug, Deserialize)]
struct ApiError {
    code: u16,
    #[serde(default)]
    description: String,
}

/// A header block read leniently: what async-nats would make of it, and the lines it could
/// not read.
#[derive(Debug, Default)]
pub(super) struct HeaderBlock {
    pub(super) map: HeaderMap,
    /// The lines that could not be read, as they were.
    pub(super) unreadable: Vec<Vec<u8>>,
    /// Why each could not be read.
    pub(super) problems: Vec<String>,
}

/// Reads a NATS header block (`NATS/1.0…` CRLF, then `name: value` lines), keeping what
/// async-nats reads as it would (a value folded onto the next lines, trimmed) and setting
/// aside every line it would refuse: a name that is not printable ASCII without a colon, a
/// value that is not UTF-8, a line without a colon.
pub(super) fn read_header_block(block: &[u8]) -> HeaderBlock {
    let mut read = HeaderBlock::default();
    let mut lines = block
        .split(|b| *b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    // the version line, with a status after it on a status message
    let _ = lines.next();
    let mut lines = lines.filter(|line| !line.is_empty()).peekable();
    let mut index = 0;
    while let Some(line) = lines.next() {
        let mut whole = line.to_vec();
        while let Some(next) =
            lines.next_if(|l| l.first().is_some_and(|b| *b == b' ' || *b == b'\t'))
        {
            whole.extend_from_slice(next);
        }
        match header(&whole) {
            Ok((name, value)) => {
                read.map.append(name, value);
            }
            Err(problem) => {
                read.problems.push(format!(
                    "header {index} ({}): {problem}",
                    whole.escape_ascii()
                ));
                read.unreadable.push(whole);
            }
        }
        index += 1;
    }
    read
}

/// One `name: value` line (with its folded continuation) as async-nats reads it.
fn header(line: &[u8]) -> Result<(HeaderName, HeaderValue), &'static str> {
    let colon = line
        .iter()
        .position(|b| *b == b':')
        .ok_or("no colon between a name and a value")?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    let name = std::str::from_utf8(name)
        .ok()
        .and_then(|name| name.parse::<HeaderName>().ok())
        .ok_or("the name is not printable ASCII")?;
    let value = std::str::from_utf8(value).map_err(|_| "the value is not UTF-8")?;
    let value = value
        .trim()
        .parse::<HeaderValue>()
        .map_err(|_| "the value cannot be a header value")?;
    Ok((name, value))
}

/// Listens for the advisories of the subscription's consumer until `stop`, and hands each
/// message they name to the delivery loop through `tx`.
pub(super) async fn watch(
    sub: Arc<Sub>,
    tx: mpsc::UnboundedSender<Incoming<NatsAcker>>,
    stop: CancellationToken,
) {
    let subscribed = match &sub.spec.durable {
        // one member of the group takes each advisory
        Some(durable) => {
            sub.client
                .queue_subscribe(ADVISORIES, format!("event-nats-given-up.{durable}"))
                .await
        }
        None => sub.client.subscribe(ADVISORIES).await,
    };
    let mut advisories = match subscribed {
        Ok(advisories) => advisories,
        Err(error) => {
            tracing::warn!(topic = %sub.spec.topic, %error, "cannot listen for the consumer's max-deliveries advisories: a message that reaches max_deliver is not dead-lettered");
            return;
        }
    };
    loop {
        let advisory = tokio::select! {
            () = stop.cancelled() => break,
            advisory = advisories.next() => match advisory {
                Some(advisory) => advisory,
                None => break,
            },
        };
        let Ok(advisory) = serde_json::from_slice::<Advisory>(&advisory.payload) else {
            continue;
        };
        let ours = {
            let current = sub.current();
            current.stream == advisory.stream && current.consumer == advisory.consumer
        };
        if !ours {
            continue;
        }
        match recover(&sub, &advisory).await {
            Ok(incoming) => {
                sub.queued.fetch_add(1, Ordering::AcqRel);
                if let Err(mpsc::error::SendError(incoming)) = tx.send(incoming) {
                    sub.queued.fetch_sub(1, Ordering::AcqRel);
                    incoming.acker.abandon_now();
                    break;
                }
            }
            Err(error) => tracing::error!(
                topic = %sub.spec.topic,
                stream = %advisory.stream,
                sequence = advisory.stream_seq,
                deliveries = advisory.deliveries,
                %error,
                "JetStream gave up delivering a message (max_deliver), and it cannot be read from the stream to be dead-lettered; it stays in the stream, delivered no more"
            ),
        }
    }
    let _ = advisories.unsubscribe().await;
}

/// A message read here was given back (the subscription stopped before its dead letter was
/// published): the server does not deliver it again, whatever it is told.
pub(super) fn given_back(sub: &Sub, reply: &async_nats::Subject) {
    tracing::warn!(
        topic = %sub.spec.topic,
        %reply,
        "a message JetStream gave up delivering was given back before its dead letter was published: it stays in the stream, delivered no more"
    );
}

/// Reads the message an advisory names from its stream, as a delivery the loop dead-letters.
async fn recover(sub: &Arc<Sub>, advisory: &Advisory) -> Result<Incoming<NatsAcker>, String> {
    let sequence = advisory.stream_seq;
    let answer: MessageGet = sub
        .js
        .request(
            format!("STREAM.MSG.GET.{}", advisory.stream),
            &serde_json::json!({ "seq": sequence }),
        )
        .await
        .map_err(|e| e.to_string())?;
    let stored = match (answer.message, answer.error) {
        (Some(stored), _) => stored,
        (None, Some(error)) => {
            return Err(format!(
                "the server answered {} {}",
                error.code, error.description
            ));
        }
        (None, None) => return Err("the server answered without the message".to_owned()),
    };
    let payload = STANDARD
        .decode(stored.data)
        .map_err(|e| format!("its payload is not base64: {e}"))?;
    let block = match stored.hdrs {
        Some(hdrs) => {
            Some(read_header_block(&STANDARD.decode(hdrs).map_err(|e| {
                format!("its header block is not base64: {e}")
            })?))
        }
        None => None,
    };
    let topic = &sub.spec.topic;
    if stored.subject != **topic {
        tracing::debug!(%topic, subject = %stored.subject, sequence, "a message given up on, stored under another subject than the topic");
    }
    let mut message = wire::received(
        topic,
        block.as_ref().map(|block| &block.map),
        Bytes::from(payload),
        sub.spec.go_micro_envelope,
    );
    let limit = sub.inner.config.max_deliver;
    let reason = match &block {
        Some(block) if !block.unreadable.is_empty() => {
            message.headers.append(
                crate::UNREADABLE_HEADERS,
                Bytes::from(block.unreadable.join(&b"\r\n"[..])),
            );
            format!(
                "JetStream gave up delivering it after {} deliveries (max_deliver {limit}): the NATS client cannot read its header block, so no delivery reached a handler ({}); its readable headers are kept, the others as they were in {}",
                advisory.deliveries,
                block.problems.join("; "),
                crate::UNREADABLE_HEADERS
            )
        }
        _ => format!(
            "JetStream gave up delivering it after {} deliveries (max_deliver {limit}) without an outcome: each time, the member it went to stopped or lost its connection before its handler finished (a message that makes its handler's process crash comes back to every member)",
            advisory.deliveries
        ),
    };
    let deliveries = i64::try_from(advisory.deliveries).unwrap_or(i64::MAX);
    let delivery = Delivery::new(
        topic.clone(),
        message,
        wire::stream_position(sequence, deliveries),
    )
    .with_attempt(u32::try_from(advisory.deliveries).unwrap_or(u32::MAX))
    .undeliverable(reason);
    // the subject the server would have sent it with: stream, consumer, deliveries, stream
    // sequence (the consumer sequence, time and pending count are not read by an ack)
    let reply = format!(
        "$JS.ACK.{}.{}.{}.{sequence}.0.0.0",
        advisory.stream, advisory.consumer, advisory.deliveries
    );
    Ok(Incoming {
        delivery,
        acker: NatsAcker {
            sub: sub.clone(),
            key: None,
            reply: reply.into(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_block_keeps_what_reads_and_sets_aside_what_does_not() {
        let block = b"NATS/1.0\r\n\xff\xfename: v\r\nce_type: users.v1.UserCreated\r\nfolded: one\r\n two\r\nno colon here\r\nbad-value: \xc3\r\ntenant:  t-1 \r\n\r\n";
        let read = read_header_block(block);
        assert_eq!(
            read.map.get("ce_type").map(HeaderValue::as_str),
            Some("users.v1.UserCreated")
        );
        assert_eq!(
            read.map.get("folded").map(HeaderValue::as_str),
            Some("one two")
        );
        assert_eq!(read.map.get("tenant").map(HeaderValue::as_str), Some("t-1"));
        assert_eq!(
            read.unreadable,
            [
                &b"\xff\xfename: v"[..],
                b"no colon here",
                b"bad-value: \xc3"
            ]
        );
        assert_eq!(
            read.problems,
            [
                r"header 0 (\xff\xfename: v): the name is not printable ASCII",
                "header 3 (no colon here): no colon between a name and a value",
                r"header 4 (bad-value: \xc3): the value is not UTF-8",
            ]
        );
    }

    #[test]
    fn a_status_line_and_an_empty_block_read_as_no_headers() {
        let read = read_header_block(b"NATS/1.0 503\r\n\r\n");
        assert!(read.map.is_empty() && read.unreadable.is_empty());
        assert!(read_header_block(b"").map.is_empty());
    }
}
