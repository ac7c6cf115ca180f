//! Message ids and times: UUID v7 ids that increase per thread, and RFC 3339 times, from one
//! clock reading.

use crate::clock;
use crate::hex::hex_lower;

/// A hyphenated UUID: 32 hex digits and 4 hyphens.
const ID_LEN: usize = 36;
pub(crate) const TIME_LEN: usize = "2026-08-20T12:34:56.789Z".len();

/// A new UUID v7 message id (hyphenated, lower case) and the current time (RFC 3339, UTC,
/// milliseconds), from one clock reading. The id's timestamp is that time, except after the
/// clock stepped back (or in the rare millisecond whose counter ran out): the id then keeps
/// counting from the last one, so that a thread's ids still increase, while the time is the
/// clock's.
pub(super) fn new_id_and_time() -> ([u8; ID_LEN], [u8; TIME_LEN]) {
    let since_epoch = clock::since_epoch();
    let (id_millis, counter) = next_v7_millis_and_counter(since_epoch.as_millis() as u64);
    // random bits from `fastrand` (seeded per thread from the OS's randomness, not a
    // cryptographic generator): message ids must be unique, not unguessable
    let id = hyphenated(&uuid_v7(id_millis, counter, fastrand::u32(..)));
    // the date and time to the second change once a second: a thread keeps the last one
    thread_local! {
        static SECOND: std::cell::Cell<(u64, [u8; TIME_LEN])> =
            const { std::cell::Cell::new((u64::MAX, [0; TIME_LEN])) };
    }
    let secs = since_epoch.as_secs();
    let mut time = SECOND.with(|second| {
        let (cached, mut text) = second.get();
        if cached != secs {
            format_rfc3339_millis(secs, 0, &mut text);
            second.set((secs, text));
        }
        text
    });
    let millis = since_epoch.subsec_millis();
    time[20] = b'0' + (millis / 100) as u8;
    time[21] = b'0' + (millis / 10 % 10) as u8;
    time[22] = b'0' + (millis % 10) as u8;
    (id, time)
}

/// The largest value of the 42-bit counter of a UUID v7 (RFC 9562, section 6.2, method 1).
const V7_COUNTER_MAX: u64 = (1 << 42) - 1;

/// The millisecond and counter of this thread's next UUID v7, `now` being the clock's
/// millisecond. Ids made by one thread increase strictly, without a process-wide lock:
///
/// - in a new millisecond the counter starts at a random value below 2^41 (room to count);
/// - within the same millisecond, or if the clock stepped back, the last millisecond is kept
///   and the counter counts on;
/// - should the counter ever run out, the next millisecond is taken early.
fn next_v7_millis_and_counter(now: u64) -> (u64, u64) {
    thread_local! {
        static LAST: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
    }
    LAST.with(|last| {
        let next = advance_v7(last.get(), now, || fastrand::u64(..) >> 23);
        last.set(next);
        next
    })
}

/// The step of [`next_v7_millis_and_counter`] from `(millisecond, counter)` of the last id;
/// `seed` gives a new millisecond's first counter.
fn advance_v7(
    (last_millis, last_counter): (u64, u64),
    now: u64,
    seed: impl FnOnce() -> u64,
) -> (u64, u64) {
    if now > last_millis {
        (now, seed())
    } else if last_counter < V7_COUNTER_MAX {
        (last_millis, last_counter + 1)
    } else {
        (last_millis + 1, seed())
    }
}

/// The 16 bytes of a UUID v7: 48 bits of Unix milliseconds, the version, the counter's top 12
/// bits, the variant, the counter's low 30 bits and 32 random bits.
fn uuid_v7(millis: u64, counter: u64, random: u32) -> [u8; 16] {
    let high = (millis & 0xffff_ffff_ffff) << 16 | 0x7 << 12 | (counter >> 30 & 0xfff);
    let low = 0b10 << 62 | (counter & 0x3fff_ffff) << 32 | u64::from(random);
    let mut bytes = [0; 16];
    bytes[..8].copy_from_slice(&high.to_be_bytes());
    bytes[8..].copy_from_slice(&low.to_be_bytes());
    bytes
}

/// A UUID's 8-4-4-4-12 lower-case text.
fn hyphenated(bytes: &[u8; 16]) -> [u8; ID_LEN] {
    let mut out = [b'-'; ID_LEN];
    hex_lower(&bytes[..4], &mut out[..8]);
    hex_lower(&bytes[4..6], &mut out[9..13]);
    hex_lower(&bytes[6..8], &mut out[14..18]);
    hex_lower(&bytes[8..10], &mut out[19..23]);
    hex_lower(&bytes[10..], &mut out[24..]);
    out
}

/// Writes the time `secs` and `millis` after the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`
/// (24 bytes) into `out`.
pub(crate) fn format_rfc3339_millis(secs: u64, millis: u32, out: &mut [u8]) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (hour, minute, second) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // civil date from days since 1970-01-01 (proleptic Gregorian calendar)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut put = |at: usize, value: u64, width: usize| {
        let mut v = value;
        for i in (0..width).rev() {
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year.clamp(0, 9999) as u64, 4);
    put(5, month as u64, 2);
    put(8, day as u64, 2);
    put(11, hour, 2);
    put(14, minute, 2);
    put(17, second, 2);
    put(20, u64::from(millis), 3);
    out[4] = b'-';
    out[7] = b'-';
    out[10] = b'T';
    out[13] = b':';
    out[16] = b':';
    out[19] = b'.';
    out[23] = b'Z';
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn ids_are_uuid_v7_increasing_and_match_the_time() {
        let mut last = uuid::Uuid::nil();
        for _ in 0..10_000 {
            let (id, time) = new_id_and_time();
            let parsed = uuid::Uuid::parse_str(std::str::from_utf8(&id).unwrap()).unwrap();
            assert_eq!(parsed.get_version_num(), 7);
            // ids of one thread sort in the order they were made, even within a millisecond
            assert!(parsed > last, "{parsed} after {last}");
            last = parsed;
            // the id's timestamp is the ce_time of the same message
            let (secs, nanos) = parsed.get_timestamp().unwrap().to_unix();
            let id_millis = secs * 1000 + u64::from(nanos / 1_000_000);
            let time = humantime::parse_rfc3339(std::str::from_utf8(&time).unwrap()).unwrap();
            let time_millis = time
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
            assert_eq!(id_millis, time_millis);
        }
    }

    #[test]
    fn uuid_v7_fields_sit_where_rfc_9562_puts_them() {
        let millis = 0x0192_3456_789a;
        let counter = 0x2ab_cdef_0123; // 42 bits
        let bytes = uuid_v7(millis, counter, 0xdead_beef);
        let parsed = uuid::Uuid::from_bytes(bytes);
        assert_eq!(parsed.get_version_num(), 7);
        assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122);
        let (secs, nanos) = parsed.get_timestamp().expect("a v7 timestamp").to_unix();
        assert_eq!(secs * 1000 + u64::from(nanos / 1_000_000), millis);
        // rand_a: the counter's top 12 bits; rand_b: its low 30 bits, then the random word
        assert_eq!(
            u64::from(u16::from_be_bytes([bytes[6], bytes[7]]) & 0xfff),
            counter >> 30
        );
        let low = u64::from_be_bytes(bytes[8..].try_into().unwrap());
        assert_eq!(low >> 32 & 0x3fff_ffff, counter & 0x3fff_ffff);
        assert_eq!(low as u32, 0xdead_beef);
    }

    #[test]
    fn the_v7_counter_orders_ids_within_a_millisecond_and_across_a_clock_step_back() {
        let seed = || 5;
        assert_eq!(
            advance_v7((0, 0), 1_000, seed),
            (1_000, 5),
            "a new millisecond: seeded"
        );
        assert_eq!(
            advance_v7((1_000, 5), 1_000, seed),
            (1_000, 6),
            "the same: counts on"
        );
        assert_eq!(
            advance_v7((1_000, 6), 990, seed),
            (1_000, 7),
            "a step back: keeps the last"
        );
        assert_eq!(
            advance_v7((1_000, V7_COUNTER_MAX), 1_000, seed),
            (1_001, 5),
            "counter run out: the next millisecond early"
        );
        // and the ids built from them sort in that order
        let ids = [(1_000, 5), (1_000, 6), (1_000, 7), (1_001, 5)]
            .map(|(millis, counter)| uuid::Uuid::from_bytes(uuid_v7(millis, counter, u32::MAX)));
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");
    }

    #[test]
    fn ids_read_as_the_uuid_they_encode() {
        for _ in 0..1000 {
            let uuid = uuid::Uuid::now_v7();
            let mut expected = [0u8; ID_LEN];
            uuid.hyphenated().encode_lower(&mut expected);
            assert_eq!(hyphenated(uuid.as_bytes()), expected);
        }
        assert_eq!(
            &hyphenated(&[0xff; 16]),
            b"ffffffff-ffff-ffff-ffff-ffffffffffff"
        );
    }

    #[test]
    fn time_formatting_matches_a_reference_implementation() {
        // humantime is the reference; check dates across leap years and centuries
        for secs in [
            0u64,
            951_782_400,   // 2000-02-29
            1_709_164_800, // 2024-02-29
            1_787_228_096,
            4_102_444_799, // 2099-12-31T23:59:59
            253_402_300_799,
        ] {
            for millis in [0u32, 7, 999] {
                let t = SystemTime::UNIX_EPOCH
                    + std::time::Duration::from_millis(secs * 1000 + u64::from(millis));
                let mut out = [0u8; TIME_LEN];
                format_rfc3339_millis(secs, millis, &mut out);
                assert_eq!(
                    std::str::from_utf8(&out).unwrap(),
                    humantime::format_rfc3339_millis(t).to_string()
                );
            }
        }
    }
}
