//! Requests off the wire and replies onto it.
//!
//! A request is a RESP array of bulk strings (what every client sends) or an inline command
//! (a line of words, for `telnet` and `nc`). Before a frame is handed to `redis-protocol` for
//! decoding, its declared lengths are checked against the limits, so that a client cannot make
//! the gateway buffer more than the limits allow or nest arrays until the decoder's recursion
//! runs out of stack; a frame that breaks them ends the connection, as Redis does, because the
//! rest of the stream cannot be resynchronised.

use bytes::{Buf, Bytes, BytesMut};
use redis_protocol::resp2::types::BytesFrame as Frame2;
use redis_protocol::resp3::types::BytesFrame as Frame3;

/// The most arguments a request may have.
pub(crate) const MAX_ARGS: usize = 1024 * 1024;
/// The longest inline command.
pub(crate) const MAX_INLINE: usize = 64 * 1024;
/// The longest length prefix (`*` or `$`, digits, CRLF) a well-formed request has.
const MAX_PREFIX: usize = 24;

/// Why a request cannot be read; the connection ends after its error reply.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A length prefix that is not a number.
    #[error("Protocol error: invalid {what} length")]
    InvalidLength {
        /// `multibulk` or `bulk`.
        what: &'static str,
    },
    /// An argument longer than the configured limit.
    #[error("Protocol error: bulk string of {declared} bytes, over the limit of {limit} bytes")]
    BulkTooLarge {
        /// The declared length.
        declared: u64,
        /// The limit (`--max-bulk`).
        limit: usize,
    },
    /// A request whose arguments add up to more than the configured limit.
    #[error("Protocol error: request of more than {limit} bytes")]
    RequestTooLarge {
        /// The limit (four times `--max-bulk`).
        limit: usize,
    },
    /// More than 1,048,576 arguments.
    #[error("Protocol error: {declared} arguments, over the limit of {limit}")]
    TooManyArguments {
        /// The declared count.
        declared: u64,
        /// The limit.
        limit: usize,
    },
    /// More than 10 arguments from a client that has not authenticated (as Redis refuses).
    #[error("Protocol error: unauthenticated multibulk length")]
    UnauthenticatedArguments,
    /// An argument of more than 16 KiB from a client that has not authenticated (as Redis
    /// refuses).
    #[error("Protocol error: unauthenticated bulk length")]
    UnauthenticatedBulk,
    /// An array element that is not a bulk string.
    #[error("Protocol error: expected '$', got '{found}'")]
    ExpectedBulk {
        /// The byte found instead, escaped.
        found: String,
    },
    /// An inline command without an end of line within 64 KiB.
    #[error("Protocol error: too big inline request")]
    InlineTooLong,
    /// The decoder refused a frame the length checks let through.
    #[error("Protocol error: {reason}")]
    Malformed {
        /// What the decoder said.
        reason: String,
    },
}

/// The limits a request is checked against.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) max_bulk: usize,
    pub(crate) max_request: usize,
    /// The client has not authenticated (and a password is set): Redis's far smaller limits
    /// apply, so that nobody holds a gateway's memory without the password.
    pub(crate) unauthenticated: bool,
}

/// The most arguments of a request before authentication (Redis's limit).
const UNAUTHENTICATED_ARGS: i64 = 10;
/// The longest argument before authentication (Redis's limit).
const UNAUTHENTICATED_BULK: u64 = 16 * 1024;

/// How far the checks of an incomplete request got: they go on from there when more bytes
/// arrive, instead of reading the request from its start again (which, for a request of a
/// million small arguments arriving in pieces, would take seconds).
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// Arguments checked.
    seen: usize,
    /// Where the next one starts (0: nothing checked yet).
    at: usize,
}

/// Takes the next complete request off `buf`: `Ok(None)` while more bytes are needed. An
/// empty request (`*0`, a blank line) comes out as an empty vector. `scan` carries what was
/// checked of an incomplete request from one call to the next, for the same `buf`.
pub(crate) fn next_request(
    buf: &mut BytesMut,
    limits: Limits,
    scan: &mut Scan,
) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let result = match buf.first() {
        None => Ok(None),
        Some(b'*') => multibulk(buf, limits, scan),
        Some(_) => inline(buf),
    };
    if !matches!(result, Ok(None)) {
        *scan = Scan::default();
    }
    result
}

/// Reads a `<marker><number>\r\n` prefix at `at`: `Ok(None)` while incomplete; the number and
/// the offset after the prefix.
fn prefix(
    buf: &[u8],
    at: usize,
    what: &'static str,
) -> Result<Option<(i64, usize)>, ProtocolError> {
    let window = &buf[at..buf.len().min(at + MAX_PREFIX)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        return if window.len() == MAX_PREFIX {
            Err(ProtocolError::InvalidLength { what })
        } else {
            Ok(None)
        };
    };
    if window.len() < cr + 2 {
        return Ok(None);
    }
    if window[cr + 1] != b'\n' {
        return Err(ProtocolError::InvalidLength { what });
    }
    let number = std::str::from_utf8(&window[1..cr])
        .ok()
        .and_then(|digits| digits.parse::<i64>().ok())
        .ok_or(ProtocolError::InvalidLength { what })?;
    Ok(Some((number, at + cr + 2)))
}

fn multibulk(
    buf: &mut BytesMut,
    limits: Limits,
    scan: &mut Scan,
) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let Some((count, header_end)) = prefix(buf, 0, "multibulk")? else {
        return Ok(None);
    };
    let (mut seen, mut at) = if scan.at == 0 {
        (0, header_end)
    } else {
        (scan.seen, scan.at)
    };
    if count <= 0 {
        buf.advance(at);
        return Ok(Some(Vec::new()));
    }
    if limits.unauthenticated && count > UNAUTHENTICATED_ARGS {
        return Err(ProtocolError::UnauthenticatedArguments);
    }
    if count as u64 > MAX_ARGS as u64 {
        return Err(ProtocolError::TooManyArguments {
            declared: count as u64,
            limit: MAX_ARGS,
        });
    }
    while seen < count as usize {
        let Some(&marker) = buf.get(at) else {
            *scan = Scan { seen, at };
            return Ok(None);
        };
        if marker != b'$' {
            return Err(ProtocolError::ExpectedBulk {
                found: std::ascii::escape_default(marker).to_string(),
            });
        }
        let Some((len, data)) = prefix(buf, at, "bulk")? else {
            *scan = Scan { seen, at };
            return Ok(None);
        };
        let len = u64::try_from(len).map_err(|_| ProtocolError::InvalidLength { what: "bulk" })?;
        if limits.unauthenticated && len > UNAUTHENTICATED_BULK {
            return Err(ProtocolError::UnauthenticatedBulk);
        }
        if len > limits.max_bulk as u64 {
            return Err(ProtocolError::BulkTooLarge {
                declared: len,
                limit: limits.max_bulk,
            });
        }
        let end = data + len as usize;
        let next = end + 2;
        if next > limits.max_request {
            return Err(ProtocolError::RequestTooLarge {
                limit: limits.max_request,
            });
        }
        // the decoder skips the two bytes after a bulk string without looking at them
        match buf.get(end..next) {
            Some(b"\r\n") => {}
            None => {
                // its bytes have not all arrived: go on from this argument next time
                *scan = Scan { seen, at };
                return Ok(None);
            }
            Some(_) => {
                return Err(ProtocolError::Malformed {
                    reason: "a bulk string must end with CRLF".to_owned(),
                });
            }
        }
        at = next;
        seen += 1;
    }
    if buf.len() < at {
        return Ok(None);
    }
    let frame = buf.split_to(at).freeze();
    match redis_protocol::resp2::decode::decode_bytes(&frame) {
        Ok(Some((Frame2::Array(items), used))) if used == at => items
            .into_iter()
            .map(|item| match item {
                Frame2::BulkString(bytes) => Ok(bytes),
                other => Err(ProtocolError::Malformed {
                    reason: format!("expected a bulk string, got {other:?}"),
                }),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Ok(_) => Err(ProtocolError::Malformed {
            reason: "a request is an array of bulk strings".to_owned(),
        }),
        Err(error) => Err(ProtocolError::Malformed {
            reason: error.details().to_owned(),
        }),
    }
}

fn inline(buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let Some(newline) = buf.iter().take(MAX_INLINE).position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_INLINE {
            Err(ProtocolError::InlineTooLong)
        } else {
            Ok(None)
        };
    };
    let line = buf.split_to(newline + 1).freeze();
    Ok(Some(
        line.split(|b| b.is_ascii_whitespace())
            .filter(|word| !word.is_empty())
            .map(|word| line.slice_ref(word))
            .collect(),
    ))
}

/// The protocol a connection speaks, chosen with `HELLO`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    Resp2,
    Resp3,
}

/// A reply, written in the connection's protocol.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Reply {
    /// `+text`
    Simple(&'static str),
    /// `-text`: the text starts with its code (`ERR`, `NOGROUP`, ...).
    Error(String),
    /// `:n`
    Int(i64),
    /// `$len bytes`
    Bulk(Bytes),
    /// RESP2 `$-1`, RESP3 `_`.
    Null,
    /// RESP2 `*-1` (what Redis answers for a read that found nothing), RESP3 `_`.
    NullArray,
    /// An array.
    Array(Vec<Reply>),
    /// RESP3 map; RESP2 a flat array of keys and values.
    Map(Vec<(Reply, Reply)>),
    /// RESP3 push; RESP2 an array.
    Push(Vec<Reply>),
}

impl Reply {
    /// `+OK`
    pub(crate) const OK: Reply = Reply::Simple("OK");

    /// An `ERR` error.
    pub(crate) fn err(text: impl std::fmt::Display) -> Reply {
        Reply::Error(format!("ERR {text}"))
    }

    /// An error reply's text as it may go on the wire: a simple error ends at the first CR or
    /// LF, and many errors quote what the client sent, so those become spaces (as Redis does).
    fn error_line(text: String) -> String {
        if text.contains(['\r', '\n']) {
            text.replace(['\r', '\n'], " ")
        } else {
            text
        }
    }

    /// A bulk string of `text`.
    pub(crate) fn text(text: impl Into<String>) -> Reply {
        Reply::Bulk(Bytes::from(text.into()))
    }

    /// A bulk string of a static text.
    pub(crate) fn bulk_static(text: &'static str) -> Reply {
        Reply::Bulk(Bytes::from_static(text.as_bytes()))
    }

    /// Whether it is an error.
    pub(crate) fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    /// Appends the reply to `out`.
    pub(crate) fn write(self, protocol: Protocol, out: &mut BytesMut) {
        match protocol {
            Protocol::Resp2 => self.write_resp2(out),
            Protocol::Resp3 => {
                // encoding a frame we built cannot fail: the buffer is grown to fit first
                let written = redis_protocol::resp3::encode::complete::extend_encode(
                    out,
                    &self.into_resp3(),
                    false,
                );
                debug_assert!(written.is_ok(), "{written:?}");
            }
        }
    }

    /// Appends the reply in RESP2, written here: RESP2's null array (`*-1`), which Redis
    /// answers for a read that found nothing, has no frame in the protocol crate.
    fn write_resp2(self, out: &mut BytesMut) {
        use std::fmt::Write as _;
        // writing to a BytesMut cannot fail
        match self {
            Reply::Simple(text) => {
                let _ = write!(out, "+{text}\r\n");
            }
            Reply::Error(text) => {
                let _ = write!(out, "-{}\r\n", Reply::error_line(text));
            }
            Reply::Int(n) => {
                let _ = write!(out, ":{n}\r\n");
            }
            Reply::Bulk(bytes) => {
                let _ = write!(out, "${}\r\n", bytes.len());
                out.extend_from_slice(&bytes);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Null => out.extend_from_slice(b"$-1\r\n"),
            Reply::NullArray => out.extend_from_slice(b"*-1\r\n"),
            Reply::Array(items) | Reply::Push(items) => {
                let _ = write!(out, "*{}\r\n", items.len());
                for item in items {
                    item.write_resp2(out);
                }
            }
            Reply::Map(pairs) => {
                let _ = write!(out, "*{}\r\n", pairs.len() * 2);
                for (key, value) in pairs {
                    key.write_resp2(out);
                    value.write_resp2(out);
                }
            }
        }
    }

    fn into_resp3(self) -> Frame3 {
        match self {
            Reply::Simple(text) => Frame3::SimpleString {
                data: Bytes::from_static(text.as_bytes()),
                attributes: None,
            },
            Reply::Error(text) => Frame3::SimpleError {
                data: Reply::error_line(text).into(),
                attributes: None,
            },
            Reply::Int(n) => Frame3::Number {
                data: n,
                attributes: None,
            },
            Reply::Bulk(bytes) => Frame3::BlobString {
                data: bytes,
                attributes: None,
            },
            Reply::Null | Reply::NullArray => Frame3::Null,
            Reply::Array(items) => Frame3::Array {
                data: items.into_iter().map(Reply::into_resp3).collect(),
                attributes: None,
            },
            Reply::Push(items) => Frame3::Push {
                data: items.into_iter().map(Reply::into_resp3).collect(),
                attributes: None,
            },
            Reply::Map(pairs) => Frame3::Map {
                data: pairs
                    .into_iter()
                    .map(|(k, v)| (k.into_resp3(), v.into_resp3()))
                    .collect(),
                attributes: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_bulk: 16,
        max_request: 64,
        unauthenticated: false,
    };

    fn read(bytes: &[u8]) -> (Result<Option<Vec<Bytes>>, ProtocolError>, usize) {
        let mut buf = BytesMut::from(bytes);
        let result = next_request(&mut buf, LIMITS, &mut Scan::default());
        (result, buf.len())
    }

    #[test]
    fn a_request_is_read_whole_or_not_at_all() {
        let full = b"*2\r\n$4\r\nPING\r\n$2\r\nhi\r\n";
        for cut in 1..full.len() {
            assert_eq!(read(&full[..cut]), (Ok(None), cut), "cut at {cut}");
        }
        let (result, left) = read(full);
        assert_eq!(
            result.unwrap().unwrap(),
            vec![Bytes::from("PING"), Bytes::from("hi")]
        );
        assert_eq!(left, 0);
    }

    #[test]
    fn pipelined_requests_come_out_one_by_one() {
        let mut buf = BytesMut::from(&b"*1\r\n$4\r\nPING\r\nECHO a\r\n*0\r\n"[..]);
        let scan = &mut Scan::default();
        assert_eq!(
            next_request(&mut buf, LIMITS, scan).unwrap().unwrap(),
            vec![Bytes::from("PING")]
        );
        assert_eq!(
            next_request(&mut buf, LIMITS, scan).unwrap().unwrap(),
            vec![Bytes::from("ECHO"), Bytes::from("a")]
        );
        assert_eq!(
            next_request(&mut buf, LIMITS, scan).unwrap().unwrap(),
            Vec::<Bytes>::new()
        );
        assert_eq!(next_request(&mut buf, LIMITS, scan).unwrap(), None);
    }

    #[test]
    fn limits_are_checked_on_the_declared_lengths() {
        // the 17-byte bulk is refused before its bytes arrive
        assert_eq!(
            read(b"*1\r\n$17\r\n").0,
            Err(ProtocolError::BulkTooLarge {
                declared: 17,
                limit: 16
            })
        );
        assert_eq!(
            read(b"*9\r\n$16\r\n0123456789abcdef\r\n$16\r\n0123456789abcdef\r\n$16\r\n0123456789abcdef\r\n").0,
            Err(ProtocolError::RequestTooLarge { limit: 64 })
        );
        assert!(matches!(
            read(b"*99999999\r\n").0,
            Err(ProtocolError::TooManyArguments { .. })
        ));
        assert!(matches!(
            read(b"*1\r\n*1\r\n").0,
            Err(ProtocolError::ExpectedBulk { .. })
        ));
        assert!(matches!(
            read(b"*x\r\n").0,
            Err(ProtocolError::InvalidLength { .. })
        ));
        assert!(matches!(
            read(b"*1\r\n$-5\r\n").0,
            Err(ProtocolError::InvalidLength { .. })
        ));
        assert!(matches!(
            read(b"*1\r\n$1234567890123456789012345\r\n").0,
            Err(ProtocolError::InvalidLength { .. })
        ));
        // the bytes after a bulk must be CRLF: the decoder says so
        assert!(matches!(
            read(b"*1\r\n$2\r\nhiXX").0,
            Err(ProtocolError::Malformed { .. })
        ));
    }

    #[test]
    fn a_request_arriving_in_pieces_is_checked_once() {
        let full = b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$5\r\nhello\r\n";
        let mut buf = BytesMut::new();
        let mut scan = Scan::default();
        for (i, byte) in full.iter().enumerate() {
            buf.extend_from_slice(&[*byte]);
            let result = next_request(&mut buf, LIMITS, &mut scan).unwrap();
            if i + 1 < full.len() {
                assert_eq!(result, None, "after {} bytes", i + 1);
            } else {
                assert_eq!(
                    result.unwrap(),
                    vec![Bytes::from("SET"), Bytes::from("a"), Bytes::from("hello")]
                );
            }
        }
        assert!(buf.is_empty());
        assert_eq!((scan.seen, scan.at), (0, 0), "reset for the next request");
    }

    #[test]
    fn before_authentication_requests_are_small() {
        let limits = Limits {
            max_bulk: 1 << 20,
            max_request: 4 << 20,
            unauthenticated: true,
        };
        let read =
            |bytes: &[u8]| next_request(&mut BytesMut::from(bytes), limits, &mut Scan::default());
        // refused from the prefix alone, before the bytes arrive
        assert_eq!(
            read(b"*11\r\n"),
            Err(ProtocolError::UnauthenticatedArguments)
        );
        assert_eq!(
            read(b"*2\r\n$4\r\nAUTH\r\n$16385\r\n"),
            Err(ProtocolError::UnauthenticatedBulk)
        );
        assert_eq!(read(b"*10\r\n"), Ok(None), "ten arguments are fine");
        assert_eq!(read(b"*1\r\n$16384\r\n"), Ok(None), "and 16 KiB");
        let authenticated = Limits {
            unauthenticated: false,
            ..limits
        };
        assert_eq!(
            next_request(
                &mut BytesMut::from(&b"*11\r\n"[..]),
                authenticated,
                &mut Scan::default()
            ),
            Ok(None)
        );
    }

    #[test]
    fn error_replies_stay_on_one_line() {
        let mut out = BytesMut::new();
        Reply::err("no group 'g\r\n:1'").write(Protocol::Resp2, &mut out);
        assert_eq!(&out[..], b"-ERR no group 'g  :1'\r\n");
    }

    #[test]
    fn inline_commands_split_on_whitespace() {
        let (result, _) = read(b"SET  a\tb\r\n");
        assert_eq!(
            result.unwrap().unwrap(),
            vec![Bytes::from("SET"), Bytes::from("a"), Bytes::from("b")]
        );
        assert_eq!(
            read(&[b'x'; MAX_INLINE]).0,
            Err(ProtocolError::InlineTooLong)
        );
    }

    #[test]
    fn replies_in_both_protocols() {
        let reply = || {
            Reply::Map(vec![(
                Reply::bulk_static("k"),
                Reply::Array(vec![Reply::Int(1), Reply::Null]),
            )])
        };
        let mut out = BytesMut::new();
        reply().write(Protocol::Resp2, &mut out);
        assert_eq!(&out[..], b"*2\r\n$1\r\nk\r\n*2\r\n:1\r\n$-1\r\n");
        out.clear();
        reply().write(Protocol::Resp3, &mut out);
        assert_eq!(&out[..], b"%1\r\n$1\r\nk\r\n*2\r\n:1\r\n_\r\n");
        out.clear();
        Reply::Push(vec![Reply::bulk_static("message")]).write(Protocol::Resp3, &mut out);
        assert_eq!(&out[..], b">1\r\n$7\r\nmessage\r\n");
    }
}
