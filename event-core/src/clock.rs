//! The clocks of the hot paths, read through the CPU's time stamp counter where the CPU says
//! it is invariant (`quanta`; `CLOCK_MONOTONIC` elsewhere): on the development VM a read
//! costs 17–21 ns against 34–37 ns for `std::time::Instant::now` and 35 ns for
//! `SystemTime::now`, and both paths read a clock for every message.

use std::cell::Cell;
use std::time::{Duration, SystemTime};

/// A monotonic instant (the handler timer's).
pub(crate) use quanta::Instant;

/// Calibrates the counter now, which its first reading in the process does (0.6 ms on the
/// development machine; `quanta` bounds it at 200 ms). Called where publishers and
/// subscriptions are made, so that the first message does not pay for it.
pub(crate) fn calibrate() {
    let _ = Instant::now();
}

/// How long a thread's reading of the system clock is extended by the monotonic clock (see
/// [`since_epoch`]).
const WALL_CLOCK_READ_EVERY: Duration = Duration::from_secs(1);

/// The time since the Unix epoch, for a message's id and `ce_time` (millisecond precision).
///
/// The system clock is read at most once a second per thread; in between, the time is that
/// reading extended by the monotonic clock ([`extend`]): about half the cost of reading the
/// system clock, paid on every publish. Within the second the two part by the counter's
/// calibration error and any frequency correction of the system clock since (at most about
/// half a millisecond), and a step of the system clock shows at the next reading: so
/// consecutive `ce_time`s of a thread can step back by a millisecond there. Message ids stay
/// increasing all the same: the publisher's UUID v7 generator counts on from its last id when
/// the time is not later.
pub(crate) fn since_epoch() -> Duration {
    thread_local! {
        static READING: Cell<Option<(Instant, Duration)>> = const { Cell::new(None) };
    }
    let now = Instant::now();
    READING
        .try_with(|reading| {
            if let Some(since_epoch) = extend(reading.get(), now) {
                return since_epoch;
            }
            let since_epoch = system_since_epoch();
            reading.set(Some((now, since_epoch)));
            since_epoch
        })
        .unwrap_or_else(|_| system_since_epoch())
}

/// `reading` (a system clock reading and when it was taken) extended to `now`, if it is
/// recent: less than [`WALL_CLOCK_READ_EVERY`] old, and not ahead of `now` (a counter that
/// went back, as one read on another core can, must not freeze the time).
fn extend(reading: Option<(Instant, Duration)>, now: Instant) -> Option<Duration> {
    let (at, since_epoch) = reading?;
    let elapsed = now.checked_duration_since(at)?;
    (elapsed < WALL_CLOCK_READ_EVERY).then(|| since_epoch + elapsed)
}

fn system_since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_is_extended_for_a_second_and_never_backwards() {
        let (clock, mock) = quanta::Clock::mock();
        // a mocked counter starts at zero: room to go back
        mock.increment(Duration::from_secs(10));
        let at = clock.now();
        let reading = Some((at, Duration::from_secs(1_000)));
        mock.increment(Duration::from_millis(250));
        assert_eq!(
            extend(reading, clock.now()),
            Some(Duration::from_millis(1_000_250))
        );
        mock.increment(WALL_CLOCK_READ_EVERY);
        assert_eq!(extend(reading, clock.now()), None, "too old: read again");
        mock.decrement(WALL_CLOCK_READ_EVERY + Duration::from_millis(500));
        assert_eq!(
            extend(reading, clock.now()),
            None,
            "behind the reading: read again"
        );
        assert_eq!(extend(None, at), None);
    }

    #[test]
    fn the_wall_clock_follows_the_system_clock() {
        // the first call reads the system clock (and calibrates the counter); the others,
        // for 50 ms (well past the slack, well within a reading's second), extend it
        let _ = since_epoch();
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_millis(50) {
            let before = system_since_epoch();
            let now = since_epoch();
            let after = system_since_epoch();
            let slack = Duration::from_millis(2);
            assert!(
                before.saturating_sub(slack) <= now && now <= after + slack,
                "{now:?} outside {before:?}..={after:?}"
            );
        }
    }
}
