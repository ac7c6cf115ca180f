//! Choosing a broker by URL: `EVENT_BROKER=memory://`, `kafka://host:9092`, `amqp://...`.
//!
//! Each backend registers its URL scheme with [`register_broker_scheme!`](crate::register_broker_scheme),
//! so switching brokers is a configuration change, not a code change.

use std::sync::Arc;

use super::Broker;

/// The environment variable [`from_env`] reads.
pub const ENV_BROKER: &str = "EVENT_BROKER";

/// The broker used when [`ENV_BROKER`] is not set: the process-wide in-memory broker.
pub const DEFAULT_BROKER_URL: &str = "memory://";

/// A URL scheme a backend answers to. Submitted with
/// [`register_broker_scheme!`](crate::register_broker_scheme).
#[derive(Debug)]
pub struct BrokerScheme {
    /// The scheme, without `://` (`kafka`).
    pub scheme: &'static str,
    /// The crate that registered it, for error messages.
    pub provided_by: &'static str,
    /// Builds a broker from the parsed URL.
    pub build: fn(&::url::Url) -> Result<Arc<dyn Broker>, BrokerUrlError>,
}

inventory::collect!(BrokerScheme);

/// Why a broker URL could not be turned into a broker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerUrlError {
    /// The URL does not parse.
    #[error("broker URL {url:?} is not a valid URL")]
    Parse {
        /// The rejected URL.
        url: String,
        /// The parser's error.
        #[source]
        source: ::url::ParseError,
    },
    /// No linked backend handles the scheme.
    #[error(
        "no broker backend handles the URL scheme {scheme:?} (in {url:?}); known schemes: {}. \
         A backend crate registers its scheme when it is linked: add it to Cargo.toml and \
         reference it once (e.g. `use event_kafka as _;`)",
        known.join(", ")
    )]
    UnknownScheme {
        /// The scheme that was asked for.
        scheme: String,
        /// The URL.
        url: String,
        /// The schemes that are registered in this binary.
        known: Vec<&'static str>,
    },
    /// A query parameter or URL part is not understood by the backend.
    #[error("broker URL {url:?}: {problem}")]
    Invalid {
        /// The URL (without credentials).
        url: String,
        /// What is wrong.
        problem: String,
    },
}

/// The registered schemes, sorted.
pub fn known_schemes() -> Vec<&'static str> {
    let mut known: Vec<_> = inventory::iter::<BrokerScheme>
        .into_iter()
        .map(|s| s.scheme)
        .collect();
    known.sort_unstable();
    known.dedup();
    known
}

/// Builds the broker a URL names.
///
/// ```
/// let broker = event_core::broker::connect("memory://orders-test").unwrap();
/// assert_eq!(broker.name(), "memory");
///
/// let err = event_core::broker::connect("nats://127.0.0.1:4222").unwrap_err();
/// assert!(err.to_string().contains("known schemes: memory"));
/// ```
///
/// # Errors
///
/// [`BrokerUrlError`] when the URL does not parse, no backend handles its scheme, or the
/// backend rejects a part of it.
pub fn connect(url: &str) -> Result<Arc<dyn Broker>, BrokerUrlError> {
    let parsed = ::url::Url::parse(url).map_err(|source| BrokerUrlError::Parse {
        url: url.to_owned(),
        source,
    })?;
    let scheme = parsed.scheme();
    match inventory::iter::<BrokerScheme>
        .into_iter()
        .find(|s| s.scheme.eq_ignore_ascii_case(scheme))
    {
        Some(entry) => (entry.build)(&parsed),
        None => Err(BrokerUrlError::UnknownScheme {
            scheme: scheme.to_owned(),
            url: redact(&parsed),
            known: known_schemes(),
        }),
    }
}

/// Builds the broker named by `EVENT_BROKER`, or the in-memory broker when it is unset.
///
/// # Errors
///
/// As [`connect`].
pub fn from_env() -> Result<Arc<dyn Broker>, BrokerUrlError> {
    let url = std::env::var(ENV_BROKER).unwrap_or_else(|_| DEFAULT_BROKER_URL.to_owned());
    connect(url.trim())
}

/// The URL without its password, for messages.
pub fn redact(url: &::url::Url) -> String {
    let mut url = url.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    url.to_string()
}

/// Registers a URL scheme for a backend (used by backend crates).
///
/// ```ignore
/// event_core::register_broker_scheme!("kafka", |url| Ok(std::sync::Arc::new(KafkaBroker::from_url(url)?)));
/// ```
#[macro_export]
macro_rules! register_broker_scheme {
    ($scheme:literal, $build:expr) => {
        $crate::__private::inventory::submit! {
            $crate::broker::BrokerScheme {
                scheme: $scheme,
                provided_by: ::core::env!("CARGO_PKG_NAME"),
                build: $build,
            }
        }
    };
}
