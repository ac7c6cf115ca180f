//! Messages JetStream gave up delivering: those that reached the consumer's `max_deliver`.
//!
//! The server stops delivering such a message and says so, once, in an advisory
//! (`$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>`). Each subscription
//! listens for its consumer's (a queue group's members in a queue group of their own, so that
//! one of them takes each), subscribed before its first pull request goes out. It reads the
//! message from the stream by its sequence (the stream's message-get API, whose JSON carries
//! the header block as bytes) and hands it to the delivery loop marked
//! [undeliverable](event_core::broker::Delivery::undeliverable): the loop dead-letters it
//! without running the handler, and its acknowledgement is an `+ACK` on the subject the server
//! would have sent it with (on nats-server 2.9, which the tests run, that lets the consumer's
//! acknowledgement floor pass it once nothing before it is pending).
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

use async_nats::{HeaderMap, HeaderName, HeaderValue};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use event_core::backend::Incoming;
use event_core::broker::Message;
use futures_util::{FutureExt, StreamExt};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{NatsAcker, Sub};
use crate::wire;

/// The subject of the consumers' max-deliveries advisories, before the stream and consumer
/// tokens.
const ADVISORIES: &str = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES";

/// The advisory the server sends when a message reached its consumer's `max_deliver`.
#[derive(Debug, Deserialize)]
struct Advisory {
    stream: String,
    consumer: String,
    stream_seq: u64,
    deliveries: u64,
}

impl Advisory {
    /// The subject the message's acknowledgement goes to.
    fn ack_subject(&self) -> String {
        let delivered = i64::try_from(self.deliveries).unwrap_or(i64::MAX);
        super::ack_subject(&self.stream, &self.consumer, delivered, self.stream_seq)
    }
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
pub(crate) struct HeaderBlock {
    pub(crate) map: HeaderMap,
    /// The lines that could not be read, as they were.
    pub(crate) unreadable: Vec<Vec<u8>>,
    /// Why each could not be read.
    pub(crate) problems: Vec<String>,
}

/// Reads a NATS header block (`NATS/1.0…` CRLF, then `name: value` lines), keeping what
/// async-nats reads as it would (a value folded onto the next lines, trimmed) and setting
/// aside, as it was, every header it would refuse: a line without a colon, a name with
/// anything but printable ASCII, a value that is not UTF-8.
pub(crate) fn read_header_block(block: &[u8]) -> HeaderBlock {
    let mut read = HeaderBlock::default();
    let mut lines = block
        .split(|b| *b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    // the version line, with a status after it on a status message
    let _ = lines.next();
    let mut lines = lines.filter(|line| !line.is_empty()).peekable();
    let mut index = 0;
    while let Some(line) = lines.next() {
        // with the lines folded onto it: kept as they were, read joined (as the client does)
        let mut whole = line.to_vec();
        let mut joined = line.to_vec();
        while let Some(next) = lines.next_if(|l| l.first().is_some_and(u8::is_ascii_whitespace)) {
            whole.extend_from_slice(b"\r\n");
            whole.extend_from_slice(next);
            joined.extend_from_slice(next);
        }
        match header(&joined) {
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

/// The message read back from a stream: its readable headers as a consumed message's, and
/// the lines that could not be read in [`UNREADABLE_HEADERS`](crate::UNREADABLE_HEADERS).
pub(crate) fn recovered_message(
    topic: &str,
    block: Option<&HeaderBlock>,
    payload: Bytes,
    go_micro_envelope: bool,
) -> Message {
    let mut message = wire::received(
        topic,
        block.map(|block| &block.map),
        payload,
        go_micro_envelope,
    );
    if let Some(block) = block.filter(|block| !block.unreadable.is_empty()) {
        message.headers.append(
            crate::UNREADABLE_HEADERS,
            Bytes::from(block.unreadable.join(&b"\r\n"[..])),
        );
    }
    message
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

/// Subscribes to the advisories of the subscription's consumer: a queue group's in a queue
/// group of its members, a broadcast subscriber's (whose consumer's name changes when it is
/// made again) all of the account's, each checked against its consumer. Awaited before the
/// first pull request: the client sends its commands in order, so the server has the
/// subscription before it can give up on a message of that request. `None`, logged, when the
/// client cannot subscribe.
pub(super) async fn listen(sub: &Sub) -> Option<async_nats::Subscriber> {
    let (subject, group) = match &sub.spec.durable {
        Some(durable) => (
            format!("{ADVISORIES}.*.{durable}"),
            Some(format!("event-nats-given-up.{durable}")),
        ),
        None => (format!("{ADVISORIES}.*.*"), None),
    };
    let subscribed = match &group {
        Some(group) => {
            sub.client
                .queue_subscribe(subject.clone(), group.clone())
                .await
        }
        None => sub.client.subscribe(subject.clone()).await,
    };
    match subscribed {
        Ok(advisories) => Some(advisories),
        Err(error) => {
            tracing::warn!(
                topic = %sub.spec.topic,
                subject,
                group,
                error = %event_core::error_chain(&error),
                "cannot subscribe to the consumer's max-deliveries advisories: a message that reaches max_deliver is not dead-lettered"
            );
            None
        }
    }
}

/// Takes the advisories [`listen`] subscribed to until `stop`, and hands each message they
/// name to the delivery loop through `tx`.
pub(super) async fn watch(
    sub: Arc<Sub>,
    mut advisories: async_nats::Subscriber,
    tx: mpsc::UnboundedSender<Incoming<NatsAcker>>,
    stop: CancellationToken,
) {
    loop {
        let advisory = tokio::select! {
            () = stop.cancelled() => break,
            advisory = advisories.next() => match advisory {
                Some(advisory) => advisory,
                None => break,
            },
        };
        let Some(advisory) = ours(&sub, &advisory) else {
            continue;
        };
        let recovered = tokio::select! {
            () = stop.cancelled() => {
                lost(&sub, &advisory, "the subscription stopped while it was read from the stream");
                break;
            }
            recovered = recover(&sub, &advisory) => recovered,
        };
        match recovered {
            Ok(incoming) => {
                if !sub.hand_over(&tx, incoming) {
                    break;
                }
            }
            Err(Unrecovered::Gone(answer)) => {
                tracing::warn!(
                    topic = %sub.spec.topic,
                    stream = %advisory.stream,
                    sequence = advisory.stream_seq,
                    deliveries = advisory.deliveries,
                    answer,
                    "JetStream gave up delivering a message (max_deliver) that is no longer in the stream (removed by its limits, or deleted): nothing to dead-letter"
                );
                // settled all the same, as a dead-lettered one is
                let reply = advisory.ack_subject();
                let _ = sub
                    .client
                    .publish(reply, Bytes::from_static(super::ACK))
                    .await;
            }
            Err(Unrecovered::Failed(error)) => lost(&sub, &advisory, &error),
        }
    }
    let _ = advisories.unsubscribe().await;
    // each advisory is sent once: one that came meanwhile is lost for good
    while let Some(Some(advisory)) = advisories.next().now_or_never() {
        if let Some(advisory) = ours(&sub, &advisory) {
            lost(
                &sub,
                &advisory,
                "the subscription stopped before it was read from the stream",
            );
        }
    }
}

/// The advisory in `message` when it is about this subscription's consumer.
fn ours(sub: &Sub, message: &async_nats::Message) -> Option<Advisory> {
    let advisory = match serde_json::from_slice::<Advisory>(&message.payload) {
        Ok(advisory) => advisory,
        Err(error) => {
            tracing::debug!(topic = %sub.spec.topic, subject = %message.subject, %error, "an advisory that does not read as max-deliveries; skipped");
            return None;
        }
    };
    let current = sub.current();
    (current.stream == advisory.stream && current.consumer == advisory.consumer).then_some(advisory)
}

/// Logs a message given up on that cannot be dead-lettered, and why: it stays in the stream,
/// and the server delivers it no more.
fn lost(sub: &Sub, advisory: &Advisory, why: &str) {
    tracing::error!(
        topic = %sub.spec.topic,
        stream = %advisory.stream,
        consumer = %advisory.consumer,
        sequence = advisory.stream_seq,
        deliveries = advisory.deliveries,
        "JetStream gave up delivering a message (max_deliver), and it cannot be dead-lettered: {why}; it stays in the stream at this sequence, delivered no more"
    );
}

/// A message read here was given back (the subscription stopped before its dead letter was
/// published): the server does not deliver it again, whatever it is told.
pub(super) fn given_back(sub: &Sub, reply: &async_nats::Subject) {
    let sequence = super::ack_info(reply.as_str()).map(|(sequence, _)| sequence);
    let stream = sub.current().stream.clone();
    tracing::error!(
        topic = %sub.spec.topic,
        stream,
        sequence,
        "a message JetStream gave up delivering was given back before its dead letter was published: it stays in the stream at this sequence, delivered no more"
    );
}

/// Why a message given up on was not read.
enum Unrecovered {
    /// The stream no longer has it: the server's answer.
    Gone(String),
    /// Reading it failed: what was asked, and the error.
    Failed(String),
}

/// Reads the message an advisory names from its stream, as a delivery the loop dead-letters.
async fn recover(sub: &Arc<Sub>, advisory: &Advisory) -> Result<Incoming<NatsAcker>, Unrecovered> {
    let sequence = advisory.stream_seq;
    let asked = format!(
        "STREAM.MSG.GET of sequence {sequence} on stream {}",
        advisory.stream
    );
    let failed = |what: String| Unrecovered::Failed(format!("{asked}: {what}"));
    let answer: MessageGet = sub
        .js
        .request(
            format!("STREAM.MSG.GET.{}", advisory.stream),
            &serde_json::json!({ "seq": sequence }),
        )
        .await
        .map_err(|e| failed(event_core::error_chain(&e)))?;
    let stored = match (answer.message, answer.error) {
        (Some(stored), _) => stored,
        // "no message found" (error code 10037)
        (None, Some(error)) if error.code == 404 => {
            return Err(Unrecovered::Gone(format!(
                "{} {}",
                error.code, error.description
            )));
        }
        (None, Some(error)) => {
            return Err(failed(format!(
                "the server answered {} {}",
                error.code, error.description
            )));
        }
        (None, None) => return Err(failed("the answer has no message".to_owned())),
    };
    let payload = STANDARD
        .decode(stored.data)
        .map_err(|e| failed(format!("its payload is not base64: {e}")))?;
    let block = match stored.hdrs {
        Some(hdrs) => {
            Some(read_header_block(&STANDARD.decode(hdrs).map_err(|e| {
                failed(format!("its header block is not base64: {e}"))
            })?))
        }
        None => None,
    };
    let topic = &sub.spec.topic;
    if stored.subject != **topic {
        tracing::debug!(%topic, subject = %stored.subject, sequence, "a message given up on, stored under another subject than the topic");
    }
    let deliveries = advisory.deliveries;
    let unreadable = block.as_ref().filter(|block| !block.unreadable.is_empty());
    let reason = match unreadable {
        Some(block) => format!(
            "JetStream gave up delivering it after {deliveries} deliveries (the consumer's max_deliver): the NATS client cannot read its header block, so no delivery reached a handler ({}); its readable headers are kept, the others as they were in {}",
            block.problems.join("; "),
            crate::UNREADABLE_HEADERS
        ),
        None => format!(
            "JetStream gave up delivering it after {deliveries} deliveries (the consumer's max_deliver) without an outcome: each time, the member it went to stopped or lost its connection before its handler finished (a message that makes its handler's process crash comes back to every member; messages pulled right behind one the client cannot read are lost with the connection too)"
        ),
    };
    let message = recovered_message(
        topic,
        block.as_ref(),
        Bytes::from(payload),
        sub.spec.go_micro_envelope,
    );
    let delivered = i64::try_from(deliveries).unwrap_or(i64::MAX);
    Ok(Incoming {
        delivery: sub
            .delivery(message, sequence, delivered)
            .undeliverable(reason),
        acker: NatsAcker {
            sub: sub.clone(),
            key: None,
            reply: advisory.ack_subject().into(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_block_keeps_what_reads_and_sets_aside_what_does_not() {
        let block = b"NATS/1.0\r\n\xff\xfename: v\r\nce_type: users.v1.UserCreated\r\nfolded: one\r\n two\r\nno colon here\r\nbad-value: \xc3\r\n\tmore\r\ntenant:  t-1 \r\n\r\n";
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
                b"bad-value: \xc3\r\n\tmore"
            ]
        );
        assert_eq!(
            read.problems,
            [
                r"header 0 (\xff\xfename: v): the name is not printable ASCII",
                "header 3 (no colon here): no colon between a name and a value",
                r"header 4 (bad-value: \xc3\r\n\tmore): the value is not UTF-8",
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
