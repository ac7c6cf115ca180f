//! Header values: bytes, usually UTF-8 text; short ones stored inline.

use std::fmt;
use std::str::Utf8Error;

use bytes::Bytes;

/// The value of a header: bytes, usually UTF-8 text. Cheap to clone.
///
/// Kafka header values are bytes and the Confluent `__value_schema_id` header is binary, so
/// values are not forced to be text; [`HeaderValue::to_str`] reads them as text.
///
/// Values of up to 38 bytes (message ids, times, most metadata) are stored inline: making,
/// cloning and dropping them touches no allocator and no shared reference count, which matters
/// when a message crosses threads. Longer values share their bytes.
#[derive(Clone)]
pub struct HeaderValue(pub(super) ValueRepr);

/// The longest value stored inline: a hyphenated UUID (36 bytes) fits.
pub(super) const INLINE: usize = 38;

/// Shared bytes, or a short value stored in place.
#[derive(Clone)]
pub(super) enum ValueRepr {
    Shared(Bytes),
    Inline { len: u8, bytes: [u8; INLINE] },
}

impl HeaderValue {
    /// A value from a string literal, without allocating.
    pub const fn from_static(value: &'static str) -> Self {
        HeaderValue(ValueRepr::Shared(Bytes::from_static(value.as_bytes())))
    }

    /// A value from raw bytes (copied inline when short, shared otherwise).
    pub fn from_bytes(value: impl Into<Bytes>) -> Self {
        let value = value.into();
        match Self::try_inline(&value) {
            Some(inline) => inline,
            None => HeaderValue(ValueRepr::Shared(value)),
        }
    }

    /// A value copied from `value`.
    pub fn copy_from_slice(value: &[u8]) -> Self {
        Self::try_inline(value)
            .unwrap_or_else(|| HeaderValue(ValueRepr::Shared(Bytes::copy_from_slice(value))))
    }

    fn try_inline(value: &[u8]) -> Option<Self> {
        (value.len() <= INLINE).then(|| {
            let mut bytes = [0u8; INLINE];
            bytes[..value.len()].copy_from_slice(value);
            HeaderValue(ValueRepr::Inline {
                len: value.len() as u8,
                bytes,
            })
        })
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            ValueRepr::Shared(bytes) => bytes,
            ValueRepr::Inline { len, bytes } => &bytes[..usize::from(*len)],
        }
    }

    /// The value as UTF-8 text.
    ///
    /// # Errors
    ///
    /// Returns the UTF-8 error when the value is not text.
    pub fn to_str(&self) -> Result<&str, Utf8Error> {
        std::str::from_utf8(self.as_bytes())
    }

    /// The value as [`Bytes`] (a short value is copied).
    pub fn into_bytes(self) -> Bytes {
        match self.0 {
            ValueRepr::Shared(bytes) => bytes,
            ValueRepr::Inline { .. } => Bytes::copy_from_slice(self.as_bytes()),
        }
    }
}

impl Default for HeaderValue {
    fn default() -> Self {
        HeaderValue::from_static("")
    }
}

impl PartialEq for HeaderValue {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}
impl Eq for HeaderValue {}

impl std::hash::Hash for HeaderValue {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl From<String> for HeaderValue {
    fn from(value: String) -> Self {
        HeaderValue::from_bytes(value)
    }
}

impl From<&str> for HeaderValue {
    fn from(value: &str) -> Self {
        HeaderValue::copy_from_slice(value.as_bytes())
    }
}

impl From<Bytes> for HeaderValue {
    fn from(value: Bytes) -> Self {
        HeaderValue::from_bytes(value)
    }
}

impl fmt::Debug for HeaderValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_str() {
            Ok(s) => fmt::Debug::fmt(s, f),
            Err(_) => write!(f, "0x{}", crate::hex::hex(self.as_bytes(), 64)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_values_read_and_compare_alike() {
        use std::hash::BuildHasher;
        let hasher = std::collections::hash_map::RandomState::new();
        for len in [0, 1, INLINE - 1, INLINE, INLINE + 1, 200] {
            let text = "v".repeat(len);
            let values = [
                HeaderValue::from(text.as_str()),
                HeaderValue::from(text.clone()),
                HeaderValue::from_bytes(Bytes::from(text.clone())),
                HeaderValue::copy_from_slice(text.as_bytes()),
                HeaderValue::from_static(text.clone().leak()),
            ];
            for value in &values {
                assert_eq!(value.to_str().unwrap(), text);
                assert_eq!(value, &values[0]);
                assert_eq!(hasher.hash_one(value), hasher.hash_one(&values[0]));
                assert_eq!(value.clone().into_bytes(), text.as_bytes());
            }
            assert_eq!(
                matches!(values[0].0, ValueRepr::Inline { .. }),
                len <= INLINE
            );
        }
        assert_ne!(HeaderValue::from("a"), HeaderValue::from("b"));
        assert_eq!(HeaderValue::default().as_bytes(), b"");
    }

    #[test]
    fn binary_values_survive_and_debug_as_hex() {
        let v = HeaderValue::from_bytes(vec![0x01, 0xff]);
        assert!(v.to_str().is_err());
        assert_eq!(format!("{v:?}"), "0x01ff");
    }
}
