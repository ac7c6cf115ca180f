//! `nats_headers`: how event-nats reads the header block of a message JetStream gave up
//! delivering, one the client could not read (`given_up::read_header_block` and the message
//! made of it, through `event_nats::__fuzz`), and its dead letter's mapping.
//!
//! Input: the header block as it is (its first line is the version line, `NATS/1.0`); the
//! payload is fixed.
//!
//! Checks: no panic; the lines set aside, joined with CRLF, are the last
//! `x-nats-unreadable-headers` value of the message; and the message published as its dead
//! letter is (`to_nats`, which must not refuse it) and consumed again keeps every value of
//! that header byte for byte (in any order: a producer may have sent one of its own, under
//! another case, and NATS keeps the order of one name's values only), and the payload.

use bytes::Bytes;
use event_nats::__fuzz::{recovered, republished};
use event_nats::UNREADABLE_HEADERS;

const TOPIC: &str = "users.created";
const PAYLOAD: &[u8] = b"\x0a\x03u-1";

/// The values of `x-nats-unreadable-headers` (any case: a producer may have sent one of its
/// own), sorted: NATS keeps the order of one name's values, not that across names.
fn unreadable(message: &event_core::broker::Message) -> Vec<Vec<u8>> {
    let mut values: Vec<Vec<u8>> = message
        .headers
        .get_all(UNREADABLE_HEADERS)
        .map(|value| value.as_bytes().to_vec())
        .collect();
    values.sort();
    values
}

/// The target.
pub fn run(data: &[u8]) {
    let (message, lines) = recovered(TOPIC, data, Bytes::from_static(PAYLOAD));
    if crate::input::debug() {
        eprintln!("{message:?}, unreadable {lines:?}");
    }
    if !lines.is_empty() {
        let expected = lines.join(&b"\r\n"[..]);
        assert_eq!(
            message
                .headers
                .get_all(UNREADABLE_HEADERS)
                .last()
                .map(|value| value.as_bytes()),
            Some(&expected[..]),
            "the lines set aside are the header's last value"
        );
    }
    let again = republished(TOPIC, &message)
        .unwrap_or_else(|e| panic!("the dead letter's headers are refused: {e}"));
    assert_eq!(
        unreadable(&again),
        unreadable(&message),
        "the unreadable lines survive the dead letter's round trip"
    );
    assert_eq!(&again.payload[..], PAYLOAD);
}
