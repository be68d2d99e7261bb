//! Wall-clock helpers: Google resets daily quotas at midnight America/Los_Angeles.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use gemini_proxy_sdk::time::{days_from_civil, parse_rfc3339};

/// (year, month, day) of a day number.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Day number of the `n`th Sunday (1-based) of a month.
fn nth_sunday(y: i64, m: u32, n: u32) -> i64 {
    let first = days_from_civil(y, m, 1);
    // 1970-01-01 was a Thursday: weekday 0 = Sunday.
    let weekday = (first + 4).rem_euclid(7);
    first + (7 - weekday) % 7 + 7 * (n as i64 - 1)
}

/// UTC offset of Pacific time (seconds) at a UTC instant: PDT (-7h) from the second Sunday of
/// March 10:00 UTC to the first Sunday of November 09:00 UTC, PST (-8h) otherwise.
pub fn pacific_offset(unix: i64) -> i64 {
    let (y, _, _) = civil_from_days(unix.div_euclid(86_400));
    let dst_start = nth_sunday(y, 3, 2) * 86_400 + 10 * 3600;
    let dst_end = nth_sunday(y, 11, 1) * 86_400 + 9 * 3600;
    if unix >= dst_start && unix < dst_end {
        -7 * 3600
    } else {
        -8 * 3600
    }
}

/// The next midnight in America/Los_Angeles after `now`.
pub fn next_pacific_midnight(now: SystemTime) -> SystemTime {
    let unix = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let local_day = (unix + pacific_offset(unix)).div_euclid(86_400);
    let next_local_midnight = (local_day + 1) * 86_400;
    // The offset at that midnight may differ (DST changes happen at 02:00, after midnight, so
    // the offset just before midnight is the one in force).
    let utc = next_local_midnight - pacific_offset(next_local_midnight - 8 * 3600 - 1);
    UNIX_EPOCH + Duration::from_secs(utc.max(0) as u64)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` of `t` (UTC) in a fixed buffer: the audit writes one per call
/// without allocating. Years past 9999 are written as 9999.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct StampMs([u8; 24]);

impl StampMs {
    pub fn of(t: SystemTime) -> Self {
        let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs().min(253_402_300_799) as i64;
        let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
        let s = secs.rem_euclid(86_400);
        let mut b = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut v: u64| {
            for i in (at..at + width).rev() {
                b[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, 4, y as u64);
        put(5, 2, u64::from(m));
        put(8, 2, u64::from(d));
        put(11, 2, (s / 3600) as u64);
        put(14, 2, (s / 60 % 60) as u64);
        put(17, 2, (s % 60) as u64);
        put(20, 3, u64::from(since.subsec_millis()));
        StampMs(b)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written.
        std::str::from_utf8(&self.0).unwrap_or("1970-01-01T00:00:00.000Z")
    }

    /// `YYYY-MM-DD`.
    pub fn day(&self) -> [u8; 10] {
        let mut d = [0u8; 10];
        d.copy_from_slice(&self.0[..10]);
        d
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` of `t` (whole seconds, UTC).
pub fn format_rfc3339(t: SystemTime) -> String {
    let secs = unix_secs(t) as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Seconds since the epoch (for persisted deadlines).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Now in unix milliseconds.
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The Pacific calendar day (days since 1970-01-01) of a UTC instant: Google's quota day.
pub fn pacific_day(unix: i64) -> i64 {
    (unix + pacific_offset(unix)).div_euclid(86_400)
}

/// `YYYY-MM-DD` of a day number.
pub fn format_date(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The day number of `YYYY-MM-DD`, if it is a real date.
pub fn parse_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y: i64 = s[..4].parse().ok()?;
    let m: u32 = s[5..7].parse().ok()?;
    let d: u32 = s[8..].parse().ok()?;
    if !(1..=12).contains(&m) || d == 0 {
        return None;
    }
    let days = days_from_civil(y, m, d);
    (civil_from_days(days) == (y, m, d)).then_some(days)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(unix: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(unix)
    }

    #[test]
    fn millisecond_stamps_match_the_formatter_and_clamp_far_future() {
        for unix in [0, 951_782_400, 1_709_164_799, 1_765_000_000, 4_102_444_800] {
            let t = at(unix) + Duration::from_millis(7);
            let s = StampMs::of(t);
            let whole = format_rfc3339(t);
            assert_eq!(s.as_str(), format!("{}.007Z", whole.trim_end_matches('Z')));
            assert_eq!(&s.day(), &whole.as_bytes()[..10]);
        }
        assert_eq!(
            StampMs::of(at(0) + Duration::from_millis(999)).as_str(),
            "1970-01-01T00:00:00.999Z"
        );
        let far = UNIX_EPOCH + Duration::from_secs(1 << 40);
        assert_eq!(StampMs::of(far).as_str(), "9999-12-31T23:59:59.000Z");
    }

    #[test]
    fn parses_rfc3339() {
        let t = parse_rfc3339("2026-12-01T00:00:00Z").unwrap();
        assert_eq!(unix_secs(t), days_from_civil(2026, 12, 1) as u64 * 86_400);
        let t = parse_rfc3339("2026-12-01T09:30:00.5+02:00").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64,
            (days_from_civil(2026, 12, 1) as u64 * 86_400 + 7 * 3600 + 30 * 60) * 1000 + 500
        );
        for bad in [
            "2026-12-01",
            "tomorrow",
            "2026-13-01T00:00:00Z",
            "2026-12-01T00:00:00",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn civil_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2026, 11, 26), 20_783);
        assert_eq!(civil_from_days(20_783), (2026, 11, 26));
        assert_eq!(nth_sunday(2026, 3, 2), days_from_civil(2026, 3, 8));
        assert_eq!(nth_sunday(2026, 11, 1), days_from_civil(2026, 11, 1));
    }

    #[test]
    fn next_midnight_in_los_angeles() {
        // 2026-11-26 19:00 UTC = 11:00 PST -> 2026-11-27 08:00 UTC.
        let now = days_from_civil(2026, 11, 26) as u64 * 86_400 + 19 * 3600;
        let want = days_from_civil(2026, 11, 27) as u64 * 86_400 + 8 * 3600;
        assert_eq!(unix_secs(next_pacific_midnight(at(now))), want);
        // 2026-07-01 06:59 UTC = 23:59 PDT on June 30 -> 07:00 UTC the same day.
        let now = days_from_civil(2026, 7, 1) as u64 * 86_400 + 6 * 3600 + 59 * 60;
        let want = days_from_civil(2026, 7, 1) as u64 * 86_400 + 7 * 3600;
        assert_eq!(unix_secs(next_pacific_midnight(at(now))), want);
        // 2026-07-01 07:00 UTC is exactly midnight PDT -> the next one.
        let now = want;
        assert_eq!(unix_secs(next_pacific_midnight(at(now))), want + 86_400);
        // Across the November change: 2026-10-31 12:00 PDT -> 2026-11-01 00:00 PDT = 07:00 UTC.
        let now = days_from_civil(2026, 10, 31) as u64 * 86_400 + 19 * 3600;
        let want = days_from_civil(2026, 11, 1) as u64 * 86_400 + 7 * 3600;
        assert_eq!(unix_secs(next_pacific_midnight(at(now))), want);
        // 2026-11-01 12:00 PST -> 2026-11-02 00:00 PST = 08:00 UTC.
        let now = days_from_civil(2026, 11, 1) as u64 * 86_400 + 20 * 3600;
        let want = days_from_civil(2026, 11, 2) as u64 * 86_400 + 8 * 3600;
        assert_eq!(unix_secs(next_pacific_midnight(at(now))), want);
    }
}
