//! Rate-limited logging: one line per key and interval, with a count of what was suppressed,
//! so that a poison flood is not a log flood.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The key the delivery loop logs under: topic, handler and failure kind.
#[cfg(test)]
type Key = (String, String, &'static str);

/// Logs one line per key and interval and counts the occurrences in between, so that a flood
/// of one failure is one line every interval.
///
/// ```
/// use std::time::Duration;
/// use event_core::backend::RateLimitedLog;
///
/// let log: RateLimitedLog<&'static str> = RateLimitedLog::new(Duration::from_secs(10));
/// assert_eq!(log.allow("broker down"), Some(0)); // log it
/// assert_eq!(log.allow("broker down"), None); // within the interval: counted
/// assert_eq!(log.allow("disk full"), Some(0)); // another key has its own window
/// ```
///
/// The default key is the delivery loop's: topic, handler and failure kind.
pub struct RateLimitedLog<K = (String, String, &'static str)> {
    interval: Duration,
    seen: Mutex<HashMap<K, Window>>,
}

impl<K> fmt::Debug for RateLimitedLog<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitedLog")
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

struct Window {
    last_logged: Instant,
    suppressed: u64,
}

impl<K: Eq + Hash> RateLimitedLog<K> {
    /// At most one line per key every `interval`.
    pub fn new(interval: Duration) -> Self {
        RateLimitedLog {
            interval,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(occurrences suppressed since the last line)` when `key` should be logged now;
    /// `None` (and the occurrence counted) when it was logged within the interval.
    pub fn allow(&self, key: K) -> Option<u64> {
        self.check(key, Instant::now())
    }

    /// Calls `emit(suppressed_since_last)` unless `key` was logged within the interval, in
    /// which case the occurrence is only counted. Returns whether it logged.
    pub(crate) fn error(&self, key: K, emit: impl FnOnce(u64)) -> bool {
        self.allow(key).map(emit).is_some()
    }

    fn check(&self, key: K, now: Instant) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match seen.get_mut(&key) {
            Some(window) if now.duration_since(window.last_logged) < self.interval => {
                window.suppressed += 1;
                None
            }
            Some(window) => {
                let suppressed = std::mem::take(&mut window.suppressed);
                window.last_logged = now;
                Some(suppressed)
            }
            None => {
                if seen.len() >= 4096 {
                    seen.retain(|_, w| now.duration_since(w.last_logged) < self.interval);
                }
                seen.insert(
                    key,
                    Window {
                        last_logged: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kind: &'static str) -> Key {
        ("orders".into(), "handler".into(), kind)
    }

    #[test]
    fn logs_once_per_interval_and_counts_the_rest() {
        let log: RateLimitedLog = RateLimitedLog::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(log.check(key("decode-error"), t0), Some(0));
        for i in 1..=5 {
            assert_eq!(
                log.check(key("decode-error"), t0 + Duration::from_secs(i)),
                None
            );
        }
        // another kind is its own window
        assert_eq!(log.check(key("panic"), t0), Some(0));
        assert_eq!(
            log.check(key("decode-error"), t0 + Duration::from_secs(11)),
            Some(5)
        );
    }
}
