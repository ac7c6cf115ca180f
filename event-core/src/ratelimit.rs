//! Rate-limited logging: one line per key and interval, with a count of what was suppressed,
//! so that a poison flood is not a log flood.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

type Key = (String, String, &'static str);

pub(crate) struct RateLimitedLog {
    interval: Duration,
    seen: Mutex<HashMap<Key, Window>>,
}

struct Window {
    last_logged: Instant,
    suppressed: u64,
}

impl RateLimitedLog {
    pub(crate) fn new(interval: Duration) -> Self {
        RateLimitedLog {
            interval,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Calls `emit(suppressed_since_last)` unless `key` was logged within the interval, in
    /// which case the occurrence is only counted. Returns whether it logged.
    pub(crate) fn error(&self, key: Key, emit: impl FnOnce(u64)) -> bool {
        self.check(key, Instant::now()).map(emit).is_some()
    }

    fn check<K: Into<Key> + Hash>(&self, key: K, now: Instant) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let key = key.into();
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
        let log = RateLimitedLog::new(Duration::from_secs(10));
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
