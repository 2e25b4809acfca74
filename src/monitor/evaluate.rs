//! Evaluation: join logged forecasts with actuals on (series id, target timestamp) and score them.
//!
//! A run scores the forecasts that became due (their last target time passed, plus a grace period
//! for late actuals) since the previous run, so each forecast is scored once. Targets with no
//! actual by then are counted as missing, never silently skipped; actuals that match no forecast
//! and duplicate actuals are counted too.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use super::accuracy::{bucket_of, horizon_buckets, Accumulator, Scores};
use super::observations::Observation;
use super::store::{AccuracyStore, ForecastRecord, Quarantined, StoreError, VersionScore};
use crate::metrics::{Metric, Telemetry};

/// What one evaluation found.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    /// Forecasts due in `(after, until]` were scored.
    pub after: Option<DateTime<Utc>>,
    pub until: DateTime<Utc>,
    pub forecasts_scored: usize,
    /// Forecasts not due yet (left for a later run).
    pub forecasts_pending: usize,
    pub pairs: usize,
    /// Due targets without an actual.
    pub missing_actuals: usize,
    /// Actuals for the same (series, timestamp) beyond the first (the first one wins: a later
    /// upload cannot rewrite a value that forecasts were already scored against).
    pub duplicate_actuals: usize,
    /// Those duplicates whose value differs from the first one's.
    pub conflicting_actuals: usize,
    /// Unreadable lines skipped in the store (see `quarantined`).
    pub quarantined_lines: usize,
    /// The first of them, with their object key and line number.
    pub quarantined: Vec<Quarantined>,
    /// Scores per model version, overall and per horizon bucket.
    pub by_version: BTreeMap<String, VersionScores>,
    #[serde(skip)]
    pub chart_series: Option<ChartSeries>,
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
}

/// Scores `forecasts` due in `(after, until]` against `actuals`. Pure: no I/O.
pub fn evaluate(
    forecasts: &[ForecastRecord],
    actuals: &[Observation],
    after: Option<DateTime<Utc>>,
    until: DateTime<Utc>,
) -> Evaluation {
    let mut truth: HashMap<(&str, DateTime<Utc>), f64> = HashMap::with_capacity(actuals.len());
    let (mut duplicate_actuals, mut conflicting_actuals) = (0, 0);
    for o in actuals {
        match truth.entry((o.series_id.as_str(), o.timestamp)) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(o.value);
            }
            std::collections::hash_map::Entry::Occupied(first) => {
                duplicate_actuals += 1;
                if *first.get() != o.value {
                    conflicting_actuals += 1;
                }
            }
        }
    }
    let mut groups: BTreeMap<String, (String, Accumulator, BTreeMap<String, Accumulator>)> =
        BTreeMap::new();
    let (mut scored, mut pending, mut pairs, mut missing) = (0, 0, 0, 0);
    let mut per_series: HashMap<&str, Vec<&ForecastRecord>> = HashMap::new();
    for record in forecasts {
        let Some(due) = record.timestamps.last().copied() else {
            continue;
        };
        if after.is_some_and(|a| due <= a) {
            continue;
        }
        if due > until {
            pending += 1;
            continue;
        }
        scored += 1;
        let horizon = record.values.len();
        let (_, overall, buckets) =
            groups
                .entry(record.model_version.clone())
                .or_insert_with(|| {
                    (
                        record.model.clone(),
                        Accumulator::default(),
                        BTreeMap::new(),
                    )
                });
        let mut matched = false;
        for (step, (timestamp, forecast)) in
            record.timestamps.iter().zip(&record.values).enumerate()
        {
            match truth.get(&(record.series_id.as_str(), *timestamp)) {
                Some(&actual) => {
                    overall.add(*forecast, actual, record.last_value);
                    buckets
                        .entry(bucket_of(step + 1, horizon))
                        .or_default()
                        .add(*forecast, actual, record.last_value);
                    pairs += 1;
                    matched = true;
                }
                None => missing += 1,
            }
        }
        if matched {
            per_series
                .entry(record.series_id.as_str())
                .or_default()
                .push(record);
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
            let mut actuals: Vec<(DateTime<Utc>, f64)> = actuals
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
            ChartSeries {
                series_id: id.to_string(),
                actuals,
                forecasts,
            }
        });
    Evaluation {
        after,
        until,
        forecasts_scored: scored,
        forecasts_pending: pending,
        pairs,
        missing_actuals: missing,
        duplicate_actuals,
        conflicting_actuals,
        quarantined_lines: 0,
        quarantined: Vec::new(),
        by_version,
        chart_series,
    }
}

impl Evaluation {
    /// Records the accuracy set (overall and per horizon bucket) for every scored version.
    pub fn record(&self, telemetry: &Telemetry) {
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
            .unwrap_or(self.until)
            - Duration::hours(24);
        let t1 = series
            .forecasts
            .iter()
            .flatten()
            .map(|p| p.0)
            .max()
            .unwrap_or(self.until);
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

/// Loads forecasts and actuals, scores what became due since the last run, records the accuracy
/// metrics, writes the report and advances the watermark. `grace` leaves time for late actuals.
pub async fn run_evaluation(
    store: &AccuracyStore,
    telemetry: &Telemetry,
    now: DateTime<Utc>,
    grace: Duration,
) -> Result<EvaluationRun, StoreError> {
    let after = store.evaluated_until().await?;
    let until = now - grace;
    let (forecasts, actuals) = tokio::try_join!(store.load_forecasts(), store.load_actuals())?;
    let mut evaluation = evaluate(&forecasts.items, &actuals.items, after, until);
    let quarantined: Vec<Quarantined> = forecasts
        .quarantined
        .into_iter()
        .chain(actuals.quarantined)
        .collect();
    evaluation.quarantined_lines = quarantined.len();
    evaluation.quarantined = quarantined
        .into_iter()
        .take(MAX_QUARANTINED_LISTED)
        .collect();
    let forecasts = forecasts.items;
    evaluation.record(telemetry);
    let report_json = serde_json::to_vec_pretty(&serde_json::json!({
        "generated_at": now,
        "store": store.uri(),
        "evaluation": &evaluation,
        "horizon_buckets": horizon_buckets(forecasts.first().map(|f| f.values.len()).unwrap_or(0)).into_iter().map(|b| b.2).collect::<Vec<_>>(),
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
    if after.is_none_or(|a| until > a) {
        store.set_evaluated_until(until).await?;
    }
    tracing::info!(
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
        }
    }

    fn obs(id: &str, hour: i64, value: f64) -> Observation {
        Observation {
            series_id: id.into(),
            timestamp: t(hour),
            value,
        }
    }

    #[test]
    fn the_first_actual_wins_and_a_conflicting_later_one_is_counted() {
        // GIVEN a forecast of 11 for hour 1, whose actual arrives as 12, then again as 99
        let forecasts = vec![record("a", 0, &[11.0], "1")];
        let actuals = vec![obs("a", 1, 12.0), obs("a", 1, 99.0)];
        let e = evaluate(&forecasts, &actuals, None, t(10));
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
        // WHEN evaluated after both targets passed
        let e = evaluate(&forecasts, &actuals, None, t(10));
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
    }

    #[test]
    fn missing_actuals_are_counted_and_undue_forecasts_wait() {
        let forecasts = vec![
            record("a", 0, &[1.0, 2.0], "1"),
            record("a", 5, &[1.0, 2.0], "1"),
        ];
        let e = evaluate(&forecasts, &[obs("a", 1, 1.0)], None, t(3));
        assert_eq!(e.forecasts_scored, 1);
        assert_eq!(e.forecasts_pending, 1);
        assert_eq!(e.missing_actuals, 1);
        // A later run after the watermark only scores the second forecast.
        let e = evaluate(&forecasts, &[], Some(t(3)), t(10));
        assert_eq!(e.forecasts_scored, 1);
        assert_eq!(e.missing_actuals, 2);
        assert!(
            e.by_version.is_empty(),
            "nothing matched, so no scores rather than zeros"
        );
    }

    #[test]
    fn the_chart_is_an_svg_with_both_lines() {
        let forecasts = vec![record("a", 0, &[11.0, 12.0], "1")];
        let e = evaluate(
            &forecasts,
            &[obs("a", 1, 12.0), obs("a", 2, 13.0)],
            None,
            t(10),
        );
        let svg = e.chart_svg();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("polyline") && svg.contains("MAE by horizon bucket"));
    }
}
