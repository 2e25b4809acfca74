//! Pairing and scoring: each new actual meets the forecasts of its (series, target time), the
//! pairs are scored per model version and horizon bucket, the intervals served with them are
//! scored for coverage, and every pair dealt with is settled. Pure: no I/O.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};

use super::charted::ChartSeries;
use super::comparing::Targets;
use super::figures::Evaluation;
use super::partial::{ChartCandidate, Counts, CoverageKey, CoverageSum, Partial, VersionSums};
use crate::monitor::accuracy::{bucket_of, Accumulator};
use crate::monitor::calibration::ScoredError;
use crate::monitor::observations::Observation;
use crate::monitor::store::{ForecastRecord, SettledLine, SettledPair};

/// What one run works on.
pub struct Increment<'a> {
    /// The forecasts whose targets the new actuals may complete (any order, duplicates allowed:
    /// a retried write logs the same forecast twice).
    pub forecasts: &'a [ForecastRecord],
    /// Actuals that arrived since the last run, in arrival order.
    pub new_actuals: &'a [Observation],
    /// Pairs earlier runs settled.
    pub settled: &'a [SettledPair],
    /// Per series, the latest target time that is due: a due target without an actual is
    /// missing.
    pub due_until: &'a HashMap<String, DateTime<Utc>>,
    /// Actuals earlier runs read, from their index by hour, for targets of forecasts that came
    /// late: known values, not new arrivals.
    pub earlier_actuals: &'a [Observation],
    /// Scored errors kept per version and step for the recalibration (0: every one): a shard of
    /// any size holds this many, not one per pair.
    pub errors_kept: usize,
}

/// What a run scored, and the pairs it settled with their forecasts' origins. Pure: no I/O.
pub fn evaluate(increment: &Increment) -> (Evaluation, Vec<(DateTime<Utc>, SettledLine)>) {
    let (partial, settled) = evaluate_part(increment);
    (partial.finish(), settled)
}

/// [`evaluate`] as sums that merge with other parts' (see `partial`).
pub fn evaluate_part(increment: &Increment) -> (Partial, Vec<(DateTime<Utc>, SettledLine)>) {
    let mut counts = Counts::default();
    let mut actuals = KnownActuals::gather(increment.settled, increment.new_actuals, &mut counts);
    actuals.add_earlier(increment.earlier_actuals);
    let mut scoring = Scoring {
        rivals: rivals(increment.forecasts),
        errors_kept: increment.errors_kept,
        ..Scoring::default()
    };
    for (id, record) in each_forecast_once(increment.forecasts) {
        let due_until = increment.due_until.get(record.series_id.as_str()).copied();
        scoring.settle_forecast(&id, record, &actuals, due_until, &mut counts);
    }
    scoring.into_partial(counts, increment)
}

/// The actuals a run knows, keyed by (series, time) unless said otherwise. The first value ever
/// seen for (series, time) wins: a settled earlier one, then the first new one.
struct KnownActuals<'a> {
    /// The values earlier runs scored against.
    settled_values: HashMap<(&'a str, DateTime<Utc>), f64>,
    /// The pairs earlier runs settled, by (forecast id, target time).
    settled_pairs: HashSet<(&'a str, DateTime<Utc>)>,
    /// The targets earlier runs counted missing.
    counted_missing: HashSet<(&'a str, DateTime<Utc>)>,
    /// The first new value of each (series, time) without a settled one.
    new_values: HashMap<(&'a str, DateTime<Utc>), f64>,
    /// Values earlier runs read (their index by hour), for what neither of the above knows.
    earlier_values: HashMap<(&'a str, DateTime<Utc>), f64>,
}

impl<'a> KnownActuals<'a> {
    /// What earlier runs settled, and the new actuals; counts the duplicates, conflicts and late
    /// arrivals among the new ones.
    fn gather(
        settled: &'a [SettledPair],
        new_actuals: &'a [Observation],
        counts: &mut Counts,
    ) -> Self {
        let mut known = KnownActuals::settled_by_earlier_runs(settled);
        for o in new_actuals {
            known.add_new(o, counts);
        }
        known
    }

    fn settled_by_earlier_runs(settled: &'a [SettledPair]) -> Self {
        let mut known = KnownActuals {
            settled_values: HashMap::new(),
            settled_pairs: HashSet::new(),
            counted_missing: HashSet::new(),
            new_values: HashMap::new(),
            earlier_values: HashMap::new(),
        };
        for pair in settled {
            known
                .settled_pairs
                .insert((pair.forecast.as_str(), pair.timestamp));
            match pair.value {
                Some(value) => {
                    known
                        .settled_values
                        .insert((pair.series_id.as_str(), pair.timestamp), value);
                }
                None => {
                    known
                        .counted_missing
                        .insert((pair.series_id.as_str(), pair.timestamp));
                }
            }
        }
        known
    }

    fn add_new(&mut self, o: &'a Observation, counts: &mut Counts) {
        let key = (o.series_id.as_str(), o.timestamp);
        let earlier = self
            .settled_values
            .get(&key)
            .or_else(|| self.new_values.get(&key));
        match earlier {
            Some(&first) => {
                counts.duplicate_actuals += 1;
                if first != o.value {
                    counts.conflicting_actuals += 1;
                }
            }
            None => {
                if self.counted_missing.contains(&key) {
                    counts.late_actuals += 1;
                }
                self.new_values.insert(key, o.value);
            }
        }
    }

    /// Adds the values earlier runs read; the first of each (series, time) wins, as ever.
    fn add_earlier(&mut self, earlier: &'a [Observation]) {
        for o in earlier {
            self.earlier_values
                .entry((o.series_id.as_str(), o.timestamp))
                .or_insert(o.value);
        }
    }

    /// Whether the value for (series, time) was read by an earlier run (it is in its settled
    /// marks or its index, not among this run's arrivals): a forecast scored against it reached
    /// the log after it.
    fn arrived_earlier(&self, series: &str, at: DateTime<Utc>) -> bool {
        !self.new_values.contains_key(&(series, at))
    }

    fn is_settled(&self, forecast: &str, at: DateTime<Utc>) -> bool {
        self.settled_pairs.contains(&(forecast, at))
    }

    /// The value a target is scored against: a new one, or one seen before (the forecast was
    /// logged after its first actual arrived, e.g. a replay that sent the actuals first).
    fn value(&self, series: &str, at: DateTime<Utc>) -> Option<f64> {
        self.new_values
            .get(&(series, at))
            .or_else(|| self.settled_values.get(&(series, at)))
            .or_else(|| self.earlier_values.get(&(series, at)))
            .copied()
    }
}

/// Each forecast once, with its id: a retried write logs the same forecast twice.
fn each_forecast_once(
    forecasts: &[ForecastRecord],
) -> impl Iterator<Item = (String, &ForecastRecord)> {
    let mut seen = HashSet::new();
    forecasts.iter().filter_map(move |record| {
        let id = record.id();
        if seen.insert(id.clone()) {
            Some((id, record))
        } else {
            None
        }
    })
}

/// The (series, origin)s that two or more versions forecast: only their targets are compared,
/// so a run without a challenger keeps nothing per pair for the comparisons.
fn rivals(forecasts: &[ForecastRecord]) -> HashSet<(&str, DateTime<Utc>)> {
    let mut first_version: HashMap<(&str, DateTime<Utc>), &str> = HashMap::new();
    let mut rivals = HashSet::new();
    for record in forecasts.iter().filter(|r| !r.out_of_range) {
        let key = (record.series_id.as_str(), record.origin);
        let first = *first_version.entry(key).or_insert(&record.model_version);
        if first != record.model_version {
            rivals.insert(key);
        }
    }
    rivals
}

/// What the forecasts dealt with so far add up to.
#[derive(Default)]
struct Scoring<'a> {
    /// See [`rivals`].
    rivals: HashSet<(&'a str, DateTime<Utc>)>,
    /// See [`Increment::errors_kept`].
    errors_kept: usize,
    /// How many errors the last pruning kept: the next waits until there are many more.
    errors_after_pruning: usize,
    /// Per model version.
    versions: BTreeMap<String, VersionSums>,
    /// Per model version, the forecasts made from out-of-range windows.
    out_of_range: BTreeMap<String, VersionSums>,
    /// The sums of each level and bucket.
    coverage: BTreeMap<CoverageKey, CoverageSum>,
    scored_errors: Vec<ScoredError>,
    /// Per forecast, with its origin, which partitions the marks.
    newly_settled: Vec<(DateTime<Utc>, SettledLine)>,
    /// Per series, the forecasts with a pair scored: the chart draws one series.
    scored_per_series: HashMap<&'a str, Vec<&'a ForecastRecord>>,
    /// The targets with an actual, and every version's forecast of them.
    targets: Targets<'a>,
}

impl<'a> Scoring<'a> {
    /// Deals with each pair of one forecast that no earlier run settled: one with an actual is
    /// scored, a due one without is missing, and both are settled; the rest wait for a later run.
    fn settle_forecast(
        &mut self,
        id: &str,
        record: &'a ForecastRecord,
        actuals: &KnownActuals<'_>,
        due_until: Option<DateTime<Utc>>,
        counts: &mut Counts,
    ) {
        let (mut matched, mut unsettled, mut late) = (false, false, false);
        let compared = self
            .rivals
            .contains(&(record.series_id.as_str(), record.origin));
        // Of the target, not of the write: a replayed forecast ranks as the first did.
        let rank = crate::monitor::store::fnv1a(
            format!(
                "{}|{}|{}",
                record.series_id,
                record.origin.timestamp(),
                record.model_version
            )
            .as_bytes(),
        );
        for (step, (timestamp, forecast)) in
            record.timestamps.iter().zip(&record.values).enumerate()
        {
            if actuals.is_settled(id, *timestamp) {
                // A rival version's forecast settled now is compared with this one.
                if let Some(actual) = actuals.value(&record.series_id, *timestamp) {
                    if compared {
                        self.targets.add(record, step, actual, false);
                    }
                }
                continue;
            }
            let value = match actuals.value(&record.series_id, *timestamp) {
                Some(actual) => {
                    self.score_pair(record, (step, *timestamp, rank), *forecast, actual);
                    if compared {
                        self.targets.add(record, step, actual, true);
                    }
                    counts.pairs += 1;
                    matched = true;
                    late |= actuals.arrived_earlier(&record.series_id, *timestamp);
                    Some(actual)
                }
                None if due_until.is_some_and(|due| *timestamp <= due) => {
                    counts.missing_actuals += 1;
                    None
                }
                None => {
                    unsettled = true;
                    continue;
                }
            };
            let line = match self.newly_settled.last_mut() {
                Some((_, line)) if line.forecast() == id => line,
                _ => {
                    let line = SettledLine::new(id.to_owned(), record.series_id.clone());
                    self.newly_settled.push((record.origin, line));
                    &mut self.newly_settled.last_mut().expect("just pushed").1
                }
            };
            line.push(*timestamp, value);
        }
        if matched {
            counts.forecasts_scored += 1;
            self.scored_per_series
                .entry(record.series_id.as_str())
                .or_default()
                .push(record);
        }
        if unsettled {
            counts.forecasts_pending += 1;
        }
        if late {
            counts.late_forecasts += 1;
        }
    }

    /// Adds one (forecast, actual) pair to its version's accuracy, to the errors the interval
    /// calibration learns from, and to the coverage of the intervals served with it.
    /// `target` is (step, target time, the forecast's rank).
    fn score_pair(
        &mut self,
        record: &ForecastRecord,
        (step, at, rank): (usize, DateTime<Utc>, u64),
        forecast: f64,
        actual: f64,
    ) {
        let scores = if record.out_of_range {
            &mut self.out_of_range
        } else {
            &mut self.versions
        };
        let sums = scores
            .entry(record.model_version.clone())
            .or_insert_with(|| VersionSums {
                model: record.model.clone(),
                overall: Accumulator::default(),
                buckets: BTreeMap::new(),
            });
        sums.overall.add(forecast, actual, record.last_value);
        sums.buckets
            .entry(bucket_of(step + 1, record.values.len()))
            .or_default()
            .add(forecast, actual, record.last_value);
        if record.out_of_range {
            return;
        }
        self.scored_errors.push(ScoredError {
            model_version: record.model_version.clone(),
            step,
            at,
            error: (forecast - actual).abs(),
            rank,
        });
        let prune_at = (self.errors_kept * 512).max(2 * self.errors_after_pruning);
        if self.errors_kept > 0 && self.scored_errors.len() >= prune_at {
            // Bounded: the latest of the latest are the latest (see `partial`).
            let errors = std::mem::take(&mut self.scored_errors);
            self.scored_errors = super::partial::latest_errors(errors, self.errors_kept);
            self.errors_after_pruning = self.scored_errors.len();
        }
        self.add_coverage(record, step, actual);
    }

    /// Whether each interval served with the forecast holds the actual at `step`, overall and
    /// in the step's horizon bucket.
    fn add_coverage(&mut self, record: &ForecastRecord, step: usize, actual: f64) {
        let horizon = record.values.len();
        for interval in &record.intervals {
            let (Some(lower), Some(upper)) = (interval.lower.get(step), interval.upper.get(step))
            else {
                continue;
            };
            for bucket in [String::new(), bucket_of(step + 1, horizon)] {
                let key = (
                    record.model_version.clone(),
                    record.model.clone(),
                    interval.level.to_string(),
                    bucket,
                );
                let sum = self.coverage.entry(key).or_default();
                sum.level = interval.level;
                sum.add(*lower, *upper, actual);
            }
        }
    }

    fn into_partial(
        self,
        mut counts: Counts,
        increment: &Increment,
    ) -> (Partial, Vec<(DateTime<Utc>, SettledLine)>) {
        counts.actuals_read = increment.new_actuals.len();
        let chart = ChartSeries::busiest(&self.scored_per_series, increment.new_actuals)
            .map(|(forecasts, series)| ChartCandidate { forecasts, series });
        let partial = Partial {
            counts,
            versions: self.versions,
            out_of_range: self.out_of_range,
            coverage: self.coverage,
            comparisons: self.targets.comparisons(),
            errors: self.scored_errors,
            chart,
            horizon: increment
                .forecasts
                .iter()
                .map(|f| f.values.len())
                .max()
                .unwrap_or(0),
            ..Partial::default()
        };
        (partial, self.newly_settled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::evaluate::fixtures::{obs, record, run, t};

    #[test]
    fn the_first_actual_wins_and_a_conflicting_later_one_is_counted() {
        // GIVEN a forecast of 11 for hour 1, whose actual arrives as 12, then again as 99
        let forecasts = vec![record("a", 0, &[11.0], "1")];
        let actuals = vec![obs("a", 1, 12.0), obs("a", 1, 99.0)];
        let (e, _) = run(&forecasts, &actuals, &[], None);
        // THEN it is scored against the first value, and the conflict is reported
        assert!((e.by_version["1"].overall.mae - 1.0).abs() < 1e-12);
        assert_eq!((e.duplicate_actuals, e.conflicting_actuals), (1, 1));
    }

    #[test]
    fn forecasts_join_actuals_on_series_and_timestamp() {
        // GIVEN a 2-step forecast 11, 12 from hour 0 and actuals 12, 12 (one duplicate, one unrelated)
        let forecasts = vec![record("a", 0, &[11.0, 12.0], "1")];
        let actuals = vec![
            obs("a", 1, 12.0),
            obs("a", 2, 12.0),
            obs("a", 2, 12.0),
            obs("b", 1, 99.0),
        ];
        // WHEN evaluated
        let (e, settled) = run(&forecasts, &actuals, &[], None);
        // THEN errors are -1 and 0: MAE 0.5, bias -0.5; naive (10) errs by 2 and 2: MASE 0.25
        let s = &e.by_version["1"].overall;
        assert_eq!((e.pairs, e.missing_actuals, e.duplicate_actuals), (2, 0, 1));
        assert_eq!(
            e.conflicting_actuals, 0,
            "the duplicate repeats the same value"
        );
        assert!(
            (s.mae - 0.5).abs() < 1e-12
                && (s.bias + 0.5).abs() < 1e-12
                && (s.mase - 0.25).abs() < 1e-12
        );
        assert_eq!(e.by_version["1"].horizon_buckets["1-2"].count, 2);
        assert_eq!(settled.len(), 2, "both pairs are marked settled");
    }

    #[test]
    fn forecasts_from_out_of_range_windows_are_scored_apart_and_teach_the_intervals_nothing() {
        // GIVEN one forecast of series a from a normal window and one of b from a window out of
        // range (a forged history, a unit change), both by version 1, and their actuals
        let normal = record("a", 0, &[11.0], "1");
        let mut flagged = record("b", 0, &[1e7], "1");
        flagged.out_of_range = true;
        let actuals = vec![obs("a", 1, 12.0), obs("b", 1, 12.0)];
        // WHEN evaluated
        let (e, settled) = run(&[normal, flagged], &actuals, &[], None);
        // THEN version 1's scores (metrics, the rollback's evidence) hold only the normal pair
        assert_eq!(e.by_version["1"].overall.count, 1);
        assert!((e.by_version["1"].overall.mae - 1.0).abs() < 1e-12);
        // AND the flagged one is reported apart, settled once, and not a calibration error
        assert_eq!(e.out_of_range["1"].overall.count, 1);
        assert_eq!((e.pairs, settled.len()), (2, 2));
        assert_eq!(e.scored_errors.len(), 1);
    }

    #[test]
    fn a_pair_is_settled_once_whatever_arrives_again() {
        // GIVEN a forecast scored in one run
        let forecasts = vec![record("a", 0, &[11.0, 12.0], "1")];
        let (_, settled) = run(&forecasts, &[obs("a", 1, 12.0)], &[], None);
        // WHEN the same actual is replayed, and one with another value, in a later run
        let replay = [obs("a", 1, 12.0), obs("a", 1, 50.0)];
        let (e, more) = run(&forecasts, &replay, &settled, None);
        // THEN nothing is scored twice; both are duplicates, one a conflict
        assert_eq!((e.pairs, e.forecasts_scored), (0, 0));
        assert_eq!((e.duplicate_actuals, e.conflicting_actuals), (2, 1));
        assert!(more.is_empty());
        // AND the second target still waits for its own actual
        assert_eq!(e.forecasts_pending, 1);
    }

    #[test]
    fn due_targets_without_an_actual_are_missing_once_and_a_late_one_is_counted() {
        // GIVEN two 2-step forecasts, and actuals up to hour 6 except hours 1 and 2
        let forecasts = vec![
            record("a", 0, &[1.0, 2.0], "1"),
            record("a", 5, &[1.0, 2.0], "1"),
        ];
        let actuals: Vec<Observation> = (3..=6).map(|h| obs("a", h, 1.0)).collect();
        // WHEN evaluated with targets up to hour 5 due
        let (e, settled) = run(&forecasts, &actuals, &[], Some(t(5)));
        // THEN hours 1 and 2 are missing, hour 6 is scored, hour 7 waits
        assert_eq!((e.missing_actuals, e.pairs, e.forecasts_pending), (2, 1, 1));
        // AND a late actual for hour 1 neither scores nor counts missing again
        let (e, _) = run(&forecasts, &[obs("a", 1, 1.0)], &settled, Some(t(5)));
        assert_eq!((e.missing_actuals, e.pairs, e.late_actuals), (0, 0, 1));
    }

    #[test]
    fn a_forecast_retried_into_the_log_twice_is_scored_once() {
        let once = record("a", 0, &[11.0], "1");
        let (e, settled) = run(&[once.clone(), once], &[obs("a", 1, 12.0)], &[], None);
        assert_eq!((e.pairs, settled.len()), (1, 1));
    }

    #[test]
    fn the_intervals_served_with_forecasts_are_scored_for_coverage_and_drawn_as_bands() {
        // GIVEN a 2-step forecast 10, 10 served with an 80% interval of +-1
        let mut forecast = record("a", 0, &[10.0, 10.0], "1");
        forecast.intervals = vec![crate::forecast::Interval {
            level: 0.8,
            lower: vec![9.0, 9.0],
            upper: vec![11.0, 11.0],
        }];
        // WHEN its actuals are 10.5 (inside) and 12 (outside)
        let (e, _) = run(
            &[forecast],
            &[obs("a", 1, 10.5), obs("a", 2, 12.0)],
            &[],
            None,
        );
        // THEN half of them were covered, by intervals 2 wide, overall and per horizon bucket
        let scores = &e.intervals["1"];
        let overall = scores.iter().find(|s| s.horizon_bucket.is_none()).unwrap();
        assert_eq!((overall.level, overall.pairs), (0.8, 2));
        assert!((overall.coverage - 0.5).abs() < 1e-12 && (overall.width - 2.0).abs() < 1e-12);
        assert!(scores
            .iter()
            .any(|s| s.horizon_bucket.as_deref() == Some("1-2")));
        // AND the report's chart shades the band
        let svg = e.chart_svg();
        assert!(
            svg.contains("<polygon") && svg.contains("80% intervals"),
            "{svg}"
        );
        // AND a forecast served without intervals adds no coverage
        let (plain, _) = run(
            &[record("b", 0, &[1.0], "1")],
            &[obs("b", 1, 1.0)],
            &[],
            None,
        );
        assert!(plain.intervals.is_empty());
        assert!(!plain.chart_svg().contains("<polygon"));
    }
}
