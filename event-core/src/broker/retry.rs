//! `RetryPolicy`: how often and how patiently a failing handler is retried.

use std::time::Duration;

/// How often and how patiently a failing handler is retried before the message is
/// dead-lettered.
///
/// Backoff grows exponentially from `initial_backoff` by `multiplier`, is capped at
/// `max_backoff`, and is spread by ±`jitter` (a fraction) so that many subscribers failing at
/// once do not retry in lockstep.
///
/// ```
/// use std::time::Duration;
/// use event_core::broker::RetryPolicy;
///
/// let policy = RetryPolicy::exponential(4, Duration::from_millis(100)).with_jitter(0.0);
/// assert_eq!(policy.backoff(1), Duration::from_millis(100)); // after the first attempt
/// assert_eq!(policy.backoff(2), Duration::from_millis(200));
/// assert_eq!(policy.backoff(3), Duration::from_millis(400));
/// assert!(policy.should_retry(3));
/// assert!(!policy.should_retry(4)); // the fourth attempt was the last
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    multiplier: f64,
    jitter: f64,
}

impl Default for RetryPolicy {
    /// 5 attempts, 100 ms doubling to at most 10 s, ±20 % jitter.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// `max_attempts` runs of the handler in all, backoff starting at `initial_backoff` and
    /// doubling.
    pub fn exponential(max_attempts: u32, initial_backoff: Duration) -> Self {
        RetryPolicy {
            max_attempts: max_attempts.max(1),
            initial_backoff,
            ..RetryPolicy::default()
        }
    }

    /// One attempt: the first failure dead-letters the message.
    pub fn no_retry() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// Sets the total number of handler runs (at least 1), keeping the backoff.
    #[must_use]
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts.max(1);
        self
    }

    /// Caps the backoff.
    #[must_use]
    pub fn with_max_backoff(mut self, max: Duration) -> Self {
        self.max_backoff = max;
        self
    }

    /// Sets the growth factor (at least 1).
    #[must_use]
    pub fn with_multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier.is_finite() {
            multiplier.max(1.0)
        } else {
            1.0
        };
        self
    }

    /// Sets the jitter fraction, clamped to `0.0..=1.0`.
    #[must_use]
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// Total handler runs allowed, at least 1.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Whether a message whose attempt number `attempt` just failed gets another run.
    pub fn should_retry(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }

    /// How long to wait after failed attempt number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(64) as i32;
        let base = self.initial_backoff.as_secs_f64() * self.multiplier.powi(exp);
        let capped = base.min(self.max_backoff.as_secs_f64());
        let spread = if self.jitter > 0.0 {
            1.0 + self.jitter * (fastrand::f64() * 2.0 - 1.0)
        } else {
            1.0
        };
        // a cap near Duration::MAX, jittered upwards, is past what a Duration holds
        Duration::try_from_secs_f64((capped * spread).max(0.0)).unwrap_or(self.max_backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered_within_bounds() {
        let p = RetryPolicy::exponential(10, Duration::from_millis(100))
            .with_max_backoff(Duration::from_millis(500))
            .with_jitter(0.5);
        for _ in 0..200 {
            let b = p.backoff(1);
            assert!(b >= Duration::from_millis(50) && b <= Duration::from_millis(150));
            let late = p.backoff(30);
            assert!(late >= Duration::from_millis(250) && late <= Duration::from_millis(750));
        }
    }

    #[test]
    fn no_retry_means_one_attempt() {
        let p = RetryPolicy::no_retry();
        assert!(!p.should_retry(1));
        assert_eq!(
            RetryPolicy::exponential(0, Duration::ZERO).max_attempts(),
            1
        );
    }

    #[test]
    fn a_backoff_capped_at_the_largest_duration_stays_within_it() {
        let p = RetryPolicy::exponential(100, Duration::MAX).with_max_backoff(Duration::MAX);
        // jittered upwards in about half of them
        for attempt in 1..=64 {
            // at the cap, less at most the jitter's 20 %
            assert!(p.backoff(attempt) >= Duration::from_secs(u64::MAX / 2));
        }
    }
}
