//! What a run publishes: the accuracy and coverage metrics, the report folder (the evaluation as
//! JSON, and its chart), each scored version's latest score, and one log line.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::commit::ReportFolder;
use super::comparing::VersionPair;
use super::figures::{ComparedVersions, Evaluation};
use crate::metrics::{Metric, Telemetry};
use crate::monitor::accuracy::{horizon_buckets, Scores};
use crate::monitor::compare::Loss;
use crate::monitor::store::{AccuracyStore, StoreError, VersionScore};
use crate::monitor::verdict::{Comparison, Comparisons};

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
        self.record_comparisons(telemetry);
        if self.late_forecasts > 0 {
            telemetry.record(Metric::LateForecasts, self.late_forecasts as f64);
        }
    }

    /// Records each comparison this run added to, both ways round (`ModelVersion` the
    /// reference, `Challenger` the other): the evaluation does not know which one is live.
    fn record_comparisons(&self, telemetry: &Telemetry) {
        for compared in &self.compared {
            let Some(evidence) = &compared.squared else {
                continue;
            };
            let model = self
                .by_version
                .get(&compared.reference)
                .or_else(|| self.by_version.get(&compared.challenger))
                .map_or("", |s| s.model.as_str());
            for (reference, challenger, evidence) in [
                (&compared.reference, &compared.challenger, evidence.clone()),
                (
                    &compared.challenger,
                    &compared.reference,
                    evidence.swapped(),
                ),
            ] {
                let at = (model, reference.as_str());
                let emit = |metric, value: Option<f64>, bucket: Option<&str>| {
                    if let Some(value) = value {
                        telemetry.record_comparison(metric, value, at, challenger, bucket);
                    }
                };
                emit(Metric::ChallengerRelativeLoss, Some(evidence.ratio), None);
                emit(Metric::ComparedOrigins, Some(evidence.origins as f64), None);
                emit(Metric::ChallengerPValue, evidence.p_value, None);
                for b in &evidence.buckets {
                    let bucket = Some(b.bucket.as_str());
                    emit(Metric::ChallengerRelativeLoss, Some(b.ratio), bucket);
                    emit(Metric::ComparedOrigins, Some(b.origins as f64), bucket);
                    emit(Metric::ChallengerPValue, b.adjusted_p_value, bucket);
                }
            }
        }
    }
}

/// The report folder: the evaluation, with the horizon buckets of the longest forecast read,
/// and its charts.
pub(super) fn render_report(
    store: &AccuracyStore,
    evaluation: &Evaluation,
    now: DateTime<Utc>,
) -> ReportFolder {
    let buckets: Vec<String> = horizon_buckets(evaluation.horizon)
        .into_iter()
        .map(|b| b.2)
        .collect();
    let report_json = serde_json::to_string_pretty(&serde_json::json!({
        "generated_at": now,
        "store": store.uri(),
        "evaluation": evaluation,
        "horizon_buckets": buckets,
    }))
    .expect("serialises");
    let mut charts = vec![("chart.svg".to_owned(), evaluation.chart_svg())];
    if let Some(svg) = super::compared_chart::comparison_svg(&evaluation.compared) {
        charts.push(("comparison.svg".to_owned(), svg));
    }
    ReportFolder {
        generated_at: now,
        report_json,
        charts,
    }
}

/// The comparisons kept across runs with this run's added, or `None` when it compared nothing;
/// sets the evaluation's `compared` to the evidence of each pair it added to.
pub(super) async fn merged_comparisons(
    store: &AccuracyStore,
    evaluation: &mut Evaluation,
    now: DateTime<Utc>,
) -> Result<Option<Comparisons>, StoreError> {
    if evaluation.comparisons.is_empty() {
        return Ok(None);
    }
    let mut kept = store.comparisons().await?;
    kept.merge(&evaluation.comparisons, now);
    evaluation.compared = compared_versions(&kept, &evaluation.comparisons);
    Ok(Some(kept))
}

pub(super) fn compared_versions(
    kept: &Comparisons,
    added: &BTreeMap<VersionPair, Comparison>,
) -> Vec<ComparedVersions> {
    added
        .iter()
        .map(|((reference, challenger), added)| {
            let all = kept.between(reference, challenger).unwrap_or_default();
            let cumulative = all
                .overall
                .by_origin
                .keys()
                .zip(all.overall.per_origin(Loss::Squared))
                .scan(0.0, |sum, (origin, differential)| {
                    *sum += differential;
                    Some((*origin, *sum))
                })
                .collect();
            ComparedVersions {
                reference: reference.clone(),
                challenger: challenger.clone(),
                pairs_added: added.overall.pairs(),
                squared: all.evidence(Loss::Squared),
                absolute: all.evidence(Loss::Absolute),
                cumulative,
            }
        })
        .collect()
}

/// The latest scores with those of each version this run scored replaced, or `None` when it
/// scored nothing: a rollback acts only on the live version's own latest score.
pub(super) async fn merged_latest_scores(
    store: &AccuracyStore,
    evaluation: &Evaluation,
    now: DateTime<Utc>,
) -> Result<Option<BTreeMap<String, VersionScore>>, StoreError> {
    if evaluation.by_version.is_empty() {
        return Ok(None);
    }
    let mut all = store.latest_scores().await?;
    all.extend(evaluation.by_version.iter().map(|(version, scores)| {
        let score = VersionScore {
            wape: scores.overall.wape,
            pairs: scores.overall.count,
            evaluated_at: now,
        };
        (version.clone(), score)
    }));
    Ok(Some(all))
}

/// The run's log line: what it read and scored, and where the report is.
pub(super) fn log_summary(evaluation: &Evaluation, report: &str) {
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
}
