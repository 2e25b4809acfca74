//! Timestamps as the API and the stores read and write them. A leaf: it imports nothing from the
//! crate, so requests, inputs and the monitoring store can all share it.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, TimeDelta, Utc};

/// RFC 3339, normalised to UTC.
pub fn parse_rfc3339(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// RFC 3339, or the `YYYY-MM-DD HH:MM:SS` of ETT-style CSV files, read as UTC.
pub fn parse_timestamp_lenient(text: &str) -> Option<DateTime<Utc>> {
    parse_rfc3339(text).or_else(|| {
        NaiveDateTime::parse_from_str(text.trim(), "%Y-%m-%d %H:%M:%S")
            .ok()
            .map(|t| t.and_utc())
    })
}

/// RFC 3339 with whole seconds and `Z`, the form every answer uses.
pub fn format_rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `horizon` steps of `step`; `None` when the span does not fit a date at all.
pub fn span_of_steps(step: std::time::Duration, steps: usize) -> Option<TimeDelta> {
    TimeDelta::from_std(step)
        .ok()?
        .checked_mul(i32::try_from(steps).ok()?)
}

/// The `steps` timestamps after `last`, `step` apart; stops early rather than overflow (callers
/// check the span first, so a stop only protects one that did not).
pub fn steps_after(last: DateTime<Utc>, step: std::time::Duration, steps: usize) -> Vec<String> {
    let step = TimeDelta::from_std(step).unwrap_or(TimeDelta::MAX);
    (1..=steps)
        .map_while(|k| {
            let offset = step.checked_mul(i32::try_from(k).ok()?)?;
            last.checked_add_signed(offset)
        })
        .map(format_rfc3339)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_parsing_reads_rfc3339_and_ett_csv_stamps_as_utc() {
        let a = parse_timestamp_lenient("2018-01-01T02:00:00+02:00").unwrap();
        let b = parse_timestamp_lenient("2018-01-01 00:00:00").unwrap();
        assert_eq!(a, b);
        assert!(parse_timestamp_lenient("yesterday").is_none());
    }

    #[test]
    fn steps_are_stamped_at_the_frequency_and_never_overflow() {
        let last = parse_rfc3339("2018-02-20T23:00:00Z").unwrap();
        let stamps = steps_after(last, std::time::Duration::from_secs(3600), 2);
        assert_eq!(stamps, ["2018-02-21T00:00:00Z", "2018-02-21T01:00:00Z"]);
        let near_the_end = DateTime::<Utc>::MAX_UTC - TimeDelta::hours(1);
        assert!(steps_after(near_the_end, std::time::Duration::from_secs(3600), 3).len() < 3);
    }
}
