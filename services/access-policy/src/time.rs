//! Human-readable timestamps for decision reasons and audit details.
//!
//! Only formatting is needed (times come in as unix seconds), so a dozen
//! lines of civil-calendar arithmetic beat a date-time dependency.

/// Formats unix seconds as RFC 3339 UTC, e.g. `2023-11-14T22:13:20Z`.
/// Works for every `i64` (years outside 0..=9999 are printed as they are).
pub fn format_unix_time(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Howard Hinnant's `civil_from_days`: proleptic Gregorian date of a day
/// count since 1970-01-01. No overflow for any `i64 / 86400`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (y, m as u32, d as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(format_unix_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix_time(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(format_unix_time(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_unix_time(-1), "1969-12-31T23:59:59Z");
        assert_eq!(format_unix_time(4_102_444_800), "2100-01-01T00:00:00Z");
    }

    #[test]
    fn extremes_do_not_panic() {
        let _ = format_unix_time(i64::MIN);
        let _ = format_unix_time(i64::MAX);
    }
}
