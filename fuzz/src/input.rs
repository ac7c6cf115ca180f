//! The byte format of the targets' inputs: read with [`Reader`] (over
//! [`arbitrary::Unstructured`]), written with [`Writer`] (seeds, regression inputs).
//!
//! - a *byte* is one byte (0 when the input is used up);
//! - a *blob* is a length byte, then that many bytes; the length byte 255 is followed by a
//!   little-endian u16 length instead (long values); a blob cut short by the end of the input
//!   is what is left;
//! - a *name* (a *value*) is an index byte into a table of realistic names (values); an index
//!   past the table is followed by a blob, the name (value) itself;
//! - *headers* are a count byte (modulo the target's maximum + 1), then that many name/value
//!   pairs;
//! - the *payload* is the rest of the input.

use arbitrary::Unstructured;
use event_core::Headers;

/// Header names of the event-core targets, picked by index.
pub const HEADER_NAMES: &[&str] = &[
    "content-type",
    "Content-Type",
    "ce_type",
    "ce_id",
    "ce_source",
    "ce_time",
    "ce_specversion",
    "cloudEvents_type",
    "cloudEvents:type",
    "cloudEvents_id",
    "CE_TYPE",
    "Micro-ID",
    "Micro-Topic",
    "__value_schema_id",
    "correlation-id",
    "traceparent",
    "tenant",
];

/// Header names of the AMQP target (keys of the header table), picked by index.
pub const AMQP_NAMES: &[&str] = &[
    "cloudEvents_type",
    "cloudEvents_id",
    "cloudEvents_source",
    "cloudEvents_time",
    "cloudEvents_specversion",
    "cloudEvents:type",
    "cloudEvents:id",
    "ce_type",
    "ce_id",
    "ce-type",
    "ce-id",
    "CE_TYPE",
    "CloudEvents_ID",
    "ce_",
    "cloudEvents_",
    "Content-Type",
    "content-type",
    "Micro-ID",
    "Micro-Topic",
    "x-event-key",
    "x-delivery-count",
    "x-death",
    "correlation-id",
    "traceparent",
    "tenant",
];

/// Header values (and AMQP strings), picked by index.
pub const VALUES: &[&[u8]] = &[
    b"application/protobuf",
    b"application/json",
    b"application/json; charset=utf-8",
    b"application/x-protobuf",
    b"application/octet-stream",
    b"application/grpc",
    b"application/grpc+proto",
    b"application/cloudevents+json",
    b"application/cloudevents+protobuf; charset=utf-8",
    b"application/cloudevents",
    b"text/plain",
    b"users.v1.UserCreated",
    b"shop.v1.OrderPlaced",
    b"bench.v1.Tick",
    b"Users.V1.UserCreated",
    b"0190f4c2-7b1e-7c3a-9d55-3b1f2a9c0e11",
    b"users.created",
    b"2026-08-20T12:34:56.789Z",
    b"1.0",
    // a Confluent header-mode `__value_schema_id`: 0x01, a 16-byte GUID, indexes [0]
    b"\x01\x00\x11\x22\x33\x44\x55\x66\x77\x88\x99\xaa\xbb\xcc\xdd\xee\xff\x00",
    b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    b"",
];

/// Whether `EVENT_FUZZ_DEBUG` is set: the targets then print what they read and found (to
/// look at a seed or a crash input, `cargo +nightly fuzz run <target> <file>`).
pub fn debug() -> bool {
    static DEBUG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("EVENT_FUZZ_DEBUG").is_some())
}

/// Whether the reported, not yet fixed bug `tag` is listed in `EVENT_FUZZ_KNOWN`
/// (comma-separated): its check is then skipped, so that fuzzing goes on past it. Without the
/// variable every check runs, and each regression input under `regressions/` fails until its
/// bug is fixed. The tags are in the README's "Fuzzing" section.
pub fn known(tag: &str) -> bool {
    static KNOWN: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    KNOWN
        .get_or_init(|| {
            std::env::var("EVENT_FUZZ_KNOWN")
                .unwrap_or_default()
                .split(',')
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
                .collect()
        })
        .iter()
        .any(|t| t == tag)
}

/// The length byte that announces a u16 length.
const LONG: u8 = 255;

/// Reads an input in the format of the module documentation.
pub struct Reader<'a> {
    u: Unstructured<'a>,
}

impl<'a> Reader<'a> {
    /// Reads `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Reader {
            u: Unstructured::new(data),
        }
    }

    /// One byte; 0 when the input is used up.
    pub fn byte(&mut self) -> u8 {
        self.u.arbitrary::<u8>().unwrap_or(0)
    }

    /// `N` bytes, zero-filled past the end of the input.
    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        let take = N.min(self.u.len());
        if let Ok(bytes) = self.u.bytes(take) {
            out[..take].copy_from_slice(bytes);
        }
        out
    }

    /// A blob: a length byte (255: a u16 LE length follows), then the bytes.
    pub fn blob(&mut self) -> &'a [u8] {
        let mut len = usize::from(self.byte());
        if len == usize::from(LONG) {
            len = usize::from(u16::from_le_bytes(self.array()));
        }
        let len = len.min(self.u.len());
        self.u.bytes(len).unwrap_or_default()
    }

    /// A name from `table`, or a blob read as (lossy) UTF-8.
    pub fn name(&mut self, table: &[&'static str]) -> String {
        let index = usize::from(self.byte());
        match table.get(index) {
            Some(name) => (*name).to_owned(),
            None => String::from_utf8_lossy(self.blob()).into_owned(),
        }
    }

    /// A value from [`VALUES`], or a blob.
    pub fn value(&mut self) -> &'a [u8] {
        let index = usize::from(self.byte());
        match VALUES.get(index) {
            Some(value) => value,
            None => self.blob(),
        }
    }

    /// At most `max` header name/value pairs from [`HEADER_NAMES`] and [`VALUES`].
    pub fn headers(&mut self, max: u8) -> Headers {
        let count = self.byte() % (max + 1);
        let mut headers = Headers::new();
        for _ in 0..count {
            let name = self.name(HEADER_NAMES);
            let value = self.value();
            headers.append(
                name,
                event_core::headers::HeaderValue::copy_from_slice(value),
            );
        }
        headers
    }

    /// Bytes left.
    pub fn len(&self) -> usize {
        self.u.len()
    }

    /// Whether the input is used up.
    pub fn is_empty(&self) -> bool {
        self.u.is_empty()
    }

    /// The rest of the input.
    pub fn rest(self) -> &'a [u8] {
        self.u.take_rest()
    }
}

/// Writes inputs that [`Reader`] reads back as written.
#[derive(Default)]
pub struct Writer {
    out: Vec<u8>,
}

impl Writer {
    /// An empty input.
    pub fn new() -> Self {
        Writer::default()
    }

    /// One byte.
    pub fn byte(&mut self, byte: u8) -> &mut Self {
        self.out.push(byte);
        self
    }

    /// Raw bytes (an array the reader takes whole).
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.out.extend_from_slice(bytes);
        self
    }

    /// A blob.
    pub fn blob(&mut self, bytes: &[u8]) -> &mut Self {
        if bytes.len() < usize::from(LONG) {
            self.out.push(bytes.len() as u8);
        } else {
            let len = u16::try_from(bytes.len()).expect("a blob is at most 65535 bytes");
            self.out.push(LONG);
            self.out.extend_from_slice(&len.to_le_bytes());
        }
        self.raw(bytes)
    }

    /// A name: its index in `table`, or a blob.
    pub fn name(&mut self, table: &[&str], name: &str) -> &mut Self {
        match table.iter().position(|known| *known == name) {
            Some(index) => self.byte(index as u8),
            None => self.byte(u8::MAX).blob(name.as_bytes()),
        }
    }

    /// A value: its index in [`VALUES`], or a blob.
    pub fn value(&mut self, value: &[u8]) -> &mut Self {
        match VALUES.iter().position(|known| *known == value) {
            Some(index) => self.byte(index as u8),
            None => self.byte(u8::MAX).blob(value),
        }
    }

    /// Headers, for [`Reader::headers`].
    pub fn headers(&mut self, headers: &[(&str, &[u8])]) -> &mut Self {
        self.byte(headers.len() as u8);
        for (name, value) in headers {
            self.name(HEADER_NAMES, name).value(value);
        }
        self
    }

    /// The input.
    pub fn finish(&mut self, payload: &[u8]) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.out);
        out.extend_from_slice(payload);
        out
    }
}
