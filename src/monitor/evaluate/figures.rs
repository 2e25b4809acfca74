//! What a run publishes: the evaluation, its scores per version and horizon bucket, the
//! coverage of the intervals and the versions compared (see `partial` for the sums behind them).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::charted::ChartSeries;
use super::comparing::VersionPair;
use crate::monitor::accuracy::Scores;
use crate::monitor::calibration::ScoredError;
use crate::monitor::store::Quarantined;
use crate::monitor::verdict::{Comparison, Evidence};

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
    /// Forecasts that reached the log after an earlier run had read (some of) their actuals:
    /// joined with what that run settled or indexed by hour, and scored now.
    pub late_forecasts: usize,
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
    /// Versions whose intervals the online calibration now serves (see
    /// [`Recalibration`](super::Recalibration)).
    pub recalibrated: Vec<String>,
    /// Coverage of the intervals served with the scored forecasts, per model version.
    pub intervals: BTreeMap<String, Vec<IntervalScores>>,
    /// Scores of the forecasts made from out-of-range windows
    /// ([`ForecastRecord::out_of_range`]), per version: reported, never in `by_version`, the
    /// metrics, the rollback's scores or the interval calibration.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub out_of_range: BTreeMap<String, VersionScores>,
    /// What this run adds to the comparison of each pair of versions that forecast the same
    /// targets (see `comparing`).
    #[serde(skip)]
    pub comparisons: BTreeMap<VersionPair, Comparison>,
    /// Each pair of versions compared by this run, with the evidence of every run so far.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub compared: Vec<ComparedVersions>,
    /// The longest horizon among the forecasts read (the report's horizon buckets).
    #[serde(skip)]
    pub horizon: usize,
}

/// Two versions compared on the same actuals: the pairs this run added, and the evidence of all
/// of them, on squared and on absolute error.
#[derive(Debug, Clone, Serialize)]
pub struct ComparedVersions {
    pub reference: String,
    pub challenger: String,
    pub pairs_added: u64,
    pub squared: Option<Evidence>,
    pub absolute: Option<Evidence>,
    /// Per origin (seconds since the epoch), the running sum of the mean squared-error
    /// differential: the report's comparison chart.
    #[serde(skip)]
    pub cumulative: Vec<(i64, f64)>,
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

#[derive(Debug, Clone, Serialize)]
pub struct VersionScores {
    pub model: String,
    pub overall: Scores,
    pub horizon_buckets: BTreeMap<String, Scores>,
}

/// The result of a full run against the store.
#[derive(Debug, Clone, Serialize)]
pub struct EvaluationRun {
    pub run: u64,
    #[serde(flatten)]
    pub evaluation: Evaluation,
    pub report: String,
}
