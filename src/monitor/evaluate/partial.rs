//! What a part of a run scored, as sums that merge: one shard's pairs, or many shards' merged.
//!
//! Every figure an evaluation publishes is a function of these sums, so a run split by series
//! into any number of parts publishes what one process would (the counts exactly, the sums up to
//! the order of their additions):
//!
//! - counts add;
//! - the accuracy and coverage sums add ([`Accumulator`], [`CoverageSum`]);
//! - the comparisons of versions add per origin ([`Comparison::merge`]);
//! - the errors that recalibrate intervals are the latest `window` per version and step in one
//!   total order (target time, then a hash of the forecast, then the error), so the latest of
//!   the parts' latest are the latest of all;
//! - the charted series is the busiest, ties to the smallest id, whichever part it is in;
//! - the quarantined lines are counted whole and listed up to [`MAX_QUARANTINED_LISTED`].

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::charted::ChartSeries;
use super::comparing::VersionPair;
use super::figures::{Evaluation, IntervalScores, VersionScores};
use crate::monitor::accuracy::{Accumulator, Sum};
use crate::monitor::calibration::ScoredError;
use crate::monitor::store::Quarantined;
use crate::monitor::verdict::Comparison;

/// Quarantined lines listed in a report by key and line; all of them are counted.
pub const MAX_QUARANTINED_LISTED: usize = 100;

/// What a run counts, as [`Evaluation`] reports it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(super) struct Counts {
    pub(super) actuals_read: usize,
    pub(super) objects_read: usize,
    pub(super) forecasts_scored: usize,
    pub(super) forecasts_pending: usize,
    pub(super) pairs: usize,
    pub(super) missing_actuals: usize,
    pub(super) duplicate_actuals: usize,
    pub(super) conflicting_actuals: usize,
    pub(super) late_actuals: usize,
    pub(super) late_forecasts: usize,
    pub(super) quarantined_lines: usize,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        let Counts {
            actuals_read,
            objects_read,
            forecasts_scored,
            forecasts_pending,
            pairs,
            missing_actuals,
            duplicate_actuals,
            conflicting_actuals,
            late_actuals,
            late_forecasts,
            quarantined_lines,
        } = *other;
        self.actuals_read += actuals_read;
        self.objects_read += objects_read;
        self.forecasts_scored += forecasts_scored;
        self.forecasts_pending += forecasts_pending;
        self.pairs += pairs;
        self.missing_actuals += missing_actuals;
        self.duplicate_actuals += duplicate_actuals;
        self.conflicting_actuals += conflicting_actuals;
        self.late_actuals += late_actuals;
        self.late_forecasts += late_forecasts;
        self.quarantined_lines += quarantined_lines;
    }
}

/// Sums behind one version's [`VersionScores`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct VersionSums {
    pub(super) model: String,
    pub(super) overall: Accumulator,
    pub(super) buckets: BTreeMap<String, Accumulator>,
}

impl VersionSums {
    fn merge(&mut self, other: &VersionSums) {
        if self.model.is_empty() {
            self.model.clone_from(&other.model);
        }
        self.overall.merge(&other.overall);
        for (bucket, sums) in &other.buckets {
            self.buckets.entry(bucket.clone()).or_default().merge(sums);
        }
    }
}

/// Sums behind [`IntervalScores`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(super) struct CoverageSum {
    pub(super) level: f64,
    pub(super) inside: usize,
    pub(super) pairs: usize,
    pub(super) width: Sum,
}

impl CoverageSum {
    pub(super) fn add(&mut self, lower: f64, upper: f64, actual: f64) {
        self.inside += usize::from(lower <= actual && actual <= upper);
        self.pairs += 1;
        self.width.add(upper - lower);
    }

    fn merge(&mut self, other: &CoverageSum) {
        self.level = other.level;
        self.inside += other.inside;
        self.pairs += other.pairs;
        self.width.merge(other.width);
    }
}

/// (version, model, level as text, horizon bucket); the bucket "" is all steps.
pub(super) type CoverageKey = (String, String, String, String);

/// The series a part would chart, and how many of its forecasts were scored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ChartCandidate {
    pub(super) forecasts: usize,
    pub(super) series: ChartSeries,
}

impl ChartCandidate {
    /// The busier of two, ties to the smaller series id.
    fn busier(self, other: ChartCandidate) -> ChartCandidate {
        let key = |c: &ChartCandidate| (c.forecasts, std::cmp::Reverse(c.series.series_id.clone()));
        if key(&other) > key(&self) {
            other
        } else {
            self
        }
    }
}

/// The sums of one part of a run, or of many merged.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Partial {
    pub(super) counts: Counts,
    /// Actual objects written in `(after, until]` were read as new: the earliest `after` of the
    /// parts (`None`, from the beginning, wins) and the latest `until`.
    pub(super) actuals_after: Option<DateTime<Utc>>,
    pub(super) actuals_until: Option<DateTime<Utc>>,
    /// A part that read no actuals has no `after` to offer.
    pub(super) read_from_start: bool,
    #[serde(with = "entries")]
    pub(super) versions: BTreeMap<String, VersionSums>,
    #[serde(with = "entries")]
    pub(super) out_of_range: BTreeMap<String, VersionSums>,
    #[serde(with = "entries")]
    pub(super) coverage: BTreeMap<CoverageKey, CoverageSum>,
    #[serde(with = "entries")]
    pub(super) comparisons: BTreeMap<VersionPair, Comparison>,
    /// The latest scored errors per version and step (see the module doc).
    pub(super) errors: Vec<ScoredError>,
    /// How many `errors` are kept per version and step (0: all of them).
    pub(super) errors_kept: usize,
    pub(super) chart: Option<ChartCandidate>,
    /// The longest horizon among the forecasts read: the report's horizon buckets.
    pub(super) horizon: usize,
    pub(super) quarantined: Vec<Quarantined>,
}

impl Partial {
    /// Adds another part's sums.
    pub fn merge(&mut self, other: Partial) {
        self.counts.add(&other.counts);
        self.read_from_start |= other.read_from_start;
        self.actuals_after = match (self.actuals_after, other.actuals_after) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.actuals_until = self.actuals_until.max(other.actuals_until);
        merge_into(&mut self.versions, other.versions, VersionSums::merge);
        merge_into(
            &mut self.out_of_range,
            other.out_of_range,
            VersionSums::merge,
        );
        merge_into(&mut self.coverage, other.coverage, CoverageSum::merge);
        merge_into(&mut self.comparisons, other.comparisons, Comparison::merge);
        self.errors.extend(other.errors);
        self.errors_kept = self.errors_kept.max(other.errors_kept);
        if self.errors_kept > 0 {
            // Keeps a reduce over many parts to the window's size, not the parts' sum.
            self.keep_latest_errors(self.errors_kept);
        }
        self.chart = match (self.chart.take(), other.chart) {
            (Some(a), Some(b)) => Some(a.busier(b)),
            (a, b) => a.or(b),
        };
        self.horizon = self.horizon.max(other.horizon);
        self.quarantined.extend(other.quarantined);
        self.quarantined.truncate(MAX_QUARANTINED_LISTED);
    }

    /// Keeps the latest `window` errors per version and horizon step, in their total order.
    pub(super) fn keep_latest_errors(&mut self, window: usize) {
        self.errors_kept = window.max(1);
        self.errors = latest_errors(std::mem::take(&mut self.errors), self.errors_kept);
    }

    /// The evaluation these sums publish.
    pub fn finish(self) -> Evaluation {
        let c = self.counts;
        Evaluation {
            actuals_after: if self.read_from_start {
                None
            } else {
                self.actuals_after
            },
            actuals_until: self.actuals_until.unwrap_or_default(),
            actuals_read: c.actuals_read,
            objects_read: c.objects_read,
            forecasts_scored: c.forecasts_scored,
            forecasts_pending: c.forecasts_pending,
            pairs: c.pairs,
            missing_actuals: c.missing_actuals,
            duplicate_actuals: c.duplicate_actuals,
            conflicting_actuals: c.conflicting_actuals,
            late_actuals: c.late_actuals,
            late_forecasts: c.late_forecasts,
            quarantined_lines: c.quarantined_lines,
            quarantined: self.quarantined,
            by_version: version_scores(self.versions),
            chart_series: self.chart.map(|c| c.series),
            scored_errors: self.errors,
            recalibrated: Vec::new(),
            intervals: interval_scores(self.coverage),
            out_of_range: version_scores(self.out_of_range),
            comparisons: self.comparisons,
            compared: Vec::new(),
            horizon: self.horizon,
        }
    }
}

/// The latest `window` of `errors` per version and step, in the order (version, step, target
/// time, forecast hash, error).
pub(crate) fn latest_errors(mut errors: Vec<ScoredError>, window: usize) -> Vec<ScoredError> {
    errors.sort_by(|a, b| {
        (&a.model_version, a.step)
            .cmp(&(&b.model_version, b.step))
            .then_with(|| a.order(b))
    });
    let mut kept: Vec<ScoredError> = Vec::with_capacity(errors.len().min(window * 64));
    let mut group_start = 0;
    for error in errors.into_iter().rev() {
        let same_group = kept.get(group_start).is_some_and(|first| {
            first.model_version == error.model_version && first.step == error.step
        });
        if !same_group {
            group_start = kept.len();
        }
        if kept.len() - group_start < window.max(1) {
            kept.push(error);
        }
    }
    kept.reverse();
    kept
}

fn merge_into<K: Ord, V: Default>(
    into: &mut BTreeMap<K, V>,
    from: BTreeMap<K, V>,
    merge: impl Fn(&mut V, &V),
) {
    for (key, value) in from {
        match into.entry(key) {
            std::collections::btree_map::Entry::Occupied(mut held) => merge(held.get_mut(), &value),
            std::collections::btree_map::Entry::Vacant(empty) => {
                empty.insert(value);
            }
        }
    }
}

/// The scores of each version with at least one pair scored.
fn version_scores(versions: BTreeMap<String, VersionSums>) -> BTreeMap<String, VersionScores> {
    versions
        .into_iter()
        .filter_map(|(version, sums)| {
            Some((
                version,
                VersionScores {
                    model: sums.model,
                    overall: sums.overall.scores()?,
                    horizon_buckets: sums
                        .buckets
                        .into_iter()
                        .filter_map(|(b, acc)| Some((b, acc.scores()?)))
                        .collect(),
                },
            ))
        })
        .collect()
}

fn interval_scores(
    sums: BTreeMap<CoverageKey, CoverageSum>,
) -> BTreeMap<String, Vec<IntervalScores>> {
    let mut by_version: BTreeMap<String, Vec<IntervalScores>> = BTreeMap::new();
    for ((version, model, _, bucket), sum) in sums {
        by_version.entry(version).or_default().push(IntervalScores {
            model,
            level: sum.level,
            horizon_bucket: (!bucket.is_empty()).then_some(bucket),
            coverage: sum.inside as f64 / sum.pairs.max(1) as f64,
            width: sum.width.value() / sum.pairs.max(1) as f64,
            pairs: sum.pairs,
        });
    }
    by_version
}

/// A map with keys JSON cannot name (tuples) as a list of `[key, value]` entries.
mod entries {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        map: &BTreeMap<K, V>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(map.iter())
    }

    pub(super) fn deserialize<'de, K, V, D>(deserializer: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(deserializer)?
            .into_iter()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::forecast::Interval;
    use crate::monitor::compare::Loss;
    use crate::monitor::evaluate::fixtures::{obs, record, t};
    use crate::monitor::evaluate::scoring::{evaluate_part, Increment};
    use crate::monitor::observations::Observation;
    use crate::monitor::store::{shard_of, ForecastRecord};

    /// 300 series, two versions forecasting 24 steps from two origins each (one of them with
    /// intervals), their actuals with duplicates and conflicts, and every target due.
    fn fleet() -> (
        Vec<ForecastRecord>,
        Vec<Observation>,
        HashMap<String, DateTime<Utc>>,
    ) {
        let (mut forecasts, mut actuals, mut due) = (Vec::new(), Vec::new(), HashMap::new());
        for s in 0..300 {
            let id = format!("meter-{s}");
            let wave = |h: i64| 10.0 + ((s * 7 + h as usize) % 13) as f64 * 0.37;
            for origin in [0, 12] {
                for (version, bias) in [("1", 0.3), ("2", -0.1)] {
                    let values: Vec<f64> = (1..=24)
                        .map(|k| wave(origin + k) + bias * k as f64 / 7.0)
                        .collect();
                    let mut forecast = record(&id, origin, &values, version);
                    if version == "2" {
                        forecast.intervals = vec![Interval {
                            level: 0.8,
                            lower: values.iter().map(|v| v - 0.5).collect(),
                            upper: values.iter().map(|v| v + 0.5).collect(),
                        }];
                    }
                    forecasts.push(forecast);
                }
            }
            // Hours 1..=30 arrive, except every 11th series misses hour 5; every 17th sends hour
            // 3 twice, the second time with another value.
            for h in 1..=30 {
                if h == 5 && s % 11 == 0 {
                    continue;
                }
                actuals.push(obs(&id, h, wave(h)));
            }
            if s % 17 == 0 {
                actuals.push(obs(&id, 3, wave(3) + 1.0));
            }
            due.insert(id, t(30));
        }
        (forecasts, actuals, due)
    }

    fn part(
        forecasts: &[ForecastRecord],
        actuals: &[Observation],
        due: &HashMap<String, DateTime<Utc>>,
        keep: impl Fn(&str) -> bool,
    ) -> Partial {
        let forecasts: Vec<ForecastRecord> = forecasts
            .iter()
            .filter(|f| keep(&f.series_id))
            .cloned()
            .collect();
        let actuals: Vec<Observation> = actuals
            .iter()
            .filter(|o| keep(&o.series_id))
            .cloned()
            .collect();
        let (mut partial, _) = evaluate_part(&Increment {
            forecasts: &forecasts,
            new_actuals: &actuals,
            settled: &[],
            due_until: due,
            earlier_actuals: &[],
            errors_kept: 0,
        });
        partial.keep_latest_errors(50);
        partial
    }

    fn close(a: f64, b: f64) -> bool {
        a == b || (a - b).abs() <= 1e-12 * a.abs().max(b.abs())
    }

    #[test]
    fn a_run_split_by_series_publishes_what_the_whole_run_does() {
        // GIVEN a fleet scored whole, and scored in 7 series-hash shards then merged
        let (forecasts, actuals, due) = fleet();
        let whole = part(&forecasts, &actuals, &due, |_| true).finish();
        let mut merged = Partial::default();
        for shard in 0..7 {
            merged.merge(part(&forecasts, &actuals, &due, |id| {
                shard_of(id, 7) == shard
            }));
        }
        let split = merged.finish();
        // THEN every count is equal, bit for bit
        let counts = |e: &Evaluation| {
            (
                e.actuals_read,
                e.forecasts_scored,
                e.forecasts_pending,
                e.pairs,
                e.missing_actuals,
                e.duplicate_actuals,
                e.conflicting_actuals,
                e.late_actuals,
                e.late_forecasts,
            )
        };
        assert_eq!(counts(&split), counts(&whole));
        assert!(whole.pairs > 20_000 && whole.missing_actuals > 0 && whole.conflicting_actuals > 0);
        // AND every score, overall and per horizon bucket, within 1e-12 relative
        assert_eq!(split.by_version.len(), 2);
        for (version, scores) in &whole.by_version {
            let other = &split.by_version[version];
            let groups = std::iter::once((&scores.overall, &other.overall)).chain(
                scores
                    .horizon_buckets
                    .iter()
                    .map(|(b, s)| (s, &other.horizon_buckets[b])),
            );
            for (a, b) in groups {
                assert_eq!(a.count, b.count);
                for (x, y) in [
                    (a.mae, b.mae),
                    (a.rmse, b.rmse),
                    (a.wape, b.wape),
                    (a.bias, b.bias),
                    (a.mase, b.mase),
                ] {
                    assert!(close(x, y), "version {version}: {x} vs {y}");
                }
            }
        }
        // AND the coverage of the intervals
        for (a, b) in whole.intervals["2"].iter().zip(&split.intervals["2"]) {
            assert_eq!(
                (a.pairs, &a.horizon_bucket, a.level),
                (b.pairs, &b.horizon_bucket, b.level)
            );
            assert!(close(a.coverage, b.coverage) && close(a.width, b.width));
        }
        // AND the comparison of the two versions, origin by origin
        let key = ("1".to_string(), "2".to_string());
        let (a, b) = (&whole.comparisons[&key], &split.comparisons[&key]);
        assert_eq!(a.overall.pairs(), b.overall.pairs());
        let (da, db) = (
            a.overall.per_origin(Loss::Squared),
            b.overall.per_origin(Loss::Squared),
        );
        assert_eq!(da.len(), 2);
        assert!(
            da.iter().zip(&db).all(|(x, y)| close(*x, *y)),
            "{da:?} vs {db:?}"
        );
        // AND the errors the intervals are recalibrated from: the same 50 per version and step
        assert_eq!(whole.scored_errors.len(), 2 * 24 * 50);
        assert_eq!(split.scored_errors.len(), whole.scored_errors.len());
        assert!(
            split.scored_errors == whole.scored_errors,
            "other errors kept"
        );
        // AND the charted series
        assert_eq!(
            split.chart_series.map(|c| c.series_id),
            whole.chart_series.map(|c| c.series_id)
        );
    }

    #[test]
    fn the_latest_errors_are_the_same_whatever_order_they_arrive_in() {
        let error = |at: i64, rank: u64, step: usize| ScoredError {
            model_version: "1".into(),
            step,
            at: t(at),
            error: rank as f64,
            rank,
        };
        // Ten errors of one target time and two older ones, for two steps.
        let mut errors: Vec<ScoredError> = (0..10)
            .flat_map(|r| [error(5, r, 0), error(5, r, 1)])
            .chain([error(1, 99, 0), error(2, 98, 1)])
            .collect();
        let forwards = latest_errors(errors.clone(), 4);
        errors.reverse();
        let backwards = latest_errors(errors, 4);
        assert_eq!(forwards, backwards);
        // The latest target time, and among its errors the highest ranks, per step.
        let kept: Vec<(usize, u64)> = forwards.iter().map(|e| (e.step, e.rank)).collect();
        assert_eq!(
            kept,
            vec![
                (0, 6),
                (0, 7),
                (0, 8),
                (0, 9),
                (1, 6),
                (1, 7),
                (1, 8),
                (1, 9)
            ]
        );
    }
}
