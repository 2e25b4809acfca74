//! Evaluation: join logged forecasts with actuals on (series id, target timestamp) and score them.
//!
//! Each run is driven by the actuals that arrived since the last one (see `store` for the
//! layout). A (forecast, target) pair is scored when its actual arrives, and counted missing once
//! actuals of its series have arrived for timestamps more than the grace beyond it. Either way it
//! is marked settled beside its forecast, so it is dealt with exactly once, whatever replays,
//! duplicates or retried runs follow. Duplicate and conflicting actuals are counted: the first
//! value wins.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use super::accuracy::{bucket_of, horizon_buckets, Accumulator, Scores};
use super::calibration::{OnlineCalibrations, ScoredError};
use super::observations::Observation;
use super::store::{
    AccuracyStore, EvaluationState, ForecastRecord, Quarantined, SettledPair, StoreError,
    VersionScore,
};
use crate::metrics::{Metric, Telemetry};

/// What one evaluation found.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    /// Actual objects written in `(actuals_after, actuals_until]` were read as new.
    pub actuals_after: Option<DateTime<Utc>>,
    pub actuals_until: DateTime<Utc>,
    /// New actual values read.
    pub actuals_read: usize,
    /// Objects read: new actuals, forecasts and settled marks. Bounded by what arrived and the
    /// forecast span, not by the history.
    pub objects_read: usize,
    /// Forecasts with at least one pair scored in this run.
    pub forecasts_scored: usize,
    /// Forecasts read whose targets are not all settled yet (left for a later run).
    pub forecasts_pending: usize,
    pub pairs: usize,
    /// Due targets without an actual.
    pub missing_actuals: usize,
    /// Actuals for a (series, timestamp) that already had one (the first one wins: a later
    /// upload cannot rewrite a value that forecasts were already scored against).
    pub duplicate_actuals: usize,
    /// Those duplicates whose value differs from the first one's.
    pub conflicting_actuals: usize,
    /// Actuals that came after their targets were already counted missing.
    pub late_actuals: usize,
    /// Unreadable lines skipped in the store (see `quarantined`).
    pub quarantined_lines: usize,
    /// The first of them, with their object key and line number.
    pub quarantined: Vec<Quarantined>,
    /// Scores per model version, overall and per horizon bucket.
    pub by_version: BTreeMap<String, VersionScores>,
    #[serde(skip)]
    pub chart_series: Option<ChartSeries>,
    /// Every scored pair's absolute error, for the online calibration of intervals.
    #[serde(skip)]
    pub scored_errors: Vec<ScoredError>,
    /// Versions whose intervals the online calibration now serves (see [`Recalibration`]).
    pub recalibrated: Vec<String>,
    /// Coverage of the intervals served with the scored forecasts, per model version.
    pub intervals: BTreeMap<String, Vec<IntervalScores>>,
}

/// How the intervals of one level did on the pairs a run scored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IntervalScores {
    pub model: String,
    pub level: f64,
    /// `None`: all horizon steps.
    pub horizon_bucket: Option<String>,
    /// Share of actuals inside.
    pub coverage: f64,
    /// Mean upper - lower.
    pub width: f64,
    pub pairs: usize,
}

/// Sums behind [`IntervalScores`].
#[derive(Debug, Default, Clone, Copy)]
struct CoverageSum {
    inside: usize,
    pairs: usize,
    width: f64,
}

impl CoverageSum {
    fn add(&mut self, lower: f64, upper: f64, actual: f64) {
        self.inside += usize::from(lower <= actual && actual <= upper);
        self.pairs += 1;
        self.width += upper - lower;
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct VersionScores {
    pub model: String,
    pub overall: Scores,
    pub horizon_buckets: BTreeMap<String, Scores>,
}

/// The series drawn in the report chart: actuals and the scored forecast trajectories.
#[derive(Debug, Clone)]
pub struct ChartSeries {
    pub series_id: String,
    pub actuals: Vec<(DateTime<Utc>, f64)>,
    pub forecasts: Vec<Vec<(DateTime<Utc>, f64)>>,
    /// The narrowest interval served with each charted forecast.
    pub bands: Vec<Band>,
}

/// One forecast's interval in the chart.
#[derive(Debug, Clone)]
pub struct Band {
    pub level: f64,
    /// `(t, lower, upper)` per step.
    pub points: Vec<(DateTime<Utc>, f64, f64)>,
}

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
}

/// What a run scored, and the pairs it settled with their forecasts' origins. Pure: no I/O.
pub fn evaluate(increment: &Increment) -> (Evaluation, Vec<(DateTime<Utc>, SettledPair)>) {
    // The first value ever seen for (series, time) wins: a settled earlier one, then the first new.
    let mut first_value: HashMap<(&str, DateTime<Utc>), f64> = HashMap::new();
    let mut settled_pairs: HashSet<(&str, DateTime<Utc>)> = HashSet::new();
    let mut counted_missing: HashSet<(&str, DateTime<Utc>)> = HashSet::new();
    for pair in increment.settled {
        settled_pairs.insert((pair.forecast.as_str(), pair.timestamp));
        match pair.value {
            Some(value) => {
                first_value.insert((pair.series_id.as_str(), pair.timestamp), value);
            }
            None => {
                counted_missing.insert((pair.series_id.as_str(), pair.timestamp));
            }
        }
    }
    let (mut duplicate_actuals, mut conflicting_actuals, mut late_actuals) = (0, 0, 0);
    let mut new_truth: HashMap<(&str, DateTime<Utc>), f64> = HashMap::new();
    for o in increment.new_actuals {
        let key = (o.series_id.as_str(), o.timestamp);
        let earlier = first_value.get(&key).or_else(|| new_truth.get(&key));
        match earlier {
            Some(&first) => {
                duplicate_actuals += 1;
                if first != o.value {
                    conflicting_actuals += 1;
                }
            }
            None => {
                if counted_missing.contains(&key) {
                    late_actuals += 1;
                }
                new_truth.insert(key, o.value);
            }
        }
    }

    let mut groups: BTreeMap<String, (String, Accumulator, BTreeMap<String, Accumulator>)> =
        BTreeMap::new();
    let mut newly_settled = Vec::new();
    let mut scored_errors = Vec::new();
    // (version, model, level as text, bucket) -> sums; bucket "" is all steps.
    let mut coverage: BTreeMap<(String, String, String, String), (f64, CoverageSum)> =
        BTreeMap::new();
    let (mut scored, mut pending, mut pairs, mut missing) = (0, 0, 0, 0);
    let mut per_series: HashMap<&str, Vec<&ForecastRecord>> = HashMap::new();
    let mut seen_forecasts = HashSet::new();
    for record in increment.forecasts {
        let id = record.id();
        if !seen_forecasts.insert(id.clone()) {
            continue;
        }
        let series = record.series_id.as_str();
        let due_until = increment.due_until.get(series).copied();
        let horizon = record.values.len();
        let (mut matched, mut unsettled) = (false, false);
        for (step, (timestamp, forecast)) in
            record.timestamps.iter().zip(&record.values).enumerate()
        {
            if settled_pairs.contains(&(id.as_str(), *timestamp)) {
                continue;
            }
            // An actual counts once it is new or was seen before (this forecast was logged after
            // its first actual arrived, e.g. a replay that sent the actuals first).
            let actual = new_truth
                .get(&(series, *timestamp))
                .or_else(|| first_value.get(&(series, *timestamp)));
            let value = match actual {
                Some(&actual) => {
                    let (_, overall, buckets) = groups
                        .entry(record.model_version.clone())
                        .or_insert_with(|| {
                            (
                                record.model.clone(),
                                Accumulator::default(),
                                BTreeMap::new(),
                            )
                        });
                    overall.add(*forecast, actual, record.last_value);
                    buckets
                        .entry(bucket_of(step + 1, horizon))
                        .or_default()
                        .add(*forecast, actual, record.last_value);
                    pairs += 1;
                    matched = true;
                    scored_errors.push(ScoredError {
                        model_version: record.model_version.clone(),
                        step,
                        at: *timestamp,
                        error: (forecast - actual).abs(),
                    });
                    for interval in &record.intervals {
                        let (Some(lower), Some(upper)) =
                            (interval.lower.get(step), interval.upper.get(step))
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
                            coverage
                                .entry(key)
                                .or_insert((interval.level, CoverageSum::default()))
                                .1
                                .add(*lower, *upper, actual);
                        }
                    }
                    Some(actual)
                }
                None if due_until.is_some_and(|due| *timestamp <= due) => {
                    missing += 1;
                    None
                }
                None => {
                    unsettled = true;
                    continue;
                }
            };
            newly_settled.push((
                record.origin,
                SettledPair {
                    forecast: id.clone(),
                    series_id: record.series_id.clone(),
                    timestamp: *timestamp,
                    value,
                },
            ));
        }
        if matched {
            scored += 1;
            per_series.entry(series).or_default().push(record);
        }
        if unsettled {
            pending += 1;
        }
    }
    let by_version = groups
        .into_iter()
        .filter_map(|(version, (model, overall, buckets))| {
            Some((
                version,
                VersionScores {
                    model,
                    overall: overall.scores()?,
                    horizon_buckets: buckets
                        .into_iter()
                        .filter_map(|(b, acc)| Some((b, acc.scores()?)))
                        .collect(),
                },
            ))
        })
        .collect();
    // Chart the series with the most scored forecasts (ties: the first id).
    let chart_series = per_series
        .iter()
        .max_by(|a, b| a.1.len().cmp(&b.1.len()).then(b.0.cmp(a.0)))
        .map(|(id, records)| {
            let mut actuals: Vec<(DateTime<Utc>, f64)> = increment
                .new_actuals
                .iter()
                .filter(|o| o.series_id == *id)
                .map(|o| (o.timestamp, o.value))
                .collect();
            actuals.sort_by_key(|(t, _)| *t);
            actuals.dedup_by_key(|(t, _)| *t);
            let forecasts = records
                .iter()
                .rev()
                .take(12)
                .map(|r| {
                    r.timestamps
                        .iter()
                        .copied()
                        .zip(r.values.iter().copied())
                        .collect()
                })
                .collect();
            let bands = records
                .iter()
                .rev()
                .take(12)
                .filter_map(|r| {
                    let narrowest = r
                        .intervals
                        .iter()
                        .min_by(|a, b| a.level.total_cmp(&b.level))?;
                    let points = r
                        .timestamps
                        .iter()
                        .zip(narrowest.lower.iter().zip(&narrowest.upper))
                        .map(|(t, (lo, hi))| (*t, *lo, *hi))
                        .collect();
                    Some(Band {
                        level: narrowest.level,
                        points,
                    })
                })
                .collect();
            ChartSeries {
                series_id: id.to_string(),
                actuals,
                forecasts,
                bands,
            }
        });
    let evaluation = Evaluation {
        actuals_after: None,
        actuals_until: DateTime::default(),
        actuals_read: increment.new_actuals.len(),
        objects_read: 0,
        forecasts_scored: scored,
        forecasts_pending: pending,
        pairs,
        missing_actuals: missing,
        duplicate_actuals,
        conflicting_actuals,
        late_actuals,
        quarantined_lines: 0,
        quarantined: Vec::new(),
        by_version,
        chart_series,
        scored_errors,
        recalibrated: Vec::new(),
        intervals: interval_scores(coverage),
    };
    (evaluation, newly_settled)
}

fn interval_scores(
    sums: BTreeMap<(String, String, String, String), (f64, CoverageSum)>,
) -> BTreeMap<String, Vec<IntervalScores>> {
    let mut by_version: BTreeMap<String, Vec<IntervalScores>> = BTreeMap::new();
    for ((version, model, _, bucket), (level, sum)) in sums {
        by_version.entry(version).or_default().push(IntervalScores {
            model,
            level,
            horizon_bucket: (!bucket.is_empty()).then_some(bucket),
            coverage: sum.inside as f64 / sum.pairs.max(1) as f64,
            width: sum.width / sum.pairs.max(1) as f64,
            pairs: sum.pairs,
        });
    }
    by_version
}

impl Evaluation {
    /// Records the accuracy set (overall and per horizon bucket) for every scored version, and
    /// the coverage and width of the intervals served with the scored forecasts.
    pub fn record(&self, telemetry: &Telemetry) {
        for (version, scores) in &self.intervals {
            for s in scores {
                let at = (s.model.as_str(), version.as_str());
                let bucket = s.horizon_bucket.as_deref();
                telemetry.record_for_level(
                    Metric::IntervalCoverage,
                    s.coverage,
                    at,
                    bucket,
                    s.level,
                );
                telemetry.record_for_level(Metric::IntervalWidth, s.width, at, bucket, s.level);
            }
        }
        for (version, scores) in &self.by_version {
            let emit = |s: &Scores, bucket: Option<&str>| {
                for (metric, value) in [
                    (Metric::Mae, s.mae),
                    (Metric::Rmse, s.rmse),
                    (Metric::Wape, s.wape),
                    (Metric::Bias, s.bias),
                    (Metric::Mase, s.mase),
                ] {
                    telemetry.record_for(metric, value, &scores.model, version, bucket);
                }
            };
            emit(&scores.overall, None);
            telemetry.record_for(
                Metric::ScoredPairs,
                scores.overall.count as f64,
                &scores.model,
                version,
                None,
            );
            for (bucket, s) in &scores.horizon_buckets {
                emit(s, Some(bucket));
            }
        }
    }

    /// A chart a person can open: actuals and forecast trajectories of one series, and MAE per
    /// horizon bucket.
    pub fn chart_svg(&self) -> String {
        let (w, h, pad) = (900.0, 420.0, 50.0);
        let mut svg = String::new();
        let _ = write!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{}" font-family="sans-serif" font-size="12">"#,
            h + 220.0
        );
        let _ = write!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let Some(series) = &self.chart_series else {
            let _ = write!(
                svg,
                r#"<text x="20" y="40">No forecast could be scored in this window (no matching actuals).</text></svg>"#
            );
            return svg;
        };
        let points: Vec<(DateTime<Utc>, f64)> = series
            .actuals
            .iter()
            .copied()
            .chain(series.forecasts.iter().flatten().copied())
            .collect();
        let t0 = series
            .forecasts
            .iter()
            .flatten()
            .map(|p| p.0)
            .min()
            .unwrap_or_default()
            - Duration::hours(24);
        let t1 = series
            .forecasts
            .iter()
            .flatten()
            .map(|p| p.0)
            .max()
            .unwrap_or_default();
        let in_range: Vec<f64> = points
            .iter()
            .filter(|(t, _)| *t >= t0 && *t <= t1)
            .map(|p| p.1)
            .collect();
        let (lo, hi) = in_range
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(*v), hi.max(*v))
            });
        let (lo, hi) = if lo < hi {
            (lo, hi)
        } else {
            (lo - 1.0, hi + 1.0)
        };
        let hi_axis = hi;
        let span = (t1 - t0).num_seconds().max(1) as f64;
        let x = |t: DateTime<Utc>| pad + (t - t0).num_seconds() as f64 / span * (w - 2.0 * pad);
        let y = |v: f64| h - pad - (v - lo) / (hi - lo) * (h - 2.0 * pad);
        let _ = write!(
            svg,
            r#"<text x="{pad}" y="24" font-size="15">Forecast vs actual: series {} ({} to {}, UTC)</text>"#,
            xml_escape(&series.series_id),
            t0.format("%Y-%m-%d %H:%M"),
            t1.format("%Y-%m-%d %H:%M")
        );
        let _ = write!(
            svg,
            r##"<line x1="{pad}" y1="{}" x2="{}" y2="{}" stroke="#999"/>"##,
            h - pad,
            w - pad,
            h - pad
        );
        let _ = write!(
            svg,
            r##"<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{}" stroke="#999"/>"##,
            h - pad
        );
        let _ = write!(
            svg,
            r#"<text x="4" y="{}">{:.2}</text><text x="4" y="{}">{:.2}</text>"#,
            y(hi) + 4.0,
            hi,
            y(lo),
            lo
        );
        // Intervals first, under the lines: each band is its upper edge forward, lower edge back.
        for band in &series.bands {
            let edge: Vec<String> = band
                .points
                .iter()
                .map(|(t, _, hi)| format!("{:.1},{:.1}", x(*t), y(hi.clamp(lo, hi_axis))))
                .chain(band.points.iter().rev().map(|(t, lo_edge, _)| {
                    format!("{:.1},{:.1}", x(*t), y(lo_edge.clamp(lo, hi_axis)))
                }))
                .collect();
            let _ = write!(
                svg,
                r##"<polygon fill="#1f77b4" fill-opacity="0.08" stroke="none" points="{}"/>"##,
                edge.join(" ")
            );
        }
        for trajectory in &series.forecasts {
            let path: Vec<String> = trajectory
                .iter()
                .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
                .collect();
            let _ = write!(
                svg,
                r##"<polyline fill="none" stroke="#1f77b4" stroke-opacity="0.6" stroke-width="1.5" points="{}"/>"##,
                path.join(" ")
            );
        }
        let actual_path: Vec<String> = series
            .actuals
            .iter()
            .filter(|(t, _)| *t >= t0 && *t <= t1)
            .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
            .collect();
        let _ = write!(
            svg,
            r##"<polyline fill="none" stroke="black" stroke-width="2" points="{}"/>"##,
            actual_path.join(" ")
        );
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" fill="black">— actual</text><text x="{}" y="{}" fill="#1f77b4">— forecasts (latest {})</text>"##,
            w - 300.0,
            pad - 8.0,
            w - 210.0,
            pad - 8.0,
            series.forecasts.len()
        );
        if let Some(Band { level, .. }) = series.bands.first() {
            let _ = write!(
                svg,
                r##"<text x="{}" y="{}" fill="#1f77b4" fill-opacity="0.6">shaded: their {}% intervals</text>"##,
                w - 300.0,
                pad + 8.0,
                level * 100.0
            );
        }
        // MAE per horizon bucket, first version.
        if let Some((version, scores)) = self.by_version.iter().next() {
            let top = h + 30.0;
            let _ = write!(
                svg,
                r#"<text x="{pad}" y="{top}" font-size="15">MAE by horizon bucket (model version {})</text>"#,
                xml_escape(version)
            );
            let max = scores
                .horizon_buckets
                .values()
                .map(|s| s.mae)
                .fold(0.0, f64::max)
                .max(1e-9);
            for (i, (bucket, s)) in scores.horizon_buckets.iter().enumerate() {
                let bar = s.mae / max * 400.0;
                let row = top + 20.0 + i as f64 * 40.0;
                let _ = write!(
                    svg,
                    r##"<text x="{pad}" y="{}">{}</text><rect x="{}" y="{row}" width="{bar:.1}" height="26" fill="#ff7f0e"/><text x="{}" y="{}">{:.4} (n={})</text>"##,
                    row + 18.0,
                    xml_escape(bucket),
                    pad + 70.0,
                    pad + 80.0 + bar,
                    row + 18.0,
                    s.mae,
                    s.count
                );
            }
        }
        svg.push_str("</svg>");
        svg
    }
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Quarantined lines listed in a report by key and line; all of them are counted.
pub const MAX_QUARANTINED_LISTED: usize = 100;

/// The result of a full run against the store.
#[derive(Debug, Clone, Serialize)]
pub struct EvaluationRun {
    #[serde(flatten)]
    pub evaluation: Evaluation,
    pub report: String,
}

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

/// Whole hours since the epoch, rounded down.
fn hour_index(t: DateTime<Utc>) -> i64 {
    t.timestamp().div_euclid(3600)
}

fn hour_start(index: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(index * 3600, 0).unwrap_or_default()
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

/// How the online calibration of intervals follows the scored errors.
#[derive(Debug, Clone, PartialEq)]
pub struct Recalibration {
    /// Most recent errors kept per model version and horizon step.
    pub window: usize,
    /// Levels the published calibration serves.
    pub levels: Vec<f64>,
}

impl Default for Recalibration {
    /// 120 errors per step and version, the latest by target time whatever their series: for
    /// one series forecast four times a day, 30 days (README, "Prediction intervals").
    fn default() -> Self {
        Recalibration {
            window: 120,
            levels: vec![0.8, 0.95],
        }
    }
}

/// Adds the scored errors to the online calibration's windows and publishes it; returns the
/// versions it now serves intervals for.
async fn recalibrate(
    store: &AccuracyStore,
    errors: &[ScoredError],
    recalibration: &Recalibration,
    now: DateTime<Utc>,
) -> Result<Vec<String>, StoreError> {
    let mut online: OnlineCalibrations = store.online_calibrations().await?;
    online.update(errors, recalibration.window, &recalibration.levels, now);
    store.set_online_calibrations(&online).await?;
    Ok(online
        .versions
        .iter()
        .filter(|(_, v)| v.calibration.is_some())
        .map(|(name, _)| name.clone())
        .collect())
}

/// [`run_evaluation_with`] with the default [`Recalibration`].
pub async fn run_evaluation(
    store: &AccuracyStore,
    telemetry: &Telemetry,
    now: DateTime<Utc>,
    window: EvaluationWindow,
) -> Result<EvaluationRun, StoreError> {
    run_evaluation_with(store, telemetry, now, window, &Recalibration::default()).await
}

/// Reads the actuals that arrived since the last run and the forecasts they can complete, scores
/// the pairs, marks them settled, records the accuracy metrics, recalibrates the intervals,
/// writes the report and moves the watermark. The cost follows what arrived, not the history.
pub async fn run_evaluation_with(
    store: &AccuracyStore,
    telemetry: &Telemetry,
    now: DateTime<Utc>,
    window: EvaluationWindow,
    recalibration: &Recalibration,
) -> Result<EvaluationRun, StoreError> {
    let state = store.evaluation_state().await?;
    let after = state.actuals_read_until;
    let until = after.map_or(now - window.settle, |a| a.max(now - window.settle));
    let listed = store.list_actuals(after).await?;
    let read_before: HashSet<&str> = state.read_since.iter().map(String::as_str).collect();
    let mut arrived: Vec<&crate::objects::Listed> = listed
        .iter()
        .filter(|l| after.is_none_or(|a| l.last_modified > a))
        .filter(|l| !read_before.contains(l.key.as_str()))
        .collect();
    arrived.sort_by(|a, b| (a.last_modified, &a.key).cmp(&(b.last_modified, &b.key)));
    let arrived_keys: Vec<String> = arrived.iter().map(|l| l.key.clone()).collect();
    let actuals = store.read_actuals(&arrived_keys).await?;

    // What is due per series: everything its actuals have passed, less the grace.
    let mut seen_until = state.actuals_seen_until.clone();
    for o in &actuals.items {
        let seen = seen_until.entry(o.series_id.clone()).or_insert(o.timestamp);
        *seen = (*seen).max(o.timestamp);
    }
    let touched: BTreeSet<&str> = actuals.items.iter().map(|o| o.series_id.as_str()).collect();
    let due_until: HashMap<String, DateTime<Utc>> = touched
        .iter()
        .map(|s| (s.to_string(), seen_until[*s] - window.grace))
        .collect();
    // Only the series with new actuals: the state holds every series ever seen.
    let previously_due: HashMap<String, DateTime<Utc>> = touched
        .iter()
        .filter_map(|s| {
            let seen = state.actuals_seen_until.get(*s)?;
            Some((s.to_string(), *seen - window.grace))
        })
        .collect();
    let hours = origin_hours(&actuals.items, &previously_due, &due_until, window.span);
    let (forecast_keys, settled_keys) = tokio::try_join!(
        store.list_origin_hours("forecasts", &hours),
        store.list_origin_hours("settled", &hours),
    )?;
    let (forecasts, settled) = tokio::try_join!(
        store.read_forecasts(&forecast_keys),
        store.read_settled(&settled_keys),
    )?;
    let (mut evaluation, newly_settled) = evaluate(&Increment {
        forecasts: &forecasts.items,
        new_actuals: &actuals.items,
        settled: &settled.items,
        due_until: &due_until,
    });
    evaluation.actuals_after = after;
    evaluation.actuals_until = until;
    evaluation.objects_read = arrived_keys.len() + forecast_keys.len() + settled_keys.len();
    let quarantined: Vec<Quarantined> = actuals
        .quarantined
        .into_iter()
        .chain(forecasts.quarantined)
        .chain(settled.quarantined)
        .collect();
    evaluation.quarantined_lines = quarantined.len();
    evaluation.quarantined = quarantined
        .into_iter()
        .take(MAX_QUARANTINED_LISTED)
        .collect();

    // Settled marks first: if the run stops after them, a rerun reads the same actuals again and
    // scores nothing twice.
    store.append_settled(&newly_settled, now).await?;
    evaluation.record(telemetry);
    // Best effort: a recalibration that fails (S3, an unreadable state file) leaves intervals on
    // the calibration in use; the scores, report and watermark still move.
    if !evaluation.scored_errors.is_empty() {
        match recalibrate(store, &evaluation.scored_errors, recalibration, now).await {
            Ok(recalibrated) => evaluation.recalibrated = recalibrated,
            Err(e) => {
                tracing::warn!(error = %e, "could not recalibrate the intervals; they keep their calibration")
            }
        }
    }
    let report_json = serde_json::to_vec_pretty(&serde_json::json!({
        "generated_at": now,
        "store": store.uri(),
        "evaluation": &evaluation,
        "horizon_buckets": horizon_buckets(forecasts.items.first().map(|f| f.values.len()).unwrap_or(0)).into_iter().map(|b| b.2).collect::<Vec<_>>(),
    }))
    .expect("serialises");
    let report = store
        .write_report(&report_json, evaluation.chart_svg().as_bytes(), now)
        .await?;
    store
        .update_latest_scores(
            evaluation
                .by_version
                .iter()
                .map(|(version, scores)| {
                    (
                        version.clone(),
                        VersionScore {
                            wape: scores.overall.wape,
                            pairs: scores.overall.count,
                            evaluated_at: now,
                        },
                    )
                })
                .collect(),
        )
        .await?;
    store
        .set_evaluation_state(&EvaluationState {
            actuals_read_until: Some(until),
            read_since: listed
                .iter()
                .filter(|l| l.last_modified > until)
                .map(|l| l.key.clone())
                .collect(),
            actuals_seen_until: seen_until,
        })
        .await?;
    tracing::info!(
        actuals = evaluation.actuals_read,
        objects_read = evaluation.objects_read,
        forecasts = evaluation.forecasts_scored,
        pairs = evaluation.pairs,
        missing_actuals = evaluation.missing_actuals,
        conflicting_actuals = evaluation.conflicting_actuals,
        quarantined_lines = evaluation.quarantined_lines,
        report = %report,
        "evaluation written"
    );
    Ok(EvaluationRun { evaluation, report })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(hour: i64) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
            + Duration::hours(hour)
    }

    fn record(id: &str, origin: i64, values: &[f64], version: &str) -> ForecastRecord {
        ForecastRecord {
            series_id: id.into(),
            origin: t(origin),
            last_value: 10.0,
            timestamps: (1..=values.len() as i64).map(|k| t(origin + k)).collect(),
            values: values.to_vec(),
            model: "m".into(),
            model_version: version.into(),
            request_id: None,
            created_at: t(origin),
            intervals_calibration: None,
            intervals: Vec::new(),
        }
    }

    fn obs(id: &str, hour: i64, value: f64) -> Observation {
        Observation {
            series_id: id.into(),
            timestamp: t(hour),
            value,
        }
    }

    /// Runs [`evaluate`] with every series' targets up to `due` due.
    fn run(
        forecasts: &[ForecastRecord],
        actuals: &[Observation],
        settled: &[SettledPair],
        due: Option<DateTime<Utc>>,
    ) -> (Evaluation, Vec<SettledPair>) {
        let due_until = due
            .map(|due| {
                forecasts
                    .iter()
                    .map(|f| (f.series_id.clone(), due))
                    .collect()
            })
            .unwrap_or_default();
        let (e, settled) = evaluate(&Increment {
            forecasts,
            new_actuals: actuals,
            settled,
            due_until: &due_until,
        });
        (e, settled.into_iter().map(|(_, pair)| pair).collect())
    }

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

    #[test]
    fn the_chart_is_an_svg_with_both_lines() {
        let forecasts = vec![record("a", 0, &[11.0, 12.0], "1")];
        let (e, _) = run(
            &forecasts,
            &[obs("a", 1, 12.0), obs("a", 2, 13.0)],
            &[],
            None,
        );
        let svg = e.chart_svg();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("polyline") && svg.contains("MAE by horizon bucket"));
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
