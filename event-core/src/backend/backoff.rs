//! Exponential backoff for a backend's own retries (reconnecting, re-attaching a consumer).

use std::time::Duration;

use crate::broker::RetryPolicy;

/// Delays that grow as a [`RetryPolicy`] says, for retrying until something works: a backend
/// reconnecting, a consumer re-attaching, a dead-letter publish that keeps failing.
///
/// The policy's attempt limit is not used: a `Backoff` never gives up (the caller decides when
/// to stop). [`Backoff::reset`] starts over after a success.
///
/// ```
/// use std::time::Duration;
/// use event_core::backend::Backoff;
///
/// let mut backoff = Backoff::between(Duration::from_millis(100), Duration::from_millis(300));
/// assert_eq!(backoff.next_delay(), Duration::from_millis(100));
/// assert_eq!(backoff.next_delay(), Duration::from_millis(200));
/// assert_eq!(backoff.next_delay(), Duration::from_millis(300)); // capped
/// assert_eq!(backoff.next_delay(), Duration::from_millis(300));
/// backoff.reset();
/// assert_eq!(backoff.next_delay(), Duration::from_millis(100));
/// ```
#[derive(Clone, Debug)]
pub struct Backoff {
    policy: RetryPolicy,
    failures: u32,
}

impl Backoff {
    /// Delays as `policy`'s backoff: its initial delay, multiplier, cap and jitter.
    pub fn new(policy: RetryPolicy) -> Self {
        Backoff {
            policy,
            failures: 0,
        }
    }

    /// `min`, doubling up to `max`, without jitter.
    pub fn between(min: Duration, max: Duration) -> Self {
        Backoff::new(
            RetryPolicy::exponential(u32::MAX, min)
                .with_max_backoff(max.max(min))
                .with_jitter(0.0),
        )
    }

    /// The delay before the next try; each call counts one more failure.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.policy.backoff(self.failures)
    }

    /// How many delays were handed out since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Starts over: the next delay is the initial one.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}
