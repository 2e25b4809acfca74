//! Versions compared on the same actuals: every (series, origin, target) that two versions
//! forecast, once its actual is known, is one compared pair of the two ([`Comparison`]).
//!
//! A pair counts in the run that settles the later of its two forecasts: both sides settled now,
//! or one now and the other by an earlier run (its forecast was logged after the actual arrived).
//! So it counts once, however the two forecasts' scoring is spread over runs. Forecasts from
//! out-of-range windows compare nothing, as they score nothing.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};

use crate::monitor::accuracy::bucket_of;
use crate::monitor::store::ForecastRecord;
pub use crate::monitor::verdict::VersionPair;
use crate::monitor::verdict::{ComparedPair, Comparison};

/// One version's forecast of a target.
struct Side<'a> {
    version: &'a str,
    value: f64,
    step: usize,
    horizon: usize,
    reach_seconds: i64,
    /// Settled by this run (else by an earlier one).
    now: bool,
}

/// A target: (series, origin, target time).
type Target<'a> = (&'a str, DateTime<Utc>, DateTime<Utc>);

/// The targets with a known actual, and each version's forecast of them.
#[derive(Default)]
pub(super) struct Targets<'a> {
    by_target: HashMap<Target<'a>, (f64, Vec<Side<'a>>)>,
}

impl<'a> Targets<'a> {
    /// `record`'s forecast at `step`, whose actual is `actual`; `now` when this run settles it.
    pub(super) fn add(&mut self, record: &'a ForecastRecord, step: usize, actual: f64, now: bool) {
        if record.out_of_range {
            return;
        }
        let (Some(target), Some(value)) = (record.timestamps.get(step), record.values.get(step))
        else {
            return;
        };
        let reach_seconds = record
            .timestamps
            .last()
            .map_or(0, |last| (*last - record.origin).num_seconds());
        let sides = &mut self
            .by_target
            .entry((record.series_id.as_str(), record.origin, *target))
            .or_insert((actual, Vec::new()))
            .1;
        // A version's first forecast of the target speaks for it (a retried write logs it twice).
        if sides.iter().any(|s| s.version == record.model_version) {
            return;
        }
        sides.push(Side {
            version: &record.model_version,
            value: *value,
            step,
            horizon: record.values.len(),
            reach_seconds,
            now,
        });
    }

    /// The comparisons the pairs completed by this run add, per pair of versions.
    pub(super) fn comparisons(self) -> BTreeMap<VersionPair, Comparison> {
        let mut comparisons: BTreeMap<VersionPair, Comparison> = BTreeMap::new();
        for ((_, origin, _), (actual, mut sides)) in self.by_target {
            if sides.len() < 2 {
                continue;
            }
            sides.sort_by(|a, b| a.version.cmp(b.version));
            for (i, first) in sides.iter().enumerate() {
                for second in sides.iter().skip(i + 1).filter(|s| first.now || s.now) {
                    let horizon = first.horizon.min(second.horizon);
                    comparisons
                        .entry((first.version.to_owned(), second.version.to_owned()))
                        .or_default()
                        .add(ComparedPair {
                            origin,
                            bucket: &bucket_of(first.step + 1, horizon),
                            reference: first.value,
                            challenger: second.value,
                            actual,
                            reach_seconds: first.reach_seconds.max(second.reach_seconds),
                        });
                }
            }
        }
        comparisons
    }
}

#[cfg(test)]
mod tests {
    use crate::monitor::compare::Loss;
    use crate::monitor::evaluate::fixtures::{obs, record, run};

    #[test]
    fn two_versions_forecasting_the_same_target_are_compared_once_it_is_scored() {
        // GIVEN versions 1 and 2 forecasting series a from hour 0, two steps, and version 2's
        // forecast logged twice
        let forecasts = vec![
            record("a", 0, &[11.0, 12.0], "1"),
            record("a", 0, &[10.0, 10.0], "2"),
            record("a", 0, &[10.0, 10.0], "2"),
        ];
        // WHEN only the first target's actual (10) has arrived
        let (e, settled) = run(&forecasts, &[obs("a", 1, 10.0)], &[], None);
        // THEN one pair is compared: version 1 erred by 1, version 2 by 0
        let c = &e.comparisons[&("1".to_string(), "2".to_string())];
        assert_eq!(c.overall.pairs(), 1);
        assert_eq!(c.overall.mean_losses(Loss::Absolute), Some((1.0, 0.0)));
        // AND when the second arrives in a later run, only it is added
        let (later, _) = run(&forecasts, &[obs("a", 2, 12.0)], &settled, None);
        let c = &later.comparisons[&("1".to_string(), "2".to_string())];
        assert_eq!(c.overall.pairs(), 1);
        assert_eq!(c.overall.mean_losses(Loss::Absolute), Some((0.0, 2.0)));
    }

    #[test]
    fn a_forecast_logged_after_its_rival_was_scored_is_compared_in_its_own_run() {
        // GIVEN version 1's forecast scored in one run
        let first = vec![record("a", 0, &[11.0], "1")];
        let (e, settled) = run(&first, &[obs("a", 1, 10.0)], &[], None);
        assert!(e.comparisons.is_empty());
        // WHEN version 2's forecast of the same target is logged later, and a run settles it
        let both = vec![first[0].clone(), record("a", 0, &[10.5], "2")];
        let (e, more) = run(&both, &[], &settled, None);
        // THEN the pair is compared once, against the actual the first run scored
        let c = &e.comparisons[&("1".to_string(), "2".to_string())];
        assert_eq!(c.overall.mean_losses(Loss::Absolute), Some((1.0, 0.5)));
        // AND a further run compares nothing again
        let settled: Vec<_> = settled.into_iter().chain(more).collect();
        let (again, _) = run(&both, &[obs("a", 1, 10.0)], &settled, None);
        assert!(again.comparisons.is_empty());
    }

    #[test]
    fn out_of_range_forecasts_and_other_series_compare_nothing() {
        let mut flagged = record("a", 0, &[1e7], "2");
        flagged.out_of_range = true;
        let forecasts = vec![
            record("a", 0, &[11.0], "1"),
            flagged,
            record("b", 0, &[11.0], "2"),
        ];
        let (e, _) = run(
            &forecasts,
            &[obs("a", 1, 10.0), obs("b", 1, 10.0)],
            &[],
            None,
        );
        assert!(e.comparisons.is_empty());
    }
}
