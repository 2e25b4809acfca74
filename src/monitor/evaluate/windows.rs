//! How far a run looks: which targets are due, and which origin-hour partitions hold the
//! forecasts that the new actuals can complete.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Duration, Utc};

use crate::monitor::observations::Observation;

/// How far a run looks around what arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvaluationWindow {
    /// The furthest a forecast reaches past its origin (horizon × frequency of the models
    /// evaluated): an actual at `t` can complete forecasts whose origins lie in `[t - span, t)`.
    pub span: Duration,
    /// How far a series' actuals must run past a target, in data time, before the target counts
    /// as missing: out-of-order actuals within it still score.
    pub grace: Duration,
    /// How long the watermark trails the clock: an object S3 stamped earlier but that was not
    /// yet listable (a slow upload) is still read. Objects seen inside it are remembered by key.
    pub settle: Duration,
}

impl EvaluationWindow {
    /// Slow uploads (a 64 MB Firehose object) finish well within this.
    pub const SETTLE: Duration = Duration::minutes(5);

    /// The window for a model that forecasts `horizon` steps of `frequency`.
    pub fn for_horizon(horizon: usize, frequency: std::time::Duration, grace: Duration) -> Self {
        let step = Duration::from_std(frequency).unwrap_or(Duration::hours(1));
        EvaluationWindow {
            span: step * i32::try_from(horizon).unwrap_or(i32::MAX),
            grace,
            settle: Self::SETTLE,
        }
    }
}

/// Which targets are due, per series: everything its actuals have passed, less the grace. A due
/// target without an actual is missing.
pub(super) struct DueTargets {
    /// Per series ever seen, the latest actual timestamp read, this run's included.
    pub(super) seen_until: BTreeMap<String, DateTime<Utc>>,
    /// Per series with new actuals, the latest target time that is due now.
    pub(super) due_until: HashMap<String, DateTime<Utc>>,
    /// The same series' latest due target time before this run (none for a new series).
    pub(super) previously_due: HashMap<String, DateTime<Utc>>,
}

impl DueTargets {
    /// The due targets once `new_actuals` are added to the series' latest timestamps
    /// `seen_before`.
    pub(super) fn after(
        seen_before: &BTreeMap<String, DateTime<Utc>>,
        new_actuals: &[Observation],
        grace: Duration,
    ) -> Self {
        let mut seen_until = seen_before.clone();
        for o in new_actuals {
            let seen = seen_until.entry(o.series_id.clone()).or_insert(o.timestamp);
            *seen = (*seen).max(o.timestamp);
        }
        let touched: BTreeSet<&str> = new_actuals.iter().map(|o| o.series_id.as_str()).collect();
        let due_until: HashMap<String, DateTime<Utc>> = touched
            .iter()
            .map(|s| (s.to_string(), seen_until[*s] - grace))
            .collect();
        // Only the series with new actuals: `seen_before` holds every series ever seen.
        let previously_due: HashMap<String, DateTime<Utc>> = touched
            .iter()
            .filter_map(|s| {
                let seen = seen_before.get(*s)?;
                Some((s.to_string(), *seen - grace))
            })
            .collect();
        DueTargets {
            seen_until,
            due_until,
            previously_due,
        }
    }

    /// The origin hours to read for `new_actuals` (see [`origin_hours`]).
    pub(super) fn origin_hours(
        &self,
        new_actuals: &[Observation],
        span: Duration,
    ) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
        origin_hours(new_actuals, &self.previously_due, &self.due_until, span)
    }
}

/// Whole hours since the epoch, rounded down.
fn hour_index(t: DateTime<Utc>) -> i64 {
    t.timestamp().div_euclid(3600)
}

fn hour_start(index: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(index * 3600, 0).unwrap_or_default()
}

/// Whole hours (each the start of its hour), in order, as disjoint ranges of consecutive hours.
pub(super) fn hour_ranges(
    hours: impl Iterator<Item = DateTime<Utc>>,
) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    merge_hours(hours.map(|h| (hour_index(h), hour_index(h))).collect())
}

/// Merges the hour ranges of two lists into disjoint ones, in order.
pub(super) fn merge_ranges(
    ranges: Vec<(DateTime<Utc>, DateTime<Utc>)>,
) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    merge_hours(
        ranges
            .into_iter()
            .map(|(first, last)| (hour_index(first), hour_index(last)))
            .collect(),
    )
}

/// Merges closed hour intervals into disjoint ranges of whole hours, in order.
fn merge_hours(mut intervals: Vec<(i64, i64)>) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    intervals.sort_unstable();
    let mut merged: Vec<(i64, i64)> = Vec::new();
    for (first, last) in intervals {
        match merged.last_mut() {
            Some(previous) if first <= previous.1 + 1 => previous.1 = previous.1.max(last),
            _ => merged.push((first, last)),
        }
    }
    merged
        .into_iter()
        .map(|(first, last)| (hour_start(first), hour_start(last)))
        .collect()
}

/// The origin hours to read for `new_actuals`: one span before each (the forecasts it can
/// complete), and per series the forecasts whose targets became due (missing, if no actual came).
fn origin_hours(
    new_actuals: &[Observation],
    previously_due: &HashMap<String, DateTime<Utc>>,
    due_until: &HashMap<String, DateTime<Utc>>,
    span: Duration,
) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let mut intervals: Vec<(i64, i64)> = new_actuals
        .iter()
        .map(|o| (hour_index(o.timestamp - span), hour_index(o.timestamp)))
        .collect();
    let mut earliest_new: HashMap<&str, DateTime<Utc>> = HashMap::new();
    for o in new_actuals {
        let earliest = earliest_new.entry(&o.series_id).or_insert(o.timestamp);
        *earliest = (*earliest).min(o.timestamp);
    }
    for (series, due) in due_until {
        let from = previously_due
            .get(series)
            .copied()
            .or_else(|| earliest_new.get(series.as_str()).copied())
            .unwrap_or(*due);
        if from < *due {
            intervals.push((hour_index(from - span), hour_index(*due)));
        }
    }
    merge_hours(intervals)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::evaluate::fixtures::{obs, t};

    #[test]
    fn origin_hours_cover_one_span_before_each_new_actual_and_the_newly_due() {
        // GIVEN actuals at hours 30 and 100 of one series, a 24-hour span, and hour 20 due before
        let actuals = [obs("a", 30, 1.0), obs("a", 100, 1.0)];
        let previously_due = HashMap::from([("a".to_string(), t(20))]);
        let due_until = HashMap::from([("a".to_string(), t(99))]);
        let hours = origin_hours(&actuals, &previously_due, &due_until, Duration::hours(24));
        // THEN the forecasts of the newly due targets (20, 99] and of both actuals are read,
        // as one range of whole hours
        assert_eq!(hours, vec![(t(-4), t(100))]);
        // AND without anything due, two far-apart actuals read two short ranges
        let hours = origin_hours(
            &actuals,
            &HashMap::new(),
            &HashMap::new(),
            Duration::hours(24),
        );
        assert_eq!(hours, vec![(t(6), t(30)), (t(76), t(100))]);
    }
}
